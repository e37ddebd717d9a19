"""The node's directory agent: descriptors from the config and key store, the consensus as
a ``DirectoryView``, and agents publishing to / fetching from real authorities on loopback.

The network test runs three ``AuthorityService``s with 4-second epochs and waits for
real epochs to pass (about 15 seconds).
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

from qnet.dir import net, protocol
from qnet.dir.authority import AuthorityConfig, AuthorityService
from qnet.dir.client import fetch_consensus
from qnet.dir.consensus import Consensus, compute_consensus
from qnet.dir.descriptor import (
    BODY_LIMITS,
    Action,
    Role,
    Transport,
    decode_body,
    parse_and_verify,
    split_envelope,
)
from qnet.dir.flags import Flag, FlagRules, Observation
from qnet.dir.vote import Authorities, DirectoryParams, build_vote
from qnet.htx import transport as T
from qnet.htx.ticket import TicketConfig
from qnet.node.config import PRIVATE_NETWORKS, NodeConfig, parse_config
from qnet.node.directory_agent import (
    SOFTWARE,
    ConsensusDirectory,
    DirectoryAgent,
    build_descriptor,
    descriptor_addresses,
    publish_epoch,
)
from qnet.node.keys import KeyStore

EPOCH = 4
PARAMS = DirectoryParams(
    epoch_length=EPOCH,
    rules=FlagRules(running_max_age=60, stable_min_uptime=3600, guard_min_known=3600),
)
#: Every process here dials from 127.0.0.1: lift the per-/24 ticket rate limit.
LOOPBACK_TICKETS = TicketConfig(rate_burst=1000, rate_per_second=1000)


def open_keys(path: Path) -> KeyStore:
    return KeyStore.open(path, server_name="localhost", now=time.time())


def server_config(keys: KeyStore) -> T.ServerConfig:
    return dataclasses.replace(keys.server_config(), ticket_config=LOOPBACK_TICKETS)


def authority_toml(stores: list[KeyStore], ports: list[int]) -> str:
    out = []
    for i, (s, port) in enumerate(zip(stores, ports, strict=True)):
        peer = s.peer_info("127.0.0.1", port, "localhost")
        out += [
            "[[directory.authorities]]",
            f'nickname = "auth{i}"',
            'address = "127.0.0.1"',
            f"port = {port}",
            f'id_ed25519 = "{s.identity.public.ed25519.hex()}"',
            f'id_mldsa65 = "{s.identity.public.mldsa65.hex()}"',
            f'link_x25519 = "{peer.link_public.hex()}"',
            f'kem_mlkem768 = "{peer.mlkem_public.hex()}"',
            f'ticket_x25519 = "{peer.ticket_public.hex()}"',
            f"ticket_key_id = {peer.ticket_key_id}",
            "",
        ]
    return "\n".join(out)


def node_config(
    tmp: Path,
    name: str,
    roles: list[str],
    authorities: str = "",
    extra: str = "",
    tcp_port: int = 0,
) -> NodeConfig:
    role_list = ", ".join(f'"{r}"' for r in roles)
    text = (
        f'[node]\nnickname = "{name}"\ndata_dir = "{name}"\nroles = [{role_list}]\n'
        f'[htx]\nhost = "127.0.0.1"\ntcp_port = {tcp_port}\n{extra}\n'
        f"[directory]\nepoch_seconds = {EPOCH}\n{authorities}"
    )
    return parse_config(text, tmp)


# --- descriptors -------------------------------------------------------------------------------


def test_descriptor_carries_the_config_and_keys(tmp_path: Path) -> None:
    cfg = node_config(
        tmp_path,
        "exit1",
        ["relay", "exit", "mix"],
        extra=(
            'quic_port = 4433\nadvertise = "192.0.2.7"\nserver_name = "Static.Amber-Harbor.net"\n'
            '[exit]\npolicy = ["accept *:443"]'
        ),
        tcp_port=8443,
    )
    keys = open_keys(cfg.node.data_dir)
    now = 1_700_000_000
    raw = build_descriptor(cfg, keys, 500, now, bandwidth=123_456, family=[bytes(32)])
    d = parse_and_verify(raw, now)
    assert d.node_id == keys.identity.node_id and d.published == now
    # [htx] server_name (lower-cased by the config: one spelling) is published and signed.
    assert cfg.htx.server_name == d.server_name == "static.amber-harbor.net"
    assert {(a.transport, str(a.ip), a.port) for a in d.addresses} == {
        (Transport.TCP, "192.0.2.7", 8443),
        (Transport.QUIC, "192.0.2.7", 4433),
    }
    assert set(d.roles) == {Role.RELAY, Role.EXIT, Role.MIX}
    assert d.exit_policy == cfg.exit.rules
    assert d.exit_policy[0].action is Action.REJECT and len(d.exit_policy) == len(
        PRIVATE_NETWORKS
    ) + len(cfg.exit.policy)
    assert d.allows_exit(ipaddress.ip_address("198.51.100.1"), 443)
    assert not d.allows_exit(ipaddress.ip_address("127.0.0.1"), 443)
    assert d.bandwidth == 123_456 and d.software == SOFTWARE and d.family == (bytes(32),)
    assert d.link_x25519 == keys.link.public_bytes
    assert d.kem_mlkem768 == keys.mlkem.public_bytes
    assert d.ticket_x25519 == keys.ticket_current.key.public_bytes
    assert d.ticket_key_id == keys.ticket_current.key_id
    mix = keys.mix_keys(500)
    assert d.mix_epoch == 500
    assert (d.mix_current, d.mix_next) == (mix.current.public_bytes, mix.next.public_bytes)

    # A node without the exit role publishes no policy; the bound port overrides 0.
    relay = node_config(tmp_path, "relay1", ["relay"])
    rkeys = open_keys(relay.node.data_dir)
    rd = parse_and_verify(build_descriptor(relay, rkeys, 1, now, tcp_port=9001), now)
    assert rd.exit_policy == () and rd.roles == (Role.RELAY,)
    assert [(str(a.ip), a.port) for a in rd.addresses] == [("127.0.0.1", 9001)]


def test_the_largest_exit_policy_the_config_allows_fits_a_descriptor(tmp_path: Path) -> None:
    room = 64 - len(PRIVATE_NETWORKS)
    rules = ", ".join(f'"accept [2001:db8:{i:x}::/48]:1000-2000"' for i in range(room))
    cfg = node_config(
        tmp_path,
        "big",
        ["relay", "exit", "mix"],
        extra=f"quic_port = 4433\n[exit]\npolicy = [{rules}]",
        tcp_port=443,
    )
    keys = open_keys(cfg.node.data_dir)
    family = [bytes([i + 1]) * 32 for i in range(32)]
    raw = build_descriptor(cfg, keys, 7, 1_000_000, family=family[:8])
    body, _ = split_envelope(raw)
    assert len(body) <= BODY_LIMITS.max_size
    assert len(parse_and_verify(raw, 1_000_000).exit_policy) == 64
    # With a full family as well it would be refused by every authority: say so here.
    with pytest.raises(ValueError, match="byte limit"):
        build_descriptor(cfg, keys, 7, 1_000_000, family=family)


def test_addresses_need_something_to_publish(tmp_path: Path) -> None:
    wild = parse_config('[htx]\nhost = "0.0.0.0"\n', tmp_path)
    with pytest.raises(ValueError, match="advertise"):
        descriptor_addresses(wild)
    adv = parse_config('[htx]\nhost = "::"\nadvertise = "2001:db8::1"\n', tmp_path)
    assert [str(a.ip) for a in descriptor_addresses(adv)] == ["2001:db8::1"]
    zero = parse_config('[htx]\nhost = "127.0.0.1"\ntcp_port = 0\n', tmp_path)
    with pytest.raises(ValueError, match="bound port"):
        descriptor_addresses(zero)
    assert descriptor_addresses(zero, tcp_port=5)[0].port == 5


def test_publish_epoch_is_the_first_epoch_whose_vote_is_ahead() -> None:
    # Epochs of 100 s, votes 50 s before each epoch starts.
    assert publish_epoch(1000, 100, 50) == 11  # start of epoch 10: publish for 11
    assert publish_epoch(1049, 100, 50) == 11
    assert publish_epoch(1050, 100, 50) == 12  # the vote for 11 has happened
    assert publish_epoch(1099, 100, 50) == 12


# --- the consensus as a DirectoryView (no network) -------------------------------------------


def local_consensus(tmp_path: Path, epoch: int) -> tuple[Consensus, list[KeyStore]]:
    now = PARAMS.times(epoch)[0] - 1
    stores, obs = [], []
    for i, roles in enumerate((["relay", "mix"], ["relay", "exit", "mix"], ["mix"])):
        cfg = node_config(tmp_path, f"n{i}", roles, extra=f'server_name = "n{i}.example.net"')
        keys = open_keys(cfg.node.data_dir)
        stores.append(keys)
        raw = build_descriptor(cfg, keys, epoch, now, tcp_port=7000 + i)
        desc = decode_body(split_envelope(raw)[0])
        obs.append(
            Observation(
                descriptor=desc,
                first_seen=now - 10,
                last_reachable=now - 1,
                running_since=now - 10,
                measured_bandwidth=desc.bandwidth,
            )
        )
    auth_keys = [open_keys(tmp_path / f"a{i}") for i in range(3)]
    authorities = Authorities.of(k.identity.public for k in auth_keys)
    votes = [build_vote(k.identity, epoch, obs, now, PARAMS) for k in auth_keys]
    return compute_consensus(votes, authorities, now, PARAMS), stores


def test_consensus_directory_answers_the_relay_and_the_mix_role(tmp_path: Path) -> None:
    cons, stores = local_consensus(tmp_path, 900)
    view = ConsensusDirectory(cons, own_id=stores[0].identity.node_id)
    assert view.epoch == 900 and len(view.entries) == 3
    assert view.own is not None and view.own.node_id == stores[0].identity.node_id
    for i, keys in enumerate(stores):
        nid = keys.identity.node_id
        peer = view.peer_info(nid)
        assert peer is not None
        assert (peer.host, peer.port) == ("127.0.0.1", 7000 + i)
        assert peer.server_name == f"n{i}.example.net"  # its own published name, SNI and Host
        assert peer.link_public == keys.link.public_bytes
        assert peer.mlkem_public == keys.mlkem.public_bytes
        assert peer.ticket_public == keys.ticket_current.key.public_bytes
        assert peer.ticket_key_id == keys.ticket_current.key_id
        assert view.node_for_link_key(keys.link.public_bytes) == nid
        mix = keys.mix_keys(900)
        assert view.current_mix_key(nid) == mix.current.public_bytes
        assert view.next_mix_key(nid) == mix.next.public_bytes
        assert view.mix_key(nid, 899) is None and view.mix_key(nid, 902) is None
    assert view.peer_info(bytes(32)) is None and view.node_for_link_key(bytes(32)) is None
    exits = view.with_flags(Flag.EXIT)
    assert [e.node_id for e in exits] == [stores[1].identity.node_id]
    assert sorted(len(view.layer(n)) for n in range(3)) == [1, 1, 1]
    # Relay caches to fetch from: the other relays (not the mix-only node, not itself).
    assert [p.port for p in view.caches()] == [7001]


# --- agents against real authorities ----------------------------------------------------------


class TestNet:
    """Three authorities on loopback and the TOML that points nodes at them."""

    __test__ = False

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stores = [open_keys(tmp / f"auth{i}") for i in range(3)]
        self.authorities = Authorities.of(s.identity.public for s in self.stores)
        self.ports = [0, 0, 0]

    def peers(self) -> dict[bytes, T.PeerInfo]:
        return {
            s.identity.node_id: s.peer_info("127.0.0.1", p, "localhost")
            for s, p in zip(self.stores, self.ports, strict=True)
        }

    def toml(self, ports: list[int] | None = None) -> str:
        return authority_toml(self.stores, ports or self.ports)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        async with trio.open_nursery() as nursery:
            socks = [trio.socket.socket() for _ in range(3)]
            for i, s in enumerate(socks):
                await s.bind(("127.0.0.1", 0))
                self.ports[i] = s.getsockname()[1]
            for s in socks:
                s.close()
            for i, store in enumerate(self.stores):
                service = AuthorityService(
                    AuthorityConfig(
                        identity=store.identity,
                        authorities=self.authorities,
                        peers=self.peers(),
                        data_dir=self.tmp / f"auth{i}",
                        params=PARAMS,
                        vote_lead=2.0,
                        consensus_lead=1.0,
                        reach_interval=1.0,
                        reach_timeout=3.0,
                        request_timeout=3.0,
                    )
                )
                await nursery.start(
                    lambda task_status, s=service, i=i, k=store: s.serve(
                        server_config(k), port=self.ports[i], task_status=task_status
                    )
                )
            yield nursery
            nursery.cancel_scope.cancel()


class RunningNode:
    """A node's key store, HTX listener (answering directory streams) and agent."""

    def __init__(self, keys: KeyStore, agent: DirectoryAgent, port: int) -> None:
        self.keys, self.agent, self.port = keys, agent, port
        self.seen: list[int] = []

    @property
    def node_id(self) -> bytes:
        return self.keys.identity.node_id


