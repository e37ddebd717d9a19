"""An exit's end of one circuit: streams to the Internet under the exit policy.

``ExitCircuit`` owns a ``CircuitEndpoint(role=EXIT)`` and one Trio task per
open stream direction. The relay service hands it decrypted relay cells
(``on_cell``) and gets relay plaintexts back through ``send_plaintexts``.

The policy is applied to a literal address before connecting, and to every
address a name resolves to (spec/circuits.md §6), so a name that resolves to a
refused address (loopback, private ranges, …) is refused.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from qnet.routing.cells import RelayCell
from qnet.routing.relay import DestroyReason
from qnet.routing.streams import (
    CircuitEndpoint,
    EndpointClosed,
    EndReason,
    ProtocolViolation,
    ResolveRequested,
    Role,
    SendBufferFull,
    StreamConfig,
    StreamData,
    StreamEnded,
    StreamRequested,
    StreamUsageError,
)
from qnet.sockerr import errno_of

log = logging.getLogger("qnet.node.exit")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``allows(ip, port)``: the node's exit policy (``ExitSection.allows``).
ExitPolicy = Callable[[IPAddress, int], bool]
READ_SIZE = 64 * 1024


@dataclass(slots=True)
class _Conn:
    sock: trio.SocketStream
    out: list[bytes] = field(default_factory=list)
    out_ready: trio.Event = field(default_factory=trio.Event)
    # One scope per direction: a CancelScope may guard only one ``with`` block.
    up: trio.CancelScope = field(default_factory=trio.CancelScope)
    down: trio.CancelScope = field(default_factory=trio.CancelScope)
    eof: bool = False
    directions_done: int = 0

    def abort(self) -> None:
        self.up.cancel()
        self.down.cancel()

    @property
    def aborted(self) -> bool:
        return self.up.cancel_called or self.down.cancel_called


class ExitCircuit:
    """Streams of one circuit at its exit. Run ``run`` in a nursery; feed ``on_cell``."""

    def __init__(
        self,
        ident: int,
        policy: ExitPolicy,
        *,
        send_plaintexts: Callable[[bytes], Awaitable[None]],
        close: Callable[[DestroyReason], Awaitable[None]],
        config: StreamConfig | None = None,
        connect_timeout: float = 10.0,
        bind_address: str | None = None,
    ) -> None:
        self.ident = ident
        self.policy = policy
        self._send_plaintexts = send_plaintexts
        self._close = close
        self._connect_timeout = connect_timeout
        self._bind = bind_address
        self.endpoint = CircuitEndpoint(Role.EXIT, trio.current_time(), config)
        self._inbox: list[RelayCell] = []
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._conns: dict[int, _Conn] = {}
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    # --- from the relay service ----------------------------------------------------------

    def on_cell(self, cell: RelayCell) -> None:
        self._inbox.append(cell)
        self._wake.set()

    def closed(self) -> None:
        """The circuit was destroyed: drop every stream."""
        self._scope.cancel()

    # --- the circuit's task -----------------------------------------------------------------

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._pump()
                finally:
                    nursery.cancel_scope.cancel()
        for conn in self._conns.values():
            with trio.CancelScope(shield=True):
                await conn.sock.aclose()

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            cells, self._inbox = self._inbox, []
            now = trio.current_time()
            for cell in cells:
                for event in self.endpoint.receive_cell(cell, now):
                    if isinstance(event, ProtocolViolation):
                        log.info("exit circuit violation: %s %s", event.reason, event.detail)
                        await self._close(DestroyReason(event.destroy_reason))
                        return
                    self._handle(event)
            if self.endpoint.closed:
                return
            await self._flush()

    def _poke(self) -> None:
        self._wake.set()

    async def _flush(self) -> None:
        out = self.endpoint.plaintexts_to_send(trio.current_time())
        if out:
            await self._send_plaintexts(out)
        self._progress.set()
        self._progress = trio.Event()

    def _handle(self, event: object) -> None:
        assert self._nursery is not None
        if isinstance(event, StreamRequested):
            self._nursery.start_soon(self._connect, event.stream_id, event.host, event.port)
        elif isinstance(event, StreamData):
            conn = self._conns.get(event.stream_id)
            if conn is not None:
                conn.out.append(event.data)
                conn.out_ready.set()
        elif isinstance(event, StreamEnded):
            conn = self._conns.get(event.stream_id)
            if conn is not None:
                conn.eof = True
                conn.out_ready.set()
                if event.reason is not EndReason.DONE:
                    conn.abort()
        elif isinstance(event, ResolveRequested):
            self._nursery.start_soon(self._resolve, event.stream_id, event.name)

    # --- streams ------------------------------------------------------------------------------

    async def _connect(self, sid: int, host: str, port: int) -> None:
        sock: trio.SocketStream | None = None
        try:
            sock = await open_exit_stream(
                host, port, self.policy, self._connect_timeout, bind_address=self._bind
            )
        except ExitConnectError as exc:
            reason: EndReason = exc.reason
        try:
            if sock is None:
                self.endpoint.refuse(sid, reason)
            else:
                self.endpoint.accept(sid, str(sock.socket.getpeername()[0]))
                conn = self._conns[sid] = _Conn(sock)
                assert self._nursery is not None
                self._nursery.start_soon(self._upstream, sid, conn)
                self._nursery.start_soon(self._downstream, sid, conn)
        except (StreamUsageError, EndpointClosed):
            if sock is not None:
                await sock.aclose()
            return
        self._poke()

    async def _finish(self, sid: int, conn: _Conn) -> None:
        """One direction is done; when both are, close the socket and forget the stream."""
        conn.directions_done += 1
        if conn.directions_done == 2 or conn.aborted:
            conn.abort()
            if self._conns.get(sid) is conn:
                del self._conns[sid]
            with trio.CancelScope(shield=True):
                await conn.sock.aclose()

    async def _upstream(self, sid: int, conn: _Conn) -> None:
        try:
            await self._write_upstream(sid, conn)
        finally:
            await self._finish(sid, conn)

    async def _downstream(self, sid: int, conn: _Conn) -> None:
        try:
            await self._read_downstream(sid, conn)
        finally:
            await self._finish(sid, conn)

    async def _write_upstream(self, sid: int, conn: _Conn) -> None:
        """Client → destination: write what arrived, then report it consumed."""
        with conn.up:
            while True:
                await conn.out_ready.wait()
                conn.out_ready = trio.Event()
                chunks, conn.out = conn.out, []
                for chunk in chunks:
                    try:
                        await conn.sock.send_all(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._end(sid, EndReason.MISC)
                        return
                    self._consumed(sid, len(chunk))
                if conn.eof:
                    try:
                        await conn.sock.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    return

    async def _read_downstream(self, sid: int, conn: _Conn) -> None:
        """Destination → client, as fast as the circuit's window and the stream allow."""
        with conn.down:
            while True:
                room = self._room(sid)
                if room is None:
                    return
                if room == 0:
                    await self._progress.wait()
                    continue
                try:
                    data = await conn.sock.receive_some(min(room, READ_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._end(sid, EndReason.DONE)
                    # No half-close on circuits (spec/circuits.md §6.1): once our END
                    # is out the stream is over, so the upstream writer finishes too.
                    conn.eof = True
                    conn.out_ready.set()
                    return
                if not await self._send_when_room(sid, bytes(data)):
                    return
                self._poke()

    async def _send_when_room(self, sid: int, data: bytes) -> bool:
        """Hand ``data`` to the stream, waiting while the circuit's buffers are full
        (other streams may have used the room seen before the read). ``False`` once
        the stream is gone."""
        while True:
            try:
                self.endpoint.send(sid, data)
                return True
            except SendBufferFull:
                await self._progress.wait()
            except StreamUsageError:
                return False

    def _room(self, sid: int) -> int | None:
        try:
            return self.endpoint.send_room(sid)
        except StreamUsageError:
            return None

    def _consumed(self, sid: int, n: int) -> None:
        try:
            self.endpoint.consumed(sid, n)
        except StreamUsageError:
            return
        self._poke()

    def _end(self, sid: int, reason: EndReason) -> None:
        try:
            self.endpoint.close(sid, reason)
        except StreamUsageError:
            pass
        self._poke()

    async def _resolve(self, sid: int, name: str) -> None:
        try:
            addresses = await resolve_addresses(name, 0, self._connect_timeout)
        except (OSError, trio.TooSlowError):
            addresses = []
        try:
            self.endpoint.answer_resolve(sid, [str(a) for a in addresses])
        except StreamUsageError:
            return
        self._poke()


class ExitConnectError(Exception):
    """``open_exit_stream`` could not connect; ``reason`` is the END reason to report."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason.name.lower())
        self.reason = reason


async def resolve_addresses(host: str, port: int, timeout: float) -> list[IPAddress]:
    """``host`` as a literal address, or every address it resolves to (in order, once each).

    Raises ``OSError`` or ``trio.TooSlowError`` when the name does not resolve in time.
    """
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    with trio.fail_after(timeout):
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if addr not in seen:
            seen.append(addr)
    return seen


async def open_exit_stream(
    host: str, port: int, policy: ExitPolicy, timeout: float, *, bind_address: str | None = None
) -> trio.SocketStream:
    """A TCP stream to ``host:port`` under the exit policy (spec/circuits.md §6).

    The policy is applied to a literal address and to every address a name
    resolves to; the first allowed address that answers wins. Used by circuit
    exits and by mixed-mode exits (``qnet.node.mixed_exit``). Raises
    ``ExitConnectError`` with the END reason; nothing else. ``bind_address``: the
    local address to connect from (``None``: the system's choice).
    """
    reason: EndReason | None = None
    try:
        addresses = await resolve_addresses(host, port, timeout)
    except (OSError, trio.TooSlowError):
        reason = EndReason.RESOLVE_FAILED
        addresses = []
    allowed = [a for a in addresses if policy(a, port)]
    if reason is None and not allowed:
        reason = EndReason.EXIT_POLICY
    for addr in allowed:
        try:
            with trio.fail_after(timeout):
                sock = await trio.open_tcp_stream(str(addr), port, local_address=bind_address)
        except trio.TooSlowError:
            reason = EndReason.TIMEOUT
            continue
        except OSError as exc:
            code = errno_of(exc)
            if code == errno.ECONNREFUSED:
                reason = EndReason.REFUSED
            elif code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                reason = EndReason.UNREACHABLE
            else:
                reason = EndReason.MISC
            continue
        sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return sock
    raise ExitConnectError(reason or EndReason.MISC)
