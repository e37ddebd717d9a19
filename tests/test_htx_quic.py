"""HTX over QUIC (HTTP/3) on real loopback UDP sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from aioquic.h3 import events as h3e
from aioquic.h3.connection import H3Connection
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from test_htx_transport import Node, echo, roundtrip

from qnet.crypto.primitives import X25519Key
from qnet.htx import quic as Q
from qnet.htx import transport as T
from qnet.htx.errors import HtxTimeout, TicketError
from qnet.htx.tls import (
    CHROME_QUIC_TEMPLATE,
    CHROME_TEMPLATE,
    Group,
    TlsClientConfig,
    write_client_hello,
)


@asynccontextmanager
async def serving(
    node: Node, handler: Callable[[T.HtxLink], Awaitable[None]] = echo
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        sock = await nursery.start(Q.serve_quic, handler, node.config)
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()


def test_echo_one_stream_with_checksum() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port, Q.dial_quic(node.peer(port)) as link:
                stream = await link.open_stream()
                payload = os.urandom(3 * 2**20)
                got = await roundtrip(stream, payload)
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    trio.run(main)


def test_hundred_concurrent_streams() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port, Q.dial_quic(node.peer(port)) as link:
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


def test_hybrid_key_exchange_and_peer_key() -> None:
    seen: list[bytes] = []

    async def remember(link: T.HtxLink) -> None:
        seen.append(link.remote_static)
        await echo(link)

    async def main() -> None:
        node = Node()
        client_key = X25519Key.generate()
        with trio.fail_after(10):
            async with (
                serving(node, remember) as port,
                Q.dial_quic(node.peer(port), static_private=client_key.private_bytes) as link,
            ):
                assert link.remote_static == node.link.public_bytes
                wire = link._wire
                assert isinstance(wire, Q._Connection)
                assert wire.quic.tls.qnet_group == Group.X25519MLKEM768  # type: ignore[attr-defined]
                stream = await link.open_stream()
                assert await roundtrip(stream, b"hello") == b"hello"
        assert seen == [client_key.public_bytes]

    trio.run(main)


def test_wrong_ticket_key_gets_the_cover_site() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
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
                with pytest.raises(TicketError, match="405"):
                    async with Q.dial_quic(peer):
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

    monkeypatch.setattr(Q, "build_ticket", once)

    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port:
                async with Q.dial_quic(node.peer(port)) as link:
                    stream = await link.open_stream()
                    assert await roundtrip(stream, b"first") == b"first"
                with pytest.raises(TicketError):
                    async with Q.dial_quic(node.peer(port)):
                        pass

    trio.run(main)


# --- a plain HTTP/3 client (aioquic's stock stack, no ticket) -------------------------------


async def h3_request(
    port: int, method: str, path: str, extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[dict[bytes, bytes], bytes]:
    """One request from a minimal HTTP/3 client; returns (headers, body)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="www.example.com")
    config.verify_mode = ssl.CERT_NONE
    quic = QuicConnection(configuration=config)
    h3 = H3Connection(quic)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    addr = ("127.0.0.1", port)
    headers: dict[bytes, bytes] = {}
    body = bytearray()
    done = False
    sid: int | None = None

    async def flush() -> None:
        for data, to in quic.datagrams_to_send(trio.current_time()):
            await sock.sendto(data, to)

    quic.connect(addr, now=trio.current_time())
    await flush()
    with sock:
        while not done:
            timer = quic.get_timer()
            with trio.move_on_at(timer if timer is not None else trio.current_time() + 5) as sc:
                data, _ = await sock.recvfrom(65536)
                quic.receive_datagram(data, addr, trio.current_time())
            if sc.cancelled_caught:
                quic.handle_timer(trio.current_time())
            while (ev := quic.next_event()) is not None:
                if isinstance(ev, qe.HandshakeCompleted) and sid is None:
                    sid = quic.get_next_available_stream_id()
                    h3.send_headers(
                        sid,
                        [
                            (b":method", method.encode()),
                            (b":scheme", b"https"),
                            (b":authority", b"www.example.com"),
                            (b":path", path.encode()),
                            *(extra or []),
                            (b"user-agent", b"curl/8.5.0"),
                        ],
                        end_stream=True,
                    )
                if isinstance(ev, qe.ConnectionTerminated):
                    raise AssertionError(f"connection closed: {ev.reason_phrase}")
                for h in h3.handle_event(ev):
                    if isinstance(h, h3e.HeadersReceived) and h.stream_id == sid:
                        headers.update(dict(h.headers))
                        done = done or h.stream_ended
                    elif isinstance(h, h3e.DataReceived) and h.stream_id == sid:
                        body += h.data
                        done = done or h.stream_ended
            await flush()
        quic.close()
        await flush()
    return headers, bytes(body)


