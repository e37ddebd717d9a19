"""Streams and congestion control at one end of a circuit (spec/circuits.md §6–§7), sans-I/O.

A ``CircuitEndpoint`` sits at the client or at the exit, above the layer crypto:
it sees relay-cell plaintexts (``RelayCell``) and nothing else. Three drivers
move it, and it never reads a clock or touches a socket:

* **the network**: ``receive_cell(cell, now)`` (or ``receive_plaintext``) for
  every cell the far end sent, in order; it returns a list of events;
* **the application**: ``open_stream``, ``send``, ``close``, ``consumed``,
  ``resolve`` (client) and ``accept``, ``refuse``, ``answer_resolve`` (exit);
* **the sender**: ``cells_to_send(now)`` hands out the cells to seal and send:
  control cells first (never held back), then ``DATA`` cells round-robin across
  the streams that have bytes and are not stopped by ``XOFF``, as many as the
  congestion window allows.

The hot paths take and give whole batches of encoded plaintexts instead
(``receive_plaintexts``, ``plaintexts_to_send``): what the layer crypto opens and
seals in one call, without a ``RelayCell`` per cell.

There are no timers: ``now`` (seconds, one monotonic clock) only stamps the
cells whose ``SENDME`` gives an RTT sample.

Contract on peer input: ``receive_cell`` never raises for anything the far end
sent. A malformed or out-of-state cell closes the endpoint and ends the returned
list with ``ProtocolViolation``, after a ``StreamEnded(destroyed)`` for every
stream the application still holds; the caller must then send ``DESTROY``
(reason ``protocol``) for this circuit only. Once closed, input is ignored and
``cells_to_send`` returns ``[]``. Misuse by the local caller raises a
``StreamUsageError`` subclass.

Backpressure towards the application: ``send`` accepts at most
``send_room(stream_id)`` bytes and raises ``SendBufferFull`` otherwise (nothing
is queued). Room only grows when ``cells_to_send`` moves bytes out or a stream
ends, so the I/O layer re-checks ``send_room`` after each ``cells_to_send``.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from qnet.constants import CELL_PLAINTEXT_LEN, RELAY_DATA_MAX, RELAY_HEADER_LEN
from qnet.errors import CircuitError, DecodeError, QNetError
from qnet.routing.cells import RelayCell, RelayCommand, decode_relay_cell

#: Circuit-level acknowledgement step (spec §7); both ends of a circuit must agree.
SENDME_INC: Final = 31
CWND_INIT: Final = 124
CWND_MIN: Final = 62
CWND_MAX: Final = 8000
ALPHA: Final = 62
BETA: Final = 186
GAMMA: Final = 124
XOFF_HIGH: Final = 256 * 1024
XON_LOW: Final = 64 * 1024
MAX_STREAM_ID: Final = 2**16 - 1
#: Longest host name in BEGIN (DNS limit) and longest target text.
MAX_HOST_LEN: Final = 255


class Role(enum.Enum):
    CLIENT = "client"  # opens streams, sends BEGIN and RESOLVE
    EXIT = "exit"  # answers them


class EndReason(enum.IntEnum):
    """The reason byte of ``END`` (spec §6)."""

    DONE = 1
    REFUSED = 2
    UNREACHABLE = 3
    TIMEOUT = 4
    EXIT_POLICY = 5
    RESOLVE_FAILED = 6
    MISC = 7
    DESTROYED = 8


class StreamState(enum.Enum):
    OPENING = "opening"  # client: BEGIN queued, waiting for CONNECTED or END
    REQUESTED = "requested"  # exit: BEGIN received, waiting for accept() or refuse()
    OPEN = "open"
    CLOSING = "closing"  # close() with bytes still buffered: END follows the last DATA
    END_SENT = "end_sent"  # our END is out; waiting for the far end's END
    RESOLVING = "resolving"  # client: RESOLVE queued, waiting for RESOLVED
    RESOLVE_REQUESTED = "resolve_requested"  # exit: waiting for answer_resolve()


# --- errors ---------------------------------------------------------------------------------


class StreamUsageError(QNetError, ValueError):
    """The local caller misused the endpoint (wrong role, state or argument)."""


class EndpointClosed(StreamUsageError):
    """The circuit is gone (protocol violation or ``circuit_closed``); no API call works."""


class StreamClosed(StreamUsageError):
    """That stream id is not open for this call (never opened, ended, or closed by us)."""


class TooManyStreams(StreamUsageError):
    """``max_streams`` streams and resolves are already live on this circuit."""


class SendBufferFull(StreamUsageError):
    """``send`` got more than ``send_room`` bytes; nothing was queued. ``room`` is what fits."""

    def __init__(self, stream_id: int, room: int) -> None:
        self.stream_id = stream_id
        self.room = room
        super().__init__(f"stream {stream_id}: only {room} bytes of send room")


class StreamProtocolError(CircuitError):
    """The far end broke spec §6–§7 (``reason``: a short code); seen as ``ProtocolViolation``."""


# --- config -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """Tunables of one circuit end. Cell counts are relay cells; sizes are bytes.

    sendme_inc: cells per SENDME (31). A protocol constant: change it only in tests,
        and at both ends.
    cwnd_init / cwnd_min / cwnd_max: congestion window start and bounds (124 / 62 / 8000).
    alpha / beta / gamma: Vegas queue thresholds in cells (62 / 186 / 124), spec §7.
    xoff_high: unread bytes on one stream above which we send XOFF (256 KiB).
    xon_low: unread bytes below which a stopped stream gets XON (64 KiB).
    xoff_grace_cells: DATA cells a stream may still bring after our XOFF, covering
        what was in flight (2 × cwnd_max); more is ``xoff_ignored``. With it, the
        unread bytes of one stream never exceed
        ``xoff_high + xoff_grace_cells × 2019``.
    max_streams: live stream and resolve ids per circuit (256); the exit refuses
        more BEGINs with END(misc), the client gets ``TooManyStreams``.
    max_stream_buffer: bytes ``send`` may hold for one stream (512 KiB).
    max_circuit_buffer: bytes ``send`` may hold for all streams together (4 MiB).
    max_control_backlog: control cells (SENDME, XON, END, …) waiting in
        ``cells_to_send`` before the circuit is declared ``backlog`` and torn down
        (4096): the caller is not draining, or the far end floods.
    """

    sendme_inc: int = SENDME_INC
    cwnd_init: int = CWND_INIT
    cwnd_min: int = CWND_MIN
    cwnd_max: int = CWND_MAX
    alpha: int = ALPHA
    beta: int = BETA
    gamma: int = GAMMA
    xoff_high: int = XOFF_HIGH
    xon_low: int = XON_LOW
    xoff_grace_cells: int = 2 * CWND_MAX
    max_streams: int = 256
    max_stream_buffer: int = 512 * 1024
    max_circuit_buffer: int = 4 * 1024 * 1024
    max_control_backlog: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "sendme_inc",
            "cwnd_min",
            "xon_low",
            "xoff_grace_cells",
            "max_streams",
            "max_stream_buffer",
            "max_circuit_buffer",
            "max_control_backlog",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.cwnd_min <= self.cwnd_init <= self.cwnd_max:
            raise ValueError("need cwnd_min <= cwnd_init <= cwnd_max")
        if not 0 <= self.alpha < self.beta or self.gamma < 0:
            raise ValueError("need 0 <= alpha < beta and gamma >= 0")
        if not self.xon_low < self.xoff_high:
            raise ValueError("need xon_low < xoff_high")
        if self.max_streams > MAX_STREAM_ID // 2:
            raise ValueError(f"max_streams must be at most {MAX_STREAM_ID // 2}")


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequested:
    """Exit: the client asked for ``host:port``. Answer with ``accept`` or ``refuse``."""

    stream_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConnected:
    """Client: the exit connected the stream to ``address``; data now flows."""

    stream_id: int
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    """Bytes in order on ``stream_id``. They count as unread until ``consumed``."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    """The far end ended the stream (or the circuit went: ``DESTROYED``). The id is gone."""

    stream_id: int
    reason: EndReason


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveRequested:
    """Exit: the client asks for the addresses of ``name``. Answer with ``answer_resolve``."""

    stream_id: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    """Client: the answer to ``resolve(name)``; an empty ``addresses`` means it failed."""

    stream_id: int
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation:
    """The far end broke the protocol; send DESTROY(``destroy_reason``) for this circuit."""

    reason: str
    detail: str
    destroy_reason: int = 1  # spec §5: protocol


Event = (
    StreamRequested
    | StreamConnected
    | StreamData
    | StreamEnded
    | ResolveRequested
    | Resolved
    | ProtocolViolation
)


# --- targets ----------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int]:
    """Split BEGIN's ``host:port`` (IPv6 literals in brackets). Raises ``ValueError``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("bracketed host must be followed by :port")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("brackets hold an IPv6 literal only") from None
        if "%" in host:
            raise ValueError("no zone ids")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("missing :port")
        if not host or ":" in host:
            raise ValueError("empty host, or an IPv6 literal without brackets")
        if len(host.encode()) > MAX_HOST_LEN:
            raise ValueError(f"host longer than {MAX_HOST_LEN} bytes")
        if any(c.isspace() or not c.isprintable() or c in "[]/@" for c in host):
            raise ValueError("host has a forbidden character")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError("port must be decimal digits")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1..65535")
    return host, port


