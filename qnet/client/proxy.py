"""The SOCKS proxy in Trio: accept clients, run the handshake, connect, splice.

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_socks, connector, "127.0.0.1", 1080)

The proxy does not know about circuits. It asks a :class:`Connector` for a
stream (``connect``) or an answer (``resolve``, ``resolve_ptr``), so the same
server runs over circuits (a connector built on ``CircuitManager``) or, in
tests, straight over TCP (:class:`DirectConnector`). A connector refuses with
:class:`ConnectError`, whose ``reason`` is an exit END reason; the client gets
the matching SOCKS reply code (``reply_code_for_end``).

Per client:

1. TCP_NODELAY on the client socket (small requests should not wait for ACKs).
2. The handshake (``qnet.client.socks``) under ``fail_after(handshake_timeout)``:
   a client that stalls is dropped and nobody else waits for it. A refused
   handshake gets its error reply (or the HTTP page), then the connection is
   half-closed, briefly drained (so the reply is not lost to a TCP reset) and closed.
3. CONNECT: ``connector.connect`` under ``fail_after(connect_timeout)`` ("TTL
   expired" when it runs out); on success the reply, then the read-ahead, then
   bytes both ways, each direction's EOF passed on as a half-close.
   RESOLVE / RESOLVE_PTR: one reply with the answer, then close.

Any failure ends that client's connection only; the listener keeps serving.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn, Protocol

import trio

from qnet.client.socks import (
    Command,
    Finished,
    IPAddress,
    Recv,
    ReplyCode,
    Send,
    SocksConfig,
    SocksError,
    SocksHandshake,
    SocksRequest,
    reply_code_for_end,
)
from qnet.errors import QNetError
from qnet.node.logging import log_event, safe_addr
from qnet.routing.streams import EndReason
from qnet.sockerr import errno_of

__all__ = [
    "ConnectError",
    "Connector",
    "DirectConnector",
    "ProxyConfig",
    "handle_socks_client",
    "serve_socks",
    "splice",
]

log = logging.getLogger("qnet.client.proxy")


class ConnectError(QNetError):
    """A connector could not serve a request.

    ``reason`` is the END reason (``EndReason``) and ``code`` the SOCKS5 reply
    code sent to the client: by default ``reply_code_for_end(reason)``; pass
    ``code`` when the connector knows better (e.g. network unreachable, 0x03).
    """

    def __init__(self, reason: EndReason, detail: str = "", *, code: ReplyCode | None = None):
        self.reason = EndReason(reason)
        self.code = ReplyCode(code) if code is not None else reply_code_for_end(reason)
        text = f"connect failed ({self.reason.name.lower()})"
        super().__init__(f"{text}: {detail}" if detail else text)


class Connector(Protocol):
    """Where the proxy sends requests. Each method gets the whole request, so that
    it can pick a circuit by ``request.isolation``; each raises ``ConnectError``
    to refuse. Other exceptions are answered with "general failure" and logged.
    """

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        """A stream to ``request.host:request.port`` (a name is not resolved locally)."""
        ...

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        """The addresses of the name ``request.host`` (a ``str``); empty = not found."""
        ...

    async def resolve_ptr(self, request: SocksRequest) -> str:
        """The name of the address ``request.host``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """The proxy's knobs.

    * ``socks``: handshake options and isolation flags (:class:`SocksConfig`).
      Its ``listener`` is filled in with the bound address when left empty.
    * ``handshake_timeout``: seconds a client has for its whole handshake.
    * ``connect_timeout``: seconds the connector has for connect or resolve;
      then the client gets "TTL expired" (0x06).
    * ``close_grace``: seconds to drain a refused client after the reply.
    * ``chunk``: the largest read while splicing.
    """

    socks: SocksConfig = field(default_factory=SocksConfig)
    handshake_timeout: float = 10.0
    connect_timeout: float = 120.0
    close_grace: float = 1.0
    chunk: int = 65536

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "connect_timeout", "close_grace"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"ProxyConfig.{name} must be a positive number")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError("ProxyConfig.chunk must be a positive int")


# --- the direct connector ----------------------------------------------------------------------


