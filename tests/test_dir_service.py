"""Directory authorities, caches and clients over real HTX on loopback (spec/directory.md §9).

Each network test runs three authorities and a few nodes in one Trio run, with
4-second epochs, and waits for real epochs to pass (a few seconds per test).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.dir import net, protocol
from qnet.dir.authority import STATE_FILE, AuthorityConfig, AuthorityService
from qnet.dir.client import DirectoryCache, fetch_consensus, fetch_descriptor, publish_descriptor
from qnet.dir.consensus import (
    Consensus,
    assemble,
    compute_consensus,
    sign_body,
    split_document,
    verify_consensus,
)
from qnet.dir.descriptor import Address, Descriptor, Role, Transport
from qnet.dir.flags import Flag, FlagRules, Observation
from qnet.dir.identity import Identity
from qnet.dir.rotation import MixKeySchedule
from qnet.dir.vote import Authorities, DirectoryParams, Vote, build_vote
from qnet.errors import (
    BadSignature,
    DirectoryUnreachable,
    InsufficientSignatures,
    MalformedDocument,
    NoUsableSource,
    RequestRefused,
    StaleDocument,
)
from qnet.htx import transport as T
from qnet.htx.ticket import TicketConfig
from qnet.htx.tls import make_self_signed
from qnet.mix import sphinx as S

EPOCH = 4
PARAMS = DirectoryParams(
    epoch_length=EPOCH,
    rules=FlagRules(running_max_age=60, stable_min_uptime=3600, guard_min_known=3600),
)
VOTE_LEAD, CONSENSUS_LEAD = 2.0, 1.0
#: How long before the vote a test needs to start its network and publish.
SETUP = 0.8


class HtxKeys:
    """A node's HTX listener keys and config (what its descriptor publishes)."""

    def __init__(self) -> None:
        self.link = X25519Key.generate()
        self.mlkem = MLKEM768Key.generate()
        self.ticket = X25519Key.generate()
        cert, key = make_self_signed("www.example.com")
        self.config = T.ServerConfig(
            link_private=self.link.private_bytes,
            mlkem=self.mlkem,
            ticket_keys={7: self.ticket},
            certificate_chain=(cert,),
            certificate_key=key,
            # Everything here dials from 127.0.0.1: lift the per-source ticket rate limit
            # (a test network must do the same; production defaults allow 1 per 5 s).
            ticket_config=TicketConfig(rate_burst=1000, rate_per_second=1000),
        )

    def peer(self, port: int) -> T.PeerInfo:
        return T.PeerInfo(
            host="127.0.0.1",
            port=port,
            link_public=self.link.public_bytes,
            mlkem_public=self.mlkem.public_bytes,
            ticket_public=self.ticket.public_bytes,
            ticket_key_id=7,
        )


class TestNode:
    """A relay/mix node: identity, HTX listener, per-epoch mix keys."""

    __test__ = False

    def __init__(self, roles: tuple[Role, ...] = (Role.MIX, Role.RELAY)) -> None:
        self.identity = Identity.generate()
        self.htx = HtxKeys()
        self.roles = roles
        self.port = 0
        self.mix = MixKeySchedule(PARAMS, 2 * EPOCH, lambda _: S.MixKey.generate())

    def descriptor(self, mix_epoch: int) -> bytes:
        current, nxt = self.mix.publish(mix_epoch)
        pub = self.identity.public
        return Descriptor(
            node_id=self.identity.node_id,
            published=int(time.time()),
            addresses=(
                Address(
                    transport=Transport.TCP,
                    ip=ipaddress.IPv4Address("127.0.0.1"),
                    port=self.port,
                ),
            ),
            roles=self.roles,
            exit_policy=(),
            bandwidth=500_000,
            software="qnet-test 0",
            server_name="static.test-node.net",
            family=(),
            id_ed25519=pub.ed25519,
            id_mldsa65=pub.mldsa65,
            link_x25519=self.htx.link.public_bytes,
            kem_mlkem768=self.htx.mlkem.public_bytes,
            ticket_x25519=self.htx.ticket.public_bytes,
            ticket_key_id=7,
            mix_epoch=mix_epoch,
            mix_current=current.public_bytes,
            mix_next=nxt.public_bytes,
        ).sign(self.identity)


async def idle(link: T.HtxLink) -> None:
    """A node's link handler for these tests: keep the link until the peer closes it."""
    while True:
        try:
            await link.accept_stream()
        except trio.EndOfChannel:
            return


