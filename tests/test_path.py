"""Path selection, guards and build timeouts (spec/paths.md) over synthetic consensuses."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import random
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path as FsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.client.guards import (
    GUARDS_FILE,
    WEEK,
    GuardConfig,
    GuardSet,
    GuardStateError,
    load_guards,
    save_guards,
)
from qnet.client.path import (
    ExitSupport,
    NoPathError,
    Path,
    PathConfig,
    PathSelector,
    exit_support,
    onion_key,
    weighted_index,
)
from qnet.client.timeouts import BuildTimeouts, TimeoutConfig
from qnet.dir.consensus import Consensus, ConsensusEntry, bandwidth_weights
from qnet.dir.descriptor import Action, Address, PolicyRule, Role, Transport
from qnet.dir.flags import Flag
from qnet.dir.vote import NodeSummary

EPOCH = 500_000
NOW = 1_800_000_000
BASE = frozenset({Flag.RUNNING, Flag.VALID, Flag.FAST, Flag.STABLE})
GUARD = BASE | {Flag.GUARD}
EXIT = BASE | {Flag.EXIT}
FUZZ = settings(max_examples=120, deadline=None)


def rule(action: Action, net: str, lo: int = 1, hi: int = 65535) -> PolicyRule:
    return PolicyRule(action=action, network=ipaddress.ip_network(net), port_min=lo, port_max=hi)


ACCEPT_ALL = (rule(Action.ACCEPT, "0.0.0.0/0"),)
REJECT_ALL = (rule(Action.REJECT, "0.0.0.0/0"),)


def nid(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def node(
    i: int,
    ip: str | Sequence[str],
    flags: Iterable[Flag] = BASE,
    *,
    bw: int = 1000,
    policy: tuple[PolicyRule, ...] | None = None,
    family: Iterable[int] = (),
    port: int = 9000,
    mix_epoch: int = EPOCH,
) -> ConsensusEntry:
    flags = frozenset(flags)
    exit_ = Flag.EXIT in flags or policy is not None
    ips = [ip] if isinstance(ip, str) else list(ip)
    return ConsensusEntry(
        node_id=nid(i),
        descriptor=NodeSummary(
            digest=bytes(32),
            published=NOW - 60,
            id_ed25519=bytes(32),
            addresses=tuple(
                Address(transport=Transport.TCP, ip=ipaddress.ip_address(a), port=port + i)
                for a in ips
            ),
            roles=(Role.EXIT, Role.RELAY) if exit_ else (Role.RELAY,),
            exit_policy=(ACCEPT_ALL if policy is None else policy) if exit_ else (),
            family=tuple(sorted(nid(f) for f in family)),
            bandwidth=bw,
            software="qnet-test",
            server_name=f"node{i}.example.net",
            link_x25519=bytes([i % 256]) * 32,
            kem_mlkem768=bytes(1184),
            ticket_x25519=bytes([1]) * 32,
            ticket_key_id=7,
            mix_epoch=mix_epoch,
            mix_current=b"C" + nid(i)[1:],
            mix_next=b"N" + nid(i)[1:],
        ),
        flags=flags,
        bandwidth=bw,
        mix_layer=None,
    )


def consensus(entries: Iterable[ConsensusEntry], epoch: int = EPOCH) -> Consensus:
    nodes = tuple(sorted(entries, key=lambda e: e.node_id))
    return Consensus(
        epoch=epoch,
        valid_after=NOW - 100,
        fresh_until=NOW + 3500,
        valid_until=NOW + 10_000,
        voters=(bytes(32),),
        params={},
        srv=bytes(32),
        srv_previous=bytes(32),
        srv_reveals=0,
        commits=(),
        weights=bandwidth_weights((n.flags, n.bandwidth) for n in nodes),
        nodes=nodes,
    )


def spread_ip(i: int) -> str:
    """A different /16 for every i."""
    return f"198.{i % 200}.{i // 200}.1"


def small_network(n_guards: int = 4, n_middles: int = 4, n_exits: int = 3) -> Consensus:
    entries = []
    i = 0
    for flags, count in ((GUARD, n_guards), (BASE, n_middles), (EXIT, n_exits)):
        for _ in range(count):
            entries.append(node(i, spread_ip(i), flags))
            i += 1
    return consensus(entries)


def config(**values: object) -> PathConfig:
    return PathConfig.builder(**values).build()


def check_path(sel: PathSelector, path: Path, port: int | None) -> None:
    """Every rule of spec/paths.md §3 holds for ``path`` in ``sel``'s consensus."""
    cons = sel.consensus
    entries = [cons.node(h.node_id) for h in path.hops]
    assert all(e is not None for e in entries)
    nodes = [e for e in entries if e is not None]
    assert len(nodes) == sel.config.n_hops == len(path.peers)
    assert len({n.node_id for n in nodes}) == len(nodes)
    for n in nodes:
        assert {Flag.RUNNING, Flag.VALID, Flag.FAST} <= n.flags
    assert Flag.GUARD in nodes[0].flags
    assert Flag.EXIT in nodes[-1].flags
    if port is not None:
        assert exit_support(nodes[-1].descriptor, port) is not ExitSupport.NO
    for a in nodes:
        for b in nodes:
            if a is b:
                continue
            mutual = b.node_id in a.descriptor.family and a.node_id in b.descriptor.family
            assert not mutual, "two hops of one family"
            if sel.config.enforce_distinct_subnets:
                for x in a.descriptor.addresses:
                    for y in b.descriptor.addresses:
                        if x.ip.version != y.ip.version:
                            continue
                        bits = 16 if x.ip.version == 4 else 32
                        assert ipaddress.ip_network((x.ip, bits), strict=False) != (
                            ipaddress.ip_network((y.ip, bits), strict=False)
                        ), "two hops in one subnet"
    for h, p, n in zip(path.hops, path.peers, nodes, strict=True):
        assert h.onion_public == n.descriptor.mix_current
        assert p.link_public == n.descriptor.link_x25519
        assert p.port == n.descriptor.addresses[0].port
        assert p.host == str(n.descriptor.addresses[0].ip)
        assert p.server_name == n.descriptor.server_name  # each hop's own published name


