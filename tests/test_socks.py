"""SOCKS: the sans-I/O handshake (qnet.client.socks) and the Trio proxy (qnet.client.proxy).

The handshake is fed each message whole, byte by byte and with trailing junk
(which must come back as read-ahead); hypothesis checks that no input raises
anything but ``SocksError`` or makes it wait past a bound. The proxy is tested
on real sockets with curl, python-socks and raw clients, over a direct-TCP
connector to a local Trio web server.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import shutil
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.client.proxy import (
    ConnectError,
    DirectConnector,
    ProxyConfig,
    serve_socks,
)
from qnet.client.socks import (
    HTTP_ERROR_PAGE,
    Command,
    Credentials,
    Finished,
    HandshakeUsageError,
    HttpOnSocksPort,
    IPAddress,
    IsolationFlags,
    Recv,
    ReplyCode,
    Send,
    SocksConfig,
    SocksError,
    SocksHandshake,
    SocksRequest,
    reply_code_for_end,
    socks4_reply,
    socks5_reply,
)
from qnet.routing.streams import EndReason

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

# --- driving the handshake ---------------------------------------------------------------------


def drive(
    chunks: Sequence[bytes], config: SocksConfig | None = None
) -> tuple[list[bytes], Finished]:
    """Feed ``chunks`` one per Recv (then EOF); return what was sent and the Finished.

    Raises the handshake's ``SocksError``. Fails if the handshake asks for more
    after EOF, or takes more steps than bytes could justify.
    """
    hs = SocksHandshake(config, client_addr="127.0.0.1")
    sent: list[bytes] = []
    pending = list(chunks)
    for _ in range(4 * (sum(len(c) for c in chunks) + 4)):
        action = hs.step()
        if isinstance(action, Finished):
            return sent, action
        if isinstance(action, Send):
            sent.append(action.data)
        else:
            assert isinstance(action, Recv)
            assert action.max_bytes > 0
            hs.receive_data(pending.pop(0) if pending else b"")
    raise AssertionError("the handshake did not settle")


def ways(message: bytes) -> list[tuple[list[bytes], bytes]]:
    """(chunks, expected read-ahead): whole, byte by byte, and with trailing junk."""
    junk = b"GET / HTTP/1.1\r\n\r\n\x00\xff"
    return [
        ([message], b""),
        ([bytes([b]) for b in message], b""),
        ([message + junk], junk),
    ]


GREET_NOAUTH = b"\x05\x01\x00"
GREET_USERPASS = b"\x05\x02\x00\x02"


def req5(cmd: int, atyp: int, addr: bytes, port: int) -> bytes:
    return bytes([5, cmd, 0, atyp]) + addr + struct.pack("!H", port)


def name5(name: bytes) -> bytes:
    return bytes([len(name)]) + name


def userpass(user: bytes, password: bytes) -> bytes:
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


# --- SOCKS5 ------------------------------------------------------------------------------------

CONNECT_CASES = [
    (req5(1, 1, bytes([127, 0, 0, 1]), 80), V4("127.0.0.1"), 80),
    (req5(1, 4, V6("2001:db8::1").packed, 443), V6("2001:db8::1"), 443),
    (req5(1, 3, name5(b"example.com"), 8080), "example.com", 8080),
    (req5(1, 3, name5("bücher.example".encode()), 80), "bücher.example", 80),
    (req5(1, 3, name5(b"10.1.2.3"), 22), V4("10.1.2.3"), 22),
    (req5(1, 3, name5(b"[::1]"), 22), V6("::1"), 22),
    (req5(1, 3, name5(b"::1"), 22), V6("::1"), 22),
]


@pytest.mark.parametrize("request_bytes,host,port", CONNECT_CASES)
def test_socks5_connect_every_address_type(request_bytes: bytes, host: Any, port: int) -> None:
    for chunks, read_ahead in ways(GREET_NOAUTH + request_bytes):
        sent, done = drive(chunks)
        assert sent == [b"\x05\x00"]
        assert done.read_ahead == read_ahead
        r = done.request
        assert (r.version, r.command, r.host, r.port) == (5, Command.CONNECT, host, port)
        assert r.credentials is None


def test_socks5_hostname_is_not_resolved() -> None:
    _, done = drive([GREET_NOAUTH + req5(1, 3, name5(b"no-such-host.invalid"), 80)])
    assert done.request.host == "no-such-host.invalid"
    assert done.request.target == "no-such-host.invalid:80"
    _, done = drive([GREET_NOAUTH + req5(1, 4, V6("::1").packed, 80)])
    assert done.request.target == "[::1]:80"


def test_socks5_username_password() -> None:
    message = GREET_USERPASS + userpass(b"alice", b"s3cret") + req5(1, 3, name5(b"a.example"), 80)
    for chunks, read_ahead in ways(message):
        sent, done = drive(chunks)
        assert sent == [b"\x05\x02", b"\x01\x00"]
        assert done.read_ahead == read_ahead
        assert done.request.credentials == Credentials(username=b"alice", password=b"s3cret")
        assert done.request.isolation.credentials == done.request.credentials


def test_socks5_empty_username_and_password_accepted() -> None:
    _, done = drive([b"\x05\x01\x02" + userpass(b"", b"") + req5(1, 1, bytes(4), 1)])
    assert done.request.credentials == Credentials(username=b"", password=b"")


def test_socks5_method_negotiation_honours_config() -> None:
    # user/pass disabled: no-auth is chosen even when both are offered
    cfg = SocksConfig(allow_username_password=False)
    sent, _ = drive([GREET_USERPASS + req5(1, 1, bytes(4), 1)], cfg)
    assert sent == [b"\x05\x00"]
    # only user/pass offered, but disabled
    with pytest.raises(SocksError) as info:
        drive([b"\x05\x01\x02"], cfg)
    assert info.value.reply == b"\x05\xff"
    assert info.value.reason == "no_acceptable_method"
    # no-auth disabled: a client that offers only no-auth is refused
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH], SocksConfig(allow_no_auth=False))
    assert info.value.reply == b"\x05\xff"
    # nothing offered at all
    with pytest.raises(SocksError) as info:
        drive([b"\x05\x00"])
    assert info.value.reply == b"\x05\xff"


def test_socks5_bad_auth_version() -> None:
    with pytest.raises(SocksError) as info:
        drive([GREET_USERPASS + b"\x05\x01a\x01b"])
    assert info.value.reply == b"\x01\x01"
    assert info.value.reason == "bad_auth_version"


def test_socks5_resolve_and_resolve_ptr() -> None:
    for chunks, read_ahead in ways(GREET_NOAUTH + req5(0xF0, 3, name5(b"example.org"), 0)):
        _, done = drive(chunks)
        assert done.request.command == Command.RESOLVE
        assert done.request.host == "example.org"
        assert done.read_ahead == read_ahead
    _, done = drive([GREET_NOAUTH + req5(0xF1, 1, bytes([192, 0, 2, 7]), 0)])
    assert (done.request.command, done.request.host) == (Command.RESOLVE_PTR, V4("192.0.2.7"))
    _, done = drive([GREET_NOAUTH + req5(0xF1, 4, V6("2001:db8::7").packed, 0)])
    assert done.request.host == V6("2001:db8::7")
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + req5(0xF1, 3, name5(b"example.org"), 0)])
    assert info.value.code == ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
    assert info.value.reply == socks5_reply(ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)


@pytest.mark.parametrize("cmd", [2, 3, 0, 4, 0x7F, 0xF2, 0xFF])
def test_socks5_unsupported_commands(cmd: int) -> None:
    for chunks, _ in ways(GREET_NOAUTH + req5(cmd, 1, bytes(4), 0)):
        with pytest.raises(SocksError) as info:
            drive(chunks)
        assert info.value.code == ReplyCode.COMMAND_NOT_SUPPORTED
        assert info.value.reply == b"\x05\x07\x00\x01" + bytes(6)


@pytest.mark.parametrize("atyp", [0, 2, 5, 0xFF])
def test_socks5_unknown_address_type(atyp: int) -> None:
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + bytes([5, 1, 0, atyp, 1, 2, 3, 4, 0, 80])])
    assert info.value.code == ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
    assert info.value.reply[:2] == b"\x05\x08"
    # UDP ASSOCIATE with a strange address type is still "command not supported"
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + bytes([5, 3, 0, atyp, 1, 2, 3, 4, 0, 80])])
    assert info.value.code == ReplyCode.COMMAND_NOT_SUPPORTED


@pytest.mark.parametrize(
    "name,reason",
    [
        (b"", "empty_hostname"),
        (b"\xff\xfe", "bad_hostname"),
        (b"a b", "bad_hostname"),
        (b"evil.example:25", "bad_hostname"),
        (b"x\x00y", "bad_hostname"),
        (b"line\nbreak", "bad_hostname"),
    ],
)
def test_socks5_bad_hostnames(name: bytes, reason: str) -> None:
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + req5(1, 3, name5(name), 80)])
    assert info.value.reason == reason
    assert info.value.reply == socks5_reply(ReplyCode.GENERAL_FAILURE)


def test_socks5_port_zero_and_bad_request_version() -> None:
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + req5(1, 1, bytes(4), 0)])
    assert info.value.reason == "port_zero"
    with pytest.raises(SocksError) as info:
        drive([GREET_NOAUTH + b"\x04\x01\x00\x01" + bytes(6)])
    assert info.value.reason == "bad_version"
    assert info.value.reply == socks5_reply(ReplyCode.GENERAL_FAILURE)


@pytest.mark.parametrize(
    "message",
    [b"", b"\x05", GREET_NOAUTH, GREET_NOAUTH + b"\x05\x01\x00\x03\x05abc", b"\x04\x01\x00"],
)
def test_eof_mid_handshake(message: bytes) -> None:
    with pytest.raises(SocksError) as info:
        drive([message] if message else [])
    assert info.value.reason == "eof"
    assert info.value.reply == b""


# --- SOCKS4 / SOCKS4a --------------------------------------------------------------------------


def test_socks4_connect() -> None:
    message = b"\x04\x01\x00\x50\x7f\x00\x00\x01bob\x00"
    for chunks, read_ahead in ways(message):
        sent, done = drive(chunks)
        assert sent == []
        assert done.read_ahead == read_ahead
        r = done.request
        assert (r.version, r.command, r.host, r.port) == (4, Command.CONNECT, V4("127.0.0.1"), 80)
        assert r.credentials == Credentials(username=b"bob")
        assert r.isolation.credentials == Credentials(username=b"bob")


def test_socks4a_hostname_and_resolve() -> None:
    message = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.net\x00"
    for chunks, read_ahead in ways(message):
        _, done = drive(chunks)
        assert done.read_ahead == read_ahead
        assert (done.request.host, done.request.port) == ("example.net", 443)
        assert done.request.credentials is None
    _, done = drive([b"\x04\xf0\x00\x00\x00\x00\x00\x01u\x00example.net\x00"])
    assert (done.request.command, done.request.host) == (Command.RESOLVE, "example.net")


@pytest.mark.parametrize("cmd", [2, 3, 0xF1, 0x99])
def test_socks4_unsupported_commands(cmd: int) -> None:
    with pytest.raises(SocksError) as info:
        drive([bytes([4, cmd]) + b"\x00\x50\x7f\x00\x00\x01\x00"])
    assert info.value.reply == b"\x00\x5b" + bytes(6)
    assert info.value.code == ReplyCode.COMMAND_NOT_SUPPORTED


def test_socks4_limits_and_switch() -> None:
    with pytest.raises(SocksError) as info:
        drive([b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300])
    assert info.value.reason == "userid_too_long"
    with pytest.raises(SocksError) as info:
        drive([b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 300])
    assert info.value.reason == "hostname_too_long"
    with pytest.raises(SocksError) as info:
        drive([b"\x04\x01\x00\x50\x00\x00\x00\x01\x00bad host\x00"])
    assert info.value.reply == socks4_reply(False)
    with pytest.raises(SocksError) as info:
        drive([b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00"], SocksConfig(allow_socks4=False))
    assert info.value.reason == "socks4_disabled"
    assert info.value.reply == b"\x00\x5b" + bytes(6)


# --- HTTP on the SOCKS port and other protocols ------------------------------------------------


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"CONNECT a:443 HTTP/1.1\r\n", b"POST /x"]
)
def test_http_on_socks_port(line: bytes) -> None:
    for chunks in ([line], [bytes([b]) for b in line]):
        with pytest.raises(HttpOnSocksPort) as info:
            drive(chunks)
        assert info.value.reply == HTTP_ERROR_PAGE
    assert HTTP_ERROR_PAGE.startswith(b"HTTP/1.0 501 ")
    head, body = HTTP_ERROR_PAGE.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"SOCKS" in body


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00", b"GEX / HTTP/1.1", b"\x00", b"get /"])
def test_other_protocols_closed_without_reply(data: bytes) -> None:
    with pytest.raises(SocksError) as info:
        drive([data])
    assert info.value.reason == "bad_version"
    assert info.value.reply == b""


# --- replies, END reasons, isolation, API misuse -----------------------------------------------


def test_socks5_reply_builder_for_every_code() -> None:
    for code in ReplyCode:
        assert socks5_reply(code) == bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])
    assert socks5_reply(ReplyCode.SUCCEEDED, V4("10.0.0.1"), 80) == b"\x05\x00\x00\x01\n\0\0\1\0P"
    assert socks5_reply(0, V6("::1"), 1) == b"\x05\x00\x00\x04" + V6("::1").packed + b"\x00\x01"
    assert socks5_reply(0, "host.example") == b"\x05\x00\x00\x03\x0chost.example\x00\x00"
    with pytest.raises(ValueError):
        socks5_reply(0, "x" * 256)
    with pytest.raises(ValueError):
        socks5_reply(0, None, 70000)
    with pytest.raises(ValueError):
        socks5_reply(0x09)


def test_socks4_reply_builder_and_request_reply() -> None:
    assert socks4_reply(True) == b"\x00\x5a" + bytes(6)
    assert socks4_reply(False) == b"\x00\x5b" + bytes(6)
    assert socks4_reply(True, V4("1.2.3.4"), 0x102) == b"\x00\x5a\x01\x02\x01\x02\x03\x04"
    r4 = SocksRequest(version=4, command=Command.RESOLVE, host="a.example", port=0)
    assert r4.reply(ReplyCode.SUCCEEDED, V4("1.2.3.4")) == b"\x00\x5a\x00\x00\x01\x02\x03\x04"
    for code in ReplyCode:
        if code != ReplyCode.SUCCEEDED:
            assert r4.reply(code) == socks4_reply(False)
    with pytest.raises(ValueError):
        r4.reply(ReplyCode.SUCCEEDED, V6("::1"))
    r5 = SocksRequest(version=5, command=Command.CONNECT, host="a.example", port=80)
    assert r5.reply(ReplyCode.TTL_EXPIRED) == socks5_reply(ReplyCode.TTL_EXPIRED)


def test_end_reason_mapping() -> None:
    expected = {
        EndReason.EXIT_POLICY: 0x02,
        EndReason.REFUSED: 0x05,
        EndReason.UNREACHABLE: 0x04,
        EndReason.TIMEOUT: 0x06,
        EndReason.RESOLVE_FAILED: 0x04,
        EndReason.DESTROYED: 0x01,
        EndReason.MISC: 0x01,
        EndReason.DONE: 0x01,
    }
    assert {r: int(reply_code_for_end(r)) for r in EndReason} == expected
    assert reply_code_for_end(200) == ReplyCode.GENERAL_FAILURE
    assert ConnectError(EndReason.REFUSED).code == ReplyCode.CONNECTION_REFUSED
    err = ConnectError(EndReason.UNREACHABLE, code=ReplyCode.NETWORK_UNREACHABLE)
    assert err.code == 0x03


def _key(config: SocksConfig, message: bytes, client: str = "127.0.0.1") -> object:
    hs = SocksHandshake(config, client_addr=client)
    hs.receive_data(message)
    while not isinstance(action := hs.step(), Finished):
        assert not isinstance(action, Recv)
    return action.request.isolation


def test_isolation_keys() -> None:
    alice = GREET_USERPASS + userpass(b"alice", b"x") + req5(1, 3, name5(b"a.example"), 80)
    alice443 = GREET_USERPASS + userpass(b"alice", b"x") + req5(1, 3, name5(b"a.example"), 443)
    bob = GREET_USERPASS + userpass(b"bob", b"x") + req5(1, 3, name5(b"a.example"), 80)
    anon = GREET_NOAUTH + req5(1, 3, name5(b"a.example"), 80)
    default = SocksConfig(listener="127.0.0.1:1080")
    assert default.isolation == IsolationFlags.SOCKS_AUTH | IsolationFlags.CLIENT_ADDR
    assert _key(default, alice) == _key(default, alice443)
    assert _key(default, alice) != _key(default, bob)
    assert _key(default, alice) != _key(default, anon)
    assert _key(default, anon) != _key(default, anon, client="127.0.0.2")
    assert hash(_key(default, alice)) == hash(_key(default, alice443))
    # another listener never shares
    assert _key(default, anon) != _key(SocksConfig(listener="127.0.0.1:1081"), anon)
    # IsolateDestPort on
    ports = SocksConfig(isolation=IsolationFlags.DEFAULT | IsolationFlags.DEST_PORT)
    assert _key(ports, alice) != _key(ports, alice443)
    # IsolateSOCKSAuth off
    noauth = SocksConfig(isolation=IsolationFlags.NONE)
    assert _key(noauth, alice) == _key(noauth, bob) == _key(noauth, anon)
    proto = SocksConfig(isolation=IsolationFlags.CLIENT_PROTOCOL)
    socks4 = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a.example\x00"
    assert _key(proto, anon) != _key(proto, socks4)
    dest = SocksConfig(isolation=IsolationFlags.DEST_ADDR)
    assert _key(dest, anon) != _key(dest, GREET_NOAUTH + req5(1, 3, name5(b"b.example"), 80))


def test_misuse_and_sticky_errors() -> None:
    hs = SocksHandshake()
    hs.receive_data(GREET_NOAUTH + req5(1, 1, bytes(4), 80))
    assert hs.step() == Send(b"\x05\x00")
    assert isinstance(hs.step(), Finished)
    assert hs.finished
    with pytest.raises(HandshakeUsageError):
        hs.step()
    with pytest.raises(HandshakeUsageError):
        hs.receive_data(b"x")
    hs = SocksHandshake()
    hs.receive_data(b"")
    with pytest.raises(HandshakeUsageError):
        hs.receive_data(b"x")
    hs = SocksHandshake()
    hs.receive_data(b"\x05\x01\x00\x06")
    hs.step()
    with pytest.raises(SocksError) as first:
        hs.step()
    with pytest.raises(SocksError) as again:
        hs.step()
    assert first.value is again.value
    with pytest.raises(TypeError):
        SocksConfig(allow_no_auth=1)  # type: ignore[arg-type]


# --- fuzz --------------------------------------------------------------------------------------


def _fuzz(chunks: list[bytes]) -> None:
    """Feed ``chunks`` then EOF: only ``SocksError`` may escape, the handshake must
    settle, and what it finished with must add up to what it was fed."""
    hs = SocksHandshake()
    fed = b""
    pending = list(chunks)
    try:
        for _ in range(4 * (sum(len(c) for c in chunks) + 4)):
            action = hs.step()
            if isinstance(action, Finished):
                break
            if isinstance(action, Recv):
                assert action.max_bytes > 0
                chunk = pending.pop(0) if pending else b""
                fed += chunk
                hs.receive_data(chunk)
        else:
            raise AssertionError("the handshake did not settle")
    except SocksError as exc:
        assert isinstance(exc.reply, bytes)
        assert len(exc.reply) <= len(HTTP_ERROR_PAGE)
        return
    assert fed.endswith(action.read_ahead)
    assert len(fed) - len(action.read_ahead) <= 2 + 255 + 3 + 255 + 255 + 4 + 1 + 255 + 2 + 520


@settings(max_examples=600, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    _fuzz(chunks)


_PREFIXES = [
    b"\x05",
    GREET_NOAUTH,
    GREET_NOAUTH + b"\x05",
    GREET_USERPASS,
    GREET_USERPASS + b"\x01",
    b"\x04\x01\x00\x50\x00\x00\x00\x01",
    b"\x04\xf0",
    b"G",
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=600), st.integers(1, 64))
def test_fuzz_structured(prefix: bytes, tail: bytes, size: int) -> None:
    data = prefix + tail
    _fuzz([data[i : i + size] for i in range(0, len(data), size)])


@given(st.binary(min_size=1, max_size=2000))
def test_fuzz_bounded_reads(data: bytes) -> None:
    """Fed one byte at a time, the handshake ends (Finished or an error) within
    a fixed number of bytes, whatever they are."""
    hs = SocksHandshake()
    used = 0
    try:
        while not isinstance(action := hs.step(), Finished):
            if isinstance(action, Recv):
                hs.receive_data(data[used : used + 1])
                used += 1
    except SocksError:
        pass
    assert used <= 2 + 257 + 513 + 262 + 1 or used == len(data) + 1


# --- the proxy on real sockets -----------------------------------------------------------------

BODY = hashlib.sha256(b"qnet").digest() * 4096  # 128 KiB


def trio_test(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn)

    return run


async def _web_handler(stream: trio.SocketStream) -> None:
    """A tiny HTTP/1.0-style server: one GET, the BODY, close."""
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
        await stream.send_all(head + BODY)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def _echo_handler(stream: trio.SocketStream) -> None:
    """Echo until EOF, then say "bye" and close: shows that the client's half-close
    reached the far end and the return direction stayed open."""
    try:
        while data := await stream.receive_some(4096):
            await stream.send_all(data)
        await stream.send_all(b"bye")
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def _start_server(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


class Recording:
    """A connector that records requests and hands them to another connector."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[SocksRequest] = []

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        self.requests.append(request)
        return await self.inner.connect(request)  # type: ignore[no-any-return]

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        self.requests.append(request)
        return await self.inner.resolve(request)  # type: ignore[no-any-return]

    async def resolve_ptr(self, request: SocksRequest) -> str:
        self.requests.append(request)
        return await self.inner.resolve_ptr(request)  # type: ignore[no-any-return]


