"""Cell links: link units over HTX, one link per peer, reused by every circuit.

Each HTX link carries one *cell stream* (the first stream the dialer opens):
2,048-byte units back to back in both directions (spec/cells.md §1). A node
dials other nodes with its own link key, so the accepting side can tell which
node it is (``HtxLink.remote_static``); a client dials with a fresh key.

``LinkManager`` keeps at most one link per peer node, dials on demand with
backoff after failures, and hands every batch of received units to the owner.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from qnet.constants import UNIT_LEN
from qnet.htx.errors import HandshakeError, HtxTimeout, TicketError, TlsError
from qnet.htx.services import Service, open_service_stream, read_service
from qnet.htx.transport import HtxLink, HtxStream, PeerInfo, dial_tcp

log = logging.getLogger("qnet.node.links")

#: Units read from one link before they are handed over as one batch.
MAX_BATCH = 64
DIAL_ERRORS = (OSError, HtxTimeout, TicketError, TlsError, HandshakeError, trio.BrokenResourceError)


class CellLink:
    """One peer's cell stream. ``number`` names the link in the circuit engines."""

    def __init__(
        self, number: int, link: HtxLink, stream: HtxStream, *, dialed: bool, peer: bytes | None
    ) -> None:
        self.number = number
        self.htx = link
        self.stream = stream
        self.dialed = dialed
        self.peer = peer  # the peer's node id when known
        self._buffer = bytearray()
        self._send_lock = trio.Lock()
        self._queue: list[bytes] = []
        self._queued = 0  # units in _queue
        self._queued_ready = trio.Event()
        self.closed = False

    def queue_units(self, units: list[bytes], limit: int) -> bool:
        """Queue units for this link's writer task without waiting. Each item of
        ``units`` is one or more whole units, back to back.

        Returns ``False`` (and queues nothing) when more than ``limit`` units would
        be waiting: the peer is not reading and the caller should shed load. Readers
        never block on writes this way, so two relays sending to each other cannot
        deadlock on full flow-control windows.
        """
        count = sum(map(len, units)) // UNIT_LEN
        if self.closed or self._queued + count > limit:
            return False
        self._queue += units
        self._queued += count
        self._queued_ready.set()
        return True

    async def write_queued(self) -> None:
        """The link's writer task: drain the queue until the link breaks."""
        while True:
            await self._queued_ready.wait()
            self._queued_ready = trio.Event()
            units, self._queue = self._queue, []
            self._queued = 0
            if units:
                await self.send_units(units)

    async def send_units(self, units: list[bytes]) -> None:
        """Write units in order; raises ``trio.BrokenResourceError`` if the link died."""
        if not units:
            return
        async with self._send_lock:
            await self.stream.send_all(b"".join(units))

    async def receive_units(self) -> list[bytes] | None:
        """The next whole units (at most ``MAX_BATCH``); ``None`` once the peer is gone."""
        while len(self._buffer) < UNIT_LEN:
            data = await self.stream.receive_some(UNIT_LEN * MAX_BATCH)
            if not data:
                return None
            self._buffer += data
        whole = min(len(self._buffer) // UNIT_LEN, MAX_BATCH)
        chunk = bytes(self._buffer[: whole * UNIT_LEN])
        del self._buffer[: whole * UNIT_LEN]
        return [chunk[i * UNIT_LEN : (i + 1) * UNIT_LEN] for i in range(whole)]

    async def aclose(self) -> None:
        self.closed = True
        await self.htx.aclose()


UnitsHandler = Callable[[CellLink, list[bytes]], Awaitable[None]]
ClosedHandler = Callable[[CellLink], Awaitable[None]]


class LinkManager:
    """Every cell link of one node or client. Run it with ``await nursery.start(mgr.run)``.

    ``peer_info(node_id)`` gives the dial information from the consensus (``None``
    for an unknown node). ``static_private`` is the node's link key (``None`` for a
    client: a fresh key per link). ``on_units`` gets every batch read from a link,
    in order; ``on_closed`` is told once when a link ends.
    """

    def __init__(
        self,
        *,
        peer_info: Callable[[bytes], PeerInfo | None],
        on_units: UnitsHandler,
        on_closed: ClosedHandler,
        static_private: bytes | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        dial_timeout: float = 10.0,
    ) -> None:
        self._peer_info = peer_info
        self._on_units = on_units
        self._on_closed = on_closed
        self._static = static_private
        self._numbers = itertools.count(1)
        self._by_node: dict[bytes, CellLink] = {}
        self._dialing: dict[bytes, trio.Event] = {}
        self._backoff: dict[bytes, tuple[float, float]] = {}  # node -> (retry at, delay)
        self.links: dict[int, CellLink] = {}
        self._nursery: trio.Nursery | None = None
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._dial_timeout = dial_timeout

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the links' tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        assert self._nursery is not None, "LinkManager.run is not running"
        self._nursery.start_soon(fn, *args)

    async def get(self, node_id: bytes) -> CellLink:
        """The link to ``node_id``, dialing it if needed. Raises one of ``DIAL_ERRORS``
        or ``LookupError`` (unknown node); a failed dial backs off before the next try."""
        while True:
            link = self._by_node.get(node_id)
            if link is not None and not link.closed:
                return link
            pending = self._dialing.get(node_id)
            if pending is None:
                break
            await pending.wait()
        retry_at, _ = self._backoff.get(node_id, (0.0, 0.0))
        if trio.current_time() < retry_at:
            raise trio.BrokenResourceError(f"backing off from {node_id.hex()[:12]}")
        info = self._peer_info(node_id)
        if info is None:
            raise LookupError(f"no dial information for node {node_id.hex()[:12]}")
        done = self._dialing[node_id] = trio.Event()
        try:
            link = await self._dial(info, node_id)
        except DIAL_ERRORS:
            _, delay = self._backoff.get(node_id, (0.0, self._backoff_initial / 2))
            delay = min(self._backoff_max, delay * 2)
            self._backoff[node_id] = (trio.current_time() + delay, delay)
            raise
        finally:
            del self._dialing[node_id]
            done.set()
        self._backoff.pop(node_id, None)
        return link

    async def _dial(self, info: PeerInfo, node_id: bytes) -> CellLink:
        opened: trio.Event = trio.Event()
        holder: list[CellLink | BaseException] = []

        async def hold_link() -> None:
            # The link lives as long as this task: dial_tcp's context is entered here.
            try:
                async with dial_tcp(
                    info, static_private=self._static, timeout=self._dial_timeout
                ) as htx:
                    stream = await open_service_stream(htx, Service.CELLS)
                    link = self._register(htx, stream, dialed=True, peer=node_id)
                    holder.append(link)
                    opened.set()
                    await self._pump(link)
            except DIAL_ERRORS as exc:
                if not opened.is_set():
                    holder.append(exc)
                    opened.set()
                else:
                    log.info("link to %s ended: %r", node_id.hex()[:12], exc)

        self._spawn(hold_link)
        await opened.wait()
        result = holder[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _register(
        self, htx: HtxLink, stream: HtxStream, *, dialed: bool, peer: bytes | None
    ) -> CellLink:
        link = CellLink(next(self._numbers), htx, stream, dialed=dialed, peer=peer)
        self.links[link.number] = link
        if peer is not None:
            self._by_node[peer] = link
        return link

    async def accept(self, htx: HtxLink, peer: bytes | None) -> None:
        """Serve an accepted HTX link whose only service is cells (tests, simple nodes).

        ``peer`` is the node id matching ``htx.remote_static`` in the consensus, or
        ``None`` for a client. Streams for other services are closed.
        """
        while True:
            try:
                stream = await htx.accept_stream()
            except trio.EndOfChannel:
                return
            if await read_service(stream) is Service.CELLS:
                await self.accept_cell_stream(htx, stream, peer)
                return
            await stream.aclose()

    async def accept_cell_stream(self, htx: HtxLink, stream: HtxStream, peer: bytes | None) -> None:
        """Serve the cell stream a peer opened on an accepted link (its service byte read)."""
        link = self._register(htx, stream, dialed=False, peer=peer)
        await self._pump(link)

    async def _pump(self, link: CellLink) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, link, nursery.cancel_scope)
            await self._read(link)
            nursery.cancel_scope.cancel()

    async def _write(self, link: CellLink, scope: trio.CancelScope) -> None:
        try:
            await link.write_queued()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            link.closed = True
            scope.cancel()  # the reader sees the end too; the link is done

    async def _read(self, link: CellLink) -> None:
        try:
            while True:
                try:
                    units = await link.receive_units()
                except trio.BrokenResourceError:
                    units = None
                if units is None:
                    return
                await self._on_units(link, units)
        finally:
            link.closed = True
            self.links.pop(link.number, None)
            if link.peer is not None and self._by_node.get(link.peer) is link:
                del self._by_node[link.peer]
            with trio.CancelScope(shield=True):
                await self._on_closed(link)

    def connected(self, node_id: bytes) -> CellLink | None:
        """The open link to ``node_id``, if there is one; never dials."""
        link = self._by_node.get(node_id)
        return link if link is not None and not link.closed else None

    def queue(self, number: int, units: list[bytes], limit: int = 4096) -> bool:
        """Queue units on link ``number`` without waiting; ``False`` if it is gone or full."""
        link = self.links.get(number)
        return link is not None and link.queue_units(units, limit)

    async def send(self, number: int, units: list[bytes]) -> bool:
        """Write to link ``number``; ``False`` if it is gone (the caller tears circuits down)."""
        link = self.links.get(number)
        if link is None or link.closed:
            return False
        try:
            await link.send_units(units)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def close_all(self) -> None:
        for link in list(self.links.values()):
            with trio.move_on_after(2):
                await link.aclose()
