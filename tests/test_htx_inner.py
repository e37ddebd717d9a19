"""The HTX inner handshake (qnet/htx/inner.py, spec/htx-inner.md)."""

from __future__ import annotations

import copy
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_vectors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.crypto.primitives import MLKEM768Key, X25519Key
from qnet.errors import CryptoError
from qnet.htx import inner as I
from qnet.htx.errors import HandshakeError
from qnet.lint.inner_vectors import check_htx_inner
from qnet.lint.vectors import check_file

ROOT = Path(__file__).resolve().parent.parent
VECTORS = load_vectors("htx_inner.json")
NODE = X25519Key(bytes(range(1, 33)))
NODE_KEM = MLKEM768Key(bytes(range(64)))
EXPORTER = bytes(range(100, 132))


def pair(
    initiator_static: bytes | None = None,
    exporter_i: bytes = EXPORTER,
    exporter_r: bytes = EXPORTER,
    node_public: bytes | None = None,
    kem_public: bytes | None = None,
) -> tuple[I.InnerInitiator, I.InnerResponder]:
    ini = I.InnerInitiator(
        node_public or NODE.public_bytes,
        kem_public or NODE_KEM.public_bytes,
        exporter_i,
        initiator_static,
    )
    return ini, I.InnerResponder(NODE.private_bytes, NODE_KEM, exporter_r)


def run(ini: I.InnerInitiator, res: I.InnerResponder) -> tuple[I.Finished, I.Finished]:
    res.start()
    step = res.receive(ini.start())
    assert isinstance(step, I.Continue) and step.send
    done_i = ini.receive(step.send)
    assert isinstance(done_i, I.Finished)
    done_r = res.receive(done_i.send)
    assert isinstance(done_r, I.Finished) and done_r.send == b""
    return done_i, done_r


def messages() -> tuple[bytes, bytes, bytes]:
    ini, res = pair()
    m1 = ini.start()
    m2 = res.receive(m1).send
    done = ini.receive(m2)
    return m1, m2, done.send


def test_noiseprotocol_is_the_version_whose_internals_we_read() -> None:
    assert importlib.metadata.version("noiseprotocol") == I.NOISE_VERSION


# --- vectors ---------------------------------------------------------------------------


def test_vectors() -> None:
    assert check_htx_inner(VECTORS) == []
    assert check_file(VECTORS) == []


def test_vectors_cover_both_kinds_of_initiator_and_the_refusals() -> None:
    assert [c["name"] for c in VECTORS["cases"]] == ["client", "node"]
    assert {n["error"] for n in VECTORS["negative"]} == {
        "decrypt_failed",
        "oversized",
        "undersized",
        "kem_mismatch",
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["cases"][0].__setitem__("session_secret", "00" * 32),
        lambda d: d["cases"][1].__setitem__("msg3", d["cases"][0]["msg3"]),
        lambda d: d["kem"].__setitem__("shared", "11" * 32),
        lambda d: d["negative"][0].__setitem__("error", "oversized"),
        lambda d: d["cases"][0].__setitem__("responder_draws", []),
    ],
)
def test_checker_notices_a_wrong_vector(mutate: object) -> None:
    doc = copy.deepcopy(VECTORS)
    mutate(doc)  # type: ignore[operator]
    assert check_htx_inner(doc)


def test_generator_is_reproducible() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.gen_inner_vectors", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


# --- round trips -----------------------------------------------------------------------


def test_client_round_trip_fresh_static_each_time() -> None:
    seen = set()
    for _ in range(3):
        ini, res = pair()
        done_i, done_r = run(ini, res)
        assert done_i.session_secret == done_r.session_secret
        assert len(done_i.session_secret) == 32
        assert done_i.handshake_hash == done_r.handshake_hash
        assert done_r.remote_static_public == ini.static_public
        assert done_i.remote_static_public == NODE.public_bytes
        assert done_i.read_ahead == done_r.read_ahead == b""
        seen.add(ini.static_public)
        seen.add(done_i.session_secret)
    assert len(seen) == 6


