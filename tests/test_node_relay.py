"""Relay and exit services in-process over real HTX: a client builds a 3-hop circuit
by hand (the sans-I/O client table on a link) and talks to the exit."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import trio
from test_htx_transport import Node

from qnet.htx import transport as T
from qnet.mix import sphinx as S
from qnet.node.links import CellLink, LinkManager
from qnet.node.relay import RelayService
from qnet.routing import circuit as C
from qnet.routing.cells import RelayCell, RelayCommand
from qnet.routing.client import CellReceived, CircuitOpened, ClientCircuits
from qnet.routing.streams import EndReason


@dataclass
class Hop:
    htx: Node
    mix: S.MixKey
    node_id: bytes
    port: int = 0


class ToyDirectory:
    def __init__(self, hops: list[Hop]) -> None:
        self.hops = hops

    def peer_info(self, node_id: bytes) -> T.PeerInfo | None:
        for hop in self.hops:
            if hop.node_id == node_id:
                return hop.htx.peer(hop.port)
        return None

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        for hop in self.hops:
            if hop.htx.link.public_bytes == link_public:
                return hop.node_id
        return None


def loopback_only(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    return ip.is_loopback and port != 9


async def start_hops(nursery: trio.Nursery, n: int = 3) -> tuple[list[Hop], list[RelayService]]:
    hops = [Hop(htx=Node(), mix=S.MixKey.generate(), node_id=bytes([i + 1]) * 32) for i in range(n)]
    directory = ToyDirectory(hops)
    services = []
    for i, hop in enumerate(hops):
        service = RelayService(
            mix_keys=lambda hop=hop: [hop.mix],
            directory=directory,
            static_private=hop.htx.link.private_bytes,
            exit_policy=loopback_only if i == n - 1 else None,
        )
        await nursery.start(service.run)

        async def handler(link: T.HtxLink, service: RelayService = service) -> None:
            await service.handle_link(None, link)

        listeners = await nursery.start(T.serve_tcp, handler, hop.htx.config)
        hop.port = listeners[0].socket.getsockname()[1]
        services.append(service)
    return hops, services


def test_circuit_through_three_relay_services_reaches_the_exit() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            hops, services = await start_hops(nursery)
            events: list[object] = []
            got = trio.Event()
            table = ClientCircuits(dialed=True)

            async def on_units(link: CellLink, units: list[bytes]) -> None:
                evs, replies = table.receive_units(units, trio.current_time())
                events.extend(evs)
                if replies:
                    await client_links.send(link.number, replies)
                got.set()

            async def on_closed(link: CellLink) -> None:
                pass

            client_links = LinkManager(
                peer_info=ToyDirectory(hops).peer_info, on_units=on_units, on_closed=on_closed
            )
            await nursery.start(client_links.run)
            entry = await client_links.get(hops[0].node_id)
            path = [C.HopRoute(node_id=h.node_id, onion_public=h.mix.public_bytes) for h in hops]
            cid, unit = table.create(path, trio.current_time())
            await client_links.send(entry.number, [unit])
            with trio.fail_after(10):
                while not any(isinstance(e, CircuitOpened) for e in events):
                    got = trio.Event()
                    await got.wait()

            # The exit refuses a destination its policy forbids, with the right reason.
            begin = RelayCell(command=RelayCommand.BEGIN, stream_id=1, data=b"127.0.0.1:9")
            await client_links.send(entry.number, table.send(cid, [begin]))
            with trio.fail_after(10):
                while not any(isinstance(e, CellReceived) for e in events):
                    got = trio.Event()
                    await got.wait()
            end = next(e.cell for e in events if isinstance(e, CellReceived))
            assert end.command is RelayCommand.END and end.data == bytes([EndReason.EXIT_POLICY])
            assert [s.engine.circuit_count for s in services] == [1, 1, 1]
            nursery.cancel_scope.cancel()

    trio.run(main)
