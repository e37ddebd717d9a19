"""The server side of a SOCKS handshake, sans-I/O: SOCKS5, SOCKS4 and SOCKS4a.

No sockets and no clock here. The proxy (``qnet.client.proxy``) drives one
:class:`SocksHandshake` per client connection, the way arti's tor-socksproto
does: ``step()`` returns an instruction and the caller carries it out::

    hs = SocksHandshake(config, client_addr="127.0.0.1")
    while True:
        action = hs.step()
        if isinstance(action, Send):
            await stream.send_all(action.data)
        elif isinstance(action, Recv):
            hs.receive_data(await stream.receive_some(action.max_bytes))  # b"" = EOF
        else:  # Finished
            request, read_ahead = action.request, action.read_ahead
            break

What is spoken:

* SOCKS5 (RFC 1928) with the "no authentication" method and RFC 1929
  username/password. The password is not checked: credentials only separate
  streams onto different circuits (Tor's ``IsolateSOCKSAuth``). When the client
  offers both methods we pick username/password so that its credentials count.
* Commands CONNECT, and Tor's RESOLVE (0xF0) and RESOLVE_PTR (0xF1). BIND and
  UDP ASSOCIATE are refused with "command not supported" (0x07).
* Addresses IPv4, IPv6 and domain names. A name is handed on as text and never
  resolved here: the exit resolves it (no DNS leak). A "name" that is really an
  IP literal becomes an address.
* SOCKS4 and SOCKS4a (CONNECT and RESOLVE); the user id counts as a credential.
* Plain HTTP sent to the SOCKS port gets a short HTTP error page
  (:class:`HttpOnSocksPort`).

Every failure is a :class:`SocksError` whose ``reply`` holds the bytes to send
to the client before closing (possibly empty) and whose ``code`` is the SOCKS5
reply code. Each message has a size bound, so no input makes a handshake wait
for more than a few hundred bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Final

from qnet.errors import DecodeError, QNetError
from qnet.routing.streams import EndReason

__all__ = [
    "HTTP_ERROR_PAGE",
    "AddressType",
    "AuthMethod",
    "Command",
    "Credentials",
    "Finished",
    "HandshakeUsageError",
    "HttpOnSocksPort",
    "IPAddress",
    "IsolationFlags",
    "IsolationKey",
    "Recv",
    "ReplyCode",
    "Send",
    "SocksConfig",
    "SocksError",
    "SocksHandshake",
    "SocksRequest",
    "reply_code_for_end",
    "socks4_reply",
    "socks5_reply",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- wire constants ----------------------------------------------------------------------------


class ReplyCode(enum.IntEnum):
    """The SOCKS5 reply field (RFC 1928 §6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Command(enum.IntEnum):
    """SOCKS commands. Only CONNECT, RESOLVE and RESOLVE_PTR reach a :class:`SocksRequest`."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03
    RESOLVE = 0xF0  # Tor extension: name -> address
    RESOLVE_PTR = 0xF1  # Tor extension: address -> name


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class AuthMethod(enum.IntEnum):
    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


SOCKS4_GRANTED: Final = 0x5A
SOCKS4_REJECTED: Final = 0x5B

_SUPPORTED: Final = frozenset({Command.CONNECT, Command.RESOLVE, Command.RESOLVE_PTR})

# Size bounds. SOCKS5 messages have a length limit by construction; SOCKS4's
# NUL-terminated fields get ours. A longer user id than this is refused.
MAX_SOCKS4_USERID: Final = 255
MAX_HOSTNAME: Final = 255
_SOCKS5_GREETING_MAX: Final = 2 + 255
_SOCKS5_AUTH_MAX: Final = 3 + 255 + 255
_SOCKS5_REQUEST_MAX: Final = 4 + 1 + 255 + 2
_SOCKS4_REQUEST_MAX: Final = 8 + MAX_SOCKS4_USERID + 1 + MAX_HOSTNAME + 1

# Request-line methods that mark a client talking HTTP to the SOCKS port.
_HTTP_METHODS: Final = (
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
)
_HTTP_PREFIX_MAX: Final = max(len(m) for m in _HTTP_METHODS)

_HTTP_BODY: Final = (
    b"<!DOCTYPE html>\n"
    b"<html><head><title>This is a SOCKS proxy</title></head>\n"
    b"<body>\n"
    b"<h1>This port speaks SOCKS, not HTTP</h1>\n"
    b"<p>Your program sent an HTTP request to QNet's SOCKS port. This port is a\n"
    b"SOCKS proxy (SOCKS5, SOCKS4a): it cannot be used as an HTTP proxy or as a web server.</p>\n"
    b"<p>Set your program's proxy to <b>SOCKS5</b> at this address and let the proxy\n"
    b"resolve host names, so that DNS lookups travel through QNet too. With curl:\n"
    b"<code>curl --socks5-hostname 127.0.0.1:1080 https://example.com/</code>.</p>\n"
    b"</body></html>\n"
)

HTTP_ERROR_PAGE: Final = (
    b"HTTP/1.0 501 Not Implemented\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    + f"Content-Length: {len(_HTTP_BODY)}\r\n".encode()
    + b"Connection: close\r\n"
    b"\r\n" + _HTTP_BODY
)
"""What a client that speaks HTTP to the SOCKS port receives before the close."""


# --- errors ------------------------------------------------------------------------------------


class SocksError(DecodeError):
    """The client's handshake was refused.

    ``reason`` is a short stable code (``bad_version``, ``unsupported_command``,
    ...), ``code`` the SOCKS5 reply code it stands for, and ``reply`` the bytes
    to send before closing the connection (empty when nothing useful can be said,
    e.g. after EOF or for an unknown protocol).
    """

    code: ReplyCode
    reply: bytes

    def __init__(self, reason: str, code: ReplyCode, reply: bytes, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.code = code
        self.reply = reply


class HttpOnSocksPort(SocksError):
    """The client spoke HTTP; ``reply`` is :data:`HTTP_ERROR_PAGE`."""


class HandshakeUsageError(QNetError, RuntimeError):
    """The caller drove the handshake wrongly (``step`` after ``Finished``, data after EOF)."""


# --- reply builders ----------------------------------------------------------------------------


def _pack_address(address: IPAddress | str | None, port: int) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be in 0..65535, not {port}")
    if address is None:
        address = ipaddress.IPv4Address(0)
    if isinstance(address, ipaddress.IPv4Address):
        body = bytes([AddressType.IPV4]) + address.packed
    elif isinstance(address, ipaddress.IPv6Address):
        body = bytes([AddressType.IPV6]) + address.packed
    else:
        name = address.encode()
        if not 0 < len(name) <= MAX_HOSTNAME:
            raise ValueError("a host name in a reply must be 1..255 bytes")
        body = bytes([AddressType.DOMAIN, len(name)]) + name
    return body + struct.pack("!H", port)


def socks5_reply(
    code: ReplyCode | int = ReplyCode.SUCCEEDED,
    address: IPAddress | str | None = None,
    port: int = 0,
) -> bytes:
    """A SOCKS5 reply: ``VER REP RSV ATYP BND.ADDR BND.PORT``.

    ``address`` defaults to ``0.0.0.0`` (we do not reveal where the exit is); a
    ``str`` is sent as a domain name (RESOLVE_PTR answers). Raises ``ValueError``
    for a code that is not a :class:`ReplyCode`, a port out of range or a name
    longer than 255 bytes.
    """
    return bytes([5, ReplyCode(code), 0]) + _pack_address(address, port)


def socks4_reply(
    granted: bool, address: ipaddress.IPv4Address | None = None, port: int = 0
) -> bytes:
    """A SOCKS4 reply: ``VN=0 CD DSTPORT DSTIP``, CD 0x5A (granted) or 0x5B (rejected)."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be in 0..65535, not {port}")
    ip = address if address is not None else ipaddress.IPv4Address(0)
    cd = SOCKS4_GRANTED if granted else SOCKS4_REJECTED
    return bytes([0, cd]) + struct.pack("!H", port) + ip.packed


