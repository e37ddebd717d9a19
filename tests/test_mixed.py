"""Mixed mode end to end: in-process nodes over real HTX links, the real mix role
(``MixService``) on every node, a gateway, a mixed-mode exit, and a client."""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
import trio
from test_htx_transport import Node

from qnet.client.cover import CoverRates, CoverScheduler, Tick
from qnet.client.mixed import MixClient, MixedConfig, MixedConnector, NodeKey
from qnet.client.proxy import ProxyConfig, serve_socks
from qnet.client.socks import IsolationFlags, SocksConfig
from qnet.constants import MESSAGE_LEN
from qnet.errors import MalformedPacket
from qnet.htx import transport as T
from qnet.mix import sphinx as S
from qnet.mix.arq import Arq, ArqConfig
from qnet.mix.delivery import EXIT_ADDRESS, DeliveryRouter
from qnet.mix.frames import Flag, Frame, Kind, decode_frame, max_data
from qnet.mix.gateway import Gateway
from qnet.mix.mixnode import MixSettings
from qnet.node.mix import MixService
from qnet.node.mixed_exit import MixedExit
from qnet.node.relay import RelayService


@dataclass
class MixNode:
    htx: Node
    key: S.MixKey
    node_id: bytes
    layer: int | None = None  # 0..2 for mixnodes; None for the gateway and the exit
    port: int = 0
    mix: MixService | None = None
    router: DeliveryRouter = field(default_factory=DeliveryRouter)


class Topology:
    def __init__(self, nodes: list[MixNode], delay_ms: int = 1) -> None:
        self.nodes = nodes
        self._params = {"mix_delay_mean_ms": delay_ms}

    @property
    def params(self) -> Mapping[str, int]:
        return self._params

    def layer(self, layer: int) -> Sequence[NodeKey]:
        return [(n.node_id, n.key.public_bytes) for n in self.nodes if n.layer == layer]

    def exits(self) -> Sequence[NodeKey]:
        return [
            (n.node_id, n.key.public_bytes) for n in self.nodes if EXIT_ADDRESS in n.router.services
        ]

    def mix_key(self, node_id: bytes) -> bytes | None:
        return next((n.key.public_bytes for n in self.nodes if n.node_id == node_id), None)

    def peer_info(self, node_id: bytes) -> T.PeerInfo | None:
        return next((n.htx.peer(n.port) for n in self.nodes if n.node_id == node_id), None)

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        return next((n.node_id for n in self.nodes if n.htx.link.public_bytes == link_public), None)


def loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    return ip.is_loopback


@dataclass
class Net:
    topology: Topology
    gateways: list[MixNode]
    exit: MixNode
    drop_exit_packets: list[float] = field(default_factory=list)  # loss probability holder


async def start_net(nursery: trio.Nursery, *, loss: float = 0.0, seed: int = 7) -> Net:
    """3 layers × 2 mixnodes, two gateways, one mixed-mode exit (all with the mix role)."""
    layers = [0, 0, 1, 1, 2, 2, None, None, None]
    nodes = [
        MixNode(htx=Node(), key=S.MixKey.generate(), node_id=bytes([i + 1]) * 32, layer=layer)
        for i, layer in enumerate(layers)
    ]
    topology = Topology(nodes)
    gateways, exit_node = nodes[6:8], nodes[8]
    lossy = random.Random(seed)
    settings = MixSettings(workers=1, epoch_seconds=60, link_rate=1e6, link_burst=100_000)
    for node in nodes:
        mix = MixService(settings, mix_keys=lambda node=node: [node.key], delivery=node.router)
        node.mix = mix
        service = RelayService(
            mix_keys=lambda node=node: [node.key],
            directory=topology,
            static_private=node.htx.link.private_bytes,
            on_sphinx=mix.receive,
            on_link_closed=mix.link_closed,
        )
        mix.attach(service.links)
        node.router.gateway = Gateway(mix.push, trio.current_time)
        if node is exit_node:

            def send_packet(hop: bytes, packet: bytes, mix: MixService = mix) -> None:
                if loss and lossy.random() < loss:
                    return  # the injected loss: a reply that never leaves the exit
                mix.send_packet(hop, packet)

            node.router.services[EXIT_ADDRESS] = MixedExit(loopback, send_packet)
        await nursery.start(service.run)
        await nursery.start(mix.run)

        async def handler(link: T.HtxLink, service: RelayService = service) -> None:
            await service.handle_link(None, link)

        listeners = await nursery.start(T.serve_tcp, handler, node.htx.config)
        node.port = listeners[0].socket.getsockname()[1]
    return Net(topology, gateways, exit_node)


def fast_config(**kw: object) -> MixedConfig:
    base: dict[str, object] = {
        "delay_mean_s": 0.001,
        "rates": CoverRates(payload_per_s=1500.0, loop_per_s=20.0, drop_per_s=20.0),
        "arq": ArqConfig(mss=max_data(1), window=64, rto_initial=1.0, rto_min=0.3),
        "probe_interval": 0.5,
    }
    base.update(kw)
    return MixedConfig(**base)  # type: ignore[arg-type]


