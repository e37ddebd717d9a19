"""Cell links over real HTX on loopback: one link per peer, units both ways, backoff."""

from __future__ import annotations

import os

import pytest
import trio
from test_htx_transport import Node

from qnet.constants import UNIT_LEN
from qnet.htx import transport as T
from qnet.node.links import CellLink, LinkManager


def test_units_flow_both_ways_on_one_reused_link() -> None:
    async def main() -> None:
        node = Node()
        node_id = os.urandom(32)
        got_b: list[bytes] = []
        got_a: list[bytes] = []
        closed: list[int] = []
        b_ready = trio.Event()

        async def b_units(link: CellLink, units: list[bytes]) -> None:
            got_b.extend(units)
            await mgr_b.send(link.number, [u[::-1] for u in units])
            if len(got_b) >= 100:
                b_ready.set()

        async def a_units(link: CellLink, units: list[bytes]) -> None:
            got_a.extend(units)

        async def on_closed(link: CellLink) -> None:
            closed.append(link.number)

        mgr_b = LinkManager(peer_info=lambda _: None, on_units=b_units, on_closed=on_closed)
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr_b.run)

            async def handler(link: T.HtxLink) -> None:
                await mgr_b.accept(link, None)

            listeners = await nursery.start(T.serve_tcp, handler, node.config)
            port = listeners[0].socket.getsockname()[1]
            mgr_a = LinkManager(
                peer_info=lambda nid: node.peer(port) if nid == node_id else None,
                on_units=a_units,
                on_closed=on_closed,
            )
            await nursery.start(mgr_a.run)
            link = await mgr_a.get(node_id)
            assert await mgr_a.get(node_id) is link  # reused
            units = [os.urandom(UNIT_LEN) for _ in range(100)]
            for i in range(0, 100, 7):
                assert await mgr_a.send(link.number, units[i : i + 7])
            with trio.fail_after(10):
                await b_ready.wait()
                while len(got_a) < 100:
                    await trio.sleep(0.01)
            assert got_b == units and got_a == [u[::-1] for u in units]
            with pytest.raises(LookupError):
                await mgr_a.get(os.urandom(32))
            await mgr_a.close_all()
            with trio.fail_after(5):
                while len(closed) < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_failed_dial_backs_off() -> None:
    async def main() -> None:
        node = Node()
        node_id = os.urandom(32)

        async def ignore(*_: object) -> None:
            return None

        async with trio.open_nursery() as nursery:
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()  # nothing listens there
            mgr = LinkManager(
                peer_info=lambda _: node.peer(port), on_units=ignore, on_closed=ignore
            )
            await nursery.start(mgr.run)
            with pytest.raises(OSError):
                await mgr.get(node_id)
            with pytest.raises(trio.BrokenResourceError, match="backing off"):
                await mgr.get(node_id)
            nursery.cancel_scope.cancel()

    trio.run(main)