class Net:
    """Three authorities (all configured; ``running`` says which are started) and nodes."""

    def __init__(self, tmp: Path, n_nodes: int = 3) -> None:
        self.tmp = tmp
        self.ids = [Identity.generate() for _ in range(3)]
        self.htx = [HtxKeys() for _ in range(3)]
        self.authorities = Authorities.of(i.public for i in self.ids)
        self.ports = [0, 0, 0]
        self.services: dict[int, AuthorityService] = {}
        self.nodes = [TestNode() for _ in range(n_nodes)]

    def peers(self) -> dict[bytes, T.PeerInfo]:
        return {
            i.node_id: h.peer(p) for i, h, p in zip(self.ids, self.htx, self.ports, strict=True)
        }

    def authority_peers(self, which: list[int] | None = None) -> list[T.PeerInfo]:
        return [self.htx[i].peer(self.ports[i]) for i in which or range(3)]

    def config(self, i: int) -> AuthorityConfig:
        return AuthorityConfig(
            identity=self.ids[i],
            authorities=self.authorities,
            peers=self.peers(),
            data_dir=self.tmp / f"auth{i}",
            params=PARAMS,
            vote_lead=VOTE_LEAD,
            consensus_lead=CONSENSUS_LEAD,
            reach_interval=1.0,
            reach_timeout=3.0,
            request_timeout=3.0,
        )

    @asynccontextmanager
    async def running(
        self,
        which: tuple[int, ...] = (0, 1, 2),
        kinds: dict[int, type[AuthorityService]] | None = None,
    ) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            # Bind every listener first so each authority's config knows the others' ports.
            sockets = [trio.socket.socket() for _ in range(3)]
            for s in sockets:
                await s.bind(("127.0.0.1", 0))
                self.ports[sockets.index(s)] = s.getsockname()[1]
            for s in sockets:
                s.close()
            for node in self.nodes:
                listeners = await nursery.start(T.serve_tcp, idle, node.htx.config)
                node.port = listeners[0].socket.getsockname()[1]
            for i in which:
                kind = (kinds or {}).get(i, AuthorityService)
                service = kind(self.config(i))
                self.services[i] = service
                await nursery.start(
                    lambda task_status, s=service, i=i: s.serve(
                        self.htx[i].config, port=self.ports[i], task_status=task_status
                    )
                )
            yield
            nursery.cancel_scope.cancel()

    async def publish(self, mix_epoch: int, which: list[int] | None = None) -> None:
        for node in self.nodes:
            results = await publish_descriptor(
                self.authority_peers(which), node.descriptor(mix_epoch), timeout=3
            )
            assert all(err is None for _, err in results), results


def next_round() -> int:
    """The first epoch whose vote is at least ``SETUP`` seconds away."""
    now = time.time()
    epoch = PARAMS.epoch_at(int(now)) + 1
    if PARAMS.times(epoch)[0] - VOTE_LEAD - now < SETUP:
        epoch += 1
    return epoch


async def wait_until_round(epoch: int) -> None:
    """Sleep until ``SETUP`` seconds before the vote for ``epoch``."""
    await trio.sleep(max(0.0, PARAMS.times(epoch)[0] - VOTE_LEAD - SETUP - time.time()))


async def wait_for_consensus(epoch: int) -> None:
    """Sleep until the round for ``epoch`` is over (signatures collected)."""
    await trio.sleep(max(0.0, PARAMS.times(epoch)[0] + CONSENSUS_LEAD + 0.2 - time.time()))


