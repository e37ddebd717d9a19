"""Regenerate spec/vectors/*.json from fixed seeds with the pure-Python reference.

    python -m tools.gen_vectors            # write the files
    python -m tools.gen_vectors --check    # fail if the files differ from a fresh run

Every random value comes from ``SeededRandom`` and is written out, so another
implementation can replay the draws and must get the same bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from qnet import constants as C
from qnet.crypto import accel
from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import hkdf_sha256
from qnet.mix import sphinx as S
from qnet.routing import cells as R
from tools.vectorio import write_or_check

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def hx(b: bytes) -> str:
    return bytes(b).hex()


def node(i: int) -> dict[str, Any]:
    private = hkdf_sha256(f"qnet-vector-node-{i}".encode(), b"qnet-vectors", b"mix key", 32)
    key = S.MixKey(private)
    return {
        "index": i,
        "private": hx(private),
        "public": hx(key.public_bytes),
        "node_id": hx(hashlib.sha256(f"qnet-vector-node-id-{i}".encode()).digest()),
    }


NODES = [node(i) for i in range(5)]
KEYS = [S.MixKey(bytes.fromhex(n["private"])) for n in NODES]
IDS = [bytes.fromhex(n["node_id"]) for n in NODES]


def slot_json(slot: S.Slot) -> dict[str, Any]:
    return {
        "command": slot.command.name,
        "delay_us": slot.delay_us,
        "address": hx(slot.address),
        "tag": hx(slot.tag),
        "params": hx(slot.params),
    }


def hop_keys_json(h: S.HopKeys) -> dict[str, Any]:
    o = h.okm
    return {
        "ephemeral": hx(h.ephemeral),
        "alpha": hx(h.alpha),
        "shared": hx(h.shared),
        "okm": hx(o),
        "header_stream_key": hx(o[0:32]),
        "header_mac_key": hx(o[32:64]),
        "lioness_keys": hx(o[64:192]),
        "replay_tag": hx(o[192:208]),
        "hop_secret": hx(o[208:240]),
    }


def result_json(r: S.Unwrapped) -> dict[str, Any]:
    out: dict[str, Any] = {"result": type(r).__name__, "replay_tag": hx(r.replay_tag)}
    for name in (
        "next_hop",
        "delay_us",
        "packet",
        "address",
        "tag",
        "message",
        "recipient",
        "surb_id",
        "payload",
        "params",
        "hop_secret",
    ):
        if hasattr(r, name):
            v = getattr(r, name)
            out[name] = v if isinstance(v, int) else hx(v)
    return out


def walk(packet: bytes, path: list[int]) -> tuple[list[dict[str, Any]], S.Unwrapped]:
    """Unwrap ``packet`` along node indexes ``path``, recording each hop."""
    steps = []
    last: S.Unwrapped | None = None
    for i in path:
        r = S.unwrap(packet, KEYS[i])
        steps.append({"node": i, "input": hx(packet), **result_json(r)})
        last = r
        if isinstance(r, (S.Relay, S.CircuitExtend)):
            packet = r.packet
    assert last is not None
    return steps, last


def forward_vector(
    name: str, path: list[int], final: S.Slot, delays: list[int], message: bytes, seed: bytes
) -> dict[str, Any]:
    rng = SeededRandom(seed)
    route = S.mix_route([(IDS[i], KEYS[i].public_bytes) for i in path], final, delays)
    built = S.build_packet(route, message, rng)
    steps, last = walk(built.packet, path)
    assert isinstance(last, S.Deliver) and last.message[: len(message)] == message
    return {
        "name": name,
        "seed": hx(seed),
        "path": path,
        "route": [{"node": i, "slot": slot_json(h.slot)} for i, h in zip(path, route, strict=True)],
        "message": hx(message),
        "draws": [hx(d) for d in rng.draws],
        "hops": [hop_keys_json(h) for h in built.hops],
        "filler": hx(built.header.filler),
        "padding": hx(built.header.padding),
        "plaintext_payload": hx(S.encode_message(message)),
        "packet": hx(built.packet),
        "steps": steps,
    }


def circuit_vector() -> dict[str, Any]:
    seed = b"qnet vector circuit"
    rng = SeededRandom(seed)
    path = [0, 1, 2]
    params = [
        bytes.fromhex("0000000000000001"),
        bytes.fromhex("0000000000000002"),
        bytes.fromhex("0000000000000003"),
    ]
    route = [
        S.RouteHop(
            node_id=IDS[0],
            public_key=KEYS[0].public_bytes,
            slot=S.Slot(command=S.Command.CIRCUIT_EXTEND, params=params[0]),
        ),
        S.RouteHop(
            node_id=IDS[1],
            public_key=KEYS[1].public_bytes,
            slot=S.Slot(command=S.Command.CIRCUIT_EXTEND, params=params[1]),
        ),
        S.RouteHop(
            node_id=IDS[2],
            public_key=KEYS[2].public_bytes,
            slot=S.Slot(command=S.Command.CIRCUIT_END, tag=b"circuit-tag-0001", params=params[2]),
        ),
    ]
    message = b"create data for the exit"
    built = S.build_packet(route, message, rng)
    steps, last = walk(built.packet, path)
    assert isinstance(last, S.CircuitEnd)
    for step, hop in zip(steps, built.hops, strict=True):
        assert step["hop_secret"] == hx(hop.hop_secret)
    return {
        "name": "circuit-3-hops",
        "seed": hx(seed),
        "path": path,
        "route": [{"node": i, "slot": slot_json(h.slot)} for i, h in zip(path, route, strict=True)],
        "message": hx(message),
        "draws": [hx(d) for d in rng.draws],
        "hops": [hop_keys_json(h) for h in built.hops],
        "packet": hx(built.packet),
        "steps": steps,
    }


def surb_vector() -> dict[str, Any]:
    seed = b"qnet vector surb"
    rng = SeededRandom(seed)
    path = [3, 4, 0]
    recipient = hashlib.sha256(b"qnet-vector-recipient").digest()
    route = S.mix_route(
        [(IDS[i], KEYS[i].public_bytes) for i in path],
        S.Slot(command=S.Command.SURB_REPLY, address=recipient),
        [1000, 2000, 0],
    )
    surb, secrets, header = S.create_surb(route, rng)
    reply = b"a reply that only the SURB's creator can read"
    first_hop, packet = S.surb_reply_packet(surb, reply)
    steps, last = walk(packet, path)
    assert isinstance(last, S.SurbReply) and last.surb_id == secrets.surb_id
    opened = S.open_surb_reply(secrets, last.payload)
    assert opened[: len(reply)] == reply
    return {
        "name": "surb-3-hops",
        "seed": hx(seed),
        "path": path,
        "recipient": hx(recipient),
        "draws": [hx(d) for d in rng.draws],
        "surb_id": hx(secrets.surb_id),
        "surb_key": hx(secrets.surb_key),
        "surb_payload_keys": hx(hkdf_sha256(secrets.surb_key, C.SPHINX_SALT, b"surb payload", 128)),
        "hops": [hop_keys_json(h) for h in header.hops],
        "surb": hx(surb.encode()),
        "reply": hx(reply),
        "packet": hx(packet),
        "steps": steps,
        "payload_at_recipient": hx(last.payload),
        "opened_reply": hx(opened),
    }


def negative_vectors(fwd3: dict[str, Any]) -> list[dict[str, Any]]:
    packet = bytes.fromhex(fwd3["packet"])
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]  # noqa: E731
    last_input = bytes.fromhex(fwd3["steps"][-1]["input"])
    out = [
        {
            "name": "tampered-header-beta",
            "node": 0,
            "packet": hx(flip(packet, 100)),
            "error": "bad_mac",
        },
        {
            "name": "tampered-header-gamma",
            "node": 0,
            "packet": hx(flip(packet, 40)),
            "error": "bad_mac",
        },
        {"name": "tampered-alpha", "node": 0, "packet": hx(flip(packet, 3)), "error": "bad_mac"},
        {"name": "wrong-node-key", "node": 1, "packet": hx(packet), "error": "bad_mac"},
        {"name": "truncated", "node": 0, "packet": hx(packet[:-1]), "error": "bad_length"},
        {"name": "oversized", "node": 0, "packet": hx(packet + b"\x00"), "error": "bad_length"},
        {
            "name": "small-order-alpha",
            "node": 0,
            "packet": hx(bytes(32) + packet[32:]),
            "error": "bad_point",
        },
        {
            "name": "tampered-payload-last-hop",
            "node": fwd3["path"][-1],
            "packet": hx(flip(last_input, C.HEADER_LEN + 700)),
            "error": "bad_payload",
        },
        {
            "name": "tampered-payload-first-hop-seen-at-last",
            "node": 0,
            "packet": hx(flip(packet, C.HEADER_LEN + 5)),
            "error": None,
            "then": "relay along the path; the last hop drops it as bad_payload",
        },
    ]
    # A replay: the same packet twice at one node; the second is refused.
    out.append({"name": "replay", "node": 0, "packet": hx(packet), "repeat": 2, "error": "replay"})
    return out


def sphinx_vectors() -> dict[str, Any]:
    fwd1 = forward_vector(
        "forward-1-hop",
        [2],
        S.Slot(command=S.Command.DELIVER, tag=b"message-tag-0001"),
        [0],
        b"one hop",
        b"qnet vector forward 1",
    )
    fwd3 = forward_vector(
        "forward-3-hops",
        [0, 1, 2],
        S.Slot(command=S.Command.DELIVER, address=IDS[2], tag=b"message-tag-0003", delay_us=0),
        [12000, 34000, 0],
        b"three hops through the mixnet",
        b"qnet vector forward 3",
    )
    fwd5 = forward_vector(
        "forward-5-hops",
        [4, 3, 2, 1, 0],
        S.Slot(command=S.Command.DELIVER, tag=b"message-tag-0005", delay_us=5),
        [1, 2, 3, 4, 5],
        bytes(range(256)) * 5 + b"!" * (C.MESSAGE_LEN - 1280),
        b"qnet vector forward 5",
    )
    return {
        "format": "sphinx-x25519-v1",
        "spec": "spec/sphinx.md",
        "generator": "python -m tools.gen_vectors",
        "sizes": {
            k: getattr(C, k)
            for k in (
                "PACKET_LEN",
                "ALPHA_LEN",
                "GAMMA_LEN",
                "MAX_HOPS",
                "SLOT_LEN",
                "BETA_LEN",
                "HEADER_LEN",
                "PAYLOAD_LEN",
                "MESSAGE_LEN",
            )
        },
        "drbg": "SeededRandom(seed): ChaCha20 keystream, key = HKDF-SHA256(salt='qnet-drbg-v1', "
        "ikm=seed, info='', L=32), nonce 0; draws listed in order",
        "node_keys": NODES,
        "forward": [fwd1, fwd3, fwd5],
        "circuit": circuit_vector(),
        "surb": surb_vector(),
        "negative": negative_vectors(fwd3),
    }


def lioness_vectors() -> list[dict[str, Any]]:
    out = []
    for i, n in enumerate((33, 100, C.PAYLOAD_LEN)):
        rng = SeededRandom(b"qnet vector lioness", str(i).encode())
        keys, block = rng(128), rng(n)
        enc = accel.lioness_encrypt_block(keys, block)
        out.append({"keys": hx(keys), "plaintext": hx(block), "ciphertext": hx(enc)})
    return out


def cells_vectors() -> dict[str, Any]:
    rng = SeededRandom(b"qnet vector cells")
    materials = [rng(32) for _ in range(3)]
    keys = [R.derive_layer_keys(m) for m in materials]
    data = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
    plain = R.RelayCell(command=R.RelayCommand.DATA, stream_id=7, data=data).encode()

    # Forward: client seals for the exit, wraps for middle and entry.
    sealed = accel.cell_seal(keys[2].forward, 0, plain)
    after_middle_wrap = accel.cell_xor(keys[1].forward, 0, sealed)
    wire = accel.cell_xor(keys[0].forward, 0, after_middle_wrap)
    onion = R.ClientOnion(keys)
    assert onion.seal_forward(plain) == wire

    # Backward: exit seals, middle and entry add layers, client peels.
    back_plain = R.RelayCell(
        command=R.RelayCommand.CONNECTED, stream_id=7, data=b"\x7f\x00\x00\x01"
    ).encode()
    back_sealed = accel.cell_seal(keys[2].backward, 0, back_plain)
    back_mid = accel.cell_xor(keys[1].backward, 0, back_sealed)
    back_wire = accel.cell_xor(keys[0].backward, 0, back_mid)
    assert onion.open_backward(back_wire) == back_plain

    batch_bodies = b"".join(rng(C.BODY_LEN) for _ in range(4))
    batch_out = accel.cell_xor_batch(keys[1].forward, 5, batch_bodies)
    batch_plain = b"".join(
        R.RelayCell(command=R.RelayCommand.DATA, stream_id=3, data=bytes([k]) * (100 * k)).encode()
        for k in range(4)
    )
    batch_sealed = accel.cell_seal_batch(keys[2].forward, 9, batch_plain)

    unit = R.Unit(circ_id=0x01020304, command=R.UnitCommand.RELAY, body=wire)
    flip = bytearray(sealed)
    flip[1234] ^= 0x80
    return {
        "format": "cells-v1",
        "spec": "spec/cells.md",
        "generator": "python -m tools.gen_vectors",
        "draws_seed": hx(b"qnet vector cells"),
        "hops": [
            {"hop_key_material": hx(m), "forward": hx(k.forward), "backward": hx(k.backward)}
            for m, k in zip(materials, keys, strict=True)
        ],
        "forward": {
            "counter": 0,
            "relay_cell": {"command": "DATA", "stream_id": 7, "data": hx(data)},
            "plaintext": hx(plain),
            "sealed_by_exit_key": hx(sealed),
            "after_middle_layer": hx(after_middle_wrap),
            "wire_to_entry": hx(wire),
        },
        "backward": {
            "counter": 0,
            "relay_cell": {"command": "CONNECTED", "stream_id": 7, "data": "7f000001"},
            "plaintext": hx(back_plain),
            "sealed_by_exit": hx(back_sealed),
            "after_middle": hx(back_mid),
            "wire_to_client": hx(back_wire),
        },
        "batch_xor": {
            "key": hx(keys[1].forward),
            "counter": 5,
            "bodies": hx(batch_bodies),
            "output": hx(batch_out),
        },
        "batch_seal": {
            "key": hx(keys[2].forward),
            "counter": 9,
            "plaintexts": hx(batch_plain),
            "output": hx(batch_sealed),
        },
        "lioness": lioness_vectors(),
        "units": [
            {"circ_id": unit.circ_id, "command": "RELAY", "encoded": hx(unit.encode())},
        ],
        "negative": [
            {
                "name": "flipped-bit",
                "op": "open",
                "key": hx(keys[2].forward),
                "counter": 0,
                "body": hx(bytes(flip)),
                "error": "bad_tag",
            },
            {
                "name": "wrong-counter",
                "op": "open",
                "key": hx(keys[2].forward),
                "counter": 1,
                "body": hx(sealed),
                "error": "bad_tag",
            },
            {
                "name": "truncated-body",
                "op": "open",
                "key": hx(keys[2].forward),
                "counter": 0,
                "body": hx(sealed[:-1]),
                "error": "bad_length",
            },
            {
                "name": "unit-reserved-byte",
                "op": "decode_unit",
                "unit": hx(unit.encode()[:5] + b"\x01" + unit.encode()[6:]),
                "error": "bad_header",
            },
            {
                "name": "unit-unknown-command",
                "op": "decode_unit",
                "unit": hx(unit.encode()[:4] + b"\x09" + unit.encode()[5:]),
                "error": "bad_command",
            },
            {
                "name": "unit-truncated",
                "op": "decode_unit",
                "unit": hx(unit.encode()[:-1]),
                "error": "bad_length",
            },
            {
                "name": "relay-bad-padding",
                "op": "decode_relay_cell",
                "plaintext": hx(plain[:-1] + b"\x01"),
                "error": "bad_padding",
            },
            {
                "name": "relay-unknown-command",
                "op": "decode_relay_cell",
                "plaintext": hx(b"\x63" + plain[1:]),
                "error": "bad_command",
            },
        ],
    }


def main(argv: list[str] | None = None) -> int:
    accel.select("python")
    files = {OUT / "sphinx.json": sphinx_vectors, OUT / "cells.json": cells_vectors}
    return write_or_check(files, argv, (__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
