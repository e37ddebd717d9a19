"""The client's circuits and streams over real HTX on loopback, through three
in-process ``RelayService`` nodes (entry, middle, exit) and local TCP servers."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import random
from dataclasses import dataclass, field

import pytest
import trio
from test_htx_transport import Node

from qnet.client import (
    CircuitBuildError,
    CircuitClosedError,
    CircuitConfig,
    CircuitManager,
    CircuitStream,
    Path,
    StreamRefused,
)
from qnet.client.mixed import ConsensusTopology
from qnet.client.path import PathConfig, PathSelector
from qnet.dir.consensus import Consensus, ConsensusEntry, bandwidth_weights
from qnet.dir.descriptor import Action, Address, PolicyRule, Role, Transport
from qnet.dir.flags import Flag
from qnet.dir.vote import NodeSummary
from qnet.htx import transport as T
from qnet.htx.fingerprint import parse_client_hello
from qnet.mix import sphinx as S
from qnet.node.directory_agent import ConsensusDirectory
from qnet.node.relay import RelayService
from qnet.routing.circuit import HopRoute
from qnet.routing.relay import DestroyReason
from qnet.routing.streams import EndReason

#: The exit refuses this port (its policy), and everything that is not loopback.
FORBIDDEN_PORT = 9
HOST = "127.0.0.1"


@dataclass
class Hop:
    htx: Node
    mix: S.MixKey
    node_id: bytes
    port: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    service: RelayService | None = None
    dying_errors: list[Exception] = field(default_factory=list)

    def route(self) -> HopRoute:
        return HopRoute(node_id=self.node_id, onion_public=self.mix.public_bytes)


class Directory:
    """Node id → dial information and link key, as a consensus would give them."""

    def __init__(self) -> None:
        self.hops: list[Hop] = []

    def peer_info(self, node_id: bytes) -> T.PeerInfo | None:
        hop = next((h for h in self.hops if h.node_id == node_id), None)
        return hop.htx.peer(hop.port) if hop is not None else None

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        hop = next((h for h in self.hops if h.htx.link.public_bytes == link_public), None)
        return hop.node_id if hop is not None else None


def exit_policy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    return ip.is_loopback and port != FORBIDDEN_PORT


async def start_hop(nursery: trio.Nursery, directory: Directory, *, is_exit: bool) -> Hop:
    hop = Hop(htx=Node(), mix=S.MixKey.generate(), node_id=bytes([len(directory.hops) + 1]) * 32)
    directory.hops.append(hop)
    service = RelayService(
        mix_keys=lambda: [hop.mix],
        directory=directory,
        static_private=hop.htx.link.private_bytes,
        exit_policy=exit_policy if is_exit else None,
    )
    hop.service = service

    async def handler(link: T.HtxLink) -> None:
        await service.handle_link(None, link)

    async def host(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with hop.scope:  # cancelling it kills the node: its listener and every link
                async with trio.open_nursery() as inner:
                    await inner.start(service.run)
                    listeners = await inner.start(T.serve_tcp, handler, hop.htx.config)
                    task_status.started(listeners[0].socket.getsockname()[1])
        except Exception as exc:
            if not hop.scope.cancel_called:
                raise
            # A killed node's own errors on the way down are not the client's business
            # (reported separately: the HTX layer can raise while links are torn down).
            hop.dying_errors.append(exc)

    hop.port = await nursery.start(host)
    return hop


async def start_network(nursery: trio.Nursery) -> tuple[Directory, list[Hop]]:
    directory = Directory()
    hops = [await start_hop(nursery, directory, is_exit=i == 2) for i in range(3)]
    return directory, hops


def path_of(directory: Directory, hops: list[Hop]) -> Path:
    entry = directory.peer_info(hops[0].node_id)
    assert entry is not None
    return Path(hops=tuple(h.route() for h in hops), entry=entry)


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(sock: trio.SocketStream) -> None:
        try:
            while data := await sock.receive_some(65536):
                await sock.send_all(data)
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def greeting_server(nursery: trio.Nursery, text: bytes) -> int:
    async def greet(sock: trio.SocketStream) -> None:
        await sock.send_all(text)
        await sock.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, greet, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def exchange(stream: CircuitStream, payload: bytes, chunk: int = 256 * 1024) -> bytes:
    """Send ``payload`` and read the same amount back, concurrently."""
    received = bytearray()

    async def sender() -> None:
        for i in range(0, len(payload), chunk):
            await stream.send_all(payload[i : i + chunk])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while len(received) < len(payload):
            data = await stream.receive_some()
            assert data, "the stream ended early"
            received += data
    return bytes(received)


# --- tests -------------------------------------------------------------------------------------


def test_ten_mebibytes_both_ways_through_three_hops() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            port = await echo_server(nursery)
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            with trio.fail_after(10):
                circuit = await manager.build()
            assert circuit.build_seconds < 5
            payload = random.Random(1).randbytes(10 * 1024 * 1024)
            with trio.fail_after(120):
                stream = await circuit.open_stream("127.0.0.1", port)
                assert stream.address == "127.0.0.1"
                started = trio.current_time()
                back = await exchange(stream, payload)
                elapsed = trio.current_time() - started
            assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
            print(f"\n10 MiB each way through 3 hops: {len(payload) / elapsed / 1e6:.1f} MB/s")
            await stream.aclose()
            # DESTROY from the client: every hop forgets the circuit.
            await circuit.aclose()
            with pytest.raises(CircuitClosedError):
                await circuit.open_stream("127.0.0.1", port)
            with trio.fail_after(5):
                while any(h.service and h.service.engine.circuit_count for h in hops):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_fifty_streams_on_two_isolated_circuits() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            port = await echo_server(nursery)
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            used: dict[str, set[int]] = {"alice": set(), "bob": set()}
            failures: list[BaseException] = []

            async def one(i: int) -> None:
                key = "alice" if i % 2 else "bob"
                circuit = await manager.circuit_for(key)
                used[key].add(id(circuit))
                payload = random.Random(i).randbytes(100_000 + i * 997)
                stream = await circuit.open_stream("localhost", port)
                try:
                    back = await exchange(stream, payload, chunk=32 * 1024)
                    if back != payload:
                        failures.append(AssertionError(f"stream {i}: wrong bytes"))
                finally:
                    await stream.aclose()

            with trio.fail_after(60):
                async with trio.open_nursery() as streams:
                    for i in range(50):
                        streams.start_soon(one, i)
            assert not failures
            assert len(used["alice"]) == 1 and len(used["bob"]) == 1
            assert used["alice"] != used["bob"]
            assert len(manager.circuits) == 2
            assert len(manager.links.links) == 1  # one link to the entry, shared
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_exit_policy_refusal_and_resolve() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            circuit = await manager.circuit_for()
            with trio.fail_after(10):
                with pytest.raises(StreamRefused) as refused:
                    await circuit.open_stream("127.0.0.1", FORBIDDEN_PORT)
                assert refused.value.reason is EndReason.EXIT_POLICY
                with pytest.raises(StreamRefused) as refused:
                    await circuit.open_stream("192.0.2.1", 80)
                assert refused.value.reason is EndReason.EXIT_POLICY
                # The circuit is still good after refusals; names resolve at the exit.
                assert "127.0.0.1" in await circuit.resolve("localhost")
                with pytest.raises(StreamRefused) as refused:
                    await circuit.resolve("no-such-host.invalid")
                assert refused.value.reason is EndReason.RESOLVE_FAILED
                assert not circuit.closed
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_stream_ends_cleanly_when_the_server_closes() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            port = await greeting_server(nursery, b"hello, then goodbye")
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            circuit = await manager.circuit_for()
            with trio.fail_after(10):
                stream = await circuit.open_stream("127.0.0.1", port)
                got = b""
                while data := await stream.receive_some(5):
                    assert len(data) <= 5
                    got += data
                assert got == b"hello, then goodbye" and stream.end_reason is EndReason.DONE
                with pytest.raises(trio.BrokenResourceError):
                    await stream.send_all(b"too late")
                await stream.aclose()
                with pytest.raises(trio.ClosedResourceError):
                    await stream.receive_some()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_losing_the_entry_link_fails_every_circuit_on_it() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            first = await manager.circuit_for("a")
            second = await manager.circuit_for("b")
            assert first is not second and first.link is second.link
            hops[0].scope.cancel()  # the entry dies: no DESTROY, only the link goes
            with trio.fail_after(3):
                assert await first.wait_closed() is DestroyReason.DESTROYED
                assert await second.wait_closed() is DestroyReason.DESTROYED
            assert manager.circuits == []
            with pytest.raises(CircuitBuildError) as failed:
                await manager.build()
            assert failed.value.reason == "link_failed"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_config_and_path_are_checked() -> None:
    with pytest.raises(ValueError, match="build_timeout"):
        CircuitConfig(build_timeout=0)
    with pytest.raises(ValueError, match="build_attempts"):
        CircuitConfig(build_attempts=0)
    entry = Node().peer(1)
    with pytest.raises(ValueError, match="hops"):
        Path(hops=(), entry=entry)
    with pytest.raises(TypeError):
        Path(hops=(b"x",), entry=entry)  # type: ignore[arg-type]


def test_killing_the_middle_fails_the_circuit_fast() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            port = await echo_server(nursery)
            manager = CircuitManager(lambda: path_of(directory, hops))
            await nursery.start(manager.run)
            circuit = await manager.build()
            stream = await circuit.open_stream("127.0.0.1", port)
            moved = 0
            broken: list[trio.BrokenResourceError] = []

            async def pump() -> None:
                nonlocal moved
                block = bytes(64 * 1024)
                try:
                    while True:
                        await stream.send_all(block)
                        moved += len(await stream.receive_some())
                except trio.BrokenResourceError as exc:
                    broken.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(pump)
                with trio.fail_after(10):
                    while moved < 1024 * 1024:
                        await trio.sleep(0.01)
                hops[1].scope.cancel()  # the middle node dies mid-stream
                killed = trio.current_time()
                with trio.fail_after(5):
                    reason = await circuit.wait_closed()
                failed_after = trio.current_time() - killed
            assert len(broken) == 1
            assert isinstance(broken[0].__cause__, CircuitClosedError)
            assert reason is DestroyReason.DESTROYED
            assert failed_after < 5
            with pytest.raises(CircuitClosedError):
                await circuit.open_stream("127.0.0.1", port)
            assert circuit not in manager.circuits
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_build_timeout_link_failure_and_retry_on_another_path() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            # An entry that speaks HTX but never answers CREATE.
            mute = Node()

            async def silent(link: T.HtxLink) -> None:
                await link.accept_stream()
                await trio.sleep_forever()

            listeners = await nursery.start(T.serve_tcp, silent, mute.config)
            mute_path = Path(
                hops=(HopRoute(node_id=b"\x77" * 32, onion_public=hops[0].mix.public_bytes),)
                + tuple(h.route() for h in hops[1:]),
                entry=mute.peer(listeners[0].socket.getsockname()[1]),
            )
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
            sock.close()  # nothing listens there
            dead_path = Path(
                hops=(HopRoute(node_id=b"\x78" * 32, onion_public=hops[0].mix.public_bytes),)
                + tuple(h.route() for h in hops[1:]),
                entry=mute.peer(closed_port),
            )
            manager = CircuitManager(config=CircuitConfig(build_timeout=0.5))
            await nursery.start(manager.run)
            with pytest.raises(CircuitBuildError) as failed:
                await manager.build(mute_path)
            assert failed.value.reason == "timeout"
            with pytest.raises(CircuitBuildError) as failed:
                await manager.build(dead_path)
            assert failed.value.reason == "link_failed"
            with pytest.raises(CircuitBuildError, match="no_path"):
                await manager.build()
            good = path_of(directory, hops)
            circuit = await manager.build_with_retry([mute_path, dead_path, good])
            assert circuit.path is good and not circuit.closed
            with pytest.raises(CircuitBuildError) as failed:
                await manager.build_with_retry([mute_path, mute_path])
            assert failed.value.reason == "timeout"
            assert len(failed.value.attempts) == 2
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_dirty_circuits_take_no_new_streams() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory, hops = await start_network(nursery)
            port = await echo_server(nursery)
            manager = CircuitManager(
                lambda: path_of(directory, hops), config=CircuitConfig(max_dirtiness=0.3)
            )
            await nursery.start(manager.run)
            first = await manager.circuit_for("k")
            assert await manager.circuit_for("k") is first  # unused: never dirty
            stream = await first.open_stream("127.0.0.1", port)
            assert await manager.circuit_for("k") is first
            await trio.sleep(0.4)
            second = await manager.circuit_for("k")
            assert second is not first
            # The old circuit keeps its streams; once they are gone it is closed.
            assert await exchange(stream, b"still here") == b"still here"
            await stream.aclose()
            with trio.fail_after(5):
                while first.endpoint.stream_ids:  # our END answered by the exit's
                    await trio.sleep(0.01)
            assert await manager.circuit_for("k") is second
            assert first.closed and first.closed_reason is DestroyReason.REQUESTED
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- each node is dialled under its own published server name -----------------------------------

EPOCH = 500_000
NAMES = ("static.amber-harbor.net", "cdn.birch-quartz.com", "www.coral-willow.org")


async def sni_tap(nursery: trio.Nursery, target: int, seen: list[str | None]) -> int:
    """A TCP listener in front of a node's: records the SNI of every connection's
    ClientHello, then forwards both ways. Returns its port."""

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def read_exactly(sock: trio.SocketStream, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = await sock.receive_some(n - len(buf))
            if not data:
                raise EOFError
            buf += data
        return bytes(buf)

    async def handle(client: trio.SocketStream) -> None:
        try:
            head = await read_exactly(client, 5)
            record = head + await read_exactly(client, int.from_bytes(head[3:5], "big"))
        except (EOFError, trio.BrokenResourceError):
            return
        seen.append(parse_client_hello(record).server_name)
        async with await trio.open_tcp_stream("127.0.0.1", target) as upstream:
            await upstream.send_all(record)
            async with trio.open_nursery() as both:
                both.start_soon(pump, client, upstream)
                both.start_soon(pump, upstream, client)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


class ConsensusView(Directory):
    """The relays' directory: a ``ConsensusDirectory`` over the test consensus."""

    view: ConsensusDirectory | None = None

    def peer_info(self, node_id: bytes) -> T.PeerInfo | None:
        assert self.view is not None
        return self.view.peer_info(node_id)

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        assert self.view is not None
        return self.view.node_for_link_key(link_public)


