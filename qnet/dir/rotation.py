"""Per-epoch mix keys on the node side: which to publish, which to try, when to erase (§9.6).

A node publishes, for the epoch ``e`` its descriptor is voted into, ``mix_current``
= its key for ``e`` and ``mix_next`` = its key for ``e + 1``. While epoch ``e``
runs it accepts packets for the keys of ``e`` and ``e + 1`` (a sender may hold the
next consensus early) and, for ``grace`` seconds after ``e − 1`` ended, for the
key of ``e − 1`` too; then that private key is erased. Pure: time is an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from qnet.dir.vote import DirectoryParams

K = TypeVar("K")


class MixKeySchedule(Generic[K]):
    """The mix keys of one node, by epoch. ``make(epoch)`` creates the key for an epoch
    (a fresh random key in production; anything in tests)."""

    def __init__(self, params: DirectoryParams, grace: int, make: Callable[[int], K]) -> None:
        if grace < 0:
            raise ValueError("grace must be non-negative")
        self.params = params
        self.grace = grace
        self._make = make
        self._keys: dict[int, K] = {}

    def key(self, epoch: int) -> K:
        """The key for ``epoch``, made on first use."""
        if epoch not in self._keys:
            self._keys[epoch] = self._make(epoch)
        return self._keys[epoch]

    def publish(self, epoch: int) -> tuple[K, K]:
        """``(mix_current, mix_next)`` for a descriptor with ``mix_epoch = epoch``."""
        return self.key(epoch), self.key(epoch + 1)

    def usable(self, now: int) -> list[tuple[int, K]]:
        """The keys a packet may be for at ``now``: the current epoch's first, then the
        next one's, then the previous one's while its grace period lasts."""
        e = self.params.epoch_at(now)
        order = [e, e + 1]
        if now < self.params.times(e)[0] + self.grace:
            order.append(e - 1)
        return [(x, self._keys[x]) for x in order if x in self._keys]

    def erase_expired(self, now: int) -> list[int]:
        """Forget every key no longer usable at ``now``; the epochs erased."""
        e = self.params.epoch_at(now)
        keep = {x for x, _ in self.usable(now)} | {x for x in self._keys if x > e}
        gone = sorted(x for x in self._keys if x not in keep)
        for x in gone:
            del self._keys[x]
        return gone

    def epochs(self) -> list[int]:
        return sorted(self._keys)
