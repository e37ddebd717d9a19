"""Loopix cover traffic for a mixed-mode client (spec/mixed.md §5).

Three independent Poisson streams leave the client, each a sequence of ticks
with exponential gaps (Loopix, Piotrowska et al. 2017):

* **payload** (rate ``payload_per_s``): at each tick the client sends its next
  real packet if one is waiting, otherwise a drop packet. Real packets only
  *replace* cover ones, so the tick times do not depend on what the user does.
* **loop** (``loop_per_s``): a packet that crosses the mix layers and comes back
  to the client through its gateway (a loop SURB-reply route).
* **drop** (``drop_per_s``): a packet that crosses the layers and is discarded
  by its last hop.

An observer of the client's link sees one Poisson process of rate
``payload + loop + drop`` whether or not the user sends.

``CoverScheduler`` is sans-I/O (``now`` and the RNG are arguments);
``run_cover`` is its Trio driver.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

#: Payload-stream rate when the consensus carries no ``mix_payload_per_s``.
DEFAULT_PAYLOAD_PER_S = 20.0


class Tick(enum.Enum):
    PAYLOAD = "payload"
    LOOP = "loop"
    DROP = "drop"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoverRates:
    """Packets per second of each stream (0 turns a stream off)."""

    payload_per_s: float
    loop_per_s: float
    drop_per_s: float

    def __post_init__(self) -> None:
        for name in ("payload_per_s", "loop_per_s", "drop_per_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"CoverRates.{name} must be a non-negative number")

    @classmethod
    def from_params(cls, params: Mapping[str, int]) -> CoverRates:
        """Rates from the consensus parameters: ``cover_loop_per_min``,
        ``cover_drop_per_min`` and ``mix_payload_per_s`` (spec/mixed.md §5)."""
        return cls(
            payload_per_s=float(params.get("mix_payload_per_s", DEFAULT_PAYLOAD_PER_S)),
            loop_per_s=params.get("cover_loop_per_min", 6) / 60.0,
            drop_per_s=params.get("cover_drop_per_min", 6) / 60.0,
        )

    @property
    def total(self) -> float:
        return self.payload_per_s + self.loop_per_s + self.drop_per_s

    def rate(self, tick: Tick) -> float:
        if tick is Tick.PAYLOAD:
            return self.payload_per_s
        if tick is Tick.LOOP:
            return self.loop_per_s
        return self.drop_per_s


class CoverScheduler:
    """When each stream ticks next. Sans-I/O::

    sched = CoverScheduler(rates, random.Random(seed), now)
    sched.next_time()      # the earliest pending tick
    sched.poll(now)        # every tick due by ``now``, in time order
    """

    def __init__(self, rates: CoverRates, rng: random.Random, now: float) -> None:
        self._rng = rng
        self.rates = rates
        self._next: dict[Tick, float] = {t: self._draw(t, now) for t in Tick}

    def _draw(self, tick: Tick, after: float) -> float:
        rate = self.rates.rate(tick)
        return after + self._rng.expovariate(rate) if rate > 0 else float("inf")

    def set_rates(self, rates: CoverRates, now: float) -> None:
        """New rates (a new consensus): every stream draws its next tick afresh
        (memorylessness makes this exact)."""
        self.rates = rates
        self._next = {t: self._draw(t, now) for t in Tick}

    def next_time(self) -> float:
        return min(self._next.values())

    def poll(self, now: float) -> list[tuple[float, Tick]]:
        """Every tick due at or before ``now``, oldest first, with its scheduled time.
        Each stream's next tick is drawn from its own scheduled time, not from
        ``now``, so a late caller does not change the process."""
        out: list[tuple[float, Tick]] = []
        while True:
            tick = min(self._next, key=lambda t: self._next[t])
            when = self._next[tick]
            if when > now:
                return out
            out.append((when, tick))
            self._next[tick] = self._draw(tick, when)


Packet = tuple[bytes, bytes]  # (first hop, Sphinx packet)


@dataclass(slots=True, kw_only=True)
class CoverSource:
    """What the driver asks the client for at each tick.

    * ``real``: the next real packet, or ``None`` (then a drop packet goes instead);
    * ``loop`` / ``drop``: a fresh cover packet (``None``: not possible now, e.g.
      no consensus; the tick passes silently);
    * ``send``: put a packet on the link to the gateway.
    """

    real: Callable[[float], Packet | None]
    loop: Callable[[float], Packet | None]
    drop: Callable[[float], Packet | None]
    send: Callable[[Packet], Awaitable[None]]


@dataclass(slots=True)
class CoverCounters:
    real: int = 0
    loop: int = 0
    drop: int = 0


async def run_cover(
    scheduler: CoverScheduler,
    source: CoverSource,
    counters: CoverCounters | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send one packet per tick until cancelled (the Trio driver of ``CoverScheduler``)."""
    counts = counters if counters is not None else CoverCounters()
    task_status.started()
    while True:
        await trio.sleep_until(scheduler.next_time())
        now = trio.current_time()
        for _, tick in scheduler.poll(now):
            packet: Packet | None = None
            if tick is Tick.PAYLOAD:
                packet = source.real(now)
                if packet is not None:
                    counts.real += 1
            if packet is None and tick is Tick.LOOP:
                packet = source.loop(now)
                counts.loop += packet is not None
            elif packet is None:
                packet = source.drop(now)
                counts.drop += packet is not None
            if packet is not None:
                await source.send(packet)
