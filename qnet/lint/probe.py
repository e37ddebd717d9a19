"""``qnet-lint probe HOST:PORT``: check a live HTX endpoint from outside.

Without the node's keys the probe is what any scanner is: it opens TLS with
QNet's Chrome-shaped ClientHello, asks for ``/`` and a random path over
HTTP/1.1 and (when the server picks it) h2, sends a WebSocket upgrade with a
ticket-shaped value that no server key made, and checks that what comes back is
an ordinary web site with no protocol tell. With the node's public keys (ticket,
link, ML-KEM, as its descriptor publishes them) it also opens a tunnel with a
fresh ticket, replays that ticket on a second connection, runs the inner
handshake, then speaks frames directly (no ``HtxSession`` in between, so every
frame the node sends is seen): PING, KEY_UPDATE, and a quiet observation window
in which the node's padding and PING gaps are timed.

What the probe cannot see from outside: the node's random draws (it only sees
gaps, so a short window says little; a window of a few minutes at the default
cadence gives a fair sample), anything the node does on other connections, its
rekeying by age (10 minutes) or by volume, and whether its TLS stack would also
accept TLS 1.2 (the probe's ClientHello offers only 1.3, as QNet's client does).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import h2.config
import h2.connection
import h2.events
import h11
import trio

from qnet.crypto.primitives import random_bytes
from qnet.htx import cover
from qnet.htx import frames as F
from qnet.htx.errors import HandshakeError, HtxError, TicketError, TlsError
from qnet.htx.inner import EXPORTER_LABEL, Finished, InnerInitiator
from qnet.htx.keys import SessionKeys
from qnet.htx.ticket import build_ticket
from qnet.htx.tls import (
    ApplicationData,
    CipherSuite,
    Group,
    HandshakeComplete,
    PeerClosed,
    TlsClientConfig,
    TlsConnection,
)
from qnet.lint.report import Check, Result, failed, passed, skipped

HT: Final = "spec/htx-tls.md"
TK: Final = "spec/htx-tickets.md"
HX: Final = "spec/htx.md"
IN: Final = "spec/htx-inner.md"

CHECKS: Final[dict[str, Check]] = {
    c.id: c
    for c in [
        Check("PROBE-TLS-001", f"{HT} §5", "a TLS 1.3 handshake with a Chrome-shaped hello"),
        Check("PROBE-TLS-002", f"{HT} §5", "the cipher suite is a TLS 1.3 suite Chrome offers"),
        Check("PROBE-TLS-003", f"{HT} §3", "the key-exchange group is X25519MLKEM768"),
        Check("PROBE-WEB-001", f"{TK} §8", "HTTP/1.1 GET / is answered 200 with a page"),
        Check("PROBE-WEB-002", f"{TK} §8", "a random path is answered 404"),
        Check("PROBE-WEB-003", f"{TK} §8", "realistic Server and Date headers"),
        Check("PROBE-WEB-004", f"{TK} §9", "no protocol tell in any header or body"),
        Check("PROBE-WEB-005", f"{TK} §7", "an upgrade with a bad ticket gets the plain answer"),
        Check("PROBE-H2-001", f"{TK} §8", "h2 GET / and a random path answered as over HTTP/1.1"),
        Check("PROBE-TICKET-001", f"{TK} §4", "a fresh ticket opens the tunnel (101)"),
        Check("PROBE-TICKET-002", f"{TK} §5", "the same ticket replayed is refused"),
        Check("PROBE-INNER-001", f"{IN} §3", "the inner handshake completes with the node's keys"),
        Check("PROBE-FRAME-001", f"{HX} §4", "every frame from the node decodes"),
        Check("PROBE-PING-001", f"{HX} §5.4", "a PING is echoed with its token"),
        Check(
            "PROBE-KEYUPDATE-001", f"{HX} §5.5", "after our KEY_UPDATE the node reads the new key"
        ),
        Check("PROBE-CADENCE-001", f"{HX} §5.6", "idle padding is not periodic and varies in size"),
        Check("PROBE-CADENCE-002", f"{HX} §5.6", "the node's PINGs are not periodic"),
    ]
}

TELL: Final = re.compile(rb"qnet|\bhtx\b", re.IGNORECASE)
CHROME_SUITES: Final = frozenset(int(s) for s in CipherSuite)
#: Gaps whose coefficient of variation is below this look like a clock, not a draw.
MIN_CV: Final = 0.1
MIN_GAPS: Final = 3
UA: Final = cover.CHROME_UA


@dataclass(frozen=True, slots=True)
class NodeKeys:
    ticket_public: bytes
    key_id: int
    link_public: bytes
    mlkem_public: bytes


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    host: str
    port: int
    server_name: str
    keys: NodeKeys | None = None
    observe: float = 30.0
    timeout: float = 10.0


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


class ProbeError(Exception):
    """A step could not be done; the message is the one-line reason."""


# --- a TLS connection, driven by hand ----------------------------------------------------


class _Conn:
    def __init__(self, sock: trio.SocketStream, tls: TlsConnection) -> None:
        self.sock, self.tls = sock, tls
        self.done: HandshakeComplete | None = None
        self.eof = False
        self._early = bytearray()

    @classmethod
    async def open(cls, opts: ProbeOptions, alpn: tuple[str, ...]) -> _Conn:
        try:
            sock = await trio.open_tcp_stream(opts.host, opts.port)
        except OSError as exc:
            raise ProbeError(f"cannot connect: {exc.strerror or exc}") from exc
        tls = TlsConnection(
            TlsClientConfig(server_name=opts.server_name, alpn=alpn), now=time.monotonic()
        )
        conn = cls(sock, tls)
        try:
            await conn._handshake()
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def _handshake(self) -> None:
        await self._flush()
        while self.done is None:
            data = await self._read()
            if not data:
                raise ProbeError("the server closed during the TLS handshake")
            try:
                events = self.tls.receive_data(data)
            except TlsError as exc:
                raise ProbeError(f"TLS handshake failed: {exc.reason}") from exc
            await self._flush()
            for ev in events:
                if isinstance(ev, HandshakeComplete):
                    self.done = ev
                elif isinstance(ev, ApplicationData):
                    self._early += ev.data

    async def _read(self) -> bytes:
        try:
            return bytes(await self.sock.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _flush(self) -> None:
        out = self.tls.data_to_send()
        if out:
            try:
                await self.sock.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ProbeError("the server closed the connection") from exc

    async def send(self, data: bytes) -> None:
        self.tls.send(data)
        await self._flush()

    async def recv(self) -> bytes | None:
        """Application bytes, or ``None`` once the server closed."""
        if self._early:
            early = bytes(self._early)
            self._early.clear()
            return early
        while not self.eof:
            data = await self._read()
            try:
                events = self.tls.receive_data(data)
            except TlsError as exc:
                raise ProbeError(f"TLS error: {exc.reason}") from exc
            await self._flush()
            if not data:
                self.eof = True
            out = bytearray()
            for ev in events:
                if isinstance(ev, ApplicationData):
                    out += ev.data
                elif isinstance(ev, PeerClosed):
                    self.eof = True
            if out:
                return bytes(out)
        return None

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                if self.done is not None:
                    self.tls.close()
                    await self._flush()
            except (ProbeError, TlsError, Exception):  # closing politely is best effort
                pass
            await self.sock.aclose()


# --- HTTP/1.1 and h2 ---------------------------------------------------------------------


def _browser_headers(opts: ProbeOptions) -> list[tuple[str, str]]:
    authority = opts.server_name if opts.port == 443 else f"{opts.server_name}:{opts.port}"
    return [
        ("Host", authority),
        ("User-Agent", UA),
        ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.9"),
    ]


async def _h1(opts: ProbeOptions, target: str, extra: list[tuple[str, str]]) -> Answer:
    """One request on a fresh HTTP/1.1 connection; the answer (a 101 has an empty body)."""
    conn = await _Conn.open(opts, ("http/1.1",))
    try:
        h = h11.Connection(h11.CLIENT)
        headers = [*_browser_headers(opts), *extra]
        await conn.send(h.send(h11.Request(method="GET", target=target, headers=headers)))
        await conn.send(h.send(h11.EndOfMessage()) or b"")
        answer: Answer | None = None
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                data = await conn.recv()
                h.receive_data(data or b"")
                continue
            if isinstance(ev, h11.InformationalResponse) and ev.status_code == 101:
                return Answer(101, _str(ev.headers.raw_items()), b"")
            if isinstance(ev, h11.Response):
                answer = Answer(ev.status_code, _str(ev.headers.raw_items()), b"")
            elif isinstance(ev, h11.Data) and answer is not None:
                answer.body += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                if answer is None:
                    raise ProbeError("the server closed without an answer")
                return answer
    except h11.RemoteProtocolError as exc:
        raise ProbeError(f"not an HTTP/1.1 answer: {exc}") from exc
    finally:
        await conn.aclose()


def _str(raw: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw]


async def _h2(opts: ProbeOptions, targets: list[str]) -> dict[str, Answer] | None:
    """GET each target on one h2 connection; ``None`` if the server did not pick h2."""
    conn = await _Conn.open(opts, ("h2", "http/1.1"))
    try:
        assert conn.done is not None
        if conn.done.alpn != "h2":
            return None
        h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h.initiate_connection()
        authority = _browser_headers(opts)[0][1]
        streams: dict[int, str] = {}
        for t in targets:
            sid = h.get_next_available_stream_id()
            streams[sid] = t
            h.send_headers(
                sid,
                [
                    (":method", "GET"),
                    (":authority", authority),
                    (":scheme", "https"),
                    (":path", t),
                    ("user-agent", UA),
                    ("accept", "text/html,*/*;q=0.8"),
                ],
                end_stream=True,
            )
        await conn.send(h.data_to_send())
        answers: dict[int, Answer] = {}
        ended: set[int] = set()
        while len(ended) < len(streams):
            data = await conn.recv()
            if data is None:
                raise ProbeError("the server closed the h2 connection early")
            for ev in h.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id is not None:
                    hdrs = _str((k, v) for k, v in ev.headers or [])
                    status = int(next(v for k, v in hdrs if k == ":status"))
                    answers[ev.stream_id] = Answer(status, hdrs, b"")
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
                    answers[ev.stream_id].body += ev.data or b""
                    h.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(ev.stream_id or 0)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    raise ProbeError(f"GOAWAY (error {ev.error_code})")
            await conn.send(h.data_to_send())
        return {streams[sid]: a for sid, a in answers.items()}
    finally:
        await conn.aclose()


def _tells(answers: list[Answer]) -> list[str]:
    found = []
    for a in answers:
        for k, v in a.headers:
            if TELL.search(f"{k}: {v}".encode()):
                found.append(f"header {k}: {v[:40]}")
        m = TELL.search(a.body)
        if m:
            found.append(f"body of a {a.status} answer contains {m.group().decode()!r}")
    return found


def _header_problem(a: Answer, now: float) -> str | None:
    server, date = a.header("server"), a.header("date")
    if not server or not server.strip():
        return f"no Server header on the {a.status} answer"
    if date is None:
        return f"no Date header on the {a.status} answer"
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return f"Date is not an HTTP date: {date!r}"
    if not date.endswith("GMT") or when.tzinfo is None:
        return f"Date is not in GMT: {date!r}"
    skew = abs(when.timestamp() - now)
    if skew > 300:
        return f"Date is {skew:.0f} s away from this clock"
    return None


# --- the tunnel, frame by frame ----------------------------------------------------------


@dataclass(slots=True)
class _Tunnel:
    conn: _Conn
    sealer: F.FrameSealer
    reader: F.FrameReader
    frames_seen: int = 0
    padding: list[tuple[float, int]] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    ours: set[bytes] = field(default_factory=set)
    closed: str | None = None

    async def send(self, frame: F.Frame) -> None:
        await self.conn.send(self.sealer.seal(frame))

    async def next_frame(self) -> F.Frame:
        """The node's next frame; handles (and records) padding and the node's PINGs."""
        while True:
            frame = self.reader.next_frame()  # HtxError propagates: PROBE-FRAME-001
            if frame is None:
                data = await self.conn.recv()
                if data is None:
                    raise ProbeError(self.closed or "the node closed the connection")
                self.reader.feed(data)
                continue
            self.frames_seen += 1
            now = trio.current_time()
            if isinstance(frame, F.StreamFrame) and frame.stream_id == 0:
                self.padding.append((now, len(frame.data)))
                continue
            if isinstance(frame, F.PingFrame) and frame.token not in self.ours:
                self.pings.append(now)
                await self.send(frame)  # echo, as §5.4 asks of every side
                continue
            if isinstance(frame, F.CloseFrame):
                reason = frame.reason.decode("utf-8", "replace")
                self.closed = f"the node sent CLOSE 0x{frame.code:04x} {reason}".strip()
                raise ProbeError(self.closed)
            return frame

    async def ping(self) -> None:
        token = secrets.token_bytes(8)
        self.ours.add(token)
        await self.send(F.PingFrame(token=token))
        while True:
            frame = await self.next_frame()
            if isinstance(frame, F.PingFrame) and frame.token == token:
                self.ours.discard(token)
                return


async def _open_tunnel(opts: ProbeOptions, keys: NodeKeys, ticket: str) -> tuple[_Conn, bytes]:
    """TLS, then the upgrade with ``ticket``; returns the connection and read-ahead bytes.
    ``TicketError`` when the node answered as a web site."""
    conn = await _Conn.open(opts, ("http/1.1",))
    try:
        authority = _browser_headers(opts)[0][1]
        client = cover.Http1TunnelClient(authority, "/", ticket, random_bytes)
        await conn.send(client.request_bytes)
        while True:
            data = await conn.recv()
            opened = client.receive_data(data or b"")
            if opened is not None:
                return conn, opened.read_ahead
    except BaseException:
        await conn.aclose()
        raise


async def _inner(conn: _Conn, keys: NodeKeys, read_ahead: bytes) -> _Tunnel:
    exporter = conn.tls.exporter(EXPORTER_LABEL, b"", 32)
    ini = InnerInitiator(keys.link_public, keys.mlkem_public, exporter)
    await conn.send(ini.start())
    step = ini.receive(read_ahead) if read_ahead else None
    while not isinstance(step, Finished):
        if step is not None and step.send:
            await conn.send(step.send)
        data = await conn.recv()
        if data is None:
            raise ProbeError("the node closed during the inner handshake")
        step = ini.receive(data)
    await conn.send(step.send)
    if step.remote_static_public != keys.link_public:
        raise ProbeError("the node proved a different link key")
    skeys = SessionKeys.derive(step.session_secret)
    reader = F.FrameReader(skeys.server)
    reader.feed(step.read_ahead)
    return _Tunnel(conn, F.FrameSealer(skeys.client), reader)


def _cadence(times: list[float]) -> tuple[str, str] | None:
    """``None`` when there are too few gaps; else ``("pass"|"fail", detail)``."""
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    if len(gaps) < MIN_GAPS:
        return None
    mean = statistics.fmean(gaps)
    cv = statistics.pstdev(gaps) / mean if mean > 0 else 0.0
    detail = f"{len(gaps)} gaps, mean {mean:.3f} s, variation {cv:.2f}"
    return ("pass", detail) if cv >= MIN_CV else ("fail", f"gaps look periodic: {detail}")


# --- the probe -----------------------------------------------------------------------------


class _Run:
    def __init__(self, opts: ProbeOptions) -> None:
        self.opts = opts
        self.subject = f"{opts.host}:{opts.port}"
        self.results: list[Result] = []

    def ok(self, cid: str, note: str = "") -> None:
        subject = self.subject + (f" ({note})" if note else "")
        self.results.append(passed(CHECKS[cid], subject))

    def bad(self, cid: str, reason: str) -> None:
        self.results.append(failed(CHECKS[cid], self.subject, reason))

    def skip(self, cid: str, reason: str) -> None:
        self.results.append(skipped(CHECKS[cid], self.subject, reason))

    async def step(self, coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with trio.fail_after(self.opts.timeout):
            return await coro()

    async def tls(self) -> bool:
        try:
            conn = await self.step(lambda: _Conn.open(self.opts, ("h2", "http/1.1")))
        except (ProbeError, trio.TooSlowError) as exc:
            why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self.bad("PROBE-TLS-001", why)
            for cid in CHECKS:
                if cid != "PROBE-TLS-001":
                    self.bad(cid, "not reached: no TLS 1.3 connection (PROBE-TLS-001)")
            return False
        done = conn.done
        await conn.aclose()
        assert done is not None
        self.ok("PROBE-TLS-001", f"ALPN {done.alpn}")
        suite = _name(CipherSuite, done.cipher_suite)
        if done.cipher_suite in CHROME_SUITES:
            self.ok("PROBE-TLS-002", suite)
        else:
            self.bad("PROBE-TLS-002", f"the server chose {suite}")
        group = _name(Group, done.group)
        if done.group == Group.X25519MLKEM768:
            self.ok("PROBE-TLS-003", group)
        else:
            self.bad(
                "PROBE-TLS-003", f"the server chose {group} although the hello offered the hybrid"
            )
        return True

    async def web(self) -> None:
        opts = self.opts
        rand = f"/{secrets.token_hex(6)}/{secrets.token_hex(4)}.html"
        seen: list[Answer] = []
        now = time.time()
        try:
            root = await self.step(lambda: _h1(opts, "/", []))
            seen.append(root)
            if root.status == 200 and root.body:
                self.ok("PROBE-WEB-001")
            else:
                self.bad(
                    "PROBE-WEB-001", f"GET / answered {root.status} with {len(root.body)} bytes"
                )
            missing = await self.step(lambda: _h1(opts, rand, []))
            seen.append(missing)
            if missing.status == 404:
                self.ok("PROBE-WEB-002")
            else:
                self.bad("PROBE-WEB-002", f"GET of a random path answered {missing.status}")
            problems = [p for a in seen if (p := _header_problem(a, now))]
            if problems:
                self.bad("PROBE-WEB-003", problems[0])
            else:
                self.ok("PROBE-WEB-003", root.header("server") or "")
            # A ticket-shaped value no server key made: a replayed or forged request.
            bogus = _bogus_ticket()
            upgrade = [
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", secrets.token_urlsafe(16)[:22] + "=="),
                ("Cookie", f"session={bogus}"),
            ]
            up = await self.step(lambda: _h1(opts, "/", upgrade))
            seen.append(up)
            if up.status == 101:
                self.bad("PROBE-WEB-005", "a forged ticket opened a tunnel (101)")
            elif up.status != root.status:
                self.bad(
                    "PROBE-WEB-005", f"answered {up.status} where a plain GET got {root.status}"
                )
            else:
                self.ok("PROBE-WEB-005")
        except (ProbeError, trio.TooSlowError) as exc:
            why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            for cid in ("PROBE-WEB-001", "PROBE-WEB-002", "PROBE-WEB-003", "PROBE-WEB-005"):
                if not any(r.check.id == cid for r in self.results):
                    self.bad(cid, f"HTTP/1.1: {why}")
        try:
            h2answers = await self.step(lambda: _h2(opts, ["/", rand]))
        except (ProbeError, trio.TooSlowError, KeyError, StopIteration) as exc:
            h2answers = None
            self.bad("PROBE-H2-001", f"h2: {exc or 'timed out'}")
        else:
            if h2answers is None:
                self.skip("PROBE-H2-001", "the server did not pick h2 (many sites do not)")
            else:
                seen += h2answers.values()
                got = (h2answers["/"].status, h2answers[rand].status)
                if got != (200, 404):
                    self.bad(
                        "PROBE-H2-001", f"h2 answered {got[0]} for / and {got[1]} for a random path"
                    )
                elif p := _header_problem(h2answers["/"], now):
                    self.bad("PROBE-H2-001", p)
                else:
                    self.ok("PROBE-H2-001")
        tells = _tells(seen)
        if tells:
            self.bad("PROBE-WEB-004", tells[0])
        elif seen:
            self.ok("PROBE-WEB-004", f"{len(seen)} answers")

    async def tunnel(self) -> None:
        keys = self.opts.keys
        tunnel_ids = [
            c
            for c in CHECKS
            if c.startswith(
                (
                    "PROBE-TICKET",
                    "PROBE-INNER",
                    "PROBE-FRAME",
                    "PROBE-PING",
                    "PROBE-KEYUPDATE",
                    "PROBE-CADENCE",
                )
            )
        ]
        if keys is None:
            for cid in tunnel_ids:
                self.skip(
                    cid, "no node keys given (--ticket-key, --key-id, --link-key, --mlkem-key)"
                )
            return
        ticket = build_ticket(keys.ticket_public, keys.key_id, time.time(), random_bytes)
        done: set[str] = set()

        def rest(reason: str) -> None:
            for cid in tunnel_ids:
                if cid in done:
                    continue
                if cid.startswith("PROBE-CADENCE"):
                    self.skip(cid, reason)
                else:
                    self.bad(cid, reason)

        try:
            conn, read_ahead = await self.step(lambda: _open_tunnel(self.opts, keys, ticket))
        except (TicketError, ProbeError, trio.TooSlowError) as exc:
            why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self.bad("PROBE-TICKET-001", f"a fresh ticket did not open a tunnel: {why}")
            done.add("PROBE-TICKET-001")
            rest("not reached: the tunnel did not open (PROBE-TICKET-001)")
            return
        self.ok("PROBE-TICKET-001")
        done.add("PROBE-TICKET-001")
        try:
            await self._in_tunnel(conn, keys, read_ahead, ticket, done)
        finally:
            await conn.aclose()
        rest("not reached")

    async def _in_tunnel(
        self, conn: _Conn, keys: NodeKeys, read_ahead: bytes, ticket: str, done: set[str]
    ) -> None:
        def mark(cid: str, ok: bool, text: str = "") -> None:
            done.add(cid)
            self.ok(cid, text) if ok else self.bad(cid, text)

        try:
            tun = await self.step(lambda: _inner(conn, keys, read_ahead))
        except (HandshakeError, ProbeError, trio.TooSlowError) as exc:
            mark("PROBE-INNER-001", False, f"inner handshake: {_why(exc)}")
            return
        mark("PROBE-INNER-001", True)
        try:
            try:
                await self.step(tun.ping)
                mark("PROBE-PING-001", True)
            except (ProbeError, trio.TooSlowError) as exc:
                mark("PROBE-PING-001", False, f"no echo: {_why(exc)}")
                return
            try:
                await tun.send(F.KeyUpdateFrame())
                await self.step(tun.ping)
                mark("PROBE-KEYUPDATE-001", True)
            except (ProbeError, trio.TooSlowError) as exc:
                mark("PROBE-KEYUPDATE-001", False, f"no echo under the new key: {_why(exc)}")
                return
            await self._replay(ticket, done)
            with trio.move_on_after(self.opts.observe):
                while True:
                    await tun.next_frame()
        except HtxError as exc:
            mark("PROBE-FRAME-001", False, f"a frame from the node did not decode: {exc.reason}")
            return
        except ProbeError as exc:
            mark("PROBE-FRAME-001", False, f"during observation: {exc}")
            return
        mark("PROBE-FRAME-001", True, f"{tun.frames_seen} frames")
        self._judge_cadence(tun, done)
        with trio.move_on_after(1):
            await tun.send(F.CloseFrame(code=0, reason=b""))

    async def _replay(self, ticket: str, done: set[str]) -> None:
        keys = self.opts.keys
        assert keys is not None
        done.add("PROBE-TICKET-002")
        try:
            conn, _ = await self.step(lambda: _open_tunnel(self.opts, keys, ticket))
        except TicketError:
            self.ok("PROBE-TICKET-002")
        except (ProbeError, trio.TooSlowError) as exc:
            self.bad("PROBE-TICKET-002", f"the replay got no web answer: {_why(exc)}")
        else:
            await conn.aclose()
            self.bad("PROBE-TICKET-002", "a replayed ticket opened a second tunnel")

    def _judge_cadence(self, tun: _Tunnel, done: set[str]) -> None:
        done.update(("PROBE-CADENCE-001", "PROBE-CADENCE-002"))
        window = f"{self.opts.observe:g} s"
        pad = _cadence([t for t, _ in tun.padding])
        sizes = {n for _, n in tun.padding}
        if pad is None:
            self.skip(
                "PROBE-CADENCE-001",
                f"{len(tun.padding)} padding frames in {window}; "
                f"need {MIN_GAPS + 1} (lengthen --observe)",
            )
        elif pad[0] == "fail":
            self.bad("PROBE-CADENCE-001", pad[1])
        elif len(sizes) == 1:
            self.bad("PROBE-CADENCE-001", f"every padding frame has {sizes.pop()} data bytes")
        else:
            self.ok("PROBE-CADENCE-001", pad[1])
        ping = _cadence(tun.pings)
        if ping is None:
            self.skip(
                "PROBE-CADENCE-002",
                f"{len(tun.pings)} PINGs from the node in {window}; "
                f"need {MIN_GAPS + 1} (lengthen --observe)",
            )
        elif ping[0] == "fail":
            self.bad("PROBE-CADENCE-002", ping[1])
        else:
            self.ok("PROBE-CADENCE-002", ping[1])


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, HandshakeError):
        return exc.reason
    return str(exc)


def _name(enum_type: Any, value: int | None) -> str:
    if value is None:
        return "none"
    try:
        return str(enum_type(value).name)
    except ValueError:
        return f"0x{value:04x}"


def _bogus_ticket() -> str:
    from qnet.htx.ticket import b64url_encode

    return b64url_encode(b"\x01" + secrets.token_bytes(81 + 8 + secrets.randbelow(64)))


async def probe_async(opts: ProbeOptions) -> list[Result]:
    run = _Run(opts)
    if await run.tls():
        await run.web()
        await run.tunnel()
    order = {cid: n for n, cid in enumerate(CHECKS)}
    return sorted(run.results, key=lambda r: order[r.check.id])


def probe(opts: ProbeOptions) -> list[Result]:
    """Run every probe check against ``opts.host:opts.port`` (blocks; starts its own Trio loop)."""
    return trio.run(probe_async, opts)


__all__ = ["CHECKS", "NodeKeys", "ProbeOptions", "probe", "probe_async"]
