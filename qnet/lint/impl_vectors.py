"""``qnet-lint vectors --impl CMD``: every vector operation, through a harness (spec/harness.md).

``cases(doc)`` turns one vector document into :class:`Case` objects: a check, a
subject (which vector), the request to send and what the answer must hold.
``run(harness, files)`` sends them and turns the answers into results. The
linter never trusts the implementation's view of what a vector means: inputs
come from the file, expected outputs come from the file, and the comparison is
done here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qnet.lint.harness import Harness, HarnessFault
from qnet.lint.report import Check, Result, failed, passed, skipped


def _c(cid: str, spec: str, title: str) -> Check:
    return Check(cid, spec, title)


H: Final = "spec/harness.md"
SX: Final = "spec/sphinx.md"
CL: Final = "spec/cells.md"
DR: Final = "spec/directory.md"
HX: Final = "spec/htx.md"
IN: Final = "spec/htx-inner.md"
TK: Final = "spec/htx-tickets.md"

CHECKS: Final[dict[str, Check]] = {
    c.id: c
    for c in [
        _c("HARNESS-START-001", f"{H} §2", "the harness starts and answers hello"),
        _c("HARNESS-PROTO-001", f"{H} §3", "every answer is one JSON object with the request id"),
        _c("HARNESS-PROTO-002", f"{H} §3", "every request is answered within the timeout"),
        _c("HARNESS-PROTO-003", f"{H} §3", "the harness stays alive for the whole run"),
        _c("VEC-FILE-001", f"{H} §5", "the vector file has a known format and is well formed"),
        _c("SPHINX-KEY-001", f"{SX} §4", "a mix key's public half from its private half"),
        _c("SPHINX-BUILD-001", f"{SX} §8", "a packet built from replayed draws, byte for byte"),
        _c("SPHINX-UNWRAP-001", f"{SX} §7", "each hop's unwrap result, byte for byte"),
        _c("SPHINX-SURB-001", f"{SX} §9", "a SURB created from replayed draws"),
        _c("SPHINX-SURB-002", f"{SX} §9", "the replier's packet on a SURB"),
        _c("SPHINX-SURB-003", f"{SX} §9", "the creator opens the reply"),
        _c("SPHINX-REJECT-001", f"{SX} §11", "bad packets refused with the listed reason"),
        _c("SPHINX-REPLAY-001", f"{SX} §10", "a second copy of a packet is dropped as a replay"),
        _c("LIONESS-001", f"{SX} §5", "Lioness block encryption"),
        _c("CELL-KEYS-001", f"{CL} §3", "per-hop layer keys from the hop key material"),
        _c("CELL-FWD-001", f"{CL} §3", "forward onion: client seal and relay layers"),
        _c("CELL-BWD-001", f"{CL} §3", "backward onion: exit seal and client open"),
        _c("CELL-BATCH-001", f"{CL} §3", "batch layer XOR and batch seal"),
        _c("CELL-UNIT-001", f"{CL} §1", "link unit decode and re-encode"),
        _c("CELL-REJECT-001", f"{CL} §4", "bad units and cells refused with the listed reason"),
        _c("DIR-CBOR-001", f"{DR} §2.2", "canonical CBOR decodes and re-encodes identically"),
        _c("DIR-CBOR-002", f"{DR} §2.3", "non-canonical CBOR refused with the listed reason"),
        _c("DIR-ID-001", f"{DR} §3", "identity keys and node id from seeds"),
        _c("DIR-KEYS-001", f"{DR} §5", "a descriptor's medium-term public keys from seeds"),
        _c("DIR-SIGN-001", f"{DR} §4", "the deterministic Ed25519 signature of a descriptor"),
        _c("DIR-DESC-001", f"{DR} §6", "a signed descriptor verifies and decodes to its body"),
        _c("DIR-DESC-002", f"{DR} §7", "bad descriptors refused with the listed class and reason"),
        _c("DIR-DIGEST-001", f"{DR} §8.2", "descriptor digests"),
        _c("DIR-DIGEST-002", f"{DR} §8.8", "consensus digest"),
        _c("DIR-CONS-001", f"{DR} §8.9", "consensus documents accepted or refused as listed"),
        _c("HTX-KEYS-001", f"{HX} §3", "session key schedule (K0, both directions)"),
        _c("HTX-KEYS-002", f"{HX} §5.5", "the next generation's keys after KEY_UPDATE"),
        _c("HTX-FRAME-001", f"{HX} §4", "each frame sealed byte for byte"),
        _c("HTX-FRAME-002", f"{HX} §4", "each sealed frame opens to the listed frame"),
        _c("HTX-KEYUPDATE-001", f"{HX} §5.5", "a frame sequence across KEY_UPDATE"),
        _c("HTX-OVERLAP-001", f"{HX} §5.5", "the old-key overlap after KEY_UPDATE"),
        _c("HTX-REJECT-001", f"{HX} §4.3", "bad frames refused with the listed class and reason"),
        _c("INNER-KEYS-001", f"{IN} §1", "the responder's static and ML-KEM keys"),
        _c("INNER-INIT-001", f"{IN} §3", "the initiator's messages and secrets, byte for byte"),
        _c("INNER-RESP-001", f"{IN} §3", "the responder's message and secrets, byte for byte"),
        _c("INNER-REJECT-001", f"{IN} §7", "bad handshake input refused with the listed reason"),
        _c("TICKET-KEY-001", f"{TK} §2", "ticket key public half"),
        _c("TICKET-BUILD-001", f"{TK} §3", "a ticket built from replayed draws"),
        _c("TICKET-VERIFY-001", f"{TK} §4", "each verification verdict in a sequence"),
        _c("TICKET-UPGRADE-001", f"{TK} §7", "the HTTP/1.1 tunnel request, byte for byte"),
        _c("TICKET-UPGRADE-002", f"{TK} §7", "the server's 101 answer, byte for byte"),
    ]
}

FAULT_CHECK: Final = {
    "garbage": "HARNESS-PROTO-001",
    "timeout": "HARNESS-PROTO-002",
    "crash": "HARNESS-PROTO-003",
    "start": "HARNESS-START-001",
}


@dataclass(frozen=True, slots=True)
class Case:
    """One request and what its answer must contain.

    ``expect``: fields that must be equal in the answer. ``error``: the answer must
    be a refusal with this ``reason`` (and ``class``, when listed).
    """

    check: str
    subject: str
    request: dict[str, Any]
    expect: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


# --- comparing ----------------------------------------------------------------------------


def _describe(path: str, got: object, want: object) -> str:
    if isinstance(got, str) and isinstance(want, str) and _is_hex(got) and _is_hex(want):
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        if at is None:
            return f"{path}: {len(got) // 2} bytes, want {len(want) // 2}"
        return f"{path}: first difference at byte {at // 2} (got {got[at & ~1 : (at & ~1) + 8]}…)"
    g, w = repr(got), repr(want)
    return f"{path}: got {g[:60]}, want {w[:60]}"


def _is_hex(s: str) -> bool:
    return len(s) % 2 == 0 and all(ch in "0123456789abcdef" for ch in s[:64])


def diff(got: object, want: object, path: str) -> str | None:
    """The first difference between an answer value and the expected one, or ``None``."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return _describe(path, got, want)
        for k, v in want.items():
            d = diff(got.get(k), v, f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(want, list):
        if not isinstance(got, list):
            return _describe(path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            d = diff(g, w, f"{path}[{i}]")
            if d:
                return d
        if len(got) != len(want):
            return f"{path}: {len(got)} items, want {len(want)}"
        return None
    return None if got == want else _describe(path, got, want)


def judge(case: Case, resp: dict[str, Any]) -> str | None:
    """Why ``resp`` does not satisfy ``case`` (``None`` when it does)."""
    if "fault" in resp:
        return f"harness fault: {resp['fault']}"
    err = resp.get("error")
    if case.error is not None:
        if not isinstance(err, dict):
            return f"accepted input that must be refused ({case.error['reason']})"
        if err.get("reason") != case.error["reason"]:
            return f"refused with reason {err.get('reason')!r}, want {case.error['reason']!r}"
        want_class = case.error.get("class")
        if want_class and err.get("class") != want_class:
            return f"refused with class {err.get('class')!r}, want {want_class!r}"
        return None
    if err is not None:
        reason = err.get("reason") if isinstance(err, dict) else err
        return f"refused valid input ({reason}{': ' + resp['detail'] if 'detail' in resp else ''})"
    for k, v in case.expect.items():
        d = diff(resp.get(k), v, k)
        if d:
            return d
    return None


# --- running ------------------------------------------------------------------------------


def run(harness: Harness, files: Iterable[tuple[Path, dict[str, Any]]]) -> list[Result]:
    out: list[Result] = []
    start = CHECKS["HARNESS-START-001"]
    out.append(passed(start, f"{harness.hello.name} {harness.hello.version}"))
    for path, doc in files:
        try:
            file_cases = list(cases(doc))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            out.append(failed(CHECKS["VEC-FILE-001"], path.name, f"malformed: {exc!r}"))
            continue
        if not file_cases:
            why = f"format {doc.get('format')!r} has no harness operations yet (spec/harness.md §5)"
            out.append(skipped(CHECKS["VEC-FILE-001"], path.name, why))
            continue
        out.append(passed(CHECKS["VEC-FILE-001"], path.name))
        for case in file_cases:
            res = _one(harness, case, path.name)
            out.append(res)
            if res.check.id == "HARNESS-START-001":
                return out  # it cannot be restarted: nothing else can run
    return out


def _one(harness: Harness, case: Case, file: str) -> Result:
    check = CHECKS[case.check]
    subject = f"{file}: {case.subject}"
    op = str(case.request["op"])
    if not harness.offers(op):
        return skipped(check, subject, f"the harness does not offer {op}")
    try:
        resp = harness.call(case.request)
    except HarnessFault as exc:
        return failed(CHECKS[FAULT_CHECK[exc.kind]], subject, f"{op} ({case.check}): {exc.detail}")
    if resp.get("unsupported"):
        return skipped(check, subject, f"the harness does not support {op}")
    why = judge(case, resp)
    return passed(check, subject) if why is None else failed(check, subject, why)


# --- vector documents → cases -------------------------------------------------------------

Cases = Iterator[Case]


def cases(doc: dict[str, Any]) -> Cases:
    gen = _GENERATORS.get(str(doc.get("format")))
    return iter(()) if gen is None else gen(doc)


def _sphinx(doc: dict[str, Any]) -> Cases:
    keys = doc["node_keys"]

    def hop(n: int) -> dict[str, str]:
        return {"node_id": keys[n]["node_id"], "public": keys[n]["public"]}

    for k in keys:
        yield Case(
            "SPHINX-KEY-001",
            f"node {k['index']}",
            {"op": "x25519_public", "private": k["private"]},
            {"public": k["public"]},
        )
    for vec in [*doc["forward"], doc["circuit"]]:
        expect: dict[str, Any] = {
            "packet": vec["packet"],
            "hops": [{"shared": h["shared"], "okm": h["okm"]} for h in vec["hops"]],
            "draws_used": len(vec["draws"]),
        }
        if "filler" in vec:
            expect["filler"] = vec["filler"]
        route = [{**hop(r["node"]), "slot": r["slot"]} for r in vec["route"]]
        req = {"op": "sphinx_build", "route": route, "message": vec["message"]}
        yield Case("SPHINX-BUILD-001", vec["name"], {**req, "draws": vec["draws"]}, expect)
        yield from _steps(keys, vec["name"], vec["steps"])
    s = doc["surb"]
    surb_req = {
        "path": [hop(n) for n in s["path"]],
        "delays_us": [st.get("delay_us", 0) for st in s["steps"]],
        "recipient": s["recipient"],
        "draws": s["draws"],
    }
    yield Case(
        "SPHINX-SURB-001",
        s["name"],
        {"op": "sphinx_surb_create", **surb_req},
        {"surb": s["surb"], "draws_used": len(s["draws"])},
    )
    yield Case(
        "SPHINX-SURB-002",
        s["name"],
        {"op": "sphinx_surb_reply", "surb": s["surb"], "reply": s["reply"]},
        {"packet": s["packet"]},
    )
    yield from _steps(keys, s["name"], s["steps"])
    yield Case(
        "SPHINX-SURB-003",
        s["name"],
        {"op": "sphinx_surb_open", **surb_req, "payload": s["payload_at_recipient"]},
        {"reply": s["opened_reply"]},
    )
    for neg in doc["negative"]:
        private = keys[neg["node"]]["private"]
        if neg.get("repeat"):
            packets = [neg["packet"]] * neg["repeat"]
            yield Case(
                "SPHINX-REPLAY-001",
                neg["name"],
                {"op": "sphinx_process", "private": private, "packets": packets},
                {"results": [{}] * (neg["repeat"] - 1) + [{"drop": neg["error"]}]},
            )
        elif neg["error"] is not None:
            yield Case(
                "SPHINX-REJECT-001",
                neg["name"],
                {"op": "sphinx_unwrap", "private": private, "packet": neg["packet"]},
                error={"reason": neg["error"]},
            )


def _steps(keys: list[dict[str, Any]], name: str, steps: list[dict[str, Any]]) -> Cases:
    for n, step in enumerate(steps):
        expect = {k: v for k, v in step.items() if k not in ("node", "input")}
        yield Case(
            "SPHINX-UNWRAP-001",
            f"{name} hop {n}",
            {
                "op": "sphinx_unwrap",
                "private": keys[step["node"]]["private"],
                "packet": step["input"],
            },
            expect,
        )


def _cells(doc: dict[str, Any]) -> Cases:
    keys = []
    for n, h in enumerate(doc["hops"]):
        yield Case(
            "CELL-KEYS-001",
            f"hop {n}",
            {"op": "cell_layer_keys", "material": h["hop_key_material"]},
            {"forward": h["forward"], "backward": h["backward"]},
        )
        keys.append({"forward": h["forward"], "backward": h["backward"]})
    f, b = doc["forward"], doc["backward"]
    yield Case(
        "CELL-FWD-001",
        "client seal",
        {"op": "cell_onion_seal", "keys": keys, "plaintext": f["plaintext"]},
        {"body": f["wire_to_entry"]},
    )
    relays = [k["forward"] for k in keys[:-1]]
    yield Case(
        "CELL-FWD-001",
        "relay layers",
        {"op": "cell_pass", "keys": relays, "counter": f["counter"], "body": f["wire_to_entry"]},
        {"body": f["sealed_by_exit_key"]},
    )
    yield Case(
        "CELL-BWD-001",
        "exit seal",
        {
            "op": "cell_end_seal",
            "key": keys[-1]["backward"],
            "counter": b["counter"],
            "plaintext": b["plaintext"],
        },
        {"body": b["sealed_by_exit"]},
    )
    yield Case(
        "CELL-BWD-001",
        "client open",
        {"op": "cell_onion_open", "keys": keys, "body": b["wire_to_client"]},
        {"plaintext": b["plaintext"]},
    )
    bx, bs = doc["batch_xor"], doc["batch_seal"]
    yield Case(
        "CELL-BATCH-001",
        "batch xor",
        {
            "op": "cell_xor_batch",
            "key": bx["key"],
            "counter": bx["counter"],
            "bodies": bx["bodies"],
        },
        {"output": bx["output"]},
    )
    yield Case(
        "CELL-BATCH-001",
        "batch seal",
        {
            "op": "cell_seal_batch",
            "key": bs["key"],
            "counter": bs["counter"],
            "plaintexts": bs["plaintexts"],
        },
        {"output": bs["output"]},
    )
    for n, lv in enumerate(doc["lioness"]):
        yield Case(
            "LIONESS-001",
            f"lioness {n}",
            {"op": "lioness_encrypt", "keys": lv["keys"], "block": lv["plaintext"]},
            {"block": lv["ciphertext"]},
        )
    for n, u in enumerate(doc["units"]):
        yield Case(
            "CELL-UNIT-001",
            f"unit {n}",
            {"op": "cell_unit_decode", "unit": u["encoded"]},
            {"circ_id": u["circ_id"], "command": u["command"], "encoded": u["encoded"]},
        )
    for neg in doc["negative"]:
        if neg["op"] == "open":
            req = {
                "op": "cell_end_open",
                "key": neg["key"],
                "counter": neg["counter"],
                "body": neg["body"],
            }
        elif neg["op"] == "decode_unit":
            req = {"op": "cell_unit_decode", "unit": neg["unit"]}
        else:
            req = {"op": "cell_relay_decode", "plaintext": neg["plaintext"]}
        yield Case("CELL-REJECT-001", neg["name"], req, error={"reason": neg["error"]})


def _directory(doc: dict[str, Any]) -> Cases:
    for vec in doc["encoding"]["positive"]:
        yield Case(
            "DIR-CBOR-001",
            vec["name"],
            {"op": "cbor_canonical", "cbor": vec["cbor"]},
            {"cbor": vec["cbor"]},
        )
    for vec in doc["encoding"]["negative"]:
        yield Case(
            "DIR-CBOR-002",
            vec["name"],
            {"op": "cbor_canonical", "cbor": vec["cbor"]},
            error={"reason": vec["error"]},
        )
    ids, d, seeds = doc["identity"], doc["descriptor"], doc["medium_term_seeds"]
    fields = d["fields"]
    seeds_req = {"ed25519_seed": ids["ed25519_seed"], "mldsa65_seed": ids["mldsa65_seed"]}
    yield Case(
        "DIR-ID-001",
        "identity",
        {"op": "dir_identity", **seeds_req},
        {k: ids[k] for k in ("ed25519_public", "mldsa65_public", "node_id")},
    )
    yield Case(
        "DIR-KEYS-001",
        "link x25519",
        {"op": "x25519_public", "private": seeds["link_x25519_private"]},
        {"public": fields["link_x25519"]},
    )
    yield Case(
        "DIR-KEYS-001",
        "ml-kem-768",
        {"op": "mlkem_public", "seed": seeds["mlkem768_seed"]},
        {"public": fields["kem_mlkem768"]},
    )
    yield Case(
        "DIR-SIGN-001",
        "descriptor",
        {"op": "dir_sign_ed25519", **seeds_req, "context": d["context"], "body": d["body"]},
        {"signature": d["sig_ed25519"]},
    )
    yield Case(
        "DIR-DESC-001",
        "descriptor",
        {"op": "descriptor_verify", "envelope": d["envelope"], "now": d["now"]},
        {"body": d["body"], "node_id": fields["node_id"]},
    )
    for vec in doc["negative"]:
        yield Case(
            "DIR-DESC-002",
            vec["name"],
            {"op": "descriptor_verify", "envelope": vec["envelope"], "now": vec["now"]},
            error={"reason": vec["error"], "class": vec["class"]},
        )


def _consensus(doc: dict[str, Any]) -> Cases:
    from qnet.dir.identity import Identity  # the verifier's configured keys, from the seeds

    auths = []
    for a in doc["authorities"]:
        ident = Identity(bytes.fromhex(a["ed25519_seed"]), bytes.fromhex(a["mldsa65_seed"]))
        auths.append(
            {"ed25519_public": a["ed25519_public"], "mldsa65_public": ident.public.mldsa65.hex()}
        )
    for n in doc["nodes"]:
        yield Case(
            "DIR-DIGEST-001",
            n["name"],
            {"op": "dir_digest", "kind": "descriptor", "body": n["descriptor_body"]},
            {"digest": n["digest"]},
        )
    c = doc["consensus"]
    yield Case(
        "DIR-DIGEST-002",
        "consensus",
        {"op": "dir_digest", "kind": "consensus", "body": c["body"]},
        {"digest": c["digest"]},
    )
    max_skew = doc["params"]["max_skew"]
    for case in doc["cases"]:
        req = {
            "op": "consensus_verify",
            "document": case["document"],
            "authorities": auths,
            "now": case["now"],
            "max_skew": max_skew,
        }
        if case["error"] is None:
            yield Case("DIR-CONS-001", case["name"], req)
        else:
            yield Case(
                "DIR-CONS-001",
                case["name"],
                req,
                error={"reason": case["error"], "class": case["class"]},
            )


def _frames(doc: dict[str, Any]) -> Cases:
    dirs = doc["directions"]
    yield Case(
        "HTX-KEYS-001",
        "session keys",
        {"op": "frame_keys", "session_secret": doc["session_secret"]},
        {"k0": doc["k0"], "client": _k(dirs["client"]), "server": _k(dirs["server"])},
    )
    ku = doc["key_update"]
    gens = {(ku["direction"], k["generation"]): k["secret"] for k in ku["keys"]}
    for name, d in dirs.items():
        gens.setdefault((name, 0), d["secret"])
    for prev, nxt in zip(ku["keys"], ku["keys"][1:], strict=False):
        yield Case(
            "HTX-KEYS-002",
            f"{ku['direction']} generation {nxt['generation']}",
            {"op": "frame_key_next", "secret": prev["secret"]},
            _k(nxt),
        )
    sealed = [(name, v) for name, vecs in doc["frames"].items() for v in vecs]
    sealed += [(ku["direction"], v) for v in ku["frames"]]
    for name, v in sealed:
        secret = gens[(name, v["generation"])]
        subject = f"{name} {v['frame']['type']} g{v['generation']} #{v['counter']}"
        yield Case(
            "HTX-FRAME-001",
            subject,
            {"op": "frame_seal", "secret": secret, "counter": v["counter"], "frame": v["frame"]},
            {"wire": v["wire"]},
        )
        yield Case(
            "HTX-FRAME-002",
            subject,
            {"op": "frame_open", "secret": secret, "counter": v["counter"], "wire": v["wire"]},
            {"frames": [v["frame"]], "refused": None, "buffered": 0},
        )
    start = gens[(ku["direction"], 0)]
    frames = [s["frame"] for s in ku["frames"]]
    yield Case(
        "HTX-KEYUPDATE-001",
        "seal sequence",
        {"op": "frame_seal_sequence", "secret": start, "frames": frames},
        {"wire": ku["wire"]},
    )
    yield Case(
        "HTX-KEYUPDATE-001",
        "open sequence",
        {"op": "frame_open", "secret": start, "counter": 0, "wire": ku["wire"]},
        {"frames": frames, "refused": None, "buffered": 0},
    )
    ov = doc["overlap"]
    wire = "".join(s["wire"] for s in ov["accepted"]) + ov["refused"]["wire"]
    yield Case(
        "HTX-OVERLAP-001",
        "old key after a new-key frame",
        {
            "op": "frame_open",
            "secret": gens[(ov["direction"], 0)],
            "counter": 0,
            "overlap_frames": ov["overlap_frames"],
            "wire": wire,
        },
        {"frames": [s["frame"] for s in ov["accepted"]], "refused": ov["refused"]["error"]},
    )
    for neg in doc["negative"]:
        yield Case(
            "HTX-REJECT-001",
            neg["name"],
            {
                "op": "frame_open",
                "secret": gens[(neg["direction"], 0)],
                "counter": neg["counter"],
                "wire": neg["wire"],
            },
            {"frames": [], "refused": neg["error"]},
        )


def _k(j: dict[str, Any]) -> dict[str, str]:
    return {"secret": j["secret"], "key": j["key"], "nonce_salt": j["nonce_salt"]}


def _inner(doc: dict[str, Any]) -> Cases:
    r, kem = doc["responder"], doc["kem"]
    yield Case(
        "INNER-KEYS-001",
        "responder static",
        {"op": "x25519_public", "private": r["static_private"]},
        {"public": r["static_public"]},
    )
    yield Case(
        "INNER-KEYS-001",
        "responder ML-KEM",
        {"op": "mlkem_public", "seed": r["mlkem_seed"]},
        {"public": r["mlkem_public"]},
    )
    yield Case(
        "INNER-KEYS-001",
        "ML-KEM decapsulation",
        {"op": "mlkem_decapsulate", "seed": r["mlkem_seed"], "ciphertext": kem["ciphertext"]},
        {"shared": kem["shared"]},
    )

    def initiator(case: dict[str, Any], kem_shared: str) -> dict[str, Any]:
        return {
            "op": "inner_initiator",
            "responder_static_public": r["static_public"],
            "responder_mlkem_public": r["mlkem_public"],
            "exporter": doc["exporter"],
            "static_private": None
            if case["name"] == "client"
            else case["initiator_static_private"],
            "ephemeral_private": case["initiator_ephemeral_private"],
            "kem_ciphertext": kem["ciphertext"],
            "kem_shared": kem_shared,
            "draws": case["initiator_draws"],
        }

    def responder(exporter: str, case: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "op": "inner_responder",
            "static_private": r["static_private"],
            "mlkem_seed": r["mlkem_seed"],
            "exporter": exporter,
            "ephemeral_private": case["responder_ephemeral_private"] if case else None,
            "draws": case["responder_draws"] if case else [],
        }

    secrets = ("handshake_hash", "session_secret")
    for case in doc["cases"]:
        yield Case(
            "INNER-INIT-001",
            case["name"],
            {**initiator(case, kem["shared"]), "messages": [case["msg2"]]},
            {
                "sent": [case["msg1"], case["msg3"]],
                "finished": True,
                **{k: case[k] for k in secrets},
                "remote_static": r["static_public"],
                "draws_used": len(case["initiator_draws"]),
            },
        )
        yield Case(
            "INNER-RESP-001",
            case["name"],
            {**responder(doc["exporter"], case), "messages": [case["msg1"], case["msg3"]]},
            {
                "sent": [case["msg2"]],
                "finished": True,
                **{k: case[k] for k in secrets},
                "remote_static": case["initiator_static_public"],
                "draws_used": len(case["responder_draws"]),
            },
        )
    by_name = {c["name"]: c for c in doc["cases"]}
    for neg in doc["negative"]:
        if neg["side"] == "responder":
            req = {**responder(neg["exporter"], None), "messages": neg["input"]}
        else:
            req = {**initiator(by_name[neg["case"]], neg["kem_shared"]), "messages": neg["input"]}
        yield Case("INNER-REJECT-001", neg["name"], req, error={"reason": neg["error"]})


def _tickets(doc: dict[str, Any]) -> Cases:
    for k in doc["server_keys"]:
        yield Case(
            "TICKET-KEY-001",
            f"key {k['key_id']}",
            {"op": "x25519_public", "private": k["private"]},
            {"public": k["public"]},
        )
    fields = ("hour", "client_public", "shared", "nonce", "padding", "ticket", "wire", "carrier")
    for n, t in enumerate(doc["tickets"]):
        yield Case(
            "TICKET-BUILD-001",
            f"ticket {n}",
            {
                "op": "ticket_build",
                "server_public": t["server_public"],
                "key_id": t["key_id"],
                "now": t["now"],
                "draws": t["draws"],
            },
            {**{k: t[k] for k in fields}, "draws_used": len(t["draws"])},
        )
    keys = [{"key_id": k["key_id"], "private": k["private"]} for k in doc["server_keys"]]
    for seq in doc["verify"]:
        checks = [{k: c[k] for k in ("carrier", "peer", "now")} for c in seq["checks"]]
        yield Case(
            "TICKET-VERIFY-001",
            seq["name"],
            {
                "op": "ticket_verify",
                "server_keys": keys,
                "config": seq.get("config", {}),
                "checks": checks,
            },
            {"reasons": [c["reason"] for c in seq["checks"]]},
        )
    for u in doc["upgrade"]:
        yield Case(
            "TICKET-UPGRADE-001",
            u["name"],
            {
                "op": "tunnel_request",
                "host": u["host"],
                "path": u["path"],
                "carrier": u["carrier"],
                "ticket": u["ticket"],
                "draws": u["draws"],
            },
            {"request": u["request"], "accept": u["sec_websocket_accept"]},
        )
        if "response_101" in u:
            yield Case(
                "TICKET-UPGRADE-002",
                u["name"],
                {"op": "tunnel_accept", "request": u["request"], "now": u["now"]},
                {"tunnel_request": True, "response": u["response_101"]},
            )


_GENERATORS: Final[dict[str, Callable[[dict[str, Any]], Cases]]] = {
    "sphinx-x25519-v1": _sphinx,
    "cells-v1": _cells,
    "directory-v1": _directory,
    "directory-consensus-v1": _consensus,
    "htx-frames-v1": _frames,
    "htx-inner-v1": _inner,
    "htx-tickets-v1": _tickets,
}
