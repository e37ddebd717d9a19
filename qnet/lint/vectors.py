"""Check an implementation against the JSON vectors in ``spec/vectors/``.

Each ``check_*`` function runs one vector through QNet's codecs on the hot-path
backend currently selected in ``qnet.crypto.accel`` and returns a list of
findings (empty when the implementation agrees byte for byte).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qnet.crypto import accel
from qnet.crypto.drbg import SeededRandom
from qnet.errors import CellError, PacketError
from qnet.lint.circuit_vectors import check_circuits
from qnet.lint.consensus_vectors import check_consensus
from qnet.lint.dir_vectors import check_directory
from qnet.lint.findings import Collector, Finding
from qnet.lint.htx_vectors import check_htx_frames
from qnet.lint.inner_vectors import check_htx_inner
from qnet.lint.ticket_vectors import check_tickets
from qnet.mix import sphinx as S
from qnet.routing import cells as R

X = bytes.fromhex
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "spec" / "vectors"


# --- Sphinx --------------------------------------------------------------------------


class _SphinxContext:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.keys = [S.MixKey(X(n["private"])) for n in doc["node_keys"]]
        self.ids = [X(n["node_id"]) for n in doc["node_keys"]]

    def route(self, vec: dict[str, Any]) -> list[S.RouteHop]:
        return [
            S.RouteHop(
                node_id=self.ids[r["node"]],
                public_key=self.keys[r["node"]].public_bytes,
                slot=_slot(r["slot"]),
            )
            for r in vec["route"]
        ]


def _slot(j: dict[str, Any]) -> S.Slot:
    return S.Slot(
        command=S.Command[j["command"]],
        delay_us=j["delay_us"],
        address=X(j["address"]),
        tag=X(j["tag"]),
        params=X(j["params"]),
    )


def _check_steps(ctx: _SphinxContext, c: Collector, steps: list[dict[str, Any]]) -> None:
    for n, step in enumerate(steps):
        try:
            result = S.unwrap(X(step["input"]), ctx.keys[step["node"]])
        except PacketError as exc:
            c.fail(f"hop {n}: refused a valid packet ({exc.reason})")
            return
        c.same(f"hop {n} result", type(result).__name__, step["result"])
        for field, want in step.items():
            if field in ("node", "input", "result") or not hasattr(result, field):
                continue
            got = getattr(result, field)
            c.same(f"hop {n} {field}", got if isinstance(got, int) else got.hex(), want)


def _check_build(ctx: _SphinxContext, c: Collector, vec: dict[str, Any]) -> None:
    rng = SeededRandom(X(vec["seed"]))
    built = S.build_packet(ctx.route(vec), X(vec["message"]), rng)
    c.same("draws", [d.hex() for d in rng.draws], vec["draws"])
    for n, (hop, want) in enumerate(zip(built.hops, vec["hops"], strict=True)):
        c.same(f"hop {n} shared", hop.shared.hex(), want["shared"])
        c.same(f"hop {n} okm", hop.okm.hex(), want["okm"])
    if "filler" in vec:
        c.same("filler", built.header.filler.hex(), vec["filler"])
    c.same("packet", built.packet.hex(), vec["packet"])


def check_sphinx(doc: dict[str, Any]) -> list[Finding]:
    """Every Sphinx vector: building, each hop's unwrap, SURBs, circuit set-up, negatives."""
    ctx = _SphinxContext(doc)
    findings: list[Finding] = []
    c = Collector("node_keys")
    for n, (want, key) in enumerate(zip(doc["node_keys"], ctx.keys, strict=True)):
        c.same(f"node {n} public", key.public_bytes.hex(), want["public"])
    findings += c.findings
    for vec in [*doc["forward"], doc["circuit"]]:
        c = Collector(vec["name"])
        _check_build(ctx, c, vec)
        _check_steps(ctx, c, vec["steps"])
        findings += c.findings
    findings += _check_surb(ctx, doc["surb"])
    for vec in doc["negative"]:
        findings += _check_negative(ctx, vec)
    return findings


def _check_surb(ctx: _SphinxContext, vec: dict[str, Any]) -> list[Finding]:
    c = Collector(vec["name"])
    rng = SeededRandom(X(vec["seed"]))
    route = S.mix_route(
        [(ctx.ids[i], ctx.keys[i].public_bytes) for i in vec["path"]],
        S.Slot(command=S.Command.SURB_REPLY, address=X(vec["recipient"])),
        [s.get("delay_us", 0) for s in vec["steps"]],
    )
    surb, secrets, _ = S.create_surb(route, rng)
    c.same("draws", [d.hex() for d in rng.draws], vec["draws"])
    c.same("surb", surb.encode().hex(), vec["surb"])
    _, packet = S.surb_reply_packet(surb, X(vec["reply"]))
    c.same("reply packet", packet.hex(), vec["packet"])
    _check_steps(ctx, c, vec["steps"])
    try:
        c.same(
            "opened reply",
            S.open_surb_reply(secrets, X(vec["payload_at_recipient"])).hex(),
            vec["opened_reply"],
        )
    except PacketError as exc:
        c.fail(f"creator could not open the reply ({exc.reason})")
    return c.findings


