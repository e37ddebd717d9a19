"""Pure-Python reference of the per-hop hot path (the ``qnet._fast`` API).

``qnet._fast`` (Cython + libsodium, ``cext/_fast.pyx``) implements exactly these
functions and must return identical bytes; ``qnet.crypto.accel`` picks one. They
do only the crypto: the slot and cell layouts are parsed by ``qnet.mix`` and
``qnet.routing``.

Status codes of ``sphinx_unwrap``: ``OK``, ``ERR_LENGTH``, ``ERR_POINT``, ``ERR_MAC``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from qnet.constants import (
    ALPHA_LEN,
    BETA_LEN,
    BODY_LEN,
    CELL_PLAINTEXT_LEN,
    CELL_TAG_LEN,
    GAMMA_LEN,
    HEADER_LEN,
    HOP_OKM_LEN,
    PACKET_LEN,
    SLOT_LEN,
    SPHINX_SALT,
)
from qnet.crypto.lioness import lioness_decrypt, lioness_encrypt
from qnet.crypto.primitives import (
    X25519Key,
    aead_open,
    aead_seal,
    chacha20_stream,
    chacha20_xor,
    ct_equal,
    hkdf_sha256,
    keyed_hash,
    xor_bytes,
)
from qnet.errors import AuthenticationError, CryptoError

OK: Final = 0
ERR_LENGTH: Final = 1
ERR_POINT: Final = 2
ERR_MAC: Final = 3

BACKEND: Final = "python"

_ZERO_SLOT = bytes(SLOT_LEN)


def sphinx_hop_okm(shared: bytes, alpha: bytes, node_public: bytes) -> bytes:
    """The 240 bytes of per-hop key material (spec/sphinx.md §4)."""
    return hkdf_sha256(shared, SPHINX_SALT, alpha + node_public, HOP_OKM_LEN)


CELL_COUNTER_MAX: Final = 2**64 - 1


def cell_nonce(counter: int) -> bytes:
    """The 12-byte nonce of cell number ``counter`` (spec/cells.md §3).

    Raises ``CryptoError`` unless ``counter`` is an int in ``0 … 2**64-1`` (so a batch
    whose counters ``counter + k`` run past 2**64-1 raises too).
    """
    if not isinstance(counter, int):
        raise CryptoError(f"cell counter must be an int, not {type(counter).__name__}")
    if not 0 <= counter <= CELL_COUNTER_MAX:
        raise CryptoError("cell counter must be in 0 .. 2**64-1")
    return counter.to_bytes(8, "little") + b"\x00\x00\x00\x00"


def sphinx_unwrap(node_private: bytes, node_public: bytes, packet: bytes) -> tuple[int, bytes]:
    """Peel one Sphinx layer.

    Returns ``(OK, out)`` with ``out = replay_tag (16) ‖ hop_secret (32) ‖ slot (96) ‖
    next_beta (480) ‖ decrypted payload (1512)``, or ``(ERR_*, b"")``. Never raises
    for bad packet bytes; raises ``CryptoError`` only for a bad node key length.
    """
    return _unwrap(X25519Key(node_private), node_public, packet)


def sphinx_unwrap_batch(
    node_private: bytes, node_public: bytes, packets: Sequence[bytes]
) -> list[tuple[int, bytes]]:
    """``sphinx_unwrap`` over many packets under one node key."""
    key = X25519Key(node_private)
    return [_unwrap(key, node_public, p) for p in packets]


def _unwrap(key: X25519Key, node_public: bytes, packet: bytes) -> tuple[int, bytes]:
    if len(packet) != PACKET_LEN:
        return ERR_LENGTH, b""
    packet = bytes(packet)
    alpha = packet[:ALPHA_LEN]
    gamma = packet[ALPHA_LEN : ALPHA_LEN + GAMMA_LEN]
    beta = packet[ALPHA_LEN + GAMMA_LEN : HEADER_LEN]
    delta = packet[HEADER_LEN:]
    try:
        shared = key.exchange(alpha)
    except CryptoError:
        return ERR_POINT, b""
    okm = sphinx_hop_okm(shared, alpha, node_public)
    if not ct_equal(keyed_hash(okm[32:64], beta, 16), gamma):
        return ERR_MAC, b""
    routing = xor_bytes(beta + _ZERO_SLOT, chacha20_stream(okm[0:32], BETA_LEN + SLOT_LEN))
    payload = lioness_decrypt(okm[64:192], delta)
    return OK, okm[192:240] + routing + payload


def lioness_encrypt_block(keys: bytes, block: bytes) -> bytes:
    return lioness_encrypt(keys, block)


def lioness_decrypt_block(keys: bytes, block: bytes) -> bytes:
    return lioness_decrypt(keys, block)


def cell_xor(key: bytes, counter: int, body: bytes) -> bytes:
    """One pass-through layer over one body (any length)."""
    return chacha20_xor(key, cell_nonce(counter), body)


def cell_xor_batch(key: bytes, counter: int, bodies: bytes) -> bytes:
    """Pass-through layer over ``len(bodies) // 2040`` consecutive cells.

    Cell ``k`` of the batch uses counter ``counter + k``.
    """
    if len(bodies) % BODY_LEN:
        raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
    out = bytearray()
    for k in range(len(bodies) // BODY_LEN):
        out += chacha20_xor(key, cell_nonce(counter + k), bodies[k * BODY_LEN : (k + 1) * BODY_LEN])
    return bytes(out)


def cell_seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    """End layer: AEAD-seal a 2024-byte plaintext into a 2040-byte body."""
    if len(plaintext) != CELL_PLAINTEXT_LEN:
        raise CryptoError(f"plaintext must be {CELL_PLAINTEXT_LEN} bytes")
    return aead_seal(key, cell_nonce(counter), plaintext)


def cell_seal_batch(key: bytes, counter: int, plaintexts: bytes) -> bytes:
    """End layer over ``len(plaintexts) // 2024`` consecutive cells (counter + k)."""
    if len(plaintexts) % CELL_PLAINTEXT_LEN:
        raise CryptoError(f"batch length must be a multiple of {CELL_PLAINTEXT_LEN}")
    out = bytearray()
    for k in range(len(plaintexts) // CELL_PLAINTEXT_LEN):
        chunk = plaintexts[k * CELL_PLAINTEXT_LEN : (k + 1) * CELL_PLAINTEXT_LEN]
        out += aead_seal(key, cell_nonce(counter + k), chunk)
    return bytes(out)


def cell_open(key: bytes, counter: int, body: bytes) -> bytes | None:
    """End layer: open a 2040-byte body; ``None`` when the tag does not verify."""
    if len(body) != BODY_LEN:
        return None
    try:
        return aead_open(key, cell_nonce(counter), body)
    except AuthenticationError:
        return None


def cell_open_batch(key: bytes, counter: int, bodies: bytes) -> tuple[bytes, int]:
    """Open consecutive cells; returns ``(plaintexts, failed)``.

    ``failed`` is the index of the first cell that did not verify (its plaintext
    and the ones after it are absent), or -1 when all opened.
    """
    if len(bodies) % BODY_LEN:
        raise CryptoError(f"batch length must be a multiple of {BODY_LEN}")
    out = bytearray()
    for k in range(len(bodies) // BODY_LEN):
        plain = cell_open(key, counter + k, bodies[k * BODY_LEN : (k + 1) * BODY_LEN])
        if plain is None:
            return bytes(out), k
        out += plain
    return bytes(out), -1


assert CELL_PLAINTEXT_LEN + CELL_TAG_LEN == BODY_LEN
