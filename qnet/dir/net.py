"""Directory requests over HTX (spec/directory.md §9): the Trio side of ``qnet.dir.protocol``.

    docs = await ask(peer, protocol.get_consensus(), timeout=10)      # dial, ask, close
    docs = await request(link, protocol.get_votes(epoch))              # on an open link
    await serve_link(link, handler)                                    # answer a link's streams

``handler(request) -> Response`` holds every decision; this module moves bytes,
enforces the size limits and the per-request timeout, and turns transport
failures into ``DirectoryUnreachable`` and non-ok answers into ``RequestRefused``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from qnet.dir import protocol
from qnet.dir.protocol import DEFAULT_LIMITS, MessageReader, ProtocolLimits, Request, Response
from qnet.errors import DirectoryError, DirectoryUnreachable, RequestRefused
from qnet.htx.errors import HandshakeError, HtxTimeout, TicketError, TlsError
from qnet.htx.services import Service, open_service_stream, read_service
from qnet.htx.session import HtxUsageError
from qnet.htx.transport import HtxLink, HtxStream, PeerInfo, dial_tcp

log = logging.getLogger("qnet.dir")

#: Seconds one request may take, from opening the stream to the response's end.
DEFAULT_TIMEOUT = 30.0
READ_SIZE = 65536

Handler = Callable[[Request], Awaitable[Response]]

_LINK_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    HtxUsageError,
)
_DIAL_ERRORS = (OSError, HtxTimeout, TicketError, TlsError, HandshakeError, *_LINK_ERRORS)


async def _read_all(stream: HtxStream, reader: MessageReader) -> bytes:
    while data := await stream.receive_some(READ_SIZE):
        reader.feed(data)
    return reader.finish()


async def request(
    link: HtxLink,
    req: Request,
    *,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[bytes, ...]:
    """Send ``req`` on a new stream of ``link``; the documents of an ok response.

    Raises ``RequestRefused`` (the server's status as ``reason``),
    ``MalformedDocument`` (the response was not a valid message, or over
    ``limits.max_response``) or ``DirectoryUnreachable`` (``timeout``,
    ``link_closed``).
    """
    try:
        with trio.fail_after(timeout):
            stream = await open_service_stream(link, Service.DIRECTORY)
            try:
                await stream.send_all(protocol.encode_request(req))
                await stream.send_eof()
                raw = await _read_all(stream, MessageReader(limits.max_response))
            finally:
                await stream.aclose()
    except trio.TooSlowError:
        raise DirectoryUnreachable("timeout", f"{req.op.value} took over {timeout} s") from None
    except _LINK_ERRORS as exc:
        raise DirectoryUnreachable("link_closed", f"{req.op.value}: {exc!r}") from None
    resp = protocol.decode_response(raw, limits)
    if resp.status is not protocol.Status.OK:
        raise RequestRefused(
            resp.status.value, f"{req.op.value}: {resp.reason}", remote_reason=resp.reason
        )
    return resp.docs


async def ask(
    peer: PeerInfo,
    req: Request,
    *,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
    static_private: bytes | None = None,
) -> tuple[bytes, ...]:
    """Dial ``peer``, make one request, close the link. ``timeout`` bounds the whole call.

    Raises what ``request`` raises; a failure to connect is ``DirectoryUnreachable``
    (``unreachable``).
    """
    where = f"{peer.host}:{peer.port}"
    answer: tuple[bytes, ...] | DirectoryError = DirectoryUnreachable("link_closed", where)
    try:
        with trio.fail_after(timeout):
            async with dial_tcp(peer, static_private=static_private, timeout=timeout) as link:
                try:
                    answer = await request(link, req, limits=limits, timeout=timeout)
                except DirectoryError as exc:
                    answer = exc
    except BaseException as exc:  # noqa: BLE001 - sorted below; the rest is re-raised
        leaf = _leaf(exc)
        if isinstance(leaf, trio.TooSlowError):
            raise DirectoryUnreachable("timeout", where) from None
        if isinstance(leaf, _DIAL_ERRORS):
            raise DirectoryUnreachable("unreachable", f"{where}: {leaf!r}") from None
        raise
    if isinstance(answer, DirectoryError):
        raise answer
    return answer


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def serve_stream(
    stream: HtxStream,
    handler: Handler,
    *,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Answer the one request on ``stream``. Never raises for anything the peer does.

    A malformed or oversized request gets ``bad_request`` with the decoder's
    reason; a ``DirectoryError`` from the handler gets ``refused`` with its
    reason. A peer slower than ``timeout`` is cut off without an answer.
    """
    with trio.move_on_after(timeout):
        try:
            try:
                raw = await _read_all(stream, MessageReader(limits.max_request))
                req = protocol.decode_request(raw, limits)
            except DirectoryError as exc:
                resp = protocol.error(protocol.Status.BAD_REQUEST, exc.reason)
            else:
                try:
                    resp = await handler(req)
                except DirectoryError as exc:
                    resp = protocol.error(protocol.Status.REFUSED, exc.reason)
            out = protocol.encode_response(resp)
            if len(out) > limits.max_response:
                out = protocol.encode_response(
                    protocol.error(protocol.Status.UNAVAILABLE, "too_large")
                )
            await stream.send_all(out)
            await stream.send_eof()
        except _LINK_ERRORS as exc:
            log.debug("directory stream ended early: %r", exc)


async def serve_link(
    link: HtxLink,
    handler: Handler,
    *,
    limits: ProtocolLimits = DEFAULT_LIMITS,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Answer every stream the peer opens on ``link`` until the link closes."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await link.accept_stream()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            nursery.start_soon(_serve_one, stream, handler, limits, timeout)


async def _serve_one(
    stream: HtxStream, handler: Handler, limits: ProtocolLimits, timeout: float
) -> None:
    if await read_service(stream) is not Service.DIRECTORY:
        await stream.aclose()  # a stream for a service this endpoint does not offer
        return
    await serve_stream(stream, handler, limits=limits, timeout=timeout)


class LinkPool:
    """Open HTX links to a few fixed peers (the other authorities), reused for every request.

    A server rate-limits new tunnels per source address (``TicketConfig``), so an
    authority that dialled once per request would soon be refused by its peers.
    Links are held by tasks in ``nursery``; a broken link is dropped and the
    request is retried once on a fresh one.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        static_private: bytes | None = None,
        dial_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._nursery = nursery
        self._static = static_private
        self._dial_timeout = dial_timeout
        self._links: dict[tuple[str, int, bytes], tuple[HtxLink, trio.CancelScope]] = {}
        self._locks: dict[tuple[str, int, bytes], trio.Lock] = {}

    async def request(
        self,
        peer: PeerInfo,
        req: Request,
        *,
        limits: ProtocolLimits = DEFAULT_LIMITS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[bytes, ...]:
        """Like ``ask``, over the pooled link to ``peer``."""
        for attempt in (0, 1):
            link = await self._link(peer)
            try:
                return await request(link, req, limits=limits, timeout=timeout)
            except DirectoryUnreachable as exc:
                self.drop(peer)
                if attempt or exc.reason != "link_closed":
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def drop(self, peer: PeerInfo) -> None:
        held = self._links.pop((peer.host, peer.port, peer.link_public), None)
        if held is not None:
            held[1].cancel()

    async def _link(self, peer: PeerInfo) -> HtxLink:
        key = (peer.host, peer.port, peer.link_public)
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            held = self._links.get(key)
            if held is not None and not held[0].closed:
                return held[0]
            try:
                with trio.fail_after(self._dial_timeout):
                    started: tuple[HtxLink, trio.CancelScope] = await self._nursery.start(
                        self._hold, peer
                    )
            except BaseException as exc:  # noqa: BLE001 - sorted below; the rest is re-raised
                leaf = _leaf(exc)
                where = f"{peer.host}:{peer.port}"
                if isinstance(leaf, trio.TooSlowError):
                    raise DirectoryUnreachable("timeout", where) from None
                if isinstance(leaf, _DIAL_ERRORS):
                    raise DirectoryUnreachable("unreachable", f"{where}: {leaf!r}") from None
                raise
            self._links[key] = started
            return started[0]

    async def _hold(
        self,
        peer: PeerInfo,
        task_status: trio.TaskStatus[tuple[HtxLink, trio.CancelScope]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        up = False
        with trio.CancelScope() as scope:
            try:
                async with dial_tcp(
                    peer, static_private=self._static, timeout=self._dial_timeout
                ) as link:
                    task_status.started((link, scope))
                    up = True
                    while True:  # nobody opens streams towards us here; refuse any
                        try:
                            stream = await link.accept_stream()
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            return
                        await stream.aclose()
            except Exception as exc:
                if not up:
                    raise  # a failed dial goes to the caller of ``start``
                # Once up, a broken link only ends this task: the next request redials.
                log.debug("pooled link to %s:%d ended: %r", peer.host, peer.port, exc)
