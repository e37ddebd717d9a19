"""The Trio layer of HTX over TCP: sockets in, sans-I/O objects inside.

    async with dial_tcp(peer) as link:            # client (or a node opening a link)
        stream = await link.open_stream()
        await stream.send_all(b"...")
        data = await stream.receive_some()

    await nursery.start(serve_tcp, handler, server_config)   # node
    # handler(link) runs once per accepted tunnel; returning closes the link

The layering per connection (spec/htx.md §1): TCP ⇄ ``TlsConnection`` ⇄ HTTP
(``Http1Server``/``H2Server`` or the client halves) ⇄ tunnel bytes ⇄ the inner
handshake, then ``HtxSession``. This module only moves bytes between them and
runs their timers; every protocol decision is in those objects.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from qnet.crypto.primitives import MLKEM768Key, X25519Key, random_bytes
from qnet.htx import cover
from qnet.htx.errors import HandshakeError, HtxTimeout, TicketError, TlsError
from qnet.htx.first_flight import HttpFlight
from qnet.htx.inner import EXPORTER_LABEL, Finished, InnerInitiator, InnerResponder
from qnet.htx.session import (
    HtxConfig,
    HtxSession,
    HtxUsageError,
    Role,
    SessionClosed,
    StreamData,
    StreamOpened,
)
from qnet.htx.ticket import TicketConfig, TicketVerifier, build_ticket
from qnet.htx.tls import (
    MAX_PLAINTEXT,
    ApplicationData,
    CertificateKey,
    HandshakeComplete,
    PeerClosed,
    TlsClientConfig,
    TlsConnection,
    TlsServerConfig,
    TlsStateError,
)

log = logging.getLogger("qnet.htx")

READ_SIZE = 65536
#: Bytes a stream may have queued in the session before ``send_all`` waits.
SEND_BUFFER_LIMIT = 256 * 1024
#: The least ``HtxStream.send_all`` hands the session at once.
SEND_STEP = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """What a dialer needs to know about a node (all of it is in the node's descriptor)."""

    host: str
    port: int
    link_public: bytes
    mlkem_public: bytes
    ticket_public: bytes
    ticket_key_id: int
    #: The name the connection claims to be for (SNI, Host): the node's cover site.
    server_name: str = "localhost"
    path: str = "/"

    @property
    def authority(self) -> str:
        """``:authority`` / ``Host`` of requests to the node (the port only when not 443)."""
        return self.server_name if self.port == 443 else f"{self.server_name}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """A node's HTX listener: its keys, its certificate and its cover site."""

    link_private: bytes
    mlkem: MLKEM768Key
    ticket_keys: Mapping[int, X25519Key]
    certificate_chain: tuple[object, ...]
    certificate_key: CertificateKey
    site: cover.CoverSite = cover.DEFAULT_SITE
    ticket_config: TicketConfig = field(default_factory=TicketConfig)
    session_config: HtxConfig | None = None
    handshake_timeout: float = 15.0
    #: Told the error class name whenever a connection ends before a link (counters).
    on_handshake_failure: Callable[[str], None] | None = None


# --- the byte pipe: socket ⇄ TLS ⇄ HTTP tunnel -------------------------------------------


class _Tunnel:
    """Tunnel bytes in and out of the HTTP layer (identity once HTTP/1.1 has upgraded)."""

    def incoming(self, app: bytes) -> tuple[bytes, bool]:
        return app, False

    def outgoing(self, data: bytes) -> bytes:
        return data

    def pending(self) -> bytes:
        return b""


class _H2ServerTunnel(_Tunnel):
    def __init__(self, server: cover.H2Server, stream_id: int, now: Callable[[], float]) -> None:
        self.server, self.stream_id, self._now = server, stream_id, now

    def incoming(self, app: bytes) -> tuple[bytes, bool]:
        data, eof = bytearray(), False
        for action in self.server.receive_data(app, self._now()):
            if isinstance(action, cover.TunnelData) and action.stream_id == self.stream_id:
                data += action.data
            elif isinstance(action, cover.TunnelRequest):  # one tunnel per connection
                self.server.refuse_tunnel(action.stream_id, self._now())
            elif isinstance(action, (cover.TunnelClosed, cover.ConnectionClosed)):
                eof = eof or getattr(action, "stream_id", self.stream_id) == self.stream_id
        return bytes(data), eof

    def outgoing(self, data: bytes) -> bytes:
        self.server.send_tunnel(self.stream_id, data)
        return self.server.data_to_send()

    def pending(self) -> bytes:
        return self.server.data_to_send()


class _H2ClientTunnel(_Tunnel):
    def __init__(self, client: cover.H2TunnelClient) -> None:
        self.client = client

    def incoming(self, app: bytes) -> tuple[bytes, bool]:
        data, eof = bytearray(), False
        for action in self.client.receive_data(app):
            if isinstance(action, cover.TunnelData):
                data += action.data
            elif isinstance(action, (cover.TunnelClosed, cover.ConnectionClosed)):
                eof = True
        return bytes(data), eof

    def outgoing(self, data: bytes) -> bytes:
        self.client.send(data)
        return self.client.data_to_send()

    def pending(self) -> bytes:
        return self.client.data_to_send()


class _Wire:
    """One TCP connection carrying TLS, and later the tunnel. Sends are serialised."""

    def __init__(self, sock: trio.abc.Stream, tls: TlsConnection) -> None:
        self.sock = sock
        self.tls = tls
        self.tunnel: _Tunnel = _Tunnel()
        self._send_lock = trio.Lock()
        # TLS output taken out of ``tls`` and not yet written, in order. It lives here,
        # not in a task's locals, so a sender cancelled while waiting for the lock
        # loses nothing: whoever holds the lock next writes it.
        self._unsent: list[bytes] = []
        self.eof = False
        # Application data that arrived in the same read as the end of the handshake.
        self._early_app = bytearray()

    def queue_app(self, data: bytes) -> None:
        """Queue application data; dropped once TLS is closed (nobody would read it)."""
        if not data:
            return
        try:
            self.tls.send(data)
        except TlsStateError:
            if self.tls.handshake_complete:
                return
            raise

    def queue_record(self, data: bytes, pad_to: int | None) -> None:
        """Queue ``data`` as one record whose content is padded to ``pad_to`` bytes
        (a browser's first-flight length); unpadded when that is ``None``."""
        if len(data) > MAX_PLAINTEXT or (pad_to is not None and pad_to < len(data)):
            pad_to = None  # cannot be shaped: one plain record (or several)
        if pad_to is None and len(data) > MAX_PLAINTEXT:
            self.queue_app(data)
        else:
            self.tls.send_record(data, pad_to)

    async def flush(self) -> None:
        self.queue_app(self.tunnel.pending())
        await self._write()

    async def _write(self) -> None:
        """Write everything TLS has sealed, in order. Returns at once, without a
        checkpoint, when there is nothing to write (most flushes on the read path)."""
        wire = self.tls.data_to_send()
        if wire:
            self._unsent.append(wire)
        if not self._unsent:
            return
        async with self._send_lock:
            if self._unsent:  # else an earlier holder wrote ours along with its own
                out = b"".join(self._unsent)
                self._unsent.clear()
                await self.sock.send_all(out)

    async def read_app(self) -> bytes | None:
        """Next TLS application data (``None`` at EOF or close_notify)."""
        if self._early_app:
            early = bytes(self._early_app)
            self._early_app.clear()
            return early
        while True:
            if self.eof:
                return None
            data = bytes(await self.sock.receive_some(READ_SIZE))
            events = self.tls.receive_data(data)
            await self.flush()  # alerts, key-update answers
            out = bytearray()
            for ev in events:
                if isinstance(ev, ApplicationData):
                    out += ev.data
                elif isinstance(ev, PeerClosed):
                    self.eof = True
            if not data:
                self.eof = True
            if out:
                return bytes(out)

    async def handshake(self) -> HandshakeComplete:
        await self.flush()
        while True:
            data = bytes(await self.sock.receive_some(READ_SIZE))
            if not data:
                raise TlsError("eof", "peer closed during the TLS handshake")
            events = self.tls.receive_data(data)
            await self.flush()
            done = next((ev for ev in events if isinstance(ev, HandshakeComplete)), None)
            for ev in events:
                if isinstance(ev, ApplicationData):
                    self._early_app += ev.data
                elif isinstance(ev, PeerClosed):
                    self.eof = True
            if done is not None:
                return done

    async def read_tunnel(self) -> bytes | None:
        """Next tunnel bytes (``None`` at the tunnel's end)."""
        while True:
            app = await self.read_app()
            if app is None:
                return None
            data, eof = self.tunnel.incoming(app)
            await self.flush()
            if eof:
                self.eof = True
            if data:
                return data
            if eof:
                return None

    async def send_tunnel(self, data: bytes) -> None:
        self.queue_app(self.tunnel.outgoing(data))
        await self._write()

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                self.tls.close()
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, TlsError):
                pass
        await self.sock.aclose()


