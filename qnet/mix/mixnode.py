"""The mixnode's protocol core, sans-I/O (spec/mix.md).

Time is an argument and nothing here touches a socket, a thread or Trio. The
Trio driver (``qnet.node.mix.MixService``) moves packets through three verbs::

    core = MixCore(MixSettings())
    core.receive(link, packets, now)          # rate limit, bounded inbox
    batch = core.take_batch()                 # -> worker thread:
    outcomes = unwrap_batch(batch.packets, keys)  # pure, GIL released for the crypto
    core.admit(batch, outcomes, now)          # replay check, delay heap (Trio thread)
    wake_at = core.next_deadline()            # None: nothing held
    for item in core.release(now): ...        # Forward | Final (Deliver / SurbReply + link)

Every packet the core refuses is counted in ``core.drops`` under its reason;
the driver drains the counter into the node's metrics.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from qnet.constants import REPLAY_TAG_LEN
from qnet.crypto import accel
from qnet.mix import sphinx as S
from qnet.mix.replay import DEFAULT_FP_RATE, BloomReplayFilter, ReplayFilters

__all__ = [
    "Batch",
    "Final",
    "Forward",
    "Held",
    "MixCore",
    "MixSettings",
    "Outcome",
    "Released",
    "TokenBucket",
    "unwrap_batch",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MixSettings:
    """Bounds and sizes of one mixnode (the node config's ``[mix]`` table)."""

    #: Worker threads unwrapping batches (1 or 2 on this project's machines).
    workers: int = 2
    #: Packets handed to one worker call.
    batch: int = 64
    #: Packets waiting for a worker; past it new packets drop as ``overload``.
    max_inbox: int = 4096
    #: Packets waiting out their delay; past it new ones drop as ``delay_queue_full``.
    max_held: int = 32768
    #: Longest delay (seconds) a packet may ask for; longer ones drop as ``delay_too_long``.
    max_delay: float = 60.0
    #: Sustained packets per second one incoming link may send.
    link_rate: float = 4000.0
    #: Packets a link may send in one burst above its rate.
    link_burst: int = 512
    #: Packet rate (per second) the replay filters are sized for.
    replay_rate: float = 1000.0
    #: False-positive rate of a replay filter at its capacity.
    replay_fp_rate: float = DEFAULT_FP_RATE
    #: Epoch length in seconds (a mix key lives one epoch plus its neighbours' edges).
    epoch_seconds: int = 3600
    #: Packets waiting, over all next hops, for a link that is still being dialed.
    max_dial_backlog: int = 1024

    def __post_init__(self) -> None:
        for name in ("workers", "batch", "max_inbox", "max_held", "link_burst", "epoch_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_dial_backlog < 0:
            raise ValueError("max_dial_backlog must be >= 0")
        for name in ("max_delay", "link_rate", "replay_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def replay_capacity(self) -> int:
        """Tags one key's filter is sized for: two epochs at ``replay_rate``.

        A key is used mostly in its own epoch, by early clients at the end of the
        epoch before, and by late ones during its grace epoch; two full epochs
        covers those edges with room to spare.
        """
        return max(1, int(self.replay_rate * self.epoch_seconds * 2))

    def new_filter(self) -> BloomReplayFilter:
        return BloomReplayFilter(self.replay_capacity, self.replay_fp_rate)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``packet`` to ``next_hop`` now (its delay is over)."""

    next_hop: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Final:
    """A packet that ends here (its delay is over), with the link it arrived on."""

    result: S.Deliver | S.SurbReply
    link: int


Released = Forward | Final


@dataclass(frozen=True, slots=True)
class Batch:
    """Packets for one worker call and the links they arrived on (same order)."""

    links: list[int]
    packets: list[bytes]

    def __len__(self) -> int:
        return len(self.packets)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker made of one packet.

    ``tag`` and ``key`` are set when a key's MAC verified (the packet is then
    recorded in that key's replay filter whatever its slot says).
    """

    result: S.Unwrapped | S.Drop
    tag: bytes | None = None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """A packet the core scheduled: released at ``release_at`` (delay ``delay``)."""

    release_at: float
    delay: float
    item: Released


def unwrap_batch(packets: Sequence[bytes], keys: Sequence[S.MixKey]) -> list[Outcome]:
    """Peel one layer off each packet, trying ``keys`` in order (spec/sphinx.md §7).

    A packet whose MAC fails under one key is tried under the next; one that
    fails under all of them is ``bad_mac``. Pure and thread-safe: the hot-path
    loop runs with the GIL released, so two threads use two cores. Replays are
    not checked here (``MixCore.admit`` does that, on one thread, in order).
    """
    out: list[Outcome | None] = [None] * len(packets)
    todo = list(range(len(packets)))
    if not keys:
        return [Outcome(S.Drop("no_key")) for _ in packets]
    for n, key in enumerate(keys):
        last = n == len(keys) - 1
        outputs = accel.sphinx_unwrap_batch(
            key.private_bytes, key.public_bytes, [packets[i] for i in todo]
        )
        retry: list[int] = []
        for i, (status, block) in zip(todo, outputs, strict=True):
            if status == accel.ERR_MAC and not last:
                retry.append(i)
                continue
            tag = block[:REPLAY_TAG_LEN] if status == accel.OK else None
            out[i] = Outcome(
                S.interpret_output(status, block), tag, key.public_bytes if tag else None
            )
        todo = retry
        if not todo:
            break
    return [o if o is not None else Outcome(S.Drop("bad_mac")) for o in out]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per packet."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, want: int, now: float) -> int:
        """Take up to ``want`` tokens; returns how many were granted."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        granted = min(want, int(self.tokens))
        self.tokens -= granted
        return granted

    def full_at(self) -> float:
        """When the bucket will be full again (an idle bucket can be forgotten)."""
        return self.stamp + (self.burst - self.tokens) / self.rate


#: Reasons a mix refuses a packet that unwrapped fine but is not mix traffic.
_NOT_MIX = "not_mix_command"


class MixCore:
    """Inbox, replay filters and delay heap of one mixnode; see the module docstring.

    Memory is bounded by the settings: at most ``max_inbox`` packets wait for a
    worker, ``max_held`` wait out their delay, one token bucket per link that
    sent recently, and the replay filters of the keys still offered.
    """

    def __init__(self, settings: MixSettings, *, filters: ReplayFilters | None = None) -> None:
        self.settings = settings
        self.filters = filters if filters is not None else ReplayFilters(settings.new_filter)
        self.drops: Counter[str] = Counter()
        self._inbox: deque[tuple[int, bytes]] = deque()
        self._heap: list[tuple[float, int, Released]] = []
        self._seq = itertools.count()
        self._buckets: dict[int, TokenBucket] = {}
        #: Packets taken by ``take_batch`` and not yet admitted.
        self.in_flight = 0
        self.received = 0
        self.scheduled = 0

    # --- in ------------------------------------------------------------------------------

    def receive(self, link: int, packets: Sequence[bytes], now: float) -> int:
        """Queue packets read from ``link``; returns how many were accepted.

        Packets beyond the link's token bucket drop as ``rate_limited``, and
        those that find the inbox full as ``overload``.
        """
        s = self.settings
        self.received += len(packets)
        bucket = self._buckets.get(link)
        if bucket is None:
            bucket = self._buckets[link] = TokenBucket(s.link_rate, s.link_burst, now)
        granted = bucket.take(len(packets), now)
        if granted < len(packets):
            self.drops["rate_limited"] += len(packets) - granted
        room = max(0, s.max_inbox - len(self._inbox))
        accepted = min(granted, room)
        if accepted < granted:
            self.drops["overload"] += granted - accepted
        self._inbox.extend((link, p) for p in packets[:accepted])
        return accepted

    @property
    def inbox_len(self) -> int:
        return len(self._inbox)

    def take_batch(self, size: int | None = None) -> Batch:
        """Up to ``size`` (default ``settings.batch``) packets for one worker call."""
        n = min(size or self.settings.batch, len(self._inbox))
        taken = [self._inbox.popleft() for _ in range(n)]
        self.in_flight += n
        return Batch([link for link, _ in taken], [p for _, p in taken])

    def admit(self, batch: Batch, outcomes: Sequence[Outcome], now: float) -> list[Held]:
        """Check replays and schedule what a worker unwrapped from ``batch`` at ``now``.

        Returns what was scheduled, with release times (tests read the delays
        from here; the driver only needs ``next_deadline``).
        """
        s = self.settings
        if len(outcomes) != len(batch):
            raise ValueError("one outcome per packet of the batch")
        self.in_flight = max(0, self.in_flight - len(outcomes))
        held: list[Held] = []
        for link, outcome in zip(batch.links, outcomes, strict=True):
            result = outcome.result
            if outcome.tag is not None and outcome.key is not None:
                if self.filters.for_key(outcome.key).check_and_add(outcome.tag):
                    self.drops["replay"] += 1
                    continue
            if isinstance(result, S.Drop):
                self.drops[result.reason] += 1
                continue
            item: Released
            if isinstance(result, S.Relay):
                item = Forward(result.next_hop, result.packet)
            elif isinstance(result, (S.Deliver, S.SurbReply)):
                item = Final(result, link)
            else:
                self.drops[_NOT_MIX] += 1
                continue
            delay = result.delay_us / 1e6
            if delay > s.max_delay:
                self.drops["delay_too_long"] += 1
                continue
            if len(self._heap) >= s.max_held:
                self.drops["delay_queue_full"] += 1
                continue
            release_at = now + delay
            heapq.heappush(self._heap, (release_at, next(self._seq), item))
            held.append(Held(release_at, delay, item))
        self.scheduled += len(held)
        return held

    # --- out -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the earliest held packet is due (``None``: nothing held)."""
        return self._heap[0][0] if self._heap else None

    @property
    def held_len(self) -> int:
        return len(self._heap)

    def release(self, now: float) -> list[Released]:
        """Everything due at or before ``now``, earliest first."""
        out: list[Released] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    # --- housekeeping ------------------------------------------------------------------

    def forget_idle_links(self, now: float) -> int:
        """Drop token buckets that have refilled (a new bucket would be the same)."""
        idle = [link for link, b in self._buckets.items() if b.full_at() <= now]
        for link in idle:
            del self._buckets[link]
        return len(idle)

    def sync_keys(self, public_keys: Sequence[bytes]) -> list[bytes]:
        """The node now offers ``public_keys``: release every other key's filter."""
        return self.filters.sync(public_keys)