def consensus_of(hops: list[Hop], ports: list[int]) -> Consensus:
    """Entry (Guard), middle, exit (Exit), each publishing its own ``NAMES[i]``."""
    entries = []
    for i, (hop, port) in enumerate(zip(hops, ports, strict=True)):
        is_exit = i == 2
        summary = NodeSummary(
            digest=bytes(32),
            published=0,
            id_ed25519=bytes(32),
            addresses=(Address(transport=Transport.TCP, ip=ipaddress.ip_address(HOST), port=port),),
            roles=(Role.EXIT, Role.RELAY) if is_exit else (Role.RELAY,),
            exit_policy=(
                PolicyRule(
                    action=Action.ACCEPT,
                    network=ipaddress.ip_network("0.0.0.0/0"),
                    port_min=1,
                    port_max=65535,
                ),
            )
            if is_exit
            else (),
            family=(),
            bandwidth=1000,
            software="qnet-test",
            server_name=NAMES[i],
            link_x25519=hop.htx.link.public_bytes,
            kem_mlkem768=hop.htx.mlkem.public_bytes,
            ticket_x25519=hop.htx.ticket.public_bytes,
            ticket_key_id=3,
            mix_epoch=EPOCH,
            mix_current=hop.mix.public_bytes,
            mix_next=S.MixKey.generate().public_bytes,
        )
        flags = {Flag.RUNNING, Flag.VALID, Flag.FAST, Flag.STABLE}
        flags |= {Flag.EXIT} if is_exit else ({Flag.GUARD} if i == 0 else set())
        entries.append(
            ConsensusEntry(
                node_id=hop.node_id,
                descriptor=summary,
                flags=frozenset(flags),
                bandwidth=1000,
                mix_layer=None,
            )
        )
    nodes = tuple(sorted(entries, key=lambda e: e.node_id))
    return Consensus(
        epoch=EPOCH,
        valid_after=0,
        fresh_until=1,
        valid_until=2,
        voters=(bytes(32),),
        params={},
        srv=bytes(32),
        srv_previous=bytes(32),
        srv_reveals=0,
        commits=(),
        weights=bandwidth_weights((n.flags, n.bandwidth) for n in nodes),
        nodes=nodes,
    )


