"""Link units and relay cells: codecs, layered crypto end to end, tamper/reorder detection."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.constants import BODY_LEN, CELL_PLAINTEXT_LEN, RELAY_DATA_MAX, UNIT_LEN
from qnet.errors import CellError, CryptoError, MalformedCell, TamperedCell
from qnet.routing import cells as R

FUZZ = settings(max_examples=200, deadline=None)


def circuit(n: int = 3) -> tuple[R.ClientOnion, list[R.LayerKeys]]:
    keys = [R.derive_layer_keys(os.urandom(32)) for _ in range(n)]
    return R.ClientOnion(keys), keys


class Relays:
    """The relay side of one circuit: pass layers on every hop but the last."""

    def __init__(self, keys: list[R.LayerKeys]) -> None:
        self.fwd = [R.PassLayer(k.forward) for k in keys[:-1]]
        self.back = [R.PassLayer(k.backward) for k in keys[:-1]]
        self.exit_in = R.EndLayer(keys[-1].forward)
        self.exit_out = R.EndLayer(keys[-1].backward)

    def forward(self, body: bytes) -> bytes:
        for layer in self.fwd:
            body = layer.apply(body)
        return self.exit_in.open(body)

    def backward(self, plain: bytes) -> bytes:
        body = self.exit_out.seal(plain)
        for layer in reversed(self.back):
            body = layer.apply(body)
        return body


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_many_cells_both_directions(backend: str, n: int) -> None:
    client, keys = circuit(n)
    relays = Relays(keys)
    for i in range(40):
        cell = R.RelayCell(command=R.RelayCommand.DATA, stream_id=i, data=os.urandom(i * 50))
        assert R.decode_relay_cell(relays.forward(client.seal_forward(cell.encode()))) == cell
        assert client.open_backward(relays.backward(cell.encode())) == cell.encode()


def test_tagging_by_a_middle_relay_is_caught_at_the_exit(backend: str) -> None:
    client, keys = circuit(3)
    relays = Relays(keys)
    body = bytearray(
        client.seal_forward(R.RelayCell(command=R.RelayCommand.DATA, data=b"x").encode())
    )
    body[500] ^= 0x10
    with pytest.raises(TamperedCell):
        relays.forward(bytes(body))


def test_reordered_cells_are_caught(backend: str) -> None:
    client, keys = circuit(3)
    relays = Relays(keys)
    a = client.seal_forward(R.RelayCell(command=R.RelayCommand.DATA, data=b"a").encode())
    b = client.seal_forward(R.RelayCell(command=R.RelayCommand.DATA, data=b"b").encode())
    with pytest.raises(TamperedCell):
        relays.forward(b)
    del a


def test_batch_paths_match_single(backend: str) -> None:
    key = os.urandom(32)
    bodies = os.urandom(BODY_LEN * 9)
    single = R.PassLayer(key)
    one_by_one = b"".join(single.apply(bodies[i * BODY_LEN : (i + 1) * BODY_LEN]) for i in range(9))
    assert R.PassLayer(key).apply_batch(bodies) == one_by_one
    sealer, opener = R.EndLayer(key), R.EndLayer(key)
    plains = os.urandom(CELL_PLAINTEXT_LEN * 4)
    sealed = b"".join(
        sealer.seal(plains[i * CELL_PLAINTEXT_LEN : (i + 1) * CELL_PLAINTEXT_LEN]) for i in range(4)
    )
    assert opener.open_batch(sealed) == plains and opener.counter == 4
    bad = bytearray(sealed)
    bad[BODY_LEN * 2 + 9] ^= 1
    late = R.EndLayer(key)
    with pytest.raises(TamperedCell, match="cell 2"):
        late.open_batch(bytes(bad))


def test_counter_limit() -> None:
    layer = R.PassLayer(bytes(32))
    layer.counter = 2**64 - 1
    layer.apply(bytes(BODY_LEN))
    with pytest.raises(CryptoError):
        layer.apply(bytes(BODY_LEN))


@FUZZ
@given(
    circ=st.integers(0, 2**32 - 1),
    command=st.sampled_from(list(R.UnitCommand)),
    body=st.binary(min_size=BODY_LEN, max_size=BODY_LEN),
)
def test_unit_round_trip(circ: int, command: R.UnitCommand, body: bytes) -> None:
    try:
        unit = R.Unit(circ_id=circ, command=command, body=body)
    except ValueError:
        return
    assert R.decode_unit(unit.encode()) == unit


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=UNIT_LEN + 4),
        st.binary(min_size=8, max_size=8).map(lambda h: h + bytes(BODY_LEN)),
    )
)
def test_decode_unit_fuzz(raw: bytes) -> None:
    try:
        unit = R.decode_unit(raw)
    except MalformedCell:
        return
    assert unit.encode() == raw


@FUZZ
@given(
    command=st.sampled_from(list(R.RelayCommand)),
    stream=st.integers(0, 2**16 - 1),
    data=st.binary(max_size=RELAY_DATA_MAX),
)
def test_relay_cell_round_trip(command: R.RelayCommand, stream: int, data: bytes) -> None:
    cell = R.RelayCell(command=command, stream_id=stream, data=data)
    assert R.decode_relay_cell(cell.encode()) == cell


@FUZZ
@given(head=st.binary(min_size=5, max_size=5), tail=st.binary(max_size=40))
def test_decode_relay_cell_fuzz(head: bytes, tail: bytes) -> None:
    raw = (head + tail + bytes(CELL_PLAINTEXT_LEN))[:CELL_PLAINTEXT_LEN]
    try:
        cell = R.decode_relay_cell(raw)
    except MalformedCell:
        return
    assert cell.encode() == raw


@FUZZ
@given(body=st.binary(max_size=BODY_LEN + 2), counter=st.integers(0, 2**64 - 1))
def test_end_layer_open_fuzz(body: bytes, counter: int) -> None:
    layer = R.EndLayer(bytes(32))
    layer.counter = counter
    with pytest.raises(CellError):
        layer.open(body)


@pytest.mark.parametrize("n", [1, 3])
def test_onion_batch_paths_match_single(backend: str, n: int) -> None:
    """ClientOnion's batch methods give the bytes of the one-cell methods, and
    open_backward_batch stops at the first bad cell with the good ones before it."""
    keys = [R.derive_layer_keys(os.urandom(32)) for _ in range(n)]
    one, many = R.ClientOnion(keys), R.ClientOnion(keys)
    plains = [os.urandom(CELL_PLAINTEXT_LEN) for _ in range(6)]
    single = b"".join(one.seal_forward(p) for p in plains)
    assert many.seal_forward_batch(b"".join(plains)) == single
    relays = Relays(keys)
    bodies = [relays.backward(p) for p in plains]
    assert many.open_backward_batch(b"".join(bodies)) == (b"".join(plains), -1)
    later = [relays.backward(p) for p in plains]
    bad = bytearray(later[3])
    bad[100] ^= 1
    later[3] = bytes(bad)
    got, failed = many.open_backward_batch(b"".join(later))
    assert failed == 3 and got == b"".join(plains[:3])


def test_relay_unit_header_matches_unit_encode() -> None:
    body = os.urandom(BODY_LEN)
    for cid in (1, 0x1234, 2**32 - 1):
        unit = R.Unit(circ_id=cid, command=R.UnitCommand.RELAY, body=body)
        assert R.relay_unit_header(cid) + body == unit.encode()
    for cid in (0, 2**32):
        with pytest.raises(ValueError):
            R.relay_unit_header(cid)
