"""The node program: configuration, keys, and the services of its roles in one nursery.

    qnet node --config node.toml

Start-up order (nothing is bound until the first three succeed):

1. read the config (a bad one: the ``ConfigError`` on stderr, exit status 2);
2. open the data directory, loading or creating every key (a refused key file:
   exit 2); load the cover site;
3. configure logging;
4. in one nursery, each started with ``nursery.start`` so that the next one only
   begins once the previous is ready: the role services, the key-rotation task,
   the HTX listeners (TCP, and QUIC when ``htx.quic_port`` is set), the metrics
   endpoint when enabled; then one ready line on stdout (and in the log) with
   the bound ports.

SIGINT or SIGTERM stops the node gracefully: ``node.stopping`` is set (link
handlers and roles should wind down: DESTROY their circuits, close their links),
the node waits up to ``SHUTDOWN_GRACE`` seconds (``move_on_after``) for the links
to close, then cancels everything that remains and exits with status 0. Keys stay
on disk.

Extension points, for the roles that arrive with later work:

* :class:`LinkService`: the one object that gets every accepted HTX link
  (``handle_link``). A node has exactly one, because relay, exit and mix traffic
  share links (one packet size). :class:`PlaceholderLinkService` holds links open
  and refuses their streams until the circuit layer replaces it.
* :class:`RoleService`: a background service of one role (``run``), such as
  publishing descriptors or an authority's voting loop. ``ROLE_SERVICES`` maps
  each role to a factory; every role has an idle placeholder for now.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from qnet import __version__
from qnet.dir.descriptor import Role
from qnet.htx import cover
from qnet.htx.quic import serve_quic
from qnet.htx.transport import HtxLink, LinkHandler, ServerConfig, serve_tcp
from qnet.node.config import ConfigError, NodeConfig, load_config
from qnet.node.directory_agent import DirectoryAgent
from qnet.node.keys import KeyStore, KeyStoreError
from qnet.node.logging import configure_logging, log_event
from qnet.node.metrics import NodeMetrics, serve_metrics
from qnet.node.roles import (
    DirectoryHolder,
    StreamRouter,
    authority_factory,
    exit_factory,
    mix_factory,
    relay_factory,
    ticket_config,
)

__all__ = [
    "ROLE_SERVICES",
    "SHUTDOWN_GRACE",
    "BoundPorts",
    "IdleRole",
    "LinkService",
    "Node",
    "PlaceholderLinkService",
    "RoleService",
    "main",
    "prepare",
]

log = logging.getLogger("qnet.node")

#: Seconds a stopping node gives its links and roles to finish politely.
SHUTDOWN_GRACE: Final = 5.0
#: Exit status for a refused configuration or data directory (nothing was bound).
EXIT_CONFIG: Final = 2


class LinkService(Protocol):
    """Gets every HTX link the node accepts.

    ``handle_link`` runs once per link, in that connection's task; returning closes
    the link (CLOSE, then TLS close_notify). It should return soon after
    ``node.stopping`` is set, having torn its circuits down. It may raise only for
    bugs: a misbehaving peer is a reason to return, not to raise.
    """

    async def handle_link(self, node: Node, link: HtxLink) -> None: ...


class RoleService(Protocol):
    """The background work of one role. ``name`` appears in logs."""

    name: str

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        """Get ready, call ``task_status.started()``, then work until cancelled.

        Raising (after or before ``started``) stops the whole node with an error.
        """
        ...


class PlaceholderLinkService:
    """Holds each link open until the peer closes it or the node stops; every stream
    the peer opens is ended at once (EOF) and its data discarded."""

    async def handle_link(self, node: Node, link: HtxLink) -> None:
        async with trio.open_nursery() as nursery:

            async def refuse_streams() -> None:
                while True:
                    try:
                        stream = await link.accept_stream()
                    except trio.EndOfChannel:
                        break
                    nursery.start_soon(_refuse, stream)
                nursery.cancel_scope.cancel()

            async def stop_with_node() -> None:
                await node.stopping.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(refuse_streams)
            nursery.start_soon(stop_with_node)


async def _refuse(stream: trio.abc.HalfCloseableStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
        while await stream.receive_some():
            pass


class IdleRole:
    """A role with nothing to do yet: ready at once, then waits."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()


def _idle(name: str, node: Node) -> RoleService:
    return IdleRole(name)