def _check_negative(ctx: _SphinxContext, vec: dict[str, Any]) -> list[Finding]:
    c = Collector(vec["name"])
    key = ctx.keys[vec["node"]]
    packet = X(vec["packet"])
    if vec.get("repeat"):
        results = S.process_batch([packet] * vec["repeat"], key, set())
        c.same("second copy", results[-1], S.Drop(vec["error"]))
        return c.findings
    if vec["error"] is None:
        return c.findings  # a tagged payload is only caught at the last hop: covered above
    try:
        S.unwrap(packet, key)
    except PacketError as exc:
        c.same("reason", exc.reason, vec["error"])
    else:
        c.fail(f"accepted a packet that must be refused ({vec['error']})")
    return c.findings


# --- cells -----------------------------------------------------------------------------


def check_cells(doc: dict[str, Any]) -> list[Finding]:
    """Layer keys, forward and backward onions, batches, Lioness, units, negatives."""
    c = Collector("cells")
    keys = []
    for n, h in enumerate(doc["hops"]):
        k = R.derive_layer_keys(X(h["hop_key_material"]))
        c.same(f"hop {n} forward key", k.forward.hex(), h["forward"])
        c.same(f"hop {n} backward key", k.backward.hex(), h["backward"])
        keys.append(R.LayerKeys(forward=X(h["forward"]), backward=X(h["backward"])))
    f = doc["forward"]
    c.same(
        "forward wire",
        R.ClientOnion(keys).seal_forward(X(f["plaintext"])).hex(),
        f["wire_to_entry"],
    )
    body = X(f["wire_to_entry"])
    for n in range(len(keys) - 1):
        body = R.PassLayer(keys[n].forward).apply(body)
    c.same("forward at exit", body.hex(), f["sealed_by_exit_key"])
    b = doc["backward"]
    c.same(
        "backward seal",
        R.EndLayer(keys[-1].backward).seal(X(b["plaintext"])).hex(),
        b["sealed_by_exit"],
    )
    try:
        c.same(
            "backward open",
            R.ClientOnion(keys).open_backward(X(b["wire_to_client"])).hex(),
            b["plaintext"],
        )
    except CellError as exc:
        c.fail(f"client refused a valid backward cell ({exc.reason})")
    bx, bs = doc["batch_xor"], doc["batch_seal"]
    c.same(
        "batch xor",
        accel.cell_xor_batch(X(bx["key"]), bx["counter"], X(bx["bodies"])).hex(),
        bx["output"],
    )
    c.same(
        "batch seal",
        accel.cell_seal_batch(X(bs["key"]), bs["counter"], X(bs["plaintexts"])).hex(),
        bs["output"],
    )
    for n, lv in enumerate(doc["lioness"]):
        c.same(
            f"lioness {n}",
            accel.lioness_encrypt_block(X(lv["keys"]), X(lv["plaintext"])).hex(),
            lv["ciphertext"],
        )
    for u in doc["units"]:
        c.same("unit", R.decode_unit(X(u["encoded"])).encode().hex(), u["encoded"])
    for neg in doc["negative"]:
        c.vector = neg["name"]
        try:
            _run_cell_negative(neg)
        except CellError as exc:
            c.same("reason", exc.reason, neg["error"])
        else:
            c.fail(f"accepted input that must be refused ({neg['error']})")
    return c.findings


def _run_cell_negative(neg: dict[str, Any]) -> None:
    if neg["op"] == "open":
        layer = R.EndLayer(X(neg["key"]))
        layer.counter = neg["counter"]
        layer.open(X(neg["body"]))
    elif neg["op"] == "decode_unit":
        R.decode_unit(X(neg["unit"]))
    else:
        R.decode_relay_cell(X(neg["plaintext"]))


CHECKERS: dict[str, Callable[[dict[str, Any]], list[Finding]]] = {
    "sphinx-x25519-v1": check_sphinx,
    "cells-v1": check_cells,
    "directory-v1": check_directory,
    "directory-consensus-v1": check_consensus,
    "circuits-v1": check_circuits,
    "htx-inner-v1": check_htx_inner,
    "htx-frames-v1": check_htx_frames,
    "htx-tickets-v1": check_tickets,
}


def iter_vector_files(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(directory.glob("*.json")):
        yield path, json.loads(path.read_text())


def check_file(doc: dict[str, Any]) -> list[Finding]:
    """Run the checker for the document's ``format``; an unknown format is a finding."""
    checker = CHECKERS.get(doc.get("format", ""))
    if checker is None:
        return [Finding(str(doc.get("format")), "no checker for this vector format")]
    try:
        return checker(doc)
    except (KeyError, TypeError, ValueError) as exc:
        return [Finding(str(doc.get("format")), f"vector file is malformed: {exc!r}")]
