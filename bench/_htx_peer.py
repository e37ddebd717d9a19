"""The other process of ``bench/htx.py``: an HTX node, or a client that holds idle links.

Not meant to be run by hand. Two modes, both driven over stdin/stdout with one JSON
object per line:

``serve``
    Makes fresh node keys, then listens on loopback with HTX over TCP, HTX over QUIC
    (when ``qnet.htx.quic`` imports and starts), a plain Trio TCP sink, and a plain
    TCP port that accepts and closes. Prints one line with the ports and the public
    keys. Every HTX stream and every plain sink connection is read to its end and
    answered with the hex SHA-256 of what arrived. Commands on stdin: ``links``
    (answers ``{"links": n}``, the HTX links currently open); EOF or ``quit`` ends it.

``idle-client``
    Reads the server's line (from ``serve``) and ``{"targets": [...], "parallel": p,
    "cap_seconds": s}`` from stdin, dials one warm-up link and closes it, prints
    ``{"event": "ready"}`` and waits for a line. Then, for each target, opens HTX/TCP
    links (no streams, kept open) until that many are open, at most ``p`` handshakes
    at once and at most ``s`` seconds per target, prints
    ``{"event": "reached", ...}`` and waits for a line before the next target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

import trio  # noqa: E402

from qnet.crypto.primitives import MLKEM768Key, X25519Key  # noqa: E402
from qnet.htx import transport as T  # noqa: E402
from qnet.htx.ticket import TicketConfig  # noqa: E402
from qnet.htx.tls import make_self_signed  # noqa: E402

TICKET_KEY_ID = 7
SERVER_NAME = "www.example.com"
READ = 65536

#: The bench dials thousands of links from 127.0.0.1, far past the per-/24 and
#: global ticket rate limits a real node keeps; they are lifted here, nothing else.
BENCH_TICKETS = TicketConfig(
    rate_burst=1e12,
    rate_per_second=1e12,
    global_burst=1e12,
    global_rate_per_second=1e12,
)


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    """One line from stdin ("" at EOF), read in a worker thread."""
    line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line


def peer_info(info: dict[str, Any], *, port: int) -> T.PeerInfo:
    return T.PeerInfo(
        host="127.0.0.1",
        port=port,
        link_public=bytes.fromhex(info["link_public"]),
        mlkem_public=bytes.fromhex(info["mlkem_public"]),
        ticket_public=bytes.fromhex(info["ticket_public"]),
        ticket_key_id=int(info["ticket_key_id"]),
        server_name=SERVER_NAME,
    )


# --- serve --------------------------------------------------------------------------------


async def _digest_reply(stream: T.HtxStream) -> None:
    h = hashlib.sha256()
    try:
        while data := await stream.receive_some(READ):
            h.update(data)
        await stream.send_all(h.hexdigest().encode())
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve() -> None:
    link = X25519Key.generate()
    mlkem = MLKEM768Key.generate()
    ticket = X25519Key.generate()
    cert, key = make_self_signed(SERVER_NAME)
    config = T.ServerConfig(
        link_private=link.private_bytes,
        mlkem=mlkem,
        ticket_keys={TICKET_KEY_ID: ticket},
        certificate_chain=(cert,),
        certificate_key=key,
        ticket_config=BENCH_TICKETS,
    )
    live = 0

    async def handler(htx: T.HtxLink) -> None:
        nonlocal live
        live += 1
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await htx.accept_stream()
                    except trio.EndOfChannel:
                        return
                    nursery.start_soon(_digest_reply, stream)
        finally:
            live -= 1

    async def plain_sink(sock: trio.SocketStream) -> None:
        h = hashlib.sha256()
        try:
            while data := await sock.receive_some(READ):
                h.update(data)
            await sock.send_all(h.hexdigest().encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sock.aclose()

    async def plain_close(sock: trio.SocketStream) -> None:
        await sock.aclose()

    info: dict[str, Any] = {
        "nofile": raise_nofile(),
        "link_public": link.public_bytes.hex(),
        "mlkem_public": mlkem.public_bytes.hex(),
        "ticket_public": ticket.public_bytes.hex(),
        "ticket_key_id": TICKET_KEY_ID,
    }
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(T.serve_tcp, handler, config)
        info["htx_port"] = listeners[0].socket.getsockname()[1]
        for name, fn in (("plain_port", plain_sink), ("connect_port", plain_close)):
            lst = await nursery.start(trio.serve_tcp, fn, 0)
            info[name] = lst[0].socket.getsockname()[1]
        try:
            from qnet.htx.quic import serve_quic

            udp = await nursery.start(serve_quic, handler, config)
            info["quic_port"] = udp.getsockname()[1]
        except Exception as exc:  # noqa: BLE001 - reported as a row that is unavailable
            info["quic_error"] = f"{type(exc).__name__}: {exc}"
        emit(info)
        while True:
            line = (await read_line()).strip()
            if line == "links":
                emit({"links": live})
            elif line in ("", "quit"):
                break
        nursery.cancel_scope.cancel()


# --- idle-client --------------------------------------------------------------------------


async def idle_client() -> None:
    nofile = raise_nofile()
    info = json.loads(await read_line())
    plan = json.loads(await read_line())
    peer = peer_info(info, port=int(info["htx_port"]))
    parallel = int(plan["parallel"])
    done_send, done_recv = trio.open_memory_channel[None](math.inf)
    opened = failed = in_flight = 0
    errors: dict[str, int] = {}

    async def hold() -> None:
        nonlocal opened, failed
        up = False
        try:
            async with T.dial_tcp(peer):
                up = True
                opened += 1
                done_send.send_nowait(None)
                await trio.sleep_forever()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            if up:
                opened -= 1  # an open link broke: it is no longer held
                return
            failed += 1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            done_send.send_nowait(None)

    async with T.dial_tcp(peer):
        pass  # warm-up: first-use imports and allocations belong to the baseline
    emit({"event": "ready", "nofile": nofile})
    await read_line()
    async with trio.open_nursery() as nursery:
        for target in plan["targets"]:
            start = time.perf_counter()
            with trio.move_on_after(float(plan["cap_seconds"])) as scope:
                while opened < target and failed <= max(50, target // 10):
                    while in_flight < parallel and opened + in_flight < target:
                        nursery.start_soon(hold)
                        in_flight += 1
                    await done_recv.receive()
                    in_flight -= 1
            emit(
                {
                    "event": "reached",
                    "target": target,
                    "open": opened,
                    "failed": failed,
                    "errors": errors,
                    "seconds": round(time.perf_counter() - start, 2),
                    "capped": scope.cancelled_caught,
                }
            )
            await read_line()
        nursery.cancel_scope.cancel()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "serve":
        trio.run(serve)
    elif mode == "idle-client":
        trio.run(idle_client)
    else:
        raise SystemExit("usage: _htx_peer.py serve|idle-client")


if __name__ == "__main__":
    main()
