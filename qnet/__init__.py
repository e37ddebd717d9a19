"""QNet: an anonymity overlay network.

Layers (bottom up): ``qnet.crypto`` (the one door to primitives),
``qnet.mix`` (Sphinx packets, mixing), ``qnet.routing`` (cells, circuits),
``qnet.htx`` (links), ``qnet.lint`` (spec compliance). See ``spec/``.
"""

__version__ = "0.1.0"
