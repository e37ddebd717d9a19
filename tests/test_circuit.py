"""The one-round-trip circuit handshake: vectors, every path length, tampering, fuzzing."""

from __future__ import annotations

import os

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.constants import BODY_LEN
from qnet.errors import CircuitError
from qnet.lint.circuit_vectors import check_circuits
from qnet.mix import sphinx as S
from qnet.routing import circuit as C
from qnet.routing.cells import ClientOnion, EndLayer, PassLayer, RelayCell, RelayCommand

V = load_vectors("circuits.json")


def test_vectors(backend: str) -> None:
    assert check_circuits(V) == []


def _nodes(n: int) -> list[tuple[S.MixKey, bytes]]:
    return [(S.MixKey.generate(), os.urandom(32)) for _ in range(n)]


def _build(nodes: list[tuple[S.MixKey, bytes]]) -> tuple[C.PendingCreate, list[C.HopAccept], bytes]:
    packet, pending = C.build_create(
        [C.HopRoute(node_id=nid, onion_public=k.public_bytes) for k, nid in nodes]
    )
    accepts = []
    for i, (key, _) in enumerate(nodes):
        result = S.process(packet, key, set())
        assert isinstance(result, (S.CircuitExtend, S.CircuitEnd)), result
        if isinstance(result, S.CircuitExtend):
            assert result.next_hop == nodes[i + 1][1]
        C.check_params(result.params)
        accepts.append(C.accept_hop(result.hop_secret, packet[:32]))
        packet = getattr(result, "packet", b"")
    body = accepts[-1].exit_reply()
    for accept in reversed(accepts[:-1]):
        body = accept.wrap_reply(body)
    return pending, accepts, body


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_path_length_agrees_on_keys(backend: str, n: int) -> None:
    pending, accepts, body = _build(_nodes(n))
    keys = pending.complete(body)
    assert keys == [a.layer_keys for a in accepts]
    # The keys carry relay cells end to end.
    onion = ClientOnion(keys)
    cell = RelayCell(command=RelayCommand.DATA, stream_id=1, data=b"through the circuit")
    wire = onion.seal_forward(cell.encode())
    for k in keys[:-1]:
        wire = PassLayer(k.forward).apply(wire)
    assert EndLayer(keys[-1].forward).open(wire) == cell.encode()


def test_every_circuit_has_fresh_keys_even_with_the_same_mix_keys() -> None:
    nodes = _nodes(3)
    first = _build(nodes)[1]
    second = _build(nodes)[1]
    assert first[0].layer_keys != second[0].layer_keys


@pytest.mark.parametrize("where", [0, 31, 32, 63, 64, 100, 127, 128 + 40])
def test_a_flipped_reply_bit_fails_the_build(where: int) -> None:
    pending, _, body = _build(_nodes(3))
    bad = bytearray(body)
    bad[where] ^= 0x01
    with pytest.raises(CircuitError) as info:
        pending.complete(bytes(bad))
    assert info.value.reason == "bad_reply"


def test_params_and_lengths() -> None:
    C.check_params(C.PARAMS_V1)
    for bad in (b"", bytes(8), bytes([1, 2]) + bytes(6), bytes([1, 1, 1]) + bytes(5)):
        with pytest.raises(CircuitError):
            C.check_params(bad)
    with pytest.raises(ValueError):
        C.build_create([])
    hop = C.accept_hop(os.urandom(32), S.MixKey.generate().public_bytes)
    with pytest.raises(CircuitError):
        hop.wrap_reply(bytes(BODY_LEN - 1))
    with pytest.raises(CircuitError):
        C.accept_hop(os.urandom(32), bytes(32))  # small-order alpha


_PENDING = _build(_nodes(3))[0]


@settings(max_examples=60, deadline=None)
@given(body=st.binary(min_size=BODY_LEN, max_size=BODY_LEN) | st.binary(max_size=100))
def test_complete_fuzz_only_circuit_errors(body: bytes) -> None:
    with pytest.raises(CircuitError):
        _PENDING.complete(body)