# --- weighting --------------------------------------------------------------------------------


def test_weighted_index_follows_weights_and_is_uniform_on_zero() -> None:
    rng = random.Random(1)
    counts = Counter(weighted_index([1, 0, 3], rng) for _ in range(8000))
    assert counts[1] == 0
    assert abs(counts[2] / 8000 - 0.75) < 0.02
    zero = Counter(weighted_index([0, 0, 0, 0], rng) for _ in range(4000))
    assert all(abs(zero[i] / 4000 - 0.25) < 0.03 for i in range(4))


def test_choice_follows_bandwidth() -> None:
    # Plenty of exit bandwidth (wee < 10,000, so exits also serve as middles).
    entries = [node(i, spread_ip(i), GUARD, bw=4000) for i in range(3)]
    middle_bw = {10: 1000, 11: 2000, 12: 3000, 13: 6000}
    entries += [node(i, spread_ip(i), BASE, bw=b) for i, b in middle_bw.items()]
    exit_bw = {20: 5000, 21: 10000, 22: 25000}
    entries += [node(i, spread_ip(i), EXIT, bw=b) for i, b in exit_bw.items()]
    cons = consensus(entries)
    sel = PathSelector(cons, config(), random.Random(7))
    n = 6000
    exits: Counter[bytes] = Counter()
    middles: Counter[bytes] = Counter()
    for _ in range(n):
        p = sel.build_path(443, now=NOW)
        exits[p.exit_id] += 1
        middles[p.hops[1].node_id] += 1
    # The exit is drawn first and unconditioned: shares are the bandwidths' shares.
    total = sum(exit_bw.values())
    for i, b in exit_bw.items():
        assert abs(exits[nid(i)] / n - b / total) < 0.025
    # Among plain middles (never entry or exit), choice is proportional to bandwidth.
    plain = sum(middles[nid(i)] for i in middle_bw)
    for i, b in middle_bw.items():
        assert abs(middles[nid(i)] / plain - b / sum(middle_bw.values())) < 0.03


