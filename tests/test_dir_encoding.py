"""Deterministic CBOR: round trips, canonical-only decoding, limits, and the encoding vectors."""

from __future__ import annotations

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.dir import encoding as E
from qnet.errors import DecodeError, MalformedDocument

FUZZ = settings(max_examples=300, deadline=None)
VECTORS = load_vectors("directory.json")["encoding"]

keys = st.one_of(
    st.integers(min_value=E.NINT_MIN, max_value=E.UINT_MAX), st.binary(max_size=8), st.text()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=E.NINT_MIN, max_value=E.UINT_MAX),
    st.binary(max_size=64),
    st.text(max_size=32),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=30,
)


@FUZZ
@given(values)
def test_every_value_round_trips(value: E.Value) -> None:
    raw = E.encode(value)
    assert E.decode(raw) == value
    assert E.encode(E.decode(raw)) == raw


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_malformed(raw: bytes) -> None:
    try:
        value = E.decode(raw)
    except MalformedDocument as exc:
        assert exc.reason
    else:
        assert E.encode(value) == raw  # anything accepted is the one canonical form


@FUZZ
@given(values, st.data())
def test_mutations_are_refused_or_canonical(value: E.Value, data: st.DataObject) -> None:
    raw = bytearray(E.encode(value))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            decoded = E.decode(candidate)
        except MalformedDocument:
            continue
        assert E.encode(decoded) == candidate


@pytest.mark.parametrize("vec", VECTORS["positive"], ids=lambda v: v["name"])
def test_positive_vectors(vec: dict[str, str]) -> None:
    raw = bytes.fromhex(vec["cbor"])
    assert E.encode(E.decode(raw)) == raw


@pytest.mark.parametrize("vec", VECTORS["negative"], ids=lambda v: v["name"])
def test_negative_vectors(vec: dict[str, str]) -> None:
    with pytest.raises(MalformedDocument) as info:
        E.decode(bytes.fromhex(vec["cbor"]))
    assert info.value.reason == vec["error"]
    assert isinstance(info.value, DecodeError) and isinstance(info.value, ValueError)


def test_shortest_forms_at_each_boundary() -> None:
    assert E.encode(23) == b"\x17"
    assert E.encode(24) == b"\x18\x18"
    assert E.encode(256) == b"\x19\x01\x00"
    assert E.encode(-(2**64)) == b"\x3b" + b"\xff" * 8
    assert E.encode(b"x" * 24)[:2] == b"\x58\x18"


def test_map_keys_sort_by_encoded_bytes() -> None:
    # Length first ("b" < "aa"), and ints (major 0/1) before bytes and text.
    assert list(E.decode(E.encode({"aa": 1, "b": 2, 1: 3, -1: 4, b"z": 5}))) == [  # type: ignore[arg-type]
        1,
        -1,
        b"z",
        "b",
        "aa",
    ]


def test_limits() -> None:
    small = E.Limits(max_size=10, max_depth=2, max_items=4, max_string=3)
    for raw, reason in [
        (E.encode(b"x" * 11), "too_large"),
        (E.encode([[[]]]), "too_deep"),
        (E.encode([1, 2, 3, 4]), "too_many_items"),
        (E.encode("abcd"), "too_large"),
    ]:
        with pytest.raises(MalformedDocument) as info:
            E.decode(raw, small)
        assert info.value.reason == reason
    assert E.decode(E.encode([[1], 2]), small) == [[1], 2]
    with pytest.raises(ValueError):
        E.Limits(max_depth=10_000)


def test_hostile_nesting_is_bounded() -> None:
    with pytest.raises(MalformedDocument) as info:
        E.decode(b"\x81" * 100_000)
    assert info.value.reason == "too_deep"
    with pytest.raises(MalformedDocument):
        E.decode(b"\x9b" + b"\xff" * 8)


def test_non_bytes_input() -> None:
    with pytest.raises(MalformedDocument) as info:
        E.decode("00")  # type: ignore[arg-type]
    assert info.value.reason == "not_bytes"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, TypeError),
        ({True: 1}, TypeError),
        ({(1,): 1}, TypeError),
        ({1, 2}, TypeError),
        (2**64, ValueError),
        (-(2**64) - 1, ValueError),
    ],
)
def test_encoder_refuses_unsupported_values(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        E.encode(value)  # type: ignore[arg-type]
