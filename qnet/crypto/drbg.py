"""A seeded byte stream for test vectors and reproducible tests. Never for keys in use.

``SeededRandom(seed)(n)`` returns the next ``n`` bytes of the ChaCha20 keystream
keyed by ``HKDF(salt="qnet-drbg-v1", ikm=seed, info=label)``. Every draw is
recorded in ``draws`` so vectors can list the values an implementation must replay.
"""

from __future__ import annotations

from qnet.crypto.primitives import chacha20_xor, hkdf_sha256


class SeededRandom:
    """Deterministic ``rng(n) -> bytes`` with a log of what was drawn."""

    def __init__(self, seed: bytes, label: bytes = b"") -> None:
        self._key = hkdf_sha256(seed, b"qnet-drbg-v1", label, 32)
        self._offset = 0
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        start, self._offset = self._offset, self._offset + n
        block, skip = divmod(start, 64)
        stream = chacha20_xor(self._key, bytes(12), bytes(skip + n), counter=block)
        out = stream[skip:]
        self.draws.append(out)
        return out
