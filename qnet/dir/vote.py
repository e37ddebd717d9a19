"""An authority's vote for one epoch (spec/directory.md §8.2), and what votes share with
the consensus: the authority set, the epoch schedule, node summaries, shared-random commits.

A vote lists, for each node whose descriptor the authority accepted, the fields
the consensus needs (a ``NodeSummary`` that names the descriptor by digest), the
flags the authority assigns by the rules of ``qnet.dir.flags``, and the bandwidth
it measured. It also carries the authority's network parameters and its
shared-random commit and/or reveal. It is signed with both identity keys under
``VOTE_CONTEXT``, in the same three-field envelope as a descriptor.

``parse_vote(raw, authorities, now, params)`` is the only way in from the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from qnet.crypto import ct_equal, keyed_hash
from qnet.dir import encoding
from qnet.dir.descriptor import (
    MAX_BANDWIDTH,
    MAX_EPOCH,
    X25519_PUBLIC_LEN,
    Address,
    Descriptor,
    PolicyRule,
    Role,
    _address,
    _array,
    _bad,
    _check_len,
    _check_sorted_set,
    _enum,
    _exact_map,
    _rule,
    _typed,
    _versioned_map,
    check_server_name,
    envelope,
)
from qnet.dir.flags import DEFAULT_RULES, Flag, FlagRules, Observation, assign_flags
from qnet.dir.identity import (
    ED25519_PUBLIC_LEN,
    ED25519_SIG_LEN,
    MLDSA65_SIG_LEN,
    NODE_ID_LEN,
    Identity,
    PublicIdentity,
    Signatures,
)
from qnet.errors import BadSignature, MalformedDocument, StaleDocument, UnknownAuthority

#: 2: node summaries carry ``server_name``.
VOTE_VERSION: Final = 2
VOTE_CONTEXT: Final = b"qnet-dir-v1 vote\x00"
DIGEST_LEN: Final = 32
SRV_LEN: Final = 32
MLKEM768_PUBLIC_LEN: Final = 1184
MIX_LAYERS: Final = 3

# BLAKE2b keys (domain labels, zero-padded to 32 bytes): no two uses share one.
DESCRIPTOR_DIGEST_KEY: Final = b"qnet-dir-v1 descriptor-digest".ljust(32, b"\x00")
SRV_COMMIT_KEY: Final = b"qnet-dir-v1 srv-commit".ljust(32, b"\x00")

MAX_NODES: Final = 65_536
MAX_PARAMS: Final = 64
MAX_PARAM_VALUE: Final = 2**32 - 1
PARAM_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_DOCUMENT: Final = 64 << 20  # bytes of one vote or consensus body

BODY_LIMITS: Final = encoding.Limits(
    max_size=MAX_DOCUMENT, max_depth=7, max_items=MAX_DOCUMENT, max_string=2048
)
VOTE_ENVELOPE_LIMITS: Final = encoding.Limits(
    max_size=MAX_DOCUMENT + 16384, max_depth=2, max_items=8, max_string=MAX_DOCUMENT
)

#: Parameters an authority votes for unless configured otherwise (names are §8.6's).
DEFAULT_NETWORK_PARAMS: Final[Mapping[str, int]] = {
    "packet_size": 2048,
    "mix_delay_mean_ms": 50,
    "cover_loop_per_min": 6,
    "cover_drop_per_min": 6,
    "circuit_lifetime_s": 600,
    "mix_key_grace_s": 3600,
}


# --- authorities and the schedule -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authorities:
    """The configured authority identities. ``threshold`` = more than half of them."""

    members: tuple[PublicIdentity, ...]
    _by_id: dict[bytes, PublicIdentity] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.members or not all(isinstance(m, PublicIdentity) for m in self.members):
            raise ValueError("Authorities needs at least one PublicIdentity")
        by_id = {m.node_id: m for m in self.members}
        if len(by_id) != len(self.members):
            raise ValueError("an authority is listed twice")
        object.__setattr__(self, "_by_id", by_id)

    @classmethod
    def of(cls, members: Iterable[PublicIdentity]) -> Authorities:
        return cls(tuple(members))

    @property
    def threshold(self) -> int:
        """The smallest count that is more than half of the known authorities."""
        return len(self.members) // 2 + 1

    @property
    def ids(self) -> frozenset[bytes]:
        return frozenset(self._by_id)

    def get(self, authority_id: bytes, document: str) -> PublicIdentity:
        """The identity for ``authority_id``; ``UnknownAuthority`` if it is not configured."""
        try:
            return self._by_id[bytes(authority_id)]
        except KeyError:
            raise UnknownAuthority(
                "unknown_authority", f"{document}: authority {bytes(authority_id).hex()[:16]}"
            ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryParams:
    """Local settings every authority and verifier must share (not voted).

    Epoch ``e`` starts at ``e * epoch_length`` (Unix s); a document for it is fresh
    for one epoch and valid for ``validity_epochs``. ``max_skew`` tolerates clocks
    that run behind by that many seconds. ``vote_max_age``: a vote published longer
    ago is refused.
    """

    epoch_length: int = 3600
    validity_epochs: int = 3
    max_skew: int = 300
    vote_max_age: int = 2 * 3600
    rules: FlagRules = DEFAULT_RULES

    def __post_init__(self) -> None:
        for name in ("epoch_length", "validity_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DirectoryParams.{name} must be a positive int")
        for name in ("max_skew", "vote_max_age"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DirectoryParams.{name} must be a non-negative int")

    def epoch_at(self, now: int) -> int:
        """The epoch that contains ``now``."""
        return now // self.epoch_length

    def times(self, epoch: int) -> tuple[int, int, int]:
        """``(valid_after, fresh_until, valid_until)`` for ``epoch``."""
        start = epoch * self.epoch_length
        return start, start + self.epoch_length, start + self.validity_epochs * self.epoch_length


DEFAULT_PARAMS: Final = DirectoryParams()


# --- digests and shared randomness --------------------------------------------------------


def descriptor_digest(body: bytes) -> bytes:
    """BLAKE2b-256 keyed with ``DESCRIPTOR_DIGEST_KEY`` over the descriptor *body*.

    The body, not the envelope: ML-DSA-65 signing is randomized, so two valid
    envelopes of one body differ, and the name of a descriptor must not.
    """
    return keyed_hash(DESCRIPTOR_DIGEST_KEY, bytes(body), DIGEST_LEN)


def srv_commit(authority_id: bytes, epoch: int, reveal: bytes) -> bytes:
    """The commit to ``reveal``, to be revealed in the vote for ``epoch`` (§8.4)."""
    if len(authority_id) != NODE_ID_LEN or len(reveal) != SRV_LEN:
        raise ValueError("authority id and reveal are 32 bytes each")
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError("epoch out of range")
    return keyed_hash(SRV_COMMIT_KEY, authority_id + epoch.to_bytes(8, "big") + reveal, SRV_LEN)


# --- node summaries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSummary:
    """What the consensus says about one descriptor; ``digest`` names the descriptor."""

    digest: bytes
    published: int
    id_ed25519: bytes
    addresses: tuple[Address, ...]
    roles: tuple[Role, ...]
    exit_policy: tuple[PolicyRule, ...]
    family: tuple[bytes, ...]
    bandwidth: int
    software: str
    server_name: str
    link_x25519: bytes
    kem_mlkem768: bytes
    ticket_x25519: bytes
    ticket_key_id: int
    mix_epoch: int
    mix_current: bytes
    mix_next: bytes

    @classmethod
    def of(cls, desc: Descriptor, digest: bytes) -> NodeSummary:
        return cls(
            digest=digest,
            published=desc.published,
            id_ed25519=desc.id_ed25519,
            addresses=desc.addresses,
            roles=desc.roles,
            exit_policy=desc.exit_policy,
            family=desc.family,
            bandwidth=desc.bandwidth,
            software=desc.software,
            server_name=desc.server_name,
            link_x25519=desc.link_x25519,
            kem_mlkem768=desc.kem_mlkem768,
            ticket_x25519=desc.ticket_x25519,
            ticket_key_id=desc.ticket_key_id,
            mix_epoch=desc.mix_epoch,
            mix_current=desc.mix_current,
            mix_next=desc.mix_next,
        )

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "digest": self.digest,
            "published": self.published,
            "id_ed25519": self.id_ed25519,
            "addresses": [a.to_cbor() for a in self.addresses],
            "roles": [r.value for r in self.roles],
            "exit_policy": [r.to_cbor() for r in self.exit_policy],
            "family": list(self.family),
            "bandwidth": self.bandwidth,
            "software": self.software,
            "server_name": self.server_name,
            "link_x25519": self.link_x25519,
            "kem_mlkem768": self.kem_mlkem768,
            "ticket_x25519": self.ticket_x25519,
            "ticket_key_id": self.ticket_key_id,
            "mix_epoch": self.mix_epoch,
            "mix_current": self.mix_current,
            "mix_next": self.mix_next,
        }


_SUMMARY_KEYS: Final = frozenset(
    {
        "digest",
        "published",
        "id_ed25519",
        "addresses",
        "roles",
        "exit_policy",
        "family",
        "bandwidth",
        "software",
        "server_name",
        "link_x25519",
        "kem_mlkem768",
        "ticket_x25519",
        "ticket_key_id",
        "mix_epoch",
        "mix_current",
        "mix_next",
    }
)


def uint(name: str, value: object, top: int = encoding.UINT_MAX) -> int:
    """An unsigned integer field in ``0..top``: ``bad_type`` / ``bad_value`` otherwise."""
    v = _typed(name, value, int)
    if not 0 <= v <= top:
        raise _bad("bad_value", name, f"must be 0..{top}")
    return v


def fixed(name: str, value: object, length: int) -> bytes:
    """A byte-string field of exactly ``length`` bytes."""
    v = _typed(name, value, bytes)
    _check_len(name, v, length)
    return v


def sorted_set(name: str, items: list[encoding.Value]) -> None:
    """Refuse (``not_canonical``) a set not in strictly ascending encoded order."""
    _check_sorted_set(name, items)


def decode_summary(value: object) -> NodeSummary:
    m = _exact_map("descriptor", value, _SUMMARY_KEYS)  # type: ignore[arg-type]
    addresses = _array("addresses", m["addresses"])
    roles = _array("roles", m["roles"])
    family = _array("family", m["family"])
    policy = _array("exit_policy", m["exit_policy"])
    if not 1 <= len(addresses) <= 8 or not 1 <= len(roles) <= len(Role):
        raise _bad("bad_value", "descriptor", "addresses 1..8 and roles 1..4")
    if len(family) > 32 or len(policy) > 64:
        raise _bad("bad_value", "descriptor", "family ≤ 32 and exit_policy ≤ 64")
    for name, items in (("addresses", addresses), ("roles", roles), ("family", family)):
        sorted_set(name, items)
    software = _typed("software", m["software"], str)
    if not 1 <= len(software) <= 64 or not all(0x20 <= ord(c) < 0x7F for c in software):
        raise _bad("bad_value", "software", "1..64 printable ASCII characters")
    current = fixed("mix_current", m["mix_current"], X25519_PUBLIC_LEN)
    nxt = fixed("mix_next", m["mix_next"], X25519_PUBLIC_LEN)
    if current == nxt:
        raise _bad("bad_value", "mix_next", "must differ from mix_current")
    return NodeSummary(
        digest=fixed("digest", m["digest"], DIGEST_LEN),
        published=uint("published", m["published"]),
        id_ed25519=fixed("id_ed25519", m["id_ed25519"], ED25519_PUBLIC_LEN),
        addresses=tuple(_address(a) for a in addresses),
        roles=tuple(_enum("roles[]", r, Role) for r in roles),
        exit_policy=tuple(_rule(r) for r in policy),
        family=tuple(fixed("family[]", f, NODE_ID_LEN) for f in family),
        bandwidth=uint("bandwidth", m["bandwidth"], MAX_BANDWIDTH),
        software=software,
        server_name=check_server_name("server_name", m["server_name"]),
        link_x25519=fixed("link_x25519", m["link_x25519"], X25519_PUBLIC_LEN),
        kem_mlkem768=fixed("kem_mlkem768", m["kem_mlkem768"], MLKEM768_PUBLIC_LEN),
        ticket_x25519=fixed("ticket_x25519", m["ticket_x25519"], X25519_PUBLIC_LEN),
        ticket_key_id=uint("ticket_key_id", m["ticket_key_id"], 255),
        mix_epoch=uint("mix_epoch", m["mix_epoch"], MAX_EPOCH),
        mix_current=current,
        mix_next=nxt,
    )


def decode_flags(name: str, value: object) -> frozenset[Flag]:
    items = _array(name, value)
    sorted_set(name, items)
    return frozenset(_enum(f"{name}[]", f, Flag) for f in items)


def flags_cbor(flags: Iterable[Flag]) -> list[encoding.Value]:
    """A flag set in canonical order (by encoding: shorter names first)."""
    names = sorted((f.value for f in flags), key=lambda v: (len(v), v))
    return list(names)


def decode_params(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _bad("bad_type", "params", "must be a map")
    if len(value) > MAX_PARAMS:
        raise _bad("bad_value", "params", f"at most {MAX_PARAMS}")
    out: dict[str, int] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not PARAM_NAME.fullmatch(k):
            raise _bad("bad_value", "params", f"bad parameter name {k!r}")
        out[k] = uint(f"params.{k}", v, MAX_PARAM_VALUE)
    return out


def _param_map(params: Mapping[str, int]) -> dict[encoding.Key, encoding.Value]:
    return {k: v for k, v in params.items()}


def check_params(params: Mapping[str, int]) -> dict[str, int]:
    """Validate a parameter mapping an authority is about to vote (``ValueError``)."""
    try:
        return decode_params(dict(params))
    except MalformedDocument as exc:
        raise ValueError(str(exc)) from None


def check_times(valid_after: int, fresh_until: int, valid_until: int) -> None:
    if not valid_after < fresh_until <= valid_until:
        raise _bad("bad_value", "valid_after", "need valid_after < fresh_until <= valid_until")


# --- votes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteEntry:
    """One node in a vote: its summary, this authority's flags and measured bandwidth."""

    node_id: bytes
    descriptor: NodeSummary
    flags: frozenset[Flag]
    measured_bandwidth: int

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "node_id": self.node_id,
            "descriptor": self.descriptor.to_cbor(),
            "flags": flags_cbor(self.flags),
            "measured_bandwidth": self.measured_bandwidth,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """An authority's vote (§8.2). ``entries`` are in ascending node-id order."""

    authority: bytes
    epoch: int
    published: int
    valid_after: int
    fresh_until: int
    valid_until: int
    params: Mapping[str, int]
    srv_commit: bytes | None
    srv_reveal: bytes | None
    entries: tuple[VoteEntry, ...]

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "version": VOTE_VERSION,
            "authority": self.authority,
            "epoch": self.epoch,
            "published": self.published,
            "valid_after": self.valid_after,
            "fresh_until": self.fresh_until,
            "valid_until": self.valid_until,
            "params": _param_map(self.params),
            "srv_commit": self.srv_commit,
            "srv_reveal": self.srv_reveal,
            "nodes": [e.to_cbor() for e in self.entries],
        }

    def encode(self) -> bytes:
        """The deterministic encoding of the vote body (signed after ``VOTE_CONTEXT``)."""
        return encoding.encode(self.to_cbor())

    def sign(self, identity: Identity) -> bytes:
        """The signed vote envelope. ``ValueError`` if ``identity`` is not the authority."""
        if identity.node_id != self.authority:
            raise ValueError("the vote names another authority")
        body = self.encode()
        return envelope(body, identity.sign(VOTE_CONTEXT, body))


