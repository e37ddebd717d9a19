"""HTX access tickets (spec/htx-tickets.md): building, carrying and checking them.

Sans-I/O: nothing here reads the clock or touches a socket. ``now`` is seconds
since the Unix epoch, passed in by the caller; ``rng(n)`` returns ``n`` random
bytes (``qnet.crypto.primitives.random_bytes`` in use, ``SeededRandom`` for
vectors).

The client side is :func:`build_ticket` (plus :func:`put_ticket` to place the
value in a request). The server side is :class:`TicketVerifier`, whose
:meth:`~TicketVerifier.check` turns any carrier value, however malformed, into
a :class:`Verdict`; it never raises for bad input. A refused ticket is never
answered with an error: the server serves its cover site (``qnet.htx.cover``).
"""

from __future__ import annotations

import base64
import enum
import heapq
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

from qnet.crypto.primitives import X25519Key, ct_equal, hkdf_sha256
from qnet.errors import CryptoError

Rng = Callable[[int], bytes]

# --- wire constants (spec/htx-tickets.md §2) -------------------------------------------

VERSION: Final = 1
PUBLIC_LEN: Final = 32
KEY_ID_LEN: Final = 1
NONCE_LEN: Final = 16
TICKET_LEN: Final = 32
FIXED_LEN: Final = 1 + PUBLIC_LEN + KEY_ID_LEN + NONCE_LEN + TICKET_LEN  # 82
PAD_MIN: Final = 8
PAD_SPAN: Final = 64  # the client pads with PAD_MIN .. PAD_MIN + PAD_SPAN - 1 bytes
MAX_PAD: Final = 255  # the server accepts 0 .. MAX_PAD bytes of padding
MAX_CARRIER_CHARS: Final = 512  # longer carrier values are refused before decoding

HOUR: Final = 3600
SALT: Final = b"qnet-htx ticket salt v1"
INFO_LABEL: Final = b"qnet-htx ticket v1"

# --- refusal reasons ------------------------------------------------------------------