# --- streams and the link ------------------------------------------------------------------


class TunnelWire(Protocol):
    """What a link needs from the connection under it (TCP+TLS here, QUIC in ``quic.py``)."""

    async def read_tunnel(self) -> bytes | None:
        """The next tunnel bytes; ``None`` once the tunnel has ended."""
        ...

    async def send_tunnel(self, data: bytes) -> None:
        """Queue ``data`` and write it out; raises ``trio.BrokenResourceError`` if the
        connection broke."""
        ...

    async def aclose(self) -> None:
        """Close the connection politely (bounded time), then the socket."""
        ...


class HtxStream(trio.abc.HalfCloseableStream):
    """One multiplexed stream of a link. ``receive_some`` returns ``b""`` at the peer's FIN."""

    def __init__(self, link: HtxLink, stream_id: int) -> None:
        self._link = link
        self.stream_id = stream_id
        self._chunks: list[bytes] = []
        self._fin = False
        self._readable = trio.Event()
        self._sent_fin = False

    def _deliver(self, data: bytes, fin: bool) -> None:
        if data:
            self._chunks.append(data)
        self._fin = self._fin or fin
        self._readable.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._chunks:
            if self._fin or self._link.closed:
                return b""
            self._readable = trio.Event()
            await self._readable.wait()
        chunks = self._chunks
        if max_bytes is None and len(chunks) == 1:
            chunk = chunks.pop()
        else:
            # Everything delivered so far (up to ``max_bytes``) in one call: one
            # acknowledgement and one flush for many frames, and bigger batches above.
            limit = max_bytes if max_bytes is not None else sys.maxsize
            take = 0
            size = 0
            while take < len(chunks) and size + len(chunks[take]) <= limit:
                size += len(chunks[take])
                take += 1
            if take == 0:  # the first chunk alone is over the limit: split it
                first = chunks[0]
                chunks[0] = first[limit:]
                chunk = first[:limit]
            else:
                chunk = chunks[0] if take == 1 else b"".join(chunks[:take])
                del chunks[:take]
        self._link.session.acknowledge_received(self.stream_id, len(chunk))
        await self._link.flush()
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sent_fin:
            raise trio.ClosedResourceError("send_eof was called on this stream")
        view = memoryview(data).cast("B")
        session = self._link.session
        pos, end = 0, len(view)
        while pos < end:
            await self._link.wait_send_room(self.stream_id)
            # As much as the send buffer takes, then one flush: the session cuts it into
            # full frames, and TLS into full records, in one socket write.
            room = max(SEND_BUFFER_LIMIT - session.send_buffered(self.stream_id), SEND_STEP)
            session.send_stream_data(self.stream_id, bytes(view[pos : pos + room]))
            pos += room
            await self._link.flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self._link.wait_send_room(self.stream_id)

    async def send_eof(self) -> None:
        if not self._sent_fin:
            self._sent_fin = True
            self._link.session.send_stream_data(self.stream_id, b"", fin=True)
            await self._link.flush()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.send_eof()
            except (HtxUsageError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


class HtxLink:
    """An open HTX session over one connection.

    ``open_stream`` and ``accept_stream`` give :class:`HtxStream` objects;
    ``remote_static`` is the peer's Noise static key (a node checks it against the
    directory for node-to-node links). The link runs a reader and a timer task in
    the nursery it was started in; ``aclose`` ends them.
    """

    def __init__(self, wire: TunnelWire, session: HtxSession, remote_static: bytes) -> None:
        self._wire = wire
        self.session = session
        self.remote_static = remote_static
        self._streams: dict[int, HtxStream] = {}
        self._accept_send, self._accept_recv = trio.open_memory_channel[HtxStream](math.inf)
        self._progress = trio.Event()
        self._timer_changed = trio.Event()
        self._timer_deadline = -math.inf  # what the timer task waits for (none yet)
        self.closed = False
        self.close_reason: SessionClosed | None = None
        self._cancel = trio.CancelScope()

    async def open_stream(self) -> HtxStream:
        if self.closed:
            raise trio.ClosedResourceError("the link is closed")
        stream = HtxStream(self, self.session.open_stream())
        self._streams[stream.stream_id] = stream
        await self.flush()
        return stream

    async def accept_stream(self) -> HtxStream:
        """The next stream the peer opened; raises ``trio.EndOfChannel`` once the link closed."""
        return await self._accept_recv.receive()

    async def ping(self) -> None:
        self.session.send_ping(trio.current_time())
        await self.flush()

    async def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            try:
                await self._wire.send_tunnel(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, TlsStateError) as exc:
                self._mark_closed(None)
                raise trio.BrokenResourceError("the link's connection broke") from exc
        # Wake the timer task only when the session's next deadline moved earlier than
        # the one it waits for (sending only ever moves deadlines later).
        deadline = self.session.next_deadline()
        if deadline is None or deadline < self._timer_deadline:
            self._timer_changed.set()

    async def wait_send_room(self, stream_id: int) -> None:
        while self.session.send_buffered(stream_id) > SEND_BUFFER_LIMIT:
            if self.closed:
                raise trio.BrokenResourceError("the link closed")
            await self._progress.wait()
        if self.closed or self.session.closed:  # closed: aclose may still be flushing
            raise trio.BrokenResourceError("the link closed")

    def _mark_closed(self, event: SessionClosed | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = event
            self._accept_send.close()
            for stream in self._streams.values():
                stream._deliver(b"", True)
            self._wake_senders()
            self._cancel.cancel()

    def _dispatch(self, events: list[object]) -> None:
        for ev in events:
            if isinstance(ev, StreamOpened):
                stream = HtxStream(self, ev.stream_id)
                self._streams[ev.stream_id] = stream
                self._accept_send.send_nowait(stream)
            elif isinstance(ev, StreamData):
                target = self._streams.get(ev.stream_id)
                if target is not None:
                    target._deliver(ev.data, ev.fin)
            elif isinstance(ev, SessionClosed):
                if ev.code:
                    log.info("htx session closed: code 0x%04x %s", ev.code, ev.reason)
                self._mark_closed(ev)
        self._wake_senders()

    def _wake_senders(self) -> None:
        """Wake every task waiting for send room, and arm a fresh event for the next wait."""
        self._progress.set()
        self._progress = trio.Event()

    async def _reader(self) -> None:
        while not self.closed:
            try:
                data = await self._wire.read_tunnel()
            except (TlsError, TicketError, trio.BrokenResourceError) as exc:
                log.info("htx link dropped: %s", exc)
                data = None
            if data is None:
                self._mark_closed(None)
                return
            self._dispatch(list(self.session.receive_data(data, trio.current_time())))
            try:
                await self.flush()
            except trio.BrokenResourceError:
                return

    async def _timer(self) -> None:
        while not self.closed:
            deadline = self.session.next_deadline()
            self._timer_changed = trio.Event()
            self._timer_deadline = deadline if deadline is not None else math.inf
            with trio.move_on_at(self._timer_deadline):
                await self._timer_changed.wait()
                continue
            self.session.handle_timer(trio.current_time())
            try:
                await self.flush()
            except trio.BrokenResourceError:
                return

    async def run(self) -> None:
        """Run the link's reader and timer until the link closes."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._timer)

    async def aclose(self) -> None:
        """Send CLOSE, then close the TLS connection and the socket."""
        with trio.CancelScope(shield=True):
            if not self.session.closed:
                self.session.close(0, "")
                try:
                    await self.flush()
                except trio.BrokenResourceError:
                    pass
            self._mark_closed(None)
            await self._wire.aclose()


# --- the inner handshake, shared by TCP and QUIC ---------------------------------------


async def run_inner_client(
    wire: TunnelWire,
    peer: PeerInfo,
    exporter: bytes,
    static_private: bytes | None,
    config: HtxConfig | None,
    read_ahead: bytes = b"",
) -> HtxLink:
    """Run the initiator's inner handshake over an open tunnel and return the link.

    ``read_ahead`` is tunnel data that arrived with the tunnel's opening. Raises
    ``HandshakeError`` (including when the tunnel ends mid-handshake).
    """
    initiator = InnerInitiator(peer.link_public, peer.mlkem_public, exporter, static_private)
    await wire.send_tunnel(initiator.start())
    step = initiator.receive(read_ahead) if read_ahead else None
    while not isinstance(step, Finished):
        if step is not None and step.send:
            await wire.send_tunnel(step.send)
        data = await wire.read_tunnel()
        if data is None:
            raise HandshakeError("eof", "tunnel closed during the inner handshake")
        step = initiator.receive(data)
    session = HtxSession(Role.CLIENT, step.session_secret, config, now=trio.current_time())
    await wire.send_tunnel(step.send)
    return await _start_link(wire, session, step)


async def run_inner_server(
    wire: TunnelWire, config: ServerConfig, exporter: bytes, read_ahead: bytes = b""
) -> HtxLink:
    """Run the responder's inner handshake over an accepted tunnel and return the link."""
    responder = InnerResponder(config.link_private, config.mlkem, exporter)
    step = responder.receive(read_ahead) if read_ahead else None
    while not isinstance(step, Finished):
        if step is not None and step.send:
            await wire.send_tunnel(step.send)
        data = await wire.read_tunnel()
        if data is None:
            raise HandshakeError("eof", "tunnel closed during the inner handshake")
        step = responder.receive(data)
    if step.send:
        await wire.send_tunnel(step.send)
    session = HtxSession(
        Role.SERVER, step.session_secret, config.session_config, now=trio.current_time()
    )
    return await _start_link(wire, session, step)


async def _start_link(wire: TunnelWire, session: HtxSession, step: Finished) -> HtxLink:
    link = HtxLink(wire, session, step.remote_static_public)
    if step.read_ahead:
        link._dispatch(list(session.receive_data(step.read_ahead, trio.current_time())))
    await link.flush()
    return link


# --- client -------------------------------------------------------------------------------


@asynccontextmanager
async def dial_tcp(
    peer: PeerInfo,
    *,
    static_private: bytes | None = None,
    tls_config: TlsClientConfig | None = None,
    session_config: HtxConfig | None = None,
    timeout: float = 15.0,
) -> AsyncIterator[HtxLink]:
    """Open an HTX link to ``peer``. Raises ``HtxTimeout``, ``TicketError`` (the node
    answered as a web site), ``TlsError``, ``HandshakeError`` or ``OSError``.

    ``static_private=None`` uses a fresh Noise static key (what a client must do);
    a node passes its link key so the peer can check it against the directory.
    """
    sock = await trio.open_tcp_stream(peer.host, peer.port)
    config = tls_config or TlsClientConfig(server_name=peer.server_name)
    wire = _Wire(sock, TlsConnection(config, now=trio.current_time()))
    try:
        try:
            with trio.fail_after(timeout):
                link = await _client_handshake(
                    wire, peer, static_private, session_config, config.template.http_flight
                )
        except trio.TooSlowError as exc:
            raise HtxTimeout("HTX handshake timed out") from exc
    except BaseException:
        await wire.aclose()
        raise
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        try:
            yield link
        finally:
            await link.aclose()


async def _client_handshake(
    wire: _Wire,
    peer: PeerInfo,
    static_private: bytes | None,
    config: HtxConfig | None,
    flight: HttpFlight | None,
) -> HtxLink:
    done = await wire.handshake()
    exporter = wire.tls.exporter(EXPORTER_LABEL, b"", 32)
    ticket = build_ticket(peer.ticket_public, peer.ticket_key_id, time.time(), random_bytes)
    read_ahead = await _open_client_tunnel(wire, done.alpn, peer, ticket, flight)

    return await run_inner_client(wire, peer, exporter, static_private, config, read_ahead)


async def _open_client_tunnel(
    wire: _Wire, alpn: str | None, peer: PeerInfo, ticket: str, flight: HttpFlight | None
) -> bytes:
    """Send the tunnel request, shaped like the browser's first records when the
    template has them (``flight``), and wait for the answer; returns read-ahead."""
    authority = peer.authority
    if alpn == "h2":
        client = cover.H2TunnelClient(authority, peer.path, ticket, flight=flight)
        for data, length in client.opening_records():
            wire.queue_record(data, length)
        await wire.flush()
        early = bytearray()
        while not client.opened:
            app = await wire.read_app()
            if app is None:
                raise TicketError("refused", "connection closed before an answer")
            for action in client.receive_data(app):
                if isinstance(action, cover.TunnelData):
                    early += action.data
            wire.queue_app(client.data_to_send())
            await wire.flush()
        wire.tunnel = _H2ClientTunnel(client)
        return bytes(early)
    h1 = cover.Http1TunnelClient(authority, peer.path, ticket, random_bytes, flight=flight)
    wire.queue_record(h1.request_bytes, h1.record_length)
    await wire.flush()
    while True:
        app = await wire.read_app()
        opened = h1.receive_data(app or b"")
        if opened is not None:
            return opened.read_ahead


# --- server -------------------------------------------------------------------------------

LinkHandler = Callable[[HtxLink], Awaitable[None]]
_CONNECTION_ERRORS = (
    trio.TooSlowError,
    TlsError,
    HandshakeError,
    TicketError,
    trio.BrokenResourceError,
    OSError,
)


async def serve_tcp(
    handler: LinkHandler,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTX on ``host:port`` until cancelled. ``task_status.started`` gets the listeners.

    Each connection is a web server (the cover site) until a request carries a valid
    ticket; then the inner handshake runs and ``handler(link)`` is awaited. A failure
    on one connection is logged and closes only that connection.
    """
    verifier = TicketVerifier(config.ticket_keys, config.ticket_config)
    tls_config = TlsServerConfig(
        certificate_chain=config.certificate_chain,  # type: ignore[arg-type]
        private_key=config.certificate_key,
    )
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def on_connection(sock: trio.SocketStream) -> None:
        peer_ip = _peer_ip(sock)
        wire = _Wire(sock, TlsConnection(tls_config, now=trio.current_time()))
        try:
            with trio.fail_after(config.handshake_timeout):
                link = await _server_handshake(wire, config, verifier, peer_ip)
        except _CONNECTION_ERRORS as exc:
            log.debug("htx connection ended before a link: %r", exc)
            if config.on_handshake_failure is not None:
                config.on_handshake_failure(type(exc).__name__)
            await wire.aclose()
            return
        if link is None:
            await wire.aclose()
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                try:
                    await handler(link)
                finally:
                    await link.aclose()
        finally:
            await wire.aclose()

    await trio.serve_listeners(on_connection, listeners, task_status=task_status)


def _peer_ip(sock: trio.SocketStream) -> str:
    try:
        return str(sock.socket.getpeername()[0])
    except OSError:
        return "0.0.0.0"


async def _server_handshake(
    wire: _Wire, config: ServerConfig, verifier: TicketVerifier, peer_ip: str
) -> HtxLink | None:
    """TLS, then web serving until a valid tunnel request, then the inner handshake.

    Returns ``None`` when the client went away as a web client would.
    """
    done = await wire.handshake()
    exporter = wire.tls.exporter(EXPORTER_LABEL, b"", 32)
    http: cover.Http1Server | cover.H2Server = (
        cover.H2Server(config.site) if done.alpn == "h2" else cover.Http1Server(config.site)
    )
    read_ahead: bytes | None = None
    while read_ahead is None:
        app = await wire.read_app()
        actions = list(http.receive_data(app or b"", time.time()))
        while actions:
            action = actions.pop(0)
            if isinstance(action, cover.TunnelRequest):
                verdict = verifier.check(action.ticket, peer_ip, time.time())
                if verdict.accepted:
                    actions += http.accept_tunnel(action.stream_id, time.time())
                else:
                    log.debug("tunnel request refused: %s", verdict.reason)
                    actions += http.refuse_tunnel(action.stream_id, time.time())
            elif isinstance(action, cover.TunnelOpened):
                read_ahead = action.read_ahead
                if isinstance(http, cover.H2Server):
                    wire.tunnel = _H2ServerTunnel(http, action.stream_id, time.time)
            elif isinstance(action, cover.ConnectionClosed):
                wire.queue_app(http.data_to_send())
                await wire.flush()
                return None
        wire.queue_app(http.data_to_send())
        await wire.flush()
        if app is None and read_ahead is None:
            return None

    return await run_inner_server(wire, config, exporter, read_ahead)