def test_scarce_exits_are_kept_for_the_exit_position() -> None:
    entries = [node(i, spread_ip(i), GUARD, bw=10_000) for i in range(3)]
    entries += [node(i, spread_ip(i), BASE, bw=10_000) for i in range(10, 16)]
    entries += [node(i, spread_ip(i), EXIT, bw=1000) for i in range(20, 23)]
    cons = consensus(entries)
    assert cons.weights["wme"] == 0 and cons.weights["wee"] == 10_000
    sel = PathSelector(cons, config(), random.Random(3))
    exit_ids = {nid(i) for i in range(20, 23)}
    for _ in range(300):
        p = sel.build_path(80, now=NOW)
        assert p.hops[1].node_id not in exit_ids


# --- constraints ------------------------------------------------------------------------------


@st.composite
def random_network(draw: st.DrawFn) -> tuple[Consensus, int]:
    n = draw(st.integers(4, 18))
    entries = []
    for i in range(n):
        # Few /16s and /32s, so that the subnet rule bites.
        ips = [f"{draw(st.sampled_from([11, 12]))}.{draw(st.integers(0, 2))}.{i}.1"]
        if draw(st.booleans()):
            ips.append(f"2001:db8:{draw(st.integers(0, 2)):x}::{i + 1:x}")
        flags = set(BASE)
        for f in (Flag.GUARD, Flag.EXIT):
            if draw(st.booleans()):
                flags.add(f)
        for f in (Flag.FAST, Flag.RUNNING):
            if draw(st.integers(0, 9)) == 0:
                flags.discard(f)
        policy = None
        if Flag.EXIT in flags:
            lo = draw(st.integers(1, 1000))
            policy = (
                rule(
                    draw(st.sampled_from([Action.ACCEPT, Action.REJECT])),
                    "0.0.0.0/0",
                    lo,
                    lo + draw(st.integers(0, 500)),
                ),
                *draw(st.sampled_from([ACCEPT_ALL, REJECT_ALL])),
            )
        family = draw(st.sets(st.integers(0, n - 1), max_size=4)) - {i}
        entries.append(
            node(i, ips, flags, bw=draw(st.integers(0, 5000)), policy=policy, family=family)
        )
    return consensus(entries), draw(st.integers(1, 1500))


@FUZZ
@given(random_network(), st.integers(0, 2**32), st.booleans(), st.booleans())
def test_no_path_breaks_the_rules(
    net: tuple[Consensus, int], seed: int, with_guards: bool, four_hops: bool
) -> None:
    cons, port = net
    rng = random.Random(seed)
    guards = GuardSet(GuardConfig.builder(sample_size=5).build(), rng) if with_guards else None
    sel = PathSelector(cons, config(n_hops=4 if four_hops else 3), rng, guards=guards)
    for _ in range(5):
        try:
            path = sel.build_path(port, now=NOW)
        except NoPathError as exc:
            assert exc.reason in {
                "no_exit",
                "no_guard",
                "no_middle",
                "constraints",
                "too_few_nodes",
            }
            continue
        check_path(sel, path, port)
        if guards is not None:
            assert path.entry_id in guards.entry_candidates(sel, NOW)


def test_family_needs_both_sides_and_is_never_shared() -> None:
    # Guard 0 and middle 10 declare each other; guard 1 names middle 11, which does not
    # name it back (so that pair may share a path).
    entries = [
        node(0, spread_ip(0), GUARD, family=[10]),
        node(1, spread_ip(1), GUARD, family=[11]),
        node(10, spread_ip(10), BASE, family=[0]),
        node(11, spread_ip(11), BASE),
        node(20, spread_ip(20), EXIT),
    ]
    sel = PathSelector(consensus(entries), config(), random.Random(5))
    seen = set()
    for _ in range(400):
        p = sel.build_path(80, now=NOW)
        ids = set(p.node_ids)
        assert not {nid(0), nid(10)} <= ids
        seen.add(tuple(p.node_ids))
    assert (nid(1), nid(11), nid(20)) in seen
    relaxed = PathSelector(consensus(entries), config(enforce_family=False), random.Random(5))
    assert any(
        {nid(0), nid(10)} <= set(relaxed.build_path(80, now=NOW).node_ids) for _ in range(400)
    )


