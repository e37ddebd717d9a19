"""The node's roles wired together: relay/exit, authority, and the stream router.

Every accepted HTX link goes to ``StreamRouter``, which reads each stream's
service byte (spec/htx.md §6) and hands cell streams to the relay service and
directory requests to the authority (or the node's verified directory cache).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from qnet.constants import UNIT_LEN
from qnet.dir import net as dirnet
from qnet.dir.authority import AuthorityConfig, AuthorityService
from qnet.dir.descriptor import Role
from qnet.dir.flags import FlagRules
from qnet.dir.protocol import Request, Response
from qnet.dir.vote import DEFAULT_NETWORK_PARAMS, Authorities, DirectoryParams
from qnet.htx.services import Service, read_service
from qnet.htx.ticket import TicketConfig
from qnet.htx.transport import HtxLink, HtxStream, PeerInfo
from qnet.mix import sphinx as S
from qnet.mix.delivery import DeliveryHandler
from qnet.mix.mixnode import MixSettings
from qnet.node.config import NodeConfig
from qnet.node.mix import CountingDelivery, MixService
from qnet.node.relay import DirectoryView, RelayService
from qnet.routing.relay import RelayLimits

if TYPE_CHECKING:
    from qnet.node.app import Node

log = logging.getLogger("qnet.node.roles")

DirectoryHandler = Callable[[Request], Awaitable[Response]]
CellHandler = Callable[[HtxLink, HtxStream], Awaitable[None]]


# --- settings derived from the config -------------------------------------------------------


def directory_params(config: NodeConfig) -> DirectoryParams:
    """What every authority and verifier of this network must agree on."""
    epoch = config.directory.epoch_seconds
    if not config.directory.testing:
        return DirectoryParams(epoch_length=epoch)
    rules = FlagRules(
        running_max_age=max(3 * epoch, 30),
        stable_min_uptime=0,
        guard_min_known=0,
        fast_guarantee=1,
        guard_guarantee=1,
    )
    return DirectoryParams(epoch_length=epoch, rules=rules, vote_max_age=max(4 * epoch, 60))


def network_params(config: NodeConfig) -> dict[str, int]:
    """The parameters an authority votes for. A test network mixes with short delays
    and a fast payload stream, so a mixed-mode fetch finishes in seconds."""
    params = dict(DEFAULT_NETWORK_PARAMS)
    if config.directory.testing:
        params.update(mix_delay_mean_ms=5, mix_payload_per_s=400)
    return params


def ticket_config(config: NodeConfig) -> TicketConfig:
    """A test network dials everything from 127.0.0.1: lift the per-/24 rate limit there."""
    if config.directory.testing:
        return TicketConfig(rate_burst=100_000, rate_per_second=100_000.0)
    return TicketConfig()


# --- the directory view the relay uses ----------------------------------------------------------


class DirectoryHolder:
    """The node's current view of the network; the directory agent replaces ``view``."""

    def __init__(self) -> None:
        self.view: DirectoryView | None = None

    def peer_info(self, node_id: bytes) -> PeerInfo | None:
        return self.view.peer_info(node_id) if self.view is not None else None

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        return self.view.node_for_link_key(link_public) if self.view is not None else None


class NodeMixKeys:
    """The mix keys a relay tries, newest relevant first: this epoch's, the next
    epoch's (clients with a fresh consensus), and the previous one's while the key
    store still holds it (its grace period)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._cache: dict[int, S.MixKey] = {}

    def __call__(self) -> list[S.MixKey]:
        epoch = self._node.epoch()
        keys: list[S.MixKey] = []
        for e in (epoch, epoch + 1, epoch - 1):
            key = self._key(e)
            if key is not None:
                keys.append(key)
        for stale in [e for e in self._cache if e < epoch - 1]:
            del self._cache[stale]
        return keys

    def _key(self, epoch: int) -> S.MixKey | None:
        if epoch < 0:
            return None
        if epoch not in self._cache:
            store = self._node.keys
            raw = (
                store.mix_keys(epoch).current
                if epoch >= self._node.epoch()
                else store.mix_key(epoch)
            )
            if raw is None:
                return None
            self._cache[epoch] = S.MixKey(raw.private_bytes)
        return self._cache[epoch]


# --- the link service ----------------------------------------------------------------------------


class StreamRouter:
    """The node's link service: routes every stream by its service byte."""

    def __init__(self) -> None:
        self.cells: CellHandler | None = None
        self.directory: DirectoryHandler | None = None

    async def handle_link(self, node: Node, link: HtxLink) -> None:
        async with trio.open_nursery() as nursery:

            async def stop_with_node() -> None:
                await node.stopping.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_with_node)
            while True:
                try:
                    stream = await link.accept_stream()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    break
                nursery.start_soon(self._route, link, stream)
            nursery.cancel_scope.cancel()

    async def _route(self, link: HtxLink, stream: HtxStream) -> None:
        service = await read_service(stream)
        if service is Service.CELLS and self.cells is not None:
            await self.cells(link, stream)
        elif service is Service.DIRECTORY and self.directory is not None:
            await dirnet.serve_stream(stream, self.directory)
        else:
            await stream.aclose()