_END_TO_REPLY: Final = {
    EndReason.DONE: ReplyCode.GENERAL_FAILURE,  # ended before it was connected
    EndReason.REFUSED: ReplyCode.CONNECTION_REFUSED,
    EndReason.UNREACHABLE: ReplyCode.HOST_UNREACHABLE,
    EndReason.TIMEOUT: ReplyCode.TTL_EXPIRED,
    EndReason.EXIT_POLICY: ReplyCode.NOT_ALLOWED,
    EndReason.RESOLVE_FAILED: ReplyCode.HOST_UNREACHABLE,
    EndReason.MISC: ReplyCode.GENERAL_FAILURE,
    EndReason.DESTROYED: ReplyCode.GENERAL_FAILURE,
}


def reply_code_for_end(reason: EndReason | int) -> ReplyCode:
    """The SOCKS5 reply code for an exit's END reason (spec/circuits.md §6).

    ``unreachable`` maps to "host unreachable" (0x04): the END reason does not say
    whether the network or the host was unreachable, and a connector that knows
    (a direct one sees ``ENETUNREACH``) passes 0x03 itself. Unknown reasons give
    "general failure".
    """
    try:
        return _END_TO_REPLY[EndReason(reason)]
    except ValueError:
        return ReplyCode.GENERAL_FAILURE


