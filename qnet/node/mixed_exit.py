"""The exit end of mixed-mode streams (spec/mixed.md §4).

A client's stream frames arrive as ``DELIVER`` to ``EXIT_ADDRESS``. Per stream
(``conn_id``) the exit keeps an ``Arq``, the SURBs the client shipped, and a TCP
connection opened under the exit policy (``open_exit_stream``, shared with the
circuit exit). Every frame back to the client rides on one SURB; with no SURB
left the exit waits for the client to send more.

Register it as ``router.services[EXIT_ADDRESS]``; run ``run`` in a nursery.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from qnet.errors import PacketError
from qnet.mix import sphinx as S
from qnet.mix.arq import Arq, ArqConfig, ArqFailed
from qnet.mix.delivery import EXIT_ADDRESS, Delivered, DeliveryRouter
from qnet.mix.frames import Flag, Frame, Kind, decode_frame, max_data
from qnet.node.exit import ExitConnectError, ExitPolicy, open_exit_stream
from qnet.routing.streams import EndReason

if TYPE_CHECKING:
    from qnet.node.app import Node
    from qnet.node.mix import MixService

log = logging.getLogger("qnet.node.mixed_exit")

READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class MixedExitConfig:
    """* ``max_surbs``: SURBs kept per stream (more are discarded).
    * ``send_buffer``: bytes read from the destination and not yet acknowledged.
    * ``idle_timeout``: a stream with no frame from the client this long is dropped.
    * ``linger``: seconds a finished stream is kept to acknowledge late retransmissions.
    """

    arq: ArqConfig = ArqConfig(mss=max_data(0), window=64, rto_initial=3.0)
    max_surbs: int = 512
    send_buffer: int = 256 * 1024
    max_streams: int = 4096
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    linger: float = 30.0


class _Conn:
    def __init__(self, conn_id: bytes, config: MixedExitConfig, now: float) -> None:
        self.conn_id = conn_id
        self.arq = Arq(config.arq)
        self.surbs: deque[S.Surb] = deque()
        self.sock: trio.SocketStream | None = None
        self.to_dest: list[bytes] = []
        self.dest_eof = False
        self.wake = trio.Event()
        self.last_heard = now
        self.done_at: float | None = None
        self.scope = trio.CancelScope()
        self.rst = False
        self.refused = False


class MixedExit:
    """Mixed-mode streams at an exit (a ``DeliveryHandler`` for ``EXIT_ADDRESS``).

    ``send_packet(first_hop, packet)`` queues a Sphinx packet towards a node without
    waiting (the mix role's link queue).
    """

    def __init__(
        self,
        policy: ExitPolicy,
        send_packet: Callable[[bytes, bytes], None],
        config: MixedExitConfig | None = None,
    ) -> None:
        self.policy = policy
        self._send_packet = send_packet
        self.config = config if config is not None else MixedExitConfig()
        self.conns: dict[bytes, _Conn] = {}
        self.counts: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # --- DeliveryHandler ------------------------------------------------------------------------

    def link_closed(self, link: int) -> None:
        pass

    def deliver(self, result: Delivered, link: int) -> None:
        if not isinstance(result, S.Deliver):
            return
        try:
            frame = decode_frame(result.message)
        except PacketError:
            self.counts["bad_frame"] += 1
            return
        if frame.kind is not Kind.STREAM:
            self.counts["not_stream"] += 1
            return
        now = trio.current_time()
        conn = self.conns.get(frame.conn_id)
        if conn is None:
            if not frame.flags & Flag.SYN or frame.flags & (Flag.NOSEQ | Flag.RST) or frame.seq:
                self.counts["unknown_stream"] += 1
                return
            if len(self.conns) >= self.config.max_streams or self._nursery is None:
                self.counts["too_many_streams"] += 1
                return
            conn = self.conns[frame.conn_id] = _Conn(frame.conn_id, self.config, now)
            self._nursery.start_soon(self._serve, conn)
        self._on_frame(conn, frame, now)

    # --- per stream -----------------------------------------------------------------------------

    def _on_frame(self, conn: _Conn, frame: Frame, now: float) -> None:
        conn.last_heard = now
        room = self.config.max_surbs - len(conn.surbs)
        conn.surbs.extend(frame.surbs[: max(0, room)])
        if frame.flags & Flag.RST:
            conn.rst = True
            conn.scope.cancel()
            return
        if frame.flags & Flag.ACK:
            conn.arq.on_ack(frame.ack, frame.sack, now)
        if not frame.flags & Flag.NOSEQ:
            conn.arq.on_segment(frame.seq, frame.flags, frame.data, now)
            for flags, data in conn.arq.take_received():
                if flags & Flag.SYN:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._connect, conn, data)
                    continue
                if data:
                    conn.to_dest.append(data)
                if flags & Flag.FIN:
                    conn.dest_eof = True
        conn.wake.set()

    async def _connect(self, conn: _Conn, target: bytes) -> None:
        host, _, port_text = target.decode("utf-8", "replace").rpartition(":")
        status = 0
        try:
            port = int(port_text)
            if not 0 < port < 65536 or not host:
                raise ValueError(port_text)
            conn.sock = await open_exit_stream(host, port, self.policy, self.config.connect_timeout)
        except ValueError:
            status = EndReason.MISC
        except ExitConnectError as exc:
            status = exc.reason
        conn.arq.send_syn(bytes([status]))
        if status:
            conn.arq.close()
            conn.dest_eof = True
            conn.refused = True
            self.counts["refused"] += 1
        else:
            self.counts["connected"] += 1
        conn.wake.set()

    async def _serve(self, conn: _Conn) -> None:
        with conn.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, conn)
                nursery.start_soon(self._to_destination, conn)
                nursery.start_soon(self._from_destination, conn)
        if conn.sock is not None:
            with trio.CancelScope(shield=True):
                await conn.sock.aclose()
        self.conns.pop(conn.conn_id, None)

    def _transmit(self, conn: _Conn, now: float) -> None:
        """Send what is due while SURBs last: segments first, then a pure ack."""
        arq = conn.arq
        while conn.surbs:
            try:
                seg = arq.next_segment(now)
            except ArqFailed:
                self.counts["arq_failed"] += 1
                conn.scope.cancel()
                return
            if seg is None and not arq.ack_due(now):
                return
            if seg is not None and seg.transmissions > 1:
                self.counts["retransmitted"] += 1
            surb = conn.surbs.popleft()
            ack, sack = arq.ack_fields()
            if seg is None:
                frame = Frame(
                    kind=Kind.STREAM,
                    conn_id=conn.conn_id,
                    flags=Flag.ACK | Flag.NOSEQ,
                    ack=ack,
                    sack=sack,
                    credit=min(len(conn.surbs), 65535),
                )
            else:
                frame = Frame(
                    kind=Kind.STREAM,
                    conn_id=conn.conn_id,
                    flags=Flag.ACK | seg.flags,
                    seq=seg.seq,
                    ack=ack,
                    sack=sack,
                    credit=min(len(conn.surbs), 65535),
                    data=seg.data,
                )
            arq.ack_sent()
            first_hop, packet = S.surb_reply_packet(surb, frame.encode())
            self._send_packet(first_hop, packet)
            self.counts["sent"] += 1

    async def _pump(self, conn: _Conn) -> None:
        while True:
            now = trio.current_time()
            self._transmit(conn, now)
            finished = conn.arq.all_acked and (
                conn.refused or (conn.arq.fin_received and not conn.to_dest and conn.dest_eof)
            )
            if finished and conn.done_at is None:
                conn.done_at = now
            if conn.done_at is not None and now - conn.done_at > self.config.linger:
                conn.scope.cancel()
                return
            if now - conn.last_heard > self.config.idle_timeout:
                self.counts["idle"] += 1
                conn.scope.cancel()
                return
            deadline = conn.arq.next_deadline()
            wait_until = min(
                deadline if deadline is not None else now + 1.0,
                now + 1.0,
            )
            with trio.move_on_at(wait_until):
                await conn.wake.wait()
            # Other tasks may wait on this same event: set it before replacing it, or a
            # timeout here would strand them (the reader stalled with room to read).
            old, conn.wake = conn.wake, trio.Event()
            old.set()

    async def _to_destination(self, conn: _Conn) -> None:
        while conn.sock is None:
            await conn.wake.wait()
            await trio.sleep(0)
        sock = conn.sock
        while True:
            while conn.to_dest:
                chunk = conn.to_dest.pop(0)
                try:
                    await sock.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if conn.dest_eof:
                try:
                    await sock.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return
            await self._changed(conn)

    async def _changed(self, conn: _Conn) -> None:
        event = conn.wake
        await event.wait()
        await trio.sleep(0)

    async def _from_destination(self, conn: _Conn) -> None:
        while conn.sock is None:
            await self._changed(conn)
        sock = conn.sock
        limit = self.config.send_buffer
        mss = self.config.arq.mss
        while True:
            if conn.arq.buffered + conn.arq.in_flight * mss >= limit:
                await self._changed(conn)
                continue
            try:
                data = await sock.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                conn.arq.close()
                conn.wake.set()
                return
            conn.arq.send(bytes(data))
            conn.wake.set()


def mixed_delivery(node: Node, mix: MixService) -> DeliveryRouter:
    """The node's delivery handler (``qnet.node.roles.MIX_DELIVERY``): every mix node
    is a gateway for the clients that register with it; an exit node also ends
    mixed-mode streams under its exit policy."""
    from qnet.dir.descriptor import Role  # noqa: PLC0415 - keep the node import graph flat
    from qnet.mix.gateway import Gateway  # noqa: PLC0415

    router = DeliveryRouter()
    router.gateway = Gateway(mix.push, trio.current_time)
    if Role.EXIT in node.config.node.roles:
        router.services[EXIT_ADDRESS] = MixedExit(node.config.exit.allows, mix.send_packet)
    return router