async def served(net_: Net, which: list[int]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in which:
        try:
            docs = await net.ask(
                net_.htx[i].peer(net_.ports[i]), protocol.get_consensus(), timeout=3
            )
            out.append(docs[0])
        except RequestRefused:
            out.append(None)
    return out


def signers(raw: bytes) -> list[bytes]:
    return [s.authority for s in split_document(raw)[1]]


# --- the network tests -------------------------------------------------------------------


def test_three_authorities_serve_one_byte_identical_consensus(tmp_path: Path) -> None:
    n = Net(tmp_path)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running():
            await n.publish(epoch)
            await wait_for_consensus(epoch)
            docs = await served(n, [0, 1, 2])
            assert docs[0] is not None and docs[0] == docs[1] == docs[2]
            cons = verify_consensus(docs[0], n.authorities, int(time.time()))
            assert cons.epoch == epoch and len(signers(docs[0])) == 3
            assert {e.node_id for e in cons.nodes} == {x.identity.node_id for x in n.nodes}
            for entry in cons.nodes:
                assert {Flag.RUNNING, Flag.VALID, Flag.MIX} <= entry.flags
            assert sorted(e.mix_layer or 0 for e in cons.nodes) == [0, 1, 2]

            # A client fetches it and a node's descriptor by digest, from any authority.
            got = await fetch_consensus(n.authority_peers([2, 0]), n.authorities, int(time.time()))
            assert got.raw == docs[0] and got.source.port == n.ports[2]
            digest = cons.nodes[0].descriptor.digest
            raw, desc = await fetch_descriptor(n.authority_peers(), digest)
            assert desc.node_id == cons.nodes[0].node_id

            # The state file holds the consensus and the next reveal secret.
            assert all((tmp_path / f"auth{i}" / STATE_FILE).exists() for i in range(3))

    trio.run(main)


def test_one_authority_down_two_still_make_a_valid_consensus(tmp_path: Path) -> None:
    n = Net(tmp_path, n_nodes=2)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running(which=(0, 1)):
            await n.publish(epoch, which=[0, 1])
            await wait_for_consensus(epoch)
            docs = await served(n, [0, 1])
            assert docs[0] is not None and docs[0] == docs[1]
            cons = verify_consensus(docs[0], n.authorities, int(time.time()))
            assert cons.epoch == epoch and len(cons.nodes) == 2
            assert sorted(signers(docs[0])) == sorted(n.ids[i].node_id for i in (0, 1))
            assert len(cons.voters) == 2
            # The client skips the dead authority and takes the next source.
            got = await fetch_consensus(n.authority_peers([2, 1]), n.authorities)
            assert got.raw == docs[0]

    trio.run(main)


class LyingAuthority(AuthorityService):
    """Computes the consensus and then changes it before signing."""

    def compute(self, epoch: int, votes: list[Vote], previous: Consensus | None) -> Consensus:
        honest = super().compute(epoch, votes, previous)
        return dataclasses.replace(honest, params={**honest.params, "packet_size": 9999})


def test_an_authority_that_signs_another_document_is_outvoted(tmp_path: Path) -> None:
    n = Net(tmp_path, n_nodes=2)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running(kinds={2: LyingAuthority}):
            await n.publish(epoch)
            await wait_for_consensus(epoch)
            docs = await served(n, [0, 1, 2])
            assert docs[0] is not None and docs[0] == docs[1]
            assert docs[2] is None  # the liar never collected a majority for its body
            cons = verify_consensus(docs[0], n.authorities, int(time.time()))
            assert cons.params["packet_size"] == 2048
            assert sorted(signers(docs[0])) == sorted(n.ids[i].node_id for i in (0, 1))
            # Its body, signed by itself alone, is refused everywhere.
            liar_round = n.services[2]._rounds[epoch]
            assert liar_round.body is not None
            alone = assemble(liar_round.body, liar_round.signatures.values())
            with pytest.raises(InsufficientSignatures):
                verify_consensus(alone, n.authorities, int(time.time()))
            # And its signature does not count on the majority body.
            with pytest.raises(BadSignature):
                n.services[0].accept_signature(
                    epoch, liar_round.signatures[n.ids[2].node_id].encode()
                )

    trio.run(main)


async def serve_bytes(doc: bytes, nursery: trio.Nursery) -> T.PeerInfo:
    """A fake directory source that answers get_consensus with ``doc``."""
    keys = HtxKeys()

    async def handler(req: protocol.Request) -> protocol.Response:
        return protocol.ok([doc])

    async def on_link(link: T.HtxLink) -> None:
        await net.serve_link(link, handler, timeout=3)

    listeners = await nursery.start(T.serve_tcp, on_link, keys.config)
    return keys.peer(listeners[0].socket.getsockname()[1])


def old_consensus(n: Net, epoch: int) -> bytes:
    """A correctly signed consensus for a long-gone epoch."""
    node = n.nodes[0]
    node.port = node.port or 1
    obs = Observation(
        descriptor=_descriptor_of(node, epoch),
        first_seen=0,
        last_reachable=epoch * EPOCH - 1,
        running_since=0,
        measured_bandwidth=1,
    )
    now = epoch * EPOCH - 2
    votes = [build_vote(i, epoch, [obs], now, PARAMS) for i in n.ids]
    cons = compute_consensus(votes, n.authorities, now, PARAMS)
    body = cons.encode()
    return assemble(body, [sign_body(body, i) for i in n.ids])


def _descriptor_of(node: TestNode, epoch: int) -> Descriptor:
    from qnet.dir.descriptor import decode_body, split_envelope

    return decode_body(split_envelope(node.descriptor(epoch))[0])


def test_forged_and_stale_documents_are_refused_and_the_next_source_used(
    tmp_path: Path,
) -> None:
    n = Net(tmp_path, n_nodes=2)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running(), trio.open_nursery() as nursery:
            await n.publish(epoch)
            await wait_for_consensus(epoch)
            good = (await served(n, [0]))[0]
            assert good is not None
            body, sigs = split_document(good)
            forged_body = bytearray(body)
            forged_body[-5] ^= 1
            forged = assemble(bytes(forged_body), sigs)
            stale = old_consensus(n, epoch - 1000)
            under = assemble(body, sigs[:1])
            stranger = Identity.generate()
            unknown = assemble(body, [*sigs[:2], sign_body(body, stranger)])
            bad_sources = [await serve_bytes(d, nursery) for d in (forged, stale, under, unknown)]
            got = await fetch_consensus(
                [*bad_sources, *n.authority_peers([1])], n.authorities, int(time.time())
            )
            assert got.raw == good and got.source.port == n.ports[1]

            with pytest.raises(NoUsableSource) as info:
                await fetch_consensus(bad_sources, n.authorities, int(time.time()))
            reasons = [(type(e).__name__, e.reason) for _, e in info.value.failures]
            assert reasons[0][0] in ("BadSignature", "MalformedDocument")
            assert reasons[1] == ("StaleDocument", "expired")
            assert reasons[2] == ("InsufficientSignatures", "too_few_signatures")
            assert reasons[3] == ("UnknownAuthority", "unknown_authority")
            # A rollback to an older (still valid) epoch is refused too.
            with pytest.raises(NoUsableSource) as info:
                await fetch_consensus(n.authority_peers([0]), n.authorities, min_epoch=epoch + 1)
            assert isinstance(info.value.failures[0][1], StaleDocument)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_relay_cache_serves_only_what_it_verified(tmp_path: Path) -> None:
    n = Net(tmp_path, n_nodes=2)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running(), trio.open_nursery() as nursery:
            await n.publish(epoch)
            await wait_for_consensus(epoch)
            good = (await served(n, [0]))[0]
            assert good is not None

            cache = DirectoryCache(n.authorities)
            relay = HtxKeys()
            listeners = await nursery.start(T.serve_tcp, cache.handle_link, relay.config)
            relay_peer = relay.peer(listeners[0].socket.getsockname()[1])

            # Empty cache: nothing to serve, and it is not an authority.
            with pytest.raises(RequestRefused) as refused:
                await net.ask(relay_peer, protocol.get_consensus(), timeout=3)
            assert refused.value.reason == "not_found"
            with pytest.raises(RequestRefused) as refused:
                await net.ask(relay_peer, protocol.post_vote(b"x"), timeout=3)
            assert refused.value.reason == "unavailable"

            # A forged document is never taken in.
            body, sigs = split_document(good)
            with pytest.raises(BadSignature):
                cache.offer_consensus(
                    assemble(body, [dataclasses.replace(sigs[0], ed25519=bytes(64)), *sigs[1:]])
                )
            assert cache.raw is None

            await cache.refresh(n.authority_peers([1]))
            assert cache.raw == good
            got = await fetch_consensus([relay_peer], n.authorities)
            assert got.raw == good
            for entry in got.consensus.nodes:
                _, desc = await fetch_descriptor([relay_peer], entry.descriptor.digest)
                assert desc.node_id == entry.node_id
            with pytest.raises(MalformedDocument):
                cache.offer_descriptor(n.nodes[0].descriptor(epoch + 5))  # not listed
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_mix_key_rotation_across_epochs(tmp_path: Path) -> None:
    n = Net(tmp_path, n_nodes=3)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running():
            await n.publish(epoch)
            await wait_for_consensus(epoch)
            first = verify_consensus(
                (await served(n, [0]))[0] or b"", n.authorities, int(time.time())
            )
            # Nodes republish for the next epoch (its vote is VOTE_LEAD before it starts).
            await n.publish(epoch + 1)
            await wait_for_consensus(epoch + 1)
            docs = await served(n, [0, 1, 2])
            assert docs[0] is not None and docs[0] == docs[1] == docs[2]
            second = verify_consensus(docs[0], n.authorities, int(time.time()))
            assert second.epoch == epoch + 1
            # Every reveal of the first epoch's commits opened: fresh randomness went in.
            assert second.srv_previous == first.srv and second.srv_reveals == 3
            for old, new in zip(first.nodes, second.nodes, strict=True):
                assert new.mix_current == old.mix_next
                assert Flag.MIX in new.flags

            # A packet built for the previous epoch's key is still processed by the node
            # during its grace period, and not after the key is erased.
            target = first.nodes[0]
            node = next(x for x in n.nodes if x.identity.node_id == target.node_id)
            route = S.mix_route(
                [(target.node_id, target.mix_current)],
                S.Slot(command=S.Command.DELIVER, address=bytes(32), tag=bytes(16)),
            )
            packet = S.build_packet(route, b"hello").packet
            now = int(time.time())
            assert PARAMS.epoch_at(now) == epoch + 1
            keys = node.mix.usable(now)
            assert [e for e, _ in keys] == [epoch + 1, epoch + 2, epoch]
            outcomes = [_try(packet, k) for _, k in keys]
            assert outcomes[:2] == [None, None] and outcomes[2] == b"hello"
            later = PARAMS.times(epoch + 1)[0] + 2 * EPOCH + 1
            assert epoch in node.mix.erase_expired(later)
            assert all(_try(packet, k) is None for _, k in node.mix.usable(later))

    trio.run(main)


def _try(packet: bytes, key: S.MixKey) -> bytes | None:
    try:
        out = S.unwrap(packet, key)
    except Exception:
        return None
    assert isinstance(out, S.Deliver)
    return out.message[:5]


def test_a_restarted_authority_keeps_its_consensus_and_reveal(tmp_path: Path) -> None:
    n = Net(tmp_path, n_nodes=1)

    async def main() -> None:
        epoch = next_round()
        await wait_until_round(epoch)
        async with n.running(which=(0, 1)):
            await n.publish(epoch, which=[0, 1])
            await wait_for_consensus(epoch)
            doc = (await served(n, [0]))[0]
        restarted = AuthorityService(n.config(0))
        assert restarted.document() == doc
        assert epoch + 1 in restarted._reveals

    trio.run(main)


def test_requests_time_out_and_unreachable_sources_are_typed(tmp_path: Path) -> None:
    async def main() -> None:
        keys = HtxKeys()

        async def slow(req: protocol.Request) -> protocol.Response:
            await trio.sleep(10)
            return protocol.ok()

        async def on_link(link: T.HtxLink) -> None:
            await net.serve_link(link, slow, timeout=5)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(T.serve_tcp, on_link, keys.config)
            peer = keys.peer(listeners[0].socket.getsockname()[1])
            with pytest.raises(DirectoryUnreachable) as info:
                await net.ask(peer, protocol.get_consensus(), timeout=0.5)
            assert info.value.reason == "timeout"
            # An oversized request is refused by the server with a reason.
            small = protocol.ProtocolLimits(max_request=100)

            async def tiny(link: T.HtxLink) -> None:
                await net.serve_link(link, slow, limits=small, timeout=5)

            listeners = await nursery.start(T.serve_tcp, tiny, keys.config)
            peer2 = keys.peer(listeners[0].socket.getsockname()[1])
            with pytest.raises(RequestRefused) as refused:
                await net.ask(peer2, protocol.post_vote(bytes(1000)), timeout=3)
            assert refused.value.reason == "bad_request"
            assert refused.value.remote_reason == "too_large"
            nursery.cancel_scope.cancel()
        closed = keys.peer(1)
        with pytest.raises(DirectoryUnreachable) as info:
            await net.ask(closed, protocol.get_consensus(), timeout=2)
        assert info.value.reason == "unreachable"

    trio.run(main)


def test_testnet_keys_writes_keys_and_a_list_the_node_config_reads(tmp_path: Path) -> None:
    from qnet.node.config import parse_config
    from tools.testnet_keys import main

    assert main(["--out", str(tmp_path), "--count", "3", "--base-port", "7101"]) == 0
    cfg = parse_config('[directory]\nauthorities_file = "authorities.toml"\n', tmp_path)
    entries = cfg.directory.authorities
    assert [e.port for e in entries] == [7101, 7102, 7103]
    assert len({e.server_name for e in entries}) == 3  # each its own name, none "localhost"
    assert "localhost" not in {e.server_name for e in entries}
    authorities = Authorities.of(e.identity for e in entries)
    assert authorities.threshold == 2
    assert all((tmp_path / f"auth{i}" / "keys" / "identity.key").exists() for i in (1, 2, 3))
    # Running it again keeps the keys.
    before = (tmp_path / "authorities.toml").read_text()
    main(["--out", str(tmp_path), "--count", "3", "--base-port", "7101"])
    assert (tmp_path / "authorities.toml").read_text() == before
