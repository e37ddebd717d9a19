"""Type stubs for ``qnet._fast`` (Cython + libsodium, built from ``cext/_fast.pyx``).

Same API, same bytes as the pure-Python reference ``qnet.crypto.hopcrypto``.
"""

from collections.abc import Iterable
from typing import Final

_Buffer = bytes | bytearray | memoryview

OK: Final = 0
ERR_LENGTH: Final = 1
ERR_POINT: Final = 2
ERR_MAC: Final = 3

BACKEND: Final = "cython"

def sphinx_unwrap(
    node_private: _Buffer, node_public: _Buffer, packet: _Buffer
) -> tuple[int, bytes]:
    """Peel one Sphinx layer: ``(OK, out)`` with ``out`` = replay_tag (16) ‖ hop_secret (32) ‖
    slot (96) ‖ next_beta (480) ‖ payload (1512), or ``(ERR_*, b"")``."""

def sphinx_unwrap_batch(
    node_private: _Buffer, node_public: _Buffer, packets: Iterable[_Buffer]
) -> list[tuple[int, bytes]]:
    """``sphinx_unwrap`` over many packets under one node key (GIL released)."""

def lioness_encrypt_block(keys: _Buffer, block: _Buffer) -> bytes: ...
def lioness_decrypt_block(keys: _Buffer, block: _Buffer) -> bytes: ...
def cell_xor(key: _Buffer, counter: int, body: _Buffer) -> bytes: ...
def cell_xor_batch(key: _Buffer, counter: int, bodies: _Buffer) -> bytes: ...
def cell_seal(key: _Buffer, counter: int, plaintext: _Buffer) -> bytes: ...
def cell_seal_batch(key: _Buffer, counter: int, plaintexts: _Buffer) -> bytes: ...
def cell_open(key: _Buffer, counter: int, body: _Buffer) -> bytes | None: ...
def cell_open_batch(key: _Buffer, counter: int, bodies: _Buffer) -> tuple[bytes, int]:
    """``(plaintexts, failed)``: failed is the index of the first cell that did not open, or -1."""
