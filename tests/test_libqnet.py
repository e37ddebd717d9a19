"""libqnet (bindings/c): the C vector program, the ctypes binding, the Rust example.

The library is built with ``make -C bindings/c`` when needed. Tests skip with a reason
when there is no C compiler or libsodium header (the Rust test also without rustc);
with ``QNET_REQUIRE_EXT`` set (CI) a missing toolchain fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import VECTORS, load_vectors

from qnet.crypto import hopcrypto
from qnet.crypto.primitives import random_bytes
from qnet.mix import sphinx as S

ROOT = Path(__file__).resolve().parent.parent
CDIR = ROOT / "bindings" / "c"
LIB = CDIR / "build" / "libqnet.so"


def _toolchain_missing() -> str | None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or shutil.which("make") is None:
        return f"no C compiler ({cc}) or make"
    if not any(Path(p, "sodium.h").exists() for p in ("/usr/include", "/usr/local/include")):
        return "libsodium headers not installed (Debian: libsodium-dev)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("QNET_REQUIRE_EXT"):
        pytest.fail(f"libqnet cannot be built: {reason}")
    pytest.skip(f"libqnet cannot be built: {reason}")


def _make(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(CDIR), *targets], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def built() -> Path:
    missing = _toolchain_missing()
    if missing:
        _skip_or_fail(missing)
    proc = _make("all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert LIB.exists()
    return LIB


@pytest.fixture(scope="module")
def qc(built: Path) -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("qnet_c", CDIR / "python" / "qnet_c.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["qnet_c"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("qnet_c", None)


@pytest.fixture(scope="module")
def lib(qc: ModuleType, built: Path) -> Any:
    return qc.Library(str(built))


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# --- the C test program ---------------------------------------------------------------


def test_c_vector_program(built: Path) -> None:
    proc = _make("test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "total:" in proc.stdout and ", 0 failed" in proc.stdout


# --- Sphinx ---------------------------------------------------------------------------


def _nodes() -> list[dict[str, bytes]]:
    keys = load_vectors("sphinx.json")["node_keys"]
    return [{k: h(v) for k, v in key.items() if k != "index"} for key in keys]


def _route(vec: dict[str, Any], nodes: list[dict[str, bytes]]) -> list[Any]:
    route = []
    for hop in vec["route"]:
        node = nodes[hop["node"]]
        slot = dict(hop["slot"])
        for field in ("address", "tag", "params"):
            slot[field] = h(slot[field])
        route.append((node["node_id"], node["public"], slot))
    return route


def _walk(lib: Any, steps: list[dict[str, Any]], packet: bytes, nodes: Any) -> None:
    for step in steps:
        assert step["input"] == packet.hex()
        node = nodes[step["node"]]
        out = lib.sphinx_unwrap(node["private"], node["public"], packet)
        assert out.replay_tag.hex() == step["replay_tag"]
        if step["result"] in ("Relay", "CircuitExtend"):
            assert out.address.hex() == step["next_hop"]
            assert out.data.hex() == step["packet"]
            packet = out.data
        elif step["result"] in ("Deliver", "CircuitEnd"):
            assert out.tag.hex() == step["tag"]
            assert out.data.hex() == step["message"]
        else:
            assert step["result"] == "SurbReply"
            assert (out.address.hex(), out.tag.hex()) == (step["recipient"], step["surb_id"])
            assert out.data.hex() == step["payload"]
        if "hop_secret" in step:
            assert out.hop_secret.hex() == step["hop_secret"]
        if "delay_us" in step:
            assert out.delay_us == step["delay_us"]


def test_sphinx_forward_and_circuit_vectors(lib: Any) -> None:
    vectors = load_vectors("sphinx.json")
    nodes = _nodes()
    for vec in [*vectors["forward"], vectors["circuit"]]:
        n = len(vec["route"])
        draws = [h(d) for d in vec["draws"]]
        packet, okms = lib.sphinx_create(
            _route(vec, nodes), h(vec["message"]), b"".join(draws[:n]), draws[n]
        )
        assert packet.hex() == vec["packet"], vec["name"]
        assert [o.hex() for o in okms] == [hop["okm"] for hop in vec["hops"]]
        _walk(lib, vec["steps"], packet, nodes)


def test_sphinx_surb_vector(lib: Any) -> None:
    vec = load_vectors("sphinx.json")["surb"]
    nodes = _nodes()
    route = [
        (nodes[i]["node_id"], nodes[i]["public"], {"command": "RELAY", "delay_us": d})
        for i, d in zip(vec["path"][:2], (1000, 2000), strict=True)
    ]
    last = nodes[vec["path"][2]]
    route.append(
        (last["node_id"], last["public"], {"command": "SURB_REPLY", "address": h(vec["recipient"])})
    )
    d = [h(x) for x in vec["draws"]]
    surb, secrets = lib.surb_create(route, d[0], b"".join(d[1:4]), d[4], d[5])
    assert surb.hex() == vec["surb"]
    first, packet = lib.surb_reply(surb, h(vec["reply"]))
    assert first == route[0][0] and packet.hex() == vec["packet"]
    _walk(lib, vec["steps"], packet, nodes)
    assert lib.surb_open(secrets, h(vec["payload_at_recipient"])).hex() == vec["opened_reply"]


def test_sphinx_negative_vectors(lib: Any, qc: ModuleType) -> None:
    nodes = _nodes()
    for vec in load_vectors("sphinx.json")["negative"]:
        node = nodes[vec["node"]]
        if vec["error"] in (None, "replay"):
            continue  # relayed-then-dropped and replays: covered by the C program
        with pytest.raises(qc.QnetError) as info:
            lib.sphinx_unwrap(node["private"], node["public"], h(vec["packet"]))
        assert info.value.reason == vec["error"], vec["name"]


def test_sphinx_python_packets_unwrap_in_c(lib: Any) -> None:
    """Fresh random packets from the Python package peel identically in libqnet."""
    keys = [S.MixKey.generate() for _ in range(3)]
    ids = [random_bytes(32) for _ in range(3)]
    final = S.Slot(command=S.Command.DELIVER, address=random_bytes(32), tag=random_bytes(16))
    route = S.mix_route([(i, k.public_bytes) for i, k in zip(ids, keys, strict=True)], final)
    message = random_bytes(700)
    packet = S.build_packet(route, message).packet
    for i, key in enumerate(keys):
        out = lib.sphinx_unwrap(key.private_bytes, key.public_bytes, packet)
        ref = S.unwrap(packet, key)
        assert out.replay_tag == ref.replay_tag
        if i < 2:
            assert isinstance(ref, S.Relay) and out.data == ref.packet
            packet = out.data
        else:
            assert isinstance(ref, S.Deliver) and out.data == ref.message
            assert out.data[: len(message)] == message


# --- cells ----------------------------------------------------------------------------


def test_cells_vectors(lib: Any, qc: ModuleType) -> None:
    vec = load_vectors("cells.json")
    layer_keys = [lib.cell_layer_keys(h(x["hop_key_material"])) for x in vec["hops"]]
    fwd, bwd = [k[0] for k in layer_keys], [k[1] for k in layer_keys]
    assert [k.hex() for k in fwd] == [x["forward"] for x in vec["hops"]]
    assert [k.hex() for k in bwd] == [x["backward"] for x in vec["hops"]]
    for name, keys, stages in (
        ("forward", fwd, ("sealed_by_exit_key", "after_middle_layer", "wire_to_entry")),
        ("backward", bwd, ("sealed_by_exit", "after_middle", "wire_to_client")),
    ):
        cell = vec[name]
        c = cell["counter"]
        body = lib.cell_seal(keys[2], c, h(cell["plaintext"]))
        assert body.hex() == cell[stages[0]]
        body = lib.cell_xor(keys[1], c, body)
        assert body.hex() == cell[stages[1]]
        body = lib.cell_xor(keys[0], c, body)
        assert body.hex() == cell[stages[2]]
        body = lib.cell_xor(keys[1], c, lib.cell_xor(keys[0], c, body))
        plain = lib.cell_open(keys[2], c, body)
        assert plain.hex() == cell["plaintext"]
        _, stream_id, data = lib.relay_cell_decode(plain)
        relay = cell["relay_cell"]
        assert (stream_id, data.hex()) == (relay["stream_id"], relay["data"])
    bx = vec["batch_xor"]
    assert lib.cell_xor_batch(h(bx["key"]), bx["counter"], h(bx["bodies"])).hex() == bx["output"]
    bs = vec["batch_seal"]
    sealed = lib.cell_seal_batch(h(bs["key"]), bs["counter"], h(bs["plaintexts"]))
    assert sealed.hex() == bs["output"]
    assert lib.cell_open_batch(h(bs["key"]), bs["counter"], sealed) == (h(bs["plaintexts"]), -1)
    for lio in vec["lioness"]:
        assert lib.lioness_encrypt(h(lio["keys"]), h(lio["plaintext"])).hex() == lio["ciphertext"]
        assert lib.lioness_decrypt(h(lio["keys"]), h(lio["ciphertext"])).hex() == lio["plaintext"]
    for unit in vec["units"]:
        circ, _, body = lib.unit_decode(h(unit["encoded"]))
        assert circ == unit["circ_id"] and len(body) == qc.CELL_BODY_LEN
    for neg in vec["negative"]:
        with pytest.raises(qc.QnetError) as info:
            if neg["op"] == "open":
                lib.cell_open(h(neg["key"]), neg["counter"], h(neg["body"]))
            elif neg["op"] == "decode_unit":
                lib.unit_decode(h(neg["unit"]))
            else:
                lib.relay_cell_decode(h(neg["plaintext"]))
        assert info.value.reason == neg["error"], neg["name"]


def test_cells_match_python_backend(lib: Any) -> None:
    key, bodies = random_bytes(32), random_bytes(2040 * 3)
    assert lib.cell_xor_batch(key, 41, bodies) == hopcrypto.cell_xor_batch(key, 41, bodies)
    plains = random_bytes(2024 * 2)
    assert lib.cell_seal_batch(key, 7, plains) == hopcrypto.cell_seal_batch(key, 7, plains)


# --- HTX frames -----------------------------------------------------------------------


def test_htx_frame_vectors(lib: Any, qc: ModuleType) -> None:
    vec = load_vectors("htx_frames.json")
    k0, client, server = lib.htx_session_keys(h(vec["session_secret"]))
    assert k0.hex() == vec["k0"]
    directions = vec["directions"]
    for keys, want in ((client, directions["client"]), (server, directions["server"])):
        assert bytes(keys.secret).hex() == want["secret"]
        assert bytes(keys.key).hex() == want["key"]
        assert bytes(keys.nonce_salt).hex() == want["nonce_salt"]

    def keys_at(base: Any, generation: int) -> Any:
        while base.generation < generation:
            base = lib.htx_keys_next(base)
        return base

    ku = vec["key_update"]
    ku_base = client if ku["direction"] == "client" else server
    cases = [(client, f) for f in vec["frames"]["client"]]
    cases += [(server, f) for f in vec["frames"]["server"]]
    cases += [(ku_base, f) for f in ku["frames"]]
    for base, frame in cases:
        keys = keys_at(base, frame["generation"])
        header, payload = h(frame["header"]), h(frame["payload"])
        wire = lib.htx_frame_seal(
            keys, frame["counter"], header[3], int.from_bytes(header[4:8], "big"), payload
        )
        assert wire.hex() == frame["wire"]
        opened = lib.htx_frame_open(keys, frame["counter"], wire)
        assert opened is not None and opened.payload == payload and opened.consumed == len(wire)
        if frame["frame"]["type"] == "STREAM":
            assert opened.data.hex() == frame["frame"]["data"]
            assert (opened.offset, opened.fin) == (frame["frame"]["offset"], frame["frame"]["fin"])
    for neg in vec["negative"]:
        keys = client if neg["direction"] == "client" else server
        if neg["error"] is None:
            assert lib.htx_frame_open(keys, neg["counter"], h(neg["wire"])) is None
            continue
        with pytest.raises(qc.QnetError) as info:
            lib.htx_frame_open(keys, neg["counter"], h(neg["wire"]))
        assert info.value.reason == neg["error"]["reason"], neg["name"]


# --- tickets --------------------------------------------------------------------------


def test_ticket_vectors(lib: Any, qc: ModuleType) -> None:
    vec = load_vectors("htx_tickets.json")
    keys = [(k["key_id"], h(k["private"]), h(k["public"])) for k in vec["server_keys"]]
    for t in vec["tickets"]:
        e, nonce, _, padding = (h(d) for d in t["draws"])
        wire, carrier = lib.ticket_build(
            h(t["server_public"]), t["key_id"], t["hour"], e, nonce, padding
        )
        assert (wire.hex(), carrier) == (t["wire"], t["carrier"])
    for case in vec["verify"]:
        accepted: set[tuple[bytes, int]] = set()
        for check in case["checks"]:
            if check["reason"] == "rate_limited":
                continue  # rate limits are the caller's state, not libqnet's
            try:
                entry = lib.ticket_check(check["carrier"], keys, int(check["now"] // 3600))
            except qc.QnetError as exc:
                got = exc.reason
            else:
                got = "replay" if entry in accepted else "ok"
                accepted.add(entry)
            assert got == check["reason"], case["name"]


# --- directory ------------------------------------------------------------------------


def test_directory_ed25519(lib: Any, qc: ModuleType) -> None:
    vec = load_vectors("directory.json")
    ident = vec["identity"]
    node_id = lib.dir_node_id(h(ident["ed25519_public"]), h(ident["mldsa65_public"]))
    assert node_id.hex() == ident["node_id"]
    desc = vec["descriptor"]
    body, sig, mldsa = lib.dir_envelope_split(h(desc["envelope"]))
    assert body.hex() == desc["body"]
    assert (sig.hex(), mldsa.hex()) == (desc["sig_ed25519"], desc["sig_mldsa65"])
    public = h(ident["ed25519_public"])
    lib.dir_verify_ed25519(public, h(desc["context"]), body, sig)
    for neg in vec["negative"]:
        if neg["error"] != "bad_ed25519_signature":
            continue
        body, sig, _ = lib.dir_envelope_split(h(neg["envelope"]))
        with pytest.raises(qc.QnetError) as info:
            lib.dir_verify_ed25519(public, h(desc["context"]), body, sig)
        assert info.value.reason == "bad_ed25519_signature", neg["name"]


# --- the Rust example -----------------------------------------------------------------


def test_rust_example(built: Path) -> None:
    if shutil.which(os.environ.get("RUSTC", "rustc")) is None:
        pytest.skip("rustc not installed: the Rust example of libqnet is not built")
    proc = _make("rust-example", f"VECTORS={VECTORS}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cells.json forward vector: ok" in proc.stdout


# --- thread safety --------------------------------------------------------------------


def test_concurrent_calls_agree(lib: Any) -> None:
    """No global state: the same unwraps from four threads at once give the same bytes
    (ctypes releases the GIL for the duration of each C call)."""
    from concurrent.futures import ThreadPoolExecutor

    vec = load_vectors("sphinx.json")["forward"][2]
    node = _nodes()[vec["steps"][0]["node"]]
    packet = h(vec["steps"][0]["input"])
    want = vec["steps"][0]["packet"]

    def work(_: int) -> bool:
        return all(
            lib.sphinx_unwrap(node["private"], node["public"], packet).data.hex() == want
            for _ in range(50)
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(8)))
