"""The relay and exit roles in Trio: links in, the circuit engine, links out.

``RelayService`` is the node's link service (it gets every accepted HTX link)
and runs the cell links it dials itself. Protocol decisions live in
``qnet.routing.relay.RelayEngine`` (circuits) and, at an exit, in
``qnet.node.exit.ExitCircuit`` (streams to the Internet); this module moves
units between them and the links.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from qnet.htx.transport import HtxLink, PeerInfo
from qnet.mix import sphinx as S
from qnet.node.exit import ExitCircuit, ExitPolicy
from qnet.node.links import DIAL_ERRORS, CellLink, LinkManager
from qnet.routing import relay as R

log = logging.getLogger("qnet.node.relay")

EXPIRE_EVERY = 5.0


class DirectoryView(Protocol):
    """What the relay needs from the consensus."""

    def peer_info(self, node_id: bytes) -> PeerInfo | None:
        """How to dial ``node_id`` (``None``: not in the consensus)."""
        ...

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        """The node whose published link key this is (``None``: a client)."""
        ...


class RelayService:
    """Relay (and, with ``exit_policy``, exit) circuits for one node.

    Start it with ``await nursery.start(service.run)``; give it every accepted
    HTX link with ``await service.handle_link(node, link)``.
    """

    def __init__(
        self,
        *,
        mix_keys: Callable[[], Sequence[S.MixKey]],
        directory: DirectoryView,
        static_private: bytes,
        exit_policy: ExitPolicy | None = None,
        limits: R.RelayLimits | None = None,
        on_drop: Callable[[str, int], None] | None = None,
        queue_limit: int = 8192,
        exit_bind_address: str | None = None,
        on_sphinx: Callable[[int, list[bytes]], None] | None = None,
        on_link_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = R.RelayEngine(
            mix_keys, is_exit=exit_policy is not None, limits=limits, mix=on_sphinx is not None
        )
        #: The mix role's intake: ``on_sphinx(link_number, packets)`` per link and batch,
        #: called without waiting (it must queue or drop, never block).
        self.on_sphinx = on_sphinx
        #: Told the number of every link that ends (the mix role's delivery handler).
        self.on_link_closed = on_link_closed
        self.directory = directory
        self.exit_policy = exit_policy
        self.links = LinkManager(
            peer_info=directory.peer_info,
            on_units=self._on_units,
            on_closed=self._on_closed,
            static_private=static_private,
        )
        self._on_drop = on_drop
        #: Units waiting for one link's writer before the link counts as stuck.
        self.queue_limit = queue_limit
        self.exit_bind_address = exit_bind_address
        self._known_links: set[int] = set()
        self._exits: dict[int, ExitCircuit] = {}
        self._nursery: trio.Nursery | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.links.run)
            nursery.start_soon(self._expire_loop)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self.links.close_all()

    async def handle_link(self, node: object, link: HtxLink) -> None:
        """Serve one accepted HTX link until it ends (the node's LinkService hook)."""
        peer = self.directory.node_for_link_key(link.remote_static)
        await self.links.accept(link, peer)

    # --- units in ------------------------------------------------------------------------

    def _ensure_link(self, link: CellLink) -> None:
        if link.number not in self._known_links:
            self._known_links.add(link.number)
            self.engine.link_opened(link.number, dialed=link.dialed)

    async def _on_units(self, link: CellLink, units: list[bytes]) -> None:
        self._ensure_link(link)
        actions = self.engine.receive_units(link.number, units, trio.current_time())
        self._report_drops()
        await self.dispatch(actions)

    async def _on_closed(self, link: CellLink) -> None:
        self._known_links.discard(link.number)
        if self.on_link_closed is not None:
            self.on_link_closed(link.number)
        await self.dispatch(self.engine.link_closed(link.number))

    def _report_drops(self) -> None:
        """Hand drop counts to the node's metrics (when wired) and reset them."""
        if self._on_drop is not None and self.engine.drops:
            for reason, count in self.engine.drops.items():
                self._on_drop(reason, count)
            self.engine.drops.clear()

    # --- actions out -----------------------------------------------------------------------

    async def dispatch(self, actions: Sequence[R.Action]) -> None:
        """Carry out the engine's actions: sends (grouped per link, in order), link
        requests, and exit events."""
        sends: dict[int, list[bytes]] = defaultdict(list)
        sphinx: dict[int, list[bytes]] = defaultdict(list)
        follow_up: list[R.Action] = []
        for action in actions:
            if isinstance(action, R.Send):
                sends[action.link].append(action.units)
            elif isinstance(action, R.SphinxIn):
                sphinx[action.link].append(action.packet)
            elif isinstance(action, R.NeedLink):
                assert self._nursery is not None
                self._nursery.start_soon(self._extend, action)
            elif isinstance(action, R.ExitOpened):
                self._open_exit(action.circuit)
            elif isinstance(action, R.ExitCell):
                exit_circuit = self._exits.get(action.circuit)
                if exit_circuit is not None:
                    exit_circuit.on_cell(action.cell)
            elif isinstance(action, R.ExitClosed):
                exit_circuit = self._exits.pop(action.circuit, None)
                if exit_circuit is not None:
                    exit_circuit.closed()
        if sphinx and self.on_sphinx is not None:
            for link, packets in sphinx.items():
                self.on_sphinx(link, packets)
        for link, units in sends.items():
            if not self.links.queue(link, units, self.queue_limit):
                # Gone, or a peer that stopped reading: its circuits are torn down.
                self._known_links.discard(link)
                follow_up += self.engine.link_closed(link)
        if follow_up:
            await self.dispatch(follow_up)

    async def _extend(self, need: R.NeedLink) -> None:
        try:
            link = await self.links.get(need.node_id)
        except (*DIAL_ERRORS, LookupError) as exc:
            log.info("extend to %s failed: %r", need.node_id.hex()[:12], exc)
            await self.dispatch(self.engine.extend_failed(need.token))
            return
        self._ensure_link(link)
        await self.dispatch(self.engine.extend(need.token, link.number))

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRE_EVERY)
            await self.dispatch(self.engine.expire(trio.current_time()))

    # --- exits -------------------------------------------------------------------------------

    def _open_exit(self, ident: int) -> None:
        assert self._nursery is not None and self.exit_policy is not None

        async def send_plaintexts(plains: bytes) -> None:
            await self.dispatch(self.engine.exit_send_plaintexts(ident, plains))

        async def close(reason: R.DestroyReason) -> None:
            self._exits.pop(ident, None)
            await self.dispatch(self.engine.exit_close(ident, reason))

        circuit = ExitCircuit(
            ident,
            self.exit_policy,
            send_plaintexts=send_plaintexts,
            close=close,
            bind_address=self.exit_bind_address,
        )
        self._exits[ident] = circuit
        self._nursery.start_soon(circuit.run)
