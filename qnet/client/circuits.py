"""Client circuits and streams in Trio (spec/circuits.md), over ``ClientCircuits``.

    manager = CircuitManager(path_source, config=CircuitConfig())
    await nursery.start(manager.run)
    circuit = await manager.circuit_for(isolation_key)   # reuse, or build with retries
    stream = await circuit.open_stream("example.com", 80) # a trio HalfCloseableStream
    await stream.send_all(b"GET / HTTP/1.0\\r\\n\\r\\n")
    data = await stream.receive_some()

Layering. ``CircuitManager`` owns a ``LinkManager`` (one HTX link per entry,
dialed with a fresh key, reused by every circuit through that entry) and one
sans-I/O ``ClientCircuits`` table per link. Every circuit owns a
``CircuitEndpoint(role=CLIENT)`` and one pump task that drains
``cells_to_send`` into the link. Units read from a link are decrypted by the
table and fed to the endpoint at once, in the link's reader task, which never
blocks on a write (anything to send is left to the circuit's pump, or to a
background task for a DESTROY), so a slow link in one direction cannot stall
the other.

Failures, by what the caller should do:

* ``CircuitBuildError(reason)``: no circuit came out of ``build``; try another
  path (``build_with_retry`` does). ``reason`` is ``timeout``, ``link_failed``
  (dial failed or the link died during the build), ``destroyed:<why>`` (a hop
  refused), ``bad_reply`` or ``no_path``.
* ``CircuitClosedError(reason)``: an open circuit went away (DESTROY from a hop,
  link loss, a protocol violation, or ``aclose``); ``reason`` is the
  ``DestroyReason``. Build a new circuit.
* ``StreamRefused(reason)``: the exit answered BEGIN (or RESOLVE) with an
  ``EndReason`` other than success; the circuit is still fine.

Streams signal the end of the stream the trio way: ``receive_some`` returns
``b""`` after END(done) and raises ``trio.BrokenResourceError`` (chained from a
``StreamRefused`` or ``CircuitClosedError``) for any other end.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from qnet.constants import MAX_HOPS
from qnet.errors import QNetError
from qnet.htx.session import HtxUsageError
from qnet.htx.transport import PeerInfo
from qnet.node.links import DIAL_ERRORS, CellLink, LinkManager
from qnet.routing.circuit import HopRoute
from qnet.routing.client import (
    CellReceived,
    CellsReceived,
    CircuitClosed,
    CircuitFailed,
    CircuitOpened,
    ClientCircuits,
)
from qnet.routing.client import Event as TableEvent
from qnet.routing.relay import DestroyReason
from qnet.routing.streams import (
    CircuitEndpoint,
    EndReason,
    ProtocolViolation,
    Resolved,
    Role,
    StreamConfig,
    StreamConnected,
    StreamData,
    StreamEnded,
    format_target,
)
from qnet.routing.streams import Event as StreamEvent

__all__ = [
    "Circuit",
    "CircuitBuildError",
    "CircuitClosedError",
    "CircuitConfig",
    "CircuitManager",
    "CircuitStream",
    "ClientError",
    "Path",
    "PathSource",
    "StreamRefused",
]

log = logging.getLogger("qnet.client")

#: Largest chunk ``CircuitStream.receive_some`` returns when no ``max_bytes`` is given.
DEFAULT_RECEIVE_SIZE: Final = 64 * 1024


# --- errors -----------------------------------------------------------------------------------


class ClientError(QNetError):
    """Base of the client's circuit and stream errors."""


