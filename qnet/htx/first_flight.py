"""The browser's first HTTP records after the TLS handshake (spec/fingerprint.md §7).

A template's ``records.http`` section says what Chromium wrote right after its
Finished: over h2 one record with the connection preface, its SETTINGS and a
connection WINDOW_UPDATE, then one record with the first request's HEADERS;
over HTTP/1.1 one record with the request head. An observer sees only the
record lengths, so the HTX client copies the first record exactly and pads
the request record (TLS 1.3 inner-plaintext padding) to the length Chromium's
request would have had for the same authority.

Lengths here are record plaintext lengths (what is inside the TLS record,
without the content-type byte and the AEAD tag). Sans-I/O; no sockets.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import hpack
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from qnet.htx.errors import TemplateError

__all__ = [
    "H2_PREFACE",
    "CapturedRequest",
    "HEADLESS",
    "H2Priority",
    "HttpFlight",
    "as_sent_to",
    "h1_head",
    "hpack_length",
    "parse_http_flight",
    "pick_padded_length",
]

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_FRAME_HEADER: Final = 9
PRIORITY_FIELDS: Final = 5  # stream dependency (4) + weight (1) in a HEADERS frame
HEADLESS: Final = ("HeadlessChrome/", "Chrome/")  # what the capture tool's browser adds


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Priority:
    """The PRIORITY fields of the browser's HEADERS frame (weight 1..256)."""

    weight: int
    depends_on: int
    exclusive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CapturedRequest:
    """One first request as captured: its header list and its record plaintext length
    (h2: the whole HEADERS frame with its 9-byte header; HTTP/1.1: the request head)."""

    headers: tuple[tuple[str, str], ...]
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpFlight:
    """What the browser sent after its Finished, per ``protocol`` (``h2`` or ``http/1.1``)."""

    protocol: str
    authority: str
    requests: tuple[CapturedRequest, ...]
    settings: tuple[tuple[int, int], ...] = ()
    window_update: int = 0
    priority: H2Priority | None = None
    request_line: str = ""

    def h2_opening(self) -> bytes:
        """Preface, SETTINGS (the browser's ids, values and order) and the connection
        WINDOW_UPDATE: the plaintext of the browser's first h2 record."""
        settings = SettingsFrame(0)
        for ident, value in self.settings:
            settings.settings[ident] = value
        out = H2_PREFACE + settings.serialize()
        if self.window_update:
            out += WindowUpdateFrame(0, window_increment=self.window_update).serialize()
        return out

    def user_agent(self) -> str | None:
        """The captured User-Agent as a headed browser sends it."""
        for name, value in self.requests[0].headers if self.requests else ():
            if name.lower() == "user-agent":
                return value.replace(*HEADLESS)
        return None

    def request_lengths(self, authority: str, *, headed: bool = True) -> tuple[int, ...]:
        """Plaintext lengths of the browser's request record, had it gone to ``authority``
        (sorted, distinct). ``headed`` removes the capture tool's "Headless" marker
        from the User-Agent, as a browser with a window sends it."""
        out = set()
        for req in self.requests:
            moved = as_sent_to(req.headers, authority, headed=headed)
            if self.protocol == "h2":
                out.add(req.length + hpack_length(moved) - hpack_length(req.headers))
            else:
                out.add(
                    req.length
                    + len(h1_head(self.request_line, moved))
                    - len(h1_head(self.request_line, req.headers))
                )
        return tuple(sorted(out))


def as_sent_to(
    headers: Sequence[tuple[str, str]], authority: str, *, headed: bool = True
) -> list[tuple[str, str]]:
    """A captured request's headers as the browser would send them to ``authority``:
    ``:authority``/``Host`` and ``Origin`` follow it and, ``headed``, the User-Agent
    loses the capture tool's "Headless" marker. The base of every length model."""
    out = []
    for name, value in headers:
        low = name.lower()
        if low in (":authority", "host"):
            value = authority
        elif low == "origin":
            value = f"https://{authority}"
        elif low == "user-agent" and headed:
            value = value.replace(*HEADLESS)
        out.append((name, value))
    return out