OK: Final = "ok"
MISSING: Final = "missing"
BAD_ENCODING: Final = "bad_encoding"
BAD_VERSION: Final = "bad_version"
UNKNOWN_KEY: Final = "unknown_key"
STALE: Final = "stale"
REPLAY: Final = "replay"
RATE_LIMITED: Final = "rate_limited"
BAD_TICKET: Final = "bad_ticket"
REASONS: Final = frozenset(
    {MISSING, BAD_ENCODING, BAD_VERSION, UNKNOWN_KEY, STALE, REPLAY, RATE_LIMITED, BAD_TICKET}
)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def hour_of(now: float) -> int:
    """The ticket hour: ``floor(now / 3600)``."""
    return int(now // HOUR)


def derive_ticket(
    shared: bytes,
    *,
    hour: int,
    key_id: int,
    server_public: bytes,
    client_public: bytes,
    nonce: bytes,
    padding: bytes,
) -> bytes:
    """The 32-byte ticket: HKDF-SHA256 over the X25519 secret, bound to everything sent.

    ``info = INFO_LABEL ‖ version u8 ‖ hour u64 ‖ key_id u8 ‖ server_public ‖
    client_public ‖ nonce ‖ padding`` (integers big-endian).
    """
    info = b"".join(
        (
            INFO_LABEL,
            bytes([VERSION]),
            (hour % 2**64).to_bytes(8, "big"),
            bytes([key_id]),
            server_public,
            client_public,
            nonce,
            padding,
        )
    )
    return hkdf_sha256(shared, SALT, info, TICKET_LEN)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """Strict base64url without padding; ``None`` unless ``text`` is the canonical encoding."""
    if len(text) % 4 == 1 or not text.isascii() or not _B64URL.fullmatch(text):
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw if b64url_encode(raw) == text else None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltTicket:
    """Everything :func:`build_ticket_parts` made, for vectors and tests."""

    client_public: bytes
    shared: bytes
    hour: int
    key_id: int
    nonce: bytes
    padding: bytes
    ticket: bytes
    wire: bytes
    carrier_value: str


def build_ticket_parts(
    server_ticket_public: bytes, key_id: int, now: float, rng: Rng
) -> BuiltTicket:
    """Build a ticket for the node's ticket key ``(server_ticket_public, key_id)``.

    Draws from ``rng`` in this order: the ephemeral X25519 private key (32), the
    nonce (16), one byte ``p`` giving ``PAD_MIN + p % PAD_SPAN`` bytes of
    padding, then the padding. Raises ``CryptoError`` for a malformed or
    small-order server key and ``ValueError`` for a key id outside 0..255.
    """
    if not 0 <= key_id <= 255:
        raise ValueError("key_id must be 0..255")
    eph = X25519Key(rng(PUBLIC_LEN))
    shared = eph.exchange(server_ticket_public)
    nonce = rng(NONCE_LEN)
    padding = rng(PAD_MIN + rng(1)[0] % PAD_SPAN)
    hour = hour_of(now)
    ticket = derive_ticket(
        shared,
        hour=hour,
        key_id=key_id,
        server_public=bytes(server_ticket_public),
        client_public=eph.public_bytes,
        nonce=nonce,
        padding=padding,
    )
    wire = b"".join((bytes([VERSION]), eph.public_bytes, bytes([key_id]), nonce, ticket, padding))
    return BuiltTicket(
        client_public=eph.public_bytes,
        shared=shared,
        hour=hour,
        key_id=key_id,
        nonce=nonce,
        padding=padding,
        ticket=ticket,
        wire=wire,
        carrier_value=b64url_encode(wire),
    )


def build_ticket(server_ticket_public: bytes, key_id: int, now: float, rng: Rng) -> str:
    """The carrier value (base64url, no padding) of a fresh ticket (see ``build_ticket_parts``)."""
    return build_ticket_parts(server_ticket_public, key_id, now, rng).carrier_value


# --- the server side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :meth:`TicketVerifier.check`.

    ``reason`` is ``"ok"`` when accepted, else one of ``REASONS``. On acceptance
    ``client_public`` and ``hour`` name the ticket (both empty/-1 otherwise).
    """

    accepted: bool
    reason: str
    client_public: bytes = b""
    hour: int = -1


def _refuse(reason: str) -> Verdict:
    return Verdict(False, reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketConfig:
    """Server-side ticket policy. Every number is a bound the spec states.

    * ``rate_burst`` / ``rate_per_second``: the token bucket of one source
      prefix (IPv4 /24, IPv6 /56). Every ``check`` call costs one token, before
      any decoding or public-key work. Defaults: 20 attempts at once, then one
      every 5 s.
    * ``global_burst`` / ``global_rate_per_second``: one bucket shared by all
      sources, which bounds the X25519 work per second whatever the number of
      prefixes. Defaults: 2,000 and 500/s.
    * ``max_prefixes``: buckets kept at once (least recently used evicted;
      idle buckets that have refilled are dropped first). Default 65,536.
    * ``replay_window``: how long an accepted (client key, hour) is refused
      again, at least; entries are also kept until their hour leaves the
      acceptance window, so an entry lives 2 to 3 hours. Default 7,200 s.
    * ``max_replay_entries``: when the replay set is full (after pruning) new
      tickets are refused as ``rate_limited`` (fail closed). Default 1,000,000
      (about 100 MB at worst).
    * ``skew_hours``: hours either side of the server's hour that are accepted
      (1 gives hour-1, hour, hour+1). ``stale_hours``: hours beyond that window
      that are still recognised, to report ``stale`` instead of ``bad_ticket``.
    """

    rate_burst: float = 20.0
    rate_per_second: float = 0.2
    global_burst: float = 2000.0
    global_rate_per_second: float = 500.0
    max_prefixes: int = 65_536
    replay_window: float = 2 * HOUR
    max_replay_entries: int = 1_000_000
    skew_hours: int = 1
    stale_hours: int = 1

    def __post_init__(self) -> None:
        for name in ("rate_burst", "rate_per_second", "global_burst", "global_rate_per_second"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_prefixes", "max_replay_entries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int")
        if self.skew_hours < 0 or self.stale_hours < 0:
            raise ValueError("skew_hours and stale_hours must be >= 0")


def source_prefix(peer_address: str) -> str:
    """The rate-limit key: the /24 of an IPv4 address, the /56 of an IPv6 one.

    An IPv4-mapped IPv6 address counts as IPv4. Anything that does not parse as
    an address (a Unix socket path, a test name) is its own key.
    """
    host = peer_address
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    host = host.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return "other:" + peer_address[:64]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return str(ipaddress.ip_network(f"{addr}/24", strict=False))
    return str(ipaddress.ip_network(f"{addr}/56", strict=False))


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.last = now

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PrefixRateLimiter:
    """Per-prefix token buckets in bounded memory (at most ``max_prefixes`` of them)."""

    def __init__(self, burst: float, rate: float, max_prefixes: int) -> None:
        self.burst = burst
        self.rate = rate
        self.max_prefixes = max_prefixes
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, prefix: str, now: float) -> bool:
        bucket = self._buckets.get(prefix)
        if bucket is None:
            if len(self._buckets) >= self.max_prefixes:
                self._make_room(now)
            bucket = self._buckets[prefix] = TokenBucket(self.burst, self.rate, now)
        else:
            self._buckets.move_to_end(prefix)
        return bucket.take(now)

    def _make_room(self, now: float) -> None:
        full_after = self.burst / self.rate
        idle = [k for k, b in self._buckets.items() if now - b.last >= full_after]
        for k in idle:  # these would be full again: forgetting them changes nothing
            del self._buckets[k]
        while len(self._buckets) >= self.max_prefixes:
            self._buckets.popitem(last=False)


class ReplaySet:
    """Accepted (client key, hour) pairs, each kept until its expiry time."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._expiry: dict[tuple[bytes, int], float] = {}
        self._heap: list[tuple[float, bytes, int]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: tuple[bytes, int]) -> bool:
        return key in self._expiry

    def prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, pub, hour = heapq.heappop(self._heap)
            self._expiry.pop((pub, hour), None)

    def full(self) -> bool:
        return len(self._expiry) >= self.max_entries

    def add(self, key: tuple[bytes, int], expires: float) -> None:
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key[0], key[1]))


