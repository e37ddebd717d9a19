"""Selective-repeat ARQ for mixed-mode streams (spec/mixed.md §4). Sans-I/O.

One ``Arq`` is one end of a stream: it cuts outgoing bytes into numbered
segments, keeps at most ``window`` of them unacknowledged, retransmits a
segment whose timer ran out (the timer doubles with each retry, Karn's rule for
RTT samples), and puts incoming segments back in order. The caller decides when
a frame may leave (a Poisson tick at a client, a SURB at an exit) and asks::

    arq.send(b"...")                 # queue bytes (arq.close() queues the FIN)
    seg = arq.next_segment(now)      # a due retransmission, else new data, else None
    ack, sack = arq.ack_fields()     # piggyback on every frame; arq.ack_sent()
    arq.on_ack(ack, sack, now)       # from a received frame with ACK
    arq.on_segment(seq, flags, data, now)
    arq.take_received()              # in-order (flags, data)
    arq.next_deadline()              # when to poll again

Time is an argument; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from qnet.mix.frames import Flag

SACK_BITS = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class ArqConfig:
    """* ``window``: segments in flight (sent, not acknowledged) at most; also the
      receive reorder limit.
    * ``mss``: data bytes per segment.
    * ``rto_initial``/``rto_min``/``rto_max``: retransmission timer, seconds.
    * ``ack_delay``: how long an acknowledgement may wait for a frame to ride on.
    * ``max_retries``: transmissions of one segment before the stream fails.
    """

    window: int = 64
    mss: int = 836
    rto_initial: float = 3.0
    rto_min: float = 0.5
    rto_max: float = 60.0
    ack_delay: float = 0.05
    max_retries: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 4096 or self.mss < 1:
            raise ValueError("window must be 1..4096 and mss positive")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")


@dataclass(slots=True)
class Segment:
    seq: int
    flags: Flag
    data: bytes
    sent_at: float = -1.0
    transmissions: int = 0
    deadline: float = math.inf


class ArqFailed(Exception):
    """A segment was sent ``max_retries`` times without an acknowledgement."""


class Arq:
    """One end of a mixed-mode stream (both directions' sequence state)."""

    def __init__(self, config: ArqConfig | None = None) -> None:
        self.config = config if config is not None else ArqConfig()
        # sending
        self._next_seq = 0
        self._pending: deque[Segment] = deque()  # built, never sent
        self._unsent = bytearray()
        self._fin_queued = False
        self._fin_seq: int | None = None
        self._inflight: dict[int, Segment] = {}
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = self.config.rto_initial
        self.failed = False
        self.retransmissions = 0
        # receiving
        self._rcv_next = 0
        self._ooo: dict[int, tuple[Flag, bytes]] = {}
        self._ready: list[tuple[Flag, bytes]] = []
        self._ack_since: float | None = None
        self.fin_received = False

    # --- sending ------------------------------------------------------------------------------

    def send_syn(self, data: bytes) -> None:
        """Queue the direction's first segment (SYN) with ``data`` in it."""
        if self._next_seq or self._pending:
            raise ValueError("SYN must be the first segment")
        self._pending.append(Segment(self._take_seq(), Flag.SYN, bytes(data)))

    def send(self, data: bytes) -> None:
        if self._fin_queued:
            raise ValueError("stream already closed for sending")
        self._unsent += data

    def close(self) -> None:
        """Queue the FIN after the data already queued."""
        self._fin_queued = True

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet cut into segments."""
        return len(self._unsent)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def all_acked(self) -> bool:
        """Everything queued (including the FIN, if queued) has been acknowledged."""
        return (
            not self._unsent
            and not self._pending
            and not self._inflight
            and (not self._fin_queued or self._fin_seq is not None)
        )

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _timer(self, transmissions: int) -> float:
        return min(self.config.rto_max, self.rto * float(2 ** max(0, transmissions - 1)))

    def next_segment(self, now: float) -> Segment | None:
        """The segment to transmit now: the oldest one whose timer ran out, else a new
        one if the window has room, else ``None``. Marks it sent at ``now``.

        Raises ``ArqFailed`` when a segment has used up its transmissions.
        """
        due = [s for s in self._inflight.values() if s.deadline <= now]
        if due:
            seg = min(due, key=lambda s: s.seq)
            if seg.transmissions >= self.config.max_retries:
                self.failed = True
                raise ArqFailed(f"segment {seg.seq} unacknowledged after {seg.transmissions} tries")
            self.retransmissions += 1
        elif len(self._inflight) < self.config.window:
            seg_new = self._new_segment()
            if seg_new is None:
                return None
            seg = seg_new
            self._inflight[seg.seq] = seg
        else:
            return None
        seg.transmissions += 1
        seg.sent_at = now
        seg.deadline = now + self._timer(seg.transmissions)
        return seg

    def _new_segment(self) -> Segment | None:
        if self._pending:
            return self._pending.popleft()
        if self._unsent:
            chunk = bytes(self._unsent[: self.config.mss])
            del self._unsent[: self.config.mss]
            flags = Flag(0)
            if not self._unsent and self._fin_queued:
                flags = Flag.FIN
            seg = Segment(self._take_seq(), flags, chunk)
            if flags:
                self._fin_seq = seg.seq
            return seg
        if self._fin_queued and self._fin_seq is None:
            seg = Segment(self._take_seq(), Flag.FIN, b"")
            self._fin_seq = seg.seq
            return seg
        return None

    def on_ack(self, ack: int, sack: int, now: float) -> None:
        """Cumulative ``ack`` (next sequence number expected) and the selective bits:
        bit ``i`` of ``sack`` acknowledges ``ack + 1 + i``."""
        acked = [s for s in self._inflight if s < ack]
        acked += [ack + 1 + i for i in range(SACK_BITS) if sack >> i & 1]
        for seq in acked:
            seg = self._inflight.pop(seq, None)
            if seg is not None and seg.transmissions == 1:
                self._rtt_sample(now - seg.sent_at)

    def _rtt_sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        cfg = self.config
        self.rto = min(cfg.rto_max, max(cfg.rto_min, self.srtt + 4 * self.rttvar))

    # --- receiving ----------------------------------------------------------------------------

    def on_segment(self, seq: int, flags: Flag, data: bytes, now: float) -> bool:
        """Take one received segment; ``False`` if it was a duplicate or out of window.
        Either way an acknowledgement becomes due."""
        if self._ack_since is None:
            self._ack_since = now
        if seq < self._rcv_next or seq in self._ooo:
            return False
        if seq >= self._rcv_next + 4 * self.config.window:
            return False
        self._ooo[seq] = (flags & (Flag.SYN | Flag.FIN), bytes(data))
        while self._rcv_next in self._ooo:
            item = self._ooo.pop(self._rcv_next)
            self._ready.append(item)
            if item[0] & Flag.FIN:
                self.fin_received = True
            self._rcv_next += 1
        return True

    def take_received(self) -> list[tuple[Flag, bytes]]:
        """Segments now in order, oldest first (each once)."""
        out, self._ready = self._ready, []
        return out

    def ack_fields(self) -> tuple[int, int]:
        sack = 0
        for i in range(SACK_BITS):
            if self._rcv_next + 1 + i in self._ooo:
                sack |= 1 << i
        return self._rcv_next, sack

    @property
    def received_any(self) -> bool:
        return self._rcv_next > 0 or bool(self._ooo)

    def ack_due(self, now: float) -> bool:
        """An acknowledgement has waited ``ack_delay`` for a frame to ride on."""
        return self._ack_since is not None and now >= self._ack_since + self.config.ack_delay

    def ack_sent(self) -> None:
        """A frame with the current ``ack_fields`` left."""
        self._ack_since = None

    def next_deadline(self) -> float | None:
        times = [s.deadline for s in self._inflight.values()]
        if self._ack_since is not None:
            times.append(self._ack_since + self.config.ack_delay)
        return min(times) if times else None

    def has_new(self) -> bool:
        """New segments are waiting for window room or a transmission slot."""
        return bool(self._pending or self._unsent) or (self._fin_queued and self._fin_seq is None)
