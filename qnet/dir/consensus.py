"""The consensus: computed from votes, signed by authorities, verified by everyone (spec §8.5–§8.9).

* ``compute_consensus(votes, authorities, now, params, previous=...)`` is deterministic:
  the same votes (and previous consensus) give the same ``Consensus``, and
  ``Consensus.encode()`` gives the same bytes, whichever authority computes it.
* ``Consensus.sign(identity)`` makes a detached ``ConsensusSignature`` (both kinds);
  ``assemble(body, signatures)`` makes the document that is served.
* ``verify_consensus(raw, authorities, now)`` is the only way in from the network.

Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from qnet.crypto import keyed_hash
from qnet.dir import encoding
from qnet.dir.descriptor import (
    MAX_BANDWIDTH,
    MAX_EPOCH,
    _array,
    _bad,
    _exact_map,
    _typed,
    _versioned_map,
)
from qnet.dir.flags import Flag, low_median
from qnet.dir.identity import (
    ED25519_SIG_LEN,
    MLDSA65_SIG_LEN,
    NODE_ID_LEN,
    Identity,
    Signatures,
)
from qnet.dir.vote import (
    BODY_LIMITS,
    DEFAULT_PARAMS,
    MAX_DOCUMENT,
    MAX_NODES,
    MIX_LAYERS,
    SRV_LEN,
    Authorities,
    DirectoryParams,
    NodeSummary,
    Vote,
    _param_map,
    check_times,
    decode_flags,
    decode_params,
    decode_summary,
    fixed,
    flags_cbor,
    reveal_matches,
    sorted_set,
    uint,
)
from qnet.errors import (
    BadSignature,
    InsufficientSignatures,
    InsufficientVotes,
    StaleDocument,
)

#: 2: node summaries carry ``server_name``.
CONSENSUS_VERSION: Final = 2
CONSENSUS_CONTEXT: Final = b"qnet-dir-v1 consensus\x00"
CONSENSUS_DIGEST_KEY: Final = b"qnet-dir-v1 consensus-digest".ljust(32, b"\x00")
SRV_KEY: Final = b"qnet-dir-v1 srv".ljust(32, b"\x00")
MIX_LAYER_KEY: Final = b"qnet-dir-v1 mix-layer".ljust(32, b"\x00")
ZERO_SRV: Final = bytes(SRV_LEN)
MAX_AUTHORITIES: Final = 64
WEIGHT_SCALE: Final = 10_000
WEIGHT_NAMES: Final = ("wgg", "wgd", "wmg", "wee", "wed", "wme", "wmd", "wmm")

DOCUMENT_LIMITS: Final = encoding.Limits(
    max_size=MAX_DOCUMENT + 8 * 4096 * MAX_AUTHORITIES,
    max_depth=3,
    max_items=4 + 7 * MAX_AUTHORITIES,
    max_string=MAX_DOCUMENT,
)


# --- the document --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusEntry:
    """One node in the consensus. ``mix_layer`` (0, 1 or 2) is set exactly for Mix nodes."""

    node_id: bytes
    descriptor: NodeSummary
    flags: frozenset[Flag]
    bandwidth: int
    mix_layer: int | None

    @property
    def mix_current(self) -> bytes:
        """The node's mix key for the consensus epoch (Mix nodes only: others may be stale)."""
        return self.descriptor.mix_current

    @property
    def mix_next(self) -> bytes:
        return self.descriptor.mix_next

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "node_id": self.node_id,
            "descriptor": self.descriptor.to_cbor(),
            "flags": flags_cbor(self.flags),
            "bandwidth": self.bandwidth,
            "mix_layer": self.mix_layer,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Consensus:
    """The agreed directory for one epoch (§8.5). ``nodes`` are in ascending node-id order."""

    epoch: int
    valid_after: int
    fresh_until: int
    valid_until: int
    voters: tuple[bytes, ...]
    params: Mapping[str, int]
    srv: bytes
    srv_previous: bytes
    srv_reveals: int
    commits: tuple[tuple[bytes, bytes], ...]
    weights: Mapping[str, int]
    nodes: tuple[ConsensusEntry, ...]

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "version": CONSENSUS_VERSION,
            "epoch": self.epoch,
            "valid_after": self.valid_after,
            "fresh_until": self.fresh_until,
            "valid_until": self.valid_until,
            "voters": list(self.voters),
            "params": _param_map(self.params),
            "srv": self.srv,
            "srv_previous": self.srv_previous,
            "srv_reveals": self.srv_reveals,
            "commits": [{"authority": a, "commit": c} for a, c in self.commits],
            "weights": _param_map(self.weights),
            "nodes": [n.to_cbor() for n in self.nodes],
        }

    def encode(self) -> bytes:
        """The consensus body: what every authority signs after ``CONSENSUS_CONTEXT``."""
        return encoding.encode(self.to_cbor())

    def sign(self, identity: Identity) -> ConsensusSignature:
        """This authority's detached signature (Ed25519 and ML-DSA-65) over the body."""
        return sign_body(self.encode(), identity)

    def node(self, node_id: bytes) -> ConsensusEntry | None:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        return None

    def layer(self, layer: int) -> tuple[ConsensusEntry, ...]:
        """The Mix nodes of ``layer`` (0, 1 or 2), in node-id order."""
        return tuple(n for n in self.nodes if n.mix_layer == layer)