def test_node_round_trip_static_fixed() -> None:
    me = X25519Key(bytes(range(40, 72)))
    secrets = set()
    for _ in range(2):
        ini, res = pair(initiator_static=me.private_bytes)
        done_i, done_r = run(ini, res)
        assert done_r.remote_static_public == me.public_bytes
        assert done_i.session_secret == done_r.session_secret
        secrets.add(done_i.session_secret)
    assert len(secrets) == 2  # fresh ephemerals and ML-KEM every time


def test_session_secret_follows_the_spec_formula() -> None:
    doc = VECTORS
    case = doc["cases"][0]
    x = bytes.fromhex
    want = I.derive_session_secret(
        x(case["split_k1"]),
        x(case["split_k2"]),
        x(doc["kem"]["shared"]),
        x(doc["exporter"]),
        x(case["handshake_hash"]),
    )
    assert want.hex() == case["session_secret"]


def test_message_sizes_and_padding_bounds() -> None:
    m1, m2, m3 = messages()
    assert I.MSG1_MIN <= len(m1) - 2 <= I.MSG1_MIN + I.SEND_PAD_MAX
    assert I.MSG2_MIN <= len(m2) - 2 <= I.MSG2_MIN + I.SEND_PAD_MAX
    assert I.MSG3_MIN <= len(m3) - 2 <= I.MSG3_MIN + I.SEND_PAD_MAX
    for m in (m1, m2, m3):
        assert int.from_bytes(m[:2], "big") == len(m) - 2


# --- failures --------------------------------------------------------------------------


def test_wrong_prologue_fails() -> None:
    ini, res = pair(exporter_r=bytes(32))
    with pytest.raises(HandshakeError) as err:
        run(ini, res)
    assert err.value.reason == "decrypt_failed"


def test_wrong_responder_static_key_fails() -> None:
    ini, res = pair(node_public=X25519Key(bytes(range(2, 34))).public_bytes)
    with pytest.raises(HandshakeError) as err:
        run(ini, res)
    assert err.value.reason == "decrypt_failed"


def test_wrong_mlkem_key_fails() -> None:
    ini, res = pair(kem_public=MLKEM768Key(bytes(64)).public_bytes)
    with pytest.raises(HandshakeError) as err:
        run(ini, res)
    assert err.value.reason == "kem_mismatch"


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("where", [2, 40, -1])
def test_tampered_message_fails(which: int, where: int) -> None:
    ini, res = pair()
    res.start()
    m1 = ini.start()
    if which == 0:
        m1 = flip(m1, where)
    with pytest.raises(HandshakeError):
        m2 = res.receive(m1).send
        if which == 1:
            m2 = flip(m2, where)
        m3 = ini.receive(m2).send
        if which == 2:
            m3 = flip(m3, where)
        res.receive(m3)


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_oversized_length_prefix_refused_before_buffering() -> None:
    _, res = pair()
    with pytest.raises(HandshakeError) as err:
        res.receive((I.MSG1_MAX + 1).to_bytes(2, "big"))
    assert err.value.reason == "oversized"
    ini, _ = pair()
    ini.start()
    with pytest.raises(HandshakeError) as err:
        ini.receive(b"\xff\xff")
    assert err.value.reason == "oversized"


def test_undersized_length_prefix_refused() -> None:
    _, res = pair()
    with pytest.raises(HandshakeError) as err:
        res.receive(b"\x00\x00")
    assert err.value.reason == "undersized"


def test_eof_and_state_errors() -> None:
    ini, res = pair()
    with pytest.raises(HandshakeError) as err:
        ini.receive(b"\x00")  # before start()
    assert err.value.reason == "bad_state"
    ini.start()
    with pytest.raises(HandshakeError) as err:
        ini.start()
    assert err.value.reason == "bad_state"
    with pytest.raises(HandshakeError) as err:
        res.receive(b"")
    assert err.value.reason == "eof"
    with pytest.raises(HandshakeError) as err:  # spent after a failure
        res.receive(b"\x00")
    assert err.value.reason == "bad_state"


def test_receive_after_finished_is_refused() -> None:
    ini, res = pair()
    run(ini, res)
    with pytest.raises(HandshakeError):
        res.receive(b"\x00")
    with pytest.raises(HandshakeError):
        ini.receive(b"\x00")


