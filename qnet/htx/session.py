"""The HTX session: streams, flow control, PING, KEY_UPDATE, CLOSE, cadence (spec/htx.md §5).

A sans-I/O object in the shape of h2 and aioquic. Three drivers move it:

* **the network**: ``receive_data(data, now)`` returns a list of events;
* **the API**: ``open_stream``, ``send_stream_data``, ``acknowledge_received``,
  ``send_ping``, ``close``; their frames (and any that a received frame asked
  for) are collected in ``data_to_send()``;
* **timers**: ``next_deadline()`` says when to call ``handle_timer(now)``
  (rekey by time, random PINGs, idle padding).

The session never reads a clock or a socket, and takes its randomness from an
injected ``rng`` so tests are deterministic.

Contract on peer input: ``receive_data`` never raises for anything the peer
sent. A protocol error queues a CLOSE with the error's code, moves the session
to CLOSED and ends the returned list with ``SessionClosed(by_peer=False)``;
events decoded before the bad frame are still returned. Once CLOSED, input is
ignored and ``receive_data`` returns ``[]``. Misuse by the local caller raises
``HtxUsageError``.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field
from typing import Final, Protocol

from qnet.errors import QNetError
from qnet.htx.errors import FlowControlError, HtxError, MalformedFrame, StreamStateError
from qnet.htx.frames import (
    DEFAULT_OVERLAP,
    MAX_REASON,
    MAX_STREAM_DATA,
    CloseFrame,
    Frame,
    FrameReader,
    FrameSealer,
    KeyUpdateFrame,
    PingFrame,
    StreamFrame,
    WindowUpdateFrame,
)
from qnet.htx.keys import SessionKeys

log = logging.getLogger("qnet.htx.session")

#: Both sides start with this much credit per stream and for the connection.
INITIAL_WINDOW: Final = 65_535
#: No window may grow past this (as in HTTP/2); more is a FlowControlError.
MAX_WINDOW: Final = 2**31 - 1
MAX_STREAM_ID: Final = 2**32 - 1
#: Concurrent streams each side may open; a receiver refuses more.
MAX_CONCURRENT_STREAMS: Final = 256


class Role(enum.Enum):
    CLIENT = "client"  # opens odd stream ids, sends under TS_c
    SERVER = "server"  # opens even stream ids, sends under TS_s


class Rng(Protocol):
    """The part of ``random.Random`` the session uses."""

    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...
    def getrandbits(self, k: int, /) -> int: ...


class HtxUsageError(QNetError):
    """The local caller misused the session (closed session, unknown or finished stream)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HtxConfig:
    """Session tunables. Intervals are in seconds; ``None`` disables a timer.

    max_streams: concurrent streams the peer may open (refused beyond) and we may
        open (``HtxUsageError`` beyond). Bounds per-session memory.
    rekey_frames: frames sealed under one key, the KEY_UPDATE included (2^16).
    rekey_bytes: wire bytes sealed under one key before rekeying (8 GiB).
    rekey_seconds: age of a sending key before rekeying (10 minutes).
    overlap_frames: frames accepted under the peer's old key after its KEY_UPDATE.
    ping_interval: PING every ``uniform(lo, hi)`` seconds, drawn afresh each time.
    padding_gap: an idle padding frame once nothing was sent for ``uniform(lo, hi)``.
    padding_size: padding data length, ``randint(lo, hi)`` bytes.
    max_outstanding_pings: unanswered PINGs at once; ``send_ping`` skips beyond.
    stream_window / connection_window: how much the peer may have in flight to us,
        per stream and for the session. Both sides start at the spec's 65,535; a
        larger target is granted at once with a WINDOW_UPDATE, and credit returns
        once half the target is consumed. Bounds receive memory per stream and link.
    """

    max_streams: int = MAX_CONCURRENT_STREAMS
    rekey_frames: int = 2**16
    rekey_bytes: int = 8 * 2**30
    rekey_seconds: float = 600.0
    overlap_frames: int = DEFAULT_OVERLAP
    ping_interval: tuple[float, float] | None = (10.0, 40.0)
    padding_gap: tuple[float, float] | None = (2.0, 12.0)
    padding_size: tuple[int, int] = (16, 1200)
    max_outstanding_pings: int = 4
    stream_window: int = 1 << 20
    connection_window: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("stream_window", "connection_window"):
            if not INITIAL_WINDOW <= getattr(self, name) <= MAX_WINDOW:
                raise ValueError(f"{name} must be {INITIAL_WINDOW}..{MAX_WINDOW}")
        if not 1 <= self.max_streams <= MAX_CONCURRENT_STREAMS:
            raise ValueError(f"max_streams must be 1..{MAX_CONCURRENT_STREAMS}")
        if not 2 <= self.rekey_frames <= 2**16:
            raise ValueError("rekey_frames must be 2..65536")
        if not 0 < self.rekey_bytes <= 8 * 2**30 or not 0 < self.rekey_seconds <= 600:
            raise ValueError("rekey_bytes and rekey_seconds must be positive and within the spec")
        if self.overlap_frames < 0 or self.max_outstanding_pings < 1:
            raise ValueError("overlap_frames must be >= 0 and max_outstanding_pings >= 1")
        for name in ("ping_interval", "padding_gap"):
            span = getattr(self, name)
            if span is not None and not 0 < span[0] < span[1]:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo < hi (never periodic)")
        lo, hi = self.padding_size
        if not 0 <= lo <= hi <= MAX_STREAM_DATA:
            raise ValueError(f"padding_size must be within 0..{MAX_STREAM_DATA}")


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened:
    """The peer opened ``stream_id`` (its first frame on that id arrived)."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    """Data in order on ``stream_id``; ``fin`` means the peer will send no more.

    The bytes count against flow control until ``acknowledge_received``.
    """

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcked:
    """The peer echoed our PING ``token`` after ``rtt`` seconds."""

    token: bytes
    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdated:
    """The peer moved to its next sending key (``generation`` counts from 0)."""

    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed:
    """The session is CLOSED: by the peer's CLOSE, or by us on a protocol error."""

    code: int
    reason: str
    by_peer: bool


