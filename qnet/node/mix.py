"""The mix role in Trio: SPHINX units in, worker threads, a timer heap, units out.

``MixService`` drives the sans-I/O ``qnet.mix.mixnode.MixCore``:

* the relay service hands it every SPHINX unit's packet (``receive``, never
  blocks: the core queues or drops);
* ``workers`` tasks each take a batch and unwrap it in a thread
  (``trio.to_thread.run_sync``; the hot path releases the GIL, so two workers
  use two cores), then admit the results on the Trio thread (replay filters,
  delay heap);
* one timer task sleeps until the earliest release and sends what is due:
  ``Forward`` as SPHINX units over the node's ``LinkManager`` (dialing the next
  hop when there is no link yet), ``Deliver`` / ``SurbReply`` to the delivery
  handler with the number of the link the packet arrived on.

The delivery handler is the seam to the client-side work (exits, gateways):
``qnet.mix.delivery.DeliveryHandler`` (``deliver(result, link)``,
``link_closed(link)``), spec/mix.md §7. Handlers send with ``send_packet``
(a Sphinx packet to a node, no delay) and ``push`` (units on a link).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import trio

from qnet.mix import sphinx as S
from qnet.mix.delivery import Delivered, DeliveryHandler
from qnet.mix.mixnode import Forward, MixCore, MixSettings, Released, unwrap_batch
from qnet.node.links import DIAL_ERRORS, LinkManager
from qnet.routing.cells import Unit, UnitCommand

__all__ = ["CountingDelivery", "MixService", "sphinx_unit"]

log = logging.getLogger("qnet.node.mix")

#: Seconds between housekeeping passes (idle token buckets, key filters).
HOUSEKEEPING_EVERY = 5.0
#: Units queued on one outgoing link before the link counts as full.
LINK_QUEUE_LIMIT = 8192

_SPHINX_HEAD = Unit(circ_id=0, command=UnitCommand.SPHINX, body=bytes(2040)).encode()[:8]


def sphinx_unit(packet: bytes) -> bytes:
    """The 2,048-byte link unit carrying one Sphinx packet (circ_id 0)."""
    return _SPHINX_HEAD + packet


class CountingDelivery:
    """The default delivery handler: count what ends here and drop it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def deliver(self, result: Delivered, link: int) -> None:
        self.counts["deliver" if isinstance(result, S.Deliver) else "surb_reply"] += 1

    def link_closed(self, link: int) -> None:
        pass


