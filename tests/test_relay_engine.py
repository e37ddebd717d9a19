"""Client, relays and exit engines wired in memory: builds, cells, teardown, faults."""

from __future__ import annotations

import os
from collections import deque

import pytest

from qnet.constants import UNIT_LEN
from qnet.mix import sphinx as S
from qnet.routing import circuit as C
from qnet.routing import relay as R
from qnet.routing.cells import RelayCell, RelayCommand, Unit, UnitCommand, decode_unit
from qnet.routing.client import (
    CellReceived,
    CellsReceived,
    CircuitClosed,
    CircuitFailed,
    CircuitOpened,
    ClientCircuits,
)


class Net:
    """A client and ``n`` relays (the last one an exit), linked in a line, in memory.

    Link numbering: the client's link to relay 0 is link 0 at relay 0; relay i's
    link to relay i+1 is link 1 at relay i and link 0 at relay i+1.
    """

    def __init__(self, n: int = 3) -> None:
        self.keys = [S.MixKey.generate() for _ in range(n)]
        self.ids = [os.urandom(32) for _ in range(n)]
        self.relays = [
            R.RelayEngine(lambda k=k: [k], is_exit=(i == n - 1)) for i, k in enumerate(self.keys)
        ]
        for relay in self.relays:
            relay.link_opened(0, dialed=False)
        self.client = ClientCircuits(dialed=True)
        self.queue: deque[tuple[int, int, bytes]] = deque()  # (node index or -1, link, unit)
        self.events: list[object] = []
        self.exit_cells: list[tuple[int, RelayCell]] = []
        self.now = 0.0

    def path(self) -> list[C.HopRoute]:
        return [
            C.HopRoute(node_id=i, onion_public=k.public_bytes)
            for i, k in zip(self.ids, self.keys, strict=True)
        ]

    def deliver(self, sender: int, link: int, unit: bytes) -> None:
        # Relay i link 1 ↔ relay i+1 link 0; relay 0 link 0 ↔ client.
        if sender == -1:
            self.queue.append((0, 0, unit))
        elif link == 0:
            self.queue.append((sender - 1, 1, unit) if sender > 0 else (-1, 0, unit))
        else:
            self.queue.append((sender + 1, 0, unit))

    def handle(self, index: int, actions: list[R.Action]) -> None:
        for action in actions:
            if isinstance(action, R.Send):
                for i in range(0, len(action.units), UNIT_LEN):
                    self.deliver(index, action.link, action.units[i : i + UNIT_LEN])
            elif isinstance(action, R.NeedLink):
                relay = self.relays[index]
                if 1 not in relay._links:
                    relay.link_opened(1, dialed=True)
                assert action.node_id == self.ids[index + 1]
                self.handle(index, relay.extend(action.token, 1))
            elif isinstance(action, R.ExitCell):
                self.exit_cells.append((action.circuit, action.cell))

    def run(self) -> None:
        while self.queue:
            node, link, unit = self.queue.popleft()
            if node == -1:
                events, replies = self.client.receive_units([unit], self.now)
                self.events += events
                for r in replies:
                    self.deliver(-1, 0, r)
            else:
                self.handle(node, self.relays[node].receive_units(link, [unit], self.now))

    def build(self) -> int:
        cid, unit = self.client.create(self.path(), self.now)
        self.deliver(-1, 0, unit)
        self.run()
        return cid


def test_build_and_carry_cells_both_ways() -> None:
    net = Net(3)
    cid = net.build()
    assert any(isinstance(e, CircuitOpened) and e.circ_id == cid for e in net.events)
    cells = [
        RelayCell(command=RelayCommand.DATA, stream_id=1, data=bytes([i]) * 100) for i in range(40)
    ]
    for unit in net.client.send(cid, cells):
        net.deliver(-1, 0, unit)
    net.run()
    assert [c for _, c in net.exit_cells] == cells
    exit_circ = net.exit_cells[0][0]
    net.handle(2, net.relays[2].exit_send(exit_circ, cells[:5]))
    net.run()
    got = [e.cell for e in net.events if isinstance(e, CellReceived)]
    assert got == cells[:5]
    assert net.relays[0].forwarded_cells == 45 and net.relays[1].forwarded_cells == 45


def test_a_tampered_cell_kills_only_its_circuit() -> None:
    net = Net(3)
    a, b = net.build(), net.build()
    units = net.client.send(a, [RelayCell(command=RelayCommand.DATA, stream_id=1, data=b"x")])
    bad = bytearray(units[0])
    bad[500] ^= 0x04
    net.deliver(-1, 0, bytes(bad))
    net.run()
    closed = [e for e in net.events if isinstance(e, CircuitClosed)]
    assert closed == [CircuitClosed(a, R.DestroyReason.INTEGRITY)]
    assert net.relays[2].drops["relay_bad_tag"] == 1
    for unit in net.client.send(b, [RelayCell(command=RelayCommand.DATA, stream_id=2, data=b"ok")]):
        net.deliver(-1, 0, unit)
    net.run()
    assert net.exit_cells[-1][1].data == b"ok"
    assert all(r.circuit_count == 1 for r in net.relays)


