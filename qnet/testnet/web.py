"""The test network's local web server: something real to fetch through the network.

    GET /                 a short page
    GET /bytes/N          N bytes of a fixed pseudo-random stream (N up to 1 GiB)
    GET /sha256/N         the hex SHA-256 of /bytes/N, to check a download
    GET /whoami           the address the request came from (which exit it left by)

Run it as ``python -m qnet.testnet.web PORT``. HTTP/1.1 with keep-alive (h11).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator

import h11
import trio

MAX_BYTES = 1 << 30
CHUNK = 64 * 1024
INDEX = b"<!doctype html><title>testnet</title><p>Hello from the test network's web server.\n"


def pattern(n: int) -> Iterator[bytes]:
    """The body of /bytes/N, in chunks: SHA-256 in counter mode (cheap, not secret)."""
    block = 0
    sent = 0
    buf = bytearray()
    while sent < n:
        while len(buf) < CHUNK:
            buf += hashlib.sha256(block.to_bytes(8, "big")).digest() * 64
            block += 1
        take = min(CHUNK, n - sent)
        yield bytes(buf[:take])
        del buf[:take]
        sent += take


def digest_of(n: int) -> str:
    h = hashlib.sha256()
    for chunk in pattern(n):
        h.update(chunk)
    return h.hexdigest()


def _route(target: str, peer: str = "") -> tuple[int, int | None, bytes]:
    """(status, length of a /bytes body or None, small body)."""
    if target == "/whoami":
        return 200, None, peer.encode() + b"\n"
    if target == "/":
        return 200, None, INDEX
    for prefix in ("/bytes/", "/sha256/"):
        if target.startswith(prefix) and target[len(prefix) :].isdigit():
            n = int(target[len(prefix) :])
            if n > MAX_BYTES:
                break
            if prefix == "/bytes/":
                return 200, n, b""
            return 200, None, digest_of(n).encode() + b"\n"
    return 404, None, b"not found\n"


async def _serve(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    peer = str(stream.socket.getpeername()[0])
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(CHUNK)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.SEND_BODY:
                    return
                continue
            if isinstance(event, h11.Request):
                target = event.target.decode("latin-1")
                status, length, body = _route(target, peer)
                size = length if length is not None else len(body)
                headers = [
                    ("Content-Length", str(size)),
                    ("Content-Type", "application/octet-stream"),
                ]
                response = h11.Response(status_code=status, headers=headers)
                await stream.send_all(conn.send(response))
                if event.method != b"HEAD":
                    chunks = pattern(length) if length is not None else iter([body])
                    for chunk in chunks:
                        await stream.send_all(conn.send(h11.Data(data=chunk)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
            elif isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (h11.RemoteProtocolError, h11.LocalProtocolError, trio.BrokenResourceError):
        return
    finally:
        await stream.aclose()


async def serve(
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(_serve, listeners, task_status=_Started(task_status, bound))


class _Started:
    def __init__(self, status: trio.TaskStatus[int], port: int) -> None:
        self._status, self._port = status, port

    def started(self, value: object = None) -> None:
        self._status.started(self._port)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 8080

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve, port)
            print(f"testnet web server ready on 127.0.0.1:{bound}", flush=True)

    trio.run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
