"""Regenerate spec/vectors/directory_consensus.json (format ``directory-consensus-v1``).

    python -m tools.gen_consensus_vectors            # write the file
    python -m tools.gen_consensus_vectors --check    # fail if the file differs from a fresh run

Three authorities vote on six nodes over two epochs (the first one commits to
shared-random values, the second reveals them), compute the consensus, and sign
it. Everything derives from fixed seeds, except ML-DSA-65 signatures, which are
randomized: as in ``tools.gen_dir_vectors``, a recorded ML-DSA signature is kept
while it still verifies over the freshly built message, so ``--check`` compares
every byte of the file and fails if a recorded signature does not verify.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from qnet.crypto import MLKEM768Key, hkdf_sha256, mldsa65_verify, x25519_public
from qnet.dir import encoding
from qnet.dir.consensus import (
    CONSENSUS_CONTEXT,
    Consensus,
    ConsensusSignature,
    assemble,
    compute_consensus,
    consensus_digest,
    decode_consensus_body,
)
from qnet.dir.descriptor import (
    Action,
    Address,
    Descriptor,
    PolicyRule,
    Role,
    Transport,
    canonical_order,
    envelope,
)
from qnet.dir.flags import DAY, Observation
from qnet.dir.identity import Identity, Signatures, signed_message
from qnet.dir.vote import (
    DEFAULT_NETWORK_PARAMS,
    VOTE_CONTEXT,
    Authorities,
    DirectoryParams,
    Vote,
    build_vote,
    descriptor_digest,
    srv_commit,
)
from qnet.errors import AuthenticationError, CryptoError

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "directory_consensus.json"
PARAMS = DirectoryParams()  # production: 1-hour epochs, valid for 3, 300 s of skew
EPOCH = 500_000  # valid_after = 1_800_000_000 (2027-01-15T08:00:00Z)
X = bytes.fromhex
NAMES = ("guard-exit", "relay-mix", "mix-a", "mix-b", "only-one-vote", "mix-stale-keys")
# Parameters each authority votes; the consensus takes the low median of each name.
NETWORK = (
    {**DEFAULT_NETWORK_PARAMS, "mix_delay_mean_ms": 40},
    {**DEFAULT_NETWORK_PARAMS, "mix_delay_mean_ms": 60, "cover_loop_per_min": 12},
    {**DEFAULT_NETWORK_PARAMS, "mix_delay_mean_ms": 50, "only_c": 1},
)


def hx(b: bytes) -> str:
    return bytes(b).hex()


def seed(label: str, n: int = 32) -> bytes:
    return hkdf_sha256(f"qnet-consensus-vector-{label}".encode(), b"qnet-vectors", b"consensus", n)


def flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


def authority(i: int) -> Identity:
    return Identity(seed(f"authority-{i}-ed25519"), seed(f"authority-{i}-mldsa65"))


def node_identity(name: str) -> Identity:
    return Identity(seed(f"{name}-ed25519"), seed(f"{name}-mldsa65"))


def descriptor(n: int, epoch: int) -> Descriptor:
    """Node ``n``'s descriptor published just before ``epoch``."""
    name = NAMES[n]
    ident = node_identity(name)
    va = PARAMS.times(epoch)[0]
    roles = {0: [Role.RELAY, Role.EXIT], 1: [Role.RELAY, Role.MIX]}.get(n, [Role.MIX])
    policy: tuple[PolicyRule, ...] = ()
    if n == 0:
        everywhere = ipaddress.ip_network("0.0.0.0/0")
        policy = (
            PolicyRule(
                action=Action.REJECT,
                network=ipaddress.ip_network("10.0.0.0/8"),
                port_min=1,
                port_max=65535,
            ),
            PolicyRule(action=Action.ACCEPT, network=everywhere, port_min=80, port_max=80),
            PolicyRule(action=Action.ACCEPT, network=everywhere, port_min=443, port_max=443),
        )
    mix_epoch = epoch - 1 if n == 5 else epoch
    ip = ipaddress.ip_address(f"192.0.2.{10 + n}")
    return Descriptor(
        node_id=ident.node_id,
        published=va - 1200,
        addresses=canonical_order(
            [
                Address(transport=Transport.TCP, ip=ip, port=443),
                Address(transport=Transport.QUIC, ip=ip, port=443),
            ],
            Address.to_cbor,
        ),
        roles=canonical_order(roles, lambda r: r.value),
        exit_policy=policy,
        bandwidth=(n + 1) * 5_000_000,
        software="qnet/0.1.0",
        server_name=f"www.{name}.example.net",
        family=(),
        id_ed25519=ident.public.ed25519,
        id_mldsa65=ident.public.mldsa65,
        link_x25519=x25519_public(seed(f"{name}-link")),
        kem_mlkem768=MLKEM768Key(seed(f"{name}-mlkem768", 64)).public_bytes,
        ticket_x25519=x25519_public(seed(f"{name}-ticket")),
        ticket_key_id=n,
        mix_epoch=mix_epoch,
        mix_current=x25519_public(seed(f"{name}-mix-{mix_epoch}")),
        mix_next=x25519_public(seed(f"{name}-mix-{mix_epoch + 1}")),
    )