class CircuitBuildError(ClientError):
    """No circuit came out of a build. ``reason`` is a short code (see the module doc)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        #: Every failure behind this one, in order (``build_with_retry``).
        self.attempts: tuple[CircuitBuildError, ...] = ()
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CircuitClosedError(ClientError):
    """The circuit is gone; ``reason`` is the ``DestroyReason`` (ours or a hop's)."""

    def __init__(self, reason: DestroyReason, detail: str = "") -> None:
        self.reason = reason
        text = f"circuit closed ({reason.name.lower()})"
        super().__init__(f"{text}: {detail}" if detail else text)


class StreamRefused(ClientError):
    """The exit ended a stream or resolve with ``reason`` instead of serving it."""

    def __init__(self, reason: EndReason, detail: str = "") -> None:
        self.reason = reason
        text = f"stream refused ({reason.name.lower()})"
        super().__init__(f"{text}: {detail}" if detail else text)


# --- configuration and paths -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitConfig:
    """Client circuit tunables. Times are seconds.

    build_timeout: a build without CREATED (dial included) fails with ``timeout`` (10).
    build_attempts: paths ``build_with_retry`` tries before giving up (3).
    max_dirtiness: a circuit takes no new streams this long after its first
        stream was opened (600, spec/circuits.md §5); existing streams go on.
    stream_timeout: BEGIN without CONNECTED or END, or RESOLVE without RESOLVED,
        gives ``StreamRefused(TIMEOUT)`` (60).
    dial_timeout: HTX handshake limit for a new link to an entry (10).
    send_batch: relay cells sealed and written per link write (64).
    stream_config: the ``CircuitEndpoint`` tunables of every circuit.
    """

    build_timeout: float = 10.0
    build_attempts: int = 3
    max_dirtiness: float = 600.0
    stream_timeout: float = 60.0
    dial_timeout: float = 10.0
    send_batch: int = 64
    stream_config: StreamConfig = field(default_factory=StreamConfig)

    def __post_init__(self) -> None:
        for name in ("build_timeout", "max_dirtiness", "stream_timeout", "dial_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("build_attempts", "send_batch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Path:
    """A circuit path: every hop's route (entry first, exit last) and how to dial the entry."""

    hops: tuple[HopRoute, ...]
    entry: PeerInfo

    def __post_init__(self) -> None:
        if not isinstance(self.hops, tuple) or not 1 <= len(self.hops) <= MAX_HOPS:
            raise ValueError(f"hops must be a tuple of 1..{MAX_HOPS} HopRoute")
        if not all(isinstance(h, HopRoute) for h in self.hops):
            raise TypeError("hops must be HopRoute objects")
        if not isinstance(self.entry, PeerInfo):
            raise TypeError("entry must be a PeerInfo")

    @property
    def entry_id(self) -> bytes:
        return self.hops[0].node_id


#: Gives a fresh path on every call (``build_with_retry`` calls it once per attempt).
#: It may raise ``LookupError`` when no path can be made (``CircuitBuildError("no_path")``).
PathSource = Callable[[], Path]


# --- streams ----------------------------------------------------------------------------------


class CircuitStream(trio.abc.HalfCloseableStream):
    """One TCP stream through a circuit's exit. Made by ``Circuit.open_stream``.

    ``send_all`` waits for send room (the circuit's window and the endpoint's
    buffer limits), so it may return before the bytes left the machine; if it
    is cancelled, a prefix of ``data`` may have been queued. ``receive_some``
    tells the endpoint what the application has read (driving XON/XOFF). The
    wire protocol has no half-close (spec/circuits.md §6.1): ``send_eof`` only
    forbids further sends locally and is not seen by the exit; ``aclose`` sends
    END(done) after the bytes already queued.
    """

    def __init__(self, circuit: Circuit, stream_id: int, target: str) -> None:
        self.circuit = circuit
        self.stream_id = stream_id
        self.target = target
        #: The address the exit connected to (CONNECTED), once open.
        self.address: str | None = None
        #: Why the stream ended, once it has (``DESTROYED`` when the circuit went).
        self.end_reason: EndReason | None = None
        self._cause: ClientError | None = None
        self._chunks: deque[bytes] = deque()
        self._readable = trio.Event()
        self._settled = trio.Event()  # CONNECTED or END arrived
        self._eof_sent = False
        self._closed = False
        self._sending = False
        self._receiving = False

    # events from the circuit

    def _on_connected(self, address: str) -> None:
        self.address = address
        self._settled.set()

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _on_end(self, reason: EndReason, cause: ClientError) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self._cause = cause
        self._settled.set()
        self._readable.set()

    # trio.abc.HalfCloseableStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of ``data`` for the exit, waiting for room as needed.

        Raises ``trio.ClosedResourceError`` after ``aclose`` or ``send_eof``,
        ``trio.BrokenResourceError`` once the stream ended (cause chained),
        ``trio.BusyResourceError`` if another task is in ``send_all``.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_send_open()
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            view = memoryview(data).cast("B")
            pos = 0
            endpoint = self.circuit.endpoint
            while pos < len(view):
                self._check_send_open()
                room = endpoint.send_room(self.stream_id)
                if room == 0:
                    await self.circuit._wait_room()
                    continue
                n = min(room, len(view) - pos)
                endpoint.send(self.stream_id, bytes(view[pos : pos + n]))
                pos += n
                self.circuit._wake()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        while not self._closed and self.end_reason is None:
            if self.circuit.endpoint.send_room(self.stream_id) > 0:
                await trio.lowlevel.checkpoint()
                return
            await self.circuit._wait_room()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """Forbid further ``send_all`` (local only: the protocol has no half-close)."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._eof_sent = True
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes from the exit (at most ``max_bytes``; 64 KiB by default).

        ``b""`` after END(done). Raises ``trio.BrokenResourceError`` for any other
        end, chained from ``StreamRefused`` or ``CircuitClosedError``;
        ``trio.ClosedResourceError`` after ``aclose``; ``trio.BusyResourceError``
        if another task is receiving. Cancellation loses no bytes.
        """
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            while not self._chunks:
                if self._closed:
                    raise trio.ClosedResourceError("the stream is closed")
                if self.end_reason is not None:
                    if self.end_reason is EndReason.DONE:
                        return b""
                    raise trio.BrokenResourceError(f"stream ended: {self._cause}") from self._cause
                self._readable = trio.Event()
                await self._readable.wait()
            limit = max_bytes if max_bytes is not None else DEFAULT_RECEIVE_SIZE
            parts: list[bytes] = []
            size = 0
            while self._chunks and size < limit:
                chunk = self._chunks.popleft()
                if size + len(chunk) > limit:
                    keep = limit - size
                    self._chunks.appendleft(chunk[keep:])
                    chunk = chunk[:keep]
                parts.append(chunk)
                size += len(chunk)
            self.circuit._consumed(self.stream_id, size)
            return b"".join(parts)
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the stream: queued bytes go first, then END(done). Idempotent.

        Never blocks; the stream is closed even if this is cancelled.
        """
        if not self._closed:
            self._closed = True
            self._readable.set()
            self.circuit._close_stream(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _check_send_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was called on this stream")
        if self.end_reason is not None:
            raise trio.BrokenResourceError(f"stream ended: {self._cause}") from self._cause


# --- circuits ---------------------------------------------------------------------------------


class Circuit:
    """An open circuit. Made by ``CircuitManager.build``; streams with ``open_stream``.

    ``closed_reason`` is set once the circuit is gone; every stream then ends
    with ``DESTROYED`` and new calls raise ``CircuitClosedError``.
    """

    def __init__(
        self,
        manager: CircuitManager,
        link: CellLink,
        table: ClientCircuits,
        circ_id: int,
        path: Path,
        build_seconds: float,
    ) -> None:
        cfg = manager.config
        now = trio.current_time()
        self.manager = manager
        self.link = link
        self.circ_id = circ_id
        self.path = path
        self.build_seconds = build_seconds
        self.opened_at = now
        #: When the first stream was opened (dirtiness starts then), or ``None``.
        self.first_used: float | None = None
        self.isolation_key: Hashable | None = None
        self.closed_reason: DestroyReason | None = None
        self.endpoint = CircuitEndpoint(Role.CLIENT, now, cfg.stream_config)
        self._table = table
        self._streams: dict[int, CircuitStream] = {}
        self._resolves: dict[int, tuple[trio.Event, list[tuple[str, ...]]]] = {}
        self._wake_event = trio.Event()
        self._room = trio.Event()
        self._dead = trio.Event()

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    def accepts_streams(self, now: float | None = None) -> bool:
        """Open, not dirty past ``max_dirtiness``, and below ``max_streams`` live ids."""
        if self.closed:
            return False
        now = trio.current_time() if now is None else now
        dirty_for = now - self.first_used if self.first_used is not None else 0.0
        if dirty_for >= self.manager.config.max_dirtiness:
            return False
        return len(self.endpoint.stream_ids) < self.endpoint.config.max_streams

    async def open_stream(self, host: str, port: int) -> CircuitStream:
        """Open a stream to ``host:port`` at the exit (the exit resolves names).

        Waits for CONNECTED. Raises ``StreamRefused(reason)`` for the exit's END
        (or ``TIMEOUT`` after ``stream_timeout``), ``CircuitClosedError`` if the
        circuit is or goes away, ``ValueError`` for a bad target, and
        ``TooManyStreams`` (a ``StreamUsageError``) at ``max_streams``. If
        cancelled, the stream is ended (END(done) is queued) and nothing leaks.
        """
        self._check_open()
        target = format_target(host, port)
        sid = self.endpoint.open_stream(target)
        if self.first_used is None:
            self.first_used = trio.current_time()
        stream = CircuitStream(self, sid, target)
        self._streams[sid] = stream
        self._wake()
        ok = False
        try:
            with trio.move_on_after(self.manager.config.stream_timeout):
                await stream._settled.wait()
            if stream.end_reason is not None:
                assert stream._cause is not None
                raise stream._cause
            if stream.address is None:
                raise StreamRefused(EndReason.TIMEOUT, f"no answer to BEGIN {target}")
            ok = True
            return stream
        finally:
            if not ok:
                stream._closed = True
                self._close_stream(stream)

    async def resolve(self, name: str) -> tuple[str, ...]:
        """Ask the exit for the addresses of ``name`` (never resolved locally).

        Raises ``StreamRefused(RESOLVE_FAILED)`` for an empty answer,
        ``StreamRefused(TIMEOUT)`` after ``stream_timeout``, ``CircuitClosedError``.
        If cancelled, the late answer is discarded when it comes.
        """
        self._check_open()
        sid = self.endpoint.resolve(name)
        if self.first_used is None:
            self.first_used = trio.current_time()
        done = trio.Event()
        box: list[tuple[str, ...]] = []
        self._resolves[sid] = (done, box)
        self._wake()
        try:
            with trio.move_on_after(self.manager.config.stream_timeout):
                await done.wait()
        finally:
            self._resolves.pop(sid, None)
        if box:
            if not box[0]:
                raise StreamRefused(EndReason.RESOLVE_FAILED, f"no address for {name!r}")
            return box[0]
        self._check_open()
        raise StreamRefused(EndReason.TIMEOUT, f"no answer to RESOLVE {name!r}")

    async def aclose(self) -> None:
        """Destroy the circuit (DESTROY(requested) to the entry). Idempotent.

        Abortive: queued stream bytes are dropped and every stream ends with
        ``DESTROYED``. The local state is gone even if this is cancelled; the
        DESTROY is sent in the background.
        """
        if not self.closed:
            unit = self._table.destroy(self.circ_id, DestroyReason.REQUESTED)
            self.manager._forget(self)
            self._fail(DestroyReason.REQUESTED, "closed by the client")
            if unit is not None:
                self.manager._send_soon(self.link, [unit])
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_closed(self) -> DestroyReason:
        """Wait until the circuit is gone; its ``closed_reason``."""
        await self._dead.wait()
        assert self.closed_reason is not None
        return self.closed_reason

    # --- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise CircuitClosedError(self.closed_reason)

    def _wake(self) -> None:
        self._wake_event.set()

    def _notify_room(self) -> None:
        self._room.set()
        self._room = trio.Event()

    async def _wait_room(self) -> None:
        await self._room.wait()

    def _consumed(self, sid: int, n: int) -> None:
        if not self.closed and n:
            self.endpoint.consumed(sid, n)
            if self.endpoint.control_backlog:
                self._wake()

    def _close_stream(self, stream: CircuitStream) -> None:
        self._streams.pop(stream.stream_id, None)
        if not self.closed:
            self.endpoint.close(stream.stream_id)
            self._wake()
        self._notify_room()

    def _on_cell(self, cell_event: CellReceived, now: float) -> None:
        self._handle(self.endpoint.receive_cell(cell_event.cell, now))

    def _on_plaintexts(self, cells_event: CellsReceived, now: float) -> None:
        self._handle(self.endpoint.receive_plaintexts(cells_event.plaintexts, now))

    def _handle(self, events: Iterable[StreamEvent]) -> None:
        for ev in events:
            if isinstance(ev, StreamData):
                stream = self._streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_data(ev.data)
            elif isinstance(ev, StreamConnected):
                stream = self._streams.get(ev.stream_id)
                if stream is not None:
                    stream._on_connected(ev.address)
            elif isinstance(ev, StreamEnded):
                stream = self._streams.pop(ev.stream_id, None)
                if stream is not None:
                    cause: ClientError
                    if ev.reason is EndReason.DESTROYED and self.closed_reason is not None:
                        cause = CircuitClosedError(self.closed_reason)
                    else:
                        cause = StreamRefused(ev.reason)
                    stream._on_end(ev.reason, cause)
                self._notify_room()
            elif isinstance(ev, Resolved):
                waiter = self._resolves.get(ev.stream_id)
                if waiter is not None:
                    waiter[1].append(ev.addresses)
                    waiter[0].set()
            elif isinstance(ev, ProtocolViolation):
                log.info("circuit %08x: exit broke the protocol: %s", self.circ_id, ev.detail)
                unit = self._table.destroy(self.circ_id, DestroyReason.PROTOCOL)
                self.manager._forget(self)
                self._fail(DestroyReason.PROTOCOL, ev.detail)
                if unit is not None:
                    self.manager._send_soon(self.link, [unit])

    def _fail(self, reason: DestroyReason, detail: str = "") -> None:
        """The circuit is gone: end every stream, wake every waiter. Idempotent."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if detail:
            log.debug("circuit %08x closed (%s): %s", self.circ_id, reason.name, detail)
        self._handle(self.endpoint.circuit_closed())
        for stream in list(self._streams.values()):  # defensive: ended by the endpoint above
            stream._on_end(EndReason.DESTROYED, CircuitClosedError(reason))
        self._streams.clear()
        for done, _ in self._resolves.values():
            done.set()
        self._dead.set()
        self._wake()
        self._notify_room()

    async def _pump(self) -> None:
        """Drain ``cells_to_send`` into the link until the circuit is gone."""
        batch = self.manager.config.send_batch
        try:
            while not self.closed:
                self._wake_event = trio.Event()
                plains = self.endpoint.plaintexts_to_send(trio.current_time(), batch)
                if not plains:
                    await self._wake_event.wait()
                    continue
                try:
                    units = self._table.send_plaintexts(self.circ_id, plains)
                except KeyError:
                    return  # destroyed meanwhile; whoever did it failed the circuit
                self._notify_room()
                await self.link.send_units(units)
        except (trio.BrokenResourceError, trio.ClosedResourceError, HtxUsageError) as exc:
            # HtxUsageError: the HTX session was closed under the write (link shutting down).
            self.manager._link_broken(self.link, exc)


# --- the manager ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Build:
    path: Path
    started: float
    done: trio.Event = field(default_factory=trio.Event)
    circuit: Circuit | None = None
    error: CircuitBuildError | None = None


class CircuitManager:
    """Builds and keeps the client's circuits. Run with ``await nursery.start(manager.run)``.

    ``path_source`` gives a fresh ``Path`` per call (needed by ``build`` without
    a path, ``build_with_retry`` and ``circuit_for``). Every method must be
    called while ``run`` is running; when ``run`` ends (cancelled), every
    circuit is failed with ``CircuitClosedError(DESTROYED)``.
    """

    def __init__(
        self,
        path_source: PathSource | None = None,
        *,
        config: CircuitConfig | None = None,
        on_build: Callable[[Path, str | None], None] | None = None,
        keyed_path_source: Callable[[Hashable], Path] | None = None,
    ) -> None:
        self.config = config if config is not None else CircuitConfig()
        self._path_source = path_source
        #: When given, ``circuit_for(key)`` asks it for paths with the isolation key,
        #: so the path selector can keep different keys on different exits.
        self._keyed_path_source = keyed_path_source
        #: Told every build's path and outcome (``None`` = built, else the reason),
        #: so a guard that cannot be reached stops being chosen.
        self._on_build = on_build
        self._peers: dict[bytes, PeerInfo] = {}
        self._links = LinkManager(
            peer_info=self._peers.get,
            on_units=self._on_units,
            on_closed=self._on_closed,
            static_private=None,
            dial_timeout=self.config.dial_timeout,
        )
        self._tables: dict[int, ClientCircuits] = {}
        self._circuits: dict[tuple[int, int], Circuit] = {}
        self._builds: dict[tuple[int, int], _Build] = {}
        self._by_key: dict[Hashable, list[Circuit]] = {}
        self._key_locks: dict[Hashable, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def circuits(self) -> list[Circuit]:
        """Every open circuit."""
        return list(self._circuits.values())

    @property
    def links(self) -> LinkManager:
        return self._links

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the links and the circuits' pumps until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._links.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for circuit in list(self._circuits.values()):
                circuit._fail(DestroyReason.DESTROYED, "the circuit manager stopped")
            self._circuits.clear()
            self._by_key.clear()

    async def aclose(self) -> None:
        """Destroy every circuit (DESTROY(requested), bounded wait) and close every link.

        ``run`` keeps running; new builds dial fresh links. Shielded from cancellation.
        """
        with trio.CancelScope(shield=True):
            per_link: dict[int, tuple[CellLink, list[bytes]]] = {}
            for circuit in list(self._circuits.values()):
                unit = circuit._table.destroy(circuit.circ_id, DestroyReason.REQUESTED)
                self._forget(circuit)
                circuit._fail(DestroyReason.REQUESTED, "the manager closed")
                if unit is not None:
                    per_link.setdefault(circuit.link.number, (circuit.link, []))[1].append(unit)
            with trio.move_on_after(2):
                for link, units in per_link.values():
                    try:
                        await link.send_units(units)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
            await self._links.close_all()

    # --- building -------------------------------------------------------------------------------

    @staticmethod
    def _keyed_path(source: Callable[[Hashable], Path], key: Hashable) -> Path:
        try:
            return source(key)
        except LookupError as exc:
            raise CircuitBuildError("no_path", str(exc)) from exc

    def _next_path(self) -> Path:
        if self._path_source is None:
            raise CircuitBuildError("no_path", "no path given and no path source")
        try:
            return self._path_source()
        except LookupError as exc:
            raise CircuitBuildError("no_path", str(exc)) from exc

    async def build(self, path: Path | None = None) -> Circuit:
        """Build one circuit over ``path`` (or the path source's next path).

        One round trip after the link to the entry is up (dialed, or reused).
        Raises ``CircuitBuildError`` (``timeout`` after ``build_timeout``, dial
        included; ``link_failed``; ``destroyed:<why>``; ``bad_reply``;
        ``no_path``). If cancelled or timed out, the half-built circuit is
        forgotten and DESTROY(timeout) is sent in the background.
        """
        if self._nursery is None:
            raise RuntimeError("CircuitManager.run is not running")
        path = path if path is not None else self._next_path()
        try:
            circuit = await self._build(path)
        except CircuitBuildError as exc:
            if self._on_build is not None:
                self._on_build(path, exc.reason)
            raise
        if self._on_build is not None:
            self._on_build(path, None)
        return circuit

    async def _build(self, path: Path) -> Circuit:
        self._peers[path.entry_id] = path.entry
        started = trio.current_time()
        build: _Build | None = None
        key: tuple[int, int] | None = None
        link: CellLink | None = None
        with trio.move_on_at(started + self.config.build_timeout) as scope:
            try:
                try:
                    link = await self._links.get(path.entry_id)
                except (*DIAL_ERRORS, LookupError) as exc:
                    raise CircuitBuildError("link_failed", repr(exc)) from exc
                table = self._tables.get(link.number)
                if table is None:
                    table = self._tables[link.number] = ClientCircuits(dialed=True)
                cid, unit = table.create(path.hops, trio.current_time())
                key = (link.number, cid)
                build = self._builds[key] = _Build(path, started)
                try:
                    await link.send_units([unit])
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise CircuitBuildError("link_failed", repr(exc)) from exc
                await build.done.wait()
            finally:
                if build is not None and not build.done.is_set():
                    # Timed out, cancelled, or the write failed: forget it politely.
                    assert key is not None and link is not None
                    self._builds.pop(key, None)
                    owner = self._tables.get(key[0])
                    destroy = owner.destroy(key[1], DestroyReason.TIMEOUT) if owner else None
                    if destroy is not None:
                        self._send_soon(link, [destroy])
        if scope.cancelled_caught:
            raise CircuitBuildError("timeout", f"no CREATED within {self.config.build_timeout:g} s")
        assert build is not None
        if build.error is not None:
            raise build.error
        assert build.circuit is not None
        return build.circuit

    async def build_with_retry(self, paths: Iterable[Path] | None = None) -> Circuit:
        """Build a circuit, trying the next path after each ``CircuitBuildError``.

        ``paths`` are tried in order; without it the path source is asked
        ``build_attempts`` times. Raises the last attempt's ``CircuitBuildError``
        (its ``attempts`` attribute holds every failure).
        """
        candidates: Iterable[Path | None] = (
            paths if paths is not None else [None] * self.config.build_attempts
        )
        errors: list[CircuitBuildError] = []
        for path in candidates:
            try:
                return await self.build(path)
            except CircuitBuildError as exc:
                log.info("circuit build failed (%s); trying another path", exc.reason)
                errors.append(exc)
                if exc.reason == "no_path":
                    break
        if not errors:
            raise CircuitBuildError("no_path", "no path to try")
        last = errors[-1]
        final = CircuitBuildError(last.reason, f"{len(errors)} attempt(s) failed; last: {last}")
        final.attempts = tuple(errors)
        raise final from last

    async def circuit_for(self, isolation_key: Hashable = None) -> Circuit:
        """An open circuit for streams of ``isolation_key``: reused while it
        ``accepts_streams``, otherwise built (with retries) and kept for that key.

        Circuits are never shared between keys. Concurrent calls for one key
        share one build. A circuit too dirty for new streams is closed here once
        its last stream is gone. Raises ``CircuitBuildError``.
        """
        lock = self._key_locks.get(isolation_key)
        if lock is None:
            lock = self._key_locks[isolation_key] = trio.Lock()
        async with lock:
            now = trio.current_time()
            kept: list[Circuit] = []
            usable: Circuit | None = None
            for circuit in self._by_key.get(isolation_key, []):
                if circuit.closed:
                    continue
                if circuit.accepts_streams(now):
                    usable = usable or circuit
                    kept.append(circuit)
                elif circuit.endpoint.stream_ids:
                    kept.append(circuit)  # too dirty for new streams; its streams go on
                else:
                    await circuit.aclose()  # too dirty and idle: nothing needs it
            self._by_key[isolation_key] = kept
            if usable is not None:
                return usable
            keyed = self._keyed_path_source
            if keyed is not None:
                paths = (
                    self._keyed_path(keyed, isolation_key)
                    for _ in range(self.config.build_attempts)
                )
                circuit = await self.build_with_retry(paths)
            else:
                circuit = await self.build_with_retry()
            if circuit.closed:  # pragma: no cover - it died between CREATED and here
                raise CircuitBuildError("link_failed", "the circuit died right after its build")
            circuit.isolation_key = isolation_key
            self._by_key.setdefault(isolation_key, []).append(circuit)
            return circuit

    # --- link callbacks (run in the link's reader task; they never block) --------------------

    async def _on_units(self, link: CellLink, units: list[bytes]) -> None:
        table = self._tables.get(link.number)
        if table is None:
            return
        now = trio.current_time()
        events, replies = table.receive_units(units, now, plaintexts=True)
        touched: set[Circuit] = set()
        for ev in events:
            self._dispatch(link, ev, now, touched)
        for circuit in touched:
            circuit._wake()
        if replies:
            self._send_soon(link, replies)

    def _dispatch(self, link: CellLink, ev: TableEvent, now: float, touched: set[Circuit]) -> None:
        key = (link.number, ev.circ_id)
        if isinstance(ev, CellsReceived):
            circuit = self._circuits.get(key)
            if circuit is not None:
                circuit._on_plaintexts(ev, now)
                touched.add(circuit)
        elif isinstance(ev, CellReceived):
            circuit = self._circuits.get(key)
            if circuit is not None:
                circuit._on_cell(ev, now)
                touched.add(circuit)
        elif isinstance(ev, CircuitOpened):
            build = self._builds.pop(key, None)
            table = self._tables[link.number]
            if build is None:  # pragma: no cover - the table forgets abandoned builds
                unit = table.destroy(ev.circ_id, DestroyReason.REQUESTED)
                if unit is not None:
                    self._send_soon(link, [unit])
                return
            circuit = Circuit(self, link, table, ev.circ_id, build.path, ev.build_seconds)
            self._circuits[key] = circuit
            assert self._nursery is not None
            self._nursery.start_soon(circuit._pump)
            build.circuit = circuit
            build.done.set()
        elif isinstance(ev, CircuitFailed):
            build = self._builds.pop(key, None)
            if build is not None:
                reason = "link_failed" if ev.reason == "link_lost" else ev.reason
                build.error = CircuitBuildError(reason, f"entry {link.number}: {ev.reason}")
                build.done.set()
        elif isinstance(ev, CircuitClosed):
            circuit = self._circuits.get(key)
            if circuit is not None:
                self._forget(circuit)
                circuit._fail(ev.reason, "destroyed by a hop or the link")

    async def _on_closed(self, link: CellLink) -> None:
        table = self._tables.pop(link.number, None)
        if table is None:
            return
        touched: set[Circuit] = set()
        now = trio.current_time()
        for ev in table.link_lost():
            self._dispatch(link, ev, now, touched)

    def _link_broken(self, link: CellLink, exc: BaseException) -> None:
        """A write failed: the link is as good as lost for every circuit on it."""
        log.info("link %d to the entry broke: %r", link.number, exc)
        link.closed = True
        table = self._tables.pop(link.number, None)
        if table is not None:
            touched: set[Circuit] = set()
            for ev in table.link_lost():
                self._dispatch(link, ev, trio.current_time(), touched)
        if self._nursery is not None:
            self._nursery.start_soon(_close_quietly, link)

    # --- helpers --------------------------------------------------------------------------------

    def _forget(self, circuit: Circuit) -> None:
        self._circuits.pop((circuit.link.number, circuit.circ_id), None)

    def _send_soon(self, link: CellLink, units: list[bytes]) -> None:
        """Write ``units`` from a background task (never blocks the caller)."""
        if self._nursery is not None and not link.closed:
            self._nursery.start_soon(_send_quietly, link, units)


async def _send_quietly(link: CellLink, units: list[bytes]) -> None:
    with trio.move_on_after(5):
        try:
            await link.send_units(units)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _close_quietly(link: CellLink) -> None:
    with trio.move_on_after(2):
        try:
            await link.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # pragma: no cover
            pass