def build_vote(
    identity: Identity,
    epoch: int,
    observations: Iterable[Observation],
    now: int,
    params: DirectoryParams = DEFAULT_PARAMS,
    network: Mapping[str, int] = DEFAULT_NETWORK_PARAMS,
    *,
    srv_commit: bytes | None = None,
    srv_reveal: bytes | None = None,
) -> Vote:
    """This authority's vote for ``epoch`` from its observations at ``now``.

    Flags come from ``qnet.dir.flags.assign_flags`` under ``params.rules``. A
    node observed twice keeps the observation with the later descriptor.
    Raises ``ValueError`` for bad arguments (caller bugs).
    """
    latest: dict[bytes, Observation] = {}
    for o in observations:
        seen = latest.get(o.descriptor.node_id)
        if seen is None or o.descriptor.published > seen.descriptor.published:
            latest[o.descriptor.node_id] = o
    if len(latest) > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} nodes in a vote")
    for value in (srv_commit, srv_reveal):
        if value is not None and len(value) != SRV_LEN:
            raise ValueError("srv_commit and srv_reveal are 32 bytes")
    flags = assign_flags(latest.values(), now, epoch, params.rules)
    entries = tuple(
        VoteEntry(
            node_id=nid,
            descriptor=NodeSummary.of(o.descriptor, descriptor_digest(o.descriptor.encode())),
            flags=flags[nid],
            measured_bandwidth=min(o.measured_bandwidth, MAX_BANDWIDTH),
        )
        for nid, o in sorted(latest.items())
    )
    va, fu, vu = params.times(epoch)
    return Vote(
        authority=identity.node_id,
        epoch=epoch,
        published=now,
        valid_after=va,
        fresh_until=fu,
        valid_until=vu,
        params=check_params(network),
        srv_commit=srv_commit,
        srv_reveal=srv_reveal,
        entries=entries,
    )