def _connect_error(exc: OSError) -> ConnectError:
    if isinstance(exc, socket.gaierror):
        return ConnectError(EndReason.RESOLVE_FAILED, str(exc))
    num = errno_of(exc)
    if num == errno.ECONNREFUSED:
        return ConnectError(EndReason.REFUSED)
    if num == errno.ENETUNREACH:
        return ConnectError(EndReason.UNREACHABLE, code=ReplyCode.NETWORK_UNREACHABLE)
    if num == errno.EHOSTUNREACH:
        return ConnectError(EndReason.UNREACHABLE, code=ReplyCode.HOST_UNREACHABLE)
    if num == errno.ETIMEDOUT:
        return ConnectError(EndReason.TIMEOUT)
    return ConnectError(EndReason.MISC, str(exc))


class DirectConnector:
    """Connects from this machine over plain TCP and resolves with the local resolver.

    **No anonymity**: for tests and local debugging only. Errors map to END
    reasons as an exit's would (refused, unreachable, timeout, resolve_failed).
    """

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        try:
            with trio.fail_after(self.timeout):
                stream = await trio.open_tcp_stream(str(request.host), request.port)
        except trio.TooSlowError:
            raise ConnectError(EndReason.TIMEOUT) from None
        except OSError as exc:
            raise _connect_error(exc) from exc
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        try:
            with trio.fail_after(self.timeout):
                infos = await trio.socket.getaddrinfo(
                    str(request.host), None, type=socket.SOCK_STREAM
                )
        except trio.TooSlowError:
            raise ConnectError(EndReason.TIMEOUT) from None
        except OSError as exc:
            raise ConnectError(EndReason.RESOLVE_FAILED, str(exc)) from exc
        out: list[IPAddress] = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if addr not in out:
                out.append(addr)
        return out

    async def resolve_ptr(self, request: SocksRequest) -> str:
        try:
            with trio.fail_after(self.timeout):
                name, _ = await trio.socket.getnameinfo((str(request.host), 0), socket.NI_NAMEREQD)
        except trio.TooSlowError:
            raise ConnectError(EndReason.TIMEOUT) from None
        except OSError as exc:
            raise ConnectError(EndReason.RESOLVE_FAILED, str(exc)) from exc
        return name


# --- per client --------------------------------------------------------------------------------


async def _run_handshake(stream: trio.abc.Stream, hs: SocksHandshake) -> Finished:
    while True:
        action = hs.step()
        if isinstance(action, Send):
            await stream.send_all(action.data)
        elif isinstance(action, Recv):
            hs.receive_data(await stream.receive_some(action.max_bytes))
        else:
            return action


async def _say_and_close(stream: trio.abc.Stream, reply: bytes, grace: float) -> None:
    """Send ``reply``, half-close, drain what the client still sends (bounded), close.

    Closing a socket with unread input makes the kernel send a reset, which can
    destroy the reply before the client reads it; draining avoids that.
    """
    try:
        if reply:
            await stream.send_all(reply)
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        with trio.move_on_after(grace):
            drained = 0
            while drained < 65536:
                data = await stream.receive_some(4096)
                if not data:
                    break
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, chunk: int = 65536) -> None:
    """Copy bytes both ways until both directions reached EOF.

    A direction's EOF is passed on with ``send_eof`` when the other stream can
    half-close. A broken or closed stream on either side stops both directions.
    Closes neither stream.
    """

    async def one_way(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(chunk):
                await dst.send_all(data)
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, QNetError):
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_way, a, b, nursery.cancel_scope)
        nursery.start_soon(one_way, b, a, nursery.cancel_scope)