RoleFactory = Callable[["Node"], RoleService]
#: Which service each configured role starts. Later work replaces entries.
ROLE_SERVICES: dict[Role, RoleFactory] = {
    role: functools.partial(_idle, role.value) for role in Role
}
ROLE_SERVICES[Role.RELAY] = relay_factory
ROLE_SERVICES[Role.EXIT] = exit_factory
ROLE_SERVICES[Role.AUTHORITY] = authority_factory
ROLE_SERVICES[Role.MIX] = mix_factory


@dataclass(frozen=True, slots=True)
class BoundPorts:
    """What the node is listening on, once ready (``None``: not enabled)."""

    tcp: int
    quic: int | None
    metrics: int | None


class Node:
    """A running node: its config, keys, metrics and services.

    ``run`` is the whole life of the node; it returns after a graceful stop.
    """

    def __init__(
        self,
        config: NodeConfig,
        keys: KeyStore,
        *,
        site: cover.CoverSite = cover.DEFAULT_SITE,
        link_service: LinkService | None = None,
        metrics: NodeMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self.site = site
        #: The node's view of the network (the directory agent keeps it current).
        self.directory = DirectoryHolder()
        #: Routes every stream of every accepted link by its service byte.
        self.router = StreamRouter()
        self.link_service: LinkService = link_service or self.router
        self.metrics = metrics or NodeMetrics()
        self.clock = clock
        #: Set when a stop was requested; services should wind down.
        self.stopping = trio.Event()
        self.ports: BoundPorts | None = None
        self._open_links = 0
        self._links_idle = trio.Event()
        self._links_idle.set()

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGINT and SIGTERM do)."""
        self.stopping.set()

    def epoch(self, now: float | None = None) -> int:
        """The directory epoch at ``now`` (default: the node's clock)."""
        t = self.clock() if now is None else now
        return int(t // self.config.directory.epoch_seconds)

    def server_config(self) -> ServerConfig:
        return self.keys.server_config(
            self.site,
            handshake_timeout=self.config.htx.handshake_timeout,
            on_handshake_failure=lambda _: self.metrics.htx_handshake_failures.inc(),
            ticket_config=ticket_config(self.config),
        )

    async def _on_link(self, link: HtxLink) -> None:
        if self.stopping.is_set() or self._open_links >= self.config.limits.max_links:
            return  # returning closes it; a stopping or full node takes no new links
        self._open_links += 1
        self._links_idle = trio.Event() if self._open_links == 1 else self._links_idle
        self.metrics.htx_sessions.inc()
        try:
            await self.link_service.handle_link(self, link)
        finally:
            self._open_links -= 1
            self.metrics.htx_sessions.dec()
            if self._open_links == 0:
                self._links_idle.set()

    async def _rotate_keys(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Each epoch: make this and the next epoch's mix keys, erase expired ones."""
        epoch_seconds = self.config.directory.epoch_seconds
        self.keys.rotate_mix(self.epoch())
        task_status.started()
        while True:
            now = self.clock()
            await trio.sleep((int(now // epoch_seconds) + 1) * epoch_seconds - now)
            epoch = self.epoch()
            self.keys.rotate_mix(epoch)
            log_event(log, logging.INFO, "mix_keys_rotated", epoch=epoch)

    async def run(
        self, *, task_status: trio.TaskStatus[BoundPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every service in order, report the ports, run until a stop, then stop.

        Raises ``OSError`` if a listener cannot bind.
        """
        cfg = self.config
        async with trio.open_nursery() as nursery:
            for role in cfg.node.roles:
                service = ROLE_SERVICES[role](self)
                await nursery.start(functools.partial(service.run, self))
                log_event(log, logging.DEBUG, "role_ready", role=service.name)
            await nursery.start(self._rotate_keys)
            server = self.server_config()
            listeners = await nursery.start(
                _serve_tcp, self._on_link, server, cfg.htx.host, cfg.htx.tcp_port
            )
            tcp_port = int(listeners[0].socket.getsockname()[1])
            quic_port = None
            if cfg.htx.quic_port is not None:
                sock = await nursery.start(
                    _serve_quic, self._on_link, server, cfg.htx.host, cfg.htx.quic_port
                )
                quic_port = int(sock.getsockname()[1])
            if _publishes_descriptor(cfg):
                agent = DirectoryAgent(
                    cfg,
                    self.keys,
                    clock=self.clock,
                    tcp_port=tcp_port,
                    quic_port=quic_port,
                    on_consensus=lambda c: self.metrics.set_consensus(c.valid_after),
                )
                self.directory.view = agent
                if self.router.directory is None:
                    self.router.directory = agent.handle_request  # serve as a verified cache
                await nursery.start(agent.run)
            metrics_port = None
            if cfg.metrics.enabled:
                metrics_port = await nursery.start(
                    serve_metrics, self.metrics, cfg.metrics.host, cfg.metrics.port
                )
            self.ports = BoundPorts(tcp=tcp_port, quic=quic_port, metrics=metrics_port)
            log_event(
                log,
                logging.INFO,
                "ready",
                nickname=cfg.node.nickname,
                node_id=self.keys.identity.node_id.hex(),
                roles=",".join(r.value for r in cfg.node.roles),
                tcp_port=tcp_port,
                quic_port=quic_port,
                metrics_port=metrics_port,
            )
            task_status.started(self.ports)

            await self.stopping.wait()
            log_event(log, logging.INFO, "stopping", open_links=self._open_links)
            with trio.move_on_after(SHUTDOWN_GRACE):
                await self._links_idle.wait()
            nursery.cancel_scope.cancel()
        log_event(log, logging.INFO, "stopped")


def _publishes_descriptor(cfg: NodeConfig) -> bool:
    """Relays, exits and mixnodes publish descriptors and follow the consensus."""
    roles = set(cfg.node.roles) - {Role.AUTHORITY}
    return bool(roles) and bool(cfg.directory.authorities)


# ``nursery.start`` passes only positional arguments and task_status; these adapters
# bind the keyword-only host/port of the HTX servers.


async def _serve_tcp(
    handler: LinkHandler,
    server: ServerConfig,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_tcp(handler, server, host=host, port=port, task_status=task_status)


async def _serve_quic(
    handler: LinkHandler,
    server: ServerConfig,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[trio.socket.SocketType] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_quic(handler, server, host=host, port=port, task_status=task_status)


# --- the command ------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"qnet node: {message}", file=sys.stderr)
    return EXIT_CONFIG


def prepare(config_path: str) -> Node | int:
    """Steps 1-3 of start-up; returns the node, or an exit status after printing why."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return _fail(f"bad config {config_path}: {exc}")
    try:
        keys = KeyStore.open(
            config.node.data_dir, server_name=config.htx.server_name, now=time.time()
        )
    except KeyStoreError as exc:
        return _fail(f"refused data directory: {exc}")
    except OSError as exc:
        return _fail(f"data directory {config.node.data_dir}: {exc}")
    site = cover.DEFAULT_SITE
    if config.htx.cover_dir is not None:
        try:
            site = cover.CoverSite.from_directory(config.htx.cover_dir)
        except (OSError, ValueError) as exc:
            return _fail(str(ConfigError("htx.cover_dir", str(config.htx.cover_dir), str(exc))))
    configure_logging(
        config.node.log_level,
        config.node.log_format.value,
        log_addresses=config.node.log_addresses,
    )
    return Node(config, keys, site=site)


async def _run_until_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log_event(log, logging.INFO, "signal", signal=signal.Signals(signum).name)
                    node.request_stop()

            async def run_node(*, task_status: trio.TaskStatus[BoundPorts]) -> None:
                await node.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped: stop watching for signals too

            nursery.start_soon(watch)
            ports = await nursery.start(run_node)
            print(
                f"qnet node {__version__} ready: nickname={node.config.node.nickname} "
                f"tcp={ports.tcp} quic={ports.quic or '-'} metrics={ports.metrics or '-'}",
                flush=True,
            )


def main(config_path: str) -> int:
    """``qnet node --config PATH``: the exit status (0 after a graceful stop)."""
    prepared = prepare(config_path)
    if isinstance(prepared, int):
        return prepared
    try:
        trio.run(_run_until_signal, prepared)
    except OSError as exc:
        print(f"qnet node: cannot listen: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        bind, rest = group.split(OSError)
        if bind is None or rest is not None:
            raise
        print(f"qnet node: cannot listen: {bind.exceptions[0]}", file=sys.stderr)
        return 1
    return 0