# --- configuration and isolation ---------------------------------------------------------------


class IsolationFlags(enum.Flag):
    """Which facts about a stream keep it off circuits used by other streams (Tor's names).

    Streams from different listeners (SOCKS ports) never share a circuit whatever
    the flags. Each flag adds one fact to the :class:`IsolationKey`:

    * ``SOCKS_AUTH`` (Tor's IsolateSOCKSAuth, **on** by default): the SOCKS5
      username and password, or the SOCKS4 user id; no credentials is a value too.
    * ``CLIENT_ADDR`` (IsolateClientAddr, **on**): the client's IP address.
    * ``CLIENT_PROTOCOL`` (IsolateClientProtocol, off): SOCKS4 versus SOCKS5.
    * ``DEST_PORT`` (IsolateDestPort, off): the destination port.
    * ``DEST_ADDR`` (IsolateDestAddr, off): the destination host or address.
    """

    NONE = 0
    SOCKS_AUTH = enum.auto()
    CLIENT_ADDR = enum.auto()
    CLIENT_PROTOCOL = enum.auto()
    DEST_PORT = enum.auto()
    DEST_ADDR = enum.auto()
    DEFAULT = SOCKS_AUTH | CLIENT_ADDR


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What the client authenticated with: SOCKS5 username/password or a SOCKS4 user id
    (``password`` is then ``b""``). Never checked; used only for isolation."""

    username: bytes
    password: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class IsolationKey:
    """Streams may share a circuit only when their keys are equal. Hashable.

    Fields a flag does not ask for are ``None``; ``listener`` is always set.
    """

    listener: str
    credentials: Credentials | None = None
    client_addr: str | None = None
    protocol: int | None = None
    dest_port: int | None = None
    dest_addr: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SocksConfig:
    """How a listener's handshakes behave.

    * ``allow_no_auth``: accept SOCKS5 clients that offer no authentication.
    * ``allow_username_password``: accept RFC 1929 username/password (not checked).
      With both off, every SOCKS5 client is refused (``0x05 0xFF``).
    * ``allow_socks4``: accept SOCKS4 and SOCKS4a requests.
    * ``isolation``: the :class:`IsolationFlags` of this listener.
    * ``listener``: the listener's name in isolation keys (for example its address).
    """

    allow_no_auth: bool = True
    allow_username_password: bool = True
    allow_socks4: bool = True
    isolation: IsolationFlags = IsolationFlags.DEFAULT
    listener: str = ""

    def __post_init__(self) -> None:
        for name in ("allow_no_auth", "allow_username_password", "allow_socks4"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SocksConfig.{name} must be a bool")
        if not isinstance(self.isolation, IsolationFlags):
            raise TypeError("SocksConfig.isolation must be IsolationFlags")


# --- the request and the instructions ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SocksRequest:
    """What the client asked for, once the handshake is over.

    ``host`` is an address, or a host name that was *not* resolved. ``port`` is 0
    for RESOLVE and RESOLVE_PTR. ``credentials`` is ``None`` without
    authentication. ``isolation`` is the key to pick a circuit with.
    """

    version: int  # 4 or 5
    command: Command
    host: IPAddress | str
    port: int
    credentials: Credentials | None = None
    isolation: IsolationKey = field(default_factory=lambda: IsolationKey(listener=""))

    @property
    def target(self) -> str:
        """``host:port`` as BEGIN wants it (IPv6 literals in brackets)."""
        if isinstance(self.host, ipaddress.IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def reply(
        self,
        code: ReplyCode = ReplyCode.SUCCEEDED,
        address: IPAddress | str | None = None,
        port: int = 0,
    ) -> bytes:
        """The reply for this request in its own SOCKS version.

        SOCKS4 knows only granted/rejected and IPv4: any code but ``SUCCEEDED``
        is a rejection, and a granted reply with an address that is not IPv4
        raises ``ValueError``.
        """
        if self.version == 5:
            return socks5_reply(code, address, port)
        if code != ReplyCode.SUCCEEDED:
            return socks4_reply(False)
        if address is not None and not isinstance(address, ipaddress.IPv4Address):
            raise ValueError("a SOCKS4 reply carries only an IPv4 address")
        return socks4_reply(True, address, port)


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to the client, then call ``step()`` again."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Recv:
    """Read from the client and pass it to ``receive_data`` (``b""`` at EOF).

    At most ``max_bytes`` more can belong to the handshake; reading more is
    harmless (the extra comes back as ``Finished.read_ahead``).
    """

    max_bytes: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The handshake is done. Answer ``request`` with ``request.reply(...)``.

    ``read_ahead`` is what the client sent after its request (optimistic data):
    it belongs to the stream.
    """

    request: SocksRequest
    read_ahead: bytes


