"""HTX over real loopback sockets: dial, serve, streams, tickets, the cover site."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.htx import transport as T
from qnet.htx.errors import TicketError
from qnet.htx.tls import make_self_signed


class Node:
    """A node's HTX keys, as its descriptor would publish them."""

    def __init__(self) -> None:
        self.link = X25519Key.generate()
        self.mlkem = MLKEM768Key.generate()
        self.ticket = X25519Key.generate()
        cert, key = make_self_signed("www.example.com")
        self.config = T.ServerConfig(
            link_private=self.link.private_bytes,
            mlkem=self.mlkem,
            ticket_keys={3: self.ticket},
            certificate_chain=(cert,),
            certificate_key=key,
        )

    def peer(self, port: int, **kw: Any) -> T.PeerInfo:
        return T.PeerInfo(
            host="127.0.0.1",
            port=port,
            link_public=self.link.public_bytes,
            mlkem_public=self.mlkem.public_bytes,
            ticket_public=self.ticket.public_bytes,
            ticket_key_id=3,
            server_name="www.example.com",
            **kw,
        )


async def echo(link: T.HtxLink) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await link.accept_stream()
            except trio.EndOfChannel:
                return
            nursery.start_soon(_echo_stream, stream)


async def _echo_stream(stream: T.HtxStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


@asynccontextmanager
async def serving(
    node: Node, handler: Callable[[T.HtxLink], Awaitable[None]] = echo
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(T.serve_tcp, handler, node.config)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def roundtrip(stream: T.HtxStream, payload: bytes) -> bytes:
    async with trio.open_nursery() as nursery:

        async def writer() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        nursery.start_soon(writer)
        got = bytearray()
        while data := await stream.receive_some():
            got += data
    return bytes(got)


def test_echo_one_stream() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node) as port, T.dial_tcp(node.peer(port)) as link:
            stream = await link.open_stream()
            payload = os.urandom(300_000)
            assert await roundtrip(stream, payload) == payload

    trio.run(main)


def test_hundred_concurrent_streams() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node) as port, T.dial_tcp(node.peer(port)) as link:
            results: dict[int, bool] = {}

            async def one(i: int) -> None:
                stream = await link.open_stream()
                payload = hashlib.sha256(str(i).encode()).digest() * (50 + i)
                results[i] = await roundtrip(stream, payload) == payload

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            assert len(results) == 100 and all(results.values())

    trio.run(main)


def test_server_learns_a_fresh_client_key_each_time() -> None:
    seen: list[bytes] = []

    async def remember(link: T.HtxLink) -> None:
        seen.append(link.remote_static)

    async def main() -> None:
        node = Node()
        async with serving(node, remember) as port:
            for _ in range(2):
                async with T.dial_tcp(node.peer(port)) as link:
                    await trio.sleep(0.05)
                    del link
            await trio.sleep(0.1)

    trio.run(main)
    assert len(seen) == 2 and seen[0] != seen[1]


def test_wrong_ticket_key_gets_the_cover_site() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node) as port:
            other = X25519Key.generate()
            peer = T.PeerInfo(
                host="127.0.0.1",
                port=port,
                link_public=node.link.public_bytes,
                mlkem_public=node.mlkem.public_bytes,
                ticket_public=other.public_bytes,
                ticket_key_id=3,
                server_name="www.example.com",
            )
            with pytest.raises(TicketError):
                async with T.dial_tcp(peer):
                    pass

    trio.run(main)