def test_subnet_rule_and_its_relaxation_on_loopback() -> None:
    entries = [node(i, "127.0.0.1", GUARD if i < 2 else EXIT if i > 4 else BASE) for i in range(7)]
    cons = consensus(entries)
    with pytest.raises(NoPathError):
        PathSelector(cons, config(), random.Random(1)).build_path(80, now=NOW)
    sel = PathSelector(cons, config(enforce_distinct_subnets=False), random.Random(1))
    for _ in range(50):
        p = sel.build_path(80, now=NOW)
        check_path(sel, p, 80)
        assert {peer.host for peer in p.peers} == {"127.0.0.1"}
        assert len({peer.port for peer in p.peers}) == 3


def test_ipv6_slash_32_counts_as_one_subnet() -> None:
    entries = [
        node(0, ["2001:db8:1::1"], GUARD),
        node(1, ["2001:db8:2::1"], BASE),  # same /32 as the guard
        node(2, ["2001:db9::1"], BASE),
        node(3, ["2001:dba::1"], EXIT),
    ]
    sel = PathSelector(consensus(entries), config(), random.Random(2))
    for _ in range(50):
        assert sel.build_path(80, now=NOW).hops[1].node_id == nid(2)


# --- exits ------------------------------------------------------------------------------------


def exits_network() -> Consensus:
    entries = [node(i, spread_ip(i), GUARD) for i in range(2)]
    entries += [node(i, spread_ip(i), BASE) for i in range(10, 13)]
    entries += [
        node(20, spread_ip(20), EXIT, policy=(rule(Action.ACCEPT, "0.0.0.0/0", 80, 80),)),
        node(21, spread_ip(21), EXIT, policy=(rule(Action.ACCEPT, "0.0.0.0/0", 443, 443),)),
        node(
            22,
            spread_ip(22),
            EXIT,
            policy=(rule(Action.ACCEPT, "127.0.0.0/8"), *REJECT_ALL),
        ),
    ]
    return consensus(entries)


def test_exit_chosen_by_policy_for_the_port() -> None:
    sel = PathSelector(exits_network(), config(), random.Random(9))
    for _ in range(100):
        assert sel.build_path(80, now=NOW).exit_id == nid(20)
        assert sel.build_path(443, now=NOW).exit_id == nid(21)
        assert sel.build_path(443, now=NOW, address="8.8.8.8").exit_id == nid(21)
        # The loopback exit only "might" serve a hostname on port 8080, and is the only one.
        assert sel.build_path(8080, now=NOW).exit_id == nid(22)
        assert sel.build_path(8080, now=NOW, address="127.0.0.1").exit_id == nid(22)
    assert {sel.build_path(None, now=NOW).exit_id for _ in range(100)} == {
        nid(20),
        nid(21),
        nid(22),
    }


def test_no_path_when_no_exit_allows_the_port() -> None:
    sel = PathSelector(exits_network(), config(), random.Random(9))
    with pytest.raises(NoPathError) as info:
        sel.build_path(8080, now=NOW, address="8.8.8.8")
    assert info.value.reason == "no_exit"
    assert isinstance(info.value, LookupError)
    cons = small_network(n_exits=0)
    with pytest.raises(NoPathError, match="no_exit"):
        PathSelector(cons, config(), random.Random(1)).build_path(80, now=NOW)
    with pytest.raises(ValueError):
        sel.build_path(0, now=NOW)


