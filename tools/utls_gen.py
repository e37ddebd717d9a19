"""Capture Chromium's ClientHellos on loopback and write HTX hello templates.

    python -m tools.utls_gen                      # all three transports
    python -m tools.utls_gen --transport quic-h3 --count 6
    python -m tools.utls_gen --from-captures spec/templates/captures.json   # no browser

Runs Debian's headless Chromium (``/usr/bin/chromium``; when it is missing and
we are root, it is installed with apt-get, and we say so) against capture
listeners on 127.0.0.1 and writes ``spec/templates/chromium-<major>-<transport>.json``
(and the same file into ``qnet/htx/templates/``, the copy the package loads):

* ``tcp-h2``: a navigation to ``https://qnet-capture.test:<port>/``. The
  listener completes TLS with our own server (``--ignore-certificate-errors``)
  so that the client's first records after the handshake are seen too.
* ``tcp-ws``: a page served over plain HTTP opens ``new WebSocket("wss://...")``
  again and again; same TLS listener.
* ``quic-h3``: ``--enable-quic --origin-to-force-quic-on``; a UDP listener
  decrypts the Initial packets (RFC 9001 keys) and reassembles the CRYPTO data.

``quic-h3`` also runs Chromium against a plain aioquic HTTP/3 server with a
``QuicLogger`` and records its first two 1-RTT packets with STREAM data in
``quic.first_1rtt`` (sizes, bytes per stream, the first request's header list);
``--quic-first-1rtt`` does only that and updates that key of the existing QUIC
template files in place.

``--quic-after-initials`` only measures and prints a JSON summary (no
template is written): Chromium (or, with ``--quic-client qnet``, our own
``dial_quic``) runs full QUIC handshakes with our HTTP/3 server
(``qnet.htx.quic.serve_quic``, a certificate Chromium is told to accept with
``--ignore-certificate-errors-spki-list``) through a UDP relay on loopback,
which can drop one client datagram (``--quic-drop N``); for each connection
the first client datagrams (and, under ``server_datagrams``, the server's) are
listed with their size and coalesced packets (long-header types and Length
fields; each side's Initials decrypted with its own Initial keys).

The name ``qnet-capture.test`` is mapped to 127.0.0.1 with
``--host-resolver-rules`` so that Chromium sends SNI (it omits it for IP
literals) and never goes to ``[::1]``. The template is derived from the
captures (spec/fingerprint.md §2); then a self-test computes JA3/JA4/JA4_r of
the captured hellos and of hellos our writer makes from the new template and
fails unless the JA4s agree and the JA3s vary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hpack

from qnet.htx import fingerprint as fp
from qnet.htx import quic_initial as qi

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "spec" / "templates"
PACKAGE_DIR = ROOT / "qnet" / "htx" / "templates"
CHROMIUM = "/usr/bin/chromium"
CAPTURE_HOST = "qnet-capture.test"
TRANSPORTS = ("tcp-h2", "tcp-ws", "quic-h3")


def say(msg: str) -> None:
    print(f"utls_gen: {msg}", file=sys.stderr)


# --- the browser -----------------------------------------------------------------------


def ensure_chromium() -> str:
    """Path of Debian's chromium; installs the package when missing and we are root."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("chromium is missing; installing the Debian package 'chromium' with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
        if os.path.exists(CHROMIUM):
            return CHROMIUM
    raise SystemExit(
        "utls_gen: /usr/bin/chromium not found; install Debian's 'chromium' package "
        "(as root: apt-get install chromium) or use --from-captures"
    )


def chromium_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word[:1].isdigit() and "." in word:
            return word
    raise SystemExit(f"utls_gen: cannot read the Chromium version from {out!r}")


def run_chromium(binary: str, url: str, extra: Sequence[str], seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="qnet-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--host-resolver-rules=MAP {CAPTURE_HOST} 127.0.0.1",
            *extra,
            url,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- TCP capture -------------------------------------------------------------------------


class TcpCapture:
    """A TLS listener on 127.0.0.1: records each connection's ClientHello record(s)
    and, after completing the handshake with our own server, the (type, length)
    of the client's records that follow, up to ``flight_window`` seconds."""

    def __init__(self, flight_window: float = 1.5) -> None:
        from qnet.htx.tls import TlsServerConfig, make_self_signed

        cert, key = make_self_signed(CAPTURE_HOST)
        self.config = TlsServerConfig(
            certificate_chain=(cert,), private_key=key, alpn=("h2", "http/1.1")
        )
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.3)
        self.port = self.sock.getsockname()[1]
        self.flight_window = flight_window
        self.connections: list[dict[str, Any]] = []
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        from qnet.htx.tls import ApplicationData, HandshakeComplete, TlsConnection

        record: dict[str, Any] = {"hello_records": [], "after": [], "plain": [], "alpn": None}
        tls = TlsConnection(self.config, now=time.monotonic())
        buf = b""
        pending = b""
        hello_done = False
        deadline: float | None = None
        conn.settimeout(0.2)
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                    n = 5 + int.from_bytes(buf[3:5], "big")
                    rec, buf = buf[:n], buf[n:]
                    if not hello_done:
                        record["hello_records"].append(rec.hex())
                        pending += rec[5:]
                        if len(pending) >= 4 and len(pending) >= 4 + int.from_bytes(
                            pending[1:4], "big"
                        ):
                            hello_done = True
                    else:
                        record["after"].append([rec[0], n - 5])
                    app = b""
                    for ev in tls.receive_data(rec):
                        if isinstance(ev, ApplicationData):
                            app += ev.data
                        if isinstance(ev, HandshakeComplete):
                            record["alpn"] = ev.alpn
                            deadline = time.monotonic() + self.flight_window
                    if app:
                        record["plain"].append(app.hex())
                    out = tls.data_to_send()
                    if out:
                        conn.sendall(out)
        except (OSError, ValueError) as exc:
            record["error"] = repr(exc)
        finally:
            conn.close()
            if record["hello_records"]:
                with self._lock:
                    self.connections.append(record)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