class TicketVerifier:
    """Checks carrier values against the node's ticket keys (current and previous).

    ``keys`` maps a key id (0..255) to the X25519 private key published under it
    in the node's descriptor. :meth:`set_keys` replaces them on rotation; the
    replay and rate-limit state survive.
    """

    def __init__(self, keys: Mapping[int, X25519Key], config: TicketConfig | None = None) -> None:
        self.config = config or TicketConfig()
        self._keys: dict[int, X25519Key] = {}
        self.set_keys(keys)
        c = self.config
        self._prefixes = PrefixRateLimiter(c.rate_burst, c.rate_per_second, c.max_prefixes)
        self._global: TokenBucket | None = None
        self._replay = ReplaySet(c.max_replay_entries)

    def set_keys(self, keys: Mapping[int, X25519Key]) -> None:
        for key_id, key in keys.items():
            if not isinstance(key_id, int) or not 0 <= key_id <= 255:
                raise ValueError("ticket key ids must be ints 0..255")
            if not isinstance(key, X25519Key):
                raise TypeError("ticket keys must be X25519Key objects")
        self._keys = dict(keys)

    @property
    def replay_entries(self) -> int:
        return len(self._replay)

    @property
    def tracked_prefixes(self) -> int:
        return len(self._prefixes)

    def check(self, carrier_value: str | None, peer_address: str, now: float) -> Verdict:
        """Decide on one ticket. Never raises for bad input; see the module docstring.

        Order: rate limit (per prefix, then global), encoding, version, key id,
        ticket (current hour ±``skew_hours``; ``stale`` when it matches an hour
        just outside), replay. Only an accepted ticket enters the replay set.
        """
        c = self.config
        if not self._prefixes.allow(source_prefix(str(peer_address)), now):
            return _refuse(RATE_LIMITED)
        if self._global is None:
            self._global = TokenBucket(c.global_burst, c.global_rate_per_second, now)
        if not self._global.take(now):
            return _refuse(RATE_LIMITED)
        self._replay.prune(now)
        if carrier_value is None or carrier_value == "":
            return _refuse(MISSING)
        if not isinstance(carrier_value, str) or len(carrier_value) > MAX_CARRIER_CHARS:
            return _refuse(BAD_ENCODING)
        wire = b64url_decode(carrier_value)
        if wire is None or not FIXED_LEN <= len(wire) <= FIXED_LEN + MAX_PAD:
            return _refuse(BAD_ENCODING)
        if wire[0] != VERSION:
            return _refuse(BAD_VERSION)
        client_public = wire[1:33]
        key_id = wire[33]
        nonce = wire[34:50]
        ticket = wire[50:82]
        padding = wire[82:]
        key = self._keys.get(key_id)
        if key is None:
            return _refuse(UNKNOWN_KEY)
        try:
            shared = key.exchange(client_public)
        except CryptoError:
            return _refuse(BAD_TICKET)
        hour = hour_of(now)

        def matches(offsets: Iterable[int]) -> int | None:
            found = None
            for off in offsets:  # no early exit: every hour of the window costs the same
                want = derive_ticket(
                    shared,
                    hour=hour + off,
                    key_id=key_id,
                    server_public=key.public_bytes,
                    client_public=client_public,
                    nonce=nonce,
                    padding=padding,
                )
                if ct_equal(want, ticket) and found is None:
                    found = hour + off
            return found

        window = range(-c.skew_hours, c.skew_hours + 1)
        ticket_hour = matches(window)
        if ticket_hour is None:
            outside = [s * (c.skew_hours + k) for k in range(1, c.stale_hours + 1) for s in (-1, 1)]
            return _refuse(STALE if matches(outside) is not None else BAD_TICKET)
        entry = (client_public, ticket_hour)
        if entry in self._replay:
            return _refuse(REPLAY)
        if self._replay.full():
            return _refuse(RATE_LIMITED)
        last_valid = (ticket_hour + c.skew_hours + 1) * HOUR
        self._replay.add(entry, max(now + c.replay_window, last_valid))
        return Verdict(True, OK, client_public, ticket_hour)