def test_exit_support_for_hostnames() -> None:
    def support(*rules: PolicyRule) -> ExitSupport:
        return exit_support(node(1, "1.2.3.4", EXIT, policy=tuple(rules)).descriptor, 80)

    assert support(*ACCEPT_ALL) is ExitSupport.SURE
    # Narrow public holes and private ranges do not make a port doubtful...
    assert support(rule(Action.REJECT, "10.0.0.0/8"), *ACCEPT_ALL) is ExitSupport.SURE
    assert support(rule(Action.REJECT, "1.2.3.0/24"), *ACCEPT_ALL) is ExitSupport.SURE
    # ...a wide public reject does.
    assert support(rule(Action.REJECT, "0.0.0.0/1"), *ACCEPT_ALL) is ExitSupport.NO
    assert support(*REJECT_ALL) is ExitSupport.NO
    assert support(rule(Action.ACCEPT, "1.2.3.0/24"), *REJECT_ALL) is ExitSupport.MAYBE
    assert support(rule(Action.ACCEPT, "0.0.0.0/0", 443, 443)) is ExitSupport.NO
    relay = node(2, "1.2.3.5", BASE).descriptor
    assert exit_support(relay, 80) is ExitSupport.NO


def test_exit_flag_can_be_relaxed_for_test_networks() -> None:
    entries = [node(i, spread_ip(i), GUARD) for i in range(2)]
    entries += [node(i, spread_ip(i), BASE) for i in range(10, 12)]
    # A loopback-only exit: the authorities never give it the Exit flag.
    loop_only = (rule(Action.ACCEPT, "127.0.0.0/8"), *REJECT_ALL)
    entries.append(node(20, spread_ip(20), BASE, policy=loop_only))
    cons = consensus(entries)
    with pytest.raises(NoPathError, match="no_exit"):
        PathSelector(cons, config(), random.Random(1)).build_path(80, now=NOW)
    sel = PathSelector(cons, config(require_exit_flag=False), random.Random(1))
    assert sel.build_path(80, now=NOW, address="127.0.0.1").exit_id == nid(20)


def test_stable_needed_for_long_lived_ports() -> None:
    entries = [node(i, spread_ip(i), GUARD) for i in range(2)]
    entries += [node(10, spread_ip(10), BASE - {Flag.STABLE}), node(11, spread_ip(11), BASE)]
    entries += [node(20, spread_ip(20), EXIT)]
    sel = PathSelector(consensus(entries), config(), random.Random(4))
    for _ in range(50):
        assert nid(10) not in sel.build_path(22, now=NOW).node_ids
        assert nid(10) not in sel.build_path(80, now=NOW, stable=True).node_ids
    assert any(nid(10) in sel.build_path(80, now=NOW).node_ids for _ in range(100))


def test_isolation_keys_get_different_exits_when_possible() -> None:
    sel = PathSelector(small_network(n_exits=2), config(), random.Random(11))
    for _ in range(30):
        a = sel.build_path(80, now=NOW, isolation="alice")
        b = sel.build_path(80, now=NOW, isolation="bob")
        assert a.exit_id != b.exit_id
        assert a.isolation == "alice"
    # With a single exit, isolation cannot be had by exits: it still builds.
    one = PathSelector(small_network(n_exits=1), config(), random.Random(11))
    assert (
        one.build_path(80, now=NOW, isolation="a").exit_id
        == one.build_path(80, now=NOW, isolation="b").exit_id
    )


def test_avoid_and_onion_keys_by_epoch() -> None:
    cons = small_network()
    sel = PathSelector(cons, config(), random.Random(12))
    first = sel.build_path(80, now=NOW)
    again = sel.build_path(80, now=NOW, avoid=[first.hops[1].node_id])
    assert first.hops[1].node_id not in again.node_ids
    # A summary from the epoch before gives its "next" key; an older one is unusable.
    old = node(1, "1.1.1.1", GUARD, mix_epoch=EPOCH - 1)
    assert onion_key(old, EPOCH) == old.descriptor.mix_next
    assert onion_key(node(1, "1.1.1.1", GUARD, mix_epoch=EPOCH - 2), EPOCH) is None
    n0 = cons.nodes[0]
    stale = [dataclasses.replace(n0, descriptor=node(0, "1.0.0.1", mix_epoch=1).descriptor)]
    sel.set_consensus(consensus([*stale, *cons.nodes[1:]]))
    for _ in range(30):
        assert nid(0) not in sel.build_path(80, now=NOW).node_ids
    for n in stale:
        assert not sel.usable_guard(n.node_id)


