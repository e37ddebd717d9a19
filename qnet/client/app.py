"""``qnet proxy --config client.toml``: the SOCKS proxy a user runs.

It follows the consensus (fetched from the authorities every epoch), picks paths
with persistent guards, keeps circuits per isolation key (``CircuitManager``),
and serves SOCKS5/4a on loopback, answering each stream over a circuit.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import signal
import sys
import time
from collections.abc import Hashable, Sequence

import trio

from qnet.client.circuits import (
    CircuitBuildError,
    CircuitClosedError,
    CircuitConfig,
    CircuitManager,
    CircuitStream,
    Path,
    StreamRefused,
)
from qnet.client.guards import GUARDS_FILE, GuardConfig, load_guards, save_guards
from qnet.client.mixed import (
    ConsensusTopology,
    MixClient,
    MixedConnector,
    SelectingConnector,
)
from qnet.client.path import NoPathError, PathConfig, PathSelector
from qnet.client.proxy import ConnectError, ProxyConfig, serve_socks
from qnet.client.socks import IsolationFlags, SocksConfig, SocksRequest
from qnet.dir.client import fetch_consensus
from qnet.dir.consensus import Consensus
from qnet.dir.vote import Authorities
from qnet.errors import DirectoryError
from qnet.node.config import ClientConfig, ConfigError, load_client_config
from qnet.node.directory_agent import ConsensusDirectory
from qnet.routing.streams import EndReason

log = logging.getLogger("qnet.client")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: END reasons that another circuit (another exit) might not give.
RETRYABLE = {EndReason.DESTROYED, EndReason.MISC, EndReason.TIMEOUT}


class Client:
    """The proxy's state: the consensus, the path selector, the circuits."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        entries = config.directory.authorities
        if not entries:
            raise ConfigError("directory.authorities", None, "the client needs the authorities")
        self.authorities = Authorities.of(e.identity for e in entries)
        self.sources = [e.peer() for e in entries]
        self.consensus: Consensus | None = None
        self.have_consensus = trio.Event()
        data = config.proxy.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._guards_path = data / GUARDS_FILE
        rng = random.SystemRandom()
        self.guards = load_guards(self._guards_path, GuardConfig(), rng, on_corrupt="fresh")
        testing = config.directory.testing
        self.path_config = PathConfig.builder(
            n_hops=config.proxy.hops,
            enforce_distinct_subnets=not testing,
            require_exit_flag=not testing,
        ).build()
        self._rng = rng
        self.selector: PathSelector | None = None
        self.topology: ConsensusTopology | None = None
        self.manager = CircuitManager(
            self._path, config=CircuitConfig(), on_build=self._built, keyed_path_source=self._path
        )

    # --- directory -------------------------------------------------------------------------

    async def follow_consensus(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Fetch the consensus now and every epoch after; ready once one verified."""
        epoch_len = self.config.directory.epoch_seconds
        started = False
        while True:
            held = self.consensus.epoch if self.consensus is not None else None
            try:
                fetched = await fetch_consensus(
                    self.sources, self.authorities, int(time.time()), min_epoch=held
                )
            except DirectoryError as exc:
                log.info("consensus fetch failed: %s", exc)
                await trio.sleep(min(5.0, epoch_len / 4))
                continue
            self._use(fetched.consensus)
            if not started:
                started = True
                task_status.started()
            now = time.time()
            next_epoch_at = (int(now // epoch_len) + 1) * epoch_len + epoch_len / 8
            await trio.sleep(max(1.0, next_epoch_at - now))

    def _use(self, consensus: Consensus) -> None:
        self.consensus = consensus
        view = ConsensusDirectory(consensus)
        if self.topology is None:
            self.topology = ConsensusTopology(view)
        else:
            self.topology.directory = view
        if self.selector is None:
            self.selector = PathSelector(consensus, self.path_config, self._rng, guards=self.guards)
        else:
            self.selector.set_consensus(consensus)
        self.have_consensus.set()

    def _built(self, path: Path, failure: str | None) -> None:
        """Guards learn from builds: an entry we cannot reach is set aside for a while."""
        now = time.time()
        if failure is None:
            self.guards.note_success(path.entry_id, now)
        elif failure in ("link_failed", "timeout"):
            self.guards.note_failure(path.entry_id, now)
        if self.guards.dirty:
            save_guards(self._guards_path, self.guards)

    def _path(self, isolation: Hashable = None) -> Path:
        if self.selector is None:
            raise NoPathError("too_few_nodes", "no consensus yet")
        path = self.selector.build_path(None, now=time.time(), isolation=isolation).for_circuit()
        if self.guards.dirty:
            save_guards(self._guards_path, self.guards)
        return path


class LazyMixedConnector:
    """Mixed mode on first use: picks a gateway from the consensus, starts the mix
    session (cover traffic begins then, not before), and hands streams to it."""

    def __init__(self, client: Client, nursery: trio.Nursery) -> None:
        self.client = client
        self._nursery = nursery
        self._inner: MixedConnector | None = None
        self._lock = trio.Lock()

    async def _connector(self) -> MixedConnector:
        async with self._lock:
            if self._inner is None:
                await self.client.have_consensus.wait()
                topology = self.client.topology
                assert topology is not None
                gateways = topology.gateways()
                if not gateways:
                    raise ConnectError(EndReason.MISC, "the network has no mixnodes")
                gateway, _ = random.SystemRandom().choice(list(gateways))
                session = MixClient(topology, gateway)
                await self._nursery.start(session.run)
                self._inner = MixedConnector(session)
            return self._inner

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        return await (await self._connector()).connect(request)

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        return await (await self._connector()).resolve(request)

    async def resolve_ptr(self, request: SocksRequest) -> str:
        return await (await self._connector()).resolve_ptr(request)


class CircuitConnector:
    """The SOCKS proxy's connector: streams over circuits, one set per isolation key."""

    def __init__(self, client: Client, retries: int) -> None:
        self.client = client
        self.retries = retries

    def _key(self, request: SocksRequest) -> object:
        if self.client.config.proxy.isolate_dest_port:
            return (request.isolation, request.port)
        return request.isolation

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        await self.client.have_consensus.wait()
        last: ConnectError | None = None
        for _ in range(self.retries + 1):
            try:
                circuit = await self.client.manager.circuit_for(self._key(request))
                stream: CircuitStream = await circuit.open_stream(str(request.host), request.port)
                return stream
            except StreamRefused as exc:
                last = ConnectError(exc.reason, str(exc))
                if exc.reason not in RETRYABLE:
                    raise last from exc
                await circuit.aclose()
            except CircuitClosedError as exc:
                last = ConnectError(EndReason.DESTROYED, str(exc))
            except CircuitBuildError as exc:
                last = ConnectError(EndReason.MISC, f"no circuit: {exc}")
        assert last is not None
        raise last

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        await self.client.have_consensus.wait()
        try:
            circuit = await self.client.manager.circuit_for(self._key(request))
            names = await circuit.resolve(str(request.host))
        except StreamRefused as exc:
            raise ConnectError(exc.reason, str(exc)) from exc
        except (CircuitClosedError, CircuitBuildError) as exc:
            raise ConnectError(EndReason.MISC, str(exc)) from exc
        out: list[IPAddress] = []
        for name in names:
            try:
                out.append(ipaddress.ip_address(name))
            except ValueError:
                continue
        return out

    async def resolve_ptr(self, request: SocksRequest) -> str:
        raise ConnectError(EndReason.MISC, "reverse lookups are not supported over circuits")


async def run_proxy(
    config: ClientConfig,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until cancelled; ``task_status.started`` gets the SOCKS port."""
    client = Client(config)
    socks = SocksConfig(isolation=IsolationFlags.SOCKS_AUTH | IsolationFlags.CLIENT_ADDR)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.manager.run)
        nursery.start_soon(client.follow_consensus)
        connector = SelectingConnector(
            CircuitConnector(client, config.proxy.retries),
            LazyMixedConnector(client, nursery),
            mixed_default=config.proxy.mixed,
        )
        listeners = await nursery.start(
            functools.partial(
                serve_socks,
                connector,
                config.proxy.host,
                config.proxy.port,
                config=ProxyConfig(socks=socks),
            )
        )
        port = int(listeners[0].socket.getsockname()[1])
        print(f"qnet proxy ready: SOCKS on {config.proxy.host}:{port}", flush=True)
        task_status.started(port)


def main(path: str) -> int:
    """``qnet proxy --config PATH``: exit 2 on a bad config, 0 after SIGINT/SIGTERM."""
    try:
        config = load_client_config(path)
    except ConfigError as exc:
        print(f"qnet proxy: bad config: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.proxy.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                nursery.start_soon(run_proxy, config)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0