class MixService:
    """One node's mix role. Start it with ``await nursery.start(service.run)``.

    ``mix_keys()`` gives the keys to try, newest relevant first (as
    ``qnet.node.roles.NodeMixKeys``); ``links`` is the node's link manager (set
    it with ``attach`` when it is made after this service). ``on_drop(reason,
    count)`` and ``on_forward(packets)`` feed the node's metrics.
    """

    def __init__(
        self,
        settings: MixSettings,
        *,
        mix_keys: Callable[[], Sequence[S.MixKey]],
        links: LinkManager | None = None,
        delivery: DeliveryHandler | None = None,
        on_drop: Callable[[str, int], None] | None = None,
        on_forward: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.core = MixCore(settings)
        self.links = links
        self.delivery: DeliveryHandler = delivery or CountingDelivery()
        self._mix_keys = mix_keys
        self._on_drop = on_drop
        self._on_forward = on_forward
        self._work = trio.lowlevel.ParkingLot()
        self._timer_wake = trio.Event()
        self._limiter = trio.CapacityLimiter(settings.workers)
        self._dialing: dict[bytes, list[bytes]] = {}
        self._dial_backlog = 0
        self._nursery: trio.Nursery | None = None
        #: Every drop ever counted (the metrics get the same numbers).
        self.drops: Counter[str] = Counter()
        self.forwarded = 0
        self.delivered = 0

    def attach(self, links: LinkManager) -> None:
        self.links = links

    # --- for delivery handlers -------------------------------------------------------

    def send_packet(self, node_id: bytes, packet: bytes) -> None:
        """Send one Sphinx packet to ``node_id`` now (no mix delay), dialing if needed.

        Never waits; a packet that cannot be queued is dropped and counted.
        """
        self._forward(node_id, [sphinx_unit(packet)])
        self._report()

    def push(self, link: int, units: list[bytes]) -> bool:
        """Queue whole link units on link ``link``; ``False`` if it is gone or full."""
        assert self.links is not None, "MixService.attach(links) was not called"
        return self.links.queue(link, units, LINK_QUEUE_LIMIT)

    def link_closed(self, link: int) -> None:
        """A link ended (the relay service's hook): tell the delivery handler."""
        self.delivery.link_closed(link)

    # --- in ------------------------------------------------------------------------------

    def receive(self, link: int, packets: list[bytes]) -> None:
        """Packets of SPHINX units read from link ``link`` (the relay service's hook)."""
        self.core.receive(link, packets, trio.current_time())
        self._report()
        if self.core.inbox_len:
            self._work.unpark_all()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.settings.workers):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._timer)
            nursery.start_soon(self._housekeeping)
            runner = getattr(self.delivery, "run", None)
            if callable(runner):  # a handler with tasks (an exit) runs with the mix
                await nursery.start(runner)
            task_status.started()

    async def _worker(self) -> None:
        while True:
            batch = self.core.take_batch()
            if not batch:
                await self._work.park()
                continue
            keys = list(self._mix_keys())
            outcomes = await trio.to_thread.run_sync(
                unwrap_batch, batch.packets, keys, limiter=self._limiter
            )
            if self.core.admit(batch, outcomes, trio.current_time()):
                self._timer_wake.set()
            self._report()

    async def _timer(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            if deadline is None:
                await self._timer_wake.wait()
            elif deadline > trio.current_time():
                with trio.move_on_at(deadline):
                    await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            due = self.core.release(trio.current_time())
            if due:
                self._send(due)
                self._report()
            await trio.lowlevel.checkpoint()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_EVERY)
            self.core.forget_idle_links(trio.current_time())
            self.core.sync_keys([k.public_bytes for k in self._mix_keys()])

    # --- out -----------------------------------------------------------------------------

    def _send(self, due: list[Released]) -> None:
        by_hop: dict[bytes, list[bytes]] = defaultdict(list)
        for item in due:
            if isinstance(item, Forward):
                by_hop[item.next_hop].append(sphinx_unit(item.packet))
            else:
                try:
                    self.delivery.deliver(item.result, item.link)
                    self.delivered += 1
                except Exception:  # noqa: BLE001 - a handler bug must not stop the mix
                    log.exception("delivery handler failed")
                    self.core.drops["delivery_error"] += 1
        for hop, units in by_hop.items():
            self._forward(hop, units)

    def _forward(self, hop: bytes, units: list[bytes]) -> None:
        pending = self._dialing.get(hop)
        if pending is not None:
            self._hold_for_dial(pending, units)
            return
        assert self.links is not None, "MixService.attach(links) was not called"
        link = self.links.connected(hop)
        if link is not None:
            if link.queue_units(units, LINK_QUEUE_LIMIT):
                self._forwarded(len(units))
            else:
                self.core.drops["link_backlog"] += len(units)
            return
        pending = self._dialing[hop] = []
        self._hold_for_dial(pending, units)
        assert self._nursery is not None
        self._nursery.start_soon(self._dial, hop)

    def _hold_for_dial(self, pending: list[bytes], units: list[bytes]) -> None:
        room = max(0, self.settings.max_dial_backlog - self._dial_backlog)
        if room < len(units):
            self.core.drops["dial_backlog"] += len(units) - room
        pending += units[:room]
        self._dial_backlog += min(room, len(units))

    async def _dial(self, hop: bytes) -> None:
        assert self.links is not None
        reason: str | None = None
        link = None
        try:
            link = await self.links.get(hop)
        except LookupError:
            reason = "unknown_next_hop"
        except DIAL_ERRORS as exc:
            log.info("mix: next hop %s unreachable: %r", hop.hex()[:12], exc)
            reason = "next_hop_unreachable"
        units = self._dialing.pop(hop, [])
        self._dial_backlog -= len(units)
        if link is not None and link.queue_units(units, LINK_QUEUE_LIMIT):
            self._forwarded(len(units))
        elif units:
            self.core.drops[reason or "link_backlog"] += len(units)
        self._report()

    def _forwarded(self, n: int) -> None:
        self.forwarded += n
        if self._on_forward is not None:
            self._on_forward(n)

    def _report(self) -> None:
        drops = self.core.drops
        if not drops:
            return
        self.drops.update(drops)
        if self._on_drop is not None:
            for reason, count in drops.items():
                self._on_drop(reason, count)
        drops.clear()
