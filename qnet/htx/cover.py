"""The HTX cover web site and the request that turns a web connection into a tunnel.

Sans-I/O, on the ``h11`` (HTTP/1.1) and ``h2`` (HTTP/2) state machines
(spec/htx-tickets.md §6–§8). Time is an argument (``now``, Unix seconds); no
object here reads the clock or touches a socket.

Server side. :class:`Http1Server` and :class:`H2Server` share one shape:

* ``receive_data(data, now) -> list[Action]`` (``b""`` means the peer closed);
* ``data_to_send() -> bytes`` drains what to write;
* a :class:`TunnelRequest` action pauses that request until the caller decides:
  ``accept_tunnel(stream_id, now)`` (101 / 200, then :class:`TunnelOpened`)
  or ``refuse_tunnel(stream_id, now)`` (the cover site's own answer);
* ``send_tunnel(stream_id, data)`` / ``close_tunnel(stream_id)`` once open.

Every other request is answered from the :class:`CoverSite`. Malformed HTTP
gets what a web server gives (400 and close, or GOAWAY) and a
:class:`ConnectionClosed` action: ``receive_data`` raises nothing for any peer
input. ``accept_tunnel``/``refuse_tunnel``/``send_tunnel`` raise
``RuntimeError`` only when the caller uses them in the wrong state.

Client side. :func:`build_upgrade_request` / :class:`Http1TunnelClient` and
:class:`H2TunnelClient` make the tunnel request and read the answer; anything
but 101 (HTTP/1.1) or 200 (h2) raises ``TicketError("refused")``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import posixpath
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11

from qnet.htx.errors import TicketError
from qnet.htx.first_flight import HttpFlight, pick_padded_length
from qnet.htx.ticket import (
    DEFAULT_CARRIERS,
    MAX_FORM_BODY,
    Carriers,
    PlacedTicket,
    extract_ticket,
    put_ticket,
)

Rng = Callable[[int], bytes]
Headers = tuple[tuple[str, str], ...]

WS_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES: Final = 8192  # request line + headers, like nginx's 8k header buffers
MAX_H2_HEADER_LIST: Final = 16384  # decoded header list of one h2 request
MAX_BODY_KEPT: Final = MAX_FORM_BODY  # request body bytes kept (the rest is read and dropped)
MAX_EARLY_TUNNEL_BYTES: Final = 65536  # h2 DATA before the decision, kept as read-ahead
MAX_SITE_BYTES: Final = 64 * 2**20  # a directory cover site is read into memory up to this
DEFAULT_MTIME: Final = 1_726_000_000  # 2024-09-10: the built-in site's Last-Modified
CHROME_UA: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

# --- the cover site ------------------------------------------------------------------------

_INDEX = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fieldnotes</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header><h1>Fieldnotes</h1><p>Notes on walking, weather and small repairs.</p></header>
<main>
<article>
<h2>Re-waxing a canvas jacket</h2>
<p>Warm the wax in a bowl of hot water, work it in with a cloth in small circles,
then leave the jacket somewhere warm overnight. Seams first, elbows last.</p>
</article>
<article>
<h2>Reading a barometer</h2>
<p>The number matters less than the trend: a fall of three or more hectopascals in
three hours usually means wind and rain within the day.</p>
</article>
</main>
<footer><p>&copy; 2024 Fieldnotes</p></footer>
</body>
</html>
"""

_CSS = b"""body{margin:0 auto;max-width:42rem;padding:1rem;font:17px/1.6 Georgia,serif;color:#222}
header{border-bottom:1px solid #ccc;margin-bottom:1.5rem}
h1{font-size:1.8rem;margin:.5rem 0}
h2{font-size:1.2rem}
footer{border-top:1px solid #ccc;margin-top:2rem;font-size:.85rem;color:#666}
"""

DEFAULT_FILES: Final[Mapping[str, bytes]] = {
    "/index.html": _INDEX,
    "/style.css": _CSS,
    "/robots.txt": b"User-agent: *\nDisallow:\n",
}

CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "application/javascript",
    ".json": "application/json",
    ".txt": "text/plain",
    ".xml": "text/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}

REASONS: Final[Mapping[int, str]] = {
    200: "OK",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
}


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


@dataclass(frozen=True, slots=True)
class CoverFile:
    body: bytes
    content_type: str
    mtime: int

    @property
    def etag(self) -> str:
        return f'"{self.mtime:x}-{len(self.body):x}"'


@dataclass(frozen=True, slots=True)
class CoverResponse:
    """One answer of the cover site. ``headers`` never include ``Connection``."""

    status: int
    headers: Headers
    body: bytes

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "")