Event = StreamOpened | StreamData | PingAcked | KeyUpdated | SessionClosed


# --- streams ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    stream_id: int
    send_buf: bytearray = field(default_factory=bytearray)
    send_pos: int = 0  # first unsent byte of send_buf
    send_offset: int = 0
    send_window: int = INITIAL_WINDOW
    fin_queued: bool = False
    fin_sent: bool = False
    recv_offset: int = 0
    recv_window: int = INITIAL_WINDOW
    unacked: int = 0  # delivered, not yet acknowledged by the application
    consumed: int = 0  # acknowledged, not yet returned as credit
    fin_received: bool = False

    @property
    def pending(self) -> int:
        return len(self.send_buf) - self.send_pos


class HtxSession:
    """One side of an HTX session over an already established ``session_secret``.

    ``role`` picks the stream-id parity and which traffic secret seals our frames.
    ``now`` is the caller's monotonic clock in seconds; every later ``now`` must
    come from the same clock. Raises ``CryptoError`` for a secret that is not
    32 bytes and ``ValueError`` for a bad config.
    """

    def __init__(
        self,
        role: Role,
        session_secret: bytes,
        config: HtxConfig | None = None,
        now: float = 0.0,
        rng: Rng | None = None,
    ) -> None:
        self.role = role
        self.config = config or HtxConfig()
        self._rng: Rng = rng if rng is not None else random.SystemRandom()
        keys = SessionKeys.derive(session_secret)
        mine, theirs = (
            (keys.client, keys.server) if role is Role.CLIENT else (keys.server, keys.client)
        )
        self._sealer = FrameSealer(mine)
        self._reader = FrameReader(theirs, self.config.overlap_frames)
        self._out = bytearray()
        self._closed = False
        self._now = now
        self._key_started = now
        self._streams: dict[int, _Stream] = {}
        self._ready: dict[int, None] = {}  # insertion-ordered set: round-robin over senders
        self._next_local_id = 1 if role is Role.CLIENT else 2
        self._highest_peer_id = 0
        self._local_open = 0
        self._peer_open = 0
        self._conn_send_window = INITIAL_WINDOW
        self._conn_recv_window = INITIAL_WINDOW
        self._conn_unacked = 0
        self._conn_consumed = 0
        self._pings: dict[bytes, float] = {}
        self._ping_at = self._draw(self.config.ping_interval, now)
        self._padding_at = self._draw(self.config.padding_gap, now)
        self._sent_since_padding_armed = False
        self._grant(0, self.config.connection_window)

    # --- state ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_generation(self) -> int:
        """How many KEY_UPDATEs we have sent."""
        return self._sealer.keys.generation

    @property
    def receive_generation(self) -> int:
        """How many KEY_UPDATEs the peer has sent."""
        return self._reader.keys.generation

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` and not yet sent (0 for an unknown stream).

        A transport applies back-pressure on this: the session queues without limit.
        """
        st = self._streams.get(stream_id)
        return st.pending if st is not None else 0

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on ``stream_id`` right now (stream and connection credit)."""
        st = self._streams.get(stream_id)
        return min(st.send_window, self._conn_send_window) if st is not None else 0

    # --- network driver --------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns the events they caused (see module contract)."""
        if self._closed:
            return []
        self._now = now
        events: list[Event] = []
        try:
            self._reader.feed(data)
            while not self._closed and (frame := self._reader.next_frame()) is not None:
                self._on_frame(frame, events)
        except HtxError as exc:
            events.append(self._fail(exc))
        self._flush()
        return events

    def data_to_send(self) -> bytes:
        """Everything sealed since the last call (may be ``b""``)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- API driver -------------------------------------------------------------------------

    def open_stream(self) -> int:
        """A new local stream id (client odd, server even), announced at once with an
        empty STREAM frame so the peer sees ids in increasing order whatever order
        data is later sent in. Raises ``HtxUsageError`` when closed, at the stream
        limit, or out of ids."""
        self._check_open()
        if self._local_open >= self.config.max_streams:
            raise HtxUsageError("too many concurrent streams")
        sid = self._next_local_id
        if sid > MAX_STREAM_ID:
            raise HtxUsageError("stream ids exhausted")
        self._next_local_id += 2
        st = self._streams[sid] = _Stream(sid)
        self._local_open += 1
        self._send(StreamFrame(stream_id=sid, offset=0, data=b""))
        self._grant_stream(st)
        return sid

    def send_stream_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Queue ``data`` (and FIN) on a stream; sends what flow control allows now and
        the rest as WINDOW_UPDATEs arrive. Raises ``HtxUsageError`` when closed, for an
        unknown stream, or after FIN was queued."""
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.fin_queued:
            raise HtxUsageError(f"stream {stream_id} is not open for sending")
        st.send_buf += data
        st.fin_queued = fin
        self._ready[stream_id] = None
        self._flush()

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` delivered bytes of ``stream_id``.

        Once half a window is consumed, credit goes back to the peer in a
        WINDOW_UPDATE (per stream, and for the connection). The stream may
        already be finished; then only the connection is credited. Raises
        ``HtxUsageError`` for more than was delivered. No-op when closed.
        """
        if self._closed:
            return
        st = self._streams.get(stream_id)
        if n < 0 or n > self._conn_unacked or (st is not None and n > st.unacked):
            raise HtxUsageError("acknowledged more than was delivered")
        if st is not None:
            st.unacked -= n
            st.consumed += n
            if not st.fin_received and st.consumed >= self.config.stream_window // 2:
                self._send(WindowUpdateFrame(stream_id=stream_id, credit=st.consumed))
                st.recv_window += st.consumed
                st.consumed = 0
        self._conn_unacked -= n
        self._conn_consumed += n
        if self._conn_consumed >= self.config.connection_window // 2:
            self._send(WindowUpdateFrame(stream_id=0, credit=self._conn_consumed))
            self._conn_recv_window += self._conn_consumed
            self._conn_consumed = 0

    def _grant(self, stream_id: int, target: int) -> None:
        """Raise a receive window from the spec's initial 65,535 to ``target``."""
        extra = target - INITIAL_WINDOW
        if extra <= 0:
            return
        self._send(WindowUpdateFrame(stream_id=stream_id, credit=extra))
        if stream_id == 0:
            self._conn_recv_window += extra
        else:
            self._streams[stream_id].recv_window += extra

    def _grant_stream(self, st: _Stream) -> None:
        self._grant(st.stream_id, self.config.stream_window)

    def send_ping(self, now: float) -> bytes | None:
        """Send a PING with a fresh random token and return it; ``None`` when
        ``max_outstanding_pings`` are unanswered. Raises ``HtxUsageError`` when closed."""
        self._check_open()
        self._now = now
        if len(self._pings) >= self.config.max_outstanding_pings:
            return None
        token = self._rng.getrandbits(64).to_bytes(8, "big")
        while token in self._pings:
            token = self._rng.getrandbits(64).to_bytes(8, "big")
        self._pings[token] = now
        self._send(PingFrame(token=token))
        return token

    def close(self, code: int = 0, reason: str = "") -> None:
        """Queue CLOSE and move to CLOSED; queued stream data is dropped. Idempotent."""
        if self._closed:
            return
        self._send(CloseFrame(code=code, reason=reason.encode()[:MAX_REASON]))
        self._enter_closed()

    # --- timer driver -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run; ``None`` once CLOSED."""
        if self._closed:
            return None
        times = [self._key_started + self.config.rekey_seconds]
        times += [t for t in (self._ping_at, self._padding_at) if t is not None]
        return min(times)

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: rekey by age, a PING, idle padding.

        Calling early is harmless."""
        if self._closed:
            return
        self._now = now
        if now >= self._key_started + self.config.rekey_seconds:
            self._send_key_update()
        if self._ping_at is not None and now >= self._ping_at:
            self.send_ping(now)
            self._ping_at = self._draw(self.config.ping_interval, now)
        if self._padding_at is not None and now >= self._padding_at:
            if not self._sent_since_padding_armed:
                size = self._rng.randint(*self.config.padding_size)
                self._send(StreamFrame(stream_id=0, offset=0, data=bytes(size)))
            self._sent_since_padding_armed = False
            self._padding_at = self._draw(self.config.padding_gap, now)

    # --- receiving ------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame, events: list[Event]) -> None:
        if isinstance(frame, StreamFrame):
            if frame.stream_id != 0:  # stream 0 is padding: authenticated, then dropped
                self._on_stream_frame(frame, events)
        elif isinstance(frame, WindowUpdateFrame):
            self._on_window_update(frame)
        elif isinstance(frame, PingFrame):
            sent = self._pings.pop(frame.token, None)
            if sent is None:
                self._send(frame)  # the peer's PING: echo it
            else:
                events.append(PingAcked(token=frame.token, rtt=self._now - sent))
        elif isinstance(frame, KeyUpdateFrame):
            events.append(KeyUpdated(generation=self._reader.keys.generation))
        else:
            self._enter_closed()
            reason = frame.reason.decode("utf-8", "replace")
            log.info("htx session closed by peer: code=%#06x reason=%r", frame.code, reason)
            events.append(SessionClosed(code=frame.code, reason=reason, by_peer=True))

    def _is_local(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == (self.role is Role.CLIENT)

    def _seen(self, stream_id: int) -> bool:
        """Was ``stream_id`` ever opened (by either side)?"""
        if self._is_local(stream_id):
            return stream_id < self._next_local_id
        return stream_id <= self._highest_peer_id

    def _on_stream_frame(self, frame: StreamFrame, events: list[Event]) -> None:
        sid = frame.stream_id
        st = self._streams.get(sid)
        if st is None:
            if self._seen(sid):
                raise StreamStateError("closed_stream", f"STREAM on finished stream {sid}")
            if self._is_local(sid):
                raise StreamStateError("unknown_stream", f"peer used our stream id {sid}")
            if self._peer_open >= self.config.max_streams:
                raise StreamStateError("too_many_streams", f"stream {sid}")
            st = self._streams[sid] = _Stream(sid)
            self._highest_peer_id = sid
            self._peer_open += 1
            self._grant_stream(st)
            events.append(StreamOpened(stream_id=sid))
        if st.fin_received:
            raise StreamStateError("after_fin", f"STREAM after FIN on stream {sid}")
        if frame.offset != st.recv_offset:
            raise MalformedFrame("bad_offset", f"stream {sid} offset {frame.offset}")
        n = len(frame.data)
        if n > st.recv_window or n > self._conn_recv_window:
            raise FlowControlError("window_exceeded", f"stream {sid}: {n} bytes")
        st.recv_window -= n
        st.recv_offset += n
        st.unacked += n
        self._conn_recv_window -= n
        self._conn_unacked += n
        st.fin_received = frame.fin
        if n or frame.fin:
            events.append(StreamData(stream_id=sid, data=frame.data, fin=frame.fin))
        self._maybe_free(st)

    def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        if frame.stream_id == 0:
            self._conn_send_window += frame.credit
            if self._conn_send_window > MAX_WINDOW:
                raise FlowControlError("window_overflow", "connection")
            return
        st = self._streams.get(frame.stream_id)
        if st is None:
            if self._seen(frame.stream_id):
                return  # a late update for a finished stream
            raise StreamStateError("unknown_stream", f"WINDOW_UPDATE for {frame.stream_id}")
        st.send_window += frame.credit
        if st.send_window > MAX_WINDOW:
            raise FlowControlError("window_overflow", f"stream {frame.stream_id}")
        if st.pending or (st.fin_queued and not st.fin_sent):
            self._ready[st.stream_id] = None

    # --- sending ------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send queued stream data, one frame per stream in turn, while credit lasts."""
        while self._ready and not self._closed:
            sid = next(iter(self._ready))
            del self._ready[sid]
            st = self._streams.get(sid)
            if st is None or st.fin_sent:
                continue
            pending = st.pending
            if pending == 0 and not st.fin_queued:
                continue
            n = min(pending, st.send_window, self._conn_send_window, MAX_STREAM_DATA)
            fin = st.fin_queued and n == pending
            if n == 0 and not fin:
                if st.send_window > 0:  # blocked by the connection window: wait for it
                    self._ready[sid] = None
                    return
                continue  # blocked by its own window: the stream's update re-queues it
            with memoryview(st.send_buf) as view:
                data = bytes(view[st.send_pos : st.send_pos + n])
            self._send(StreamFrame(stream_id=sid, offset=st.send_offset, data=data, fin=fin))
            st.send_pos += n
            if st.send_pos >= 65_536 and st.send_pos * 2 >= len(st.send_buf):
                del st.send_buf[: st.send_pos]  # compact rarely: slicing stays linear
                st.send_pos = 0
            st.send_offset += n
            st.send_window -= n
            self._conn_send_window -= n
            if fin:
                st.fin_sent = True
                self._maybe_free(st)
            elif st.pending or st.fin_queued:
                self._ready[sid] = None

    def _send(self, frame: Frame) -> None:
        """Seal one frame, rekeying first when the current key is used up."""
        cfg, sealer = self.config, self._sealer
        if (
            sealer.counter >= cfg.rekey_frames - 1
            or sealer.bytes_sealed >= cfg.rekey_bytes
            or self._now - self._key_started >= cfg.rekey_seconds
        ):
            self._send_key_update()
        self._out += sealer.seal(frame)
        self._sent_since_padding_armed = True

    def _send_key_update(self) -> None:
        self._out += self._sealer.seal(KeyUpdateFrame())
        self._key_started = self._now
        self._sent_since_padding_armed = True

    # --- helpers ------------------------------------------------------------------------------

    def _maybe_free(self, st: _Stream) -> None:
        if st.fin_received and st.fin_sent:
            del self._streams[st.stream_id]
            self._ready.pop(st.stream_id, None)
            if self._is_local(st.stream_id):
                self._local_open -= 1
            else:
                self._peer_open -= 1

    def _fail(self, exc: HtxError) -> SessionClosed:
        log.info("htx session error, closing: code=%#06x %s", exc.code, exc)
        self.close(exc.code, exc.reason)
        return SessionClosed(code=exc.code, reason=exc.reason, by_peer=False)

    def _enter_closed(self) -> None:
        self._closed = True
        self._streams.clear()
        self._ready.clear()
        self._pings.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise HtxUsageError("session is closed")

    def _draw(self, span: tuple[float, float] | None, now: float) -> float | None:
        return None if span is None else now + self._rng.uniform(*span)
