"""Checker for ``spec/vectors/circuits.json`` (format ``circuits-v1``, spec/circuits.md §2–§4).

Replays the client's draws to rebuild the CREATE packet, runs every hop's Sphinx
unwrap and ``accept_hop`` with its recorded seed, wraps the CREATED replies back,
and completes the circuit at the client; then the negative cases.
"""

from __future__ import annotations

from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.errors import CircuitError, PacketError
from qnet.lint.findings import Collector, Finding
from qnet.mix import sphinx as S
from qnet.routing import circuit as C

X = bytes.fromhex


def check_circuits(doc: dict[str, Any]) -> list[Finding]:

    c = Collector("circuits")
    keys = [S.MixKey(X(n["private"])) for n in doc["nodes"]]
    path = [
        C.HopRoute(node_id=X(n["node_id"]), onion_public=k.public_bytes)
        for n, k in zip(doc["nodes"], keys, strict=True)
    ]
    rng = SeededRandom(X(doc["client_seed"]))
    packet, pending = C.build_create(path, rng)
    c.same("client draws", [d.hex() for d in rng.draws], doc["client_draws"])
    c.same("create packet", packet.hex(), doc["create"])
    accepts: list[C.HopAccept] = []
    for i, hop in enumerate(doc["hops"]):
        try:
            result = S.unwrap(X(hop["create_in"]), keys[hop["node"]])
        except PacketError as exc:
            c.fail(f"hop {i}: refused its CREATE ({exc.reason})")
            return c.findings
        if not isinstance(result, (S.CircuitExtend, S.CircuitEnd)):
            c.fail(f"hop {i}: not a circuit command")
            return c.findings
        c.same(f"hop {i} hop_secret", result.hop_secret.hex(), hop["hop_secret"])
        accept = C.accept_hop(
            result.hop_secret,
            X(hop["alpha"]),
            SeededRandom(X(hop["hop_seed"]), X(hop["hop_label"])),
        )
        c.same(f"hop {i} slot", accept.slot.hex(), hop["slot"])
        c.same(f"hop {i} forward key", accept.layer_keys.forward.hex(), hop["forward_key"])
        c.same(f"hop {i} backward key", accept.layer_keys.backward.hex(), hop["backward_key"])
        accepts.append(accept)
    body = accepts[-1].exit_reply()
    c.same("exit CREATED", body.hex(), doc["hops"][-1]["created_out"])
    for i in range(len(accepts) - 2, -1, -1):
        body = accepts[i].wrap_reply(X(doc["hops"][i + 1]["created_out"]))
        c.same(f"hop {i} CREATED", body.hex(), doc["hops"][i]["created_out"])
    try:
        layer_keys = pending.complete(X(doc["created_at_client"]))
    except CircuitError as exc:
        c.fail(f"client refused a valid CREATED ({exc.reason})")
    else:
        c.same(
            "client keys",
            [k.forward.hex() for k in layer_keys],
            [h["forward_key"] for h in doc["hops"]],
        )
    for neg in doc["negative"]:
        c.vector = neg["name"]
        try:
            if "params" in neg:
                C.check_params(X(neg["params"]))
            else:
                pending.complete(X(neg["created"]))
        except CircuitError as exc:
            c.same("reason", exc.reason, neg["error"])
        else:
            c.fail(f"accepted input that must be refused ({neg['error']})")
    return c.findings
