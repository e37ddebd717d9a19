"""The relay's circuit table (spec/circuits.md §1–§5), sans-I/O.

The engine takes link units in and says what to send where; the node's Trio
layer owns the links. Links are named by opaque integers the caller assigns.

    engine = RelayEngine(mix_keys, is_exit=True)
    engine.link_opened(link, dialed=False)
    for action in engine.receive_units(link, [unit_bytes, ...], now):
        Send        -> write action.units (whole units) to action.link
        NeedLink    -> open or reuse a link to action.node_id; engine.extend(action.token, link)
        ExitCell    -> the exit's stream layer handles action.cell for circuit action.circuit
        ExitClosed  -> the exit forgets circuit action.circuit
    engine.exit_send(circuit, cells) / engine.exit_close(circuit, reason) / engine.expire(now)

Nothing here raises for bad input from a peer: a bad unit is dropped and counted
(``drops``); a bad circuit is destroyed on both sides. Drops are counted by reason.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from qnet.constants import BODY_LEN, CELL_PLAINTEXT_LEN, UNIT_HEADER_LEN, UNIT_LEN
from qnet.crypto.primitives import random_bytes
from qnet.errors import CellError, CircuitError
from qnet.mix import sphinx as S
from qnet.routing import circuit as C
from qnet.routing.cells import (
    EndLayer,
    PassLayer,
    RelayCell,
    Unit,
    UnitCommand,
    decode_relay_cell,
    decode_unit,
    relay_unit_header,
)

Rng = Callable[[int], bytes]

_RELAY = int(UnitCommand.RELAY)
_ZERO3 = bytes(UNIT_HEADER_LEN - 5)


class DestroyReason(enum.IntEnum):
    """spec/circuits.md §5."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    RESOURCES = 4
    TIMEOUT = 5
    DESTROYED = 6
    INTEGRITY = 7

    @classmethod
    def of_body(cls, body: bytes) -> DestroyReason:
        """The reason a DESTROY body carries; an unknown value counts as ``PROTOCOL``."""
        try:
            return cls(body[0])
        except ValueError:
            return cls.PROTOCOL


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``units`` to ``link``: one or more whole 2,048-byte units, back to back
    (a run of cells for one circuit goes as one ``Send``)."""

    link: int
    units: bytes


@dataclass(frozen=True, slots=True)
class NeedLink:
    """Open or reuse a link to ``node_id``, then call ``RelayEngine.extend(token, link)``."""

    node_id: bytes
    token: int


@dataclass(frozen=True, slots=True)
class ExitCell:
    circuit: int
    cell: RelayCell


@dataclass(frozen=True, slots=True)
class ExitOpened:
    circuit: int


@dataclass(frozen=True, slots=True)
class ExitClosed:
    circuit: int
    reason: DestroyReason


@dataclass(frozen=True, slots=True)
class SphinxIn:
    """A SPHINX unit's packet for the node's mix role (``RelayEngine(mix=True)`` only)."""

    link: int
    packet: bytes


Action = Send | NeedLink | ExitCell | ExitOpened | ExitClosed | SphinxIn


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """Bounds per link and per node (config keys of the node's ``[limits]``)."""

    max_circuits_per_link: int = 8192
    max_circuits: int = 65536
    idle_timeout: float = 300.0
    build_timeout: float = 30.0


class _State(enum.Enum):
    PENDING = "pending"
    OPEN = "open"


@dataclass(slots=True, kw_only=True)
class _Circuit:
    ident: int
    prev: tuple[int, int]
    next: tuple[int, int] | None
    state: _State
    accept: C.HopAccept
    forward: PassLayer | EndLayer
    backward: PassLayer | EndLayer
    next_node: bytes = b""
    next_packet: bytes = b""
    last_active: float = 0.0
    created: float = 0.0
    is_exit: bool = False


@dataclass(slots=True)
class _Link:
    dialed: bool
    circuits: set[int] = field(default_factory=set)


def _unit(circ_id: int, command: UnitCommand, body: bytes) -> bytes:
    return Unit(circ_id=circ_id, command=command, body=body).encode()


def _relay_units(circ_id: int, bodies: bytes) -> bytes:
    """RELAY units on ``circ_id`` carrying ``bodies`` (2,040 bytes each), back to back."""
    view = memoryview(bodies)
    parts: list[bytes | memoryview] = [b""]  # the join puts a header before each body
    parts += [view[i : i + BODY_LEN] for i in range(0, len(bodies), BODY_LEN)]
    return relay_unit_header(circ_id).join(parts)


def destroy_unit(circ_id: int, reason: DestroyReason) -> bytes:
    """A DESTROY unit for ``circ_id`` (spec/circuits.md §5)."""
    return _unit(circ_id, UnitCommand.DESTROY, bytes([reason]) + bytes(BODY_LEN - 1))


class RelayEngine:
    """Circuits through (and ending at) one node.

    ``mix_keys()`` returns the node's mix keys to try, newest first (the current
    epoch's, then the previous one's during its grace period); each key has its
    own replay set, kept here until the key is no longer offered.
    """

    def __init__(
        self,
        mix_keys: Callable[[], Sequence[S.MixKey]],
        *,
        is_exit: bool = False,
        limits: RelayLimits | None = None,
        rng: Rng = random_bytes,
        mix: bool = False,
    ) -> None:
        self._mix_keys = mix_keys
        self.is_exit = is_exit
        #: With the mix role, SPHINX units become ``SphinxIn`` actions instead of drops.
        self.mix = mix
        self.limits = limits or RelayLimits()
        self._rng = rng
        self._replay: dict[bytes, set[bytes]] = {}
        self._links: dict[int, _Link] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._by_prev: dict[tuple[int, int], int] = {}
        self._by_next: dict[tuple[int, int], int] = {}
        self._ids = itertools.count(1)
        self.drops: Counter[str] = Counter()
        self.forwarded_cells = 0

    # --- links ---------------------------------------------------------------------------

    def link_opened(self, link: int, *, dialed: bool) -> None:
        self._links[link] = _Link(dialed=dialed)

    def link_closed(self, link: int) -> list[Action]:
        """The link is gone: every circuit on it is destroyed on its other side."""
        state = self._links.pop(link, None)
        if state is None:
            return []
        out: list[Action] = []
        for ident in list(state.circuits):
            circuit = self._circuits.get(ident)
            if circuit is not None:
                out += self._teardown(circuit, DestroyReason.DESTROYED)
        return out

    @property
    def circuit_count(self) -> int:
        return len(self._circuits)

    def _new_circ_id(self, link: int) -> int:
        state = self._links[link]
        top = 0x80000000 if state.dialed else 0
        while True:
            cid = top | (int.from_bytes(self._rng(4), "big") & 0x7FFFFFFF)
            if cid and (link, cid) not in self._by_prev and (link, cid) not in self._by_next:
                return cid

    # --- input ---------------------------------------------------------------------------

    def receive_units(self, link: int, units: Iterable[bytes], now: float) -> list[Action]:
        """Handle units read from ``link``. Consecutive RELAY units of one circuit and
        direction go through the hot path as one batch."""
        out: list[Action] = []
        run: list[bytes] = []
        run_key: tuple[int, int] | None = None
        for raw in units:
            # Fast path: a well-formed RELAY unit (what decode_unit would accept) joins
            # the run without a Unit object; anything else takes the full decoder.
            if (
                len(raw) == UNIT_LEN
                and raw[4] == _RELAY
                and raw[5:UNIT_HEADER_LEN] == _ZERO3
                and (cid := int.from_bytes(raw[:4], "big"))
            ):
                key = (link, cid)
                if run_key is not None and key != run_key:
                    out += self._relay_run(run_key, run, now)
                    run = []
                run.append(raw)
                run_key = key
                continue
            try:
                unit = decode_unit(raw)
            except CellError as exc:
                self.drops[f"unit_{exc.reason}"] += 1
                continue
            # Not RELAY here: the fast path takes every RELAY unit decode_unit accepts.
            if run_key is not None:
                out += self._relay_run(run_key, run, now)
                run, run_key = [], None
            out += self._control(link, unit, now)
        if run_key is not None:
            out += self._relay_run(run_key, run, now)
        return out

    def _control(self, link: int, unit: Unit, now: float) -> list[Action]:
        if unit.command is UnitCommand.PADDING:
            self.drops["padding"] += 1
            return []
        if unit.command is UnitCommand.SPHINX:
            if self.mix:
                return [SphinxIn(link, unit.body)]
            self.drops["no_mix_role"] += 1
            return []
        if unit.command is UnitCommand.CREATE:
            return self._create(link, unit.circ_id, unit.body, now)
        if unit.command is UnitCommand.CREATED:
            return self._created(link, unit.circ_id, unit.body, now)
        return self._destroyed(link, unit.circ_id, unit.body)

    def _unwrap(self, packet: bytes) -> S.Unwrapped | S.Drop:
        result: S.Unwrapped | S.Drop = S.Drop("no_key")
        for key in self._mix_keys():
            seen = self._replay.setdefault(key.public_bytes, set())
            result = S.process(packet, key, seen)
            if not (isinstance(result, S.Drop) and result.reason == "bad_mac"):
                break
        live = {k.public_bytes for k in self._mix_keys()}
        for stale in [k for k in self._replay if k not in live]:
            del self._replay[stale]  # the key left its grace period: its tags can go
        return result

    def _create(self, link: int, cid: int, body: bytes, now: float) -> list[Action]:
        state = self._links.get(link)
        if state is None or cid == 0 or (link, cid) in self._by_prev:
            self.drops["create_bad_id"] += 1
            return [Send(link, destroy_unit(cid, DestroyReason.PROTOCOL))] if cid else []
        if (
            len(state.circuits) >= self.limits.max_circuits_per_link
            or len(self._circuits) >= self.limits.max_circuits
        ):
            self.drops["create_limit"] += 1
            return [Send(link, destroy_unit(cid, DestroyReason.RESOURCES))]
        result = self._unwrap(body)
        try:
            if isinstance(result, S.Drop):
                raise CircuitError(result.reason)
            if not isinstance(result, (S.CircuitExtend, S.CircuitEnd)):
                raise CircuitError("not_a_circuit")
            C.check_params(result.params)
            if isinstance(result, S.CircuitEnd) and not self.is_exit:
                raise CircuitError("not_an_exit")
            accept = C.accept_hop(result.hop_secret, body[:32], self._rng)
        except CircuitError as exc:
            self.drops[f"create_{exc.reason}"] += 1
            return [Send(link, destroy_unit(cid, DestroyReason.PROTOCOL))]
        ident = next(self._ids)
        keys = accept.layer_keys
        terminal = isinstance(result, S.CircuitEnd)
        circuit = _Circuit(
            ident=ident,
            prev=(link, cid),
            next=None,
            state=_State.OPEN if terminal else _State.PENDING,
            accept=accept,
            forward=EndLayer(keys.forward) if terminal else PassLayer(keys.forward),
            backward=EndLayer(keys.backward) if terminal else PassLayer(keys.backward),
            last_active=now,
            created=now,
            is_exit=terminal,
        )
        self._circuits[ident] = circuit
        self._by_prev[(link, cid)] = ident
        state.circuits.add(ident)
        if isinstance(result, S.CircuitEnd):
            return [
                Send(link, _unit(cid, UnitCommand.CREATED, accept.exit_reply())),
                ExitOpened(ident),
            ]
        circuit.next_node, circuit.next_packet = result.next_hop, result.packet
        return [NeedLink(result.next_hop, ident)]

    def extend(self, token: int, link: int) -> list[Action]:
        """Send the pending CREATE of circuit ``token`` on ``link`` (to its next hop)."""
        circuit = self._circuits.get(token)
        if circuit is None or circuit.next is not None or link not in self._links:
            return []
        cid = self._new_circ_id(link)
        circuit.next = (link, cid)
        self._by_next[(link, cid)] = token
        self._links[link].circuits.add(token)
        packet, circuit.next_packet = circuit.next_packet, b""
        return [Send(link, _unit(cid, UnitCommand.CREATE, packet))]

    def extend_failed(self, token: int) -> list[Action]:
        """The link to the next hop could not be opened: fail the circuit backwards."""
        circuit = self._circuits.get(token)
        if circuit is None:
            return []
        return self._teardown(circuit, DestroyReason.DESTROYED)

    def _created(self, link: int, cid: int, body: bytes, now: float) -> list[Action]:
        ident = self._by_next.get((link, cid))
        circuit = self._circuits.get(ident) if ident is not None else None
        if circuit is None or circuit.state is not _State.PENDING:
            self.drops["created_unexpected"] += 1
            return []
        circuit.state = _State.OPEN
        circuit.last_active = now
        plink, pcid = circuit.prev
        return [Send(plink, _unit(pcid, UnitCommand.CREATED, circuit.accept.wrap_reply(body)))]

    def _destroyed(self, link: int, cid: int, body: bytes) -> list[Action]:
        ident = self._by_prev.get((link, cid))
        if ident is None:
            ident = self._by_next.get((link, cid))
        circuit = self._circuits.get(ident) if ident is not None else None
        if circuit is None:
            self.drops["destroy_unknown"] += 1
            return []
        return self._teardown(circuit, DestroyReason.of_body(body), skip=(link, cid))

    def _relay_run(self, key: tuple[int, int], units: list[bytes], now: float) -> list[Action]:
        """One circuit's consecutive RELAY units (whole, headers checked) from one link."""
        ident = self._by_prev.get(key)
        forward = ident is not None
        if ident is None:
            ident = self._by_next.get(key)
        circuit = self._circuits.get(ident) if ident is not None else None
        if circuit is None or circuit.state is not _State.OPEN:
            self.drops["relay_unknown_circuit"] += len(units)
            return []
        circuit.last_active = now
        bodies = b"".join([memoryview(u)[UNIT_HEADER_LEN:] for u in units])
        if forward and circuit.is_exit:
            return self._exit_receive(circuit, bodies)
        layer = circuit.forward if forward else circuit.backward
        assert isinstance(layer, PassLayer)
        target = circuit.next if forward else circuit.prev
        if target is None:
            return []
        out_link, out_cid = target
        peeled = layer.apply_batch(bodies)
        self.forwarded_cells += len(units)
        return [Send(out_link, _relay_units(out_cid, peeled))]

    def _exit_receive(self, circuit: _Circuit, bodies: bytes) -> list[Action]:
        layer = circuit.forward
        assert isinstance(layer, EndLayer)
        try:
            plains = layer.open_batch(bodies)
            cells = [
                decode_relay_cell(plains[i : i + CELL_PLAINTEXT_LEN])
                for i in range(0, len(plains), CELL_PLAINTEXT_LEN)
            ]
        except CellError as exc:
            self.drops[f"relay_{exc.reason}"] += 1
            reason = DestroyReason.INTEGRITY if exc.reason == "bad_tag" else DestroyReason.PROTOCOL
            return self._teardown(circuit, reason)
        return [ExitCell(circuit.ident, cell) for cell in cells]

    # --- exit side output ------------------------------------------------------------------

    def exit_send(self, ident: int, cells: Sequence[RelayCell]) -> list[Action]:
        """Seal ``cells`` for the client and send them back down the circuit."""
        return self.exit_send_plaintexts(ident, b"".join([c.encode() for c in cells]))

    def exit_send_plaintexts(self, ident: int, plains: bytes) -> list[Action]:
        """``exit_send`` for cells already encoded (2,024-byte plaintexts, joined)."""
        circuit = self._circuits.get(ident)
        if circuit is None or not circuit.is_exit or not plains:
            return []
        layer = circuit.backward
        assert isinstance(layer, EndLayer)
        link, cid = circuit.prev
        return [Send(link, _relay_units(cid, layer.seal_batch(plains)))]

    def exit_close(self, ident: int, reason: DestroyReason) -> list[Action]:
        circuit = self._circuits.get(ident)
        return self._teardown(circuit, reason) if circuit is not None else []

    # --- time ------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Action]:
        """Destroy circuits idle past ``idle_timeout`` and builds older than ``build_timeout``."""
        out: list[Action] = []
        for circuit in list(self._circuits.values()):
            idle = now - circuit.last_active > self.limits.idle_timeout
            stuck = (
                circuit.state is _State.PENDING
                and now - circuit.created > self.limits.build_timeout
            )
            if idle or stuck:
                out += self._teardown(circuit, DestroyReason.TIMEOUT)
        return out

    # --- teardown --------------------------------------------------------------------------

    def _teardown(
        self, circuit: _Circuit, reason: DestroyReason, *, skip: tuple[int, int] | None = None
    ) -> list[Action]:
        """Forget ``circuit`` and tell every side but ``skip`` (the one that told us).

        Sides on links that are already gone are not told (the link state is gone).
        """
        self._circuits.pop(circuit.ident, None)
        out: list[Action] = []
        for side, index in ((circuit.prev, self._by_prev), (circuit.next, self._by_next)):
            if side is None:
                continue
            index.pop(side, None)
            link_state = self._links.get(side[0])
            if link_state is not None:
                link_state.circuits.discard(circuit.ident)
                if side != skip:
                    out.append(Send(side[0], destroy_unit(side[1], reason)))
        if circuit.is_exit:
            out.append(ExitClosed(circuit.ident, reason))
        return out