def _peer_host(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            return str(stream.socket.getpeername()[0])
        except OSError:
            return ""
    return ""


async def handle_socks_client(
    stream: trio.abc.Stream, connector: Connector, config: ProxyConfig | None = None
) -> None:
    """Serve one client on ``stream`` from handshake to close. Never raises
    (except ``Cancelled``); the stream is closed on return."""
    cfg = config if config is not None else ProxyConfig()
    try:
        await _serve_client(stream, connector, cfg)
    except Exception as exc:  # a bug or a connector's surprise: this client only
        log_event(log, logging.WARNING, "socks_client_failed", error=type(exc).__name__)
        log.debug("client failed", exc_info=True)
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_client(stream: trio.abc.Stream, connector: Connector, cfg: ProxyConfig) -> None:
    if isinstance(stream, trio.SocketStream):
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP (a Unix socket)
            pass
    client = _peer_host(stream)
    hs = SocksHandshake(cfg.socks, client_addr=client)
    try:
        with trio.fail_after(cfg.handshake_timeout):
            done = await _run_handshake(stream, hs)
    except SocksError as exc:
        log_event(log, logging.INFO, "socks_refused", reason=exc.reason, client=safe_addr(client))
        await _say_and_close(stream, exc.reply, cfg.close_grace)
        return
    except trio.TooSlowError:
        log_event(log, logging.INFO, "socks_handshake_timeout", client=safe_addr(client))
        return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    request = done.request
    if request.command == Command.CONNECT:
        await _connect(stream, connector, cfg, request, done.read_ahead)
    else:
        await _answer(stream, connector, cfg, request)


async def _connect(
    stream: trio.abc.Stream,
    connector: Connector,
    cfg: ProxyConfig,
    request: SocksRequest,
    read_ahead: bytes,
) -> None:
    code = ReplyCode.GENERAL_FAILURE
    upstream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(cfg.connect_timeout):
            upstream = await connector.connect(request)
    except ConnectError as exc:
        code = exc.code
    except trio.TooSlowError:
        code = ReplyCode.TTL_EXPIRED
    except Exception as exc:
        log_event(log, logging.WARNING, "socks_connector_failed", error=type(exc).__name__)
    if upstream is None:
        log_event(log, logging.INFO, "socks_connect_refused", code=int(code))
        await _say_and_close(stream, request.reply(code), cfg.close_grace)
        return
    try:
        await stream.send_all(request.reply(ReplyCode.SUCCEEDED))
        if read_ahead:
            await upstream.send_all(read_ahead)
        await splice(stream, upstream, cfg.chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, QNetError):
        pass
    finally:
        await trio.aclose_forcefully(upstream)


async def _answer(
    stream: trio.abc.Stream, connector: Connector, cfg: ProxyConfig, request: SocksRequest
) -> None:
    """RESOLVE and RESOLVE_PTR: one reply, then close."""
    reply: bytes | None = None
    code = ReplyCode.GENERAL_FAILURE
    try:
        with trio.fail_after(cfg.connect_timeout):
            if request.command == Command.RESOLVE_PTR:
                name = await connector.resolve_ptr(request)
                reply = request.reply(ReplyCode.SUCCEEDED, name)
            elif isinstance(request.host, str):
                found = await connector.resolve(request)
                reply = _resolved_reply(request, found)
            else:  # an address: the answer is the question, nothing to look up
                reply = _resolved_reply(request, [request.host])
    except ConnectError as exc:
        code = exc.code
    except trio.TooSlowError:
        code = ReplyCode.TTL_EXPIRED
    except ValueError:  # a name too long for a reply
        code = ReplyCode.GENERAL_FAILURE
    if reply is None:
        reply = request.reply(code)
    await _say_and_close(stream, reply, cfg.close_grace)


def _resolved_reply(request: SocksRequest, found: Sequence[IPAddress]) -> bytes:
    usable = [a for a in found if request.version == 5 or a.version == 4]
    if not usable:
        raise ConnectError(EndReason.RESOLVE_FAILED)
    return request.reply(ReplyCode.SUCCEEDED, usable[0])


# --- the listener ------------------------------------------------------------------------------


async def serve_socks(
    connector: Connector,
    host: str = "127.0.0.1",
    port: int = 1080,
    *,
    config: ProxyConfig | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve SOCKS on ``host:port`` until cancelled.

    Reports the listeners through ``task_status.started`` (``port=0`` picks a
    free port: read it from ``listeners[0].socket.getsockname()``). Each client
    runs in its own task; nothing a client does stops the listener.
    """
    cfg = config if config is not None else ProxyConfig()
    listeners = await trio.open_tcp_listeners(port, host=host)
    if not cfg.socks.listener:
        bound = listeners[0].socket.getsockname()
        cfg = replace(cfg, socks=replace(cfg.socks, listener=f"{bound[0]}:{bound[1]}"))

    async def handler(stream: trio.SocketStream) -> None:
        await handle_socks_client(stream, connector, cfg)

    await trio.serve_listeners(handler, listeners, task_status=task_status)
