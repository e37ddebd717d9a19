"""HTX key schedule and frames: vectors, round trips, the streaming reader, fuzzing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.htx import frames as F
from qnet.htx.errors import FrameAuthError, HtxError, MalformedFrame
from qnet.htx.keys import DirectionKeys, SessionKeys, expand_label
from qnet.lint.htx_vectors import check_htx_frames
from qnet.lint.vectors import check_file
from tools import gen_htx_vectors

DOC = load_vectors("htx_frames.json")
KEYS = SessionKeys.derive(bytes(range(32)))


def test_vectors_reproduce() -> None:
    assert check_htx_frames(DOC) == []
    assert check_file(DOC) == []


def test_vector_file_is_fresh() -> None:
    assert gen_htx_vectors.main(["--check"]) == 0


def test_vectors_cover_every_type_and_negative() -> None:
    for direction in ("client", "server"):
        types = {v["frame"]["type"] for v in DOC["frames"][direction]}
        assert types == {"STREAM", "WINDOW_UPDATE", "PING", "KEY_UPDATE", "CLOSE"}
    names = {n["name"] for n in DOC["negative"]}
    assert {"flipped-tag-bit", "truncated", "oversized-len", "wrong-counter"} <= names
    assert "unknown-type" in names
    gens = [s["generation"] for s in DOC["key_update"]["frames"]]
    counters = [s["counter"] for s in DOC["key_update"]["frames"]]
    assert gens == [0, 0, 0, 1, 1] and counters == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    "path",
    [
        ("k0",),
        ("frames", "client", 0, "wire"),
        ("frames", "server", 5, "nonce"),
        ("key_update", "wire"),
        ("negative", 0, "wire"),
    ],
)
def test_checker_notices_a_wrong_vector(path: tuple[Any, ...]) -> None:
    doc = copy.deepcopy(DOC)
    node = doc
    for p in path[:-1]:
        node = node[p]
    value = node[path[-1]]
    node[path[-1]] = ("00" if value[:2] != "00" else "ff") + value[2:]
    assert check_htx_frames(doc)


def test_key_schedule_labels() -> None:
    k0 = KEYS.k0
    assert KEYS.client.secret == expand_label(k0, b"ts_c", 32)
    assert KEYS.server.secret == expand_label(k0, b"ts_s", 32)
    nxt = KEYS.client.next()
    assert nxt.secret == expand_label(KEYS.client.secret, b"next", 32) and nxt.generation == 1
    salt = int.from_bytes(KEYS.client.nonce_salt, "little")
    assert KEYS.client.nonce(5) == (salt ^ 5).to_bytes(12, "little")


# --- codec round trips -------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
frames_st = st.one_of(
    st.builds(
        F.StreamFrame,
        stream_id=u32,
        offset=st.integers(0, 2**64 - 1),
        data=st.binary(max_size=F.MAX_STREAM_DATA),
        fin=st.booleans(),
    ),
    st.builds(F.WindowUpdateFrame, stream_id=u32, credit=st.integers(1, 2**32 - 1)),
    st.builds(F.PingFrame, token=st.binary(min_size=8, max_size=8)),
    st.just(F.KeyUpdateFrame()),
    st.builds(F.CloseFrame, code=st.integers(0, 2**16 - 1), reason=st.binary(max_size=200)),
)


@given(st.lists(frames_st, max_size=8))
@settings(max_examples=60, deadline=None)
def test_seal_then_read_round_trip(frames: list[F.Frame]) -> None:
    sealer, reader = F.FrameSealer(KEYS.client), F.FrameReader(KEYS.client)
    wire = b"".join(sealer.seal(f) for f in frames)
    assert all(len(sealer.seal(f)) <= F.MAX_FRAME for f in frames)
    reader.feed(wire)
    assert list(iter(reader.next_frame, None)) == frames
    assert reader.buffered == 0


def _wire(n: int = 6) -> tuple[list[F.Frame], bytes]:
    frames: list[F.Frame] = [
        F.StreamFrame(stream_id=1, offset=0, data=b"x" * 3000),
        F.PingFrame(token=b"abcdefgh"),
        F.KeyUpdateFrame(),
        F.StreamFrame(stream_id=1, offset=3000, data=b"y" * 10, fin=True),
        F.WindowUpdateFrame(stream_id=3, credit=9),
        F.CloseFrame(code=1, reason=b"bye"),
    ][:n]
    sealer = F.FrameSealer(KEYS.server)
    return frames, b"".join(sealer.seal(f) for f in frames)


def test_reader_whole_and_byte_by_byte() -> None:
    frames, wire = _wire()
    whole = F.FrameReader(KEYS.server)
    whole.feed(wire)
    assert list(iter(whole.next_frame, None)) == frames
    drip, got = F.FrameReader(KEYS.server), []
    for i in range(len(wire)):
        drip.feed(wire[i : i + 1])
        while (f := drip.next_frame()) is not None:
            got.append(f)
    assert got == frames


def test_reader_trailing_junk_is_refused_after_good_frames() -> None:
    frames, wire = _wire()
    reader = F.FrameReader(KEYS.server)
    reader.feed(wire + b"\x00\x00\x40" + bytes(100))
    got = [reader.next_frame() for _ in frames]
    assert got == frames
    with pytest.raises(FrameAuthError):
        reader.next_frame()
    with pytest.raises(FrameAuthError):  # a dead reader stays dead
        reader.next_frame()


def test_huge_len_is_refused_from_three_bytes() -> None:
    reader = F.FrameReader(KEYS.server)
    reader.feed(b"\xff\xff\xff")
    with pytest.raises(MalformedFrame) as exc:
        reader.next_frame()
    assert exc.value.reason == "bad_length" and exc.value.code == 1


def test_overlap_is_bounded() -> None:
    old = KEYS.client
    reader = F.FrameReader(old, overlap=2)
    ku = F.FrameSealer(old)
    reader.feed(ku.seal(F.KeyUpdateFrame()))
    assert reader.next_frame() == F.KeyUpdateFrame()
    late = F.FrameSealer(old)
    late.counter = 1
    for _ in range(2):
        reader.feed(late.seal(F.PingFrame(token=bytes(8))))
        assert reader.next_frame() == F.PingFrame(token=bytes(8))
    reader.feed(late.seal(F.PingFrame(token=bytes(8))))
    with pytest.raises(FrameAuthError):
        reader.next_frame()


# --- fuzzing ------------------------------------------------------------------------------


@given(st.binary(max_size=600), st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_htx_errors(data: bytes, chunk: int) -> None:
    reader = F.FrameReader(KEYS.client)
    try:
        for i in range(0, len(data), chunk):
            reader.feed(data[i : i + chunk])
            while reader.next_frame() is not None:
                pass
    except HtxError:
        pass


@given(st.integers(0, 200), st.integers(0, 7), st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_frames_raise_only_htx_errors(pos: int, bit: int, data: st.DataObject) -> None:
    _, wire = _wire()
    pos = pos % len(wire)
    mutated = wire[:pos] + bytes([wire[pos] ^ (1 << bit)]) + wire[pos + 1 :]
    cut = data.draw(st.integers(0, len(mutated)))
    reader = F.FrameReader(KEYS.server)
    reader.feed(mutated[:cut])
    try:
        while reader.next_frame() is not None:
            pass
    except HtxError:
        pass


@given(st.integers(0, 255), u32, st.integers(0, 2**16 - 1), st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_authenticated_garbage_fields_raise_only_malformed(
    ftype: int, sid: int, ext: int, payload: bytes
) -> None:
    """A peer with the key can send any header and payload: only MalformedFrame may escape."""
    keys: DirectionKeys = KEYS.client
    reader = F.FrameReader(keys)
    reader.feed(F.seal_raw(keys, 0, F.frame_header(ftype, sid, len(payload), ext), payload))
    try:
        reader.next_frame()
    except MalformedFrame:
        pass
