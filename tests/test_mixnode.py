"""The mix role: the sans-I/O core (replay filters, delay heap, bounds) and three
mixnodes over real HTX links forming three layers."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import trio
from test_htx_transport import Node
from test_node_relay import ToyDirectory

from qnet.htx import transport as T
from qnet.mix import sphinx as S
from qnet.mix.delivery import Delivered
from qnet.mix.mixnode import Final, Forward, Held, MixCore, MixSettings, unwrap_batch
from qnet.mix.replay import BloomReplayFilter, ReplayFilters, bloom_size
from qnet.node.links import CellLink, LinkManager
from qnet.node.mix import MixService, sphinx_unit
from qnet.node.relay import RelayService
from qnet.routing.relay import RelayLimits

ADDRESS = bytes([0xAD]) * 32
TAG = bytes([0x7A]) * 16


# --- replay filter ----------------------------------------------------------------------------


def test_bloom_size_matches_the_stated_numbers() -> None:
    bits, hashes = bloom_size(3_600_000, 1e-6)
    assert hashes == 20
    # 28.76 bits per tag: 12.9 MB for 1,000 pkt/s over a one-hour epoch.
    assert 28.7 < bits / 3_600_000 < 28.9
    assert 12.8e6 < bits / 8 < 13.0e6


def test_bloom_never_forgets_and_false_positives_stay_near_the_target() -> None:
    rng = random.Random(1)
    f = BloomReplayFilter(20_000, 1e-3, key=bytes(16))
    tags = [rng.randbytes(16) for _ in range(20_000)]
    early = sum(f.check_and_add(t) for t in tags)  # false positives while filling
    assert early < 20_000 * 1e-3
    assert all(t in f for t in tags)
    fresh = sum(rng.randbytes(16) in f for _ in range(20_000))
    assert fresh < 20_000 * 1e-3 * 3  # at capacity: about 1e-3
    assert f.count == 20_000 - early
    assert 0.5e-3 < f.estimated_fp_rate() < 2e-3


def test_replay_filters_reset_when_a_key_leaves() -> None:
    filters = ReplayFilters(lambda: BloomReplayFilter(1000))
    a, b = bytes([1]) * 32, bytes([2]) * 32
    filters.for_key(a).add(TAG)
    filters.for_key(b)
    assert TAG in filters.for_key(a) and TAG not in filters.for_key(b)
    assert filters.sync([b]) == [a]
    assert TAG not in filters.for_key(a)  # a returning key starts empty


# --- the sans-I/O core --------------------------------------------------------------------------


def keys(n: int) -> list[S.MixKey]:
    return [S.MixKey.generate() for _ in range(n)]


def route(mix: list[S.MixKey], delays_us: list[int]) -> list[S.RouteHop]:
    hops = [(bytes([i + 1]) * 32, k.public_bytes) for i, k in enumerate(mix)]
    final = S.Slot(command=S.Command.DELIVER, address=ADDRESS, tag=TAG, delay_us=delays_us[-1])
    return S.mix_route(hops, final, delays_us)


def feed(core: MixCore, packets: list[bytes], mix_keys: list[S.MixKey], now: float) -> list[Held]:
    core.receive(1, packets, now)
    held: list[Held] = []
    while core.inbox_len:
        batch = core.take_batch()
        held += core.admit(batch, unwrap_batch(batch.packets, mix_keys), now)
    return held


def test_core_unwraps_schedules_and_releases_in_time_order() -> None:
    mix = keys(2)
    p1 = S.build_packet(route(mix, [3000, 0]), b"one").packet
    p2 = S.build_packet(route(mix, [1000, 0]), b"two").packet
    core = MixCore(MixSettings())
    held = feed(core, [p1, p2], mix[:1], now=10.0)
    assert [h.delay for h in held] == [0.003, 0.001]
    assert core.next_deadline() == pytest.approx(10.001)
    assert core.release(10.0005) == []
    first, second = core.release(10.1)
    assert isinstance(first, Forward) and isinstance(second, Forward)
    # The second hop unwraps what the first released: the 1 ms packet came out first.
    out = unwrap_batch([first.packet], mix[1:])[0].result
    assert isinstance(out, S.Deliver) and out.message.rstrip(b"\0") == b"two"


def test_core_tries_every_key_and_keeps_a_filter_per_key() -> None:
    old, new = keys(2)
    packet = S.build_packet(route([old], [0]), b"late").packet
    core = MixCore(MixSettings())
    (held,) = feed(core, [packet], [new, old], now=0.0)
    assert isinstance(held.item, Final) and held.item.link == 1
    feed(core, [packet], [new, old], now=0.0)
    assert core.drops["replay"] == 1
    core.sync_keys([new.public_bytes])  # the old key's grace ended: its filter goes
    assert len(core.filters) == 0
    # Without the old key the packet is just an unknown one.
    feed(core, [packet], [new], now=0.0)
    assert core.drops["bad_mac"] == 1


def test_delays_follow_the_exponential_the_client_drew() -> None:
    """KS test (fixed seed) of the delays the mix scheduled against Exp(mean)."""
    rng = random.Random(20240807)
    mean = 0.050
    n = 400
    drawn_us = [min(int(rng.expovariate(1 / mean) * 1e6), 2**32 - 1) for _ in range(n)]
    mix = keys(2)
    packets = [S.build_packet(route(mix, [d, 0]), b"x").packet for d in drawn_us]
    core = MixCore(MixSettings(batch=64))
    held = feed(core, packets, mix[:1], now=1000.0)
    delays = [h.delay for h in held]
    assert len(delays) == n
    # The mix applies exactly the delay the client wrote (to the microsecond) ...
    assert [round(d * 1e6) for d in delays] == drawn_us
    assert [h.release_at for h in held] == pytest.approx([1000.0 + d for d in delays])
    # ... so what it applies is exponential with the consensus mean (KS, alpha = 0.01).
    xs = sorted(delays)
    cdf = [1 - math.exp(-x / mean) for x in xs]
    d_stat = max(max((i + 1) / n - c, c - i / n) for i, c in enumerate(cdf))
    assert d_stat < 1.628 / math.sqrt(n), d_stat
    # And the heap gives them back in release order.
    released = core.release(math.inf)
    assert len(released) == n


def test_overload_is_counted_and_memory_stays_bounded() -> None:
    settings = MixSettings(max_inbox=100, max_held=50, link_rate=1000.0, link_burst=300, batch=32)
    core = MixCore(settings)
    mix = keys(1)
    packet = S.build_packet(route(mix, [0]), b"p").packet
    for _ in range(10):
        core.receive(7, [packet] * 100, now=0.0)
        assert core.inbox_len <= 100
    # 1,000 offered: 300 tokens; 100 fit the inbox.
    assert core.drops["rate_limited"] == 700
    assert core.drops["overload"] == 200
    # Distinct packets past the delay heap's bound drop as delay_queue_full.
    distinct = [S.build_packet(route(mix, [5_000_000]), bytes([i])).packet for i in range(80)]
    core2 = MixCore(settings)
    feed(core2, distinct, mix, now=0.0)
    assert core2.held_len == 50 and core2.drops["delay_queue_full"] == 30
    # A delay beyond max_delay is refused.
    long = S.build_packet(route(mix, [61_000_000]), b"slow").packet
    feed(core2, [long], mix, now=0.0)
    assert core2.drops["delay_too_long"] == 1
    # Idle links' buckets are forgotten.
    assert core.forget_idle_links(now=10.0) == 1


# --- three mixnodes over HTX ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[Delivered, int]] = []
        self.event = trio.Event()

    def deliver(self, result: Delivered, link: int) -> None:
        self.got.append((result, link))
        self.event.set()

    def link_closed(self, link: int) -> None:
        pass


@dataclass
class MixHop:
    htx: Node
    mix: S.MixKey
    node_id: bytes
    service: MixService | None = None
    relay: RelayService | None = None
    port: int = 0


async def start_mixes(
    nursery: trio.Nursery, settings: MixSettings, n: int = 3
) -> tuple[list[MixHop], Recorder]:
    hops = [
        MixHop(htx=Node(), mix=S.MixKey.generate(), node_id=bytes([i + 1]) * 32) for i in range(n)
    ]
    directory = ToyDirectory(hops)  # type: ignore[arg-type]
    recorder = Recorder()
    for i, hop in enumerate(hops):
        mix = MixService(
            settings,
            mix_keys=lambda hop=hop: [hop.mix],
            delivery=recorder if i == n - 1 else None,
        )
        relay = RelayService(
            mix_keys=lambda hop=hop: [hop.mix],
            directory=directory,
            static_private=hop.htx.link.private_bytes,
            limits=RelayLimits(max_circuits=0, max_circuits_per_link=0),
            on_sphinx=mix.receive,
            on_link_closed=mix.link_closed,
        )
        mix.attach(relay.links)
        await nursery.start(relay.run)
        await nursery.start(mix.run)

        async def handler(link: T.HtxLink, relay: RelayService = relay) -> None:
            await relay.handle_link(None, link)

        listeners = await nursery.start(T.serve_tcp, handler, hop.htx.config)
        hop.port = listeners[0].socket.getsockname()[1]
        hop.service, hop.relay = mix, relay
    return hops, recorder


async def client_link(nursery: trio.Nursery, hops: list[MixHop]) -> tuple[LinkManager, CellLink]:
    async def on_units(link: CellLink, units: list[bytes]) -> None:
        pass

    async def on_closed(link: CellLink) -> None:
        pass

    links = LinkManager(
        peer_info=ToyDirectory(hops).peer_info,  # type: ignore[arg-type]
        on_units=on_units,
        on_closed=on_closed,
    )
    await nursery.start(links.run)
    return links, await links.get(hops[0].node_id)


def mix_route(hops: list[MixHop], delays_us: list[int]) -> list[S.RouteHop]:
    pairs = [(h.node_id, h.mix.public_bytes) for h in hops]
    final = S.Slot(command=S.Command.DELIVER, address=ADDRESS, tag=TAG, delay_us=delays_us[-1])
    return S.mix_route(pairs, final, delays_us)


async def wait_for(predicate: object, seconds: float = 10.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.01)


def test_three_layers_deliver_drop_replays_and_tampering() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            hops, recorder = await start_mixes(nursery, MixSettings(workers=2, batch=16))
            links, entry = await client_link(nursery, hops)
            message = b"through three layers of mixing"
            built = S.build_packet(mix_route(hops, [2000, 1000, 500]), message)
            await links.send(entry.number, [sphinx_unit(built.packet)])
            with trio.fail_after(10):
                await recorder.event.wait()
            (result, link), *_ = recorder.got
            assert isinstance(result, S.Deliver)
            assert result.address == ADDRESS and result.tag == TAG
            assert result.message == message + bytes(S.MESSAGE_LEN - len(message))
            assert link > 0
            services = [h.service for h in hops]
            assert [s.forwarded for s in services if s] == [1, 1, 0]

            # The same packet again: the first mix refuses it as a replay.
            await links.send(entry.number, [sphinx_unit(built.packet)])
            first = hops[0].service
            assert first is not None
            await wait_for(lambda: first.drops["replay"] == 1)

            # A flipped bit in the routing header: bad_mac at the first mix.
            fresh = bytearray(S.build_packet(mix_route(hops, [0, 0, 0]), b"t").packet)
            fresh[100] ^= 0x01
            await links.send(entry.number, [sphinx_unit(bytes(fresh))])
            await wait_for(lambda: first.drops["bad_mac"] == 1)
            await trio.sleep(0.1)
            assert len(recorder.got) == 1
            assert first.forwarded == 1
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_flooding_link_is_rate_limited_and_counted() -> None:
    async def main() -> None:
        settings = MixSettings(workers=1, link_rate=50.0, link_burst=20, max_inbox=64)
        async with trio.open_nursery() as nursery:
            hops, recorder = await start_mixes(nursery, settings, n=1)
            links, entry = await client_link(nursery, hops)
            mix = hops[0].service
            assert mix is not None
            packet = S.build_packet(mix_route(hops, [0]), b"flood").packet
            await links.send(entry.number, [sphinx_unit(packet)] * 400)
            await wait_for(lambda: sum(mix.drops.values()) + len(recorder.got) >= 400)
            assert mix.drops["rate_limited"] >= 370
            assert len(recorder.got) == 1  # one copy delivered, later copies are replays
            assert mix.core.inbox_len <= 64 and mix.core.held_len == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
