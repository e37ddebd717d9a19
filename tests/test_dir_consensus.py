"""Votes, flags, shared randomness, the consensus and its verification (spec/directory.md §8)."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.dir import encoding
from qnet.dir.consensus import (
    ConsensusSignature,
    assemble,
    assign_layers,
    bandwidth_weights,
    check_signature,
    compute_consensus,
    decode_consensus_body,
    decode_signature,
    shared_random,
    sign_body,
    split_document,
    verify_consensus,
)
from qnet.dir.descriptor import (
    Action,
    Address,
    Descriptor,
    PolicyRule,
    Role,
    Transport,
    envelope,
    split_envelope,
)
from qnet.dir.flags import Flag, FlagRules, Observation, assign_flags, low_median, permille
from qnet.dir.identity import Identity
from qnet.dir.vote import (
    Authorities,
    DirectoryParams,
    Vote,
    build_vote,
    decode_vote_body,
    parse_vote,
    srv_commit,
)
from qnet.errors import (
    BadSignature,
    DirectoryError,
    InsufficientSignatures,
    InsufficientVotes,
    MalformedDocument,
    StaleDocument,
    UnknownAuthority,
)
from qnet.lint.consensus_vectors import check_consensus

ROOT = Path(__file__).resolve().parent.parent
DOC = load_vectors("directory_consensus.json")
X = bytes.fromhex
FUZZ = settings(max_examples=150, deadline=None)

# A test network: 10-second epochs, thresholds in seconds.
RULES = FlagRules(
    running_max_age=5,
    stable_min_uptime=30,
    guard_min_known=60,
    fast_guarantee=100,
    guard_guarantee=1_000,
)
PARAMS = DirectoryParams(
    epoch_length=10, validity_epochs=3, max_skew=1, vote_max_age=20, rules=RULES
)
EPOCH = 100  # valid_after = 1000
VA = PARAMS.times(EPOCH)[0]
NOW = VA - 2  # authorities vote and compute just before the epoch starts
AUTH = [Identity(bytes([i]) * 32, bytes([i + 100]) * 32) for i in range(1, 4)]
AUTHS = Authorities.of(a.public for a in AUTH)
NODE_IDENTS = [Identity(bytes([i]) * 32, bytes([i + 50]) * 32) for i in range(10, 22)]


def key(label: str, i: int, n: int = 32) -> bytes:
    return (label.encode() + bytes([i])).ljust(n, b"\x01")[:n]


def desc(
    i: int, *, roles: tuple[Role, ...] = (Role.MIX,), epoch: int = EPOCH, pub: int = 0
) -> Descriptor:
    ident = NODE_IDENTS[i]
    policy: tuple[PolicyRule, ...] = ()
    if Role.EXIT in roles:
        policy = (
            PolicyRule(
                action=Action.ACCEPT,
                network=ipaddress.ip_network("0.0.0.0/0"),
                port_min=1,
                port_max=65535,
            ),
        )
    return Descriptor(
        node_id=ident.node_id,
        published=VA - 30 + pub,
        addresses=(
            Address(transport=Transport.TCP, ip=ipaddress.ip_address(f"10.0.0.{i}"), port=443),
        ),
        roles=tuple(sorted(roles, key=lambda r: encoding.encode(r.value))),
        exit_policy=policy,
        bandwidth=1000 * (i + 1),
        software="qnet/test",
        server_name=f"node{i}.example.net",
        family=(),
        id_ed25519=ident.public.ed25519,
        id_mldsa65=ident.public.mldsa65,
        link_x25519=key("link", i),
        kem_mlkem768=key("kem", i, 1184),
        ticket_x25519=key("tkt", i),
        ticket_key_id=1,
        mix_epoch=epoch,
        mix_current=key("mixc", i),
        mix_next=key("mixn", i),
    )


def obs(
    d: Descriptor, *, bw: int = 5000, up: int = 100, known: int = 100, last: int = 1
) -> Observation:
    return Observation(
        descriptor=d,
        first_seen=NOW - known,
        last_reachable=NOW - last,
        running_since=NOW - up,
        measured_bandwidth=bw,
    )


def votes(
    per_authority: list[list[Observation]],
    *,
    epoch: int = EPOCH,
    now: int = NOW,
    reveals: list[bytes | None] | None = None,
    commits: list[bytes | None] | None = None,
    network: list[dict[str, int]] | None = None,
) -> list[Vote]:
    out = []
    for a, observed in enumerate(per_authority):
        out.append(
            build_vote(
                AUTH[a],
                epoch,
                observed,
                now,
                PARAMS,
                network[a] if network else {"packet_size": 2048},
                srv_commit=commits[a] if commits else None,
                srv_reveal=reveals[a] if reveals else None,
            )
        )
    return out


def same_view(n: int = 6) -> list[list[Observation]]:
    ds = [desc(i) for i in range(n)]
    return [[obs(d, bw=1000 * (a + 1) + i) for i, d in enumerate(ds)] for a in range(3)]


def _sig(body: bytes, a: int) -> ConsensusSignature:
    return sign_body(body, AUTH[a])


def signed(body: bytes, who: list[int]) -> bytes:
    return assemble(body, [_sig(body, a) for a in who])


# --- vectors ------------------------------------------------------------------------------


def test_vector_file_passes_the_checker() -> None:
    assert check_consensus(DOC) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["consensus"].__setitem__("digest", "00" * 32),
        lambda d: d["srv"].__setitem__("srv", "00" * 32),
        lambda d: d["votes"][1].__setitem__("now", d["votes"][1]["now"] + 7200),
        lambda d: d["nodes"][0]["observations"][0].__setitem__("measured_mbps", 1),
        lambda d: d["cases"][0].__setitem__("error", "too_few_signatures"),
        lambda d: d["cases"][10].__setitem__("now", d["consensus"]["now"]),
        lambda d: d["network_params"][0].__setitem__("packet_size", 1),
    ],
)
def test_checker_notices_a_wrong_vector(mutate: Any) -> None:
    doc = copy.deepcopy(DOC)
    mutate(doc)
    assert check_consensus(doc)


def test_vectors_cover_every_refusal() -> None:
    reasons = {c["error"] for c in DOC["cases"]}
    assert {
        "too_few_signatures",
        "bad_ed25519_signature",
        "bad_mldsa65_signature",
        "expired",
        "not_yet_valid",
        "unknown_authority",
        None,
    } <= reasons
    assert len(DOC["authorities"]) == 3 and DOC["srv"]["valid_reveals"] == 3


def generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.gen_consensus_vectors", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generator_reproduces_the_checked_in_file() -> None:
    proc = generator("--check")
    assert proc.returncode == 0, proc.stderr


def test_check_refuses_a_forged_mldsa_signature(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    label = "vote-1"
    sig = bytearray(X(doc["mldsa65_signatures"][label]))
    sig[3] ^= 1
    doc["mldsa65_signatures"][label] = sig.hex()
    out = tmp_path / "c.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    proc = generator("--check", "--out", str(out))
    assert proc.returncode == 1 and "does not verify" in proc.stderr


# --- computation ---------------------------------------------------------------------------


def test_three_authorities_compute_byte_identical_consensus() -> None:
    vs = votes(same_view())
    bodies = {
        compute_consensus(order, AUTHS, NOW, PARAMS).encode()
        for order in (vs, vs[::-1], [vs[1], vs[2], vs[0]])
    }
    assert len(bodies) == 1
    body = bodies.pop()
    raw = signed(body, [0, 1, 2])
    cons = verify_consensus(raw, AUTHS, VA, max_skew=PARAMS.max_skew)
    assert cons.encode() == body and len(cons.nodes) == 6 and len(cons.voters) == 3


def test_one_vote_missing_still_gives_a_valid_consensus() -> None:
    vs = votes(same_view())
    cons = compute_consensus(vs[:2], AUTHS, NOW, PARAMS)
    assert len(cons.nodes) == 6 and len(cons.voters) == 2
    body = cons.encode()
    assert verify_consensus(signed(body, [0, 1]), AUTHS, VA).encode() == body
    with pytest.raises(InsufficientVotes) as info:
        compute_consensus(vs[:1], AUTHS, NOW, PARAMS)
    assert info.value.reason == "too_few_votes"


def test_a_node_in_one_vote_only_is_excluded() -> None:
    view = same_view(3)
    lonely = desc(7)
    view[0].append(obs(lonely))
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)
    assert cons.node(lonely.node_id) is None and len(cons.nodes) == 3
    view[1].append(obs(lonely))
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)
    assert cons.node(lonely.node_id) is not None


def test_numbers_take_the_low_median() -> None:
    d = desc(0)
    view = [[obs(d, bw=bw)] for bw in (300, 100, 200)]
    nets = [{"mix_delay_mean_ms": x, "packet_size": 2048} for x in (70, 10, 40)]
    cons = compute_consensus(votes(view, network=nets), AUTHS, NOW, PARAMS)
    assert cons.nodes[0].bandwidth == 200 and cons.params["mix_delay_mean_ms"] == 40
    cons = compute_consensus(votes(view, network=nets)[:2], AUTHS, NOW, PARAMS)
    assert cons.nodes[0].bandwidth == 100  # even count: the lower of the two middles
    assert cons.params["mix_delay_mean_ms"] == 10
    assert low_median([4, 1, 3, 2]) == 2 and low_median([5]) == 5


def test_a_parameter_needs_a_majority_of_authorities() -> None:
    nets = [{"a": 1, "b": 5}, {"a": 3}, {"a": 2, "b": 9}]
    cons = compute_consensus(votes(same_view(1), network=nets), AUTHS, NOW, PARAMS)
    assert cons.params == {"a": 2, "b": 5}
    cons = compute_consensus(votes(same_view(1), network=nets)[:2], AUTHS, NOW, PARAMS)
    assert cons.params == {"a": 1}


def test_each_flag_needs_more_than_half_of_the_known_authorities() -> None:
    d = desc(0)
    # Stable needs 30 s of uptime: authorities 0 and 1 saw it, 2 did not.
    view = [[obs(d, up=100)], [obs(d, up=100)], [obs(d, up=10)]]
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)
    assert Flag.STABLE in cons.nodes[0].flags
    # With only authorities 0 and 2 voting, one Stable vote is not a majority of 3.
    vs = votes(view)
    cons = compute_consensus([vs[0], vs[2]], AUTHS, NOW, PARAMS)
    assert Flag.STABLE not in cons.nodes[0].flags and Flag.RUNNING in cons.nodes[0].flags


def test_descriptor_listed_by_most_voters_wins() -> None:
    old, new = desc(0), desc(0, pub=5)
    view = [[obs(new)], [obs(old)], [obs(old)]]
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)
    assert cons.nodes[0].descriptor.published == old.published
    view = [[obs(new)], [obs(old)]]
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)  # a tie: the later one
    assert cons.nodes[0].descriptor.published == new.published


def test_mix_flag_needs_keys_for_the_epoch() -> None:
    stale = desc(0, epoch=EPOCH - 1)
    cons = compute_consensus(votes([[obs(stale)]] * 3), AUTHS, NOW, PARAMS)
    assert Flag.MIX not in cons.nodes[0].flags and cons.nodes[0].mix_layer is None


def test_shared_random_commit_and_reveal_across_two_epochs() -> None:
    reveal1 = [bytes([a + 1]) * 32 for a in range(3)]
    commits1 = [srv_commit(AUTH[a].node_id, EPOCH + 1, reveal1[a]) for a in range(3)]
    first = compute_consensus(votes(same_view(3), commits=list(commits1)), AUTHS, NOW, PARAMS)
    assert first.srv_reveals == 0 and first.srv_previous == bytes(32)
    assert dict(first.commits) == {AUTH[a].node_id: commits1[a] for a in range(3)}
    now2 = NOW + PARAMS.epoch_length
    wrong = [reveal1[0], reveal1[1], bytes(32)]  # authority 2 reveals something else
    second_votes = votes(same_view(3), epoch=EPOCH + 1, now=now2, reveals=list(wrong))
    second = compute_consensus(second_votes, AUTHS, now2, PARAMS, previous=first)
    assert second.srv_reveals == 2 and second.srv_previous == first.srv
    assert second.srv == shared_random(EPOCH + 1, reveal1[:2], first.srv)
    # Without the previous consensus nothing can be checked: no reveal counts.
    alone = compute_consensus(second_votes, AUTHS, now2, PARAMS)
    assert alone.srv_reveals == 0 and alone.srv == shared_random(EPOCH + 1, [], bytes(32))
    # A reveal for the wrong epoch does not open the commit either.
    later = votes(same_view(3), epoch=EPOCH + 2, now=now2 + 10, reveals=list(reveal1))
    assert compute_consensus(later, AUTHS, now2 + 10, PARAMS, previous=first).srv_reveals == 0


def test_mix_layers_are_deterministic_and_balanced() -> None:
    view = same_view(10)
    cons = compute_consensus(votes(view), AUTHS, NOW, PARAMS)
    sizes = Counter(n.mix_layer for n in cons.nodes)
    assert sorted(sizes.values()) == [3, 3, 4] and set(sizes) == {0, 1, 2}
    again = compute_consensus(votes(view)[::-1], AUTHS, NOW, PARAMS)
    assert [n.mix_layer for n in again.nodes] == [n.mix_layer for n in cons.nodes]
    ids = [n.node_id for n in cons.nodes]
    a, b = assign_layers(ids, bytes(32)), assign_layers(ids, b"\x01" * 32)
    assert a != b and sorted(Counter(a.values()).values()) == [3, 3, 4]
    assert all(len(cons.layer(i)) in (3, 4) for i in range(3))


def test_bandwidth_weights() -> None:
    g = frozenset({Flag.RUNNING, Flag.VALID, Flag.GUARD})
    e = frozenset({Flag.RUNNING, Flag.VALID, Flag.EXIT})
    m = frozenset({Flag.RUNNING, Flag.VALID})
    w = bandwidth_weights([(g, 100), (e, 100), (m, 100)])
    assert w["wgg"] == w["wee"] == 10_000 and w["wmg"] == w["wme"] == 0
    w = bandwidth_weights([(g, 600), (e, 100), (m, 100)])  # plenty of guards
    assert w["wgg"] == 10_000 * 800 // 1800 and w["wmg"] == 10_000 - w["wgg"]
    assert all(0 <= v <= 10_000 for v in w.values())
    assert bandwidth_weights([])["wmm"] == 10_000


def test_compute_refuses_caller_mistakes() -> None:
    vs = votes(same_view(2))
    with pytest.raises(ValueError):
        compute_consensus([vs[0], vs[0]], AUTHS, NOW, PARAMS)
    other = votes(same_view(2), epoch=EPOCH + 1)
    with pytest.raises(ValueError):
        compute_consensus([vs[0], other[1]], AUTHS, NOW, PARAMS)
    stranger = Authorities.of([AUTH[0].public])
    with pytest.raises(UnknownAuthority):
        compute_consensus(vs, stranger, NOW, PARAMS)
    with pytest.raises(StaleDocument):
        compute_consensus(vs, AUTHS, PARAMS.times(EPOCH)[2], PARAMS)


# --- flags ---------------------------------------------------------------------------------


def test_flag_rules() -> None:
    ex = desc(1, roles=(Role.EXIT, Role.RELAY))
    slow = desc(2)
    down = desc(3)
    young = desc(4)
    got = assign_flags(
        [
            obs(ex, bw=5000),
            obs(slow, bw=10),
            obs(down, last=6),
            obs(young, up=5, known=5),
            # Enough nodes that the slowest is in the bottom eighth.
            *(obs(desc(i), bw=5000) for i in range(5, 12)),
        ],
        NOW,
        EPOCH,
        RULES,
    )
    assert got[ex.node_id] == {
        Flag.VALID,
        Flag.RUNNING,
        Flag.STABLE,
        Flag.FAST,
        Flag.GUARD,
        Flag.EXIT,
    }
    assert Flag.FAST not in got[slow.node_id] and Flag.MIX in got[slow.node_id]
    assert got[down.node_id] == {Flag.VALID}
    assert Flag.STABLE not in got[young.node_id] and Flag.GUARD not in got[young.node_id]
    rejected = dataclasses.replace(obs(ex), rejected=True)
    assert assign_flags([rejected], NOW, EPOCH, RULES)[ex.node_id] == {Flag.EXIT}
    no_web = dataclasses.replace(
        ex,
        exit_policy=(
            PolicyRule(
                action=Action.ACCEPT,
                network=ipaddress.ip_network("0.0.0.0/0"),
                port_min=443,
                port_max=443,
            ),
        ),
    )
    assert Flag.EXIT not in assign_flags([obs(no_web)], NOW, EPOCH, RULES)[ex.node_id]
    assert permille([5, 1, 3, 2, 4], 500) == 3 and permille([], 125) == 0
    with pytest.raises(ValueError):
        FlagRules(fast_permille=1001)


# --- verification ----------------------------------------------------------------------------


def good() -> tuple[bytes, list[ConsensusSignature]]:
    body = compute_consensus(votes(same_view(3)), AUTHS, NOW, PARAMS).encode()
    return body, [_sig(body, a) for a in range(3)]


def refused(raw: bytes, now: int = VA) -> DirectoryError:
    with pytest.raises(DirectoryError) as info:
        verify_consensus(raw, AUTHS, now, max_skew=PARAMS.max_skew)
    return info.value


def test_every_verify_refusal() -> None:
    body, sigs = good()
    raw = assemble(body, sigs)
    assert verify_consensus(raw, AUTHS, VA, max_skew=1).epoch == EPOCH
    e = refused(assemble(body, sigs[:1]))
    assert isinstance(e, InsufficientSignatures) and e.reason == "too_few_signatures"
    bad_ed = dataclasses.replace(sigs[0], ed25519=bytes(64))
    e = refused(assemble(body, [bad_ed, *sigs[1:]]))
    assert isinstance(e, BadSignature) and e.reason == "bad_ed25519_signature"
    assert sigs[0].authority.hex()[:16] in str(e)
    bad_ml = dataclasses.replace(sigs[2], mldsa65=_sig(body + b"x", 2).mldsa65)
    e = refused(assemble(body, [*sigs[:2], bad_ml]))
    assert isinstance(e, BadSignature) and e.reason == "bad_mldsa65_signature"
    cons = decode_consensus_body(body)
    e = refused(raw, cons.valid_until + 1)
    assert isinstance(e, StaleDocument) and e.reason == "expired"
    e = refused(raw, cons.valid_after - 2)
    assert isinstance(e, StaleDocument) and e.reason == "not_yet_valid"
    verify_consensus(raw, AUTHS, cons.valid_after - 1, max_skew=1)  # within the skew
    outsider = Identity(b"\x77" * 32, b"\x78" * 32)
    e = refused(assemble(body, [*sigs, sign_body(body, outsider)]))
    assert isinstance(e, UnknownAuthority) and e.reason == "unknown_authority"
    e = refused(raw + b"\x00")
    assert isinstance(e, MalformedDocument) and e.reason == "trailing_bytes"
    e = refused(assemble(b"\xa0", sigs))
    assert isinstance(e, MalformedDocument) and e.reason == "missing_field"


def test_an_authority_that_signed_another_body_is_outvoted() -> None:
    vs = votes(same_view(3))
    body = compute_consensus(vs, AUTHS, NOW, PARAMS).encode()
    other = compute_consensus(vs[1:], AUTHS, NOW, PARAMS).encode()  # authority 2 missed a vote
    assert other != body
    theirs = _sig(other, 2)
    # The combiner checks each detached signature against its body and drops C's.
    with pytest.raises(BadSignature):
        check_signature(body, theirs, AUTHS)
    verify_consensus(assemble(body, [_sig(body, 0), _sig(body, 1)]), AUTHS, VA)
    e = refused(assemble(other, [theirs]))
    assert isinstance(e, InsufficientSignatures)


def test_signature_entry_round_trip() -> None:
    body, sigs = good()
    assert decode_signature(sigs[0].encode()) == sigs[0]
    got_body, got = split_document(assemble(body, sigs[::-1]))
    assert got_body == body and list(got) == sorted(sigs, key=lambda s: s.authority)
    with pytest.raises(ValueError):
        assemble(body, [sigs[0], sigs[0]])


# --- votes ------------------------------------------------------------------------------------


def test_vote_round_trip_and_refusals() -> None:
    v = votes(same_view(3), commits=[b"\x01" * 32] * 3, reveals=[None, b"\x02" * 32, None])[1]
    raw = v.sign(AUTH[1])
    assert decode_vote_body(v.encode()) == v
    assert parse_vote(raw, AUTHS, NOW, PARAMS) == v
    with pytest.raises(UnknownAuthority):
        parse_vote(raw, Authorities.of([AUTH[0].public]), NOW, PARAMS)
    with pytest.raises(StaleDocument) as info:
        parse_vote(raw, AUTHS, NOW + PARAMS.vote_max_age + 1, PARAMS)
    assert info.value.reason == "expired"
    with pytest.raises(StaleDocument) as info:
        parse_vote(raw, AUTHS, NOW - PARAMS.max_skew - 1, PARAMS)
    assert info.value.reason == "future"
    body, sigs = split_envelope(raw)
    forged = envelope(body, dataclasses.replace(sigs, ed25519=bytes(64)))
    with pytest.raises(BadSignature):
        parse_vote(forged, AUTHS, NOW, PARAMS)
    with pytest.raises(ValueError):
        v.sign(AUTH[0])


def test_consensus_round_trip() -> None:
    cons = compute_consensus(votes(same_view(4)), AUTHS, NOW, PARAMS)
    assert decode_consensus_body(cons.encode()) == cons


# --- fuzzing ----------------------------------------------------------------------------------

_VOTE_RAW = votes(same_view(2))[0].sign(AUTH[0])
_DOC_RAW = assemble(*good())


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(b)))
    return bytes(b[:cut]) if data.draw(st.booleans()) else bytes(b)


@FUZZ
@given(st.data())
def test_fuzz_vote_parser(data: st.DataObject) -> None:
    raw = _mutate(_VOTE_RAW, data)
    try:
        parse_vote(raw, AUTHS, NOW, PARAMS)
    except DirectoryError:
        pass
    try:
        decode_vote_body(split_inner(raw))
    except DirectoryError:
        pass


@FUZZ
@given(st.data())
def test_fuzz_consensus_parser(data: st.DataObject) -> None:
    raw = _mutate(_DOC_RAW, data)
    try:
        verify_consensus(raw, AUTHS, VA)
    except DirectoryError:
        pass
    try:
        decode_consensus_body(split_inner(raw))
    except DirectoryError:
        pass


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_parsers_on_junk(raw: bytes) -> None:
    for parse in (
        lambda: parse_vote(raw, AUTHS, NOW, PARAMS),
        lambda: verify_consensus(raw, AUTHS, VA),
        lambda: decode_signature(raw),
        lambda: decode_vote_body(raw),
        lambda: decode_consensus_body(raw),
    ):
        try:
            parse()
        except DirectoryError:
            pass


def split_inner(raw: bytes) -> bytes:
    """The ``body`` of an envelope if it still decodes, else the raw bytes (to fuzz bodies)."""
    try:
        m = encoding.decode(raw, encoding.Limits(max_size=1 << 26, max_string=1 << 26))
    except DirectoryError:
        return raw
    if isinstance(m, dict) and isinstance(m.get("body"), bytes):
        body = m["body"]
        assert isinstance(body, bytes)
        return body
    return raw


@FUZZ
@given(
    flags=st.lists(st.frozensets(st.sampled_from(list(Flag))), min_size=3, max_size=3),
    bws=st.lists(st.integers(0, 2**48 - 1), min_size=3, max_size=3),
    net=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
        st.integers(0, 2**32 - 1),
        max_size=5,
    ),
    srv=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
)
def test_round_trip_of_arbitrary_votes_and_consensus(
    flags: list[frozenset[Flag]], bws: list[int], net: dict[str, int], srv: bytes | None
) -> None:
    base = votes(same_view(1), network=[net] * 3)
    vs = [
        dataclasses.replace(
            v,
            srv_commit=srv,
            entries=tuple(
                dataclasses.replace(e, flags=flags[a], measured_bandwidth=bws[a]) for e in v.entries
            ),
        )
        for a, v in enumerate(base)
    ]
    for v in vs:
        assert decode_vote_body(v.encode()) == v
    cons = compute_consensus(vs, AUTHS, NOW, PARAMS)
    assert decode_consensus_body(cons.encode()) == cons
    assert cons.nodes[0].bandwidth == sorted(bws)[1]
    assert cons.params == {k: v for k, v in net.items()}