def test_every_hop_is_dialled_under_its_own_published_server_name() -> None:
    """The client dials the entry, the entry the middle and the middle the exit, each
    with the SNI that node published (not one name for all), as a listener sees it."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            directory = ConsensusView()
            hops = [await start_hop(nursery, directory, is_exit=i == 2) for i in range(3)]
            seen: list[list[str | None]] = [[], [], []]
            ports = [await sni_tap(nursery, h.port, s) for h, s in zip(hops, seen, strict=True)]
            cons = consensus_of(hops, ports)
            directory.view = ConsensusDirectory(cons)
            # What the client builds from the consensus (qnet.client.app.Client._use).
            selector = PathSelector(
                cons, PathConfig.builder(enforce_distinct_subnets=False).build(), random.Random(1)
            )
            topology = ConsensusTopology(ConsensusDirectory(cons))
            path = selector.build_path(None, now=1.0)
            assert path.node_ids == tuple(h.node_id for h in hops)
            assert [p.server_name for p in path.peers] == list(NAMES)
            for hop, name in zip(hops, NAMES, strict=True):
                peer = topology.peer_info(hop.node_id)
                assert peer is not None and peer.server_name == name
            port = await echo_server(nursery)
            manager = CircuitManager(path.for_circuit)
            await nursery.start(manager.run)
            with trio.fail_after(20):
                circuit = await manager.build()
                stream = await circuit.open_stream(HOST, port)
                assert await exchange(stream, b"hello, named hops") == b"hello, named hops"
                await stream.aclose()
            # Client -> entry, entry -> middle (node link), middle -> exit (node link).
            assert [set(s) for s in seen] == [{name} for name in NAMES]
            nursery.cancel_scope.cancel()

    trio.run(main)
