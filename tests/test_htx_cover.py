"""The cover site and the tunnel request over HTTP/1.1 and h2 (sans-I/O and one real socket)."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import X25519Key, random_bytes
from qnet.htx import cover as C
from qnet.htx import ticket as T
from qnet.htx.errors import TicketError

NOW = 1_767_225_600.0
KEY = X25519Key(bytes(range(1, 33)))
PEER = "203.0.113.9"
GET = b"GET / HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"


def verifier() -> T.TicketVerifier:
    return T.TicketVerifier({5: KEY})


def good_ticket(now: float = NOW) -> str:
    return T.build_ticket(KEY.public_bytes, 5, now, random_bytes)


def strip_date(data: bytes) -> bytes:
    return re.sub(rb"(?im)^(date: )[^\r\n]*", rb"\1-", data)


def run_h1(server: C.Http1Server, data: bytes, v: T.TicketVerifier | None = None) -> bytes:
    """Feed ``data``; decide every tunnel request with ``v`` (refuse if none); return the output."""
    out = bytearray()
    actions = server.receive_data(data, NOW)
    while actions:
        more: list[C.Action] = []
        for a in actions:
            if isinstance(a, C.TunnelRequest):
                ok = v is not None and v.check(a.ticket, PEER, NOW).accepted
                if ok:
                    more += server.accept_tunnel(a.stream_id, NOW)
                else:
                    more += server.refuse_tunnel(a.stream_id, NOW)
        out += server.data_to_send()
        actions = more
    out += server.data_to_send()
    return bytes(out)


def upgrade_request(path: str = "/", cookie: str | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: example.org",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
    if cookie is not None:
        lines.append(f"Cookie: session={cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- the cover site ---------------------------------------------------------------------


def test_index_headers_like_nginx() -> None:
    site = C.CoverSite()
    r = site.respond("GET", "/", [], NOW)
    names = [k for k, _ in r.headers]
    assert r.status == 200 and r.body.startswith(b"<!DOCTYPE html>")
    assert names == [
        "Server",
        "Date",
        "Content-Type",
        "Content-Length",
        "Last-Modified",
        "ETag",
        "Cache-Control",
        "Accept-Ranges",
    ]
    h = dict(r.headers)
    assert h["Server"] == "nginx" and h["Content-Type"] == "text/html"
    assert h["Date"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', h["ETag"])


def test_head_304_404_405_400_301() -> None:
    site = C.CoverSite({"/index.html": b"hi", "/docs/index.html": b"d", "/a.css": b"x"})
    head = site.respond("HEAD", "/a.css", [], NOW)
    get = site.respond("GET", "/a.css", [], NOW)
    assert head.headers == get.headers and head.body == b"" and get.body == b"x"
    etag = dict(get.headers)["ETag"]
    r304 = site.respond("GET", "/a.css", [("If-None-Match", f'W/"x", {etag}')], NOW)
    assert r304.status == 304 and r304.body == b"" and dict(r304.headers)["ETag"] == etag
    lm = dict(get.headers)["Last-Modified"]
    assert site.respond("GET", "/a.css", [("If-Modified-Since", lm)], NOW).status == 304
    r404 = site.respond("GET", "/favicon.ico", [], NOW)
    assert r404.status == 404 and b"<hr><center>nginx</center>" in r404.body
    assert site.respond("PUT", "/a.css", [], NOW).status == 405
    assert site.respond("POST", "/a.css", [], NOW).status == 405
    assert site.respond("POST", "/nope", [], NOW).status == 404
    assert site.respond("GET", "/../etc/passwd", [], NOW).status == 400
    assert site.respond("GET", "/%ff", [], NOW).status == 400
    assert site.respond("GET", "/docs/./../a.css", [], NOW).status == 200
    r301 = site.respond("GET", "/docs", [], NOW)
    assert r301.status == 301 and dict(r301.headers)["Location"] == "/docs/"
    assert site.respond("GET", "/docs/", [], NOW).body == b"d"
    assert site.respond("GET", "http://example.org/a.css?x=1", [], NOW).status == 200


def test_from_directory(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(b"<p>home</p>")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG")
    site = C.CoverSite.from_directory(tmp_path, server="Apache")
    assert site.respond("GET", "/", [], NOW).body == b"<p>home</p>"
    r = site.respond("GET", "/img/a.png", [], NOW)
    assert dict(r.headers)["Content-Type"] == "image/png"
    assert b"<center>Apache</center>" in site.respond("GET", "/x", [], NOW).body


def test_default_site_says_nothing_about_the_network() -> None:
    site = C.DEFAULT_SITE
    for path in ("/", "/style.css", "/robots.txt", "/favicon.ico", "/x"):
        r = site.respond("GET", path, [], NOW)
        blob = repr(r.headers).encode() + r.body
        assert b"qnet" not in blob.lower() and b"htx" not in blob.lower()


# --- HTTP/1.1 server --------------------------------------------------------------------


def test_h1_get_whole_and_byte_by_byte() -> None:
    whole = run_h1(C.Http1Server(), GET)
    server = C.Http1Server()
    out = bytearray()
    for i in range(len(GET)):
        server.receive_data(GET[i : i + 1], NOW)
        out += server.data_to_send()
    assert bytes(out) == whole
    assert whole.startswith(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in whole


def test_h1_pipelined_then_junk() -> None:
    server = C.Http1Server()
    out = run_h1(
        server, GET + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x16\x03\x01junk\r\n\r\n"
    )
    assert out.count(b"HTTP/1.1 ") == 3
    assert b"HTTP/1.1 404 Not Found" in out
    assert out.rstrip().endswith(b"</html>") and b"HTTP/1.1 400 Bad Request" in out
    assert server.closed


def test_h1_connection_close_and_http10() -> None:
    server = C.Http1Server()
    out = run_h1(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in out and server.closed
    server = C.Http1Server()
    out = run_h1(server, b"GET / HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and server.closed


def test_h1_header_size_bound() -> None:
    server = C.Http1Server()
    big = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 20000 + b"\r\n\r\n"
    out = run_h1(server, big)
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and server.closed


def test_h1_body_is_bounded_and_request_still_answered() -> None:
    server = C.Http1Server()
    body = b"x" * 200_000
    req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    out = run_h1(server, req)
    assert out.startswith(b"HTTP/1.1 405 Not Allowed")


def test_h1_expect_100_continue() -> None:
    server = C.Http1Server()
    head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    server.receive_data(head, NOW)
    assert server.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    server.receive_data(b"abc", NOW)
    assert server.data_to_send().startswith(b"HTTP/1.1 404 Not Found")


def test_h1_eof_mid_request_closes_quietly() -> None:
    server = C.Http1Server()
    actions = server.receive_data(GET[:10], NOW) + server.receive_data(b"", NOW)
    assert any(isinstance(a, C.ConnectionClosed) for a in actions)
    assert server.data_to_send() == b""
    assert server.receive_data(b"more", NOW) == []


def test_h1_tunnel_accepted_with_read_ahead() -> None:
    v = verifier()
    client = C.Http1TunnelClient("example.org", "/", good_ticket(), SeededRandom(b"c"))
    server = C.Http1Server()
    actions = server.receive_data(client.request_bytes + b"\x00inner", NOW)
    (req,) = actions
    assert isinstance(req, C.TunnelRequest) and req.authority == "example.org"
    assert v.check(req.ticket, PEER, NOW).accepted
    (opened,) = server.accept_tunnel(0, NOW)
    assert opened == C.TunnelOpened(stream_id=0, read_ahead=b"\x00inner")
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    got = client.receive_data(answer + b"server-first")
    assert got == C.TunnelOpened(stream_id=0, read_ahead=b"server-first")
    assert server.receive_data(b"abc", NOW) == [C.TunnelData(stream_id=0, data=b"abc")]
    server.send_tunnel(0, b"xyz")
    assert server.data_to_send() == b"xyz"
    assert server.receive_data(b"", NOW) == [C.TunnelClosed(stream_id=0)]


def test_websocket_accept_rfc6455_example() -> None:
    assert C.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("carrier", list(T.CarrierKind))
def test_h1_every_carrier_reaches_the_verifier(carrier: T.CarrierKind) -> None:
    value = good_ticket()
    client = C.Http1TunnelClient(
        "example.org", "/live", value, SeededRandom(b"k"), carriers=T.Carriers(kind=carrier)
    )
    server = C.Http1Server()
    (req,) = server.receive_data(client.request_bytes, NOW)
    assert isinstance(req, C.TunnelRequest) and req.ticket == value
    server.accept_tunnel(0, NOW)
    assert client.receive_data(server.data_to_send()) is not None


def test_h1_refusals_are_identical_except_date() -> None:
    v = verifier()
    value = good_ticket()
    assert v.check(value, PEER, NOW).accepted  # now it is a replay
    bad = T.b64url_encode(b"\x01" + bytes(120))
    answers = {}
    for name, cookie in [("none", None), ("bad", bad), ("replay", value), ("junk", "%%%")]:
        answers[name] = strip_date(run_h1(C.Http1Server(), upgrade_request("/", cookie), v))
    answers["browser"] = strip_date(run_h1(C.Http1Server(), b"GET / HTTP/1.1\r\nHost: e\r\n\r\n"))
    assert len(set(answers.values())) == 1
    assert answers["none"].startswith(b"HTTP/1.1 200 OK")
    for path in ("/chat", "/ws"):
        a = strip_date(run_h1(C.Http1Server(), upgrade_request(path, bad), v))
        b = strip_date(run_h1(C.Http1Server(), upgrade_request(path), v))
        assert a == b and a.startswith(b"HTTP/1.1 404 Not Found")


def test_h1_after_refusal_the_connection_stays_a_web_server() -> None:
    server = C.Http1Server()
    out = run_h1(server, upgrade_request("/") + GET, verifier())
    assert out.count(b"HTTP/1.1 200 OK") == 2 and not server.closed


def test_h1_client_refused() -> None:
    client = C.Http1TunnelClient("example.org", "/", "abc", SeededRandom(b"r"))
    server = C.Http1Server()
    (req,) = server.receive_data(client.request_bytes, NOW)
    server.refuse_tunnel(0, NOW)
    with pytest.raises(TicketError) as e:
        client.receive_data(server.data_to_send())
    assert e.value.reason == "refused"
    bad = C.Http1TunnelClient("example.org", "/", "abc", SeededRandom(b"r"))
    wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"
    with pytest.raises(TicketError):
        bad.receive_data(wrong)
    partial = C.Http1TunnelClient("example.org", "/", "abc", SeededRandom(b"r"))
    assert partial.receive_data(b"HTTP/1.1 101 Swi") is None
    with pytest.raises(TicketError):
        partial.receive_data(b"")


def test_h1_misuse_raises_runtime_error() -> None:
    server = C.Http1Server()
    with pytest.raises(RuntimeError):
        server.accept_tunnel(0, NOW)
    with pytest.raises(RuntimeError):
        server.send_tunnel(0, b"x")


def test_not_a_tunnel_request_when_incomplete() -> None:
    req = upgrade_request("/").replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")
    actions = C.Http1Server().receive_data(req, NOW)
    assert [type(a) for a in actions] == [C.RequestServed]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_h1_server(data: bytes) -> None:
    server = C.Http1Server()
    for chunk in (data[: len(data) // 2], data[len(data) // 2 :], b""):
        actions = server.receive_data(chunk, NOW)
        for a in actions:
            if isinstance(a, C.TunnelRequest):
                server.refuse_tunnel(a.stream_id, NOW)
        assert len(server.data_to_send()) < 64 * 1024


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 200))
def test_fuzz_h1_after_valid_prefix(junk: bytes, cut: int) -> None:
    server = C.Http1Server()
    data = upgrade_request("/", "x")[:cut] + junk
    for a in server.receive_data(data, NOW):
        if isinstance(a, C.TunnelRequest):
            server.refuse_tunnel(a.stream_id, NOW)
    server.receive_data(b"", NOW)


# --- HTTP/2 ------------------------------------------------------------------------------


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def h2_fetch(
    server: C.H2Server, headers: list[tuple[str, str]], end: bool = True
) -> tuple[dict[bytes, bytes], bytes, list[C.Action]]:
    client = h2_client()
    server.receive_data(client.data_to_send(), NOW)
    client.receive_data(server.data_to_send())
    client.send_headers(1, headers, end_stream=end)
    status: dict[bytes, bytes] = {}
    body = bytearray()
    actions: list[C.Action] = []
    for _ in range(50):
        out = client.data_to_send()
        if out:
            for a in server.receive_data(out, NOW):
                actions.append(a)
                if isinstance(a, C.TunnelRequest):
                    server.refuse_tunnel(a.stream_id, NOW)
        data = server.data_to_send()
        if not data and not out:
            break
        for ev in client.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers or [])
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data or b""
                client.acknowledge_received_data(ev.flow_controlled_length or 0, 1)
    return status, bytes(body), actions


def req(method: str, path: str, **extra: str) -> list[tuple[str, str]]:
    h = [(":method", method), (":scheme", "https"), (":authority", "example.org"), (":path", path)]
    return h + [(k.replace("_", "-"), v) for k, v in extra.items()]


def test_h2_get_and_large_body_flow_control() -> None:
    big = bytes(range(256)) * 1000
    site = C.CoverSite({"/index.html": b"home", "/big.bin": big})
    headers, body, _ = h2_fetch(C.H2Server(site), req("GET", "/big.bin"))
    assert headers[b":status"] == b"200" and body == big
    assert headers[b"server"] == b"nginx" and b"etag" in headers
    headers, body, _ = h2_fetch(C.H2Server(site), req("HEAD", "/big.bin"))
    assert body == b"" and headers[b"content-length"] == str(len(big)).encode()
    headers, _, _ = h2_fetch(C.H2Server(site), req("GET", "/nope"))
    assert headers[b":status"] == b"404"


def test_h2_settings_do_not_announce_extended_connect() -> None:
    """Like a stock web server; our tunnel client does not need the announcement."""
    server = C.H2Server()
    client = h2_client()
    server.receive_data(client.data_to_send(), NOW)
    client.receive_data(server.data_to_send())
    assert client.remote_settings.enable_connect_protocol == 0


def h2_tunnel_pair(
    value: str, v: T.TicketVerifier
) -> tuple[C.H2TunnelClient, C.H2Server, list[C.Action]]:
    client = C.H2TunnelClient("example.org", "/", value)
    server = C.H2Server()
    seen: list[C.Action] = []
    for _ in range(6):
        out = client.data_to_send()
        for a in server.receive_data(out, NOW) if out else []:
            if isinstance(a, C.TunnelRequest):
                if v.check(a.ticket, PEER, NOW).accepted:
                    server.accept_tunnel(a.stream_id, NOW)
                else:
                    server.refuse_tunnel(a.stream_id, NOW)
        data = server.data_to_send()
        if data:
            seen += client.receive_data(data)
    return client, server, seen


def test_h2_tunnel_both_ways_with_flow_control() -> None:
    client, server, seen = h2_tunnel_pair(good_ticket(), verifier())
    assert client.opened and any(isinstance(a, C.TunnelOpened) for a in seen)
    sid = client.stream_id
    assert sid is not None
    up = random_bytes(300_000)
    down = random_bytes(200_000)
    client.send(up)
    server.send_tunnel(sid, down)
    got_up = bytearray()
    got_down = bytearray()
    for _ in range(200):
        out = client.data_to_send()
        for a in server.receive_data(out, NOW) if out else []:
            if isinstance(a, C.TunnelData):
                got_up += a.data
        data = server.data_to_send()
        for a in client.receive_data(data) if data else []:
            if isinstance(a, C.TunnelData):
                got_down += a.data
        if len(got_up) == len(up) and len(got_down) == len(down):
            break
    assert bytes(got_up) == up and bytes(got_down) == down
    client.close()
    assert C.TunnelClosed(stream_id=sid) in server.receive_data(client.data_to_send(), NOW)


def test_h2_refused_and_identical_except_date() -> None:
    v = verifier()
    value = good_ticket()
    assert v.check(value, PEER, NOW).accepted
    bad = T.b64url_encode(b"\x01" + bytes(120))
    answers = set()
    for cookie in (None, bad, value):
        extra = {"cookie": f"session={cookie}"} if cookie else {}
        headers, body, actions = h2_fetch(
            C.H2Server(),
            req(
                "CONNECT", "/", **{":protocol": "websocket", "sec-websocket-version": "13"}, **extra
            ),
            end=False,
        )
        assert any(isinstance(a, C.TunnelRequest) for a in actions)
        headers.pop(b"date")
        answers.add((tuple(sorted(headers.items())), body))
    assert len(answers) == 1
    ((headers_items, _),) = answers
    assert dict(headers_items)[b":status"] == b"405"
    with pytest.raises(TicketError):
        h2_tunnel_pair(bad, v)


def test_h2_client_refuses_a_plain_web_server() -> None:
    """A server that knows nothing of tunnels answers the CONNECT with 405: refused."""
    client = C.H2TunnelClient("example.org", "/", "abc")
    plain = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    plain.initiate_connection()
    for ev in plain.receive_data(client.data_to_send()):
        if isinstance(ev, h2.events.RequestReceived) and ev.stream_id is not None:
            plain.send_headers(ev.stream_id, [(":status", "405")], end_stream=True)
    with pytest.raises(TicketError):
        client.receive_data(plain.data_to_send())


def test_h2_garbage_gets_goaway() -> None:
    server = C.H2Server()
    server.data_to_send()
    actions = server.receive_data(GET, NOW)
    assert actions == [C.ConnectionClosed(reason="protocol_error")]
    out = server.data_to_send()
    assert out[3] == 0x07  # a GOAWAY frame
    assert server.receive_data(b"more", NOW) == []


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
def test_fuzz_h2_server(data: bytes, with_preface: bool) -> None:
    server = C.H2Server()
    settings_frame = h2_client().data_to_send()[len(PREFACE) :]
    payload = (PREFACE + settings_frame if with_preface else b"") + data
    for chunk in (payload[:30], payload[30:], b""):
        for a in server.receive_data(chunk, NOW):
            if isinstance(a, C.TunnelRequest):
                server.refuse_tunnel(a.stream_id, NOW)
        assert len(server.data_to_send()) < 256 * 1024


def test_h2_header_list_bound() -> None:
    server = C.H2Server()
    client = h2_client()
    server.receive_data(client.data_to_send(), NOW)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send(), NOW)
    client.send_headers(1, req("GET", "/", cookie="a" * 40000), end_stream=True)
    actions = server.receive_data(client.data_to_send(), NOW)
    assert actions == [C.ConnectionClosed(reason="protocol_error")]


# --- a real socket, a real curl ----------------------------------------------------------


class _Served:
    def __init__(self) -> None:
        self.verifier = verifier()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stop = False
        self.tunnels = 0
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self._one(conn, addr[0])

    def _one(self, conn: socket.socket, peer: str) -> None:
        server = C.Http1Server()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            actions = server.receive_data(data, time.time())
            while actions:
                more: list[C.Action] = []
                for a in actions:
                    if isinstance(a, C.TunnelRequest):
                        if self.verifier.check(a.ticket, peer, time.time()).accepted:
                            self.tunnels += 1
                            more += server.accept_tunnel(0, time.time())
                        else:
                            more += server.refuse_tunnel(0, time.time())
                    elif isinstance(a, C.TunnelOpened) and a.read_ahead:
                        server.send_tunnel(0, a.read_ahead)
                    elif isinstance(a, C.TunnelData):
                        server.send_tunnel(0, a.data)  # echo
                actions = more
            conn.sendall(server.data_to_send())
            if server.closed or not data:
                return

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def served() -> Iterator[_Served]:
    s = _Served()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_an_ordinary_site(served: _Served) -> None:
    url = f"http://127.0.0.1:{served.port}/"

    def curl(*args: str) -> bytes:
        cmd = ["curl", "--http1.1", "-s", "-i", "--max-time", "10", *args, url]
        return subprocess.run(cmd, check=True, capture_output=True, timeout=20).stdout

    plain = curl()
    assert plain.startswith(b"HTTP/1.1 200 OK") and b"Fieldnotes" in plain
    bad = T.b64url_encode(b"\x01" + bytes(120))
    upgrade = curl(
        "-H", "Connection: Upgrade",
        "-H", "Upgrade: websocket",
        "-H", "Sec-WebSocket-Version: 13",
        "-H", "Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef").decode(),
        "-H", f"Cookie: session={bad}",
    )  # fmt: skip
    assert upgrade.startswith(b"HTTP/1.1 200 OK")
    assert strip_date(upgrade) == strip_date(plain)
    missing = curl("-o", "/dev/null", "-w", "%{http_code}", "--", "ignored")
    assert b"404" in missing or b"200" in missing
    for blob in (plain, upgrade, curl("-I"), curl("-X", "DELETE")):
        assert b"qnet" not in blob.lower()
    assert served.tunnels == 0


def test_real_socket_tunnel_with_a_good_ticket(served: _Served) -> None:
    client = C.Http1TunnelClient("127.0.0.1", "/", good_ticket(time.time()), random_bytes)
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(client.request_bytes + b"ping")
        opened = None
        while opened is None:
            opened = client.receive_data(s.recv(4096))
        echoed = opened.read_ahead
        while len(echoed) < 4:
            echoed += s.recv(4096)
        assert echoed == b"ping"
    assert served.tunnels == 1
