"""The HTX frame key schedule (spec/htx.md §3).

From the 32-byte ``session_secret`` of the inner handshake:

* ``K0 = HKDF-Extract(salt = 32 zero bytes, session_secret)``;
* one traffic secret per direction, ``TS_c`` (client → server) and ``TS_s``
  (server → client), each ``Expand-Label(K0, "ts_c" | "ts_s", 32)``;
* from a traffic secret, the AEAD ``key`` and a 12-byte ``nonce_salt``;
* on KEY_UPDATE the sender's secret becomes ``Expand-Label(TS, "next", 32)``.

Pure functions over bytes; nothing here keeps state (a ``DirectionKeys`` only
caches the AEAD set up under its key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from qnet.crypto.primitives import KEY_LEN, NONCE_LEN, AeadKey, hkdf_expand, hkdf_extract
from qnet.errors import CryptoError

LABEL_PREFIX: Final = b"betanet "
SECRET_LEN: Final = 32
K0_SALT: Final = bytes(32)


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """``HKDF-Expand-SHA256(secret, "betanet " ‖ label, length)``."""
    return hkdf_expand(secret, LABEL_PREFIX + label, length)


def initial_secret(session_secret: bytes) -> bytes:
    """``K0``. Raises ``CryptoError`` unless ``session_secret`` is 32 bytes."""
    if not isinstance(session_secret, bytes) or len(session_secret) != SECRET_LEN:
        raise CryptoError("session_secret must be 32 bytes")
    return hkdf_extract(K0_SALT, session_secret)


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectionKeys:
    """The keys of one direction under one traffic secret.

    ``generation`` counts KEY_UPDATEs (0 for the secret derived from ``K0``).
    """

    secret: bytes
    key: bytes
    nonce_salt: bytes
    generation: int = 0
    _aead: AeadKey | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def aead(self) -> AeadKey:
        """The AEAD under ``key``, set up on first use and kept for every frame."""
        aead = self._aead
        if aead is None:
            aead = AeadKey(self.key)
            object.__setattr__(self, "_aead", aead)
        return aead

    @classmethod
    def from_secret(cls, secret: bytes, generation: int = 0) -> DirectionKeys:
        return cls(
            secret=secret,
            key=expand_label(secret, b"key", KEY_LEN),
            nonce_salt=expand_label(secret, b"nonce", NONCE_LEN),
            generation=generation,
        )

    def next(self) -> DirectionKeys:
        """The keys after a KEY_UPDATE: secret ``Expand-Label(TS, "next", 32)``."""
        return DirectionKeys.from_secret(
            expand_label(self.secret, b"next", SECRET_LEN), self.generation + 1
        )

    def nonce(self, counter: int) -> bytes:
        """``nonce_salt XOR (counter as u64 little-endian ‖ 4 zero bytes)``."""
        if not 0 <= counter < 2**64:
            raise CryptoError("frame counter out of range")
        # As little-endian integers the pad is the counter itself.
        return (int.from_bytes(self.nonce_salt, "little") ^ counter).to_bytes(NONCE_LEN, "little")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionKeys:
    """Both directions' first keys, derived from ``session_secret``."""

    k0: bytes
    client: DirectionKeys  # client → server, from TS_c
    server: DirectionKeys  # server → client, from TS_s

    @classmethod
    def derive(cls, session_secret: bytes) -> SessionKeys:
        """Raises ``CryptoError`` unless ``session_secret`` is 32 bytes."""
        k0 = initial_secret(session_secret)
        return cls(
            k0=k0,
            client=DirectionKeys.from_secret(expand_label(k0, b"ts_c", SECRET_LEN)),
            server=DirectionKeys.from_secret(expand_label(k0, b"ts_s", SECRET_LEN)),
        )