_VOTE_KEYS: Final = frozenset(
    {
        "version",
        "authority",
        "epoch",
        "published",
        "valid_after",
        "fresh_until",
        "valid_until",
        "params",
        "srv_commit",
        "srv_reveal",
        "nodes",
    }
)
_ENTRY_KEYS: Final = frozenset({"node_id", "descriptor", "flags", "measured_bandwidth"})
_ENVELOPE_KEYS: Final = frozenset({"body", "sig_ed25519", "sig_mldsa65"})


def optional_fixed(name: str, value: object, length: int) -> bytes | None:
    return None if value is None else fixed(name, value, length)


def decode_vote_body(body: bytes) -> Vote:
    """Decode and validate a vote body. Raises ``MalformedDocument`` only; no signature check."""
    m = _versioned_map("vote", encoding.decode(body, BODY_LIMITS), _VOTE_KEYS, VOTE_VERSION)
    nodes = _array("nodes", m["nodes"])
    if len(nodes) > MAX_NODES:
        raise _bad("bad_value", "nodes", f"at most {MAX_NODES}")
    entries = []
    previous = b""
    for n in nodes:
        e = _exact_map("nodes[]", n, _ENTRY_KEYS)
        nid = fixed("nodes.node_id", e["node_id"], NODE_ID_LEN)
        if nid <= previous:
            raise _bad("not_canonical", "nodes", "must be in ascending node-id order, no repeats")
        previous = nid
        entries.append(
            VoteEntry(
                node_id=nid,
                descriptor=decode_summary(e["descriptor"]),
                flags=decode_flags("nodes.flags", e["flags"]),
                measured_bandwidth=uint(
                    "nodes.measured_bandwidth", e["measured_bandwidth"], MAX_BANDWIDTH
                ),
            )
        )
    va = uint("valid_after", m["valid_after"])
    fu = uint("fresh_until", m["fresh_until"])
    vu = uint("valid_until", m["valid_until"])
    check_times(va, fu, vu)
    return Vote(
        authority=fixed("authority", m["authority"], NODE_ID_LEN),
        epoch=uint("epoch", m["epoch"], MAX_EPOCH),
        published=uint("published", m["published"]),
        valid_after=va,
        fresh_until=fu,
        valid_until=vu,
        params=decode_params(m["params"]),
        srv_commit=optional_fixed("srv_commit", m["srv_commit"], SRV_LEN),
        srv_reveal=optional_fixed("srv_reveal", m["srv_reveal"], SRV_LEN),
        entries=tuple(entries),
    )


