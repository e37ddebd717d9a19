"""The client's circuits on one link to its entry (spec/circuits.md), sans-I/O.

table = ClientCircuits(dialed=True)
cid, unit = table.create(path, now)               # write unit to the link
for event in table.receive_units([unit, ...], now):
    CircuitOpened / CircuitFailed / CircuitClosed / CellReceived
    (with plaintexts=True, a run of cells is one CellsReceived)
units = table.send(cid, [RelayCell, ...])           # write them to the link
unit = table.destroy(cid)
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from qnet.constants import BODY_LEN, CELL_PLAINTEXT_LEN, UNIT_HEADER_LEN, UNIT_LEN
from qnet.crypto.primitives import random_bytes
from qnet.errors import CellError, CircuitError
from qnet.routing import circuit as C
from qnet.routing.cells import (
    ClientOnion,
    RelayCell,
    Unit,
    UnitCommand,
    decode_relay_cell,
    decode_unit,
    relay_unit_header,
)
from qnet.routing.relay import DestroyReason, destroy_unit

Rng = Callable[[int], bytes]

_RELAY = int(UnitCommand.RELAY)
_ZERO3 = bytes(UNIT_HEADER_LEN - 5)


class CircuitState(enum.Enum):
    BUILDING = "building"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class CircuitOpened:
    circ_id: int
    build_seconds: float


@dataclass(frozen=True, slots=True)
class CircuitFailed:
    """The build failed (refused, bad reply); the circuit is gone."""

    circ_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitClosed:
    """An open circuit was destroyed (by a hop, or because a cell failed its check)."""

    circ_id: int
    reason: DestroyReason


@dataclass(frozen=True, slots=True)
class CellReceived:
    circ_id: int
    cell: RelayCell


@dataclass(frozen=True, slots=True)
class CellsReceived:
    """``receive_units(..., plaintexts=True)``: consecutive relay plaintexts
    (2,024 bytes each, joined) of one circuit, opened but not decoded: for
    ``CircuitEndpoint.receive_plaintexts``, which treats a malformed one as a
    protocol violation."""

    circ_id: int
    plaintexts: bytes


Event = CircuitOpened | CircuitFailed | CircuitClosed | CellReceived | CellsReceived


class _Circuit:
    __slots__ = ("onion", "pending", "started", "state")

    def __init__(self, pending: C.PendingCreate, now: float) -> None:
        self.pending: C.PendingCreate | None = pending
        self.onion: ClientOnion | None = None
        self.state = CircuitState.BUILDING
        self.started = now


class ClientCircuits:
    """Every circuit this client has on one link (one entry)."""

    def __init__(self, *, dialed: bool = True, rng: Rng = random_bytes) -> None:
        self._top = 0x80000000 if dialed else 0
        self._rng = rng
        self._circuits: dict[int, _Circuit] = {}
        self.drops: Counter[str] = Counter()

    def __contains__(self, cid: object) -> bool:
        return cid in self._circuits

    def state(self, cid: int) -> CircuitState | None:
        circuit = self._circuits.get(cid)
        return circuit.state if circuit else None

    def create(self, path: Sequence[C.HopRoute], now: float) -> tuple[int, bytes]:
        """Start a circuit over ``path`` (``path[0]`` is this link's peer)."""
        packet, pending = C.build_create(path, self._rng)
        while True:
            cid = self._top | (int.from_bytes(self._rng(4), "big") & 0x7FFFFFFF)
            if cid and cid not in self._circuits:
                break
        self._circuits[cid] = _Circuit(pending, now)
        return cid, Unit(circ_id=cid, command=UnitCommand.CREATE, body=packet).encode()

    def send(self, cid: int, cells: Iterable[RelayCell]) -> list[bytes]:
        """Units carrying ``cells`` on open circuit ``cid``. ``KeyError`` if not open."""
        circuit = self._circuits[cid]
        if circuit.onion is None:
            raise KeyError(cid)
        return self.send_plaintexts(cid, b"".join([c.encode() for c in cells]))

    def send_plaintexts(self, cid: int, plains: bytes) -> list[bytes]:
        """``send`` for cells already encoded (2,024-byte plaintexts, joined)."""
        circuit = self._circuits[cid]
        if circuit.onion is None:
            raise KeyError(cid)
        if not plains:
            return []
        sealed = memoryview(circuit.onion.seal_forward_batch(plains))
        header = relay_unit_header(cid)
        return [header + sealed[i : i + BODY_LEN] for i in range(0, len(sealed), BODY_LEN)]

    def destroy(self, cid: int, reason: DestroyReason = DestroyReason.REQUESTED) -> bytes | None:
        """Forget ``cid``; the DESTROY unit to send, if it existed."""
        return destroy_unit(cid, reason) if self._circuits.pop(cid, None) is not None else None

    def link_lost(self) -> list[Event]:
        """The link died: every circuit on it is gone."""
        events: list[Event] = []
        for cid, circuit in self._circuits.items():
            if circuit.state is CircuitState.OPEN:
                events.append(CircuitClosed(cid, DestroyReason.DESTROYED))
            else:
                events.append(CircuitFailed(cid, "link_lost"))
        self._circuits.clear()
        return events

    def expire(self, now: float, build_timeout: float) -> tuple[list[Event], list[bytes]]:
        """Fail builds older than ``build_timeout``: events, and DESTROY units to send."""
        events: list[Event] = []
        units: list[bytes] = []
        for cid, circuit in list(self._circuits.items()):
            if circuit.state is CircuitState.BUILDING and now - circuit.started > build_timeout:
                del self._circuits[cid]
                events.append(CircuitFailed(cid, "timeout"))
                units.append(destroy_unit(cid, DestroyReason.TIMEOUT))
        return events, units

    def receive_units(
        self, raws: Iterable[bytes], now: float, *, plaintexts: bool = False
    ) -> tuple[list[Event], list[bytes]]:
        """Handle units from the entry: events, and units to send back (DESTROYs).

        With ``plaintexts``, a run of RELAY units of one circuit opened as a batch
        comes out as one ``CellsReceived`` instead of a ``CellReceived`` per cell.
        """
        events: list[Event] = []
        replies: list[bytes] = []
        run: list[bytes] = []  # consecutive RELAY units of one open circuit
        run_cid = 0
        for raw in raws:
            # Fast path: a well-formed RELAY unit (what decode_unit accepts) for an open
            # circuit joins the run, opened in one batch; anything else is decoded.
            if (
                len(raw) == UNIT_LEN
                and raw[4] == _RELAY
                and raw[5:UNIT_HEADER_LEN] == _ZERO3
                and (fast_cid := int.from_bytes(raw[:4], "big"))
                and (fast := self._circuits.get(fast_cid)) is not None
                and fast.onion is not None
            ):
                if run and fast_cid != run_cid:
                    self._relay_run(run_cid, run, events, replies, plaintexts)
                    run = []
                run.append(raw)
                run_cid = fast_cid
                continue
            if run:
                self._relay_run(run_cid, run, events, replies, plaintexts)
                run = []
            try:
                unit = decode_unit(raw)
            except CellError as exc:
                self.drops[f"unit_{exc.reason}"] += 1
                continue
            circuit = self._circuits.get(unit.circ_id)
            if circuit is None:
                self.drops["unknown_circuit"] += 1
                continue
            cid = unit.circ_id
            if unit.command is UnitCommand.CREATED and circuit.pending is not None:
                try:
                    keys = circuit.pending.complete(unit.body)
                except CircuitError as exc:
                    del self._circuits[cid]
                    events.append(CircuitFailed(cid, exc.reason))
                    replies.append(destroy_unit(cid, DestroyReason.PROTOCOL))
                    continue
                circuit.onion, circuit.pending = ClientOnion(keys), None
                circuit.state = CircuitState.OPEN
                events.append(CircuitOpened(cid, now - circuit.started))
            elif unit.command is UnitCommand.RELAY and circuit.onion is not None:
                try:
                    cell = decode_relay_cell(circuit.onion.open_backward(unit.body))
                except CellError as exc:
                    del self._circuits[cid]
                    reason = (
                        DestroyReason.INTEGRITY
                        if exc.reason == "bad_tag"
                        else DestroyReason.PROTOCOL
                    )
                    events.append(CircuitClosed(cid, reason))
                    replies.append(destroy_unit(cid, reason))
                    continue
                events.append(CellReceived(cid, cell))
            elif unit.command is UnitCommand.DESTROY:
                del self._circuits[cid]
                reason = DestroyReason.of_body(unit.body)
                if circuit.state is CircuitState.OPEN:
                    events.append(CircuitClosed(cid, reason))
                else:
                    events.append(CircuitFailed(cid, f"destroyed:{reason.name.lower()}"))
            else:
                self.drops[f"unexpected_{unit.command.name.lower()}"] += 1
        if run:
            self._relay_run(run_cid, run, events, replies, plaintexts)
        return events, replies

    def _relay_run(
        self,
        cid: int,
        units: list[bytes],
        events: list[Event],
        replies: list[bytes],
        plaintexts: bool,
    ) -> None:
        """Open consecutive RELAY units of open circuit ``cid`` as one batch: the same
        events, replies and drops as one unit at a time."""
        circuit = self._circuits.get(cid)
        if circuit is None or circuit.onion is None:  # gone since the run started
            self.drops["unknown_circuit"] += len(units)
            return
        bodies = b"".join([memoryview(u)[UNIT_HEADER_LEN:] for u in units])
        plains, failed = circuit.onion.open_backward_batch(bodies)
        reason: DestroyReason | None = None
        done = 0
        if plaintexts:
            if plains:
                events.append(CellsReceived(cid, plains))
            done = len(plains) // CELL_PLAINTEXT_LEN
        for i in range(done * CELL_PLAINTEXT_LEN, len(plains), CELL_PLAINTEXT_LEN):
            try:
                cell = decode_relay_cell(plains[i : i + CELL_PLAINTEXT_LEN])
            except CellError:
                reason = DestroyReason.PROTOCOL
                break
            events.append(CellReceived(cid, cell))
            done += 1
        if reason is None and failed >= 0:
            reason = DestroyReason.INTEGRITY
        if reason is not None:
            del self._circuits[cid]
            events.append(CircuitClosed(cid, reason))
            replies.append(destroy_unit(cid, reason))
            # The rest of the run arrives for a circuit that is gone.
            self.drops["unknown_circuit"] += len(units) - done - 1