def test_replayed_ticket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from qnet.htx import ticket as ticket_mod

    made: list[str] = []
    real = ticket_mod.build_ticket

    def once(*args: Any) -> str:
        if not made:
            made.append(real(*args))
        return made[0]

    monkeypatch.setattr(T, "build_ticket", once)

    async def main() -> None:
        node = Node()
        async with serving(node) as port:
            async with T.dial_tcp(node.peer(port)) as link:
                stream = await link.open_stream()
                assert await roundtrip(stream, b"first") == b"first"
            with pytest.raises(TicketError):
                async with T.dial_tcp(node.peer(port)):
                    pass

    trio.run(main)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_probe_with_curl_sees_a_web_site() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node) as port:
            for flags in (["--http1.1"], ["--http2"]):
                proc = await trio.run_process(
                    [
                        "curl",
                        "-vsk",
                        "-i",
                        "--max-time",
                        "30",
                        *flags,
                        f"https://127.0.0.1:{port}/",
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                out = proc.stdout.decode("latin-1")
                assert proc.returncode == 0, proc.stderr.decode("latin-1")
                assert out.split("\r\n", 1)[0].split()[1] == "200"
                assert "qnet" not in out.lower()
                ws = await trio.run_process(
                    [
                        "curl",
                        "-sk",
                        "-i",
                        "--max-time",
                        "10",
                        "--http1.1",
                        "-H",
                        "Connection: Upgrade",
                        "-H",
                        "Upgrade: websocket",
                        "-H",
                        "Sec-WebSocket-Version: 13",
                        "-H",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        f"https://127.0.0.1:{port}/",
                    ],
                    capture_stdout=True,
                    check=False,
                )
                assert b" 101 " not in ws.stdout.split(b"\r\n", 1)[0]
                assert b"qnet" not in ws.stdout.lower()

    trio.run(main)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_sees_a_web_server() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node) as port:
            proc = await trio.run_process(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-servername",
                    "www.example.com",
                    "-alpn",
                    "http/1.1",
                    "-quiet",
                ],
                stdin=b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert proc.stdout.startswith(b"HTTP/1.1 200"), proc.stdout[:200]
            assert b"qnet" not in proc.stdout.lower()

    trio.run(main)


def test_http11_tunnel_when_the_client_offers_only_http11() -> None:
    from qnet.htx.tls import TlsClientConfig

    async def main() -> None:
        node = Node()
        async with serving(node) as port:
            config = TlsClientConfig(server_name="www.example.com", alpn=("http/1.1",))
            async with T.dial_tcp(node.peer(port), tls_config=config) as link:
                stream = await link.open_stream()
                assert await roundtrip(stream, b"x" * 70_000) == b"x" * 70_000

    trio.run(main)


def test_one_bad_connection_does_not_disturb_others() -> None:
    failures: list[str] = []

    async def main() -> None:
        node = Node()
        node.config = T.ServerConfig(
            **{**_fields(node.config), "on_handshake_failure": failures.append}
        )
        async with serving(node) as port, T.dial_tcp(node.peer(port)) as link:
            junk = await trio.open_tcp_stream("127.0.0.1", port)
            await junk.send_all(b"\x16\x03\x01\x00\x05hello-not-tls" * 10)
            stream = await link.open_stream()
            assert await roundtrip(stream, b"still here") == b"still here"
            with trio.fail_after(5):
                while not failures:
                    await trio.sleep(0.01)
            await junk.aclose()

    trio.run(main)
    assert failures == ["TlsError"]


async def _sink(link: T.HtxLink) -> None:
    """Hash everything on the first stream; answer digest ‖ length, then FIN."""
    stream = await link.accept_stream()
    digest, total = hashlib.sha256(), 0
    while data := await stream.receive_some():
        digest.update(data)
        total += len(data)
    await stream.send_all(digest.digest() + total.to_bytes(8, "big"))
    await stream.send_eof()


async def _send_and_check(link: T.HtxLink, total: int, during: Callable[[int], None]) -> None:
    stream = await link.open_stream()
    chunk = hashlib.sha256(b"chunk").digest() * 2048  # 64 KiB
    digest, sent = hashlib.sha256(), 0
    while sent < total:
        await stream.send_all(chunk)
        digest.update(chunk)
        sent += len(chunk)
        during(sent)
    await stream.send_eof()
    answer = bytearray()
    while data := await stream.receive_some():
        answer += data
    assert bytes(answer) == digest.digest() + total.to_bytes(8, "big")


def test_one_gibibyte_through_one_stream() -> None:
    async def main() -> None:
        node = Node()
        async with serving(node, _sink) as port, T.dial_tcp(node.peer(port)) as link:
            await _send_and_check(link, 2**30, lambda _: None)

    trio.run(main)


def test_key_updates_mid_transfer() -> None:
    # HTX frame keys roll every 64 frames on both sides; the TLS layer under it also
    # rekeys (KeyUpdate) several times during the transfer.
    from qnet.htx.session import HtxConfig

    async def main() -> None:
        node = Node()
        quick = HtxConfig(rekey_frames=64)
        node.config = T.ServerConfig(**{**_fields(node.config), "session_config": quick})
        async with (
            serving(node, _sink) as port,
            T.dial_tcp(node.peer(port), session_config=quick) as link,
        ):

            def rekey_tls(sent: int) -> None:
                if sent % (2 * 2**20) == 0:
                    link._wire.tls.key_update()  # type: ignore[attr-defined]

            await _send_and_check(link, 16 * 2**20, rekey_tls)
            assert link.session.send_generation > 10

    trio.run(main)


def _fields(config: T.ServerConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in T.ServerConfig.__dataclass_fields__}


def test_concurrent_senders_all_get_send_room() -> None:
    # Several streams blocked on flow control at once must all wake as windows open.
    async def main() -> None:
        node = Node()
        async with serving(node) as port, T.dial_tcp(node.peer(port)) as link:
            ok: list[bool] = []

            async def one(i: int) -> None:
                stream = await link.open_stream()
                payload = bytes([i]) * (2 * 2**20)
                ok.append(await roundtrip(stream, payload) == payload)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(one, i)
            assert ok == [True] * 4

    trio.run(main)


def test_a_stalled_handshake_times_out() -> None:
    from qnet.htx.errors import HtxTimeout

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        node = Node()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, silent, 0)
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(HtxTimeout):
                async with T.dial_tcp(node.peer(port), timeout=0.5):
                    pass
            nursery.cancel_scope.cancel()

    trio.run(main)
