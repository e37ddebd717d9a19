"""The harness for the Python package: ``python -m qnet.lint.harness_py`` (spec/harness.md).

Reads one JSON request per line on stdin, answers one JSON response per line on
stdout. Every operation maps to the same public functions the rest of QNet uses;
nothing here re-implements a format. A refusal by QNet (a ``DecodeError`` or a
handshake/frame/directory error) becomes ``{"error": {"reason", "class"}}``; any
other exception is a harness bug and is answered as ``{"fault": ...}``.

``serve(handle)`` is the loop; tests wrap ``handle`` to make deliberately broken
harnesses for the linter's own mutation tests.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any, Final

from qnet.crypto import accel
from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.errors import DecodeError, QNetError
from qnet.htx import cover
from qnet.htx import frames as F
from qnet.htx import inner as I
from qnet.htx import ticket as T
from qnet.htx.errors import HtxError
from qnet.htx.keys import DirectionKeys, SessionKeys
from qnet.lint.harness import PROTOCOL
from qnet.lint.htx_vectors import frame_from_json
from qnet.mix import sphinx as S
from qnet.routing import cells as R

X = bytes.fromhex
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class DrawsMismatch(Exception):
    """The implementation asked for randomness the vector did not record."""


class ReplayRandom:
    """``rng(n)`` that hands out the recorded draws in order, each of exactly ``n`` bytes."""

    def __init__(self, draws: list[str]) -> None:
        self._draws = [X(d) for d in draws]
        self.used = 0

    def __call__(self, n: int) -> bytes:
        if self.used >= len(self._draws):
            raise DrawsMismatch(f"draw {self.used} of {n} bytes: only {len(self._draws)} recorded")
        d = self._draws[self.used]
        if len(d) != n:
            raise DrawsMismatch(f"draw {self.used}: asked for {n} bytes, recorded {len(d)}")
        self.used += 1
        return d


# --- helpers ---------------------------------------------------------------------------


def _h(b: bytes) -> str:
    return bytes(b).hex()


def frame_to_json(f: F.Frame) -> dict[str, Any]:
    if isinstance(f, F.StreamFrame):
        return {
            "type": "STREAM",
            "stream_id": f.stream_id,
            "fin": f.fin,
            "offset": f.offset,
            "data": _h(f.data),
        }
    if isinstance(f, F.WindowUpdateFrame):
        return {"type": "WINDOW_UPDATE", "stream_id": f.stream_id, "credit": f.credit}
    if isinstance(f, F.PingFrame):
        return {"type": "PING", "token": _h(f.token)}
    if isinstance(f, F.KeyUpdateFrame):
        return {"type": "KEY_UPDATE"}
    return {"type": "CLOSE", "code": f.code, "reason": _h(f.reason)}


def _slot(j: dict[str, Any]) -> S.Slot:
    return S.Slot(
        command=S.Command[j["command"]],
        delay_us=j["delay_us"],
        address=X(j["address"]),
        tag=X(j["tag"]),
        params=X(j["params"]),
    )


def _unwrapped(result: S.Unwrapped) -> dict[str, Any]:
    out: dict[str, Any] = {"result": type(result).__name__}
    for name in result.__slots__:
        v = getattr(result, name)
        out[name] = v if isinstance(v, int) else _h(v)
    return out


def _surb_route(req: dict[str, Any]) -> list[S.RouteHop]:
    return S.mix_route(
        [(X(h["node_id"]), X(h["public"])) for h in req["path"]],
        S.Slot(command=S.Command.SURB_REPLY, address=X(req["recipient"])),
        req["delays_us"],
    )


def _direction(req: dict[str, Any]) -> DirectionKeys:
    return DirectionKeys.from_secret(X(req["secret"]))


def _keys_json(k: DirectionKeys) -> dict[str, str]:
    return {"secret": _h(k.secret), "key": _h(k.key), "nonce_salt": _h(k.nonce_salt)}


# --- operations --------------------------------------------------------------------------


def op_x25519_public(req: dict[str, Any]) -> dict[str, Any]:
    return {"public": _h(X25519Key(X(req["private"])).public_bytes)}


def op_mlkem_public(req: dict[str, Any]) -> dict[str, Any]:
    return {"public": _h(MLKEM768Key(X(req["seed"])).public_bytes)}


def op_mlkem_decapsulate(req: dict[str, Any]) -> dict[str, Any]:
    return {"shared": _h(MLKEM768Key(X(req["seed"])).decapsulate(X(req["ciphertext"])))}


def op_sphinx_build(req: dict[str, Any]) -> dict[str, Any]:
    route = [
        S.RouteHop(node_id=X(h["node_id"]), public_key=X(h["public"]), slot=_slot(h["slot"]))
        for h in req["route"]
    ]
    rng = ReplayRandom(req["draws"])
    built = S.build_packet(route, X(req["message"]), rng)
    return {
        "packet": _h(built.packet),
        "hops": [{"shared": _h(h.shared), "okm": _h(h.okm)} for h in built.hops],
        "filler": _h(built.header.filler),
        "draws_used": rng.used,
    }


def op_sphinx_unwrap(req: dict[str, Any]) -> dict[str, Any]:
    return _unwrapped(S.unwrap(X(req["packet"]), S.MixKey(X(req["private"]))))


def op_sphinx_process(req: dict[str, Any]) -> dict[str, Any]:
    key = S.MixKey(X(req["private"]))
    results = S.process_batch([X(p) for p in req["packets"]], key, set())
    return {
        "results": [{"drop": r.reason} if isinstance(r, S.Drop) else _unwrapped(r) for r in results]
    }


def op_sphinx_surb_create(req: dict[str, Any]) -> dict[str, Any]:
    rng = ReplayRandom(req["draws"])
    surb, _, _ = S.create_surb(_surb_route(req), rng)
    return {"surb": _h(surb.encode()), "draws_used": rng.used}


def op_sphinx_surb_reply(req: dict[str, Any]) -> dict[str, Any]:
    first_hop, packet = S.surb_reply_packet(S.Surb.decode(X(req["surb"])), X(req["reply"]))
    return {"first_hop": _h(first_hop), "packet": _h(packet)}


def op_sphinx_surb_open(req: dict[str, Any]) -> dict[str, Any]:
    _, secrets, _ = S.create_surb(_surb_route(req), ReplayRandom(req["draws"]))
    return {"reply": _h(S.open_surb_reply(secrets, X(req["payload"])))}


def op_lioness_encrypt(req: dict[str, Any]) -> dict[str, Any]:
    return {"block": _h(accel.lioness_encrypt_block(X(req["keys"]), X(req["block"])))}


def op_cell_layer_keys(req: dict[str, Any]) -> dict[str, Any]:
    k = R.derive_layer_keys(X(req["material"]))
    return {"forward": _h(k.forward), "backward": _h(k.backward)}


def _onion(keys: list[dict[str, str]]) -> R.ClientOnion:
    return R.ClientOnion(
        [R.LayerKeys(forward=X(k["forward"]), backward=X(k["backward"])) for k in keys]
    )


def op_cell_onion_seal(req: dict[str, Any]) -> dict[str, Any]:
    return {"body": _h(_onion(req["keys"]).seal_forward(X(req["plaintext"])))}


def op_cell_onion_open(req: dict[str, Any]) -> dict[str, Any]:
    return {"plaintext": _h(_onion(req["keys"]).open_backward(X(req["body"])))}


def op_cell_pass(req: dict[str, Any]) -> dict[str, Any]:
    body = X(req["body"])
    for key in req["keys"]:  # one relay after the other, each removing its layer
        layer = R.PassLayer(X(key))
        layer.counter = req["counter"]
        body = layer.apply(body)
    return {"body": _h(body)}


def op_cell_end_seal(req: dict[str, Any]) -> dict[str, Any]:
    layer = R.EndLayer(X(req["key"]))
    layer.counter = req["counter"]
    return {"body": _h(layer.seal(X(req["plaintext"])))}


def op_cell_end_open(req: dict[str, Any]) -> dict[str, Any]:
    layer = R.EndLayer(X(req["key"]))
    layer.counter = req["counter"]
    return {"plaintext": _h(layer.open(X(req["body"])))}


def op_cell_xor_batch(req: dict[str, Any]) -> dict[str, Any]:
    return {"output": _h(accel.cell_xor_batch(X(req["key"]), req["counter"], X(req["bodies"])))}


def op_cell_seal_batch(req: dict[str, Any]) -> dict[str, Any]:
    out = accel.cell_seal_batch(X(req["key"]), req["counter"], X(req["plaintexts"]))
    return {"output": _h(out)}


def op_cell_unit_decode(req: dict[str, Any]) -> dict[str, Any]:
    unit = R.decode_unit(X(req["unit"]))
    return {"circ_id": unit.circ_id, "command": unit.command.name, "encoded": _h(unit.encode())}


def op_cell_relay_decode(req: dict[str, Any]) -> dict[str, Any]:
    cell = R.decode_relay_cell(X(req["plaintext"]))
    return {"command": cell.command.name, "stream_id": cell.stream_id, "data": _h(cell.data)}


def op_frame_keys(req: dict[str, Any]) -> dict[str, Any]:
    keys = SessionKeys.derive(X(req["session_secret"]))
    return {"k0": _h(keys.k0), "client": _keys_json(keys.client), "server": _keys_json(keys.server)}


def op_frame_key_next(req: dict[str, Any]) -> dict[str, Any]:
    return _keys_json(_direction(req).next())


def op_frame_seal(req: dict[str, Any]) -> dict[str, Any]:
    keys = _direction(req)
    ftype, sid, payload = F.encode_frame(frame_from_json(req["frame"]))
    header = F.frame_header(ftype, sid, len(payload))
    return {"wire": _h(F.seal_raw(keys, req["counter"], header, payload))}


def op_frame_seal_sequence(req: dict[str, Any]) -> dict[str, Any]:
    sealer = F.FrameSealer(_direction(req))
    return {"wire": _h(b"".join(sealer.seal(frame_from_json(f)) for f in req["frames"]))}


def op_frame_open(req: dict[str, Any]) -> dict[str, Any]:
    reader = F.FrameReader(_direction(req), req.get("overlap_frames", F.DEFAULT_OVERLAP))
    reader.counter = req.get("counter", 0)
    reader.feed(X(req["wire"]))
    frames: list[dict[str, Any]] = []
    refused: dict[str, str] | None = None
    try:
        while (f := reader.next_frame()) is not None:
            frames.append(frame_to_json(f))
    except HtxError as exc:
        refused = {"class": type(exc).__name__, "reason": exc.reason}
    return {"frames": frames, "refused": refused, "buffered": reader.buffered}


def op_inner_initiator(req: dict[str, Any]) -> dict[str, Any]:
    rng = ReplayRandom(req["draws"])
    static = req.get("static_private")
    ini = I.InnerInitiator(
        X(req["responder_static_public"]),
        X(req["responder_mlkem_public"]),
        X(req["exporter"]),
        X(static) if static else None,
        rng,
        fixed=I.FixedInputs(
            ephemeral_private=X(req["ephemeral_private"]),
            kem=(X(req["kem_ciphertext"]), X(req["kem_shared"])),
        ),
    )
    sent = [_h(ini.start())]
    return _run_handshake(ini, req["messages"], sent, rng)


def op_inner_responder(req: dict[str, Any]) -> dict[str, Any]:
    rng = ReplayRandom(req["draws"])
    eph = req.get("ephemeral_private")
    res = I.InnerResponder(
        X(req["static_private"]),
        MLKEM768Key(X(req["mlkem_seed"])),
        X(req["exporter"]),
        rng,
        fixed=I.FixedInputs(ephemeral_private=X(eph) if eph else None),
    )
    return _run_handshake(res, req["messages"], [], rng)


def _run_handshake(
    hs: I.InnerInitiator | I.InnerResponder, messages: list[str], sent: list[str], rng: Any
) -> dict[str, Any]:
    done: I.Finished | None = None
    for m in messages:
        step = hs.receive(X(m))
        if step.send:
            sent.append(_h(step.send))
        if isinstance(step, I.Finished):
            done = step
    out: dict[str, Any] = {"sent": sent, "finished": done is not None, "draws_used": rng.used}
    if done is not None:
        out |= {
            "handshake_hash": _h(done.handshake_hash),
            "session_secret": _h(done.session_secret),
            "remote_static": _h(done.remote_static_public),
        }
    return out


def op_ticket_build(req: dict[str, Any]) -> dict[str, Any]:
    rng = ReplayRandom(req["draws"])
    t = T.build_ticket_parts(X(req["server_public"]), req["key_id"], req["now"], rng)
    return {
        "hour": t.hour,
        "client_public": _h(t.client_public),
        "shared": _h(t.shared),
        "nonce": _h(t.nonce),
        "padding": _h(t.padding),
        "ticket": _h(t.ticket),
        "wire": _h(t.wire),
        "carrier": t.carrier_value,
        "draws_used": rng.used,
    }


def op_ticket_verify(req: dict[str, Any]) -> dict[str, Any]:
    keys = {k["key_id"]: X25519Key(X(k["private"])) for k in req["server_keys"]}
    verifier = T.TicketVerifier(keys, T.TicketConfig(**req.get("config", {})))
    return {
        "reasons": [verifier.check(c["carrier"], c["peer"], c["now"]).reason for c in req["checks"]]
    }


def op_tunnel_request(req: dict[str, Any]) -> dict[str, Any]:
    rng = ReplayRandom(req["draws"])
    client = cover.Http1TunnelClient(
        req["host"],
        req["path"],
        req["ticket"],
        rng,
        carriers=T.Carriers(kind=T.CarrierKind(req["carrier"])),
    )
    return {
        "request": client.request_bytes.decode("latin-1"),
        "accept": cover.websocket_accept(client.key),
        "draws_used": rng.used,
    }


def op_tunnel_accept(req: dict[str, Any]) -> dict[str, Any]:
    server = cover.Http1Server()
    actions = server.receive_data(req["request"].encode("latin-1"), req["now"])
    tunnel = [a for a in actions if isinstance(a, cover.TunnelRequest)]
    if not tunnel:
        return {"tunnel_request": False, "response": server.data_to_send().decode("latin-1")}
    server.accept_tunnel(tunnel[0].stream_id, req["now"])
    return {"tunnel_request": True, "response": server.data_to_send().decode("latin-1")}


def _dir_ops() -> dict[str, Handler]:
    """Directory operations (imported lazily: ML-DSA set-up is the slow part)."""
    from qnet.dir import encoding
    from qnet.dir.consensus import consensus_digest, verify_consensus
    from qnet.dir.descriptor import parse_and_verify
    from qnet.dir.identity import Identity, PublicIdentity
    from qnet.dir.vote import Authorities, descriptor_digest

    def cbor_canonical(req: dict[str, Any]) -> dict[str, Any]:
        return {"cbor": _h(encoding.encode(encoding.decode(X(req["cbor"]))))}

    def identity(req: dict[str, Any]) -> dict[str, Any]:
        ident = Identity(X(req["ed25519_seed"]), X(req["mldsa65_seed"]))
        return {
            "ed25519_public": _h(ident.public.ed25519),
            "mldsa65_public": _h(ident.public.mldsa65),
            "node_id": _h(ident.node_id),
        }

    def sign_ed25519(req: dict[str, Any]) -> dict[str, Any]:
        ident = Identity(X(req["ed25519_seed"]), X(req["mldsa65_seed"]))
        return {"signature": _h(ident.sign(X(req["context"]), X(req["body"])).ed25519)}

    def descriptor_verify(req: dict[str, Any]) -> dict[str, Any]:
        desc = parse_and_verify(X(req["envelope"]), req["now"])
        return {"body": _h(desc.encode()), "node_id": _h(desc.node_id)}

    def digest(req: dict[str, Any]) -> dict[str, Any]:
        body = X(req["body"])
        d = descriptor_digest(body) if req["kind"] == "descriptor" else consensus_digest(body)
        return {"digest": _h(d)}

    def consensus_verify(req: dict[str, Any]) -> dict[str, Any]:
        auths = Authorities.of(
            PublicIdentity(ed25519=X(a["ed25519_public"]), mldsa65=X(a["mldsa65_public"]))
            for a in req["authorities"]
        )
        cons = verify_consensus(X(req["document"]), auths, req["now"], max_skew=req["max_skew"])
        return {"nodes": [n.node_id.hex() for n in cons.nodes]}

    return {
        "cbor_canonical": cbor_canonical,
        "dir_identity": identity,
        "dir_sign_ed25519": sign_ed25519,
        "descriptor_verify": descriptor_verify,
        "dir_digest": digest,
        "consensus_verify": consensus_verify,
    }


OPS: Final[dict[str, Handler]] = {
    "x25519_public": op_x25519_public,
    "mlkem_public": op_mlkem_public,
    "mlkem_decapsulate": op_mlkem_decapsulate,
    "sphinx_build": op_sphinx_build,
    "sphinx_unwrap": op_sphinx_unwrap,
    "sphinx_process": op_sphinx_process,
    "sphinx_surb_create": op_sphinx_surb_create,
    "sphinx_surb_reply": op_sphinx_surb_reply,
    "sphinx_surb_open": op_sphinx_surb_open,
    "lioness_encrypt": op_lioness_encrypt,
    "cell_layer_keys": op_cell_layer_keys,
    "cell_onion_seal": op_cell_onion_seal,
    "cell_onion_open": op_cell_onion_open,
    "cell_pass": op_cell_pass,
    "cell_end_seal": op_cell_end_seal,
    "cell_end_open": op_cell_end_open,
    "cell_xor_batch": op_cell_xor_batch,
    "cell_seal_batch": op_cell_seal_batch,
    "cell_unit_decode": op_cell_unit_decode,
    "cell_relay_decode": op_cell_relay_decode,
    "frame_keys": op_frame_keys,
    "frame_key_next": op_frame_key_next,
    "frame_seal": op_frame_seal,
    "frame_seal_sequence": op_frame_seal_sequence,
    "frame_open": op_frame_open,
    "inner_initiator": op_inner_initiator,
    "inner_responder": op_inner_responder,
    "ticket_build": op_ticket_build,
    "ticket_verify": op_ticket_verify,
    "tunnel_request": op_tunnel_request,
    "tunnel_accept": op_tunnel_accept,
    **_dir_ops(),
}


def handle(req: dict[str, Any]) -> dict[str, Any]:
    """The response to one request (without its ``id``; ``serve`` adds it)."""
    op = req.get("op")
    if op == "hello":
        return {
            "protocol": PROTOCOL,
            "name": "qnet-python",
            "version": "0.1.0",
            "backend": accel.BACKEND_NAME,
            "ops": sorted(OPS),
        }
    fn = OPS.get(str(op))
    if fn is None:
        return {"unsupported": True}
    try:
        return fn(req)
    except DrawsMismatch as exc:
        return {"error": {"reason": "draws_mismatch", "class": "DrawsMismatch"}, "detail": str(exc)}
    except (DecodeError, HtxError) as exc:
        return {"error": {"reason": exc.reason, "class": type(exc).__name__}}
    except QNetError as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        return {"error": {"reason": str(reason), "class": type(exc).__name__}}


def serve(
    handler: Handler = handle, stdin: IO[str] | None = None, out: IO[str] | None = None
) -> int:
    """Answer requests until EOF on ``stdin``. A request that is not JSON ends the loop (2)."""
    src = stdin if stdin is not None else sys.stdin
    dst = out if out is not None else sys.stdout
    for line in src:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            return 2
        try:
            resp = handler(req)
        except Exception as exc:  # a harness bug: say so instead of dying silently
            resp = {"fault": f"{type(exc).__name__}: {exc}"}
        dst.write(json.dumps({"id": req.get("id"), **resp}) + "\n")
        dst.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m qnet.lint.harness_py [--backend python|cython]")
        return 0
    if len(args) == 2 and args[0] == "--backend":
        accel.select(args[1])
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())