class PageServer:
    """Plain HTTP on 127.0.0.1 serving one page (for the WebSocket capture)."""

    def __init__(self, page: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.3)
        self.port = self.sock.getsockname()[1]
        self.page = page
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    head = (
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                        f"Content-Length: {len(self.page)}\r\nConnection: close\r\n\r\n"
                    )
                    conn.sendall(head.encode() + self.page)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def capture_tcp(binary: str, kind: str, count: int) -> list[dict[str, Any]]:
    cap = TcpCapture()
    flags = ["--ignore-certificate-errors", "--disable-quic"]
    try:
        rounds = 0
        while len(cap.connections) < count and rounds < 4 * count:
            rounds += 1
            if kind == "tcp-h2":
                url = f"https://{CAPTURE_HOST}:{cap.port}/"
                run_chromium(binary, url, flags, 6)
            else:
                page = (
                    "<!doctype html><title>ws</title><script>"
                    "function go(){var w=new WebSocket("
                    f"'wss://{CAPTURE_HOST}:{cap.port}/chat');"
                    "w.onerror=function(){};}"
                    "go();setInterval(go,700);</script>"
                ).encode()
                pages = PageServer(page)
                try:
                    run_chromium(binary, f"http://{CAPTURE_HOST}:{pages.port}/", flags, 8)
                finally:
                    pages.close()
            time.sleep(cap.flight_window + 0.5)
    finally:
        cap.close()
    if not cap.connections:
        raise SystemExit(f"utls_gen: Chromium made no TLS connection for {kind}")
    return cap.connections[: max(count, len(cap.connections))]


# --- QUIC capture --------------------------------------------------------------------


