"""Wire sizes shared by every layer (see spec/sphinx.md §2 and spec/cells.md §1)."""

from typing import Final

#: Every unit on a link: 8-byte unit header + 2040-byte body.
UNIT_LEN: Final = 2048
UNIT_HEADER_LEN: Final = 8
BODY_LEN: Final = UNIT_LEN - UNIT_HEADER_LEN  # 2040

# Sphinx v1 (spec/sphinx.md)
PACKET_LEN: Final = BODY_LEN
ALPHA_LEN: Final = 32
GAMMA_LEN: Final = 16
MAX_HOPS: Final = 5
SLOT_LEN: Final = 96
BETA_LEN: Final = MAX_HOPS * SLOT_LEN  # 480
HEADER_LEN: Final = ALPHA_LEN + GAMMA_LEN + BETA_LEN  # 528
PAYLOAD_LEN: Final = PACKET_LEN - HEADER_LEN  # 1512
ZERO_PREFIX_LEN: Final = 16
MESSAGE_LEN: Final = PAYLOAD_LEN - ZERO_PREFIX_LEN  # 1496
HOP_OKM_LEN: Final = 240
REPLAY_TAG_LEN: Final = 16
HOP_SECRET_LEN: Final = 32
#: What the hop-crypto core returns for one packet: tag, hop secret, slot, next beta, payload.
UNWRAP_OUT_LEN: Final = REPLAY_TAG_LEN + HOP_SECRET_LEN + SLOT_LEN + BETA_LEN + PAYLOAD_LEN

# Relay cells (spec/cells.md)
CELL_TAG_LEN: Final = 16
CELL_PLAINTEXT_LEN: Final = BODY_LEN - CELL_TAG_LEN  # 2024
RELAY_HEADER_LEN: Final = 5
RELAY_DATA_MAX: Final = CELL_PLAINTEXT_LEN - RELAY_HEADER_LEN  # 2019

SPHINX_SALT: Final = b"qnet-sphinx-v1"
CELL_SALT: Final = b"qnet-cell-v1"