# --- roles ----------------------------------------------------------------------------------------


def mix_settings(config: NodeConfig) -> MixSettings:
    """The mix role's bounds: the ``[mix]`` defaults, sized for this network's epoch."""
    return MixSettings(epoch_seconds=config.directory.epoch_seconds)


def counting_delivery(node: Node, mix: MixService) -> DeliveryHandler:
    return CountingDelivery()


def mixed_mode_delivery(node: Node, mix: MixService) -> DeliveryHandler:
    """Every mix node is a gateway for its clients; an exit also ends mixed-mode streams."""
    from qnet.node.mixed_exit import mixed_delivery  # the exit imports node pieces

    return mixed_delivery(node, mix)


#: Makes the handler for packets that end at this node's mix (spec/mix.md §7),
#: given the node and its ``MixService`` (for ``send_packet`` and ``push``).
#: Exits and gateways replace it; the default counts and drops.
MIX_DELIVERY: Callable[[Node, MixService], DeliveryHandler] = mixed_mode_delivery


class RelayRole:
    """Relay circuits, and exit them when the node has the exit role; with the mix
    role, SPHINX units go to a ``MixService`` sharing the same links.

    ``circuits=False`` (a mix-only node) refuses every CREATE (``create_limit``).
    """

    name = "relay"

    def __init__(self, node: Node, *, circuits: bool = True, name: str = "relay") -> None:
        cfg = node.config
        self.name = name
        self.mix: MixService | None = None
        if Role.MIX in cfg.node.roles:
            metrics = node.metrics

            def forwarded(n: int) -> None:
                metrics.cells_forwarded.inc(n)
                metrics.bytes_forwarded.inc(n * UNIT_LEN)

            self.mix = MixService(
                mix_settings(cfg),
                mix_keys=NodeMixKeys(node),
                on_drop=metrics.drop,
                on_forward=forwarded,
            )
            self.mix.delivery = MIX_DELIVERY(node, self.mix)
        limits = RelayLimits(max_circuits_per_link=cfg.limits.max_circuits_per_link)
        if not circuits:
            limits = RelayLimits(max_circuits_per_link=0, max_circuits=0)
        self.service = RelayService(
            mix_keys=NodeMixKeys(node),
            directory=node.directory,
            static_private=node.keys.link.private_bytes,
            exit_policy=cfg.exit.allows if Role.EXIT in cfg.node.roles else None,
            limits=limits,
            on_drop=node.metrics.drop,
            exit_bind_address=cfg.exit.bind_address,
            on_sphinx=self.mix.receive if self.mix is not None else None,
            on_link_closed=self.mix.link_closed if self.mix is not None else None,
        )
        if self.mix is not None:
            self.mix.attach(self.service.links)

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        async def cells(link: HtxLink, stream: HtxStream) -> None:
            peer = node.directory.node_for_link_key(link.remote_static)
            await self.service.links.accept_cell_stream(link, stream, peer)

        node.router.cells = cells
        if self.mix is None:
            await self.service.run(task_status=task_status)
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mix.run)
            await nursery.start(self.service.run)
            task_status.started()


class AuthorityRole:
    """A directory authority: votes, consensus, and answering directory requests."""

    name = "authority"

    def __init__(self, node: Node) -> None:
        cfg = node.config
        entries = cfg.directory.authorities
        self.service = AuthorityService(
            AuthorityConfig(
                identity=node.keys.identity,
                authorities=Authorities.of(e.identity for e in entries),
                peers={e.node_id: e.peer() for e in entries},
                data_dir=cfg.node.data_dir / "authority",
                params=directory_params(cfg),
                network=network_params(cfg),
                link_private=node.keys.link.private_bytes,
                clock=node.clock,
            )
        )

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        node.router.directory = self.service.handle_request
        await self.service.run(task_status=task_status)


class IdleRole:
    """A role whose work another role's service already does (exit with relay)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()


def relay_factory(node: Node) -> RelayRole:
    return RelayRole(node)


def exit_factory(node: Node) -> RelayRole | IdleRole:
    # One relay service serves both roles; with both configured, RELAY starts it.
    if Role.RELAY in node.config.node.roles:
        return IdleRole("exit")
    return RelayRole(node)


def mix_factory(node: Node) -> RelayRole | IdleRole:
    # The mix shares the relay service's links; a relay or exit role starts both.
    roles = node.config.node.roles
    if Role.RELAY in roles or Role.EXIT in roles:
        return IdleRole("mix")
    return RelayRole(node, circuits=False, name="mix")


def authority_factory(node: Node) -> AuthorityRole:
    return AuthorityRole(node)
