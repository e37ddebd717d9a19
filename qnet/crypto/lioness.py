"""Lioness wide-block cipher over ChaCha20 and keyed BLAKE2b (spec/sphinx.md §5).

Changing any bit of a ciphertext block scrambles the whole decrypted block, which
is what turns a payload tagging attack into a dropped packet.
"""

from __future__ import annotations

from typing import Final

from qnet.crypto.primitives import chacha20_stream, keyed_hash, xor_bytes
from qnet.errors import CryptoError

KEYS_LEN: Final = 128
LEFT_LEN: Final = 32
MIN_BLOCK_LEN: Final = LEFT_LEN + 1


def _split(keys: bytes, block: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    if len(keys) != KEYS_LEN:
        raise CryptoError(f"Lioness keys must be {KEYS_LEN} bytes, got {len(keys)}")
    if len(block) < MIN_BLOCK_LEN:
        raise CryptoError(f"Lioness block must be at least {MIN_BLOCK_LEN} bytes")
    return keys[0:32], keys[32:64], keys[64:96], keys[96:128], block[:LEFT_LEN], block[LEFT_LEN:]


def lioness_encrypt(keys: bytes, block: bytes) -> bytes:
    """Encrypt one block with the 128-byte key ``k1 ‖ k2 ‖ k3 ‖ k4``."""
    k1, k2, k3, k4, left, right = _split(bytes(keys), bytes(block))
    right = xor_bytes(right, chacha20_stream(xor_bytes(left, k1), len(right)))
    left = xor_bytes(left, keyed_hash(k2, right))
    right = xor_bytes(right, chacha20_stream(xor_bytes(left, k3), len(right)))
    left = xor_bytes(left, keyed_hash(k4, right))
    return left + right


def lioness_decrypt(keys: bytes, block: bytes) -> bytes:
    """Inverse of ``lioness_encrypt``."""
    k1, k2, k3, k4, left, right = _split(bytes(keys), bytes(block))
    left = xor_bytes(left, keyed_hash(k4, right))
    right = xor_bytes(right, chacha20_stream(xor_bytes(left, k3), len(right)))
    left = xor_bytes(left, keyed_hash(k2, right))
    right = xor_bytes(right, chacha20_stream(xor_bytes(left, k1), len(right)))
    return left + right