# (first_seen days ago, running_since days ago, minutes since last test, bandwidth MB/s)
# per node per authority; None = this authority did not accept the node.
OBS: dict[int, tuple[tuple[int, int, int, int] | None, ...]] = {
    0: ((30, 10, 5, 9), (30, 10, 10, 8), (20, 9, 3, 7)),
    1: ((30, 6, 5, 3), (12, 6, 10, 4), (30, 6, 200, 5)),  # C has not reached it lately
    2: ((2, 1, 5, 2), (2, 1, 10, 1), (2, 1, 3, 3)),
    3: ((9, 9, 5, 1), (9, 9, 10, 2), (9, 9, 3, 1)),
    4: ((1, 1, 1, 6), None, None),  # only A lists it: excluded
    5: ((40, 30, 5, 5), (40, 30, 10, 5), (40, 30, 3, 5)),  # mix keys for the last epoch
}


def observations(a: int, epoch: int, now: int) -> list[Observation]:
    out = []
    for n, per_authority in OBS.items():
        row = per_authority[a]
        if row is None:
            continue
        first, since, minutes, mbps = row
        out.append(
            Observation(
                descriptor=descriptor(n, epoch),
                first_seen=now - first * DAY,
                last_reachable=now - minutes * 60,
                running_since=now - since * DAY,
                measured_bandwidth=mbps * 1_000_000,
            )
        )
    return out


def vote_now(a: int, epoch: int) -> int:
    return PARAMS.times(epoch)[0] - 600 + a


def reveal(a: int, epoch: int) -> bytes:
    """The value authority ``a`` commits to in ``epoch - 1`` and reveals in ``epoch``."""
    return seed(f"authority-{a}-reveal-{epoch}")


def votes_for(epoch: int, *, wrong_reveal: bool = False) -> list[Vote]:
    """Each authority commits to its next reveal; from EPOCH on it reveals the last one."""
    out = []
    for a in range(3):
        ident = authority(a)
        r = reveal(a, epoch) if epoch == EPOCH else None
        if r is not None and wrong_reveal and a == 2:
            r = seed("not-the-committed-value")
        out.append(
            build_vote(
                ident,
                epoch,
                observations(a, epoch, vote_now(a, epoch)),
                vote_now(a, epoch),
                PARAMS,
                NETWORK[a],
                srv_commit=srv_commit(ident.node_id, epoch + 1, reveal(a, epoch + 1)),
                srv_reveal=r,
            )
        )
    return out


def authorities() -> Authorities:
    return Authorities.of(authority(a).public for a in range(3))


def consensus_now() -> int:
    return PARAMS.times(EPOCH)[0] - 300


def network() -> tuple[Consensus, list[Vote], Consensus]:
    """(previous consensus, this epoch's votes, this epoch's consensus)."""
    auths = authorities()
    prev_now = PARAMS.times(EPOCH - 1)[0] - 300
    previous = compute_consensus(votes_for(EPOCH - 1), auths, prev_now, PARAMS)
    votes = votes_for(EPOCH)
    cons = compute_consensus(votes, auths, consensus_now(), PARAMS, previous=previous)
    return previous, votes, cons


# --- recorded ML-DSA signatures ------------------------------------------------------------