async def blob_server(nursery: trio.Nursery, blob: bytes) -> int:
    """Reads one request line, answers with ``blob``, closes."""

    async def serve(sock: trio.SocketStream) -> None:
        got = b""
        while b"\n" not in got:
            data = await sock.receive_some(4096)
            if not data:
                return
            got += data
        await sock.send_all(blob)
        await sock.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def socks5_connect(port: int, host: str, dport: int, user: bytes) -> trio.SocketStream:
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    await sock.send_all(b"\x05\x01\x02")
    assert await sock.receive_some(2) == b"\x05\x02"
    await sock.send_all(b"\x01" + bytes([len(user)]) + user + b"\x01x")
    assert await sock.receive_some(2) == b"\x01\x00"
    addr = ipaddress.IPv4Address(host).packed
    await sock.send_all(b"\x05\x01\x00\x01" + addr + struct.pack(">H", dport))
    reply = b""
    while len(reply) < 10:
        reply += await sock.receive_some(10 - len(reply))
    assert reply[1] == 0, f"SOCKS reply {reply[1]}"
    return sock


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


# --- end to end ---------------------------------------------------------------------------------


def test_mixed_fetch_of_one_mebibyte_through_the_socks_proxy() -> None:
    blob = random.Random(1).randbytes(1 << 20)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = await start_net(nursery)
            port = await blob_server(nursery, blob)
            client = MixClient(
                net.topology, net.gateways[0].node_id, config=fast_config(), rng=random.Random(3)
            )
            await nursery.start(client.run)
            socks = SocksConfig(isolation=IsolationFlags.SOCKS_AUTH)
            listeners = await nursery.start(
                functools.partial(
                    serve_socks, MixedConnector(client), "127.0.0.1", 0, config=config_for(socks)
                )
            )
            sport = listeners[0].socket.getsockname()[1]
            with trio.fail_after(45):
                sock = await socks5_connect(sport, "127.0.0.1", port, b"mix-1")
                await sock.send_all(b"GET /blob\n")
                got = await read_all(sock)
            assert got == blob
            assert client.cover.real > 718 // 2  # 718 replies need SURBs, two per packet
            assert client.loops_returned > 0
            exit_counts = net.exit.router.services[EXIT_ADDRESS]
            assert isinstance(exit_counts, MixedExit)
            assert exit_counts.counts["connected"] == 1
            nursery.cancel_scope.cancel()

    trio.run(main)


def config_for(socks: SocksConfig) -> ProxyConfig:
    return ProxyConfig(socks=socks)