Action = Send | Recv | Finished


# --- the handshake -----------------------------------------------------------------------------


class _State(enum.Enum):
    START = "start"  # waiting for the first byte(s): which protocol?
    GREETING = "greeting"  # SOCKS5 method offer
    AUTH = "auth"  # RFC 1929 sub-negotiation
    REQUEST = "request"  # SOCKS5 request
    SOCKS4 = "socks4"  # SOCKS4/4a request
    HTTP = "http"  # looks like HTTP: waiting for a whole method token
    DONE = "done"
    FAILED = "failed"


_SOCKS5_FAIL: Final = socks5_reply(ReplyCode.GENERAL_FAILURE)
_SOCKS4_FAIL: Final = socks4_reply(False)


def _error(version: int, reason: str, code: ReplyCode, detail: str = "") -> SocksError:
    """A refusal answered in the client's own SOCKS version."""
    reply = socks5_reply(code) if version == 5 else _SOCKS4_FAIL
    return SocksError(reason, code, reply, detail)


def _host_from_name(raw: bytes, version: int) -> IPAddress | str:
    """A host name from the wire: an IP literal becomes an address; else checked text."""
    if not raw:
        raise _error(version, "empty_hostname", ReplyCode.GENERAL_FAILURE)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(version, "bad_hostname", ReplyCode.GENERAL_FAILURE, "not UTF-8") from None
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    # BEGIN carries "host:port" as text: refuse what would break that syntax or a log line.
    if any(c in ":[]/\\@ " or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise _error(version, "bad_hostname", ReplyCode.GENERAL_FAILURE, "forbidden character")
    return name


class SocksHandshake:
    """One client's SOCKS handshake, server side. See the module doc for the loop.

    ``client_addr`` (the client's IP as text) only feeds the isolation key.
    """

    def __init__(self, config: SocksConfig | None = None, *, client_addr: str = "") -> None:
        self.config = config if config is not None else SocksConfig()
        self.client_addr = client_addr
        self._buf = bytearray()
        self._eof = False
        self._state = _State.START
        self._credentials: Credentials | None = None
        self._error: SocksError | None = None
        self._finished: Finished | None = None

    @property
    def finished(self) -> bool:
        return self._state is _State.DONE

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the client; ``b""`` means EOF.

        Raises ``HandshakeUsageError`` for data after EOF or after ``Finished``.
        """
        if self._state is _State.DONE:
            raise HandshakeUsageError("the handshake is finished; read-ahead was handed back")
        if self._eof and data:
            raise HandshakeUsageError("data after EOF")
        if data:
            self._buf += data
        else:
            self._eof = True

    def step(self) -> Action:
        """The next instruction: ``Send``, ``Recv`` or ``Finished``.

        Raises ``SocksError`` (send its ``reply``, then close) when the client's
        bytes are refused or it closed early; the same error again on every later
        call. Raises ``HandshakeUsageError`` when called after ``Finished``.
        Any other exception is a bug.
        """
        if self._error is not None:
            raise self._error
        if self._state is _State.DONE:
            raise HandshakeUsageError("step() after Finished")
        try:
            return self._advance()
        except SocksError as exc:
            self._state = _State.FAILED
            self._error = exc
            raise

    # --- states ---------------------------------------------------------------------------------

    def _advance(self) -> Action:
        if self._state is _State.START:
            return self._start()
        if self._state is _State.GREETING:
            return self._greeting()
        if self._state is _State.AUTH:
            return self._auth()
        if self._state is _State.REQUEST:
            return self._request()
        if self._state is _State.SOCKS4:
            return self._socks4()
        if self._state is _State.HTTP:
            return self._http()
        raise AssertionError(f"unreachable state {self._state}")  # pragma: no cover

    def _need(self, limit: int, reply: bytes) -> Recv:
        """More input is needed for a message of at most ``limit`` bytes."""
        if self._eof:
            raise SocksError("eof", ReplyCode.GENERAL_FAILURE, b"", "client closed mid-handshake")
        if len(self._buf) >= limit:  # pragma: no cover - parsers refuse before this
            raise SocksError("too_long", ReplyCode.GENERAL_FAILURE, reply)
        return Recv(limit - len(self._buf))

    def _start(self) -> Action:
        if not self._buf:
            return self._need(_SOCKS5_REQUEST_MAX, b"")
        first = self._buf[0]
        if first == 5:
            self._state = _State.GREETING
            return self._greeting()
        if first == 4:
            if not self.config.allow_socks4:
                raise _error(4, "socks4_disabled", ReplyCode.NOT_ALLOWED)
            self._state = _State.SOCKS4
            return self._socks4()
        self._state = _State.HTTP
        return self._http()

    def _http(self) -> Action:
        head = bytes(self._buf[:_HTTP_PREFIX_MAX])
        for method in _HTTP_METHODS:
            if head.startswith(method):
                raise HttpOnSocksPort(
                    "http_on_socks_port", ReplyCode.GENERAL_FAILURE, HTTP_ERROR_PAGE
                )
        if any(method.startswith(head) for method in _HTTP_METHODS):
            return self._need(_HTTP_PREFIX_MAX, b"")
        raise SocksError(
            "bad_version", ReplyCode.GENERAL_FAILURE, b"", f"first byte {self._buf[0]:#04x}"
        )

    def _greeting(self) -> Action:
        buf = self._buf
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return self._need(_SOCKS5_GREETING_MAX, b"")
        offered = set(buf[2 : 2 + buf[1]])
        del buf[: 2 + buf[1]]
        cfg = self.config
        if cfg.allow_username_password and AuthMethod.USERNAME_PASSWORD in offered:
            self._state = _State.AUTH
            return Send(bytes([5, AuthMethod.USERNAME_PASSWORD]))
        if cfg.allow_no_auth and AuthMethod.NO_AUTH in offered:
            self._state = _State.REQUEST
            return Send(bytes([5, AuthMethod.NO_AUTH]))
        raise SocksError(
            "no_acceptable_method",
            ReplyCode.GENERAL_FAILURE,
            bytes([5, AuthMethod.NO_ACCEPTABLE]),
            f"offered {sorted(offered)}",
        )

    def _auth(self) -> Action:
        buf = self._buf
        failure = b"\x01\x01"
        if buf and buf[0] != 1:
            raise SocksError("bad_auth_version", ReplyCode.GENERAL_FAILURE, failure)
        if len(buf) < 2:
            return self._need(_SOCKS5_AUTH_MAX, failure)
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return self._need(_SOCKS5_AUTH_MAX, failure)
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return self._need(_SOCKS5_AUTH_MAX, failure)
        self._credentials = Credentials(
            username=bytes(buf[2 : 2 + ulen]), password=bytes(buf[3 + ulen : end])
        )
        del buf[:end]
        self._state = _State.REQUEST
        return Send(b"\x01\x00")

    def _request(self) -> Action:
        buf = self._buf
        if buf and buf[0] != 5:
            raise _error(5, "bad_version", ReplyCode.GENERAL_FAILURE, "request is not SOCKS5")
        if len(buf) < 4:
            return self._need(_SOCKS5_REQUEST_MAX, _SOCKS5_FAIL)
        cmd, atyp = buf[1], buf[3]
        if atyp == AddressType.IPV4:
            end = 4 + 4 + 2
        elif atyp == AddressType.IPV6:
            end = 4 + 16 + 2
        elif atyp == AddressType.DOMAIN:
            end = 5 + buf[4] + 2 if len(buf) > 4 else 5
        elif cmd not in _SUPPORTED:
            raise _error(5, "unsupported_command", ReplyCode.COMMAND_NOT_SUPPORTED, f"{cmd}")
        else:
            raise _error(
                5, "unsupported_address_type", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, f"{atyp}"
            )
        if len(buf) < end:
            return self._need(_SOCKS5_REQUEST_MAX, _SOCKS5_FAIL)
        # The whole request is in: refuse commands only now, so no unread bytes remain.
        if cmd not in _SUPPORTED:
            raise _error(5, "unsupported_command", ReplyCode.COMMAND_NOT_SUPPORTED, f"{cmd}")
        host: IPAddress | str
        if atyp == AddressType.IPV4:
            host = ipaddress.IPv4Address(bytes(buf[4:8]))
        elif atyp == AddressType.IPV6:
            host = ipaddress.IPv6Address(bytes(buf[4:20]))
        else:
            host = _host_from_name(bytes(buf[5 : end - 2]), 5)
        (port,) = struct.unpack_from("!H", buf, end - 2)
        del buf[:end]
        return self._finish(5, Command(cmd), host, port)

    def _socks4(self) -> Action:
        buf = self._buf
        if len(buf) < 8:
            return self._need(_SOCKS4_REQUEST_MAX, _SOCKS4_FAIL)
        nul = buf.find(0, 8, 8 + MAX_SOCKS4_USERID + 1)
        if nul < 0:
            if len(buf) > 8 + MAX_SOCKS4_USERID:
                raise _error(4, "userid_too_long", ReplyCode.GENERAL_FAILURE)
            return self._need(_SOCKS4_REQUEST_MAX, _SOCKS4_FAIL)
        userid = bytes(buf[8:nul])
        end = nul + 1
        ip = ipaddress.IPv4Address(bytes(buf[4:8]))
        host: IPAddress | str = ip
        if buf[4:7] == b"\x00\x00\x00" and buf[7] != 0:  # SOCKS4a: the name follows
            name_end = buf.find(0, end, end + MAX_HOSTNAME + 1)
            if name_end < 0:
                if len(buf) > end + MAX_HOSTNAME:
                    raise _error(4, "hostname_too_long", ReplyCode.GENERAL_FAILURE)
                return self._need(_SOCKS4_REQUEST_MAX, _SOCKS4_FAIL)
            host = _host_from_name(bytes(buf[end:name_end]), 4)
            end = name_end + 1
        cmd = buf[1]
        (port,) = struct.unpack_from("!H", buf, 2)
        del buf[:end]
        if cmd not in (Command.CONNECT, Command.RESOLVE):
            raise _error(4, "unsupported_command", ReplyCode.COMMAND_NOT_SUPPORTED, f"{cmd}")
        self._credentials = Credentials(username=userid) if userid else None
        return self._finish(4, Command(cmd), host, port)

    def _finish(self, version: int, cmd: Command, host: IPAddress | str, port: int) -> Finished:
        if cmd == Command.CONNECT and port == 0:
            raise _error(version, "port_zero", ReplyCode.GENERAL_FAILURE)
        if cmd == Command.RESOLVE_PTR and isinstance(host, str):
            raise _error(version, "ptr_needs_address", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        if cmd != Command.CONNECT:
            port = 0
        flags = self.config.isolation
        key = IsolationKey(
            listener=self.config.listener,
            credentials=self._credentials if IsolationFlags.SOCKS_AUTH in flags else None,
            client_addr=self.client_addr if IsolationFlags.CLIENT_ADDR in flags else None,
            protocol=version if IsolationFlags.CLIENT_PROTOCOL in flags else None,
            dest_port=port if IsolationFlags.DEST_PORT in flags else None,
            dest_addr=str(host) if IsolationFlags.DEST_ADDR in flags else None,
        )
        request = SocksRequest(
            version=version,
            command=cmd,
            host=host,
            port=port,
            credentials=self._credentials,
            isolation=key,
        )
        self._finished = Finished(request, bytes(self._buf))
        self._buf.clear()
        self._state = _State.DONE
        return self._finished
