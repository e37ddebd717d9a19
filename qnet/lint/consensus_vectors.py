"""Run a ``directory-consensus-v1`` vector document through ``qnet.dir`` (votes, consensus).

``check_consensus(doc)`` returns linter findings, empty when this implementation
agrees: the authorities' keys, every descriptor digest, each vote rebuilt from the
recorded observations byte for byte (flags, medians, commits and reveals), the
previous and the current consensus recomputed byte for byte, the shared random
value, the deterministic Ed25519 signatures, the recorded ML-DSA-65 signatures
verified, and every positive and negative document case.
"""

from __future__ import annotations

from typing import Any

from qnet.dir.consensus import (
    compute_consensus,
    consensus_digest,
    decode_consensus_body,
    sign_body,
    verify_consensus,
)
from qnet.dir.descriptor import decode_body
from qnet.dir.flags import DAY, FlagRules, Observation
from qnet.dir.identity import Identity
from qnet.dir.vote import (
    Authorities,
    DirectoryParams,
    build_vote,
    decode_vote_body,
    descriptor_digest,
    parse_vote,
    srv_commit,
)
from qnet.errors import DirectoryError, QNetError
from qnet.lint.findings import Finding

X = bytes.fromhex


class _Out:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def same(self, name: str, what: str, got: object, want: object) -> None:
        if got != want:
            g = got.hex() if isinstance(got, bytes) else str(got)
            w = want.hex() if isinstance(want, bytes) else str(want)
            self.problems.append((name, f"{what}: got {g[:40]}, want {w[:40]}"))

    def fail(self, name: str, what: str) -> None:
        self.problems.append((name, what))


def _params(doc: dict[str, Any]) -> DirectoryParams:
    p = doc["params"]
    r = p["rules"]
    rules = FlagRules(
        running_max_age=r["running_max_age"],
        stable_min_uptime=r["stable_min_uptime"],
        guard_min_known=r["guard_min_known"],
        fast_permille=r["fast_permille"],
        fast_guarantee=r["fast_guarantee"],
        guard_permille=r["guard_permille"],
        guard_guarantee=r["guard_guarantee"],
        exit_ports=tuple(r["exit_ports"]),
        exit_probes=tuple(r["exit_probes"]),
    )
    return DirectoryParams(
        epoch_length=p["epoch_length"],
        validity_epochs=p["validity_epochs"],
        max_skew=p["max_skew"],
        vote_max_age=p["vote_max_age"],
        rules=rules,
    )


def _check(doc: dict[str, Any], out: _Out) -> None:
    params = _params(doc)
    epoch = doc["epoch"]
    idents = [Identity(X(a["ed25519_seed"]), X(a["mldsa65_seed"])) for a in doc["authorities"]]
    for i, (ident, a) in enumerate(zip(idents, doc["authorities"], strict=True)):
        out.same(f"authority {i}", "ed25519 public", ident.public.ed25519, X(a["ed25519_public"]))
        out.same(f"authority {i}", "node id", ident.node_id, X(a["node_id"]))
    auths = Authorities.of(i.public for i in idents)
    descs = []
    for n in doc["nodes"]:
        body = X(n["descriptor_body"])
        desc = decode_body(body)
        descs.append(desc)
        out.same(n["name"], "descriptor digest", descriptor_digest(body), X(n["digest"]))
        out.same(n["name"], "node id", desc.node_id, X(n["node_id"]))
    srv = doc["srv"]
    previous = decode_consensus_body(X(srv["previous_consensus_body"]))
    votes = []
    for v in doc["votes"]:
        a = v["authority"]
        now = v["now"]
        obs = [
            Observation(
                descriptor=desc,
                first_seen=now - row["first_seen_days"] * DAY,
                last_reachable=now - row["last_test_minutes"] * 60,
                running_since=now - row["running_since_days"] * DAY,
                measured_bandwidth=row["measured_mbps"] * 1_000_000,
            )
            for desc, n in zip(descs, doc["nodes"], strict=True)
            if (row := n["observations"][a]) is not None
        ]
        ident = idents[a]
        reveal = X(srv["reveals"][a])
        rebuilt = build_vote(
            ident,
            epoch,
            obs,
            now,
            params,
            doc["network_params"][a],
            srv_commit=X(srv["commits_for_next_epoch"][a]),
            srv_reveal=reveal,
        )
        out.same(f"vote {a}", "body", rebuilt.encode(), X(v["body"]))
        want = srv_commit(ident.node_id, epoch, reveal)
        out.same(f"vote {a}", "previous commit", dict(previous.commits).get(ident.node_id), want)
        try:
            votes.append(parse_vote(X(v["envelope"]), auths, now, params))
        except DirectoryError as exc:
            out.fail(f"vote {a}", f"refused a valid vote ({exc.reason})")
            votes.append(decode_vote_body(X(v["body"])))
        sig = ident.sign(b"qnet-dir-v1 vote\x00", X(v["body"])).ed25519
        out.same(f"vote {a}", "ed25519 signature", sig, X(v["sig_ed25519"]))
    c = doc["consensus"]
    body = X(c["body"])
    cons = compute_consensus(votes, auths, c["now"], params, previous=previous)
    out.same("consensus", "body", cons.encode(), body)
    out.same("consensus", "digest", consensus_digest(body), X(c["digest"]))
    out.same("consensus", "srv", cons.srv, X(srv["srv"]))
    out.same("consensus", "previous srv", cons.srv_previous, X(srv["previous_srv"]))
    out.same("consensus", "valid reveals", cons.srv_reveals, srv["valid_reveals"])
    out.same("consensus", "nodes", [n.node_id.hex() for n in cons.nodes], c["node_ids"])
    layers = {n.node_id.hex(): n.mix_layer for n in cons.nodes if n.mix_layer is not None}
    out.same("consensus", "mix layers", layers, c["mix_layers"])
    for s in c["signatures"]:
        got = sign_body(body, idents[s["authority"]]).ed25519
        out.same(f"consensus signature {s['authority']}", "ed25519", got, X(s["sig_ed25519"]))
    for case in doc["cases"]:
        name = case["name"]
        try:
            verify_consensus(X(case["document"]), auths, case["now"], max_skew=params.max_skew)
        except DirectoryError as exc:
            if case["error"] is None:
                out.fail(name, f"refused a valid document ({type(exc).__name__} {exc.reason})")
            else:
                out.same(name, "error class", type(exc).__name__, case["class"])
                out.same(name, "reason", exc.reason, case["error"])
        else:
            if case["error"] is not None:
                out.fail(name, f"accepted a document that must be refused ({case['error']})")


def check_consensus(doc: dict[str, Any]) -> list[Finding]:
    """Every vote, consensus and document case in ``doc`` (a malformed file raises
    ``KeyError`` / ``ValueError``, which the linter reports as such)."""

    out = _Out()
    try:
        _check(doc, out)
    except QNetError as exc:  # a document in the file that cannot even be decoded
        out.fail("directory-consensus", f"could not run: {exc}")
    return [Finding(name, what) for name, what in out.problems]
