"""Check the HTX inner handshake against ``spec/vectors/htx_inner.json`` ("htx-inner-v1").

Both roles are replayed. The responder side runs exactly as in production (ML-KEM
decapsulation is deterministic). The initiator side gets the recorded ML-KEM
(ciphertext, shared secret) and the recorded ephemeral key through
``FixedInputs``, because encapsulation cannot be seeded. Padding lengths come
from ``SeededRandom(seed)`` and its draws are compared with the recorded ones.
"""

from __future__ import annotations

from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.htx import inner as I
from qnet.htx.errors import HandshakeError
from qnet.lint.findings import Finding

X = bytes.fromhex


class _HexCollector:
    """Like ``findings.Collector``, but reports where hex values first differ."""

    def __init__(self, vector: str) -> None:
        self.vector = vector
        self.findings: list[Finding] = []

    def fail(self, what: str) -> None:

        self.findings.append(Finding(self.vector, what))

    def same(self, what: str, got: bytes, want: str) -> None:
        have = got.hex()
        if have != want:
            at = next((i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b), None)
            where = f"first difference at byte {at // 2}" if at is not None else "lengths differ"
            self.fail(f"{what}: {where} (got {len(got)} bytes, want {len(want) // 2})")


def _responder(doc: dict[str, Any], rng: Any = None, eph: bytes | None = None) -> I.InnerResponder:
    r = doc["responder"]
    return I.InnerResponder(
        X(r["static_private"]),
        MLKEM768Key(X(r["mlkem_seed"])),
        X(doc["exporter"]),
        rng or SeededRandom(b"unused"),
        fixed=I.FixedInputs(ephemeral_private=eph),
    )


def _initiator(doc: dict[str, Any], case: dict[str, Any], kem_shared: bytes) -> I.InnerInitiator:
    r = doc["responder"]
    static = None if case["name"] == "client" else X(case["initiator_static_private"])
    return I.InnerInitiator(
        X(r["static_public"]),
        X(r["mlkem_public"]),
        X(doc["exporter"]),
        static,
        SeededRandom(X(case["initiator_seed"])),
        fixed=I.FixedInputs(
            ephemeral_private=X(case["initiator_ephemeral_private"]),
            kem=(X(doc["kem"]["ciphertext"]), kem_shared),
        ),
    )


def _check_case(doc: dict[str, Any], case: dict[str, Any]) -> list[Finding]:
    c = _HexCollector(f"htx-inner {case['name']}")
    m1, m2, m3 = X(case["msg1"]), X(case["msg2"]), X(case["msg3"])
    try:
        ini = _initiator(doc, case, X(doc["kem"]["shared"]))
        c.same("initiator static public", ini.static_public, case["initiator_static_public"])
        c.same("msg1", ini.start(), case["msg1"])
        done = ini.receive(m2)
        if not isinstance(done, I.Finished):
            c.fail("initiator did not finish on msg2")
        else:
            c.same("msg3", done.send, case["msg3"])
            c.same("initiator handshake hash", done.handshake_hash, case["handshake_hash"])
            c.same("initiator session_secret", done.session_secret, case["session_secret"])
            c.same("initiator read-ahead", done.read_ahead, "")
    except HandshakeError as exc:
        c.fail(f"initiator refused a valid handshake ({exc.reason})")
    rng = SeededRandom(X(case["responder_seed"]))
    try:
        res = _responder(doc, rng, X(case["responder_ephemeral_private"]))
        step = res.receive(m1)
        c.same("msg2", step.send, case["msg2"])
        done = res.receive(m3)
        if not isinstance(done, I.Finished):
            c.fail("responder did not finish on msg3")
        else:
            c.same("responder handshake hash", done.handshake_hash, case["handshake_hash"])
            c.same("responder session_secret", done.session_secret, case["session_secret"])
            c.same(
                "initiator static learned",
                done.remote_static_public,
                case["initiator_static_public"],
            )
    except HandshakeError as exc:
        c.fail(f"responder refused a valid handshake ({exc.reason})")
    if [d.hex() for d in rng.draws] != case["responder_draws"]:
        c.fail("responder draws differ")
    return c.findings


def _check_negative(doc: dict[str, Any], neg: dict[str, Any]) -> list[Finding]:
    c = _HexCollector(f"htx-inner {neg['name']}")
    hs: I.InnerInitiator | I.InnerResponder
    if neg["side"] == "responder":
        hs = _responder(dict(doc, exporter=neg["exporter"]))
    else:
        case = next(k for k in doc["cases"] if k["name"] == neg["case"])
        hs = _initiator(doc, case, X(neg["kem_shared"]))
    hs.start()
    try:
        for data in neg["input"]:
            hs.receive(X(data))
    except HandshakeError as exc:
        if exc.reason != neg["error"]:
            c.fail(f"reason: got {exc.reason}, want {neg['error']}")
    else:
        c.fail(f"accepted input that must be refused ({neg['error']})")
    return c.findings


def check_htx_inner(doc: dict[str, Any]) -> list[Finding]:
    """Key derivations, both roles of each handshake byte for byte, and the refusals."""
    c = _HexCollector("htx-inner keys")
    r = doc["responder"]
    c.same("responder static", X25519Key(X(r["static_private"])).public_bytes, r["static_public"])
    mlkem = MLKEM768Key(X(r["mlkem_seed"]))
    c.same("responder ML-KEM public", mlkem.public_bytes, r["mlkem_public"])
    c.same(
        "ML-KEM decapsulation", mlkem.decapsulate(X(doc["kem"]["ciphertext"])), doc["kem"]["shared"]
    )
    findings = c.findings
    for case in doc["cases"]:
        findings += _check_case(doc, case)
    for neg in doc["negative"]:
        findings += _check_negative(doc, neg)
    return findings