def _token_list(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    out: list[str] = []
    for k, v in headers:
        if k.lower() == name:
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


class CoverSite:
    """A static web site that answers like a stock web server (nginx by default).

    ``files`` maps absolute paths (``/index.html``) to bodies; ``/`` and any
    ``dir/`` serve that directory's ``index.html``. ``server`` is the ``Server``
    header and the signature in error pages (no version, as with
    ``server_tokens off``). ``cache_control`` is added to file responses when set.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        server: str = "nginx",
        mtime: int = DEFAULT_MTIME,
        cache_control: str | None = "max-age=3600",
        mtimes: Mapping[str, int] | None = None,
    ) -> None:
        self.server = server
        self.cache_control = cache_control
        self.files: dict[str, CoverFile] = {}
        for path, body in (DEFAULT_FILES if files is None else files).items():
            if not path.startswith("/"):
                raise ValueError(f"cover site paths start with '/': {path!r}")
            ext = posixpath.splitext(path)[1].lower()
            when = (mtimes or {}).get(path, mtime)
            ctype = CONTENT_TYPES.get(ext, "application/octet-stream")
            self.files[path] = CoverFile(bytes(body), ctype, int(when))

    @classmethod
    def from_directory(cls, root: str | Path, **kw: object) -> CoverSite:
        """Load every regular file under ``root`` (at most ``MAX_SITE_BYTES`` in all)."""
        base = Path(root)
        files: dict[str, bytes] = {}
        mtimes: dict[str, int] = {}
        total = 0
        for p in sorted(base.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            body = p.read_bytes()
            total += len(body)
            if total > MAX_SITE_BYTES:
                raise ValueError(f"cover site under {base} is larger than {MAX_SITE_BYTES} bytes")
            key = "/" + p.relative_to(base).as_posix()
            files[key] = body
            mtimes[key] = int(p.stat().st_mtime)
        return cls(files, mtimes=mtimes, **kw)  # type: ignore[arg-type]

    # -- answers --

    def error_page(self, status: int) -> bytes:
        title = f"{status} {REASONS.get(status, '')}".rstrip()
        return (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n"
            f"<hr><center>{self.server}</center>\r\n</body>\r\n</html>\r\n"
        ).encode("latin-1")

    def error(self, status: int, now: float, *, head: bool = False) -> CoverResponse:
        body = self.error_page(status)
        headers = (
            ("Server", self.server),
            ("Date", http_date(now)),
            ("Content-Type", "text/html"),
            ("Content-Length", str(len(body))),
        )
        return CoverResponse(status, headers, b"" if head else body)

    def resolve(self, target: str) -> str | None:
        """The normalised path of a request target, or ``None`` if it is malformed."""
        if target.startswith(("http://", "https://")):
            target = urlsplit(target).path or "/"
        if not target.startswith("/"):
            return None
        path = unquote(target.split("?", 1)[0].split("#", 1)[0], errors="strict")
        if "\x00" in path:
            return None
        parts: list[str] = []
        for seg in path.split("/")[1:]:
            if seg in ("", "."):
                continue
            if seg == "..":
                if not parts:
                    return None  # climbs above the root: nginx answers 400
                parts.pop()
            else:
                parts.append(seg)
        out = "/" + "/".join(parts)
        if path.endswith("/") and out != "/":
            out += "/"
        return out

    def respond(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], now: float
    ) -> CoverResponse:
        """The answer to one request. Depends only on method, target, the conditional
        headers (If-None-Match, If-Modified-Since) and ``now`` — never on cookies."""
        head = method == "HEAD"
        try:
            path = self.resolve(target)
        except (UnicodeDecodeError, ValueError):
            path = None
        if path is None:
            return self.error(400, now, head=head)
        lookup = path + "index.html" if path.endswith("/") else path
        file = self.files.get(lookup)
        if method not in ("GET", "HEAD"):
            # nginx's static handler: POST to a missing file is 404, the rest 405
            missing = file is None and lookup + "/index.html" not in self.files
            return self.error(404 if method == "POST" and missing else 405, now)
        if file is None:
            if not path.endswith("/") and path + "/index.html" in self.files:
                return self._redirect(path + "/", now, head)
            return self.error(404, now, head=head)
        last_modified = http_date(file.mtime)
        tags = _token_list(headers, "if-none-match")
        if tags:
            not_modified = "*" in tags or file.etag.lower() in tags
        else:
            not_modified = _header(headers, "if-modified-since") == last_modified
        if not_modified:
            return CoverResponse(
                304,
                (
                    ("Server", self.server),
                    ("Date", http_date(now)),
                    ("Last-Modified", last_modified),
                    ("ETag", file.etag),
                ),
                b"",
            )
        out = [
            ("Server", self.server),
            ("Date", http_date(now)),
            ("Content-Type", file.content_type),
            ("Content-Length", str(len(file.body))),
            ("Last-Modified", last_modified),
            ("ETag", file.etag),
        ]
        if self.cache_control:
            out.append(("Cache-Control", self.cache_control))
        out.append(("Accept-Ranges", "bytes"))
        return CoverResponse(200, tuple(out), b"" if head else file.body)

    def _redirect(self, location: str, now: float, head: bool) -> CoverResponse:
        base = self.error(301, now, head=head)
        return CoverResponse(301, (*base.headers, ("Location", location)), base.body)


DEFAULT_SITE: Final = CoverSite()

# --- actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelRequest:
    """A request shaped like a tunnel request. Call ``accept_tunnel`` or ``refuse_tunnel``.

    ``ticket`` is the carrier value found (``None`` if none); the rest is what
    the peer sent, for logging and for the verifier's caller. ``stream_id`` is 0
    on HTTP/1.1.
    """

    stream_id: int
    ticket: str | None
    method: str
    target: str
    authority: str
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelOpened:
    """The tunnel is open; ``read_ahead`` are tunnel bytes that came with the request."""

    stream_id: int
    read_ahead: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelClosed:
    """The peer ended its side of the tunnel (EOF, END_STREAM or RST_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestServed:
    """The cover site answered one request (for counters and access logs)."""

    stream_id: int
    method: str
    target: str
    status: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """Write out ``data_to_send()`` and close. ``reason``: eof, close, bad_request,
    protocol_error, goaway."""

    reason: str


Action = TunnelRequest | TunnelOpened | TunnelData | TunnelClosed | RequestServed | ConnectionClosed


def websocket_accept(key: str) -> str:
    """RFC 6455 ``Sec-WebSocket-Accept`` (SHA-1 is what the protocol fixes, not a choice)."""
    digest = hashlib.sha1((key + WS_GUID).encode("latin-1")).digest()
    return base64.b64encode(digest).decode("ascii")


def _valid_ws_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


def _str_headers(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


class _H1(enum.Enum):
    HTTP = "http"
    AWAIT = "await"
    TUNNEL = "tunnel"
    CLOSED = "closed"


class Http1Server:
    """One HTTP/1.1 server connection: cover site, or a tunnel after ``accept_tunnel``."""

    def __init__(
        self,
        site: CoverSite = DEFAULT_SITE,
        *,
        carriers: Carriers = DEFAULT_CARRIERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.site = site
        self.carriers = carriers
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._max_header_bytes = max_header_bytes
        self._state = _H1.HTTP
        self._out = bytearray()
        self._eof = False
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._pending: TunnelRequest | None = None

    @property
    def tunnel_open(self) -> bool:
        return self._state is _H1.TUNNEL

    @property
    def closed(self) -> bool:
        return self._state is _H1.CLOSED

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Feed bytes from the peer (``b""`` = EOF). Never raises for any input."""
        if self._state is _H1.CLOSED:
            return []
        if self._state is _H1.TUNNEL:
            if not data:
                self._state = _H1.CLOSED
                return [TunnelClosed(stream_id=0)]
            return [TunnelData(stream_id=0, data=bytes(data))]
        if self._eof:
            return []
        self._eof = not data
        self._conn.receive_data(bytes(data))
        if self._state is _H1.AWAIT:
            return []
        return self._process(now)

    def _process(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self._state is _H1.HTTP:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                actions.append(self._bad_request(now))
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                # h11 bounds only an incomplete head; a complete one is measured here
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > self._max_header_bytes:
                    actions.append(self._bad_request(now))
                    break
                self._request = event
                self._body.clear()
                if self._conn.they_are_waiting_for_100_continue:
                    self._out += self._conn.send(
                        h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                    )
            elif isinstance(event, h11.Data):
                room = MAX_BODY_KEPT - len(self._body)
                if room > 0:
                    self._body += event.data[:room]
            elif isinstance(event, h11.EndOfMessage):
                actions += self._complete(now)
            elif isinstance(event, h11.ConnectionClosed):
                self._state = _H1.CLOSED
                actions.append(ConnectionClosed(reason="eof"))
        return actions

    def _bad_request(self, now: float) -> ConnectionClosed:
        self._state = _H1.CLOSED
        if self._eof:
            return ConnectionClosed(reason="eof")
        resp = self.site.error(400, now)
        head = [f"HTTP/1.1 400 {resp.reason}"] + [f"{k}: {v}" for k, v in resp.headers]
        head.append("Connection: close")
        self._out += ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body
        return ConnectionClosed(reason="bad_request")

    def _complete(self, now: float) -> list[Action]:
        req = self._request
        assert req is not None
        headers = _str_headers(list(req.headers.raw_items()))
        method = req.method.decode("latin-1")
        target = req.target.decode("latin-1")
        if self._is_tunnel_request(method, headers, req.http_version):
            self._pending = TunnelRequest(
                stream_id=0,
                ticket=extract_ticket(headers, target, bytes(self._body), self.carriers),
                method=method,
                target=target,
                authority=_header(headers, "host") or "",
                headers=headers,
            )
            self._state = _H1.AWAIT
            return [self._pending]
        return self._serve(method, target, headers, now)

    @staticmethod
    def _is_tunnel_request(method: str, headers: Headers, http_version: bytes) -> bool:
        return (
            method == "GET"
            and http_version == b"1.1"
            and "upgrade" in _token_list(headers, "connection")
            and "websocket" in _token_list(headers, "upgrade")
            and _header(headers, "sec-websocket-version") == "13"
            and _valid_ws_key(_header(headers, "sec-websocket-key"))
        )

    def _serve(self, method: str, target: str, headers: Headers, now: float) -> list[Action]:
        resp = self.site.respond(method, target, headers, now)
        keep_alive = self._conn.their_http_version == b"1.1" and "close" not in _token_list(
            headers, "connection"
        )
        if resp.status == 400:
            keep_alive = False
        out = list(resp.headers)
        at = next((i for i, (k, _) in enumerate(out) if k == "ETag"), len(out))
        out.insert(at, ("Connection", "keep-alive" if keep_alive else "close"))
        actions: list[Action] = [
            RequestServed(stream_id=0, method=method, target=target, status=resp.status)
        ]
        try:
            self._out += self._conn.send(
                h11.Response(
                    status_code=resp.status, headers=out, reason=resp.reason.encode("latin-1")
                )
            )
            if resp.body:
                self._out += self._conn.send(h11.Data(data=resp.body))
            self._out += self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self._state = _H1.CLOSED
            return [*actions, ConnectionClosed(reason="close")]
        if self._conn.our_state is h11.MUST_CLOSE or not keep_alive:
            self._state = _H1.CLOSED
            actions.append(ConnectionClosed(reason="close"))
        elif self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        return actions

    def _take_pending(self, stream_id: int) -> TunnelRequest:
        if self._state is not _H1.AWAIT or self._pending is None or stream_id != 0:
            raise RuntimeError("no tunnel request is waiting for a decision")
        pending, self._pending = self._pending, None
        return pending

    def accept_tunnel(self, stream_id: int, now: float) -> list[Action]:
        """Answer 101 Switching Protocols; the connection carries the tunnel from now on."""
        req = self._take_pending(stream_id)
        key = _header(req.headers, "sec-websocket-key") or ""
        if self._conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:  # type: ignore[attr-defined]
            # h11 saw no upgrade it could grant (cannot happen for a request that passed
            # _is_tunnel_request, but never let h11 raise at the caller): answer as a site
            self._state = _H1.HTTP
            return self._serve(req.method, req.target, req.headers, now) + self._process(now)
        self._out += self._conn.send(
            h11.InformationalResponse(
                status_code=101,
                reason=b"Switching Protocols",
                headers=[
                    ("Server", self.site.server),
                    ("Date", http_date(now)),
                    ("Connection", "upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Accept", websocket_accept(key.strip())),
                ],
            )
        )
        read_ahead, closed = self._conn.trailing_data
        self._state = _H1.TUNNEL
        actions: list[Action] = [TunnelOpened(stream_id=0, read_ahead=bytes(read_ahead))]
        if closed:
            self._state = _H1.CLOSED
            actions.append(TunnelClosed(stream_id=0))
        return actions

    def refuse_tunnel(self, stream_id: int, now: float) -> list[Action]:
        """Answer the request as the cover site answers any GET, then carry on as a web server."""
        req = self._take_pending(stream_id)
        self._state = _H1.HTTP
        actions = self._serve(req.method, req.target, req.headers, now)
        return actions + self._process(now)

    def send_tunnel(self, stream_id: int, data: bytes) -> None:
        if self._state is not _H1.TUNNEL or stream_id != 0:
            raise RuntimeError("the tunnel is not open")
        self._out += data

    def close_tunnel(self, stream_id: int) -> None:
        """Stop the tunnel; the caller closes the connection after ``data_to_send()``."""
        if stream_id == 0 and self._state is _H1.TUNNEL:
            self._state = _H1.CLOSED


# --- HTTP/2 ------------------------------------------------------------------------------


class _S(enum.Enum):
    REQUEST = "request"
    AWAIT = "await"
    TUNNEL = "tunnel"
    DONE = "done"  # answered; nothing more is read from the stream


@dataclass(slots=True)
class _Stream:
    kind: _S
    method: str = ""
    target: str = ""
    headers: Headers = ()
    body: bytearray | None = None
    out: bytearray | None = None
    end_after: bool = False
    remote_ended: bool = False


def _h2_server_settings(max_header_list: int) -> dict[h2.settings.SettingCodes, int]:
    c = h2.settings.SettingCodes
    return {
        c.MAX_CONCURRENT_STREAMS: 128,
        c.INITIAL_WINDOW_SIZE: 65536,
        c.MAX_FRAME_SIZE: 16384,
        c.MAX_HEADER_LIST_SIZE: max_header_list,
        # No ENABLE_CONNECT_PROTOCOL: a stock web server does not announce it, and
        # our clients send the CONNECT before any SETTINGS arrive (as a browser
        # sends its first request), so they never wait for it.
    }


class H2Server:
    """One HTTP/2 server connection (after ALPN ``h2``): cover site plus extended-CONNECT
    tunnels (RFC 8441), each tunnel on its own stream."""

    def __init__(
        self,
        site: CoverSite = DEFAULT_SITE,
        *,
        carriers: Carriers = DEFAULT_CARRIERS,
        max_header_list: int = MAX_H2_HEADER_LIST,
    ) -> None:
        self.site = site
        self.carriers = carriers
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(
            client=False, initial_values=_h2_server_settings(max_header_list)
        )
        self._conn.decoder.max_header_list_size = max_header_list
        self._conn.initiate_connection()
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._pending_out = b""

    @property
    def closed(self) -> bool:
        return self._closed

    def data_to_send(self) -> bytes:
        out, self._pending_out = self._pending_out + self._conn.data_to_send(), b""
        return out

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Feed bytes from the peer (``b""`` = EOF). Never raises for any input."""
        if self._closed:
            return []
        if not data:
            self._closed = True
            return self._closing("eof")
        try:
            events = self._conn.receive_data(bytes(data))
        except h2.exceptions.ProtocolError:
            self._closed = True
            out = self._conn.data_to_send()
            if not out:  # a bad preface is refused before h2 queues its GOAWAY
                try:
                    self._conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
                except h2.exceptions.H2Error:
                    pass
                out = self._conn.data_to_send()
            self._pending_out = out
            return [ConnectionClosed(reason="protocol_error")]
        actions: list[Action] = []
        for ev in events:
            actions += self._on_event(ev, now)
            if self._closed:
                break
        self._flush()
        return actions

    def _closing(self, reason: str) -> list[Action]:
        self._closed = True
        actions: list[Action] = [
            TunnelClosed(stream_id=s) for s, st in self._streams.items() if st.kind is _S.TUNNEL
        ]
        return [*actions, ConnectionClosed(reason=reason)]

    def _on_event(self, ev: h2.events.Event, now: float) -> list[Action]:
        if isinstance(ev, h2.events.RequestReceived):
            return self._on_request(ev, now)
        if isinstance(ev, h2.events.DataReceived):
            return self._on_data(ev)
        if isinstance(ev, h2.events.StreamEnded):
            st = self._streams.get(ev.stream_id)
            if st is None:
                return []
            st.remote_ended = True
            if st.kind is _S.REQUEST:
                return self._serve(ev.stream_id, st, now)
            if st.kind is _S.TUNNEL:
                return [TunnelClosed(stream_id=ev.stream_id)]
            return []
        if isinstance(ev, h2.events.StreamReset):
            st = self._streams.pop(ev.stream_id, None)
            if st is not None and st.kind is _S.TUNNEL:
                return [TunnelClosed(stream_id=ev.stream_id)]
            return []
        if isinstance(ev, h2.events.ConnectionTerminated):
            self._closed = True
            return [
                *(
                    TunnelClosed(stream_id=s)
                    for s, st in self._streams.items()
                    if st.kind is _S.TUNNEL
                ),
                ConnectionClosed(reason="goaway"),
            ]
        return []  # settings, pings, window updates, priority: h2 handles them

    def _on_request(self, ev: h2.events.RequestReceived, now: float) -> list[Action]:
        sid = ev.stream_id
        if sid is None or ev.headers is None:
            return []
        raw = [(bytes(k), bytes(v)) for k, v in ev.headers]
        pseudo = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw if k.startswith(b":")}
        headers = _str_headers([(k, v) for k, v in raw if not k.startswith(b":")])
        st = _Stream(
            kind=_S.REQUEST,
            method=pseudo.get(":method", ""),
            target=pseudo.get(":path", ""),
            headers=headers,
            body=bytearray(),
        )
        self._streams[sid] = st
        if st.method == "CONNECT" and pseudo.get(":protocol", "").lower() == "websocket":
            st.kind = _S.AWAIT
            if ev.stream_ended is not None:
                st.remote_ended = True
            return [
                TunnelRequest(
                    stream_id=sid,
                    ticket=extract_ticket(headers, st.target, b"", self.carriers),
                    method=st.method,
                    target=st.target,
                    authority=pseudo.get(":authority", ""),
                    headers=headers,
                )
            ]
        return []  # answered on StreamEnded, which h2 reports right after this event

    def _on_data(self, ev: h2.events.DataReceived) -> list[Action]:
        sid = ev.stream_id
        if sid is None:
            return []
        self._ack(sid, ev.flow_controlled_length or 0)
        st = self._streams.get(sid)
        data = bytes(ev.data or b"")
        if st is None or st.body is None and st.kind is not _S.TUNNEL:
            return []
        if st.kind is _S.TUNNEL:
            return [TunnelData(stream_id=sid, data=data)] if data else []
        assert st.body is not None
        limit = MAX_EARLY_TUNNEL_BYTES if st.kind is _S.AWAIT else MAX_BODY_KEPT
        room = limit - len(st.body)
        if st.kind is _S.AWAIT and len(data) > room:
            self._reset(sid)
            return []
        if room > 0:
            st.body += data[:room]
        return []

    def _ack(self, sid: int, n: int) -> None:
        if n <= 0:
            return
        try:
            self._conn.acknowledge_received_data(n, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # the stream is gone; the connection window still has to be returned
            try:
                self._conn.increment_flow_control_window(n)
            except h2.exceptions.H2Error:
                pass

    def _reset(self, sid: int) -> None:
        self._streams.pop(sid, None)
        try:
            self._conn.reset_stream(sid)
        except h2.exceptions.H2Error:
            pass

    def _respond(self, sid: int, st: _Stream, resp: CoverResponse) -> None:
        headers = [(b":status", str(resp.status).encode())] + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers
        ]
        st.kind = _S.DONE
        st.body = None
        try:
            self._conn.send_headers(sid, headers, end_stream=not resp.body)
        except h2.exceptions.H2Error:
            self._streams.pop(sid, None)
            return
        if resp.body:
            st.out = bytearray(resp.body)
            st.end_after = True
        else:
            self._streams.pop(sid, None)

    def _serve(self, sid: int, st: _Stream, now: float) -> list[Action]:
        if not st.target.startswith("/") and st.method != "CONNECT":
            resp = self.site.error(400, now)
        else:
            resp = self.site.respond(st.method, st.target, st.headers, now)
        self._respond(sid, st, resp)
        return [
            RequestServed(stream_id=sid, method=st.method, target=st.target, status=resp.status)
        ]

    def _flush(self) -> None:
        for sid, st in list(self._streams.items()):
            if not st.out and not st.end_after:
                continue
            try:
                while st.out:
                    room = min(
                        self._conn.local_flow_control_window(sid),
                        self._conn.max_outbound_frame_size,
                        len(st.out),
                    )
                    if room <= 0:
                        break
                    self._conn.send_data(sid, bytes(st.out[:room]))
                    del st.out[:room]
                if not st.out and st.end_after:
                    self._conn.end_stream(sid)
                    if st.kind is _S.DONE or st.remote_ended:
                        self._streams.pop(sid, None)
                    else:
                        st.end_after = False
            except h2.exceptions.H2Error:
                self._streams.pop(sid, None)

    def _await(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None or st.kind is not _S.AWAIT:
            raise RuntimeError(f"no tunnel request is waiting on stream {stream_id}")
        return st

    def accept_tunnel(self, stream_id: int, now: float) -> list[Action]:
        """Answer 200 on the CONNECT stream; its DATA frames are tunnel bytes from now on."""
        st = self._await(stream_id)
        headers = [
            (b":status", b"200"),
            (b"server", self.site.server.encode("latin-1")),
            (b"date", http_date(now).encode("latin-1")),
        ]
        try:
            self._conn.send_headers(stream_id, headers)
        except h2.exceptions.H2Error:
            self._streams.pop(stream_id, None)
            return [TunnelClosed(stream_id=stream_id)]
        early = bytes(st.body or b"")
        st.kind, st.body, st.out = _S.TUNNEL, None, bytearray()
        actions: list[Action] = [TunnelOpened(stream_id=stream_id, read_ahead=early)]
        if st.remote_ended:
            actions.append(TunnelClosed(stream_id=stream_id))
        return actions

    def refuse_tunnel(self, stream_id: int, now: float) -> list[Action]:
        """Answer as the cover site answers any CONNECT to that path (405 from nginx)."""
        st = self._await(stream_id)
        resp = self.site.respond(st.method, st.target, st.headers, now)
        self._respond(stream_id, st, resp)
        self._flush()
        return [
            RequestServed(
                stream_id=stream_id, method=st.method, target=st.target, status=resp.status
            )
        ]

    def send_tunnel(self, stream_id: int, data: bytes) -> None:
        st = self._streams.get(stream_id)
        if st is None or st.kind is not _S.TUNNEL or st.out is None:
            raise RuntimeError(f"no open tunnel on stream {stream_id}")
        st.out += data
        self._flush()

    def tunnel_buffered(self, stream_id: int) -> int:
        """Tunnel bytes queued for ``stream_id`` but not yet allowed by h2 flow control."""
        st = self._streams.get(stream_id)
        return len(st.out) if st is not None and st.out is not None else 0

    def close_tunnel(self, stream_id: int) -> None:
        """End our side of the tunnel stream once its queued bytes are sent."""
        st = self._streams.get(stream_id)
        if st is not None and st.kind is _S.TUNNEL:
            st.end_after = True
            self._flush()


# --- client side -------------------------------------------------------------------------


class Http1TunnelClient:
    """The client half of the HTTP/1.1 tunnel request.

    ``request_bytes`` is the upgrade request (send it first, as one record of
    ``record_length`` content bytes when that is set); feed the answer to
    ``receive_data`` until it returns a :class:`TunnelOpened`. Draws 16 bytes
    from ``rng`` for ``Sec-WebSocket-Key``. With a ``flight`` (the browser's
    first HTTP/1.1 request, from the template) the request keeps to the headers
    the server needs, so that padded it is exactly as long as the browser's.
    """

    def __init__(
        self,
        host: str,
        path: str,
        ticket_value: str,
        rng: Rng,
        *,
        carriers: Carriers = DEFAULT_CARRIERS,
        user_agent: str = CHROME_UA,
        flight: HttpFlight | None = None,
    ) -> None:
        self.key = base64.b64encode(rng(16)).decode("ascii")
        placed = put_ticket(ticket_value, path, carriers)
        shaped = flight is not None and flight.protocol == "http/1.1" and not placed.body
        if shaped:
            assert flight is not None
            headers = [
                ("Host", host),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("User-Agent", flight.user_agent() or user_agent),
                ("Sec-WebSocket-Version", "13"),
                *placed.headers,
                ("Sec-WebSocket-Key", self.key),
            ]
        else:
            headers = [
                ("Host", host),
                ("Connection", "Upgrade"),
                ("Pragma", "no-cache"),
                ("Cache-Control", "no-cache"),
                ("User-Agent", user_agent),
                ("Upgrade", "websocket"),
                ("Origin", f"https://{host}"),
                ("Sec-WebSocket-Version", "13"),
                ("Accept-Encoding", "gzip, deflate, br, zstd"),
                ("Accept-Language", "en-US,en;q=0.9"),
                *placed.headers,
                ("Sec-WebSocket-Key", self.key),
                ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ]
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        out = self._conn.send(h11.Request(method="GET", target=placed.target, headers=headers))
        if placed.body:
            out += self._conn.send(h11.Data(data=placed.body))
        out += self._conn.send(h11.EndOfMessage())
        self.request_bytes: bytes = out
        self.record_length: int | None = None
        if shaped:
            assert flight is not None
            self.record_length = pick_padded_length(len(out), flight.request_lengths(host), rng)
        self.opened = False

    def receive_data(self, data: bytes) -> TunnelOpened | None:
        """Feed the server's answer. ``None`` = need more; raises ``TicketError("refused")``
        for any answer but a correct 101."""
        if self.opened:
            raise RuntimeError("the tunnel is already open; read the socket directly")
        try:
            self._conn.receive_data(data)
            event = self._conn.next_event()
        except (h11.RemoteProtocolError, RuntimeError) as exc:
            raise TicketError("refused", "malformed answer") from exc
        if event is h11.NEED_DATA:
            if not data:
                raise TicketError("refused", "connection closed")
            return None
        if not isinstance(event, h11.InformationalResponse) or event.status_code != 101:
            raise TicketError("refused", "no 101 answer")
        headers = _str_headers(list(event.headers.raw_items()))
        if _header(headers, "sec-websocket-accept") != websocket_accept(self.key):
            raise TicketError("refused", "wrong Sec-WebSocket-Accept")
        self.opened = True
        read_ahead, _ = self._conn.trailing_data
        return TunnelOpened(stream_id=0, read_ahead=bytes(read_ahead))


def build_upgrade_request(
    host: str, path: str, ticket_value: str, rng: Rng, *, carriers: Carriers = DEFAULT_CARRIERS
) -> bytes:
    """The HTTP/1.1 WebSocket-style upgrade request that carries ``ticket_value``."""
    return Http1TunnelClient(host, path, ticket_value, rng, carriers=carriers).request_bytes


def connect_headers(
    authority: str, placed: PlacedTicket, user_agent: str, *, minimal: bool = True
) -> list[tuple[str, str]]:
    """The extended CONNECT (h2 and HTTP/3) that opens a tunnel, carrying ``placed``.

    ``minimal``: only what the tunnel needs, so that padded it is as long as a
    browser's first request (spec/fingerprint.md §5, §7); otherwise with the
    headers a browser's WebSocket request also has.
    """
    tunnel = [
        (":method", "CONNECT"),
        (":authority", authority),
        (":scheme", "https"),
        (":path", placed.target),
        (":protocol", "websocket"),
    ]
    ticket = [(k.lower(), v) for k, v in placed.headers]
    if minimal:
        return [
            *tunnel,
            ("user-agent", user_agent),
            ("origin", f"https://{authority}"),
            ("sec-websocket-version", "13"),
            *ticket,
        ]
    return [
        *tunnel,
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
        ("user-agent", user_agent),
        ("origin", f"https://{authority}"),
        ("sec-websocket-version", "13"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        *ticket,
        ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
    ]


class H2TunnelClient:
    """The client half of an h2 extended-CONNECT tunnel (one tunnel per connection).

    Send ``opening_records()`` first, each as one TLS record: the preface with
    SETTINGS, then the CONNECT's HEADERS, back to back as a browser sends its
    preface and first request. With a ``flight`` (the browser's first h2 records,
    from the template) the first record is byte for byte the browser's SETTINGS
    and WINDOW_UPDATE, and the HEADERS record is padded to the length the
    browser's request would have had. ``receive_data`` returns
    :class:`TunnelOpened`, :class:`TunnelData`, :class:`TunnelClosed` and
    :class:`ConnectionClosed`; it raises ``TicketError("refused")`` when the
    server answers anything but 200. The server is not asked to announce
    SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 wants it; a web server that does
    is a tell). Only cookie and query carriers exist on h2.
    """

    def __init__(
        self,
        authority: str,
        path: str,
        ticket_value: str,
        *,
        carriers: Carriers = DEFAULT_CARRIERS,
        user_agent: str = CHROME_UA,
        flight: HttpFlight | None = None,
        rng: Rng | None = None,
    ) -> None:
        placed = put_ticket(ticket_value, path, carriers)
        if placed.body:
            raise ValueError("the form-body carrier does not exist on h2")
        shaped = flight if flight is not None and flight.protocol == "h2" else None
        headers = connect_headers(
            authority, placed, (shaped.user_agent() if shaped else None) or user_agent
        )
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.initiate_connection()
        self._records: list[tuple[bytes, int | None]] = []
        if shaped is not None:
            # h2 applies these when the server acknowledges the one SETTINGS we send.
            self._conn.update_settings(dict(shaped.settings))
            if shaped.window_update:
                self._conn.increment_flow_control_window(shaped.window_update)
            self._conn.clear_outbound_data_buffer()
            self._records.append((shaped.h2_opening(), None))
        else:
            self._records.append((self._conn.data_to_send(), None))
        self.stream_id: int | None = self._conn.get_next_available_stream_id()
        prio = shaped.priority if shaped is not None else None
        if prio is not None:
            self._conn.send_headers(
                self.stream_id,
                headers,
                priority_weight=prio.weight,
                priority_depends_on=prio.depends_on,
                priority_exclusive=prio.exclusive,
            )
        else:
            self._conn.send_headers(self.stream_id, headers)
        frame = self._conn.data_to_send()
        target = None
        if shaped is not None:
            target = pick_padded_length(
                len(frame), shaped.request_lengths(authority), rng or secrets.token_bytes
            )
        self._records.append((frame, target))
        self.opened = False
        self._out = bytearray()
        self._closed = False

    def opening_records(self) -> list[tuple[bytes, int | None]]:
        """(plaintext, padded plaintext length or None) for each of the first records."""
        records, self._records = self._records, []
        return records

    def data_to_send(self) -> bytes:
        """Bytes to send (the opening records too, joined, if nobody took them)."""
        opening = b"".join(data for data, _ in self.opening_records())
        self._flush()
        return opening + self._conn.data_to_send()

    def receive_data(self, data: bytes) -> list[Action]:
        if self._closed:
            return []
        if not data:
            self._closed = True
            if not self.opened:
                raise TicketError("refused", "connection closed")
            return [TunnelClosed(stream_id=self.stream_id or 0), ConnectionClosed(reason="eof")]
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._closed = True
            if not self.opened:
                raise TicketError("refused", "protocol error") from exc
            return [ConnectionClosed(reason="protocol_error")]
        actions: list[Action] = []
        for ev in events:
            actions += self._on_event(ev)
        self._flush()
        return actions

    def _on_event(self, ev: h2.events.Event) -> list[Action]:
        sid = self.stream_id
        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
            status = dict(ev.headers or []).get(b":status")
            if status != b"200":
                raise TicketError("refused", f"status {status!r}")
            self.opened = True
            return [TunnelOpened(stream_id=sid)]
        if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid and sid is not None:
            self._conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
            return [TunnelData(stream_id=sid, data=bytes(ev.data or b""))] if ev.data else []
        if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
            if not self.opened:
                raise TicketError("refused", "stream ended before an answer")
            return [TunnelClosed(stream_id=sid)]
        if isinstance(ev, h2.events.ConnectionTerminated):
            self._closed = True
            if not self.opened:
                raise TicketError("refused", "GOAWAY")
            return [ConnectionClosed(reason="goaway")]
        return []

    def send(self, data: bytes) -> None:
        if not self.opened:
            raise RuntimeError("the tunnel is not open")
        self._out += data
        self._flush()

    def close(self) -> None:
        if self.opened and self.stream_id is not None:
            self._flush()
            self._conn.end_stream(self.stream_id)

    def _flush(self) -> None:
        sid = self.stream_id
        if sid is None or not self.opened:
            return
        while self._out:
            room = min(
                self._conn.local_flow_control_window(sid),
                self._conn.max_outbound_frame_size,
                len(self._out),
            )
            if room <= 0:
                return
            self._conn.send_data(sid, bytes(self._out[:room]))
            del self._out[:room]

    def buffered(self) -> int:
        return len(self._out)