def format_target(host: str, port: int) -> str:
    """The BEGIN text for ``host``, ``port``: IPv6 literals are bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- per-stream state ----------------------------------------------------------------------------


#: Command, stream id, data length: the relay plaintext header (spec/cells.md).
_DATA_HEAD: Final = struct.Struct(">BHH")
_ZEROS: Final = bytes(RELAY_DATA_MAX)
#: ``receive_plaintexts`` joins consecutive DATA of one stream up to about this much.
_JOIN_MAX: Final = 64 * 1024


@dataclass(slots=True)
class _Stream:
    stream_id: int
    state: StreamState
    name: str = ""  # RESOLVE: the name asked for
    # Bytes accepted by send() and not yet in a cell: the chunks as given (no
    # growing buffer to copy on every send), ``head`` bytes of the first already out.
    chunks: deque[bytes] = field(default_factory=deque)
    head: int = 0
    pending: int = 0
    in_ring: bool = False
    peer_xoff: bool = False  # the far end asked us to stop sending DATA
    unread: int = 0  # delivered to the application, not yet consumed
    xoff_sent: bool = False
    after_xoff: int = 0  # DATA cells received since our XOFF
    app_closed: bool = False  # close()/refuse() was called: no more events

    def put(self, data: bytes) -> None:
        chunks = self.chunks
        if chunks and len(chunks[-1]) < RELAY_DATA_MAX:
            # Small sends are merged, so every chunk but the last holds at least a
            # cell's worth: a trickle of tiny reads cannot cost an object per byte.
            chunks[-1] += data
        else:
            chunks.append(data)
        self.pending += len(data)

    def take_cell(self, out: list[bytes | memoryview]) -> int:
        """Append the parts of one DATA plaintext (header, up to 2,019 bytes, zero
        padding) to ``out``, views of the queued chunks; return the data length."""
        n = min(self.pending, RELAY_DATA_MAX)
        out.append(_DATA_HEAD.pack(_C.DATA, self.stream_id, n))
        chunks = self.chunks
        need = n
        while need:
            chunk = chunks[0]
            start = self.head
            end = min(start + need, len(chunk))
            out.append(memoryview(chunk)[start:end] if start or end < len(chunk) else chunk)
            need -= end - start
            if end == len(chunk):
                chunks.popleft()
                self.head = 0
            else:
                self.head = end
        if n < RELAY_DATA_MAX:
            out.append(_ZEROS[n:])
        self.pending -= n
        return n

    def drop(self) -> None:
        self.chunks.clear()
        self.head = 0
        self.pending = 0


_STREAM_STATES: Final = frozenset(
    {
        StreamState.OPENING,
        StreamState.REQUESTED,
        StreamState.OPEN,
        StreamState.CLOSING,
        StreamState.END_SENT,
    }
)
#: States in which buffered bytes may go out as DATA (a tuple: ``in`` compares by
#: identity, where a set would call the enum's Python-level ``__hash__``).
_SENDING: Final = (StreamState.OPEN, StreamState.CLOSING)


class _Act(enum.Enum):
    NEW_STREAM = enum.auto()
    NEW_RESOLVE = enum.auto()
    CONNECTED = enum.auto()
    DATA = enum.auto()
    PEER_END = enum.auto()  # answer END, report it unless the application closed
    FINISH = enum.auto()  # the far end's END answers ours: forget the id
    IGNORE = enum.auto()  # late cell on a stream we ended
    XOFF = enum.auto()
    XON = enum.auto()
    RESOLVED = enum.auto()


_C = RelayCommand
_S = StreamState
_Key = tuple[_S | None, RelayCommand]


def _flow_rows() -> dict[_Key, _Act]:
    rows: dict[_Key, _Act] = {}
    for state in _STREAM_STATES:
        rows[(state, _C.XOFF)] = _Act.XOFF
        rows[(state, _C.XON)] = _Act.XON
    return rows


#: (stream state or None for an unknown id, command) → action. A missing pair is a
#: protocol violation. SENDME and DROP are circuit-level and handled before this.
_TRANSITIONS: Final[dict[Role, dict[_Key, _Act]]] = {
    Role.CLIENT: {
        **_flow_rows(),
        (None, _C.END): _Act.IGNORE,
        (_S.OPENING, _C.CONNECTED): _Act.CONNECTED,
        (_S.OPENING, _C.END): _Act.PEER_END,
        (_S.OPEN, _C.DATA): _Act.DATA,
        (_S.OPEN, _C.END): _Act.PEER_END,
        (_S.CLOSING, _C.DATA): _Act.IGNORE,
        (_S.CLOSING, _C.END): _Act.PEER_END,
        (_S.END_SENT, _C.CONNECTED): _Act.IGNORE,
        (_S.END_SENT, _C.DATA): _Act.IGNORE,
        (_S.END_SENT, _C.END): _Act.FINISH,
        (_S.RESOLVING, _C.RESOLVED): _Act.RESOLVED,
    },
    Role.EXIT: {
        **_flow_rows(),
        (None, _C.BEGIN): _Act.NEW_STREAM,
        (None, _C.RESOLVE): _Act.NEW_RESOLVE,
        (None, _C.END): _Act.IGNORE,
        (_S.REQUESTED, _C.END): _Act.PEER_END,
        (_S.OPEN, _C.DATA): _Act.DATA,
        (_S.OPEN, _C.END): _Act.PEER_END,
        (_S.CLOSING, _C.DATA): _Act.IGNORE,
        (_S.CLOSING, _C.END): _Act.PEER_END,
        (_S.END_SENT, _C.DATA): _Act.IGNORE,
        (_S.END_SENT, _C.END): _Act.FINISH,
    },
}

#: Commands whose data must be empty.
_EMPTY: Final = frozenset({_C.XOFF, _C.XON, _C.SENDME})


class CircuitEndpoint:
    """Streams and congestion control at the client or exit end of one circuit.

    ``now`` is the caller's monotonic clock in seconds. Raises ``ValueError``
    for a bad config.
    """

    def __init__(self, role: Role, now: float, config: StreamConfig | None = None) -> None:
        self.role = role
        self.config = config if config is not None else StreamConfig()
        self._table = _TRANSITIONS[role]
        self._streams: dict[int, _Stream] = {}
        self._ring: deque[int] = deque()
        self._control: deque[RelayCell] = deque()
        self._buffered = 0
        self._next_id = 1
        self._closed = False
        self._created = now
        # congestion control (our sending direction)
        cfg = self.config
        self._cwnd = cfg.cwnd_init
        self._inflight = 0
        self._sent = 0  # counted cells sent (all but SENDME)
        self._marks: deque[float] = deque()  # send time of every sendme_inc-th cell, unacked
        self._min_rtt: float | None = None
        self._last_rtt: float | None = None
        self._slow_start = True
        self._round_acked = 0
        self._round_target = self._cwnd
        self._cwnd_full = False
        # the far end's sending direction
        self._received = 0  # counted cells received

    # --- observation -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cwnd(self) -> int:
        """Congestion window, in cells."""
        return self._cwnd

    @property
    def inflight(self) -> int:
        """Cells sent and not yet acknowledged by a SENDME."""
        return self._inflight

    @property
    def in_slow_start(self) -> bool:
        return self._slow_start

    @property
    def min_rtt(self) -> float | None:
        return self._min_rtt

    @property
    def last_rtt(self) -> float | None:
        return self._last_rtt

    @property
    def buffered(self) -> int:
        """Bytes accepted by ``send`` and not yet in a cell, all streams together."""
        return self._buffered

    @property
    def control_backlog(self) -> int:
        return len(self._control)

    @property
    def stream_ids(self) -> list[int]:
        """Live ids (streams and resolves), including those waiting for the far end's END."""
        return sorted(self._streams)

    def stream_state(self, stream_id: int) -> StreamState | None:
        st = self._streams.get(stream_id)
        return st.state if st is not None else None

    def send_buffered(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.pending if st is not None else 0

    def unread(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.unread if st is not None else 0

    def peer_stopped(self, stream_id: int) -> bool:
        """True while the far end's XOFF holds back our DATA on ``stream_id``."""
        st = self._streams.get(stream_id)
        return st is not None and st.peer_xoff

    def send_room(self, stream_id: int) -> int:
        """Bytes ``send`` would accept now on ``stream_id`` (0 if it cannot take any)."""
        st = self._streams.get(stream_id)
        if self._closed or st is None or st.app_closed:
            return 0
        if st.state not in (StreamState.OPENING, StreamState.OPEN):
            return 0
        cfg = self.config
        return max(
            0, min(cfg.max_stream_buffer - st.pending, cfg.max_circuit_buffer - self._buffered)
        )

    # --- network side ----------------------------------------------------------------------

    def receive_plaintext(self, plain: bytes, now: float) -> list[Event]:
        """Decode a 2,024-byte relay plaintext and ``receive_cell`` it.

        A malformed plaintext is a protocol violation like any other bad cell.
        """
        if self._closed:
            return []
        try:
            cell = decode_relay_cell(plain)
        except DecodeError as exc:
            return self._fail(StreamProtocolError("malformed", str(exc)))
        return self.receive_cell(cell, now)

    def receive_plaintexts(self, plains: bytes, now: float) -> list[Event]:
        """``receive_plaintext`` over consecutive 2,024-byte plaintexts, in order (a
        batch the layer crypto opened); a length that is not a multiple raises
        ``ValueError``.

        The same cells, state and violations as one at a time, except that DATA in
        a row on one stream (no other event between) comes out as one ``StreamData``
        (up to about 64 KiB).
        """
        if len(plains) % CELL_PLAINTEXT_LEN:
            raise ValueError(f"not a multiple of {CELL_PLAINTEXT_LEN} bytes")
        if not isinstance(plains, bytes):
            plains = bytes(plains)
        events: list[Event] = []
        view = memoryview(plains)
        parts: list[memoryview] = []
        joined = 0
        part_st: _Stream | None = None
        cfg = self.config
        streams = self._streams
        control = self._control
        data_cmd = int(_C.DATA)
        unpack_head = _DATA_HEAD.unpack_from
        for start in range(0, len(plains), CELL_PLAINTEXT_LEN):
            if self._closed:
                break
            # Fast path: a well-formed DATA cell on an open stream, nothing to refuse.
            command, sid, length = unpack_head(plains, start)
            st = streams.get(sid) if command == data_cmd else None
            cell_end = start + CELL_PLAINTEXT_LEN
            end = start + RELAY_HEADER_LEN + length
            if (
                st is None
                or st.state is not StreamState.OPEN
                or length > RELAY_DATA_MAX
                or (st.xoff_sent and st.after_xoff >= cfg.xoff_grace_cells)
                or (end < cell_end and plains.count(0, end, cell_end) != cell_end - end)
            ):
                try:
                    cell = decode_relay_cell(plains[start:cell_end])
                except DecodeError as exc:
                    more = self._fail(StreamProtocolError("malformed", str(exc)))
                else:
                    more = self.receive_cell(cell, now)
                if more:
                    if parts:
                        assert part_st is not None
                        events.append(_joined_data(part_st.stream_id, parts))
                        parts, joined = [], 0
                    events += more
                continue
            # What _receive and _on_data do for it.
            self._received += 1
            if self._received % cfg.sendme_inc == 0:
                control.append(RelayCell(command=_C.SENDME))
            if st.xoff_sent:
                st.after_xoff += 1
            if length:
                st.unread += length
                if part_st is not st or joined >= _JOIN_MAX:
                    if parts:
                        assert part_st is not None
                        events.append(_joined_data(part_st.stream_id, parts))
                        parts, joined = [], 0
                    part_st = st
                parts.append(view[start + RELAY_HEADER_LEN : end])
                joined += length
                if not st.xoff_sent and st.unread > cfg.xoff_high and not st.app_closed:
                    st.xoff_sent = True
                    st.after_xoff = 0
                    control.append(RelayCell(command=_C.XOFF, stream_id=st.stream_id))
            if len(control) > cfg.max_control_backlog:
                if parts:
                    assert part_st is not None
                    events.append(_joined_data(part_st.stream_id, parts))
                    parts, joined = [], 0
                events += self._fail(
                    StreamProtocolError("backlog", f"{len(control)} control cells unsent")
                )
                break
        if parts:
            assert part_st is not None
            events.append(_joined_data(part_st.stream_id, parts))
        return events

    def receive_cell(self, cell: RelayCell, now: float) -> list[Event]:
        """Handle one relay cell from the far end, in circuit order.

        Returns the events it caused, possibly none. Never raises for anything
        the far end sent: a bad cell ends the list with ``ProtocolViolation``
        and closes the endpoint. After that (or ``circuit_closed``) returns ``[]``.
        """
        if self._closed:
            return []
        events: list[Event] = []
        try:
            self._receive(cell, now, events)
        except StreamProtocolError as exc:
            return events + self._fail(exc)
        if len(self._control) > self.config.max_control_backlog:
            return events + self._fail(
                StreamProtocolError("backlog", f"{len(self._control)} control cells unsent")
            )
        return events

    def circuit_closed(self) -> list[Event]:
        """The circuit went away (DESTROY, link loss, or our own teardown).

        Returns ``StreamEnded(destroyed)`` for every stream the application still
        holds and closes the endpoint. Calling it again returns ``[]``.
        """
        if self._closed:
            return []
        self._closed = True
        return self._destroy_all()

    def cells_to_send(self, now: float, limit: int | None = None) -> list[RelayCell]:
        """Cells to seal and send now, in this order; at most ``limit`` if given.

        Control cells (SENDME, BEGIN, CONNECTED, END, XON, XOFF, RESOLVE(D)) all go
        out first and are never held back by the window, though every one but
        SENDME counts as in flight. DATA follows, one cell per stream in turn,
        while fewer than ``cwnd`` cells are in flight.
        """
        plains = self.plaintexts_to_send(now, limit)
        return [
            decode_relay_cell(plains[i : i + CELL_PLAINTEXT_LEN])
            for i in range(0, len(plains), CELL_PLAINTEXT_LEN)
        ]

    def plaintexts_to_send(self, now: float, limit: int | None = None) -> bytes:
        """``cells_to_send`` as their 2,024-byte plaintexts, joined (what a sealing
        batch takes): the same cells, order and accounting, without a ``RelayCell``
        per DATA cell."""
        out: list[bytes | memoryview] = []  # parts of the plaintexts, joined once at the end
        if self._closed:
            return b""
        room = limit if limit is not None else -1
        while self._control and room != 0:
            cell = self._control.popleft()
            out.append(cell.encode())
            self._count_sent(cell.command, now)
            room -= 1
        ring = self._ring
        streams = self._streams
        sendme_inc = self.config.sendme_inc
        while ring and room != 0 and self._inflight < self._cwnd:
            sid = ring.popleft()
            st = streams.get(sid)
            if st is None:
                continue
            st.in_ring = False
            if st.state not in _SENDING or st.peer_xoff or not st.pending:
                continue
            self._buffered -= st.take_cell(out)
            # _count_sent(DATA), inline on the hot path
            self._sent += 1
            self._inflight += 1
            if self._sent % sendme_inc == 0:
                self._marks.append(now)
            room -= 1
            if st.pending:
                ring.append(sid)
                st.in_ring = True
            elif st.state is StreamState.CLOSING:
                # END after the last DATA; a control cell, so not held by the window.
                st.state = StreamState.END_SENT
                if room != 0:
                    out.append(_end_cell(sid, EndReason.DONE).encode())
                    self._count_sent(_C.END, now)
                    room -= 1
                else:
                    self._control.append(_end_cell(sid, EndReason.DONE))
        if ring and self._inflight >= self._cwnd:
            self._cwnd_full = True
        return b"".join(out)

    # --- application side ------------------------------------------------------------------

    def open_stream(self, target: str) -> int:
        """Client: open a stream to ``host:port`` and return its id (BEGIN is queued).

        Bytes may be ``send``-ed at once; they go out after CONNECTED. Raises
        ``ValueError`` for a bad target, ``TooManyStreams``, ``EndpointClosed``.
        """
        self._check_role(Role.CLIENT, "open_stream")
        parse_target(target)
        data = target.encode()
        sid = self._new_id()
        self._streams[sid] = _Stream(sid, StreamState.OPENING)
        self._control.append(RelayCell(command=_C.BEGIN, stream_id=sid, data=data))
        return sid

    def resolve(self, name: str) -> int:
        """Client: ask the exit for the addresses of ``name``; the answer is ``Resolved``."""
        self._check_role(Role.CLIENT, "resolve")
        data = name.encode()
        if (
            not name
            or len(data) > MAX_HOST_LEN
            or any(not c.isprintable() or c.isspace() for c in name)
        ):
            raise ValueError("resolve needs a host name of 1..255 printable bytes")
        sid = self._new_id()
        self._streams[sid] = _Stream(sid, StreamState.RESOLVING, name=name)
        self._control.append(RelayCell(command=_C.RESOLVE, stream_id=sid, data=data))
        return sid

    def accept(self, stream_id: int, bound_address: str) -> None:
        """Exit: the connection for ``stream_id`` is up; send CONNECTED(``bound_address``)."""
        self._check_role(Role.EXIT, "accept")
        st = self._live(stream_id, StreamState.REQUESTED)
        data = bound_address.encode()
        if len(data) > RELAY_DATA_MAX:
            raise ValueError("bound_address too long for one cell")
        st.state = StreamState.OPEN
        self._control.append(RelayCell(command=_C.CONNECTED, stream_id=stream_id, data=data))
        self._schedule(st)

    def refuse(self, stream_id: int, reason: EndReason) -> None:
        """Exit: the stream cannot be opened; END(``reason``) tells the client why."""
        self._check_role(Role.EXIT, "refuse")
        reason = EndReason(reason)
        self._live(stream_id, StreamState.REQUESTED)
        self._end_now(stream_id, reason)

    def answer_resolve(self, stream_id: int, addresses: list[str] | tuple[str, ...]) -> None:
        """Exit: answer a ``ResolveRequested`` (empty = failed); the id is then free.

        Addresses that do not fit in one cell are left out.
        """
        self._check_role(Role.EXIT, "answer_resolve")
        self._live(stream_id, StreamState.RESOLVE_REQUESTED)
        lines: list[bytes] = []
        size = 0
        for addr in addresses:
            raw = str(addr).encode()
            if not raw or b"\n" in raw:
                raise ValueError(f"bad address {addr!r}")
            if size + len(raw) + (1 if lines else 0) > RELAY_DATA_MAX:
                break
            size += len(raw) + (1 if lines else 0)
            lines.append(raw)
        del self._streams[stream_id]
        self._control.append(
            RelayCell(command=_C.RESOLVED, stream_id=stream_id, data=b"\n".join(lines))
        )

    def send(self, stream_id: int, data: bytes) -> None:
        """Queue ``data`` on the stream; it leaves in DATA cells of at most 2,019 bytes.

        All or nothing: raises ``SendBufferFull`` if ``len(data) > send_room``,
        ``StreamClosed`` if the stream does not take data (ended, closed, or an
        exit stream not yet accepted), ``EndpointClosed`` after the circuit went.
        """
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.app_closed or st.state not in (StreamState.OPENING, StreamState.OPEN):
            raise StreamClosed(f"stream {stream_id} does not take data")
        if not data:
            return
        room = self.send_room(stream_id)
        if len(data) > room:
            raise SendBufferFull(stream_id, room)
        st.put(data if type(data) is bytes else bytes(data))
        self._buffered += len(data)
        self._schedule(st)

    def close(self, stream_id: int, reason: EndReason = EndReason.DONE) -> None:
        """End the stream. No more events come for it.

        ``DONE`` is graceful: buffered bytes go first, then END(done). Any other
        reason aborts: the buffer is dropped and END(``reason``) goes at once, as
        does any close before CONNECTED. Closing an id that is already gone (or
        already closed) does nothing; a resolve cannot be closed.
        """
        self._check_open()
        reason = EndReason(reason)
        st = self._streams.get(stream_id)
        if st is None or st.app_closed:
            return
        if st.state in (StreamState.RESOLVING, StreamState.RESOLVE_REQUESTED):
            raise StreamUsageError("a resolve cannot be closed")
        if st.state is StreamState.END_SENT:
            st.app_closed = True
            return
        if st.state is StreamState.CLOSING:
            st.app_closed = True
            if reason is not EndReason.DONE:
                self._end_now(stream_id, reason)
            return
        st.app_closed = True
        if reason is EndReason.DONE and st.state is StreamState.OPEN and st.pending:
            st.state = StreamState.CLOSING
            self._schedule(st)
        else:
            self._end_now(stream_id, reason)

    def consumed(self, stream_id: int, n: int) -> None:
        """The application read ``n`` bytes of ``StreamData`` on the stream.

        Drives XOFF/XON. A stream that is already gone is ignored (its bytes are
        still in the application's hands); ``n`` above the unread count raises
        ``StreamUsageError``.
        """
        if n < 0:
            raise StreamUsageError("n must be >= 0")
        st = self._streams.get(stream_id)
        if self._closed or st is None:
            return
        if n > st.unread:
            raise StreamUsageError(f"stream {stream_id}: consumed {n} > unread {st.unread}")
        st.unread -= n
        if st.xoff_sent and st.unread < self.config.xon_low and not st.app_closed:
            st.xoff_sent = False
            st.after_xoff = 0
            self._control.append(RelayCell(command=_C.XON, stream_id=stream_id))

    # --- internals: receive --------------------------------------------------------------------

    def _receive(self, cell: RelayCell, now: float, events: list[Event]) -> None:
        cmd = cell.command
        if cmd in _EMPTY and cell.data:
            raise StreamProtocolError("bad_data", f"{cmd.name} carries no data")
        if cmd is _C.SENDME:
            if cell.stream_id:
                raise StreamProtocolError("bad_stream", "SENDME is circuit-level (stream 0)")
            self._on_sendme(now)
            return
        # Every other cell counts towards our next SENDME as soon as it is handled.
        self._received += 1
        if self._received % self.config.sendme_inc == 0:
            self._control.append(RelayCell(command=_C.SENDME))
        if cmd is _C.DROP:
            return
        sid = cell.stream_id
        if sid == 0:
            raise StreamProtocolError("bad_stream", f"{cmd.name} needs a stream id")
        st = self._streams.get(sid)
        act = self._table.get((st.state if st is not None else None, cmd))
        if act is None:
            where = st.state.value if st is not None else "unknown stream"
            raise StreamProtocolError(
                "unexpected_cell", f"{cmd.name} on stream {sid} ({where}) at the {self.role.value}"
            )
        if act is _Act.IGNORE:
            return
        if act is _Act.NEW_STREAM:
            self._on_begin(sid, cell.data, events)
        elif act is _Act.NEW_RESOLVE:
            self._on_resolve(sid, cell.data, events)
        else:
            assert st is not None
            self._on_stream_cell(act, st, cell, events)

    def _on_stream_cell(self, act: _Act, st: _Stream, cell: RelayCell, events: list[Event]) -> None:
        sid = st.stream_id
        if act is _Act.DATA:
            self._on_data(st, cell.data, events)
        elif act is _Act.CONNECTED:
            st.state = StreamState.OPEN
            events.append(StreamConnected(stream_id=sid, address=_text(cell.data, "CONNECTED")))
            self._schedule(st)
        elif act is _Act.PEER_END:
            reason = _end_reason(cell.data)
            if not st.app_closed:
                events.append(StreamEnded(stream_id=sid, reason=reason))
            self._forget(st)
            self._control.append(_end_cell(sid, EndReason.DONE))
        elif act is _Act.FINISH:
            _end_reason(cell.data)
            self._forget(st)
        elif act is _Act.XOFF:
            st.peer_xoff = True
        elif act is _Act.XON:
            st.peer_xoff = False
            self._schedule(st)
        elif act is _Act.RESOLVED:
            text = _text(cell.data, "RESOLVED")
            addresses = tuple(text.split("\n")) if text else ()
            if any(not a for a in addresses):
                raise StreamProtocolError("bad_data", "RESOLVED has an empty line")
            del self._streams[sid]
            events.append(Resolved(stream_id=sid, name=st.name, addresses=addresses))
        else:  # pragma: no cover - the table holds no other action
            raise AssertionError(act)

    def _on_data(self, st: _Stream, data: bytes, events: list[Event]) -> None:
        if st.xoff_sent:
            st.after_xoff += 1
            if st.after_xoff > self.config.xoff_grace_cells:
                raise StreamProtocolError(
                    "xoff_ignored", f"stream {st.stream_id}: {st.after_xoff} cells after XOFF"
                )
        if not data:
            return
        st.unread += len(data)
        events.append(StreamData(stream_id=st.stream_id, data=data))
        if not st.xoff_sent and st.unread > self.config.xoff_high and not st.app_closed:
            st.xoff_sent = True
            st.after_xoff = 0
            self._control.append(RelayCell(command=_C.XOFF, stream_id=st.stream_id))

    def _on_begin(self, sid: int, data: bytes, events: list[Event]) -> None:
        text = _text(data, "BEGIN")
        try:
            host, port = parse_target(text)
        except ValueError as exc:
            raise StreamProtocolError("bad_target", str(exc)) from None
        if len(self._streams) >= self.config.max_streams:
            # No record: the client's answering END finds an unknown id, which is ignored.
            self._control.append(_end_cell(sid, EndReason.MISC))
            return
        self._streams[sid] = _Stream(sid, StreamState.REQUESTED)
        events.append(StreamRequested(stream_id=sid, host=host, port=port))

    def _on_resolve(self, sid: int, data: bytes, events: list[Event]) -> None:
        name = _text(data, "RESOLVE")
        if not name or len(data) > MAX_HOST_LEN or "\n" in name:
            raise StreamProtocolError("bad_data", "RESOLVE needs a host name")
        if len(self._streams) >= self.config.max_streams:
            self._control.append(RelayCell(command=_C.RESOLVED, stream_id=sid))
            return
        self._streams[sid] = _Stream(sid, StreamState.RESOLVE_REQUESTED, name=name)
        events.append(ResolveRequested(stream_id=sid, name=name))

    def _on_sendme(self, now: float) -> None:
        if not self._marks:
            raise StreamProtocolError(
                "unexpected_sendme", f"SENDME with {self._inflight} cells in flight"
            )
        cfg = self.config
        rtt = max(0.0, now - self._marks.popleft())
        self._inflight -= cfg.sendme_inc
        self._last_rtt = rtt
        if self._min_rtt is None or rtt < self._min_rtt:
            self._min_rtt = rtt
        self._round_acked += cfg.sendme_inc
        if self._round_acked >= self._round_target:
            self._update_cwnd(rtt)
            self._round_acked = 0
            self._round_target = self._cwnd
            self._cwnd_full = False

    def _update_cwnd(self, rtt: float) -> None:
        """One Vegas step per round (a cwnd's worth of acknowledged cells), spec §7."""
        cfg = self.config
        assert self._min_rtt is not None
        queue = self._cwnd * (rtt - self._min_rtt) / rtt if rtt > 0 else 0.0
        cwnd = self._cwnd
        if self._slow_start:
            if queue < cfg.gamma:
                if self._cwnd_full:
                    cwnd += cwnd // 2
            else:
                self._slow_start = False
                cwnd = round(cwnd - queue) + cfg.gamma
        elif queue < cfg.alpha:
            if self._cwnd_full:
                cwnd += cfg.sendme_inc
        elif queue > cfg.beta:
            cwnd -= cfg.sendme_inc
        self._cwnd = min(cfg.cwnd_max, max(cfg.cwnd_min, cwnd))

    # --- internals: send -----------------------------------------------------------------------

    def _count_sent(self, command: RelayCommand, now: float) -> None:
        if command is _C.SENDME:
            return
        self._sent += 1
        self._inflight += 1
        if self._sent % self.config.sendme_inc == 0:
            self._marks.append(now)

    def _schedule(self, st: _Stream) -> None:
        if not st.in_ring and st.pending and st.state in _SENDING and not st.peer_xoff:
            st.in_ring = True
            self._ring.append(st.stream_id)

    def _end_now(self, sid: int, reason: EndReason) -> None:
        st = self._streams[sid]
        st.app_closed = True
        self._drop_buffer(st)
        st.state = StreamState.END_SENT
        self._control.append(_end_cell(sid, reason))

    def _drop_buffer(self, st: _Stream) -> None:
        self._buffered -= st.pending
        st.drop()

    def _forget(self, st: _Stream) -> None:
        self._drop_buffer(st)
        if st.in_ring:
            self._ring.remove(st.stream_id)
        del self._streams[st.stream_id]

    def _new_id(self) -> int:
        if len(self._streams) >= self.config.max_streams:
            raise TooManyStreams(f"{len(self._streams)} ids live on this circuit")
        sid = self._next_id
        while sid in self._streams:
            sid = sid % MAX_STREAM_ID + 1
        self._next_id = sid % MAX_STREAM_ID + 1
        return sid

    def _live(self, stream_id: int, state: StreamState) -> _Stream:
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.state is not state:
            raise StreamClosed(f"stream {stream_id} is not {state.value}")
        return st

    def _check_open(self) -> None:
        if self._closed:
            raise EndpointClosed("the circuit is closed")

    def _check_role(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise StreamUsageError(f"{what} is for the {role.value} end")
        self._check_open()

    def _fail(self, exc: StreamProtocolError) -> list[Event]:
        self._closed = True
        events = self._destroy_all()
        events.append(ProtocolViolation(reason=exc.reason, detail=str(exc)))
        return events

    def _destroy_all(self) -> list[Event]:
        events: list[Event] = [
            StreamEnded(stream_id=sid, reason=EndReason.DESTROYED)
            for sid, st in sorted(self._streams.items())
            if not st.app_closed
        ]
        self._streams.clear()
        self._ring.clear()
        self._control.clear()
        self._buffered = 0
        return events


def _joined_data(sid: int, parts: list[memoryview]) -> StreamData:
    return StreamData(stream_id=sid, data=b"".join(parts) if len(parts) > 1 else bytes(parts[0]))


def _end_cell(sid: int, reason: EndReason) -> RelayCell:
    return RelayCell(command=_C.END, stream_id=sid, data=bytes([reason]))


def _end_reason(data: bytes) -> EndReason:
    if len(data) != 1:
        raise StreamProtocolError("bad_data", "END carries exactly one reason byte")
    try:
        return EndReason(data[0])
    except ValueError:
        return EndReason.MISC  # spec §6: an unknown reason reads as misc


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamProtocolError("bad_data", f"{what} text is not UTF-8") from None
