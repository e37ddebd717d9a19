"""Streams, XON/XOFF and congestion control (spec/circuits.md §6–§7) over a simulated circuit.

The simulator is a deterministic discrete-event loop: each direction of the
circuit is a FIFO bottleneck (``rate`` cells per second, or unlimited) followed
by a fixed one-way ``delay``. Time only moves when the next cell arrives, and
every ``now`` given to the endpoints comes from that loop.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.constants import RELAY_DATA_MAX
from qnet.routing.cells import RelayCell, RelayCommand
from qnet.routing.streams import (
    CircuitEndpoint,
    EndpointClosed,
    EndReason,
    Event,
    ProtocolViolation,
    Resolved,
    ResolveRequested,
    Role,
    SendBufferFull,
    StreamClosed,
    StreamConfig,
    StreamConnected,
    StreamData,
    StreamEnded,
    StreamRequested,
    StreamState,
    StreamUsageError,
    TooManyStreams,
    format_target,
    parse_target,
)

C = RelayCommand


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the simulated circuit ----------------------------------------------------------------


@dataclass
class Link:
    """One direction: a FIFO bottleneck of ``rate`` cells/s (None = unlimited), then ``delay``."""

    delay: float
    rate: float | None = None
    free_at: float = 0.0
    queue_samples: list[tuple[float, float]] = field(default_factory=list)

    def arrival(self, now: float) -> float:
        if self.rate is None:
            return now + self.delay
        start = max(now, self.free_at)
        self.queue_samples.append((now, (start - now) * self.rate))
        self.free_at = start + 1 / self.rate
        return self.free_at + self.delay


class App:
    """The application on one end: writes queued payloads as room allows, reads and consumes."""

    def __init__(self, ep: CircuitEndpoint) -> None:
        self.ep = ep
        self.out: dict[int, tuple[bytes, int]] = {}
        self.inbox: dict[int, bytearray] = defaultdict(bytearray)
        self.ended: dict[int, EndReason] = {}
        self.events: list[Event] = []
        self.paused: set[int] = set()
        self.max_unread: dict[int, int] = defaultdict(int)
        self.arrivals: dict[int, list[tuple[float, int]]] = defaultdict(list)

    def feed(self) -> bool:
        moved = False
        for sid, (data, pos) in list(self.out.items()):
            room = self.ep.send_room(sid)
            if room and pos < len(data):
                n = min(room, len(data) - pos)
                self.ep.send(sid, data[pos : pos + n])
                pos += n
                moved = True
            if pos == len(data):
                del self.out[sid]
                self.done_writing(sid)
            else:
                self.out[sid] = (data, pos)
        return moved

    def done_writing(self, sid: int) -> None:
        pass

    def handle(self, events: list[Event], now: float) -> None:
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, StreamData):
                self.inbox[ev.stream_id] += ev.data
                self.arrivals[ev.stream_id].append((now, len(ev.data)))
                if ev.stream_id not in self.paused:
                    self.ep.consumed(ev.stream_id, len(ev.data))
                self.max_unread[ev.stream_id] = max(
                    self.max_unread[ev.stream_id], self.ep.unread(ev.stream_id)
                )
            elif isinstance(ev, StreamEnded):
                self.ended[ev.stream_id] = ev.reason
                self.out.pop(ev.stream_id, None)
            self.on_event(ev)

    def on_event(self, ev: Event) -> None:
        pass

    def resume(self, sid: int) -> None:
        self.paused.discard(sid)
        self.ep.consumed(sid, self.ep.unread(sid))


def target(seed: int, up: int, down: int) -> str:
    return f"s{seed}-u{up}-d{down}.test:443"


class ExitApp(App):
    """Answers BEGIN for ``s<seed>-u<up>-d<down>.test``: reads ``up`` bytes, writes ``down``
    bytes, then closes; ``refuse-<n>.test`` is refused with END reason ``n``."""

    def __init__(self, ep: CircuitEndpoint) -> None:
        super().__init__(ep)
        self.expect_up: dict[int, int] = {}
        self.writing: set[int] = set()

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, StreamRequested):
            host = ev.host.removesuffix(".test")
            if host.startswith("refuse-"):
                self.ep.refuse(ev.stream_id, EndReason(int(host[7:])))
                return
            seed, up, down = (int(part[1:]) for part in host.split("-"))
            self.ep.accept(ev.stream_id, f"192.0.2.7:{ev.port}")
            self.expect_up[ev.stream_id] = up
            self.out[ev.stream_id] = (payload(seed, down), 0)
            self.writing.add(ev.stream_id)
        elif isinstance(ev, ResolveRequested):
            addrs = [] if ev.name.startswith("nx") else ["192.0.2.1", "2001:db8::1"]
            self.ep.answer_resolve(ev.stream_id, addrs)
        self._maybe_close()

    def done_writing(self, sid: int) -> None:
        self.writing.discard(sid)
        self._maybe_close()

    def _maybe_close(self) -> None:
        for sid, up in list(self.expect_up.items()):
            if sid not in self.writing and len(self.inbox[sid]) >= up:
                del self.expect_up[sid]
                self.ep.close(sid)


class Sim:
    def __init__(
        self,
        delay: float = 0.01,
        rate: float | None = None,
        config: StreamConfig | None = None,
        encode: bool = False,
    ) -> None:
        self.now = 0.0
        self.client = CircuitEndpoint(Role.CLIENT, 0.0, config)
        self.exit = CircuitEndpoint(Role.EXIT, 0.0, config)
        self.capp = App(self.client)
        self.eapp = ExitApp(self.exit)
        self.fwd = Link(delay, rate)
        self.back = Link(delay, rate)
        self.encode = encode
        self._heap: list[tuple[float, int, bool, RelayCell]] = []
        self._seq = 0
        self.cells = 0
        #: (now, cwnd, in_slow_start) of each endpoint each time its cwnd changed.
        self.cwnd_log: dict[Role, list[tuple[float, int, bool]]] = {Role.CLIENT: [], Role.EXIT: []}

    def open(self, seed: int, up: int, down: int) -> int:
        sid = self.client.open_stream(target(seed, up, down))
        self.capp.out[sid] = (payload(seed + 1_000_000, up), 0)
        return sid

    def _flush(self) -> int:
        sent = 0
        for to_exit, ep, link in ((True, self.client, self.fwd), (False, self.exit, self.back)):
            for cell in ep.cells_to_send(self.now):
                heapq.heappush(self._heap, (link.arrival(self.now), self._seq, to_exit, cell))
                self._seq += 1
                sent += 1
        return sent

    def settle(self) -> None:
        for _ in range(10_000):
            moved = self.capp.feed() | self.eapp.feed()
            if not self._flush() and not moved:
                return
        raise AssertionError("the endpoints never settle")

    def run(self, until: float = 60.0, stop: Callable[[], bool] | None = None) -> None:
        while True:
            self.settle()
            if stop is not None and stop():
                return
            if not self._heap or self._heap[0][0] > until:
                return
            t, _, to_exit, cell = heapq.heappop(self._heap)
            self.now = t
            self.cells += 1
            ep, app = (self.exit, self.eapp) if to_exit else (self.client, self.capp)
            before = ep.cwnd
            if self.encode:
                events = ep.receive_plaintext(cell.encode(), t)
            else:
                events = ep.receive_cell(cell, t)
            log = self.cwnd_log[ep.role]
            if ep.cwnd != before or not log:
                log.append((t, ep.cwnd, ep.in_slow_start))
            assert not any(isinstance(e, ProtocolViolation) for e in events), events
            app.handle(events, t)


# --- transfers --------------------------------------------------------------------------------


def test_many_streams_carry_the_right_bytes() -> None:
    sim = Sim(delay=0.01, rate=4000, encode=True)
    rng = random.Random(5)
    specs = {}
    for seed in range(24):
        up, down = rng.choice([0, 1, 2019, 2020, 50_000]), rng.randrange(0, 400_000)
        specs[sim.open(seed, up, down)] = (seed, up, down)
    sim.run()
    for sid, (seed, up, down) in specs.items():
        assert digest(sim.capp.inbox[sid]) == digest(payload(seed, down))
        assert sim.capp.ended[sid] is EndReason.DONE
        assert any(isinstance(e, StreamConnected) and e.stream_id == sid for e in sim.capp.events)
        assert digest(sim.eapp.inbox[sid]) == digest(payload(seed + 1_000_000, up))
    # Both ENDs were seen: every id is free again, nothing is buffered or in flight.
    for ep in (sim.client, sim.exit):
        assert ep.stream_ids == [] and ep.buffered == 0
        assert ep.inflight < ep.config.sendme_inc
    assert not sim.eapp.ended  # the exit closed each stream itself; no StreamEnded for it


def test_data_cells_are_full_and_never_exceed_the_cell() -> None:
    client = CircuitEndpoint(Role.CLIENT, 0.0)
    exit_ = CircuitEndpoint(Role.EXIT, 0.0)
    sid = client.open_stream("example.org:80")
    for cell in client.cells_to_send(0.0):
        exit_.receive_cell(cell, 0.0)
    exit_.accept(sid, "192.0.2.1:80")
    for cell in exit_.cells_to_send(0.0):
        client.receive_cell(cell, 0.0)
    for chunk in (b"a" * 10, b"b" * 5000, b"c" * 3):
        client.send(sid, chunk)
    cells = client.cells_to_send(0.0)
    assert [len(c.data) for c in cells] == [RELAY_DATA_MAX, RELAY_DATA_MAX, 5013 - 2 * 2019]
    assert b"".join(c.data for c in cells) == b"a" * 10 + b"b" * 5000 + b"c" * 3


def test_round_robin_across_streams() -> None:
    cfg = StreamConfig(cwnd_init=62, cwnd_min=62)
    sim = Sim(config=cfg)
    a, b = sim.client.open_stream("a.test:1"), sim.client.open_stream("b.test:1")
    for cell in sim.client.cells_to_send(0.0):
        for ev in sim.exit.receive_cell(cell, 0.0):
            assert isinstance(ev, StreamRequested)
            sim.exit.accept(ev.stream_id, "x")
    sim.exit.send(a, b"A" * 40 * RELAY_DATA_MAX)
    sim.exit.send(b, b"B" * 40 * RELAY_DATA_MAX)
    cells = sim.exit.cells_to_send(0.0)
    data = [c.stream_id for c in cells if c.command is C.DATA]
    assert data[:6] == [a, b, a, b, a, b]
    assert len(data) == 62 - 2  # the two CONNECTEDs count as in flight too


def test_resolve_answers_and_failures() -> None:
    sim = Sim()
    ok = sim.client.resolve("example.test")
    nx = sim.client.resolve("nx.test")
    sim.run()
    got = {e.stream_id: e for e in sim.capp.events if isinstance(e, Resolved)}
    assert got[ok].name == "example.test" and got[ok].addresses == ("192.0.2.1", "2001:db8::1")
    assert got[nx].addresses == ()
    assert sim.client.stream_ids == [] and sim.exit.stream_ids == []


# --- END reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [EndReason.REFUSED, EndReason.EXIT_POLICY, EndReason.TIMEOUT])
def test_refused_begin_gives_the_client_the_reason(reason: EndReason) -> None:
    sim = Sim()
    sid = sim.client.open_stream(f"refuse-{int(reason)}.test:80")
    sim.client.send(sid, b"early bytes are dropped with the stream")
    sim.run()
    assert sim.capp.ended == {sid: reason}
    assert sim.capp.inbox[sid] == b""
    assert sim.client.stream_ids == [] and sim.exit.stream_ids == []
    assert sim.client.buffered == 0


def test_client_abort_reason_reaches_the_exit() -> None:
    sim = Sim()
    sid = sim.open(1, 0, 5_000_000)
    sim.run(stop=lambda: len(sim.capp.inbox[sid]) > 100_000)
    sim.client.close(sid, EndReason.TIMEOUT)
    sim.run()
    assert sim.eapp.ended == {sid: EndReason.TIMEOUT}
    assert sid not in sim.capp.ended  # we closed it: no event for our own close
    assert sim.client.stream_ids == [] and sim.exit.stream_ids == [] and sim.exit.buffered == 0


def test_graceful_close_flushes_before_end() -> None:
    sim = Sim(rate=1000)
    sid = sim.open(2, 300_000, 0)
    sim.run(stop=lambda: sid not in sim.capp.out)  # all handed to the endpoint
    assert sim.client.send_buffered(sid) > 0
    # The exit has nothing to write and closes once it read everything.
    sim.run()
    assert digest(sim.eapp.inbox[sid]) == digest(payload(2 + 1_000_000, 300_000))
    assert sim.capp.ended == {sid: EndReason.DONE}


def test_crossing_ends_and_id_reuse() -> None:
    client = CircuitEndpoint(Role.CLIENT, 0.0, StreamConfig(max_streams=1))
    exit_ = CircuitEndpoint(Role.EXIT, 0.0)
    sid = client.open_stream("x.test:1")
    for cell in client.cells_to_send(0.0):
        exit_.receive_cell(cell, 0.0)
    exit_.accept(sid, "x")
    for cell in exit_.cells_to_send(0.0):
        client.receive_cell(cell, 0.0)
    client.close(sid)
    exit_.close(sid)
    to_exit, to_client = client.cells_to_send(0.0), exit_.cells_to_send(0.0)
    assert [c.command for c in to_exit] == [C.END] == [c.command for c in to_client]
    assert not [e for c in to_exit for e in exit_.receive_cell(c, 0.1)]
    assert not [e for c in to_client for e in client.receive_cell(c, 0.1)]
    assert client.stream_ids == [] == exit_.stream_ids
    assert client.cells_to_send(0.2) == [] == exit_.cells_to_send(0.2)  # no third END
    client.open_stream("y.test:2")  # max_streams=1: the old id no longer counts


def test_exit_refuses_streams_beyond_its_limit() -> None:
    client = CircuitEndpoint(Role.CLIENT, 0.0)
    exit_ = CircuitEndpoint(Role.EXIT, 0.0, StreamConfig(max_streams=2))
    sids = [client.open_stream(f"h{i}.test:80") for i in range(3)]
    requested = [e for c in client.cells_to_send(0.0) for e in exit_.receive_cell(c, 0.0)]
    assert [e.stream_id for e in requested if isinstance(e, StreamRequested)] == sids[:2]
    events = [e for c in exit_.cells_to_send(0.0) for e in client.receive_cell(c, 0.0)]
    assert events == [StreamEnded(stream_id=sids[2], reason=EndReason.MISC)]
    # The client's answering END finds no record at the exit, and that is fine.
    assert [e for c in client.cells_to_send(0.0) for e in exit_.receive_cell(c, 0.0)] == []
    assert not exit_.closed


def test_circuit_closed_ends_every_stream() -> None:
    sim = Sim()
    a, b = sim.open(1, 0, 10**6), sim.open(2, 0, 10**6)
    sim.run(until=0.05)
    sim.client.close(a, EndReason.MISC)
    assert sim.client.circuit_closed() == [StreamEnded(stream_id=b, reason=EndReason.DESTROYED)]
    assert sim.client.circuit_closed() == []
    assert sim.client.cells_to_send(1.0) == []
    with pytest.raises(EndpointClosed):
        sim.client.open_stream("a.test:1")


# --- congestion control ------------------------------------------------------------------------


def test_slow_start_grows_while_rtt_is_flat() -> None:
    sim = Sim(delay=0.05, rate=None)
    for seed in range(10):
        sim.open(seed, 0, 3_000_000)
    sim.run(stop=lambda: sim.exit.cwnd >= 3000, until=10.0)
    log = sim.cwnd_log[Role.EXIT]
    assert sim.exit.in_slow_start
    sizes = [cwnd for _, cwnd, _ in log]
    assert sizes == sorted(sizes) and sizes[0] == 124 and sizes[-1] >= 3000
    # Each step is ×1.5, one per round trip.
    assert all(b == a + a // 2 for a, b in zip(sizes, sizes[1:], strict=False))
    times = [t for t, _, _ in log[1:]]
    assert all(0.09 < b - a < 0.2 for a, b in zip(times, times[1:], strict=False))
    assert sim.exit.min_rtt == pytest.approx(0.1) and sim.exit.last_rtt == pytest.approx(0.1)


def test_slow_start_ends_and_cwnd_follows_the_queue() -> None:
    rate, delay = 10_000.0, 0.02
    sim = Sim(delay=delay, rate=rate)
    for seed in range(6):
        sim.open(seed, 0, 8_000_000)
    sim.run(until=1.0)
    ex, cfg = sim.exit, sim.exit.config
    bdp = rate * 2 * delay  # 400 cells
    assert not ex.in_slow_start
    assert ex.min_rtt is not None and ex.min_rtt == pytest.approx(2 * delay, rel=0.05)
    log = sim.cwnd_log[Role.EXIT]
    left = next(i for i, (_, _, ss) in enumerate(log) if not ss)
    assert log[left][1] < log[left - 1][1]  # leaving slow start gave the queue back
    settled = [c for _, c, ss in log if not ss]
    assert all(bdp <= c <= bdp + cfg.beta + 2 * cfg.sendme_inc for c in settled), settled
    # The bottleneck queue stays near the Vegas target instead of growing, and busy.
    queue = [q for t, q in sim.back.queue_samples if t > 0.5]
    assert max(queue) <= cfg.beta + 2 * cfg.sendme_inc
    assert min(queue) >= 1
    before = ex.cwnd

    # Competing traffic halves the bottleneck: the RTT rises and cwnd comes down.
    sim.back.rate = rate / 2
    sim.run(until=3.0)
    assert sim.capp.ended == {}  # still downloading
    bdp /= 2
    assert ex.cwnd < before - 2 * cfg.sendme_inc
    assert bdp <= ex.cwnd <= bdp + cfg.beta + 2 * cfg.sendme_inc
    queue = [q for t, q in sim.back.queue_samples if t > 2.0]
    assert 1 <= min(queue) and max(queue) <= cfg.beta + 2 * cfg.sendme_inc


def _goodput(delay: float, rate: float, config: StreamConfig | None = None) -> float:
    """Cells per second delivered to the client over the second half of a long download."""
    sim = Sim(delay=delay, rate=rate, config=config)
    size = 8000 * RELAY_DATA_MAX
    sid = sim.open(9, 0, size)
    sim.run(until=120.0)
    assert digest(sim.capp.inbox[sid]) == digest(payload(9, size))
    arrivals = sim.capp.arrivals[sid]
    total = 0
    for t, n in arrivals:
        total += n
        if total >= size // 2:
            start = t
            break
    return (size - total) / RELAY_DATA_MAX / (arrivals[-1][0] - start)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_throughput_stays_near_the_bottleneck_as_delay_grows(scale: int) -> None:
    rate = 5000.0
    assert _goodput(0.015 * scale, rate) >= 0.9 * rate


def test_a_fixed_window_would_fail_the_throughput_test() -> None:
    fixed = StreamConfig(cwnd_init=200, cwnd_min=200, cwnd_max=200)
    rate = 5000.0
    assert _goodput(0.015, rate, fixed) >= 0.9 * rate  # fine at the base delay (BDP 150)
    assert _goodput(0.06, rate, fixed) < 0.5 * rate  # capped at 4× the delay


def test_sendme_every_31_cells_and_rtt_from_the_31st() -> None:
    client = CircuitEndpoint(Role.CLIENT, 0.0)
    exit_ = CircuitEndpoint(Role.EXIT, 0.0)
    cells = [RelayCell(command=C.DROP) for _ in range(62)]
    sendmes = []
    for i, cell in enumerate(cells):
        client._count_sent(cell.command, now=float(i))  # the accounting of sending it
        assert exit_.receive_cell(cell, float(i)) == []
        sendmes += exit_.cells_to_send(float(i))
    assert [c.command for c in sendmes] == [C.SENDME, C.SENDME]
    assert client.inflight == 62
    client.receive_cell(sendmes[0], 100.0)
    assert client.inflight == 31 and client.last_rtt == 100.0 - 30
    client.receive_cell(sendmes[1], 100.0)
    assert client.inflight == 0 and client.min_rtt == 100.0 - 61
    events = client.receive_cell(RelayCell(command=C.SENDME), 101.0)
    assert events[-1] == ProtocolViolation(
        reason="unexpected_sendme", detail="unexpected_sendme: SENDME with 0 cells in flight"
    )


# --- backpressure ----------------------------------------------------------------------------


def test_slow_reader_gets_xoff_and_the_others_complete() -> None:
    sim = Sim(delay=0.01, rate=5000)
    size = 1_500_000
    sids = [sim.open(seed, 0, size) for seed in range(4)]
    slow = sids[0]
    sim.capp.paused.add(slow)
    others = sids[1:]
    sim.run(stop=lambda: all(s in sim.capp.ended for s in others))
    for seed, sid in enumerate(sids[1:], start=1):
        assert digest(sim.capp.inbox[sid]) == digest(payload(seed, size))
    cfg = sim.client.config
    assert slow not in sim.capp.ended
    assert sim.exit.peer_stopped(slow)
    # What the slow stream holds unread is bounded by XOFF_HIGH plus what was in flight.
    max_cwnd = max(c for _, c, _ in sim.cwnd_log[Role.EXIT])
    assert cfg.xoff_high < sim.capp.max_unread[slow] <= cfg.xoff_high + max_cwnd * RELAY_DATA_MAX
    assert sim.exit.send_buffered(slow) <= cfg.max_stream_buffer
    # The reader wakes up: XON, and the stream finishes with the right bytes.
    sim.capp.resume(slow)
    sim.run()
    assert digest(sim.capp.inbox[slow]) == digest(payload(0, size))
    assert sim.capp.ended[slow] is EndReason.DONE
    assert not sim.exit.peer_stopped(slow) and sim.exit.stream_ids == []


def test_xoff_and_xon_thresholds() -> None:
    cfg = StreamConfig(xoff_high=10_000, xon_low=4_000)
    client = CircuitEndpoint(Role.CLIENT, 0.0, cfg)
    sid = client.open_stream("x.test:1")
    client.cells_to_send(0.0)
    client.receive_cell(RelayCell(command=C.CONNECTED, stream_id=sid, data=b"x"), 0.0)
    for _ in range(5):
        client.receive_cell(RelayCell(command=C.DATA, stream_id=sid, data=b"d" * 2000), 0.0)
    assert client.cells_to_send(0.0) == []  # 10,000 is not above 10,000
    client.receive_cell(RelayCell(command=C.DATA, stream_id=sid, data=b"d"), 0.0)
    assert client.cells_to_send(0.0) == [RelayCell(command=C.XOFF, stream_id=sid)]
    client.consumed(sid, 6_001)
    assert client.unread(sid) == 4_000 and client.cells_to_send(0.0) == []
    client.consumed(sid, 1)
    assert client.cells_to_send(0.0) == [RelayCell(command=C.XON, stream_id=sid)]
    with pytest.raises(StreamUsageError):
        client.consumed(sid, 4_000)
    client.consumed(12345, 10)  # a stream that is gone: ignored


def test_send_buffers_are_bounded() -> None:
    cfg = StreamConfig(max_stream_buffer=10_000, max_circuit_buffer=15_000)
    client = CircuitEndpoint(Role.CLIENT, 0.0, cfg)
    a, b = client.open_stream("a.test:1"), client.open_stream("b.test:1")
    assert client.send_room(a) == 10_000
    client.send(a, b"x" * 10_000)
    assert client.send_room(a) == 0 and client.send_room(b) == 5_000
    with pytest.raises(SendBufferFull) as info:
        client.send(b, b"y" * 5_001)
    assert info.value.room == 5_000 and client.send_buffered(b) == 0
    client.send(b, b"y" * 5_000)
    assert client.buffered == 15_000
    # CONNECTED lets the bytes out, and the room comes back.
    for sid in (a, b):
        client.receive_cell(RelayCell(command=C.CONNECTED, stream_id=sid, data=b"x"), 0.0)
    client.cells_to_send(0.0)
    assert client.buffered == 0 and client.send_room(a) == 10_000
    with pytest.raises(StreamClosed):
        client.send(999, b"z")


def test_usage_errors() -> None:
    client = CircuitEndpoint(Role.CLIENT, 0.0, StreamConfig(max_streams=2))
    exit_ = CircuitEndpoint(Role.EXIT, 0.0)
    with pytest.raises(StreamUsageError):
        exit_.open_stream("a.test:1")
    with pytest.raises(StreamUsageError):
        client.accept(1, "x")
    for bad in ("nohost", "a.test:0", "a.test:65536", "::1:80", "[a.test]:80", "a b:1", ":80"):
        with pytest.raises(ValueError):
            client.open_stream(bad)
    client.open_stream("a.test:1")
    client.resolve("b.test")
    with pytest.raises(TooManyStreams):
        client.open_stream("c.test:1")
    with pytest.raises(StreamClosed):
        exit_.accept(7, "x")


def test_targets_round_trip() -> None:
    assert parse_target("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert parse_target("example.org:80") == ("example.org", 80)
    assert parse_target(format_target("2001:db8::1", 8080)) == ("2001:db8::1", 8080)
    for bad in ("[::1]80", "x:+1", "x:١٢", "[fe80::1%eth0]:1", "x:080000"):
        with pytest.raises(ValueError):
            parse_target(bad)


# --- protocol violations -----------------------------------------------------------------------


def _client_opening() -> tuple[CircuitEndpoint, int]:
    ep = CircuitEndpoint(Role.CLIENT, 0.0)
    sid = ep.open_stream("a.test:1")
    ep.cells_to_send(0.0)
    return ep, sid


def _client_open() -> tuple[CircuitEndpoint, int]:
    ep, sid = _client_opening()
    ep.receive_cell(RelayCell(command=C.CONNECTED, stream_id=sid, data=b"x"), 0.0)
    return ep, sid


def _exit_requested() -> tuple[CircuitEndpoint, int]:
    ep = CircuitEndpoint(Role.EXIT, 0.0)
    ep.receive_cell(RelayCell(command=C.BEGIN, stream_id=5, data=b"a.test:1"), 0.0)
    return ep, 5


def _exit_blank() -> tuple[CircuitEndpoint, int]:
    return CircuitEndpoint(Role.EXIT, 0.0), 5


def _client_resolving() -> tuple[CircuitEndpoint, int]:
    ep = CircuitEndpoint(Role.CLIENT, 0.0)
    return ep, ep.resolve("a.test")


VIOLATIONS = [
    ("data_unknown_client", _client_open, C.DATA, 77, b"x", "unexpected_cell"),
    ("data_unknown_exit", _exit_blank, C.DATA, 5, b"x", "unexpected_cell"),
    ("begin_on_client", _client_open, C.BEGIN, 9, b"a.test:1", "unexpected_cell"),
    ("resolve_on_client", _client_open, C.RESOLVE, 9, b"a.test", "unexpected_cell"),
    ("connected_on_exit", _exit_requested, C.CONNECTED, 5, b"x", "unexpected_cell"),
    ("resolved_on_exit", _exit_requested, C.RESOLVED, 5, b"", "unexpected_cell"),
    ("connected_twice", _client_open, C.CONNECTED, None, b"x", "unexpected_cell"),
    ("data_before_connected", _client_opening, C.DATA, None, b"x", "unexpected_cell"),
    ("data_before_accept", _exit_requested, C.DATA, 5, b"x", "unexpected_cell"),
    ("begin_id_in_use", _exit_requested, C.BEGIN, 5, b"a.test:1", "unexpected_cell"),
    ("resolved_on_stream", _client_open, C.RESOLVED, None, b"1.2.3.4", "unexpected_cell"),
    ("end_on_resolve", _client_resolving, C.END, None, b"\x01", "unexpected_cell"),
    ("sendme_unasked", _client_open, C.SENDME, 0, b"", "unexpected_sendme"),
    ("sendme_on_stream", _client_open, C.SENDME, None, b"", "bad_stream"),
    ("sendme_with_data", _client_open, C.SENDME, 0, b"x", "bad_data"),
    ("xoff_with_data", _client_open, C.XOFF, None, b"x", "bad_data"),
    ("xon_on_circuit", _client_open, C.XON, 0, b"", "bad_stream"),
    ("begin_stream_zero", _exit_blank, C.BEGIN, 0, b"a.test:1", "bad_stream"),
    ("data_stream_zero", _client_open, C.DATA, 0, b"x", "bad_stream"),
    ("begin_no_port", _exit_blank, C.BEGIN, 5, b"a.test", "bad_target"),
    ("begin_port_zero", _exit_blank, C.BEGIN, 5, b"a.test:0", "bad_target"),
    ("begin_bare_ipv6", _exit_blank, C.BEGIN, 5, b"2001:db8::1:80", "bad_target"),
    ("begin_not_utf8", _exit_blank, C.BEGIN, 5, b"\xff:80", "bad_data"),
    ("resolve_empty", _exit_blank, C.RESOLVE, 5, b"", "bad_data"),
    ("end_empty", _client_open, C.END, None, b"", "bad_data"),
    ("end_two_bytes", _client_open, C.END, None, b"\x01\x02", "bad_data"),
    ("connected_not_utf8", _client_opening, C.CONNECTED, None, b"\xc3", "bad_data"),
    ("resolved_empty_line", _client_resolving, C.RESOLVED, None, b"1.2.3.4\n\n", "bad_data"),
]


@pytest.mark.parametrize(
    ("setup", "command", "stream_id", "data", "reason"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
def test_every_violation_is_reported(
    setup: Callable[[], tuple[CircuitEndpoint, int]],
    command: RelayCommand,
    stream_id: int | None,
    data: bytes,
    reason: str,
) -> None:
    ep, sid = setup()
    live = [s for s in ep.stream_ids]
    cell = RelayCell(command=command, stream_id=sid if stream_id is None else stream_id, data=data)
    events = ep.receive_cell(cell, 1.0)
    assert isinstance(events[-1], ProtocolViolation) and events[-1].reason == reason
    assert events[-1].destroy_reason == 1
    assert events[:-1] == [StreamEnded(stream_id=s, reason=EndReason.DESTROYED) for s in live]
    assert ep.closed and ep.stream_ids == []
    assert ep.receive_cell(cell, 2.0) == [] and ep.cells_to_send(2.0) == []
    with pytest.raises(EndpointClosed):
        ep.send(sid, b"x")


def test_malformed_plaintext_is_a_violation() -> None:
    ep, _ = _client_open()
    plain = bytearray(RelayCell(command=C.DATA, stream_id=1, data=b"x").encode())
    plain[-1] = 1  # nonzero padding
    events = ep.receive_plaintext(bytes(plain), 0.0)
    assert isinstance(events[-1], ProtocolViolation) and events[-1].reason == "malformed"
    assert ep.receive_plaintext(b"short", 0.0) == []


def test_ignored_xoff_is_a_violation() -> None:
    cfg = StreamConfig(xoff_high=1000, xon_low=10, xoff_grace_cells=3)
    ep = CircuitEndpoint(Role.CLIENT, 0.0, cfg)
    sid = ep.open_stream("a.test:1")
    ep.receive_cell(RelayCell(command=C.CONNECTED, stream_id=sid, data=b""), 0.0)
    cell = RelayCell(command=C.DATA, stream_id=sid, data=b"z" * 1001)
    assert ep.receive_cell(cell, 0.0) == [StreamData(stream_id=sid, data=cell.data)]
    for _ in range(3):  # in flight when we sent XOFF: fine
        assert not isinstance(ep.receive_cell(cell, 0.0)[-1], ProtocolViolation)
    events = ep.receive_cell(cell, 0.0)
    assert isinstance(events[-1], ProtocolViolation) and events[-1].reason == "xoff_ignored"


def test_undrained_control_backlog_is_a_violation() -> None:
    ep = CircuitEndpoint(Role.EXIT, 0.0, StreamConfig(sendme_inc=1, max_control_backlog=5))
    events: list[Event] = []
    for _ in range(6):
        events = ep.receive_cell(RelayCell(command=C.DROP), 0.0)
    assert isinstance(events[-1], ProtocolViolation) and events[-1].reason == "backlog"


def test_late_cells_after_our_end_are_dropped() -> None:
    ep, sid = _client_open()
    ep.close(sid, EndReason.MISC)
    assert ep.stream_state(sid) is StreamState.END_SENT
    for cmd, data in ((C.DATA, b"late"), (C.XOFF, b""), (C.XON, b""), (C.CONNECTED, b"x")):
        assert ep.receive_cell(RelayCell(command=cmd, stream_id=sid, data=data), 0.0) == []
    assert ep.receive_cell(RelayCell(command=C.END, stream_id=sid, data=b"\x01"), 0.0) == []
    assert ep.stream_ids == [] and not ep.closed


def test_config_is_checked() -> None:
    for bad in (
        {"cwnd_init": 10},
        {"cwnd_max": 100},
        {"alpha": 200},
        {"xon_low": 300_000},
        {"sendme_inc": 0},
        {"max_streams": 40_000},
        {"max_stream_buffer": 1.5},
    ):
        with pytest.raises(ValueError):
            StreamConfig(**bad)


# --- random input ----------------------------------------------------------------------------

_DATA = st.one_of(
    st.sampled_from(
        [b"", b"x", b"\x01", b"\x09", b"a.test:80", b"[::1]:443", b"\xff", b"1.2.3.4\n::1", b"a\n"]
    ),
    st.binary(max_size=40),
)
_CELLS = st.builds(
    lambda c, s, d: RelayCell(command=c, stream_id=s, data=d),
    st.sampled_from(list(RelayCommand)),
    st.sampled_from([0, 1, 2, 3, 65535]),
    _DATA,
)
_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("cell"), _CELLS, st.just(0)),
        st.tuples(st.just("send"), st.integers(1, 3), st.integers(0, 5000)),
        st.tuples(st.just("consumed"), st.integers(1, 3), st.integers(0, 3000)),
        st.tuples(st.just("close"), st.integers(1, 3), st.sampled_from(list(EndReason))),
        st.tuples(st.just("open"), st.just(1), st.just(0)),
        st.tuples(st.just("accept"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("flush"), st.integers(0, 5), st.just(0)),
    ),
    max_size=60,
)


def _check_invariants(ep: CircuitEndpoint) -> None:
    cfg = ep.config
    assert cfg.cwnd_min <= ep.cwnd <= cfg.cwnd_max
    assert ep.inflight >= 0
    assert ep.buffered == sum(ep.send_buffered(s) for s in ep.stream_ids)
    assert 0 <= ep.buffered <= cfg.max_circuit_buffer
    assert len(ep.stream_ids) <= cfg.max_streams
    assert all(ep.unread(s) >= 0 for s in ep.stream_ids)
    if ep.closed:
        assert ep.stream_ids == [] and ep.cells_to_send(0.0) == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(list(Role)), actions=_ACTIONS)
def test_random_cells_give_events_or_typed_errors(
    role: Role, actions: list[tuple[str, Any, Any]]
) -> None:
    cfg = StreamConfig(max_streams=3, xoff_high=4000, xon_low=1000, xoff_grace_cells=4)
    ep = CircuitEndpoint(role, 0.0, cfg)
    now = 0.0
    for kind, a, b in actions:
        now += 0.01
        try:
            if kind == "cell":
                was_closed = ep.closed
                events = ep.receive_cell(a, now)
                if was_closed:
                    assert events == []
                violations = [i for i, e in enumerate(events) if isinstance(e, ProtocolViolation)]
                assert violations in ([], [len(events) - 1])
                assert bool(violations) == (ep.closed and not was_closed)
                for ev in events:
                    if isinstance(ev, StreamData):
                        ep.consumed(ev.stream_id, len(ev.data) // 2)
            elif kind == "send":
                ep.send(a, b"s" * b)
            elif kind == "consumed":
                ep.consumed(a, min(b, ep.unread(a)))
            elif kind == "close":
                ep.close(a, b)
            elif kind == "open":
                ep.open_stream("a.test:80")
            elif kind == "accept":
                if b:
                    ep.accept(a, "192.0.2.1:80")
                else:
                    ep.refuse(a, EndReason.REFUSED)
            else:
                cells = ep.cells_to_send(now, limit=a or None)
                assert a == 0 or len(cells) <= a
        except StreamUsageError:
            pass
        _check_invariants(ep)


# --- batches of plaintexts ------------------------------------------------------------------


def _merge_data(events: list[Event]) -> list[Event]:
    """Consecutive StreamData of one stream as one (what ``receive_plaintexts`` gives)."""
    out: list[Event] = []
    for ev in events:
        last = out[-1] if out else None
        if (
            isinstance(ev, StreamData)
            and isinstance(last, StreamData)
            and last.stream_id == ev.stream_id
        ):
            out[-1] = StreamData(stream_id=ev.stream_id, data=last.data + ev.data)
        else:
            out.append(ev)
    return out


def _plain(command: RelayCommand, sid: int, data: bytes, bad_padding: bool) -> bytes:
    plain = bytearray(RelayCell(command=command, stream_id=sid, data=data).encode())
    if bad_padding and len(data) < RELAY_DATA_MAX:
        plain[-1] = 7
    return bytes(plain)


_BATCH_CELLS = st.lists(
    st.tuples(
        st.sampled_from([C.DATA] * 6 + [C.END, C.XON, C.XOFF, C.DROP, C.CONNECTED]),
        st.sampled_from([1, 2, 3, 9]),
        st.sampled_from([b"", b"x", b"y" * 700, b"z" * RELAY_DATA_MAX, b"\x01"]),
        st.sampled_from([False] * 9 + [True]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(_BATCH_CELLS, max_size=5), closes=st.lists(st.integers(1, 3)))
def test_receive_plaintexts_matches_one_at_a_time(
    batches: list[list[tuple[RelayCommand, int, bytes, bool]]], closes: list[int]
) -> None:
    cfg = StreamConfig(
        sendme_inc=3, xoff_high=3000, xon_low=1000, xoff_grace_cells=4, max_control_backlog=12
    )
    one, many = (CircuitEndpoint(Role.CLIENT, 0.0, cfg) for _ in range(2))
    for ep in (one, many):
        for sid in (1, 2, 3):
            assert ep.open_stream("a.test:1") == sid
        ep.cells_to_send(0.0)
        for sid in (1, 2):
            ep.receive_cell(RelayCell(command=C.CONNECTED, stream_id=sid, data=b"x"), 0.0)
        for sid in closes[:1]:
            ep.close(sid, EndReason.MISC)
    for n, batch in enumerate(batches):
        plains = [_plain(*cell) for cell in batch]
        singles: list[Event] = []
        for p in plains:
            singles += one.receive_plaintext(p, float(n))
        batched = many.receive_plaintexts(b"".join(plains), float(n))
        assert _merge_data(batched) == _merge_data(singles)
        assert all(len(e.data) < 70_000 for e in batched if isinstance(e, StreamData))
        assert one.closed == many.closed and one.stream_ids == many.stream_ids
        assert [one.unread(s) for s in one.stream_ids] == [many.unread(s) for s in many.stream_ids]
        assert one.plaintexts_to_send(float(n)) == many.plaintexts_to_send(float(n))
        for sid in one.stream_ids:
            one.consumed(sid, one.unread(sid))
            many.consumed(sid, many.unread(sid))


def test_plaintexts_to_send_are_the_encoded_cells() -> None:
    ep = CircuitEndpoint(Role.EXIT, 0.0)
    for sid in (4, 5):
        ep.receive_cell(RelayCell(command=C.BEGIN, stream_id=sid, data=b"a.test:1"), 0.0)
        ep.accept(sid, "192.0.2.1")
        ep.send(sid, payload(sid, 3 * RELAY_DATA_MAX + 17))
    ep.close(5)
    plains = ep.plaintexts_to_send(1.0, limit=7)
    cells = ep.cells_to_send(1.0)
    got = [plains[i : i + 2024] for i in range(0, len(plains), 2024)]
    got += [c.encode() for c in cells]
    assert [c[0] for c in got] == [C.CONNECTED] * 2 + [C.DATA] * 8 + [C.END]
    data4 = b"".join(c[5 : 5 + int.from_bytes(c[3:5], "big")] for c in got if c[1:3] == b"\0\4")
    assert data4 == b"192.0.2.1" + payload(4, 3 * RELAY_DATA_MAX + 17)
    assert ep.inflight == 11 and ep.buffered == 0


def test_cells_gather_data_across_sends() -> None:
    ep = CircuitEndpoint(Role.EXIT, 0.0)
    ep.receive_cell(RelayCell(command=C.BEGIN, stream_id=4, data=b"a.test:1"), 0.0)
    ep.accept(4, "192.0.2.1")
    sizes = [1, 700, 2019, 5, 3000, 1]
    sent = [payload(i, n) for i, n in enumerate(sizes)]
    for chunk in sent:
        ep.send(4, bytearray(chunk) if len(chunk) == 5 else chunk)
    cells = ep.cells_to_send(0.0)[1:]
    assert [len(c.data) for c in cells] == [2019, 2019, 1688]
    assert b"".join(c.data for c in cells) == b"".join(sent)
    assert ep.buffered == 0 and ep.send_buffered(4) == 0


def test_tiny_sends_are_merged_into_cell_sized_chunks() -> None:
    ep = CircuitEndpoint(Role.EXIT, 0.0)
    ep.receive_cell(RelayCell(command=C.BEGIN, stream_id=4, data=b"a.test:1"), 0.0)
    ep.accept(4, "192.0.2.1")
    data = payload(9, 10_000)
    for i in range(len(data)):
        ep.send(4, data[i : i + 1])
    st = ep._streams[4]
    assert all(len(c) >= RELAY_DATA_MAX for c in list(st.chunks)[:-1])
    assert len(st.chunks) <= len(data) // RELAY_DATA_MAX + 1
    cells = ep.cells_to_send(0.0)[1:]
    assert b"".join(c.data for c in cells) == data