class Recorded:
    """ML-DSA-65 signatures from the previous file, reused while they still verify."""

    def __init__(self, previous: dict[str, Any] | None) -> None:
        self.old: dict[str, str] = dict((previous or {}).get("mldsa65_signatures", {}))
        self.new: dict[str, str] = {}

    def sign(self, label: str, ident: Identity, context: bytes, body: bytes) -> Signatures:
        sigs = ident.sign(context, body)
        old = self.old.get(label)
        if old is not None:
            try:
                mldsa65_verify(ident.public.mldsa65, signed_message(context, body), X(old))
                sigs = Signatures(ed25519=sigs.ed25519, mldsa65=X(old))
            except (ValueError, AuthenticationError, CryptoError):
                pass
        self.new[label] = hx(sigs.mldsa65)
        return sigs


def cons_sig(ident: Identity, sigs: Signatures) -> ConsensusSignature:
    return ConsensusSignature(authority=ident.node_id, ed25519=sigs.ed25519, mldsa65=sigs.mldsa65)


def build(previous: dict[str, Any] | None) -> dict[str, Any]:
    rec = Recorded(previous)
    auths = [authority(a) for a in range(3)]
    prev, votes, cons = network()
    body = cons.encode()
    now = consensus_now()
    sigs = [
        cons_sig(a, rec.sign(f"consensus-{i}", a, CONSENSUS_CONTEXT, body))
        for i, a in enumerate(auths)
    ]
    document = assemble(body, sigs)

    # Authority C missed A's vote: its consensus differs and it signs that instead.
    other = compute_consensus(votes[1:], authorities(), now, PARAMS, previous=prev)
    other_body = other.encode()
    assert other_body != body
    c_other = cons_sig(
        auths[2], rec.sign("consensus-outvoted", auths[2], CONSENSUS_CONTEXT, other_body)
    )
    stranger = Identity(seed("stranger-ed25519"), seed("stranger-mldsa65"))
    s_sig = cons_sig(stranger, rec.sign("consensus-stranger", stranger, CONSENSUS_CONTEXT, body))
    valid_after, valid_until = cons.valid_after, cons.valid_until

    def case(
        name: str, raw: bytes, error_class: str | None, error: str | None, at: int = now
    ) -> dict[str, Any]:
        return {"name": name, "now": at, "document": hx(raw), "class": error_class, "error": error}

    bad_ed = dataclasses.replace(sigs[1], ed25519=flip(sigs[1].ed25519, 5))
    bad_ml = dataclasses.replace(sigs[1], mldsa65=flip(sigs[1].mldsa65, 5))
    cases = [
        case("all-three-signatures", document, None, None),
        case("two-of-three-signatures", assemble(body, sigs[:2]), None, None),
        case("majority-while-c-signed-another-body", assemble(body, sigs[:2]), None, None),
        case(
            "one-signature",
            assemble(body, sigs[:1]),
            "InsufficientSignatures",
            "too_few_signatures",
        ),
        case("no-signatures", assemble(body, []), "InsufficientSignatures", "too_few_signatures"),
        case(
            "outvoted-body-signed-by-c-alone",
            assemble(other_body, [c_other]),
            "InsufficientSignatures",
            "too_few_signatures",
        ),
        case(
            "c-signature-over-another-body",
            assemble(body, [sigs[0], sigs[1], c_other]),
            "BadSignature",
            "bad_ed25519_signature",
        ),
        case(
            "bad-ed25519-signature",
            assemble(body, [sigs[0], bad_ed, sigs[2]]),
            "BadSignature",
            "bad_ed25519_signature",
        ),
        case(
            "bad-mldsa65-signature",
            assemble(body, [sigs[0], bad_ml, sigs[2]]),
            "BadSignature",
            "bad_mldsa65_signature",
        ),
        case(
            "unknown-authority",
            assemble(body, [*sigs, s_sig]),
            "UnknownAuthority",
            "unknown_authority",
        ),
        case("expired", document, "StaleDocument", "expired", valid_until + PARAMS.max_skew),
        case(
            "not-yet-valid",
            document,
            "StaleDocument",
            "not_yet_valid",
            valid_after - PARAMS.max_skew - 1,
        ),
        case("trailing-byte", document + b"\x00", "MalformedDocument", "trailing_bytes"),
        case(
            "signatures-out-of-order",
            encoding.encode({"body": body, "signatures": [sigs[1].to_cbor(), sigs[0].to_cbor()]}),
            "MalformedDocument",
            "not_canonical",
        ),
        case(
            "body-bit-flipped",
            assemble(flip(body, len(body) - 1), sigs),
            "BadSignature",
            "bad_ed25519_signature",
        ),
    ]
    signed_votes = []
    for i, (a, v) in enumerate(zip(auths, votes, strict=True)):
        vb = v.encode()
        vs = rec.sign(f"vote-{i}", a, VOTE_CONTEXT, vb)
        signed_votes.append(
            {
                "authority": i,
                "now": vote_now(i, EPOCH),
                "body": hx(vb),
                "sig_ed25519": hx(vs.ed25519),
                "envelope": hx(envelope(vb, vs)),
            }
        )
    doc: dict[str, Any] = {
        "format": "directory-consensus-v1",
        "spec": "spec/directory.md",
        "note": "ML-DSA-65 signing is randomized: check that recorded signatures verify",
        "params": {
            "epoch_length": PARAMS.epoch_length,
            "validity_epochs": PARAMS.validity_epochs,
            "max_skew": PARAMS.max_skew,
            "vote_max_age": PARAMS.vote_max_age,
            "rules": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in (
                    (f.name, getattr(PARAMS.rules, f.name))
                    for f in dataclasses.fields(PARAMS.rules)
                    if f.init
                )
            },
        },
        "epoch": EPOCH,
        "network_params": list(NETWORK),
        "authorities": [
            {
                "ed25519_seed": hx(seed(f"authority-{i}-ed25519")),
                "mldsa65_seed": hx(seed(f"authority-{i}-mldsa65")),
                "ed25519_public": hx(a.public.ed25519),
                "node_id": hx(a.node_id),
            }
            for i, a in enumerate(auths)
        ],
        "nodes": [
            {
                "name": NAMES[n],
                "node_id": hx(node_identity(NAMES[n]).node_id),
                "descriptor_body": hx(descriptor(n, EPOCH).encode()),
                "digest": hx(descriptor_digest(descriptor(n, EPOCH).encode())),
                "observations": [
                    None
                    if row is None
                    else dict(
                        zip(
                            (
                                "first_seen_days",
                                "running_since_days",
                                "last_test_minutes",
                                "measured_mbps",
                            ),
                            row,
                            strict=True,
                        )
                    )
                    for row in OBS[n]
                ],
            }
            for n in range(len(NAMES))
        ],
        "srv": {
            "reveals": [hx(reveal(a, EPOCH)) for a in range(3)],
            "commits_for_next_epoch": [hx(v.srv_commit or b"") for v in votes],
            "previous_consensus_body": hx(prev.encode()),
            "previous_srv": hx(cons.srv_previous),
            "srv": hx(cons.srv),
            "valid_reveals": cons.srv_reveals,
        },
        "votes": signed_votes,
        "consensus": {
            "now": now,
            "body": hx(body),
            "digest": hx(consensus_digest(body)),
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "node_ids": [hx(n.node_id) for n in cons.nodes],
            "mix_layers": {
                hx(n.node_id): n.mix_layer for n in cons.nodes if n.mix_layer is not None
            },
            "signatures": [
                {"authority": i, "sig_ed25519": hx(s.ed25519)} for i, s in enumerate(sigs)
            ],
            "document": hx(document),
            "outvoted_body": hx(other_body),
        },
        "cases": cases,
        "mldsa65_signatures": rec.new,
    }
    assert decode_consensus_body(body) == cons
    return doc


def render(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", type=Path, default=OUT, help="vector file (default: spec/vectors)")
    args = ap.parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    if args.check:
        if previous is None:
            print(f"{args.out}: missing", file=sys.stderr)
            return 1
        fresh = build(previous)
        if fresh["mldsa65_signatures"] != previous.get("mldsa65_signatures"):
            print(f"{args.out}: a recorded ML-DSA-65 signature does not verify", file=sys.stderr)
            return 1
        if render(fresh) != args.out.read_text():
            print(f"{args.out}: differs from a fresh generation", file=sys.stderr)
            return 1
        return 0
    text = render(build(previous))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