def test_arq_recovers_from_lost_packets() -> None:
    blob = random.Random(2).randbytes(200_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = await start_net(nursery, loss=0.1)
            port = await blob_server(nursery, blob)
            client = MixClient(
                net.topology, net.gateways[1].node_id, config=fast_config(), rng=random.Random(5)
            )
            forward_loss = random.Random(11)
            send = client.send

            async def lossy_send(packet: tuple[bytes, bytes]) -> None:
                if forward_loss.random() < 0.1:
                    return  # the injected loss on the way out
                await send(packet)

            client.send = lossy_send  # type: ignore[method-assign]
            await nursery.start(client.run)
            with trio.fail_after(45):
                stream = await client.open_stream("127.0.0.1", port)
                await stream.send_all(b"GET\n")
                got = await read_all(stream)
            assert got == blob
            exit_handler = net.exit.router.services[EXIT_ADDRESS]
            assert isinstance(exit_handler, MixedExit)
            assert stream.arq.retransmissions + exit_retransmissions(exit_handler) > 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def exit_retransmissions(handler: MixedExit) -> int:
    return handler.counts["retransmitted"]


def test_refused_destination_is_a_connect_error() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = await start_net(nursery)
            client = MixClient(
                net.topology, net.gateways[0].node_id, config=fast_config(), rng=random.Random(9)
            )
            await nursery.start(client.run)
            from qnet.client.proxy import ConnectError

            with trio.fail_after(30), pytest.raises(ConnectError) as info:
                await client.open_stream("192.0.2.1", 80)  # refused by the exit policy
            assert info.value.reason.name == "EXIT_POLICY"
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- sans-I/O pieces ----------------------------------------------------------------------------


def test_frame_round_trip_and_refusals() -> None:
    frame = Frame(
        kind=Kind.STREAM,
        conn_id=bytes(range(16)),
        flags=Flag.ACK | Flag.FIN,
        seq=7,
        ack=3,
        sack=0b101,
        credit=12,
        data=b"hello",
    )
    raw = frame.encode()
    assert len(raw) == MESSAGE_LEN
    assert decode_frame(raw) == frame
    assert max_data(0) == 1460 and max_data(1) == 836 and max_data(2) == 212
    for bad in (raw[:-1], b"\x09" + raw[1:], raw[:1] + b"\x80" + raw[2:], raw[:-1] + b"\x01"):
        with pytest.raises(MalformedPacket):
            decode_frame(bad)


def test_arq_reorders_acknowledges_and_retransmits() -> None:
    cfg = ArqConfig(mss=10, window=4, rto_initial=1.0, rto_min=0.5)
    a, b = Arq(cfg), Arq(cfg)
    a.send(bytes(range(50)))
    a.close()
    sent = [a.next_segment(0.0) for _ in range(5)]
    assert sent[4] is None  # the window is full
    segs = [s for s in sent if s is not None]
    for seg in reversed(segs[1:]):  # the first one is lost, the rest arrive out of order
        b.on_segment(seg.seq, seg.flags, seg.data, 0.1)
    assert b.take_received() == []
    ack, sack = b.ack_fields()
    assert (ack, sack) == (0, 0b111)
    a.on_ack(ack, sack, 0.2)
    assert a.in_flight == 1
    assert a.next_segment(0.5) is not None  # a new segment fits in the window again
    again = a.next_segment(1.5)  # the lost one's timer ran out
    assert again is not None and again.seq == 0 and again.transmissions == 2
    b.on_segment(again.seq, again.flags, again.data, 1.6)
    data = b"".join(d for _, d in b.take_received())
    assert data == bytes(range(40))


def test_cover_rate_is_poisson_whether_or_not_real_data_flows() -> None:
    rates = CoverRates(payload_per_s=50.0, loop_per_s=2.0, drop_per_s=3.0)
    horizon = 2000.0

    def run(real_every: int) -> tuple[list[float], int]:
        sched = CoverScheduler(rates, random.Random(42), 0.0)
        times: list[float] = []
        real = 0
        for when, tick in sched.poll(horizon):
            times.append(when)
            # A busy user fills every ``real_every``-th payload tick with real data.
            if real_every and tick is Tick.PAYLOAD and len(times) % real_every == 0:
                real += 1
        return times, real

    idle, idle_real = run(0)
    busy, busy_real = run(2)
    assert idle_real == 0 and busy_real > 10_000
    assert idle == busy  # real packets replace cover ones: the same departure times
    n = len(idle)
    expected = rates.total * horizon
    assert abs(n - expected) < 4 * expected**0.5  # Poisson count
    gaps = [b - a for a, b in zip([0.0, *idle], idle, strict=False)]
    mean = sum(gaps) / len(gaps)
    assert abs(mean - 1 / rates.total) < 0.02 / rates.total
    # Exponential gaps: the fraction above the mean is e^-1.
    above = sum(g > 1 / rates.total for g in gaps) / len(gaps)
    assert abs(above - 0.3679) < 0.01


def test_gateway_holds_until_registration_and_pushes_after() -> None:
    pushed: list[tuple[int, list[bytes]]] = []
    gw = Gateway(lambda link, units: pushed.append((link, units)) is None, lambda: 0.0)
    secret = bytes(range(32))
    from qnet.mix.delivery import REGISTER_ADDRESS
    from qnet.mix.gateway import client_id_of, decode_push

    cid = client_id_of(secret)
    reply = S.SurbReply(
        recipient=cid, surb_id=b"s" * 16, delay_us=0, payload=b"p" * 1512, replay_tag=bytes(16)
    )
    gw.deliver(reply, 3)
    assert pushed == [] and gw.held(cid) == 1
    register = S.Deliver(
        address=REGISTER_ADDRESS,
        tag=bytes(16),
        delay_us=0,
        message=secret + bytes(1464),
        replay_tag=bytes(16),
    )
    gw.deliver(register, 5)
    assert [link for link, _ in pushed] == [5] and gw.held(cid) == 0
    body = pushed[0][1][0][8:]
    got = decode_push(body)
    assert got.tag == b"s" * 16 and got.payload == b"p" * 1512
    gw.link_closed(5)
    assert cid not in gw.clients


def test_send_and_receive_a_message_with_a_surb_reply() -> None:
    from qnet.client.messaging import Messenger, MixAddress
    from qnet.crypto.primitives import X25519Key

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            net = await start_net(nursery)
            alice = MixClient(
                net.topology, net.gateways[0].node_id, config=fast_config(), rng=random.Random(21)
            )
            bob = MixClient(
                net.topology, net.gateways[1].node_id, config=fast_config(), rng=random.Random(22)
            )
            await nursery.start(alice.run)
            await nursery.start(bob.run)
            alice_m = Messenger(alice, X25519Key.generate())
            bob_m = Messenger(bob, X25519Key.generate())
            address = MixAddress.parse(str(bob_m.address))
            assert address == bob_m.address
            with trio.fail_after(30):
                msg_id = await alice_m.send(address, b"hello bob")
                got = await bob_m.receive()
                assert got.text == b"hello bob" and got.msg_id == msg_id
                await bob_m.reply(got, b"hello alice")
                assert await alice_m.receive_reply() == (msg_id, b"hello alice")
            nursery.cancel_scope.cancel()

    trio.run(main)