class Scripted:
    """A connector whose answers are set by the test: an exception, or a stall."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.stall = False
        self.names: dict[str, list[IPAddress]] = {"a.example": [V6("2001:db8::1"), V4("1.2.3.4")]}

    async def _maybe_fail(self) -> None:
        if self.stall:
            await trio.sleep_forever()
        if self.error is not None:
            raise self.error

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        await self._maybe_fail()
        return await DirectConnector().connect(request)

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        await self._maybe_fail()
        return self.names.get(str(request.host), [])

    async def resolve_ptr(self, request: SocksRequest) -> str:
        await self._maybe_fail()
        return "ptr.example"


async def _start_proxy(
    nursery: trio.Nursery, connector: Any, config: ProxyConfig | None = None
) -> int:
    listeners = await nursery.start(
        functools.partial(serve_socks, connector, "127.0.0.1", 0, config=config)
    )
    return int(listeners[0].socket.getsockname()[1])


async def _socks5_raw(port: int, message: bytes, reply_len: int) -> tuple[bytes, trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(message)
    got = b""
    with trio.fail_after(5):
        while len(got) < reply_len:
            chunk = await stream.receive_some(reply_len - len(got))
            if not chunk:
                break
            got += chunk
    return got, stream


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def _curl(*args: str) -> bytes:
    result = await trio.run_process(
        ["curl", "-sS", "--max-time", "20", *args], capture_stdout=True, capture_stderr=True
    )
    return result.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
@trio_test
async def test_curl_socks5_hostname_through_proxy() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        rec = Recording(DirectConnector())
        proxy = await _start_proxy(nursery, rec)
        out = await _curl("--socks5-hostname", f"127.0.0.1:{proxy}", f"http://localhost:{web}/")
        assert out == BODY
        assert rec.requests[-1].host == "localhost"  # passed on as a name, not resolved
        out = await _curl("--socks5-hostname", f"127.0.0.1:{proxy}", f"http://127.0.0.1:{web}/")
        assert out == BODY
        out = await _curl("--socks5", f"127.0.0.1:{proxy}", f"http://127.0.0.1:{web}/")
        assert out == BODY
        assert rec.requests[-1].host == V4("127.0.0.1")
        nursery.cancel_scope.cancel()


@needs_curl
@trio_test
async def test_curl_socks4a_and_socks4() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        rec = Recording(DirectConnector())
        proxy = await _start_proxy(nursery, rec)
        out = await _curl("--socks4a", f"127.0.0.1:{proxy}", f"http://localhost:{web}/")
        assert out == BODY
        assert (rec.requests[-1].version, rec.requests[-1].host) == (4, "localhost")
        out = await _curl(
            "--socks4", f"127.0.0.1:{proxy}", "--proxy-user", "carol", f"http://127.0.0.1:{web}/"
        )
        assert out == BODY
        assert rec.requests[-1].credentials == Credentials(username=b"carol")
        nursery.cancel_scope.cancel()


@needs_curl
@trio_test
async def test_curl_username_password_sets_isolation() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        rec = Recording(DirectConnector())
        proxy = await _start_proxy(nursery, rec)
        url = f"http://localhost:{web}/"
        for user in ("alice:one", "bob:two"):
            out = await _curl("--socks5-hostname", f"127.0.0.1:{proxy}", "--proxy-user", user, url)
            assert out == BODY
        alice, bob = rec.requests
        assert alice.credentials == Credentials(username=b"alice", password=b"one")
        assert bob.credentials == Credentials(username=b"bob", password=b"two")
        assert alice.isolation != bob.isolation
        assert alice.isolation.listener == f"127.0.0.1:{proxy}"
        nursery.cancel_scope.cancel()


@needs_curl
@trio_test
async def test_curl_plain_http_gets_the_error_page() -> None:
    async with trio.open_nursery() as nursery:
        proxy = await _start_proxy(nursery, DirectConnector())
        out = await _curl("-i", f"http://127.0.0.1:{proxy}/")
        assert out == HTTP_ERROR_PAGE
        # curl using the SOCKS port as an HTTP proxy sees the same
        out = await _curl("-i", "--proxy", f"http://127.0.0.1:{proxy}", "http://a.example/")
        assert out == HTTP_ERROR_PAGE
        nursery.cancel_scope.cancel()


@trio_test
async def test_python_socks_client_library() -> None:
    pytest.importorskip("python_socks")
    from python_socks import ProxyError
    from python_socks.async_.trio import Proxy

    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        rec = Recording(DirectConnector())
        proxy = await _start_proxy(nursery, rec)
        for url in (f"socks5://127.0.0.1:{proxy}", f"socks5://dave:pw@127.0.0.1:{proxy}"):
            client = Proxy.from_url(url, rdns=True)
            sock = await client.connect("localhost", web, timeout=10)
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = await _read_all(stream)
            await stream.aclose()
            assert data.endswith(b"\r\n\r\n" + BODY)
            assert rec.requests[-1].host == "localhost"
        assert rec.requests[-1].credentials == Credentials(username=b"dave", password=b"pw")
        client = Proxy.from_url(f"socks4://127.0.0.1:{proxy}", rdns=True)
        sock = await client.connect("localhost", web, timeout=10)
        sock.close()
        # a refused connection comes back to the library as reply 0x05
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(ProxyError) as info:
            await Proxy.from_url(f"socks5://127.0.0.1:{proxy}").connect("127.0.0.1", dead_port)
        assert getattr(info.value, "error_code", None) == 0x05
        nursery.cancel_scope.cancel()


@trio_test
async def test_udp_associate_and_bind_refused_and_proxy_keeps_serving() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        proxy = await _start_proxy(nursery, DirectConnector())
        for cmd in (3, 2):
            got, stream = await _socks5_raw(proxy, GREET_NOAUTH + req5(cmd, 1, bytes(4), 0), 2 + 10)
            assert got == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)
            assert await _read_all(stream) == b""  # and then the connection is closed
            await stream.aclose()
        got, stream = await _socks5_raw(proxy, GREET_NOAUTH + b"\x05\x01\x00\x09", 12)
        assert got == b"\x05\x00\x05\x08\x00\x01" + bytes(6)
        await stream.aclose()
        got, stream = await _socks5_raw(proxy, b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00", 8)
        assert got == b"\x00\x5b" + bytes(6)
        await stream.aclose()
        # still serving: a CONNECT with optimistic data (the read-ahead) right behind it
        req = req5(1, 1, bytes([127, 0, 0, 1]), web) + b"GET / HTTP/1.0\r\n\r\n"
        got, stream = await _socks5_raw(proxy, GREET_NOAUTH + req, 12)
        assert got == b"\x05\x00\x05\x00\x00\x01" + bytes(6)
        assert (await _read_all(stream)).endswith(BODY)
        await stream.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_stalled_client_times_out_while_another_is_served() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        config = ProxyConfig(handshake_timeout=2.0)
        proxy = await _start_proxy(nursery, DirectConnector(), config)
        stalled = await trio.open_tcp_stream("127.0.0.1", proxy)
        await stalled.send_all(b"\x05\x01")  # half a greeting, then nothing
        start = trio.current_time()
        req = GREET_NOAUTH + req5(1, 3, name5(b"localhost"), web) + b"GET / HTTP/1.0\r\n\r\n"
        got, other = await _socks5_raw(proxy, req, 12)
        assert got[:4] == b"\x05\x00\x05\x00"
        assert (await _read_all(other)).endswith(BODY)
        served_after = trio.current_time() - start
        with trio.fail_after(10):
            assert await stalled.receive_some(100) == b""  # the proxy gave up on it
        dropped_after = trio.current_time() - start
        assert served_after < 2.0 <= dropped_after + 0.05
        nursery.cancel_scope.cancel()


@trio_test
async def test_half_close_is_passed_on_both_ways() -> None:
    async with trio.open_nursery() as nursery:
        echo = await _start_server(nursery, _echo_handler)
        proxy = await _start_proxy(nursery, DirectConnector())
        got, stream = await _socks5_raw(
            proxy, GREET_NOAUTH + req5(1, 1, bytes([127, 0, 0, 1]), echo) + b"hello ", 12
        )
        assert got[:4] == b"\x05\x00\x05\x00"
        await stream.send_all(b"world")
        await stream.send_eof()
        assert await _read_all(stream) == b"hello worldbye"
        await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "error,code",
    [
        (ConnectError(EndReason.EXIT_POLICY), 0x02),
        (ConnectError(EndReason.UNREACHABLE, code=ReplyCode.NETWORK_UNREACHABLE), 0x03),
        (ConnectError(EndReason.UNREACHABLE), 0x04),
        (ConnectError(EndReason.RESOLVE_FAILED), 0x04),
        (ConnectError(EndReason.REFUSED), 0x05),
        (ConnectError(EndReason.TIMEOUT), 0x06),
        (ConnectError(EndReason.DESTROYED), 0x01),
        (ConnectError(EndReason.MISC), 0x01),
        (RuntimeError("a connector bug"), 0x01),
        (None, 0x06),  # the connector stalls past connect_timeout
    ],
)
def test_connect_failures_get_their_reply_code(error: BaseException | None, code: int) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            web = await _start_server(nursery, _web_handler)
            scripted = Scripted()
            scripted.error, scripted.stall = error, error is None
            config = ProxyConfig(connect_timeout=0.3)
            proxy = await _start_proxy(nursery, scripted, config)
            req = GREET_NOAUTH + req5(1, 3, name5(b"localhost"), web)
            got, stream = await _socks5_raw(proxy, req, 12)
            assert got == b"\x05\x00" + socks5_reply(ReplyCode(code))
            assert await _read_all(stream) == b""
            await stream.aclose()
            got, stream = await _socks5_raw(
                proxy, b"\x04\x01" + struct.pack("!H", web) + b"\x7f\0\0\1\0", 8
            )
            assert got == socks4_reply(False)
            await stream.aclose()
            # the next request succeeds once the connector recovers
            scripted.error, scripted.stall = None, False
            got, stream = await _socks5_raw(proxy, req + b"GET / HTTP/1.0\r\n\r\n", 12)
            assert got[:4] == b"\x05\x00\x05\x00"
            assert (await _read_all(stream)).endswith(BODY)
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


@trio_test
async def test_direct_connector_refused_port() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    async with trio.open_nursery() as nursery:
        proxy = await _start_proxy(nursery, DirectConnector())
        got, stream = await _socks5_raw(
            proxy, GREET_NOAUTH + req5(1, 1, bytes([127, 0, 0, 1]), dead_port), 12
        )
        assert got == b"\x05\x00" + socks5_reply(ReplyCode.CONNECTION_REFUSED)
        await stream.aclose()
        got, stream = await _socks5_raw(
            proxy, GREET_NOAUTH + req5(1, 3, name5(b"no-such-host.invalid"), 80), 12
        )
        assert got == b"\x05\x00" + socks5_reply(ReplyCode.HOST_UNREACHABLE)
        await stream.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_resolve_and_resolve_ptr_through_the_proxy() -> None:
    async with trio.open_nursery() as nursery:
        scripted = Scripted()
        proxy = await _start_proxy(nursery, scripted)
        cases = [
            (req5(0xF0, 3, name5(b"a.example"), 0), socks5_reply(0, V6("2001:db8::1"))),
            (req5(0xF0, 3, name5(b"none.example"), 0), socks5_reply(ReplyCode.HOST_UNREACHABLE)),
            (req5(0xF0, 1, bytes([9, 9, 9, 9]), 0), socks5_reply(0, V4("9.9.9.9"))),
            (req5(0xF1, 1, bytes([1, 2, 3, 4]), 0), socks5_reply(0, "ptr.example")),
        ]
        for message, reply in cases:
            got, stream = await _socks5_raw(proxy, GREET_NOAUTH + message, 2 + len(reply))
            assert got == b"\x05\x00" + reply
            assert await _read_all(stream) == b""
            await stream.aclose()
        # SOCKS4a RESOLVE answers with the first IPv4 address
        socks4 = b"\x04\xf0\x00\x00\x00\x00\x00\x01\x00a.example\x00"
        got, stream = await _socks5_raw(proxy, socks4, 8)
        assert got == socks4_reply(True, V4("1.2.3.4"))
        await stream.aclose()
        # a failing resolver gives its mapped code
        scripted.error = ConnectError(EndReason.EXIT_POLICY)
        got, stream = await _socks5_raw(proxy, GREET_NOAUTH + cases[0][0], 12)
        assert got == b"\x05\x00" + socks5_reply(ReplyCode.NOT_ALLOWED)
        await stream.aclose()
        # the direct connector really resolves (a test-only connector: it may look up locally)
        direct = await _start_proxy(nursery, DirectConnector())
        got, stream = await _socks5_raw(
            direct, GREET_NOAUTH + req5(0xF0, 3, name5(b"localhost"), 0), 12
        )
        assert got[:4] == b"\x05\x00\x05\x00"
        await stream.aclose()
        got, stream = await _socks5_raw(
            direct, GREET_NOAUTH + req5(0xF1, 1, bytes([127, 0, 0, 1]), 0), 5
        )
        assert got == b"\x05\x00\x05\x00\x00"
        await stream.aclose()
        nursery.cancel_scope.cancel()


@trio_test
async def test_garbage_clients_do_not_stop_the_listener() -> None:
    async with trio.open_nursery() as nursery:
        web = await _start_server(nursery, _web_handler)
        proxy = await _start_proxy(nursery, DirectConnector(), ProxyConfig(handshake_timeout=1))
        for junk in (b"\x16\x03\x01\x00\x05hello", b"\x05\xff" + bytes(255), b"\x04" * 600, b""):
            stream = await trio.open_tcp_stream("127.0.0.1", proxy)
            if junk:
                await stream.send_all(junk)
            await stream.send_eof()
            await _read_all(stream)
            await stream.aclose()
        req = GREET_NOAUTH + req5(1, 1, bytes([127, 0, 0, 1]), web) + b"GET / HTTP/1.0\r\n\r\n"
        got, stream = await _socks5_raw(proxy, req, 12)
        assert got[:4] == b"\x05\x00\x05\x00"
        assert (await _read_all(stream)).endswith(BODY)
        await stream.aclose()
        nursery.cancel_scope.cancel()