def test_plain_http3_get_sees_the_cover_site() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port:
                headers, body = await h3_request(port, "GET", "/")
                assert headers[b":status"] == b"200"
                assert headers[b"server"] == b"nginx"
                assert int(headers[b"content-length"]) == len(body) > 0
                assert body.startswith(b"<!DOCTYPE html>")
                blob = b"".join(k + v for k, v in headers.items()) + body
                assert b"qnet" not in blob.lower() and b"htx" not in blob.lower()

                missing, page = await h3_request(port, "GET", "/nope")
                assert missing[b":status"] == b"404" and b"404 Not Found" in page

    trio.run(main)


def test_extended_connect_without_ticket_gets_the_405_page() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port:
                headers, body = await h3_request(
                    port, "CONNECT", "/", [(b":protocol", b"websocket")]
                )
                assert headers[b":status"] == b"405"
                assert body == node.config.site.error_page(405)

    trio.run(main)


def test_garbage_datagrams_do_not_disturb_other_connections() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with serving(node) as port, Q.dial_quic(node.peer(port)) as link:
                junk = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                with junk:
                    for size in (1, 20, 100, 1200, 1500):
                        await junk.sendto(os.urandom(size), ("127.0.0.1", port))
                    # an Initial-looking header with a garbage payload
                    fake = bytes([0xC3, 0, 0, 0, 1, 8]) + os.urandom(8) + b"\x08" + os.urandom(8)
                    await junk.sendto(fake + os.urandom(1200), ("127.0.0.1", port))
                stream = await link.open_stream()
                assert await roundtrip(stream, b"still here") == b"still here"
                headers, _ = await h3_request(port, "GET", "/")
                assert headers[b":status"] == b"200"

    trio.run(main)


def test_dial_times_out_against_a_silent_port() -> None:
    async def main() -> None:
        node = Node()
        silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with silent:
            await silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            with trio.fail_after(5), pytest.raises(HtxTimeout):
                async with Q.dial_quic(node.peer(port), timeout=0.5):
                    pass

    trio.run(main)


def test_quic_hello_comes_from_the_template_writer() -> None:
    params = b"\x01\x02\x03"
    hello = write_client_hello(
        CHROME_QUIC_TEMPLATE,
        server_name="www.example.com",
        key_shares={Group.X25519MLKEM768: bytes(1216), Group.X25519: bytes(32)},
        quic_transport_parameters=params,
    )
    assert hello[38] == 0  # empty legacy_session_id (RFC 9001 §8.4)
    assert b"\x00\x39\x00\x03" + params in hello
    assert b"\x02h3" in hello and b"\x02h2" not in hello
    with pytest.raises(ValueError, match="quic_transport_parameters"):
        write_client_hello(
            CHROME_QUIC_TEMPLATE,
            server_name=None,
            key_shares={Group.X25519MLKEM768: bytes(1216), Group.X25519: bytes(32)},
        )


def test_dial_refuses_a_tcp_template() -> None:
    async def main() -> None:
        node = Node()
        with trio.fail_after(5):
            async with serving(node) as port:
                config = TlsClientConfig(server_name="www.example.com", template=CHROME_TEMPLATE)
                with pytest.raises(ValueError, match="QUIC template"):
                    async with Q.dial_quic(node.peer(port), tls_config=config):
                        pass

    trio.run(main)