# --- carriers (spec/htx-tickets.md §5) ---------------------------------------------------


class CarrierKind(enum.Enum):
    COOKIE = "cookie"
    QUERY = "query"
    FORM = "form"


@dataclass(frozen=True, slots=True, kw_only=True)
class Carriers:
    """Where a ticket travels. ``kind`` is what a client uses; a server looks in all three.

    The names were chosen to look like any web application's: a ``session``
    cookie, a ``token`` query parameter, a ``token`` form field. The form body
    carrier exists only on HTTP/1.1 (on h2 the extended CONNECT stream's DATA is
    the tunnel itself).
    """

    kind: CarrierKind = CarrierKind.COOKIE
    cookie_name: str = "session"
    query_name: str = "token"
    form_name: str = "token"


DEFAULT_CARRIERS: Final = Carriers()
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
MAX_FORM_BODY: Final = 4096


@dataclass(frozen=True, slots=True)
class PlacedTicket:
    """A request target, extra headers and body that carry a ticket."""

    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def put_ticket(value: str, target: str, carriers: Carriers = DEFAULT_CARRIERS) -> PlacedTicket:
    """Place ``value`` (a carrier string from :func:`build_ticket`) in a request to ``target``."""
    if carriers.kind is CarrierKind.COOKIE:
        return PlacedTicket(target, (("Cookie", f"{carriers.cookie_name}={value}"),), b"")
    if carriers.kind is CarrierKind.QUERY:
        sep = "&" if "?" in target else "?"
        return PlacedTicket(f"{target}{sep}{quote(carriers.query_name)}={value}", (), b"")
    body = f"{quote(carriers.form_name)}={value}".encode("ascii")
    headers = (("Content-Type", FORM_CONTENT_TYPE), ("Content-Length", str(len(body))))
    return PlacedTicket(target, headers, body)


def _text(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def extract_ticket(
    headers: Sequence[tuple[bytes | str, bytes | str]],
    target: bytes | str,
    body: bytes = b"",
    carriers: Carriers = DEFAULT_CARRIERS,
) -> str | None:
    """The ticket value a request carries, or ``None``. Looks at cookie, query, then form.

    Never raises: headers and target come straight from the peer.
    """
    try:
        cookies: list[str] = []
        form_body = False
        for name, value in headers:
            n = _text(name).lower()
            if n == "cookie":
                cookies.append(_text(value))
            elif n == "content-type":
                form_body = _text(value).split(";")[0].strip().lower() == FORM_CONTENT_TYPE
        for crumb in "; ".join(cookies).split(";"):
            k, eq, v = crumb.strip().partition("=")
            if eq and k == carriers.cookie_name:
                return v.strip().strip('"')
        query = urlsplit(_text(target)).query
        if query:
            for k, v in parse_qsl(query, keep_blank_values=True, max_num_fields=64):
                if k == carriers.query_name:
                    return v
        if form_body and body and len(body) <= MAX_FORM_BODY:
            text = body.decode("latin-1")
            for k, v in parse_qsl(text, keep_blank_values=True, max_num_fields=64):
                if k == carriers.form_name:
                    return v
    except ValueError:
        return None
    return None


__all__ = [
    "BAD_ENCODING",
    "BAD_TICKET",
    "BAD_VERSION",
    "DEFAULT_CARRIERS",
    "MISSING",
    "OK",
    "RATE_LIMITED",
    "REASONS",
    "REPLAY",
    "STALE",
    "UNKNOWN_KEY",
    "BuiltTicket",
    "CarrierKind",
    "Carriers",
    "PlacedTicket",
    "TicketConfig",
    "TicketVerifier",
    "Verdict",
    "build_ticket",
    "build_ticket_parts",
    "derive_ticket",
    "extract_ticket",
    "hour_of",
    "put_ticket",
    "source_prefix",
]