def split_vote_envelope(raw: bytes) -> tuple[bytes, Signatures]:
    """The body and both signatures of a signed vote. Raises ``MalformedDocument``."""
    m = _exact_map("vote envelope", encoding.decode(raw, VOTE_ENVELOPE_LIMITS), _ENVELOPE_KEYS)
    body = _typed("body", m["body"], bytes)
    ed = fixed("sig_ed25519", m["sig_ed25519"], ED25519_SIG_LEN)
    ml = fixed("sig_mldsa65", m["sig_mldsa65"], MLDSA65_SIG_LEN)
    return body, Signatures(ed25519=ed, mldsa65=ml)


def parse_vote(
    raw: bytes, authorities: Authorities, now: int, params: DirectoryParams = DEFAULT_PARAMS
) -> Vote:
    """Parse a signed vote from another authority and check everything, cheapest first.

    Order: envelope and body (``MalformedDocument``); the authority is configured
    (``UnknownAuthority``); freshness — ``published`` within
    ``[now - vote_max_age, now + max_skew]`` and ``now < valid_until``
    (``StaleDocument`` ``expired`` / ``future``); both signatures (``BadSignature``).
    Nothing else is raised. Whether the vote is for the epoch being computed is the
    caller's check (``compute_consensus`` refuses a mix of epochs).
    """
    body, sigs = split_vote_envelope(raw)
    vote = decode_vote_body(body)
    signer = authorities.get(vote.authority, "vote")
    if vote.published > now + params.max_skew:
        raise StaleDocument("future", f"vote of {vote.authority.hex()[:16]} published ahead")
    if vote.published < now - params.vote_max_age or now >= vote.valid_until:
        raise StaleDocument("expired", f"vote of {vote.authority.hex()[:16]}")
    try:
        signer.verify(VOTE_CONTEXT, body, sigs)
    except BadSignature as exc:
        raise BadSignature(exc.reason, f"vote of authority {vote.authority.hex()[:16]}") from None
    return vote


def reveal_matches(authority_id: bytes, epoch: int, reveal: bytes, commit: bytes) -> bool:
    """Whether ``reveal`` opens ``commit`` for ``authority_id`` and ``epoch``."""
    return ct_equal(srv_commit(authority_id, epoch, reveal), commit)
