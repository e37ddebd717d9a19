"""The harness for libqnet: ``python -m qnet.lint.harness_libqnet`` (spec/harness.md).

Same loop as ``qnet.lint.harness_py``, but every answer is computed by the C library
through its ctypes binding ``bindings/c/python/qnet_c.py``. The library is located as
follows: ``$QNET_LIBQNET`` (a path to ``libqnet.so``) if set, else
``bindings/c/build/libqnet.so`` in this checkout, built with ``make -C bindings/c`` when
it is missing.

What the harness adds on top of the library is only what the C API leaves to its
caller by design: the replay set of ``sphinx_process``, the frame reader's key-update
and overlap state in ``frame_open``, the frame payload layouts of ``htx.md`` §4 when
sealing, and two X25519 calls straight into libsodium (the library libqnet links
against): the node public key that ``qnet_sphinx_unwrap`` takes as an argument, and a
ticket's shared secret, which ``qnet_ticket_build`` does not return.

Operations libqnet does not cover are answered ``unsupported``: key derivation
(X25519, ML-KEM), ``sphinx_build`` (the library does not expose the header filler the
vectors compare), the inner handshake, ticket verification sequences (rate limits are
the caller's), the tunnel request, CBOR and the directory documents (ML-DSA-65 is not in
the library, so no whole descriptor can be verified).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from qnet.lint.harness import PROTOCOL
from qnet.lint.harness_py import DrawsMismatch, Handler, serve

X = bytes.fromhex
REPO: Final = Path(__file__).resolve().parents[2]
CDIR: Final = REPO / "bindings" / "c"
ENV_LIB: Final = "QNET_LIBQNET"

FRAME_TYPES: Final = {"STREAM": 0, "WINDOW_UPDATE": 1, "PING": 2, "KEY_UPDATE": 3, "CLOSE": 4}
FRAME_NAMES: Final = {v: k for k, v in FRAME_TYPES.items()}
UNIT_COMMANDS: Final = ("PADDING", "SPHINX", "CREATE", "CREATED", "RELAY", "DESTROY")
RELAY_COMMANDS: Final = {
    1: "BEGIN",
    2: "DATA",
    3: "END",
    4: "CONNECTED",
    5: "SENDME",
    6: "DROP",
    7: "RESOLVE",
    8: "RESOLVED",
    9: "XOFF",
    10: "XON",
}
RESULTS: Final = {1: "Relay", 2: "Deliver", 3: "SurbReply", 4: "CircuitExtend", 5: "CircuitEnd"}
DEFAULT_OVERLAP: Final = 8


class LibraryMissing(RuntimeError):
    """libqnet could not be found or built."""


def library_path() -> Path:
    """``$QNET_LIBQNET``, else the checkout's build, made with ``make`` when missing."""
    env = os.environ.get(ENV_LIB)
    if env:
        return Path(env)
    lib = CDIR / "build" / "libqnet.so"
    if not lib.exists():
        proc = subprocess.run(
            ["make", "-C", str(CDIR), "all"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not lib.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise LibraryMissing(f"make -C {CDIR} failed: {' | '.join(tail)}")
    return lib


def _load_binding() -> ModuleType:
    path = CDIR / "python" / "qnet_c.py"
    spec = importlib.util.spec_from_file_location("qnet_c", path)
    if spec is None or spec.loader is None:
        raise LibraryMissing(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["qnet_c"] = module
    spec.loader.exec_module(module)
    return module


class LibQnet:
    """The loaded binding plus the few raw entry points its wrapper does not cover."""

    def __init__(self, path: Path) -> None:
        self.qc = _load_binding()
        self.lib: Any = self.qc.Library(str(path))
        self.path = path
        raw = self.lib._lib
        u8p, size_t = ctypes.c_char_p, ctypes.c_size_t
        keys_p = ctypes.POINTER(self.qc.HtxKeys)
        extra: dict[str, list[Any]] = {
            "qnet_htx_keys_from_secret": [u8p, ctypes.c_uint64, keys_p],
            "qnet_unit_encode": [ctypes.c_uint32, ctypes.c_uint8, u8p, size_t, u8p],
        }
        for name, argtypes in extra.items():
            fn = getattr(raw, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        raw.qnet_ticket_padding_len.argtypes = [ctypes.c_uint8]
        raw.qnet_ticket_padding_len.restype = size_t
        self.raw = raw
        sodium = ctypes.util.find_library("sodium")
        if sodium is None:
            raise LibraryMissing("libsodium (libqnet's dependency) not found")
        self.sodium = ctypes.CDLL(sodium)
        for name in ("crypto_scalarmult_curve25519_base", "crypto_scalarmult_curve25519"):
            getattr(self.sodium, name).restype = ctypes.c_int

    def check(self, status: int) -> None:
        self.lib._check(status)

    def x25519(self, private: bytes, public: bytes | None = None) -> bytes:
        out = ctypes.create_string_buffer(32)
        if public is None:
            status = self.sodium.crypto_scalarmult_curve25519_base(out, private)
        else:
            status = self.sodium.crypto_scalarmult_curve25519(out, private, public)
        if status != 0:
            raise self.qc.QnetError(status, "bad_point", "X25519 gave an all-zero secret")
        return out.raw

    def keys_from_secret(self, secret: bytes) -> Any:
        keys = self.qc.HtxKeys()
        self.check(self.raw.qnet_htx_keys_from_secret(secret, 0, ctypes.byref(keys)))
        return keys


def _h(b: bytes) -> str:
    return bytes(b).hex()


def _draws(req: dict[str, Any], sizes: list[int]) -> list[bytes]:
    """The recorded draws, checked against the sizes the library will consume."""
    draws = [X(d) for d in req["draws"]]
    for n, size in enumerate(sizes):
        if n >= len(draws):
            raise DrawsMismatch(f"draw {n} of {size} bytes: only {len(draws)} recorded")
        if len(draws[n]) != size:
            raise DrawsMismatch(f"draw {n}: asked for {size} bytes, recorded {len(draws[n])}")
    return draws[: len(sizes)]


def make_ops(q: LibQnet) -> dict[str, Handler]:  # noqa: C901 - one closure per operation
    lib, qc = q.lib, q.qc

    # --- Sphinx

    def unwrapped(u: Any) -> dict[str, Any]:
        name = RESULTS.get(u.command, str(u.command))
        out: dict[str, Any] = {"result": name, "replay_tag": _h(u.replay_tag)}
        if name == "Relay":
            out |= {"next_hop": _h(u.address), "delay_us": u.delay_us, "packet": _h(u.data)}
        elif name == "Deliver":
            out |= {"address": _h(u.address), "tag": _h(u.tag), "delay_us": u.delay_us}
            out["message"] = _h(u.data)
        elif name == "SurbReply":
            out |= {"recipient": _h(u.address), "surb_id": _h(u.tag), "delay_us": u.delay_us}
            out["payload"] = _h(u.data)
        elif name == "CircuitExtend":
            out |= {"next_hop": _h(u.address), "params": _h(u.params), "packet": _h(u.data)}
            out["hop_secret"] = _h(u.hop_secret)
        else:
            out |= {"tag": _h(u.tag), "params": _h(u.params), "message": _h(u.data)}
            out["hop_secret"] = _h(u.hop_secret)
        return out

    def unwrap(private: bytes, packet: bytes) -> Any:
        return lib.sphinx_unwrap(private, q.x25519(private), packet)

    def sphinx_unwrap(req: dict[str, Any]) -> dict[str, Any]:
        return unwrapped(unwrap(X(req["private"]), X(req["packet"])))

    def sphinx_process(req: dict[str, Any]) -> dict[str, Any]:
        private, seen = X(req["private"]), set()
        results: list[dict[str, Any]] = []
        for packet in req["packets"]:
            try:
                u = unwrap(private, X(packet))
            except qc.QnetError as exc:
                results.append({"drop": exc.reason})
                continue
            if u.replay_tag in seen:  # the replay set is the caller's (qnet.h)
                results.append({"drop": "replay"})
                continue
            seen.add(u.replay_tag)
            results.append(unwrapped(u))
        return {"results": results}

    def surb(req: dict[str, Any]) -> tuple[bytes, Any, int]:
        path, delays = req["path"], req["delays_us"]
        n = len(path)
        route = []
        for i, hop in enumerate(path):
            slot: dict[str, Any] = {"command": "RELAY", "delay_us": delays[i]}
            if i == n - 1:
                slot = {"command": "SURB_REPLY", "delay_us": delays[i]}
                slot["address"] = X(req["recipient"])
            route.append((X(hop["node_id"]), X(hop["public"]), slot))
        sizes = [16, *([32] * n), 480 - 96 * n, 32]
        d = _draws(req, sizes)
        encoded, secrets = lib.surb_create(route, d[0], b"".join(d[1 : n + 1]), d[n + 1], d[-1])
        return encoded, secrets, len(d)

    def sphinx_surb_create(req: dict[str, Any]) -> dict[str, Any]:
        encoded, _, used = surb(req)
        return {"surb": _h(encoded), "draws_used": used}

    def sphinx_surb_reply(req: dict[str, Any]) -> dict[str, Any]:
        first, packet = lib.surb_reply(X(req["surb"]), X(req["reply"]))
        return {"first_hop": _h(first), "packet": _h(packet)}

    def sphinx_surb_open(req: dict[str, Any]) -> dict[str, Any]:
        _, secrets, _ = surb(req)
        return {"reply": _h(lib.surb_open(secrets, X(req["payload"])))}

    def lioness_encrypt(req: dict[str, Any]) -> dict[str, Any]:
        return {"block": _h(lib.lioness_encrypt(X(req["keys"]), X(req["block"])))}

    # --- cells (a client's counter starts at 0)

    def cell_layer_keys(req: dict[str, Any]) -> dict[str, Any]:
        fwd, bwd = lib.cell_layer_keys(X(req["material"]))
        return {"forward": _h(fwd), "backward": _h(bwd)}

    def cell_onion_seal(req: dict[str, Any]) -> dict[str, Any]:
        keys = [X(k["forward"]) for k in req["keys"]]
        body = lib.cell_seal(keys[-1], 0, X(req["plaintext"]))
        for key in reversed(keys[:-1]):
            body = lib.cell_xor(key, 0, body)
        return {"body": _h(body)}

    def cell_onion_open(req: dict[str, Any]) -> dict[str, Any]:
        keys = [X(k["backward"]) for k in req["keys"]]
        body = X(req["body"])
        for key in keys[:-1]:
            body = lib.cell_xor(key, 0, body)
        return {"plaintext": _h(lib.cell_open(keys[-1], 0, body))}

    def cell_pass(req: dict[str, Any]) -> dict[str, Any]:
        body = X(req["body"])
        for key in req["keys"]:
            body = lib.cell_xor(X(key), req["counter"], body)
        return {"body": _h(body)}

    def cell_end_seal(req: dict[str, Any]) -> dict[str, Any]:
        return {"body": _h(lib.cell_seal(X(req["key"]), req["counter"], X(req["plaintext"])))}

    def cell_end_open(req: dict[str, Any]) -> dict[str, Any]:
        plain = lib.cell_open(X(req["key"]), req["counter"], X(req["body"]))
        return {"plaintext": _h(plain)}

    def cell_xor_batch(req: dict[str, Any]) -> dict[str, Any]:
        out = lib.cell_xor_batch(X(req["key"]), req["counter"], X(req["bodies"]))
        return {"output": _h(out)}

    def cell_seal_batch(req: dict[str, Any]) -> dict[str, Any]:
        out = lib.cell_seal_batch(X(req["key"]), req["counter"], X(req["plaintexts"]))
        return {"output": _h(out)}

    def cell_unit_decode(req: dict[str, Any]) -> dict[str, Any]:
        circ_id, command, body = lib.unit_decode(X(req["unit"]))
        out = ctypes.create_string_buffer(qc.UNIT_LEN)
        q.check(q.raw.qnet_unit_encode(circ_id, command, body, len(body), out))
        return {"circ_id": circ_id, "command": UNIT_COMMANDS[command], "encoded": _h(out.raw)}

    def cell_relay_decode(req: dict[str, Any]) -> dict[str, Any]:
        command, stream_id, data = lib.relay_cell_decode(X(req["plaintext"]))
        name = RELAY_COMMANDS.get(command, str(command))
        return {"command": name, "stream_id": stream_id, "data": _h(data)}

    # --- HTX frames

    def keys_json(k: Any) -> dict[str, str]:
        return {"secret": _h(k.secret), "key": _h(k.key), "nonce_salt": _h(k.nonce_salt)}

    def frame_keys(req: dict[str, Any]) -> dict[str, Any]:
        k0, client, server = lib.htx_session_keys(X(req["session_secret"]))
        return {"k0": _h(k0), "client": keys_json(client), "server": keys_json(server)}

    def frame_key_next(req: dict[str, Any]) -> dict[str, Any]:
        return keys_json(lib.htx_keys_next(q.keys_from_secret(X(req["secret"]))))

    def payload(frame: dict[str, Any]) -> tuple[int, int, bytes]:
        """(type, stream id, payload) in the layouts of htx.md §4 (the caller's job)."""
        kind, sid = frame["type"], frame.get("stream_id", 0)
        if kind == "STREAM":
            data = X(frame["data"])
            head = bytes([1 if frame["fin"] else 0]) + frame["offset"].to_bytes(8, "big")
            body = head + len(data).to_bytes(2, "big") + data
        elif kind == "WINDOW_UPDATE":
            body = bytes([0 if sid == 0 else 1]) + frame["credit"].to_bytes(4, "big")
        elif kind == "PING":
            body = X(frame["token"])
        elif kind == "KEY_UPDATE":
            body = b""
        else:
            reason = X(frame["reason"])
            body = frame["code"].to_bytes(2, "big") + len(reason).to_bytes(2, "big") + reason
        return FRAME_TYPES[kind], sid, body

    def seal(keys: Any, counter: int, frame: dict[str, Any]) -> bytes:
        ftype, sid, body = payload(frame)
        return bytes(lib.htx_frame_seal(keys, counter, ftype, sid, body))

    def frame_seal(req: dict[str, Any]) -> dict[str, Any]:
        return {
            "wire": _h(seal(q.keys_from_secret(X(req["secret"])), req["counter"], req["frame"]))
        }

    def frame_seal_sequence(req: dict[str, Any]) -> dict[str, Any]:
        keys, counter, wire = q.keys_from_secret(X(req["secret"])), 0, b""
        for frame in req["frames"]:
            wire += seal(keys, counter, frame)
            counter += 1
            if frame["type"] == "KEY_UPDATE":
                keys, counter = lib.htx_keys_next(keys), 0
        return {"wire": _h(wire)}

    def frame_json(f: Any) -> dict[str, Any]:
        name = FRAME_NAMES.get(f.type, str(f.type))
        if name == "STREAM":
            return {
                "type": name,
                "stream_id": f.stream_id,
                "fin": f.fin,
                "offset": f.offset,
                "data": _h(f.data),
            }
        if name == "WINDOW_UPDATE":
            return {"type": name, "stream_id": f.stream_id, "credit": f.credit}
        if name == "PING":
            return {"type": name, "token": _h(f.payload)}
        if name == "KEY_UPDATE":
            return {"type": name}
        return {"type": name, "code": f.close_code, "reason": _h(f.payload[4:])}

    def refusal(exc: Any) -> dict[str, str]:
        cls = "FrameAuthError" if exc.reason == "bad_tag" else "MalformedFrame"
        return {"class": cls, "reason": exc.reason}

    def frame_open(req: dict[str, Any]) -> dict[str, Any]:
        """A receiver (htx.md §5.5): the library opens one frame, the state is ours."""
        keys, counter = q.keys_from_secret(X(req["secret"])), req.get("counter", 0)
        old: list[Any] | None = None  # [keys, counter, frames left] during an overlap
        buf = X(req["wire"])
        frames: list[dict[str, Any]] = []
        refused: dict[str, str] | None = None
        while buf:
            try:
                f = lib.htx_frame_open(keys, counter, buf)
            except qc.QnetError as exc:
                if exc.reason != "bad_tag" or old is None:
                    refused = refusal(exc)
                    break
                try:
                    f = lib.htx_frame_open(old[0], old[1], buf)
                except qc.QnetError:
                    refused = refusal(exc)
                    break
                if f is not None and f.type == FRAME_TYPES["KEY_UPDATE"]:
                    refused = {"class": "MalformedFrame", "reason": "bad_key_update"}
                    break
                if f is not None:
                    old[1] += 1
                    old[2] -= 1
                    frames.append(frame_json(f))
                    buf = buf[f.consumed :]
                    if old[2] <= 0:
                        old = None
                    continue
            if f is None:
                break  # a partial frame: wait for more
            frames.append(frame_json(f))
            buf = buf[f.consumed :]
            counter += 1
            old = None  # a frame opened under the new key ends any overlap
            if f.type == FRAME_TYPES["KEY_UPDATE"]:
                overlap = req.get("overlap_frames", DEFAULT_OVERLAP)
                old = [keys, counter, overlap] if overlap > 0 else None
                keys, counter = lib.htx_keys_next(keys), 0
        return {"frames": frames, "refused": refused, "buffered": len(buf)}

    # --- tickets

    def ticket_build(req: dict[str, Any]) -> dict[str, Any]:
        draws = [X(d) for d in req["draws"]]
        if len(draws) < 3 or len(draws[2]) != 1:
            raise DrawsMismatch("ticket draws: ephemeral (32), nonce (16), padding length (1)")
        pad_len = int(q.raw.qnet_ticket_padding_len(draws[2][0]))
        e, nonce, _, padding = _draws(req, [32, 16, 1, pad_len])
        server_public, hour = X(req["server_public"]), int(req["now"] // 3600)
        wire, carrier = lib.ticket_build(server_public, req["key_id"], hour, e, nonce, padding)
        t = qc.Ticket()
        raw = carrier.encode("ascii")
        q.check(q.raw.qnet_ticket_parse(raw, len(raw), ctypes.byref(t)))
        return {
            "hour": hour,
            "client_public": _h(t.client_public),
            "shared": _h(q.x25519(e, server_public)),
            "nonce": _h(t.nonce),
            "padding": _h(bytes(t.padding)[: t.padding_len]),
            "ticket": _h(t.ticket),
            "wire": _h(wire),
            "carrier": carrier,
            "draws_used": 4,
        }

    return {
        "sphinx_unwrap": sphinx_unwrap,
        "sphinx_process": sphinx_process,
        "sphinx_surb_create": sphinx_surb_create,
        "sphinx_surb_reply": sphinx_surb_reply,
        "sphinx_surb_open": sphinx_surb_open,
        "lioness_encrypt": lioness_encrypt,
        "cell_layer_keys": cell_layer_keys,
        "cell_onion_seal": cell_onion_seal,
        "cell_onion_open": cell_onion_open,
        "cell_pass": cell_pass,
        "cell_end_seal": cell_end_seal,
        "cell_end_open": cell_end_open,
        "cell_xor_batch": cell_xor_batch,
        "cell_seal_batch": cell_seal_batch,
        "cell_unit_decode": cell_unit_decode,
        "cell_relay_decode": cell_relay_decode,
        "frame_keys": frame_keys,
        "frame_key_next": frame_key_next,
        "frame_seal": frame_seal,
        "frame_seal_sequence": frame_seal_sequence,
        "frame_open": frame_open,
        "ticket_build": ticket_build,
    }


def make_handler(q: LibQnet) -> Handler:
    ops = make_ops(q)

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "hello":
            return {
                "protocol": PROTOCOL,
                "name": "libqnet",
                "version": q.lib.version(),
                "library": str(q.path),
                "ops": sorted(ops),
            }
        fn = ops.get(str(op))
        if fn is None:
            return {"unsupported": True}
        try:
            return fn(req)
        except DrawsMismatch as exc:
            return {
                "error": {"reason": "draws_mismatch", "class": "DrawsMismatch"},
                "detail": str(exc),
            }
        except q.qc.QnetError as exc:
            return {"error": {"reason": exc.reason, "class": "QnetError"}}

    return handle


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(f"usage: python -m qnet.lint.harness_libqnet  (library: ${ENV_LIB} or {CDIR}/build)")
        return 0
    try:
        q = LibQnet(library_path())
    except (LibraryMissing, OSError) as exc:
        print(f"harness_libqnet: {exc}", file=sys.stderr)
        return 2
    return serve(make_handler(q))


if __name__ == "__main__":
    raise SystemExit(main())