def test_path_converts_for_the_circuit_manager() -> None:
    from qnet.client.circuits import Path as CircuitPath

    p = PathSelector(small_network(), config(), random.Random(1)).build_path(80, now=NOW)
    cp = p.for_circuit()
    assert isinstance(cp, CircuitPath)
    assert cp.hops == p.hops and cp.entry == p.entry and cp.entry_id == p.entry_id


def test_configs_are_immutable_and_checked() -> None:
    cfg = PathConfig.builder().set(n_hops=4).set(enforce_distinct_subnets=False).build()
    assert cfg.n_hops == 4 and not cfg.enforce_distinct_subnets
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_hops = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        PathConfig.builder(hops=3)
    with pytest.raises(ValueError):
        PathConfig.builder(n_hops=1).build()
    with pytest.raises(TypeError):
        PathConfig.builder(enforce_family=1).build()
    with pytest.raises(ValueError):
        GuardConfig.builder(lifetime_min=10, lifetime_max=5).build()
    with pytest.raises(ValueError):
        TimeoutConfig.builder(floor=5.0, initial=1.0).build()


# --- guards -----------------------------------------------------------------------------------


def guard_network(n_guards: int = 8, skip: Iterable[int] = ()) -> Consensus:
    gone = set(skip)
    entries = [node(i, spread_ip(i), GUARD, bw=1000 + i) for i in range(n_guards) if i not in gone]
    entries += [node(i, spread_ip(i), BASE) for i in range(100, 104)]
    entries += [node(i, spread_ip(i), EXIT) for i in range(200, 203)]
    return consensus(entries)


def guarded(
    cons: Consensus, rng_seed: int = 1, **guard_values: object
) -> tuple[PathSelector, GuardSet]:
    rng = random.Random(rng_seed)
    guards = GuardSet(GuardConfig.builder(sample_size=6, **guard_values).build(), rng)
    return PathSelector(cons, config(), rng, guards=guards), guards


def test_first_hop_is_the_first_primary_guard() -> None:
    sel, guards = guarded(guard_network())
    entries = {sel.build_path(80, now=NOW).entry_id for _ in range(50)}
    primary = guards.primary(sel)
    assert len(primary) == 3 and len(guards.records) == 6
    assert entries == {primary[0]}


def test_guards_persist_across_restarts(tmp_path: FsPath) -> None:
    file = tmp_path / GUARDS_FILE
    cons = guard_network()
    sel, guards = guarded(cons)
    sel.build_path(80, now=NOW)
    guards.note_failure(guards.primary(sel)[1], NOW)
    assert guards.dirty
    save_guards(file, guards)
    assert not guards.dirty
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [GUARDS_FILE]  # no temporary left
    # A "restart": new objects, another random seed; the same guards in the same order.
    again = load_guards(file, GuardConfig.builder(sample_size=6).build(), random.Random(99))
    assert again.records == guards.records
    sel2 = PathSelector(cons, config(), random.Random(99), guards=again)
    assert sel2.build_path(80, now=NOW + 60).entry_id == guards.primary(sel)[0]
    assert not again.dirty
    assert json.loads(file.read_text())["format"] == "qnet-guards-v1"
    assert load_guards(tmp_path / "absent.json").records == ()


def test_guards_rotate_after_their_lifetime() -> None:
    cfg = {"lifetime_min": 2 * WEEK, "lifetime_max": 3 * WEEK}
    sel, guards = guarded(guard_network(n_guards=20), **cfg)
    sel.build_path(80, now=NOW)
    first = guards.records
    assert all(2 * WEEK <= r.expires_at - r.added_at <= 3 * WEEK for r in first)
    assert len({r.expires_at for r in first}) > 1  # randomized
    assert guards.update(sel, NOW + 2 * WEEK - 1).dropped == ()
    later = NOW + 3 * WEEK
    changes = guards.update(sel, later)
    assert set(changes.dropped) == {r.node_id for r in first}
    assert len(changes.added) == 6
    assert all(r.added_at == later for r in guards.records)