def consensus_digest(body: bytes) -> bytes:
    """BLAKE2b-256 keyed with ``CONSENSUS_DIGEST_KEY`` over the body: the name of a consensus."""
    return keyed_hash(CONSENSUS_DIGEST_KEY, bytes(body), 32)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsensusSignature:
    """One authority's detached signature entry: both kinds over ``context ‖ body``."""

    authority: bytes
    ed25519: bytes
    mldsa65: bytes

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "authority": self.authority,
            "sig_ed25519": self.ed25519,
            "sig_mldsa65": self.mldsa65,
        }

    def encode(self) -> bytes:
        """The entry on its own, as an authority sends it to the others."""
        return encoding.encode(self.to_cbor())


def sign_body(body: bytes, identity: Identity) -> ConsensusSignature:
    sigs = identity.sign(CONSENSUS_CONTEXT, body)
    return ConsensusSignature(
        authority=identity.node_id, ed25519=sigs.ed25519, mldsa65=sigs.mldsa65
    )


def assemble(body: bytes, signatures: Iterable[ConsensusSignature]) -> bytes:
    """The consensus document: the body and the signature entries in authority-id order.

    Raises ``ValueError`` if one authority appears twice. It does not check the
    signatures: call ``check_signature`` on each before attaching it.
    """
    sigs = sorted(signatures, key=lambda s: s.authority)
    if len({s.authority for s in sigs}) != len(sigs):
        raise ValueError("two signatures by one authority")
    return encoding.encode({"body": bytes(body), "signatures": [s.to_cbor() for s in sigs]})


_SIG_KEYS: Final = frozenset({"authority", "sig_ed25519", "sig_mldsa65"})
_DOCUMENT_KEYS: Final = frozenset({"body", "signatures"})


def _signature(value: encoding.Value) -> ConsensusSignature:
    m = _exact_map("signatures[]", value, _SIG_KEYS)
    return ConsensusSignature(
        authority=fixed("signatures.authority", m["authority"], NODE_ID_LEN),
        ed25519=fixed("signatures.sig_ed25519", m["sig_ed25519"], ED25519_SIG_LEN),
        mldsa65=fixed("signatures.sig_mldsa65", m["sig_mldsa65"], MLDSA65_SIG_LEN),
    )


def decode_signature(raw: bytes) -> ConsensusSignature:
    """A detached signature entry from another authority. Raises ``MalformedDocument``."""
    return _signature(
        encoding.decode(raw, encoding.Limits(max_size=4096, max_depth=1, max_items=7))
    )


def split_document(raw: bytes) -> tuple[bytes, tuple[ConsensusSignature, ...]]:
    """The body bytes and signature entries of a consensus document (``MalformedDocument``)."""
    m = _exact_map("consensus document", encoding.decode(raw, DOCUMENT_LIMITS), _DOCUMENT_KEYS)
    body = _typed("body", m["body"], bytes)
    entries = _array("signatures", m["signatures"])
    if len(entries) > MAX_AUTHORITIES:
        raise _bad("bad_value", "signatures", f"at most {MAX_AUTHORITIES}")
    sigs = tuple(_signature(e) for e in entries)
    ids = [s.authority for s in sigs]
    if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
        raise _bad("not_canonical", "signatures", "ascending authority order, one per authority")
    return body, sigs