def test_receive_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the size limits a real peer cannot reach MAX_RECEIVE_CALLS one byte at a
    # time; the budget is a second line, so exercise it with a smaller value.
    assert I.MAX_RECEIVE_CALLS > I.MSG1_MAX + I.MSG3_MAX + 2 * I.LENGTH_PREFIX
    monkeypatch.setattr(I, "MAX_RECEIVE_CALLS", 10)
    _, res = pair()
    m1, _, _ = MESSAGES
    with pytest.raises(HandshakeError) as err:
        for i in range(11):
            res.receive(m1[i : i + 1])
    assert err.value.reason == "budget"


def test_small_order_ephemeral_is_a_handshake_error() -> None:
    _, res = pair()
    with pytest.raises(HandshakeError) as err:
        res.receive(I.frame(bytes(I.MSG1_MIN)))
    assert err.value.reason == "bad_message"


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(CryptoError):
        I.InnerInitiator(NODE.public_bytes, NODE_KEM.public_bytes, b"short")
    with pytest.raises(CryptoError):
        I.InnerInitiator(NODE.public_bytes[:31], NODE_KEM.public_bytes, EXPORTER)
    with pytest.raises(TypeError):
        I.InnerResponder(NODE.private_bytes, NODE.private_bytes, EXPORTER)  # type: ignore[arg-type]


# --- feeding patterns ------------------------------------------------------------------


def test_byte_by_byte_feeding() -> None:
    ini, res = pair()
    m1 = ini.start()
    out = b""
    for i in range(len(m1)):
        step = res.receive(m1[i : i + 1])
        assert isinstance(step, I.Continue)
        out += step.send
        assert (step.send != b"") == (i == len(m1) - 1)
    done_i: I.Continue | I.Finished = I.Continue(send=b"")
    for i in range(len(out)):
        done_i = ini.receive(out[i : i + 1])
    assert isinstance(done_i, I.Finished)
    done_r: I.Continue | I.Finished = I.Continue(send=b"")
    for i in range(len(done_i.send)):
        done_r = res.receive(done_i.send[i : i + 1])
    assert isinstance(done_r, I.Finished)
    assert done_r.session_secret == done_i.session_secret


def test_read_ahead_is_handed_back_intact() -> None:
    ini, res = pair()
    extra = bytes(range(256)) * 3
    m2 = res.receive(ini.start()).send
    done_i = ini.receive(m2 + b"early frames")
    assert isinstance(done_i, I.Finished) and done_i.read_ahead == b"early frames"
    done_r = res.receive(done_i.send + extra)
    assert isinstance(done_r, I.Finished) and done_r.read_ahead == extra


def test_read_ahead_split_across_calls() -> None:
    ini, res = pair()
    m2 = res.receive(ini.start()).send
    m3 = ini.receive(m2).send
    assert res.receive(m3[:10]) == I.Continue(send=b"")
    done = res.receive(m3[10:] + b"xyz")
    assert isinstance(done, I.Finished) and done.read_ahead == b"xyz"


# --- fuzz ------------------------------------------------------------------------------

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=6))
def test_fuzz_responder_only_handshake_errors(chunks: list[bytes]) -> None:
    res = I.InnerResponder(NODE.private_bytes, NODE_KEM, EXPORTER)
    for chunk in chunks:
        try:
            step = res.receive(chunk)
        except HandshakeError:
            return
        assert isinstance(step, I.Continue | I.Finished)


@_FUZZ
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=6))
def test_fuzz_initiator_only_handshake_errors(chunks: list[bytes]) -> None:
    ini = I.InnerInitiator(NODE.public_bytes, NODE_KEM.public_bytes, EXPORTER)
    ini.start()
    for chunk in chunks:
        try:
            ini.receive(chunk)
        except HandshakeError:
            return


@_FUZZ
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_valid_message_1(at: int, junk: bytes) -> None:
    m1, _, _ = MESSAGES
    mutated = m1[:at] + junk + m1[at + len(junk) :]
    res = I.InnerResponder(NODE.private_bytes, NODE_KEM, EXPORTER)
    try:
        step = res.receive(mutated)
    except HandshakeError:
        return
    assert mutated == m1 or isinstance(step, I.Continue)


MESSAGES = messages()