def test_unreachable_guards_are_skipped_then_retried() -> None:
    sel, guards = guarded(guard_network(), failure_threshold=2, retry_initial=600)
    first = sel.build_path(80, now=NOW).entry_id
    guards.note_failure(first, NOW)
    assert sel.build_path(80, now=NOW).entry_id == first  # one failure is not enough
    guards.note_failure(first, NOW)
    record = guards.get(first)
    assert record is not None and record.retry_at == NOW + 600
    second = sel.build_path(80, now=NOW + 1).entry_id
    assert second != first and second == guards.primary(sel)[1]
    # Due for a retry: the first primary guard is tried again; failing doubles the wait.
    assert sel.build_path(80, now=NOW + 600).entry_id == first
    guards.note_failure(first, NOW + 600)
    record = guards.get(first)
    assert record is not None and record.retry_at == NOW + 600 + 1200
    assert record.unreachable_since == NOW
    guards.note_success(first, NOW + 2000)
    assert sel.build_path(80, now=NOW + 2000).entry_id == first


def test_avoid_does_not_move_the_guard() -> None:
    sel, guards = guarded(guard_network())
    first = sel.build_path(80, now=NOW)
    again = sel.build_path(80, now=NOW, avoid=first.node_ids)
    assert again.entry_id == first.entry_id
    assert not set(again.node_ids[1:]) & set(first.node_ids)


def test_all_guards_unreachable_is_no_guard() -> None:
    sel, guards = guarded(guard_network(n_guards=3), failure_threshold=1)
    sel.build_path(80, now=NOW)
    for r in guards.records:
        guards.note_failure(r.node_id, NOW)
    with pytest.raises(NoPathError, match="no_guard"):
        sel.build_path(80, now=NOW + 1)


def test_non_primary_guards_only_when_no_primary_can_serve() -> None:
    sel, guards = guarded(guard_network(), failure_threshold=1)
    sel.build_path(80, now=NOW)
    primary = guards.primary(sel)
    for g in primary:
        guards.note_failure(g, NOW)
    entry = sel.build_path(80, now=NOW + 1).entry_id
    assert entry not in primary
    assert entry == [r.node_id for r in guards.records if r.node_id not in primary][0]


def test_guards_leaving_the_consensus_are_dropped() -> None:
    sel, guards = guarded(guard_network(n_guards=8))
    sel.build_path(80, now=NOW)
    gone = guards.primary(sel)[0]
    index = int.from_bytes(gone[:4], "big")
    sel.set_consensus(guard_network(n_guards=8, skip=[index]))
    entry = sel.build_path(80, now=NOW + 10).entry_id
    assert guards.get(gone) is None and entry != gone
    assert len(guards.records) == 6
    # A guard that only lost its flags stays sampled, but is not used.
    keep = guards.primary(sel)[0]
    i = int.from_bytes(keep[:4], "big")
    flagless = [
        n if n.node_id != keep else node(i, spread_ip(i), BASE) for n in sel.consensus.nodes
    ]
    sel.set_consensus(consensus(flagless))
    assert sel.build_path(80, now=NOW + 20).entry_id != keep
    assert guards.get(keep) is not None and keep not in guards.primary(sel)


def test_primary_guard_conflicting_with_every_exit_gives_way() -> None:
    entries = [
        node(0, "11.0.0.1", GUARD, bw=10**9),  # the /16 of the only exit
        node(1, spread_ip(1), GUARD),
        node(10, spread_ip(10), BASE),
        node(20, "11.0.9.9", EXIT),
    ]
    rng = random.Random(0)
    guards = GuardSet(GuardConfig.builder(n_primary=2, sample_size=2).build(), rng)
    sel = PathSelector(consensus(entries), config(), rng, guards=guards)
    assert sel.build_path(80, now=NOW).entry_id == nid(1)


