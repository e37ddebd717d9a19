"""Replay filters for mix keys (spec/mix.md §3, spec/sphinx.md §10).

A mixnode must refuse the second copy of a Sphinx packet it already processed
under the same mix key. The packet's 16-byte ``replay_tag`` is a function of the
per-hop shared secret, so every copy carries the same tag.

``BloomReplayFilter`` is a partitioned Bloom filter sized for one key's
lifetime at the node's packet rate. It never forgets a tag it was given (no
false negatives) and wrongly calls a fresh tag a replay with probability at
most ``fp_rate`` while it holds no more than ``capacity`` tags (default
1e-6: 20 hash positions, 28.8 bits = 3.6 bytes per tag).

``ReplayFilters`` keeps one filter per mix public key and lets a filter go
when its key is no longer offered (the key's grace period ended).

Both are sans-I/O and single-threaded: callers serialise access (the mix role
does every check on the Trio thread).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterable

__all__ = [
    "DEFAULT_FP_RATE",
    "BloomReplayFilter",
    "ReplayFilters",
    "bloom_size",
]

#: Target probability that a fresh tag is taken for a replay (at capacity).
DEFAULT_FP_RATE = 1e-6
#: Bytes of key mixed into the position hash (a fresh key per filter).
_HASH_KEY_LEN = 16
#: Width of one hash output word (positions are taken modulo the partition size).
_WORD = 4


def bloom_size(capacity: int, fp_rate: float = DEFAULT_FP_RATE) -> tuple[int, int]:
    """``(bits, hashes)`` of a Bloom filter for ``capacity`` items at ``fp_rate``.

    The textbook optimum: ``bits = -n ln p / (ln 2)^2`` and ``hashes = -log2 p``
    (rounded up), so 1e-6 needs 28.76 bits and 20 positions per item.
    """
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    if not 0.0 < fp_rate < 0.5:
        raise ValueError("fp_rate must be in (0, 0.5)")
    hashes = max(1, math.ceil(-math.log2(fp_rate)))
    bits = math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2))
    per_part = -(-bits // hashes)
    per_part = -(-per_part // 8) * 8  # whole bytes per partition
    return per_part * hashes, hashes


class BloomReplayFilter:
    """A partitioned Bloom filter of replay tags (``ReplaySet`` protocol).

    ``hashes`` partitions of ``bits / hashes`` bits each; a tag sets one bit in
    every partition, at positions taken from SHAKE-128 over a per-filter
    random key and the tag. The bit array is an anonymous memory map, so the
    operating system backs only the pages that tags have touched.
    """

    __slots__ = (
        "capacity",
        "fp_rate",
        "bits",
        "hashes",
        "count",
        "_part",
        "_map",
        "_key",
        "_unpack",
    )

    def __init__(
        self, capacity: int, fp_rate: float = DEFAULT_FP_RATE, *, key: bytes | None = None
    ) -> None:
        self.capacity = capacity
        self.fp_rate = fp_rate
        self.bits, self.hashes = bloom_size(capacity, fp_rate)
        self._part = self.bits // self.hashes
        self._map = mmap.mmap(-1, self.bits // 8)
        self._key = os.urandom(_HASH_KEY_LEN) if key is None else bytes(key)
        self._unpack = struct.Struct(f"<{self.hashes}I").unpack
        #: Tags added so far.
        self.count = 0

    @property
    def memory_bytes(self) -> int:
        """Bytes of the bit array (the most the filter can make resident)."""
        return self.bits // 8

    def _positions(self, tag: bytes) -> list[int]:
        words = self._unpack(hashlib.shake_128(self._key + tag).digest(_WORD * self.hashes))
        part = self._part
        return [i * part + w % part for i, w in enumerate(words)]

    def __contains__(self, tag: object) -> bool:
        if not isinstance(tag, (bytes, bytearray)):
            return False
        bits = self._map
        for p in self._positions(bytes(tag)):
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def add(self, tag: bytes) -> None:
        bits = self._map
        for p in self._positions(bytes(tag)):
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def check_and_add(self, tag: bytes) -> bool:
        """Record ``tag``; ``True`` if it was (probably) there already."""
        bits = self._map
        seen = True
        for p in self._positions(tag):
            byte, bit = p >> 3, 1 << (p & 7)
            old = bits[byte]
            if not old & bit:
                seen = False
                bits[byte] = old | bit
        if not seen:
            self.count += 1
        return seen

    def estimated_fp_rate(self) -> float:
        """The false-positive rate at the current fill (rises past ``capacity``)."""
        return float((1.0 - math.exp(-self.count / self._part)) ** self.hashes)

    def clear(self) -> None:
        """Forget every tag, keeping the memory (and the hash key)."""
        self._map[:] = bytes(len(self._map))
        self.count = 0

    def close(self) -> None:
        """Give the memory back now (otherwise when the filter is collected)."""
        self._map.close()


FilterFactory = Callable[[], BloomReplayFilter]


class ReplayFilters:
    """One replay filter per mix key, made on first use and dropped with the key.

    ``sync(public_keys)`` is called with the keys the node still offers
    (current, next, and the previous one during its grace period); every other
    key's filter is released, which is the reset at rotation.
    """

    def __init__(self, factory: FilterFactory) -> None:
        self._factory = factory
        self._filters: dict[bytes, BloomReplayFilter] = {}

    def for_key(self, public: bytes) -> BloomReplayFilter:
        found = self._filters.get(public)
        if found is None:
            found = self._filters[public] = self._factory()
        return found

    def sync(self, public_keys: Iterable[bytes]) -> list[bytes]:
        """Drop the filters of keys not in ``public_keys``; returns the dropped keys."""
        live = set(public_keys)
        gone = [k for k in self._filters if k not in live]
        for k in gone:
            self._filters.pop(k).close()
        return gone

    def __len__(self) -> int:
        return len(self._filters)

    @property
    def memory_bytes(self) -> int:
        return sum(f.memory_bytes for f in self._filters.values())