def hpack_length(headers: Sequence[tuple[str, str]]) -> int:
    """Bytes of ``headers`` as the first header block of a connection (fresh HPACK
    context, Huffman strings): the unit we shift a captured length by."""
    return len(hpack.Encoder().encode(list(headers), huffman=True))


def h1_head(request_line: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request head, exactly as browsers write it."""
    lines = [request_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def pick_padded_length(
    natural: int, targets: Sequence[int], rng: Callable[[int], bytes] = secrets.token_bytes
) -> int | None:
    """One of ``targets`` that ``natural`` bytes fit in (drawn uniformly), or ``None``."""
    fits = [t for t in targets if t >= natural]
    if not fits:
        return None
    return fits[int.from_bytes(rng(2), "big") % len(fits)]


# --- template section --------------------------------------------------------------------


def _fail(path: str, why: str) -> TemplateError:
    return TemplateError(path, why)


def _int(obj: dict[str, object], key: str, path: str, lo: int, hi: int) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(f"{path}.{key}", f"must be an integer in {lo}..{hi}")
    return v


def _str(obj: dict[str, object], key: str, path: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise _fail(f"{path}.{key}", "must be a non-empty string")
    return v


def _headers(v: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, list) or not v:
        raise _fail(path, "must be a non-empty list of [name, value]")
    out = []
    for i, item in enumerate(v):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
            or not item[0]
        ):
            raise _fail(f"{path}[{i}]", "must be [name, value]")
        out.append((item[0], item[1]))
    return tuple(out)


def parse_http_flight(obj: object, path: str = "records.http") -> HttpFlight:
    """The ``records.http`` section → :class:`HttpFlight`; ``TemplateError`` names the field."""
    if not isinstance(obj, dict):
        raise _fail(path, "must be an object")
    protocol = _str(obj, "protocol", path)
    if protocol not in ("h2", "http/1.1"):
        raise _fail(f"{path}.protocol", "must be h2 or http/1.1")
    raw_requests = obj.get("requests")
    if not isinstance(raw_requests, list) or not raw_requests:
        raise _fail(f"{path}.requests", "must be a non-empty list")
    requests = []
    for i, r in enumerate(raw_requests):
        rp = f"{path}.requests[{i}]"
        if not isinstance(r, dict):
            raise _fail(rp, "must be an object")
        requests.append(
            CapturedRequest(
                headers=_headers(r.get("headers"), f"{rp}.headers"),
                length=_int(r, "length", rp, 1, 1 << 14),
            )
        )
    flight = HttpFlight(
        protocol=protocol, authority=_str(obj, "authority", path), requests=tuple(requests)
    )
    if protocol == "http/1.1":
        return HttpFlight(
            protocol=protocol,
            authority=flight.authority,
            requests=flight.requests,
            request_line=_str(obj, "request_line", path),
        )
    raw_settings = obj.get("settings")
    if not isinstance(raw_settings, list):
        raise _fail(f"{path}.settings", "must be a list of [id, value]")
    settings = []
    for i, s in enumerate(raw_settings):
        if (
            not isinstance(s, list)
            or len(s) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in s)
            or not (0 <= s[0] <= 0xFFFF and 0 <= s[1] < 1 << 32)
        ):
            raise _fail(f"{path}.settings[{i}]", "must be [id 0..65535, value 0..2^32-1]")
        settings.append((s[0], s[1]))
    priority = None
    raw_priority = obj.get("priority")
    if raw_priority is not None:
        pp = f"{path}.priority"
        if not isinstance(raw_priority, dict):
            raise _fail(pp, "must be an object or null")
        exclusive = raw_priority.get("exclusive")
        if not isinstance(exclusive, bool):
            raise _fail(f"{pp}.exclusive", "must be true or false")
        priority = H2Priority(
            weight=_int(raw_priority, "weight", pp, 1, 256),
            depends_on=_int(raw_priority, "depends_on", pp, 0, (1 << 31) - 1),
            exclusive=exclusive,
        )
    return HttpFlight(
        protocol=protocol,
        authority=flight.authority,
        requests=flight.requests,
        settings=tuple(settings),
        window_update=_int(obj, "window_update", path, 0, (1 << 31) - 1),
        priority=priority,
    )