def test_corrupt_guard_state(tmp_path: FsPath, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / GUARDS_FILE
    for junk in (
        b"{not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"format": "qnet-guards-v1", "guards": [{"node_id": "00"}]}).encode(),
        json.dumps({"format": "other", "guards": []}).encode(),
    ):
        file.write_bytes(junk)
        with pytest.raises(GuardStateError) as info:
            load_guards(file)
        assert info.value.path == file and info.value.reason == "corrupt"
        assert str(file) in str(info.value)
    # The other policy: move it aside, warn, start afresh.
    with caplog.at_level("WARNING"):
        fresh = load_guards(file, on_corrupt="fresh")
    assert fresh.records == () and fresh.dirty
    assert not file.exists() and (tmp_path / (GUARDS_FILE + ".corrupt")).exists()
    assert "corrupt" in caplog.text
    # Duplicated guards are corrupt too.
    sel, guards = guarded(guard_network())
    sel.build_path(80, now=NOW)
    doc = guards.to_json()
    rows = doc["guards"]
    assert isinstance(rows, list)
    doc["guards"] = [*rows, rows[0]]
    file.write_text(json.dumps(doc))
    with pytest.raises(GuardStateError, match="twice"):
        load_guards(file)


# --- build timeouts ---------------------------------------------------------------------------


def test_build_timeout_starts_at_initial_and_converges() -> None:
    cbt = BuildTimeouts(TimeoutConfig.builder(initial=10.0, floor=0.01).build())
    assert cbt.timeout(NOW) == 10.0
    rng = random.Random(5)
    for k in range(19):
        cbt.record_success(rng.uniform(1.0, 2.0), NOW + k)
    assert cbt.timeout(NOW + 20) == 10.0  # fewer than min_samples
    for k in range(500):
        cbt.record_success(rng.uniform(1.0, 2.0), NOW + k)
    assert abs(cbt.timeout(NOW + 500) - 1.8) < 0.1
    # The network slows down: the window follows.
    for k in range(100):
        cbt.record_success(rng.uniform(4.0, 6.0), NOW + 600 + k)
    assert abs(cbt.timeout(NOW + 700) - 5.6) < 0.2


def test_build_timeout_respects_floor_and_ceiling() -> None:
    cfg = TimeoutConfig.builder(floor=0.5, ceiling=20.0).build()
    fast = BuildTimeouts(cfg)
    slow = BuildTimeouts(cfg)
    for k in range(50):
        fast.record_success(0.01, NOW + k)
        slow.record_success(300.0, NOW + k)
    assert fast.timeout(NOW + 50) == 0.5
    assert slow.timeout(NOW + 50) == 20.0
    with pytest.raises(ValueError):
        fast.record_success(-1.0, NOW)


def test_build_timeout_resets_when_most_builds_time_out() -> None:
    cbt = BuildTimeouts(TimeoutConfig.builder(floor=0.1).build())
    for k in range(40):
        cbt.record_success(1.0, NOW + k)
    assert cbt.timeout(NOW + 40) == 1.0
    for k in range(14):
        cbt.record_timeout(NOW + 40 + k)
    assert cbt.resets == 0 and cbt.timeout(NOW + 60) == 1.0
    cbt.record_timeout(NOW + 60)  # 15 of the last 20
    assert cbt.resets == 1
    assert cbt.samples(NOW + 60) == []
    assert cbt.timeout(NOW + 60) == 2.0  # doubled until new samples arrive
    for k in range(20):
        cbt.record_success(0.5, NOW + 70 + k)
    assert cbt.timeout(NOW + 90) == 0.5


def test_old_build_samples_are_forgotten() -> None:
    cbt = BuildTimeouts(TimeoutConfig.builder(max_sample_age=100.0).build())
    for k in range(30):
        cbt.record_success(3.0, NOW + k)
    assert cbt.timeout(NOW + 30) == 3.0
    assert cbt.timeout(NOW + 200) == 10.0