def test_destroy_travels_both_ways() -> None:
    net = Net(3)
    cid = net.build()
    net.deliver(-1, 0, net.client.destroy(cid) or b"")
    net.run()
    assert all(r.circuit_count == 0 for r in net.relays)
    cid = net.build()
    exit_circ = next(iter(net.relays[2]._circuits))
    net.handle(2, net.relays[2].exit_close(exit_circ, R.DestroyReason.REQUESTED))
    net.run()
    assert CircuitClosed(cid, R.DestroyReason.REQUESTED) in net.events
    assert all(r.circuit_count == 0 for r in net.relays)


def test_a_lost_link_fails_circuits_on_both_sides() -> None:
    net = Net(3)
    cid = net.build()
    net.handle(1, net.relays[1].link_closed(1))  # middle loses its link to the exit
    net.run()
    assert CircuitClosed(cid, R.DestroyReason.DESTROYED) in net.events
    assert net.relays[0].circuit_count == 0 and net.relays[1].circuit_count == 0


def test_refusals() -> None:
    net = Net(3)
    # A non-exit as last hop refuses; the client sees a failed build.
    net2 = Net(2)
    net2.relays[1].is_exit = False
    cid = net2.build()
    assert any(isinstance(e, CircuitFailed) and e.circ_id == cid for e in net2.events)
    assert net2.relays[1].drops["create_not_an_exit"] == 1
    # A replayed CREATE is refused.
    cid, unit = net.client.create(net.path(), 0.0)
    for _ in range(2):
        net.handle(0, net.relays[0].receive_units(0, [unit], 0.0))
    assert net.relays[0].drops["create_bad_id"] == 1  # same circuit id twice
    other = Unit(circ_id=cid ^ 1, command=UnitCommand.CREATE, body=decode_unit(unit).body).encode()
    net.handle(0, net.relays[0].receive_units(0, [other], 0.0))
    assert net.relays[0].drops["create_replay"] == 1


def test_garbage_units_are_counted_and_ignored() -> None:
    net = Net(3)
    relay = net.relays[0]
    actions = relay.receive_units(0, [b"", os.urandom(UNIT_LEN), bytes(UNIT_LEN)], 0.0)
    assert actions == [] or all(isinstance(a, R.Send) for a in actions)
    assert sum(relay.drops.values()) >= 2
    cid = net.build()
    assert any(isinstance(e, CircuitOpened) and e.circ_id == cid for e in net.events)


def test_idle_circuits_expire() -> None:
    net = Net(3)
    cid = net.build()
    for i, relay in enumerate(net.relays):
        net.handle(i, relay.expire(10_000.0))
    net.run()
    assert all(r.circuit_count == 0 for r in net.relays)
    assert CircuitClosed(cid, R.DestroyReason.TIMEOUT) in net.events


@pytest.mark.parametrize("n", [1, 2, 5])
def test_other_path_lengths(n: int) -> None:
    net = Net(n)
    cid = net.build()
    for unit in net.client.send(
        cid, [RelayCell(command=RelayCommand.BEGIN, stream_id=1, data=b"a:1")]
    ):
        net.deliver(-1, 0, unit)
    net.run()
    assert net.exit_cells[-1][1].data == b"a:1"


def _units(actions: list[R.Action]) -> list[bytes]:
    """The units of every ``Send``, one by one."""
    blob = b"".join([a.units for a in actions if isinstance(a, R.Send)])
    return [blob[i : i + UNIT_LEN] for i in range(0, len(blob), UNIT_LEN)]


@pytest.mark.parametrize("plaintexts", [False, True])
def test_a_tampered_cell_in_a_batch_keeps_the_cells_before_it(plaintexts: bool) -> None:
    """The client opens a run of cells as one batch: the cells before a bad one are
    delivered, the circuit closes at it, and the rest count as unknown-circuit drops."""
    net = Net(3)
    a = net.build()
    cells = [RelayCell(command=RelayCommand.DATA, stream_id=1, data=bytes([i])) for i in range(6)]
    for unit in net.client.send(a, cells):
        net.deliver(-1, 0, unit)
    net.run()
    exit_circ = net.exit_cells[0][0]
    units = _units(net.relays[2].exit_send(exit_circ, cells))
    bad = bytearray(units[2])
    bad[600] ^= 0x01
    units[2] = bytes(bad)
    for hop in (1, 0):  # back through the middle and the entry, each as one batch
        actions = net.relays[hop].receive_units(1, units, net.now)
        assert len([a for a in actions if isinstance(a, R.Send)]) == 1  # one write per run
        units = _units(actions)
    assert len(units) == 6
    if plaintexts:
        events, replies = net.client.receive_units(units, net.now, plaintexts=True)
        assert events[0] == CellsReceived(a, b"".join(c.encode() for c in cells[:2]))
        assert len(events) == 2
    else:
        events, replies = net.client.receive_units(units, net.now)
        assert [e.cell for e in events if isinstance(e, CellReceived)] == cells[:2]
    assert events[-1] == CircuitClosed(a, R.DestroyReason.INTEGRITY)
    assert [decode_unit(r).command for r in replies] == [UnitCommand.DESTROY]
    assert net.client.drops["unknown_circuit"] == 3