async def start_node(
    nursery: trio.Nursery, tmp: Path, name: str, roles: list[str], tn: TestNet
) -> RunningNode:
    cfg = node_config(tmp, name, roles, tn.toml())
    keys = open_keys(cfg.node.data_dir)
    holder: list[DirectoryAgent] = []

    async def on_link(link: T.HtxLink) -> None:
        await holder[0].handle_link(link)

    listeners = await nursery.start(T.serve_tcp, on_link, server_config(keys))
    port = listeners[0].socket.getsockname()[1]
    seen: list[int] = []
    agent = DirectoryAgent(
        cfg, keys, tcp_port=port, on_consensus=lambda c: seen.append(c.epoch), request_timeout=3
    )
    holder.append(agent)
    node = RunningNode(keys, agent, port)
    node.seen = seen
    await nursery.start(agent.run)
    return node


async def consensus_listing(agent: DirectoryAgent, ids: set[bytes]) -> Consensus:
    """The first consensus the agent takes that lists every node of ``ids``."""
    epoch = None
    while True:
        cons = await agent.wait_for_consensus(epoch)
        if ids <= {e.node_id for e in cons.nodes}:
            return cons
        epoch = cons.epoch + 1


def test_agents_publish_fetch_serve_and_follow_mix_key_rotation(tmp_path: Path) -> None:
    tn = TestNet(tmp_path)

    async def main() -> None:
        async with tn.running() as nursery:
            mixer = await start_node(nursery, tmp_path, "mixer", ["relay", "mix"], tn)
            exiter = await start_node(nursery, tmp_path, "exiter", ["relay", "exit", "mix"], tn)
            nodes = [mixer, exiter]
            ids = {n.node_id for n in nodes}
            with trio.fail_after(6 * EPOCH):
                first = [await consensus_listing(n.agent, ids) for n in nodes]
            epoch = max(c.epoch for c in first)
            with trio.fail_after(2 * EPOCH):
                cons = [await n.agent.wait_for_consensus(epoch) for n in nodes]
            assert cons[0].epoch == cons[1].epoch == epoch
            assert all(n.agent.accepted_by == {0, 1, 2} for n in nodes)
            view = nodes[0].agent.directory
            assert view is not None and view.own is not None
            for node in nodes:
                entry = view.entry(node.node_id)
                assert entry is not None
                assert {Flag.RUNNING, Flag.VALID, Flag.MIX} <= entry.flags
                assert (Flag.EXIT in entry.flags) == (node is exiter)
                d = entry.descriptor
                assert d.link_x25519 == node.keys.link.public_bytes
                assert d.kem_mlkem768 == node.keys.mlkem.public_bytes
                assert d.ticket_x25519 == node.keys.ticket_current.key.public_bytes
                assert d.mix_epoch == epoch
                assert entry.mix_current == node.keys.mix_keys(epoch).current.public_bytes
                assert view.node_for_link_key(node.keys.link.public_bytes) == node.node_id
                assert nodes[0].agent.node_for_link_key(d.link_x25519) == node.node_id
            assert view.node_for_link_key(tn.stores[0].link.public_bytes) is None

            # The published address and keys reach the node's listener, and the node
            # serves the consensus it verified from its cache.
            peer = nodes[0].agent.peer_info(exiter.node_id)
            assert peer is not None and peer.port == exiter.port
            async with T.dial_tcp(peer, timeout=5) as link:
                assert link.remote_static == exiter.keys.link.public_bytes
                docs = await net.request(link, protocol.get_consensus(), timeout=5)
            assert docs[0] == exiter.agent.cache.raw
            got = await fetch_consensus([peer], tn.authorities)
            assert got.consensus.epoch >= epoch

            # A node whose authorities are all unreachable still gets the consensus from
            # a relay it knows (its own publishing keeps failing meanwhile).
            dead = []
            for _ in range(3):
                s = trio.socket.socket()
                await s.bind(("127.0.0.1", 0))
                dead.append(s.getsockname()[1])
                s.close()
            lonely_cfg = node_config(tmp_path, "lonely", ["relay"], tn.toml(dead))
            lonely = DirectoryAgent(
                lonely_cfg,
                open_keys(lonely_cfg.node.data_dir),
                tcp_port=1,
                caches=[peer],
                request_timeout=2,
            )
            nursery.start_soon(lonely.run)
            with trio.fail_after(2 * EPOCH):
                via_cache = await lonely.wait_for_consensus()
            assert via_cache.epoch >= epoch and lonely.accepted_by == frozenset()

            # The next epoch's consensus shows the keys the last one showed as next.
            with trio.fail_after(2 * EPOCH):
                later = [await n.agent.wait_for_consensus(epoch + 1) for n in nodes]
            assert later[0].epoch == later[1].epoch == epoch + 1
            for node in nodes:
                old = cons[0].node(node.node_id)
                new = later[0].node(node.node_id)
                assert old is not None and new is not None
                assert new.mix_current == old.mix_next
                assert new.mix_current == node.keys.mix_keys(epoch + 1).current.public_bytes
                assert Flag.MIX in new.flags
                assert node.seen == sorted(set(node.seen)) and node.seen[-1] == epoch + 1

    trio.run(main)
