"""spec/vectors/cells.json reproduced byte for byte by every backend."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import load_vectors
from qnet.crypto import accel
from qnet.errors import CellError
from qnet.routing import cells as R

V = load_vectors("cells.json")
X = bytes.fromhex
KEYS = [R.LayerKeys(forward=X(h["forward"]), backward=X(h["backward"])) for h in V["hops"]]


def test_key_derivation() -> None:
    for h in V["hops"]:
        keys = R.derive_layer_keys(X(h["hop_key_material"]))
        assert (keys.forward.hex(), keys.backward.hex()) == (h["forward"], h["backward"])


def test_forward_cell(backend: str) -> None:
    f = V["forward"]
    rc = f["relay_cell"]
    plain = R.RelayCell(command=R.RelayCommand[rc["command"]], stream_id=rc["stream_id"], data=X(rc["data"]))
    assert plain.encode().hex() == f["plaintext"]
    wire = R.ClientOnion(KEYS).seal_forward(plain.encode())
    assert wire.hex() == f["wire_to_entry"]
    # Each relay peels its own layer; the exit opens the end layer.
    at_middle = R.PassLayer(KEYS[0].forward).apply(wire)
    assert at_middle.hex() == f["after_middle_layer"]
    at_exit = R.PassLayer(KEYS[1].forward).apply(at_middle)
    assert at_exit.hex() == f["sealed_by_exit_key"]
    opened = R.EndLayer(KEYS[2].forward).open(at_exit)
    assert R.decode_relay_cell(opened) == plain


def test_backward_cell(backend: str) -> None:
    b = V["backward"]
    sealed = R.EndLayer(KEYS[2].backward).seal(X(b["plaintext"]))
    assert sealed.hex() == b["sealed_by_exit"]
    mid = R.PassLayer(KEYS[1].backward).apply(sealed)
    assert mid.hex() == b["after_middle"]
    wire = R.PassLayer(KEYS[0].backward).apply(mid)
    assert wire.hex() == b["wire_to_client"]
    assert R.ClientOnion(KEYS).open_backward(wire).hex() == b["plaintext"]


def test_batches(backend: str) -> None:
    bx = V["batch_xor"]
    assert accel.cell_xor_batch(X(bx["key"]), bx["counter"], X(bx["bodies"])).hex() == bx["output"]
    bs = V["batch_seal"]
    assert accel.cell_seal_batch(X(bs["key"]), bs["counter"], X(bs["plaintexts"])).hex() == bs["output"]
    plains, failed = accel.cell_open_batch(X(bs["key"]), bs["counter"], X(bs["output"]))
    assert failed == -1 and plains.hex() == bs["plaintexts"]


@pytest.mark.parametrize("vec", V["lioness"], ids=lambda v: str(len(v["plaintext"]) // 2))
def test_lioness(backend: str, vec: dict[str, Any]) -> None:
    assert accel.lioness_encrypt_block(X(vec["keys"]), X(vec["plaintext"])).hex() == vec["ciphertext"]
    assert accel.lioness_decrypt_block(X(vec["keys"]), X(vec["ciphertext"])).hex() == vec["plaintext"]


def test_units() -> None:
    for u in V["units"]:
        unit = R.decode_unit(X(u["encoded"]))
        assert unit.circ_id == u["circ_id"] and unit.command.name == u["command"]
        assert unit.encode().hex() == u["encoded"]


@pytest.mark.parametrize("vec", V["negative"], ids=lambda v: v["name"])
def test_negative(backend: str, vec: dict[str, Any]) -> None:
    with pytest.raises(CellError) as info:
        if vec["op"] == "open":
            layer = R.EndLayer(X(vec["key"]))
            layer.counter = vec["counter"]
            layer.open(X(vec["body"]))
        elif vec["op"] == "decode_unit":
            R.decode_unit(X(vec["unit"]))
        else:
            R.decode_relay_cell(X(vec["plaintext"]))
    assert info.value.reason == vec["error"]