def check_signature(body: bytes, sig: ConsensusSignature, authorities: Authorities) -> None:
    """Return only if ``sig`` is a known authority's valid signature (both kinds) of ``body``.

    ``UnknownAuthority`` or ``BadSignature`` (naming the authority) otherwise.
    """
    signer = authorities.get(sig.authority, "consensus signature")
    try:
        signer.verify(CONSENSUS_CONTEXT, body, Signatures(ed25519=sig.ed25519, mldsa65=sig.mldsa65))
    except BadSignature as exc:
        raise BadSignature(
            exc.reason, f"consensus signature of authority {sig.authority.hex()[:16]}"
        ) from None


# --- decoding the body ---------------------------------------------------------------------

_BODY_KEYS: Final = frozenset(
    {
        "version",
        "epoch",
        "valid_after",
        "fresh_until",
        "valid_until",
        "voters",
        "params",
        "srv",
        "srv_previous",
        "srv_reveals",
        "commits",
        "weights",
        "nodes",
    }
)
_NODE_KEYS: Final = frozenset({"node_id", "descriptor", "flags", "bandwidth", "mix_layer"})
_COMMIT_KEYS: Final = frozenset({"authority", "commit"})


def _weights(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _bad("bad_type", "weights", "must be a map")
    m = _exact_map("weights", value, frozenset(WEIGHT_NAMES))
    return {k: uint(f"weights.{k}", v, WEIGHT_SCALE) for k, v in m.items()}


def _node(value: encoding.Value) -> ConsensusEntry:
    e = _exact_map("nodes[]", value, _NODE_KEYS)
    flags = decode_flags("nodes.flags", e["flags"])
    layer = (
        None if e["mix_layer"] is None else uint("nodes.mix_layer", e["mix_layer"], MIX_LAYERS - 1)
    )
    if (layer is None) == (Flag.MIX in flags):
        raise _bad("bad_value", "nodes.mix_layer", "set exactly for nodes with the mix flag")
    return ConsensusEntry(
        node_id=fixed("nodes.node_id", e["node_id"], NODE_ID_LEN),
        descriptor=decode_summary(e["descriptor"]),
        flags=flags,
        bandwidth=uint("nodes.bandwidth", e["bandwidth"], MAX_BANDWIDTH),
        mix_layer=layer,
    )


def decode_consensus_body(body: bytes) -> Consensus:
    """Decode and validate a consensus body. ``MalformedDocument`` only; no signature check."""
    m = _versioned_map(
        "consensus", encoding.decode(body, BODY_LIMITS), _BODY_KEYS, CONSENSUS_VERSION
    )
    voters = _array("voters", m["voters"])
    if not 1 <= len(voters) <= MAX_AUTHORITIES:
        raise _bad("bad_value", "voters", f"1..{MAX_AUTHORITIES}")
    sorted_set("voters", voters)
    commits = []
    previous = b""
    for c in _array("commits", m["commits"]):
        cm = _exact_map("commits[]", c, _COMMIT_KEYS)
        author = fixed("commits.authority", cm["authority"], NODE_ID_LEN)
        if author <= previous:
            raise _bad("not_canonical", "commits", "ascending authority order, no repeats")
        previous = author
        commits.append((author, fixed("commits.commit", cm["commit"], SRV_LEN)))
    nodes = _array("nodes", m["nodes"])
    if len(nodes) > MAX_NODES:
        raise _bad("bad_value", "nodes", f"at most {MAX_NODES}")
    entries = [_node(n) for n in nodes]
    if any(a.node_id >= b.node_id for a, b in zip(entries, entries[1:], strict=False)):
        raise _bad("not_canonical", "nodes", "ascending node-id order, no repeats")
    va = uint("valid_after", m["valid_after"])
    fu = uint("fresh_until", m["fresh_until"])
    vu = uint("valid_until", m["valid_until"])
    check_times(va, fu, vu)
    return Consensus(
        epoch=uint("epoch", m["epoch"], MAX_EPOCH),
        valid_after=va,
        fresh_until=fu,
        valid_until=vu,
        voters=tuple(fixed("voters[]", v, NODE_ID_LEN) for v in voters),
        params=decode_params(m["params"]),
        srv=fixed("srv", m["srv"], SRV_LEN),
        srv_previous=fixed("srv_previous", m["srv_previous"], SRV_LEN),
        srv_reveals=uint("srv_reveals", m["srv_reveals"], MAX_AUTHORITIES),
        commits=tuple(commits),
        weights=_weights(m["weights"]),
        nodes=tuple(entries),
    )


# --- verification --------------------------------------------------------------------------


def verify_consensus(
    raw: bytes, authorities: Authorities, now: int, *, max_skew: int = DEFAULT_PARAMS.max_skew
) -> Consensus:
    """Parse a consensus document and check it completely, cheapest first.

    1. document and body encoding and fields — ``MalformedDocument``;
    2. every signature entry names a configured authority — ``UnknownAuthority``;
    3. entries from more than half of the configured authorities —
       ``InsufficientSignatures`` (``too_few_signatures``);
    4. ``valid_after - max_skew <= now < valid_until + max_skew`` — ``StaleDocument``
       (``not_yet_valid`` / ``expired``);
    5. every entry's Ed25519 and ML-DSA-65 signature — ``BadSignature``: one bad
       signature refuses the document, even if enough others are good (§8.8).

    Nothing else is raised.
    """
    body, sigs = split_document(raw)
    cons = decode_consensus_body(body)
    what = f"consensus for epoch {cons.epoch}"
    for s in sigs:
        authorities.get(s.authority, what)
    if len(sigs) < authorities.threshold:
        raise InsufficientSignatures(
            "too_few_signatures",
            f"{what}: {len(sigs)} of {len(authorities.members)}, need {authorities.threshold}",
        )
    if now < cons.valid_after - max_skew:
        raise StaleDocument("not_yet_valid", f"{what}: valid after {cons.valid_after}, now {now}")
    if now >= cons.valid_until + max_skew:
        raise StaleDocument("expired", f"{what}: valid until {cons.valid_until}, now {now}")
    for s in sigs:
        check_signature(body, s, authorities)
    return cons


# --- computation ---------------------------------------------------------------------------


def shared_random(epoch: int, reveals: Iterable[bytes], previous: bytes) -> bytes:
    """SRV(epoch) = BLAKE2b-256[SRV_KEY](u64 epoch ‖ u64 n ‖ sorted reveals ‖ previous SRV)."""
    ordered = sorted(reveals)
    data = epoch.to_bytes(8, "big") + len(ordered).to_bytes(8, "big") + b"".join(ordered)
    return keyed_hash(SRV_KEY, data + previous, SRV_LEN)


def assign_layers(mix_nodes: Iterable[bytes], srv: bytes) -> dict[bytes, int]:
    """Deal Mix nodes round-robin into ``MIX_LAYERS`` layers in the order of
    BLAKE2b-256[MIX_LAYER_KEY](srv ‖ node_id): layer sizes differ by at most one."""
    order = sorted(mix_nodes, key=lambda n: (keyed_hash(MIX_LAYER_KEY, srv + n, 32), n))
    return {n: i % MIX_LAYERS for i, n in enumerate(order)}


def bandwidth_weights(nodes: Iterable[tuple[frozenset[Flag], int]]) -> dict[str, int]:
    """Position weights in 1/10,000 from the bandwidth of Running, Valid nodes (§8.7)."""
    g = e = d = m = 0
    for flags, bw in nodes:
        if Flag.RUNNING not in flags or Flag.VALID not in flags:
            continue
        guard, exit_ = Flag.GUARD in flags, Flag.EXIT in flags
        if guard and exit_:
            d += bw
        elif guard:
            g += bw
        elif exit_:
            e += bw
        else:
            m += bw
    total = g + e + d + m

    def share(capacity: int) -> int:
        # The part of a scarce class's bandwidth that its own position needs.
        if capacity == 0 or 3 * capacity <= total:
            return WEIGHT_SCALE
        return WEIGHT_SCALE * total // (3 * capacity)

    wee = share(e + d)
    wgg = share(g + d)
    wgd = min(wgg, WEIGHT_SCALE - wee)
    return {
        "wgg": wgg,
        "wgd": wgd,
        "wmg": WEIGHT_SCALE - wgg,
        "wee": wee,
        "wed": wee,
        "wme": WEIGHT_SCALE - wee,
        "wmd": WEIGHT_SCALE - wee - wgd,
        "wmm": WEIGHT_SCALE,
    }


def _choose_summary(summaries: Sequence[NodeSummary]) -> NodeSummary:
    # The summary most voters listed; then the later published; then the smaller encoding.
    encoded = [encoding.encode(s.to_cbor()) for s in summaries]
    counts = Counter(encoded)
    best = min(
        range(len(summaries)),
        key=lambda i: (-counts[encoded[i]], -summaries[i].published, encoded[i]),
    )
    return summaries[best]


def compute_consensus(
    votes: Iterable[Vote],
    authorities: Authorities,
    now: int,
    params: DirectoryParams = DEFAULT_PARAMS,
    *,
    previous: Consensus | None = None,
) -> Consensus:
    """The consensus of ``votes`` (already checked with ``parse_vote``), spec §8.6.

    Deterministic: the order of ``votes`` does not matter. ``previous`` is the
    consensus of the epoch before, whose commits the reveals are checked against and
    whose SRV is chained; any other ``previous`` (or none) chains from 32 zero bytes
    and accepts no reveal.

    ``params`` is not consulted today: times come from the votes and every
    threshold from ``authorities``; it is in the signature so the service passes
    its settings in one place when rules that need them are added.

    Raises ``UnknownAuthority`` for a vote by an unconfigured authority,
    ``InsufficientVotes`` (``too_few_votes``) unless more than half of the
    configured authorities voted, ``StaleDocument`` (``expired``) if the epoch is
    over at ``now``, and ``ValueError`` for caller bugs (two votes by one
    authority, votes for different epochs).
    """
    del params  # the times come from the votes (§8.6 step 1); kept for the service's call
    by_author: dict[bytes, Vote] = {}
    for v in votes:
        authorities.get(v.authority, "vote")
        if v.authority in by_author:
            raise ValueError("two votes by one authority")
        by_author[v.authority] = v
    if len(by_author) < authorities.threshold:
        raise InsufficientVotes(
            "too_few_votes",
            f"{len(by_author)} of {len(authorities.members)}, need {authorities.threshold}",
        )
    ordered = [by_author[a] for a in sorted(by_author)]
    epochs = {v.epoch for v in ordered}
    if len(epochs) != 1:
        raise ValueError(f"votes for different epochs: {sorted(epochs)}")
    epoch = epochs.pop()
    threshold = authorities.threshold
    va = low_median(v.valid_after for v in ordered)
    fu = low_median(v.fresh_until for v in ordered)
    vu = low_median(v.valid_until for v in ordered)
    if now >= vu:
        raise StaleDocument("expired", f"consensus for epoch {epoch} ended at {vu}")

    values: dict[str, list[int]] = defaultdict(list)
    for v in ordered:
        for k, x in v.params.items():
            values[k].append(x)
    net = {k: low_median(xs) for k, xs in sorted(values.items()) if len(xs) >= threshold}

    chained = previous is not None and previous.epoch + 1 == epoch
    srv_previous = previous.srv if previous is not None and chained else ZERO_SRV
    commits = dict(previous.commits) if previous is not None and chained else {}
    reveals = [
        v.srv_reveal
        for v in ordered
        if v.srv_reveal is not None
        and v.authority in commits
        and reveal_matches(v.authority, epoch, v.srv_reveal, commits[v.authority])
    ]
    srv = shared_random(epoch, reveals, srv_previous)

    listed: dict[bytes, list[tuple[NodeSummary, frozenset[Flag], int]]] = defaultdict(list)
    for v in ordered:
        for e in v.entries:
            listed[e.node_id].append((e.descriptor, e.flags, e.measured_bandwidth))
    chosen: list[tuple[bytes, NodeSummary, frozenset[Flag], int]] = []
    for nid in sorted(listed):
        entries = listed[nid]
        if len(entries) < threshold:
            continue
        summary = _choose_summary([s for s, _, _ in entries])
        count: Counter[Flag] = Counter(f for _, flags, _ in entries for f in flags)
        flags = {f for f in Flag if count[f] >= threshold}
        if summary.mix_epoch != epoch or not {Flag.RUNNING, Flag.VALID} <= flags:
            flags.discard(Flag.MIX)
        chosen.append((nid, summary, frozenset(flags), low_median(bw for _, _, bw in entries)))
    layers = assign_layers((nid for nid, _, f, _ in chosen if Flag.MIX in f), srv)
    nodes = tuple(
        ConsensusEntry(node_id=nid, descriptor=s, flags=f, bandwidth=bw, mix_layer=layers.get(nid))
        for nid, s, f, bw in chosen
    )
    return Consensus(
        epoch=epoch,
        valid_after=va,
        fresh_until=fu,
        valid_until=vu,
        voters=tuple(v.authority for v in ordered),
        params=net,
        srv=srv,
        srv_previous=srv_previous,
        srv_reveals=len(reveals),
        commits=tuple((v.authority, v.srv_commit) for v in ordered if v.srv_commit is not None),
        weights=bandwidth_weights((f, bw) for _, _, f, bw in chosen),
        nodes=nodes,
    )
