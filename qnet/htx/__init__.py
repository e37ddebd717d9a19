# h2 formats every received frame for a no-op trace log: keep that cheap (frame_repr.py).
from qnet.htx import frame_repr

frame_repr.install()
