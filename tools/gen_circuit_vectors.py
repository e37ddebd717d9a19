"""Regenerate spec/vectors/circuits.json: the one-round-trip circuit handshake.

    python -m tools.gen_circuit_vectors [--check]

Every random value (the client's Sphinx draws, each hop's ``y`` and reply padding)
comes from ``SeededRandom`` and is recorded.
"""

from __future__ import annotations

import hashlib
from typing import Any

from qnet.crypto import accel
from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import hkdf_sha256
from qnet.mix import sphinx as S
from qnet.routing import circuit as C
from tools.vectorio import VECTORS, write_or_check

OUT = VECTORS / "circuits.json"


def hx(b: bytes) -> str:
    return bytes(b).hex()


def _node(i: int) -> tuple[S.MixKey, bytes]:
    private = hkdf_sha256(f"qnet-vector-node-{i}".encode(), b"qnet-vectors", b"mix key", 32)
    return S.MixKey(private), hashlib.sha256(f"qnet-vector-node-id-{i}".encode()).digest()


def circuit_vectors() -> dict[str, Any]:
    accel.select("python")
    nodes = [_node(i) for i in range(3)]
    client_rng = SeededRandom(b"qnet vector circuit client")
    path = [C.HopRoute(node_id=nid, onion_public=key.public_bytes) for key, nid in nodes]
    packet, pending = C.build_create(path, client_rng)

    hops: list[dict[str, Any]] = []
    accepts: list[C.HopAccept] = []
    incoming = packet
    for i, (key, _) in enumerate(nodes):
        result = S.unwrap(incoming, key)
        assert isinstance(result, (S.CircuitExtend, S.CircuitEnd))
        C.check_params(result.params)
        hop_rng = SeededRandom(b"qnet vector circuit hop", bytes([i]))
        accept = C.accept_hop(result.hop_secret, incoming[:32], hop_rng)
        accepts.append(accept)
        hops.append(
            {
                "node": i,
                "create_in": hx(incoming),
                "hop_secret": hx(result.hop_secret),
                "alpha": hx(incoming[:32]),
                "hop_seed": hx(b"qnet vector circuit hop"),
                "hop_label": hx(bytes([i])),
                "slot": hx(accept.slot),
                "reply_key": hx(accept.reply_key),
                "forward_key": hx(accept.layer_keys.forward),
                "backward_key": hx(accept.layer_keys.backward),
            }
        )
        if isinstance(result, S.CircuitExtend):
            incoming = result.packet
    body = accepts[-1].exit_reply()
    hops[-1]["created_out"] = hx(body)
    for i in range(len(accepts) - 2, -1, -1):
        body = accepts[i].wrap_reply(body)
        hops[i]["created_out"] = hx(body)
    # The hops drew their y and padding lazily; record what each drew.
    for i, accept in enumerate(accepts):
        draws = accept.rng.draws  # type: ignore[attr-defined]
        hops[i]["hop_draws"] = [hx(d) for d in draws]
    keys = pending.complete(body)
    assert [k.forward for k in keys] == [a.layer_keys.forward for a in accepts]
    tampered = bytearray(body)
    tampered[70] ^= 1
    return {
        "format": "circuits-v1",
        "spec": "spec/circuits.md",
        "generator": "python -m tools.gen_circuit_vectors",
        "client_seed": hx(b"qnet vector circuit client"),
        "client_draws": [hx(d) for d in client_rng.draws],
        "nodes": [
            {"private": hx(key.private_bytes), "public": hx(key.public_bytes), "node_id": hx(nid)}
            for key, nid in nodes
        ],
        "params": hx(C.PARAMS_V1),
        "create": hx(packet),
        "hops": hops,
        "created_at_client": hx(body),
        "negative": [
            {"name": "tampered-created", "created": hx(bytes(tampered)), "error": "bad_reply"},
            {"name": "truncated-created", "created": hx(body[:-1]), "error": "bad_reply"},
            {"name": "bad-params", "params": "0201000000000000", "error": "bad_params"},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check({OUT: circuit_vectors}, argv, "circuit handshake vectors")


if __name__ == "__main__":
    raise SystemExit(main())
