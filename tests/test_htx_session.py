"""The sans-I/O HTX session: two peers wired in memory, flow control, rekey, cadence, errors."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.htx import frames as F
from qnet.htx.keys import SessionKeys
from qnet.htx.session import (
    INITIAL_WINDOW,
    Event,
    HtxConfig,
    HtxSession,
    HtxUsageError,
    KeyUpdated,
    PingAcked,
    Role,
    SessionClosed,
    StreamData,
    StreamOpened,
)

SECRET = hashlib.sha256(b"htx session test").digest()
# The spec's bare 65,535-byte windows (no growth), so flow control is easy to see.
QUIET = HtxConfig(
    ping_interval=None,
    padding_gap=None,
    stream_window=INITIAL_WINDOW,
    connection_window=INITIAL_WINDOW,
)


class Pair:
    """A client and a server joined by two in-memory pipes; the app acknowledges on delivery."""

    def __init__(self, config: HtxConfig = QUIET, ack: bool = True) -> None:
        self.now = 0.0
        self.client = HtxSession(Role.CLIENT, SECRET, config, self.now, random.Random(1))
        self.server = HtxSession(Role.SERVER, SECRET, config, self.now, random.Random(2))
        self.ack = ack
        self.events: dict[Role, list[Event]] = {Role.CLIENT: [], Role.SERVER: []}
        self.received: dict[Role, dict[int, bytearray]] = {Role.CLIENT: {}, Role.SERVER: {}}

    def pump(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                wire = src.data_to_send()
                if wire:
                    moved = True
                    self._deliver(dst, dst.receive_data(wire, self.now))
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def _deliver(self, dst: HtxSession, events: list[Event]) -> None:
        self.events[dst.role] += events
        for ev in events:
            if isinstance(ev, StreamData):
                self.received[dst.role].setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if self.ack:
                    dst.acknowledge_received(ev.stream_id, len(ev.data))


def test_one_stream_both_ways() -> None:
    p = Pair()
    sid = p.client.open_stream()
    assert sid == 1
    p.client.send_stream_data(sid, b"hello", fin=True)
    p.pump()
    assert p.events[Role.SERVER][:2] == [
        StreamOpened(stream_id=1),
        StreamData(stream_id=1, data=b"hello", fin=True),
    ]
    p.server.send_stream_data(sid, b"world", fin=True)
    p.pump()
    assert p.events[Role.CLIENT] == [StreamData(stream_id=1, data=b"world", fin=True)]
    assert p.server.open_stream() == 2
    with pytest.raises(HtxUsageError):
        p.client.send_stream_data(sid, b"more")  # finished both ways: freed


def test_hundred_streams_few_megabytes_with_checksums() -> None:
    p = Pair(HtxConfig(ping_interval=None, padding_gap=None, rekey_frames=64))
    sent: dict[int, bytes] = {}
    for i in range(100):
        sid = p.client.open_stream()
        sent[sid] = random.Random(i).randbytes(20_000 + 500 * i)
    for sid, data in sent.items():  # all queued before any credit returns
        p.client.send_stream_data(sid, data, fin=True)
    first = p.client.data_to_send()
    assert len(first) < INITIAL_WINDOW + 200 * 64  # flow control held the rest back
    p._deliver(p.server, p.server.receive_data(first, 0.0))
    p.pump()
    got = p.received[Role.SERVER]
    total = sum(len(d) for d in sent.values())
    assert total > 4_000_000
    for sid, data in sent.items():
        assert hashlib.sha256(got[sid]).digest() == hashlib.sha256(data).digest()
    assert p.client.send_generation > 3  # rekeyed mid-transfer by frame count
    assert sum(isinstance(e, KeyUpdated) for e in p.events[Role.SERVER]) == (
        p.client.send_generation
    )


def test_flow_control_waits_for_acknowledgement() -> None:
    p = Pair(ack=False)
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, bytes(200_000))
    p.pump()
    assert len(p.received[Role.SERVER][sid]) == INITIAL_WINDOW
    assert p.client.send_buffered(sid) == 200_000 - INITIAL_WINDOW
    p.server.acknowledge_received(sid, INITIAL_WINDOW)
    p.pump()
    assert len(p.received[Role.SERVER][sid]) == 2 * INITIAL_WINDOW
    with pytest.raises(HtxUsageError):
        p.server.acknowledge_received(sid, 10**9)


def test_peer_overrunning_the_window_is_closed_with_flow_control_code() -> None:
    keys = SessionKeys.derive(SECRET)
    server = HtxSession(Role.SERVER, SECRET, QUIET, 0.0, random.Random(0))
    sealer = F.FrameSealer(keys.client)
    wire, offset = b"", 0
    while offset <= INITIAL_WINDOW:
        data = bytes(F.MAX_STREAM_DATA)
        wire += sealer.seal(F.StreamFrame(stream_id=1, offset=offset, data=data))
        offset += len(data)
    events = server.receive_data(wire, 0.0)
    assert events[-1] == SessionClosed(code=0x0003, reason="window_exceeded", by_peer=False)
    assert server.closed and server.next_deadline() is None
    assert server.receive_data(wire, 1.0) == []  # input after CLOSED is ignored


def test_forged_frame_closes_with_code_2() -> None:
    p = Pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"payload")
    wire = bytearray(p.client.data_to_send())
    wire[-1] ^= 0x40
    events = p.server.receive_data(bytes(wire), 0.0)
    assert events[-1] == SessionClosed(code=0x0002, reason="bad_tag", by_peer=False)
    close = p.server.data_to_send()
    events = p.client.receive_data(close, 0.0)
    assert events == [SessionClosed(code=0x0002, reason="bad_tag", by_peer=True)]


def test_stream_id_rules() -> None:
    keys = SessionKeys.derive(SECRET)
    for sid, reason in ((2, "unknown_stream"),):
        server = HtxSession(Role.SERVER, SECRET, QUIET, 0.0, random.Random(0))
        frame = F.StreamFrame(stream_id=sid, offset=0, data=b"x")
        events = server.receive_data(F.FrameSealer(keys.client).seal(frame), 0.0)
        assert events[-1] == SessionClosed(code=0x0004, reason=reason, by_peer=False)
    server = HtxSession(Role.SERVER, SECRET, HtxConfig(max_streams=2), 0.0, random.Random(0))
    sealer = F.FrameSealer(keys.client)
    wire = b"".join(sealer.seal(F.StreamFrame(stream_id=s, offset=0, data=b"")) for s in (1, 3, 5))
    events = server.receive_data(wire, 0.0)
    assert events[-1] == SessionClosed(code=0x0004, reason="too_many_streams", by_peer=False)


def test_ping_is_echoed_and_acked() -> None:
    p = Pair()
    p.now = 5.0
    token = p.client.send_ping(5.0)
    assert token is not None
    p.now = 5.25
    p.pump()
    assert p.events[Role.CLIENT] == [PingAcked(token=token, rtt=0.25)]
    assert p.events[Role.SERVER] == []


def test_rekey_by_time_when_now_jumps() -> None:
    p = Pair()
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, b"a" * 1000)
    p.pump()
    deadline = p.client.next_deadline()
    assert deadline == 600.0
    p.now = 601.0
    p.client.handle_timer(p.now)
    p.client.send_stream_data(sid, b"b" * 1000, fin=True)
    p.pump()
    assert p.client.send_generation == 1
    assert KeyUpdated(generation=1) in p.events[Role.SERVER]
    assert bytes(p.received[Role.SERVER][sid]) == b"a" * 1000 + b"b" * 1000
    assert p.client.next_deadline() == 601.0 + 600.0


def test_close_reaches_peer() -> None:
    p = Pair()
    p.client.close(0, "done")
    p.pump()
    assert p.events[Role.SERVER] == [SessionClosed(code=0, reason="done", by_peer=True)]
    with pytest.raises(HtxUsageError):
        p.client.open_stream()


def test_cadence_is_random_and_padding_is_discarded() -> None:
    cfg = HtxConfig(ping_interval=(10.0, 40.0), padding_gap=(1.0, 5.0), padding_size=(10, 900))
    client = HtxSession(Role.CLIENT, SECRET, cfg, 0.0, random.Random(7))
    server = HtxSession(Role.SERVER, SECRET, cfg, 0.0, random.Random(8))
    fired: list[float] = []
    sizes: list[int] = []
    now = 0.0
    for _ in range(60):
        deadline = client.next_deadline()
        assert deadline is not None and deadline > now
        now = deadline
        fired.append(now)
        client.handle_timer(now)
        wire = client.data_to_send()
        if wire:
            sizes.append(len(wire))
        events = server.receive_data(wire, now)
        assert not any(isinstance(e, (SessionClosed, StreamOpened, StreamData)) for e in events)
        client.receive_data(server.data_to_send(), now)
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert len({round(g, 6) for g in gaps}) > 10  # not periodic
    assert len(set(sizes)) > 5  # padding sizes vary
    assert not server.closed and not client.closed


# --- fuzzing ------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=6))
@settings(max_examples=200, deadline=None)
def test_random_input_only_closes(chunks: list[bytes]) -> None:
    server = HtxSession(Role.SERVER, SECRET, QUIET, 0.0, random.Random(0))
    for chunk in chunks:
        for ev in server.receive_data(chunk, 0.0):
            assert isinstance(ev, SessionClosed) and ev.code in (1, 2)


frame_st = st.one_of(
    st.builds(
        F.StreamFrame,
        stream_id=st.integers(0, 9),
        offset=st.integers(0, 70_000),
        data=st.binary(max_size=50),
        fin=st.booleans(),
    ),
    st.builds(F.WindowUpdateFrame, stream_id=st.integers(0, 9), credit=st.integers(1, 2**32 - 1)),
    st.builds(F.PingFrame, token=st.binary(min_size=8, max_size=8)),
    st.just(F.KeyUpdateFrame()),
    st.builds(F.CloseFrame, code=st.integers(0, 5), reason=st.binary(max_size=20)),
)


@given(st.lists(frame_st, max_size=12))
@settings(max_examples=300, deadline=None)
def test_authenticated_frame_sequences_never_crash(frames: list[F.Frame]) -> None:
    """Any sequence of well-sealed frames yields events or a clean close, nothing else."""
    keys = SessionKeys.derive(SECRET)
    sealer = F.FrameSealer(keys.client)
    server = HtxSession(Role.SERVER, SECRET, QUIET, 0.0, random.Random(0))
    for frame in frames:
        events = server.receive_data(sealer.seal(frame), 0.0)
        for ev in events:
            if isinstance(ev, StreamData):
                server.acknowledge_received(ev.stream_id, len(ev.data))
        server.data_to_send()
        if server.closed:
            assert isinstance(events[-1], SessionClosed)
            break


def test_windows_grow_to_the_configured_targets() -> None:
    config = HtxConfig(
        ping_interval=None, padding_gap=None, stream_window=1 << 20, connection_window=2 << 20
    )
    p = Pair(config, ack=False)
    sid = p.client.open_stream()
    p.client.send_stream_data(sid, bytes(3 << 20))
    p.pump()
    # The stream's target bounds what arrives unacknowledged; the rest waits.
    assert len(p.received[Role.SERVER][sid]) == 1 << 20
    p.server.acknowledge_received(sid, 1 << 20)
    p.pump()
    assert len(p.received[Role.SERVER][sid]) == 2 << 20


def test_window_targets_are_checked() -> None:
    with pytest.raises(ValueError):
        HtxConfig(stream_window=INITIAL_WINDOW - 1)
    with pytest.raises(ValueError):
        HtxConfig(connection_window=2**31)