def capture_quic(binary: str, count: int) -> list[dict[str, Any]]:
    """Datagrams of each connection's first flight (the packets carrying the hello)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.3)
    port = sock.getsockname()[1]
    datagrams: list[bytes] = []
    stop = False

    def loop() -> None:
        while not stop:
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            datagrams.append(data)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    flags = ["--enable-quic", f"--origin-to-force-quic-on={CAPTURE_HOST}:{port}"]
    try:
        rounds = 0
        while rounds < 2 * count:
            rounds += 1
            run_chromium(binary, f"https://{CAPTURE_HOST}:{port}/", flags, 5)
            if len(_quic_connections(datagrams)) >= count:
                break
    finally:
        stop = True
        thread.join()
        sock.close()
    conns = _quic_connections(datagrams)
    if not conns:
        raise SystemExit("utls_gen: Chromium sent no QUIC Initial")
    return conns


def _quic_connections(datagrams: Sequence[bytes]) -> list[dict[str, Any]]:
    """Group datagrams by DCID; keep each connection's first flight (the packets
    until the ClientHello is complete; retransmissions are left out)."""
    by_dcid: dict[bytes, list[bytes]] = {}
    for d in datagrams:
        try:
            packets = qi.open_initial_datagram(d)
        except qi.QuicInitialError:
            continue
        by_dcid.setdefault(packets[0].dcid, []).append(d)
    out = []
    for dgs in by_dcid.values():
        flight: list[bytes] = []
        for d in dgs:
            flight.append(d)
            if _reassemble(flight) is not None:
                out.append({"datagrams": [x.hex() for x in flight]})
                break
    return out


def _reassemble(datagrams: Sequence[bytes]) -> bytes | None:
    """The ClientHello from the CRYPTO frames of these datagrams, or None if incomplete."""
    data: dict[int, int] = {}
    for d in datagrams:
        for p in qi.open_initial_datagram(d):
            for f in p.frames:
                if f.kind == "crypto":
                    for i, b in enumerate(f.data):
                        data[f.offset + i] = b
    if len(data) < 4 or 0 not in data:
        return None
    need = 4 + int.from_bytes(bytes(data.get(i, 0) for i in range(1, 4)), "big")
    if any(i not in data for i in range(need)):
        return None
    return bytes(data[i] for i in range(need))


# --- QUIC after the Initials (measurement only) -------------------------------------


def describe_quic_datagram(datagram: bytes, odcid: bytes, *, client: bool = True) -> dict[str, Any]:
    """Size and coalesced packets of a datagram: each packet's type and size (from
    the long headers), its Initials opened with ``odcid``'s keys of the sending side
    (``client``)."""
    out: dict[str, Any] = {"size": len(datagram)}
    try:
        spans = qi.packet_spans(datagram)
    except qi.QuicInitialError as exc:
        out["error"] = str(exc)
        return out
    try:
        initials = qi.open_initial_datagram(datagram, dcid=odcid, client=client)
    except qi.QuicInitialError:
        initials = []
    packets: list[dict[str, Any]] = []
    for i, span in enumerate(spans):
        packet: dict[str, Any] = {"type": span.kind, "size": span.stop - span.start}
        if span.kind == "initial" and i < len(initials):
            opened = initials[i]
            packet["pn"] = opened.packet_number
            packet["pn_length"] = opened.pn_length
            packet["frames"] = [
                f"padding{f.size}"
                if f.kind == "padding"
                else f"crypto[{f.offset},{f.offset + len(f.data)})"
                if f.kind == "crypto"
                else f.kind
                for f in opened.frames
            ]
        packets.append(packet)
    out["packets"] = packets
    out["after_last_packet"] = len(datagram) - (spans[-1].stop if spans else 0)
    return out


def capture_quic_after_initials(
    binary: str, count: int, client: str, drop: int | None, datagrams: int
) -> list[dict[str, Any]]:
    """Full QUIC handshakes through a logging relay; per connection, its first
    ``datagrams`` client datagrams and server datagrams (``describe_quic_datagram``)."""
    import base64
    import hashlib

    import trio
    from cryptography.hazmat.primitives import serialization

    from qnet.crypto.primitives import MLKEM768Key, X25519Key
    from qnet.htx import quic as htx_quic
    from qnet.htx.tls import make_self_signed
    from qnet.htx.transport import HtxLink, PeerInfo, ServerConfig

    cert, key = make_self_signed(CAPTURE_HOST)
    spki = hashlib.sha256(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()
    link_key, mlkem, ticket = X25519Key.generate(), MLKEM768Key.generate(), X25519Key.generate()
    config = ServerConfig(
        link_private=link_key.private_bytes,
        mlkem=mlkem,
        ticket_keys={1: ticket},
        certificate_chain=(cert,),
        certificate_key=key,
    )
    log: list[tuple[tuple[str, int], bytes, bool]] = []  # (client, datagram, dropped)
    server_log: list[tuple[tuple[str, int], bytes]] = []  # (client, server datagram)

    async def idle(link: HtxLink) -> None:
        try:
            while True:
                await link.accept_stream()
        except trio.EndOfChannel:
            return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(htx_quic.serve_quic, idle, config)
            server_addr = ("127.0.0.1", server.getsockname()[1])
            front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await front.bind(("127.0.0.1", 0))
            port = front.getsockname()[1]
            backs: dict[tuple[str, int], trio.socket.SocketType] = {}
            sent: dict[tuple[str, int], int] = {}

            async def down(back: trio.socket.SocketType, addr: tuple[str, int]) -> None:
                while True:
                    data, _ = await back.recvfrom(65536)
                    server_log.append((addr, data))
                    await front.sendto(data, addr)

            async def up() -> None:
                while True:
                    data, raw = await front.recvfrom(65536)
                    addr = (str(raw[0]), int(raw[1]))
                    n = sent.get(addr, 0)
                    sent[addr] = n + 1
                    log.append((addr, data, n == drop))
                    if addr not in backs:
                        back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        await back.bind(("127.0.0.1", 0))
                        backs[addr] = back
                        nursery.start_soon(down, back, addr)
                    if n != drop:
                        await backs[addr].sendto(data, server_addr)

            nursery.start_soon(up)
            spki_flag = base64.b64encode(spki).decode()
            flags = [
                "--enable-quic",
                f"--origin-to-force-quic-on={CAPTURE_HOST}:{port}",
                "--ignore-certificate-errors",
                f"--ignore-certificate-errors-spki-list={spki_flag}",
                "--dump-dom",
            ]
            for _ in range(count):
                if client == "chromium":
                    await trio.to_thread.run_sync(
                        run_chromium, binary, f"https://{CAPTURE_HOST}:{port}/", flags, 15
                    )
                else:
                    peer = PeerInfo(
                        host="127.0.0.1",
                        port=port,
                        link_public=link_key.public_bytes,
                        mlkem_public=mlkem.public_bytes,
                        ticket_public=ticket.public_bytes,
                        ticket_key_id=1,
                        server_name=CAPTURE_HOST,
                    )
                    async with htx_quic.dial_quic(peer) as link:
                        stream = await link.open_stream()
                        await stream.send_all(b"x" * 3000)
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()

    trio.run(main)
    by_client: dict[tuple[str, int], list[tuple[bytes, bool]]] = {}
    for addr, data, dropped in log:
        by_client.setdefault(addr, []).append((data, dropped))
    out = []
    for client_addr, seen in by_client.items():
        try:
            odcid = qi.open_initial_datagram(seen[0][0])[0].dcid
        except qi.QuicInitialError:
            continue
        rows = []
        for data, dropped in seen[:datagrams]:
            row = describe_quic_datagram(data, odcid)
            if dropped:
                row["dropped"] = True
            rows.append(row)
        answers = [data for addr, data in server_log if addr == client_addr]
        server_rows = [
            describe_quic_datagram(data, odcid, client=False) for data in answers[:datagrams]
        ]
        out.append({"odcid": odcid.hex(), "datagrams": rows, "server_datagrams": server_rows})
    return out


def capture_quic_first_1rtt(binary: str, count: int) -> list[dict[str, Any]]:
    """Chromium against a plain aioquic HTTP/3 server with a ``QuicLogger``; per
    connection, the first two client 1-RTT packets that carry STREAM data (size and
    bytes per stream, from the server's qlog) and the first request's decoded headers."""
    import asyncio
    import base64
    import hashlib

    from aioquic.asyncio import serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent
    from aioquic.quic.logger import QuicLogger
    from cryptography.hazmat.primitives import serialization

    from qnet.htx.tls import make_self_signed

    cert, key = make_self_signed(CAPTURE_HOST)
    heads: dict[str, list[tuple[str, str]]] = {}  # odcid hex -> first request's headers

    class H3Server(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)

        def quic_event_received(self, event: QuicEvent) -> None:
            events: list[H3Event] = self.h3.handle_event(event)
            for e in events:
                if isinstance(e, HeadersReceived):
                    # aioquic internal: the connection's original DCID names its qlog trace
                    odcid = self._quic.original_destination_connection_id.hex()
                    heads.setdefault(
                        odcid, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in e.headers]
                    )
                    self.h3.send_headers(e.stream_id, [(b":status", b"200")])
                    self.h3.send_data(e.stream_id, b"<html>ok</html>", end_stream=True)
                    self.transmit()

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="qnet-h3-") as d:
            (Path(d) / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (Path(d) / "k.pem").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            logger = QuicLogger()
            cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, quic_logger=logger)
            cfg.load_cert_chain(str(Path(d) / "c.pem"), str(Path(d) / "k.pem"))
        spki = base64.b64encode(
            hashlib.sha256(
                cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).digest()
        ).decode()
        server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=H3Server)
        port = server._transport.get_extra_info("sockname")[1]  # aioquic internal
        flags = [
            "--enable-quic",
            f"--origin-to-force-quic-on={CAPTURE_HOST}:{port}",
            f"--ignore-certificate-errors-spki-list={spki}",
            "--dump-dom",
        ]
        try:
            for _ in range(count):
                await asyncio.to_thread(
                    run_chromium, binary, f"https://{CAPTURE_HOST}:{port}/", flags, 15
                )
        finally:
            server.close()
        return dict(logger.to_dict())

    qlog = asyncio.run(run())
    out = []
    for trace in qlog["traces"]:
        odcid = str(trace.get("common_fields", {}).get("ODCID", ""))
        packets = []
        for ev in trace["events"]:
            data = ev.get("data", {})
            if ev.get("name") != "transport:packet_received":
                continue
            if data.get("header", {}).get("packet_type") != "1RTT":
                continue
            streams: dict[str, int] = {}
            whole = False  # the request stream from offset 0 to its FIN
            for f in data.get("frames", []):
                if f.get("frame_type") == "stream":
                    sid = str(f["stream_id"])
                    streams[sid] = streams.get(sid, 0) + int(f["length"])
                    whole = whole or (sid == "0" and f["offset"] == 0 and bool(f.get("fin")))
            if streams:
                packets.append({"size": int(data["raw"]["length"]), "streams": streams})
            if len(packets) == 2:
                break
        # Chromium's usual pattern only: the control stream alone, then the whole
        # request (with control-stream bytes); anything else is left out.
        if len(packets) == 2 and odcid in heads and set(packets[0]["streams"]) == {"2"} and whole:
            out.append({"odcid": odcid, "packets": packets, "headers": heads[odcid]})
        else:
            say(f"connection {odcid}: first 1-RTT packets {packets} left out")
    if not out:
        raise SystemExit("utls_gen: no Chromium HTTP/3 request seen")
    return out


def _first_1rtt(connections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The template's ``quic.first_1rtt`` from ``capture_quic_first_1rtt``'s rows. The
    control stream is client stream 2, the request stream 0 (RFC 9114)."""
    from qnet.htx.quic import first_request_sizes
    from qnet.htx.tls import FirstOneRtt

    def span(values: Sequence[int]) -> list[int]:
        return [min(values), max(values)]

    first = [c["packets"][0] for c in connections]
    second = [c["packets"][1] for c in connections]
    requests: dict[int, list[list[str]]] = {}
    for c, p in zip(connections, second, strict=True):
        requests.setdefault(p["size"], [list(h) for h in c["headers"]])
    section = {
        "control_packet_sizes": span([p["size"] for p in first]),
        "control_stream_bytes": span([p["streams"].get("2", 0) for p in first]),
        "request_packet_sizes": span([p["size"] for p in second]),
        "request_control_bytes": span([p["streams"].get("2", 0) for p in second]),
        "request_stream_bytes": span([p["streams"].get("0", 0) for p in second]),
        "requests": [{"packet_size": n, "headers": h} for n, h in sorted(requests.items())],
    }
    # The length model must give back each captured size for its own authority.
    for n, h in requests.items():
        auth = dict((k, v) for k, v in h)[":authority"]
        one = FirstOneRtt(
            control_packet_sizes=(0, 0),
            control_stream_bytes=(0, 0),
            request_packet_sizes=(0, 0),
            request_control_bytes=(0, 0),
            request_stream_bytes=(0, 0),
            requests=((n, tuple((k, v) for k, v in h)),),
        )
        got = first_request_sizes(one, auth, headed=False)
        if got != (n,):
            say(f"warning: the QPACK length model gives {got} for a captured {n}")
    return section


def update_first_1rtt(section: dict[str, Any], paths: Sequence[Path]) -> None:
    """Set ``quic.first_1rtt`` in the QUIC template files, leaving the rest as it is."""
    for path in paths:
        template = json.loads(path.read_text())
        template["quic"]["first_1rtt"] = section
        path.write_text(json.dumps(template, indent=1, sort_keys=False) + "\n")


# --- from captures to a template --------------------------------------------------------

GREASE = "GREASE"


def _slot(v: int) -> int | str:
    return GREASE if fp.is_grease(v) else v


def _same_everywhere(values: Sequence[Any], field: str) -> Any:
    first = values[0]
    for v in values[1:]:
        if v != first:
            raise SystemExit(f"utls_gen: {field} differs between captures: {first!r} vs {v!r}")
    return first


def hellos_of(kind: str, connections: Sequence[dict[str, Any]]) -> list[bytes]:
    if kind == "quic-h3":
        out = []
        for c in connections:
            h = _reassemble([bytes.fromhex(x) for x in c["datagrams"]])
            assert h is not None
            out.append(h)
        return out
    return [b"".join(bytes.fromhex(r)[5:] for r in c["hello_records"]) for c in connections]


def _key_share_entries(body: bytes) -> list[tuple[int, int]]:
    inner = body[2:]
    out = []
    pos = 0
    while pos < len(inner):
        group = int.from_bytes(inner[pos : pos + 2], "big")
        n = int.from_bytes(inner[pos + 2 : pos + 4], "big")
        out.append((group, n))
        pos += 4 + n
    return out


def _transport_parameters(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(body):
        pid, pos = qi.pull_varint(body, pos)
        n, pos = qi.pull_varint(body, pos)
        out.append((pid, body[pos : pos + n]))
        pos += n
    return out


def _is_grease_tp(pid: int) -> bool:
    return pid >= 27 and (pid - 27) % 31 == 0


def derive_template(
    kind: str, version: str, connections: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The template file (a JSON object) from the captured connections."""
    raw = hellos_of(kind, connections)
    hellos = [fp.parse_client_hello(h) for h in raw]
    quic = kind == "quic-h3"
    h0 = hellos[0]
    suites = _same_everywhere([[_slot(c) for c in h.cipher_suites] for h in hellos], "ciphers")
    sets = [sorted(_slot(t) for t in h.extension_types if not fp.is_grease(t)) for h in hellos]
    _same_everywhere(sets, "extension set")
    orders = [[_slot(t) for t in h.extension_types] for h in hellos]
    shuffled = any(o != orders[0] for o in orders)
    # Which positions never move: GREASE extensions first/last, as Chrome pins them.
    pinned = []
    if shuffled:
        for i, t in enumerate(orders[0]):
            if all(o[i] == t for o in orders) and t == GREASE:
                pinned.append(i)
    extensions: list[dict[str, Any]] = []
    grease_bodies: list[str] = []
    opaque: dict[str, str] = {}
    ech_lengths: set[int] = set()
    built = {
        0x0000: "server_name",
        0x000A: "supported_groups",
        0x000B: "ec_point_formats",
        0x000D: "signature_algorithms",
        0x0010: "alpn",
        0x0015: "padding",
        0x001B: "compress_certificate",
        0x002B: "supported_versions",
        0x002D: "psk_key_exchange_modes",
        0x0033: "key_share",
        0x0039: "quic_transport_parameters",
        0x44CD: "application_settings",
        0x4469: "application_settings_old",
        0xFE0D: "encrypted_client_hello_grease",
    }
    for t in orders[0]:
        if t == GREASE:
            extensions.append({"type": GREASE, "rule": "grease"})
            continue
        assert isinstance(t, int)
        if t in built:
            extensions.append({"type": t, "rule": built[t]})
        else:
            bodies = [h.body(t) for h in hellos]
            body = _same_everywhere(bodies, f"body of extension 0x{t:04x}")
            assert body is not None
            opaque[str(t)] = body.hex()
            extensions.append({"type": t, "rule": "opaque"})
    for h in hellos:
        gb = [b.hex() for t, b in h.extensions if fp.is_grease(t)]
        if gb:
            grease_bodies = gb
        ech = h.body(0xFE0D)
        if ech is not None:
            # outer(1) kdf(2) aead(2) config_id(1) enc(2+n) payload(2+n)
            enc_len = int.from_bytes(ech[6:8], "big")
            ech_lengths.add(int.from_bytes(ech[8 + enc_len : 10 + enc_len], "big"))
    ech_body = h0.body(0xFE0D)
    shares = _same_everywhere(
        [[(_slot(g), n) for g, n in _key_share_entries(h.body(0x33) or b"")] for h in hellos],
        "key shares",
    )
    alps = h0.body(0x44CD) or h0.body(0x4469)
    alps_protocols: list[str] = []
    if alps:
        pos = 2
        while pos < len(alps):
            n = alps[pos]
            alps_protocols.append(alps[pos + 1 : pos + 1 + n].decode())
            pos += 1 + n
    comp = h0.body(0x1B) or b"\x00"
    psk = h0.body(0x2D) or b"\x00"
    # GREASE relations: which GREASE slots held the same value in every capture.
    relations = []
    for h in hellos:
        g = {
            "cipher": next((c for c in h.cipher_suites if fp.is_grease(c)), None),
            "group": next((c for c in h.supported_groups if fp.is_grease(c)), None),
            "key_share": next(
                (g for g, _ in _key_share_entries(h.body(0x33) or b"") if fp.is_grease(g)), None
            ),
            "version": next((c for c in h.supported_versions if fp.is_grease(c)), None),
            "signature_algorithm": next(
                (c for c in h.signature_algorithms if fp.is_grease(c)), None
            ),
        }
        ge = [t for t in h.extension_types if fp.is_grease(t)]
        for i, t in enumerate(ge):
            g[f"extension{i + 1}"] = t
        relations.append(g)
    present = [k for k, v in relations[0].items() if v is not None]
    same = [
        [a, b]
        for i, a in enumerate(present)
        for b in present[i + 1 :]
        if all(r.get(a) == r.get(b) for r in relations)
    ]
    differ = [
        [a, b]
        for i, a in enumerate(present)
        for b in present[i + 1 :]
        if all(r.get(a) != r.get(b) for r in relations)
    ]
    tls: dict[str, Any] = {
        "legacy_version": _same_everywhere([h.legacy_version for h in hellos], "version"),
        "session_id_len": _same_everywhere([len(h.session_id) for h in hellos], "session id"),
        "cipher_suites": suites,
        "extensions": extensions,
        "shuffle_extensions": shuffled,
        "pinned_positions": pinned,
        "supported_groups": [_slot(g) for g in h0.supported_groups],
        "key_share_groups": [g for g, _ in shares],
        "key_share_lengths": {str(g): n for g, n in shares},
        "signature_algorithms": [_slot(s) for s in h0.signature_algorithms],
        "supported_versions": [_slot(v) for v in h0.supported_versions],
        "psk_modes": list(psk[1:]),
        "alpn": [p.decode() for p in h0.alpn],
        "alps_protocols": alps_protocols,
        "compress_certificate": [
            int.from_bytes(comp[i : i + 2], "big") for i in range(1, len(comp), 2)
        ],
        "ec_point_formats": list(h0.ec_point_formats),
        "grease_extension_bodies": grease_bodies,
        "opaque_extensions": opaque,
        "grease_same": same,
        "grease_differ": differ,
    }
    if ech_body is not None:
        tls["ech"] = {
            "kdf": int.from_bytes(ech_body[1:3], "big"),
            "aead": int.from_bytes(ech_body[3:5], "big"),
            "enc_length": int.from_bytes(ech_body[6:8], "big"),
            "payload_lengths": sorted(ech_lengths),
        }
    template: dict[str, Any] = {
        "format": "qnet-hello-template/1",
        "browser": "chromium",
        "version": version,
        "transport": kind,
        "captured": {
            "server_name": CAPTURE_HOST,
            "tool": "python -m tools.utls_gen",
            "hellos": [h.hex() for h in raw],
            "ja4": sorted({fp.ja4(h) for h in hellos}),
            "ja4_r": sorted({fp.ja4_r(h) for h in hellos}),
            "ja3": sorted({fp.ja3(h) for h in hellos}),
        },
        "tls": tls,
    }
    if quic:
        template["quic"] = _quic_layout(connections, hellos)
    else:
        rec_versions = {
            bytes.fromhex(r)[1:3].hex() for c in connections for r in c["hello_records"]
        }
        if len(rec_versions) != 1:
            raise SystemExit(f"utls_gen: record versions differ: {sorted(rec_versions)}")
        tls["record_version"] = int(rec_versions.pop(), 16)
        template["records"] = {
            "hello_record_lengths": sorted(
                {len(bytes.fromhex(r)) - 5 for c in connections for r in c["hello_records"]}
            ),
            "first_flight": _first_flights(connections),
            "alpn_negotiated": sorted({str(c.get("alpn")) for c in connections}),
            "http": _http_flight(kind, connections),
        }
    return template


def _first_flights(connections: Sequence[dict[str, Any]]) -> list[list[list[int]]]:
    """Distinct sequences of (content type, length) the client sent after its hello."""
    seen: list[list[list[int]]] = []
    for c in connections:
        flight = [[int(t), int(n)] for t, n in c.get("after", [])]
        if flight and flight not in seen:
            seen.append(flight)
    return seen


def _http_flight(kind: str, connections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``records.http`` section: what Chromium wrote after its Finished, decrypted."""
    from hyperframe.frame import Frame, HeadersFrame, SettingsFrame, WindowUpdateFrame

    from qnet.htx.first_flight import H2_PREFACE, parse_http_flight

    plains = [[bytes.fromhex(p) for p in c.get("plain", [])] for c in connections]
    plains = [p for p in plains if p]
    if not plains:
        raise SystemExit(f"utls_gen: {kind}: no request was captured after the handshake")
    requests: list[dict[str, Any]] = []
    out: dict[str, Any]
    if kind == "tcp-ws":
        lines = {p[0].split(b"\r\n", 1)[0].decode("latin-1") for p in plains}
        if len(lines) != 1:
            raise SystemExit(f"utls_gen: request lines differ: {sorted(lines)}")
        request_line = lines.pop()
        for p in plains:
            head = p[0].decode("latin-1").split("\r\n")[1:]
            headers = [list(h.split(": ", 1)) for h in head if h]
            host = next(v for k, v in headers if k.lower() == "host")
            # The capture page is plain HTTP on another port; a site's own page
            # would send its https origin, so that is what the template keeps.
            length = len(p[0])
            for h in headers:
                if h[0].lower() == "origin":
                    length += len(f"https://{host}") - len(h[1])
                    h[1] = f"https://{host}"
            if all(r["length"] != length for r in requests):
                requests.append({"headers": headers, "length": length})
        out = {"protocol": "http/1.1", "authority": host, "request_line": request_line}
    else:
        settings, updates, priorities = [], set(), set()
        for p in plains:
            if len(p) < 2 or not p[0].startswith(H2_PREFACE):
                continue
            first = p[0][len(H2_PREFACE) :]
            frames = []
            while len(first) >= 9:
                f, n = Frame.parse_frame_header(memoryview(first[:9]))
                f.parse_body(memoryview(first[9 : 9 + n]))
                frames.append(f)
                first = first[9 + n :]
            for f in frames:
                if isinstance(f, SettingsFrame):
                    settings.append([[k, v] for k, v in f.settings.items()])
                elif isinstance(f, WindowUpdateFrame):
                    updates.add(f.window_increment)
            h, n = Frame.parse_frame_header(memoryview(p[1][:9]))
            h.parse_body(memoryview(p[1][9 : 9 + n]))
            if not isinstance(h, HeadersFrame) or len(p[1]) != 9 + n:
                raise SystemExit("utls_gen: the second record is not one HEADERS frame")
            if "PRIORITY" in h.flags:
                priorities.add((h.stream_weight + 1, h.depends_on, h.exclusive))
            dec = hpack.Decoder()
            dec.max_allowed_table_size = 65536
            headers = [[str(k), str(v)] for k, v in dec.decode(bytes(h.data), raw=False)]
            entry = {"headers": headers, "length": len(p[1])}
            if entry not in requests:
                requests.append(entry)
        if not requests:
            raise SystemExit("utls_gen: tcp-h2: no preface + HEADERS flight was captured")
        auth = next(v for k, v in requests[0]["headers"] if k == ":authority")
        if len(priorities) > 1:
            raise SystemExit(f"utls_gen: HEADERS priorities differ: {sorted(priorities)}")
        prio = next(iter(priorities), None)
        out = {
            "protocol": "h2",
            "authority": auth,
            "settings": _same_everywhere(settings, "h2 settings"),
            "window_update": _one(updates, "connection WINDOW_UPDATE"),
            "priority": (
                None
                if prio is None
                else {"weight": prio[0], "depends_on": prio[1], "exclusive": prio[2]}
            ),
        }
    out["requests"] = requests
    flight = parse_http_flight(out)
    seen = sorted({r["length"] for r in requests})
    if list(flight.request_lengths(flight.authority, headed=False)) != seen:
        raise SystemExit(f"utls_gen: {kind}: the length model does not give back {seen}")
    return out


def _crypto_split(connections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the hello's CRYPTO bytes were shared between the two Initial packets.

    Chromium 156 puts a short head of the hello and its tail in the first packet
    and the middle in the second, the two shares within a few bytes of each
    other. Recorded as the head lengths and the share differences seen.
    """
    heads, diffs = set(), set()
    for c in connections:
        dgs = [bytes.fromhex(x) for x in c["datagrams"]]
        if len(dgs) != 2:
            continue
        spans = []
        for d in dgs:
            covered: set[int] = set()
            for p in qi.open_initial_datagram(d):
                for f in p.frames:
                    if f.kind == "crypto":
                        covered.update(range(f.offset, f.offset + len(f.data)))
            spans.append(covered)
        total = len(spans[0] | spans[1])
        second = sorted(spans[1])
        a, b = second[0], second[-1] + 1
        if set(range(a, b)) != spans[1] or spans[0] != set(range(a)) | set(range(b, total)):
            raise SystemExit("utls_gen: the QUIC CRYPTO split is not head+tail / middle")
        heads.add(a)
        diffs.add(len(spans[1]) - len(spans[0]))
    if not heads:
        raise SystemExit("utls_gen: no two-packet QUIC flight to learn the CRYPTO split from")
    return {
        "kind": "head_tail_then_middle",
        "head_lengths": [min(heads), max(heads)],
        "share_differences": [min(diffs), max(diffs)],
    }


def _one(values: set[int], field: str) -> int:
    if len(values) != 1:
        raise SystemExit(f"utls_gen: {field} differs between captures: {sorted(values)}")
    return next(iter(values))


def _quic_layout(
    connections: Sequence[dict[str, Any]], hellos: Sequence[fp.ParsedHello]
) -> dict[str, Any]:
    per_packet: dict[int, dict[str, set[int]]] = {}
    dcid_lens, scid_lens, first_pns, sizes, tokens, length_sizes = (
        set(),
        set(),
        set(),
        set(),
        set(),
        set(),
    )
    packets_per_flight = set()
    for c in connections:
        dgs = [bytes.fromhex(x) for x in c["datagrams"]]
        packets_per_flight.add(len(dgs))
        index = 0
        for d in dgs:
            sizes.add(len(d))
            for p in qi.open_initial_datagram(d):
                dcid_lens.add(len(p.dcid))
                scid_lens.add(len(p.scid))
                tokens.add(len(p.token))
                if index == 0:
                    first_pns.add(p.packet_number)
                pos = 1 + 4 + 1 + len(p.dcid) + 1 + len(p.scid) + 1 + len(p.token)
                length_sizes.add(1 << (d[pos] >> 6))
                slot = per_packet.setdefault(
                    index,
                    {
                        k: set()
                        for k in ("crypto_frames", "pings", "padding_runs", "pn_length", "pn_delta")
                    },
                )
                slot["crypto_frames"].add(sum(f.kind == "crypto" for f in p.frames))
                slot["pings"].add(sum(f.kind == "ping" for f in p.frames))
                slot["padding_runs"].add(sum(f.kind == "padding" for f in p.frames))
                slot["pn_length"].add(p.pn_length)
                index += 1
    tps = [_transport_parameters(h.body(0x39) or b"") for h in hellos]
    tp_orders = [[("GREASE" if _is_grease_tp(i) else i) for i, _ in t] for t in tps]
    params: list[dict[str, Any]] = []
    for pid, body in tps[0]:
        if _is_grease_tp(pid):
            params.append(
                {
                    "id": "GREASE",
                    "lengths": sorted({len(b) for t in tps for i, b in t if _is_grease_tp(i)}),
                }
            )
        elif pid == 0x0F:
            params.append({"id": pid, "rule": "initial_source_connection_id"})
        elif pid == 0x11:
            params.append({"id": pid, "rule": "version_information", "body": body.hex()})
        else:
            params.append({"id": pid, "body": body.hex()})
    return {
        "dcid_length": _one(dcid_lens, "dcid length"),
        "scid_length": _one(scid_lens, "scid length"),
        "token_length": sorted(tokens)[0],
        "first_packet_number": sorted(first_pns)[0],
        "datagram_size": max(sizes),
        "length_field_size": max(length_sizes),
        "packets_per_hello": sorted(packets_per_flight),
        "packets": [
            {k: sorted(v) for k, v in per_packet[i].items() if k != "pn_delta"}
            for i in sorted(per_packet)
        ],
        "transport_parameters": params,
        "shuffle_transport_parameters": any(o != tp_orders[0] for o in tp_orders),
        "crypto_split": _crypto_split(connections),
    }


# --- self-test ------------------------------------------------------------------------


def self_test(path: Path, n: int = 40) -> dict[str, Any]:
    """JA4 of our generated hellos equals the captured one; JA3 varies as Chrome's."""
    from qnet.htx.tls import generate_hellos, load_template

    tpl = load_template(path)
    quic = tpl.hello.quic
    captured = {fp.ja4(h, quic=quic) for h in tpl.captured_hellos}
    made = generate_hellos(tpl, n)
    ours = {fp.ja4(h, quic=quic) for h in made}
    ja3s = {fp.ja3(h) for h in made}
    ok = (
        len(captured) == 1
        and ours == captured
        and (len(ja3s) > 1 or not tpl.hello.shuffle_extensions)
    )
    return {
        "template": path.name,
        "captured_ja4": sorted(captured),
        "generated_ja4": sorted(ours),
        "captured_ja4_r": sorted({fp.ja4_r(h, quic=quic) for h in tpl.captured_hellos}),
        "generated_ja4_r": sorted({fp.ja4_r(h, quic=quic) for h in made}),
        "distinct_generated_ja3": len(ja3s),
        "ok": ok,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.utls_gen", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--transport", choices=TRANSPORTS, action="append")
    ap.add_argument("--count", type=int, default=6, help="hellos to capture per transport")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument(
        "--no-package-copy", action="store_true", help="do not update qnet/htx/templates/"
    )
    ap.add_argument("--save-captures", type=Path, help="also write the raw captures here")
    ap.add_argument("--from-captures", type=Path, help="derive templates from saved captures")
    ap.add_argument("--self-test", action="store_true", help="only check the existing templates")
    ap.add_argument(
        "--quic-after-initials",
        action="store_true",
        help="only print the client datagrams of full QUIC handshakes (JSON); writes nothing",
    )
    ap.add_argument("--quic-client", choices=("chromium", "qnet"), default="chromium")
    ap.add_argument("--quic-drop", type=int, help="drop client datagram N (from 0)")
    ap.add_argument("--quic-datagrams", type=int, default=10, help="client datagrams listed")
    ap.add_argument(
        "--quic-first-1rtt",
        action="store_true",
        help="only capture Chromium's first 1-RTT packets and update quic.first_1rtt in place",
    )
    args = ap.parse_args(argv)
    if args.quic_first_1rtt:
        binary = ensure_chromium()
        major = chromium_version(binary).split(".")[0]
        name = f"chromium-{major}-quic-h3.json"
        section = _first_1rtt(capture_quic_first_1rtt(binary, args.count))
        paths = [args.out / name] + ([] if args.no_package_copy else [PACKAGE_DIR / name])
        update_first_1rtt(section, paths)
        say(f"quic.first_1rtt: {json.dumps(section)}")
        return 0
    if args.quic_after_initials:
        binary = ensure_chromium() if args.quic_client == "chromium" else ""
        conns = capture_quic_after_initials(
            binary, args.count, args.quic_client, args.quic_drop, args.quic_datagrams
        )
        print(json.dumps(conns, indent=1))
        return 0
    kinds = args.transport or list(TRANSPORTS)
    if args.self_test:
        results = [self_test(p) for p in sorted(args.out.glob("*.json")) if "capture" not in p.name]
        print(json.dumps(results, indent=2))
        return 0 if all(r["ok"] for r in results) else 1
    if args.from_captures:
        saved = json.loads(args.from_captures.read_text())
        version, caps = saved["version"], saved["captures"]
    else:
        binary = ensure_chromium()
        version = chromium_version(binary)
        caps = {}
        for kind in kinds:
            say(f"capturing {kind} from Chromium {version}")
            caps[kind] = (
                capture_quic(binary, args.count)
                if kind == "quic-h3"
                else capture_tcp(binary, kind, args.count)
            )
            if kind == "quic-h3":
                say("capturing Chromium's first 1-RTT packets (aioquic HTTP/3 server, qlog)")
                caps["quic-h3-first-1rtt"] = capture_quic_first_1rtt(binary, args.count)
            say(f"{kind}: {len(caps[kind])} connections")
        if args.save_captures:
            args.save_captures.write_text(json.dumps({"version": version, "captures": caps}))
    major = version.split(".")[0]
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    written = []
    for kind, conns in caps.items():
        if kind == "quic-h3-first-1rtt":
            continue
        template = derive_template(kind, version, conns)
        if kind == "quic-h3" and caps.get("quic-h3-first-1rtt"):
            template["quic"]["first_1rtt"] = _first_1rtt(caps["quic-h3-first-1rtt"])
        name = f"chromium-{major}-{kind}.json"
        text = json.dumps(template, indent=1, sort_keys=False) + "\n"
        (args.out / name).write_text(text)
        if not args.no_package_copy:
            PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
            (PACKAGE_DIR / name).write_text(text)
        written.append(args.out / name)
    for path in written:
        result = self_test(path)
        say(f"wrote {path}: {json.dumps(result)}")
        failed = failed or not result["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
