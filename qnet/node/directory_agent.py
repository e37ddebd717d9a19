"""The node's side of the directory (spec/directory.md §5, §9.3, §9.6).

    envelope = build_descriptor(config, keys, epoch, now)      # signed, for mix epoch ``epoch``
    view = ConsensusDirectory(consensus, own_id=keys.identity.node_id)
    view.peer_info(node_id), view.node_for_link_key(link_public), view.mix_key(node_id, epoch)

    agent = DirectoryAgent(config, keys, on_consensus=callback)
    await nursery.start(agent.run)       # publishes at once, then every epoch; fetches
    consensus = await agent.wait_for_consensus()
    response = await agent.handle_request(request)   # the node's directory stream service

What the agent does, every epoch ``e`` (``epoch_seconds`` from ``[directory]``):

* **Publish.** At the start of ``e`` (and once right at start-up) it signs a
  descriptor for the first epoch whose vote has not happened yet (``e + 1`` at
  the start of an epoch; §9.6: a node publishes ``mix_epoch = E`` during
  ``E − 1``) and posts it to every configured authority. Authorities that did
  not accept it are retried with exponential backoff until they do or the vote
  for that epoch has passed.
* **Fetch.** Shortly after ``valid_after(e)`` it fetches the consensus for ``e``
  (authorities first, in random order, then up to ``MAX_CACHE_SOURCES`` relays
  of the consensus it holds, then the configured ``caches``), verifies it
  (``fetch_consensus``), keeps it if it is newer than what it holds, calls
  ``on_consensus`` and puts it in its ``DirectoryCache``. Until it has the
  consensus of ``e`` it retries with backoff.

The agent never dials with the node's link key (a fresh Noise key per request),
so an authority cannot tell a publishing node from a client by its link key.

Test networks: every process dials from 127.0.0.1, and an HTX server allows one
source prefix (IPv4 /24) a burst of 20 tunnels and then one every 5 s
(``TicketConfig``). Each agent dials each authority about twice per epoch, and
each authority dials each node for reachability tests, so a loopback test
network must give *both* its authorities' and its nodes' ``ServerConfig`` a
``TicketConfig`` with a large ``rate_burst`` and ``rate_per_second`` (the tests
use 1000 and 1000), or descriptors and fetches are refused as ``rate_limited``.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Final

import trio

from qnet import __version__
from qnet.dir import net
from qnet.dir.client import DirectoryCache, fetch_consensus, publish_descriptor
from qnet.dir.consensus import Consensus, ConsensusEntry
from qnet.dir.descriptor import (
    BODY_LIMITS,
    MAX_BANDWIDTH,
    Address,
    Descriptor,
    Role,
    Transport,
    canonical_order,
)
from qnet.dir.flags import Flag
from qnet.dir.protocol import Request, Response
from qnet.dir.vote import Authorities, DirectoryParams
from qnet.errors import DirectoryError
from qnet.htx.transport import HtxLink, PeerInfo
from qnet.node.config import NodeConfig
from qnet.node.keys import KeyStore

__all__ = [
    "DEFAULT_BANDWIDTH",
    "MAX_CACHE_SOURCES",
    "SOFTWARE",
    "ConsensusDirectory",
    "DirectoryAgent",
    "build_descriptor",
    "descriptor_addresses",
    "publish_epoch",
]

log = logging.getLogger("qnet.node.directory")

#: Declared bandwidth (bytes per second) when the operator states none: 10 MB/s.
DEFAULT_BANDWIDTH: Final = 10_000_000
#: The ``software`` field of every descriptor this program publishes.
SOFTWARE: Final = f"qnet {__version__}"
#: Relays of the held consensus tried (after the authorities) when fetching.
MAX_CACHE_SOURCES: Final = 3
#: Seconds a single directory request may take.
REQUEST_TIMEOUT: Final = 10.0
#: First retry delay in seconds; doubled after each failure up to a cap (see ``_backoff``).
FIRST_RETRY: Final = 0.25


# --- the descriptor ---------------------------------------------------------------------------


def descriptor_addresses(
    config: NodeConfig, tcp_port: int | None = None, quic_port: int | None = None
) -> tuple[Address, ...]:
    """The addresses a descriptor publishes, in canonical order (see ``build_descriptor``).

    Raises ``ValueError`` for a wildcard ``htx.host`` without ``htx.advertise``, or
    a port the config leaves to the system (0) when the bound one is not given.
    """
    ip = ipaddress.ip_address(config.htx.advertise or config.htx.host)
    if ip.is_unspecified:
        raise ValueError(
            f"htx.host = {config.htx.host!r} listens on every interface: set htx.advertise "
            "to the address the descriptor should publish"
        )
    tcp = config.htx.tcp_port if tcp_port is None else tcp_port
    quic = config.htx.quic_port if quic_port is None else quic_port
    if tcp == 0 or quic == 0:
        raise ValueError("the config asks for a system-chosen port: pass the bound port")
    found = [Address(transport=Transport.TCP, ip=ip, port=tcp)]
    if quic is not None:
        found.append(Address(transport=Transport.QUIC, ip=ip, port=quic))
    return canonical_order(found, Address.to_cbor)


def build_descriptor(
    config: NodeConfig,
    keys: KeyStore,
    epoch: int,
    now: float,
    *,
    tcp_port: int | None = None,
    quic_port: int | None = None,
    bandwidth: int = DEFAULT_BANDWIDTH,
    family: Sequence[bytes] = (),
) -> bytes:
    """The node's signed descriptor envelope for mix epoch ``epoch``, published at ``now``.

    Addresses: ``htx.advertise`` (or ``htx.host`` when it is not a wildcard) with
    the TCP port and, when QUIC is on, the QUIC port; ``tcp_port`` / ``quic_port``
    give the bound ports when the config says 0. ``server_name`` is
    ``htx.server_name``, the name the node's certificate and cover site are made
    for: dialers claim it as TLS SNI and HTTP authority, so each node is reached
    under its own name. The exit policy is ``config.exit.rules`` for a node with
    the exit role and empty otherwise (a node without the role allows nothing
    whatever its policy says). Mix keys are those of ``epoch`` and ``epoch + 1``
    (created in the key store if absent).

    Raises ``ValueError`` when the config cannot be published (a wildcard host
    without ``advertise``, port 0 without the bound port, a bad bandwidth or family,
    or a body over the descriptor size limit of spec §2.3, which a long IPv6 exit
    policy together with a large family can reach).
    """
    addresses = descriptor_addresses(config, tcp_port, quic_port)
    roles = config.node.roles
    policy = config.exit.rules if Role.EXIT in roles else ()
    mix = keys.mix_keys(epoch)
    ticket = keys.ticket_current
    ident = keys.identity
    desc = Descriptor(
        node_id=ident.node_id,
        published=int(now),
        addresses=addresses,
        roles=canonical_order(roles, lambda r: r.value),
        exit_policy=tuple(policy),
        bandwidth=min(bandwidth, MAX_BANDWIDTH),
        software=SOFTWARE,
        server_name=config.htx.server_name,
        family=canonical_order(set(family), lambda f: f),
        id_ed25519=ident.public.ed25519,
        id_mldsa65=ident.public.mldsa65,
        link_x25519=keys.link.public_bytes,
        kem_mlkem768=keys.mlkem.public_bytes,
        ticket_x25519=ticket.key.public_bytes,
        ticket_key_id=ticket.key_id,
        mix_epoch=epoch,
        mix_current=mix.current.public_bytes,
        mix_next=mix.next.public_bytes,
    )
    size = len(desc.encode())
    if size > BODY_LIMITS.max_size:
        raise ValueError(
            f"descriptor body of {size} bytes is over the {BODY_LIMITS.max_size}-byte limit "
            "(shorten exit.policy or the family)"
        )
    return desc.sign(ident)


def publish_epoch(now: float, epoch_seconds: int, vote_lead: float) -> int:
    """The epoch a descriptor made at ``now`` should carry mix keys for: the first
    epoch whose vote (``vote_lead`` seconds before it starts) is still ahead."""
    return int((now + vote_lead) // epoch_seconds) + 1


# --- a consensus as the node uses it -----------------------------------------------------------


class ConsensusDirectory:
    """A verified consensus, indexed for the relay, the path selector and the mix role.

    Implements the relay's ``DirectoryView`` (``peer_info``, ``node_for_link_key``).
    A ``PeerInfo`` claims the node's own published ``server_name`` as TLS SNI and
    HTTP authority (spec/directory.md §5), never one name for every node.
    """

    def __init__(self, consensus: Consensus, *, own_id: bytes | None = None) -> None:
        self.consensus = consensus
        self.own_id = own_id
        self._by_id = {e.node_id: e for e in consensus.nodes}
        self._by_link = {e.descriptor.link_x25519: e.node_id for e in consensus.nodes}

    @property
    def epoch(self) -> int:
        return self.consensus.epoch

    @property
    def entries(self) -> tuple[ConsensusEntry, ...]:
        """Every node, in ascending node-id order."""
        return self.consensus.nodes

    def entry(self, node_id: bytes) -> ConsensusEntry | None:
        return self._by_id.get(bytes(node_id))

    @property
    def own(self) -> ConsensusEntry | None:
        """This node's entry (``None``: not listed, or no ``own_id`` given)."""
        return None if self.own_id is None else self.entry(self.own_id)

    def with_flags(self, *flags: Flag) -> tuple[ConsensusEntry, ...]:
        """The nodes holding every flag given, in node-id order."""
        want = frozenset(flags)
        return tuple(e for e in self.consensus.nodes if want <= e.flags)

    def layer(self, layer: int) -> tuple[ConsensusEntry, ...]:
        """The Mix nodes of ``layer`` (0, 1 or 2)."""
        return self.consensus.layer(layer)

    def peer_info(self, node_id: bytes) -> PeerInfo | None:
        """How to dial ``node_id`` over TCP; ``None`` if it is not listed (or has no
        TCP address, which authorities refuse anyway)."""
        entry = self.entry(node_id)
        return None if entry is None else self.entry_peer(entry)

    def entry_peer(self, entry: ConsensusEntry) -> PeerInfo | None:
        d = entry.descriptor
        tcp = next((a for a in d.addresses if a.transport is Transport.TCP), None)
        if tcp is None:
            return None
        return PeerInfo(
            host=str(tcp.ip),
            port=tcp.port,
            link_public=d.link_x25519,
            mlkem_public=d.kem_mlkem768,
            ticket_public=d.ticket_x25519,
            ticket_key_id=d.ticket_key_id,
            server_name=d.server_name,
        )

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        """The node that publishes ``link_public`` as its link key (``None``: a client)."""
        return self._by_link.get(bytes(link_public))

    def mix_key(self, node_id: bytes, epoch: int) -> bytes | None:
        """The public mix key ``node_id`` published for ``epoch``: its ``mix_current``
        for ``mix_epoch`` and its ``mix_next`` for ``mix_epoch + 1``; else ``None``."""
        entry = self.entry(node_id)
        if entry is None:
            return None
        d = entry.descriptor
        if epoch == d.mix_epoch:
            return d.mix_current
        if epoch == d.mix_epoch + 1:
            return d.mix_next
        return None

    def current_mix_key(self, node_id: bytes) -> bytes | None:
        """The node's mix key for this consensus's epoch."""
        return self.mix_key(node_id, self.epoch)

    def next_mix_key(self, node_id: bytes) -> bytes | None:
        """The node's mix key for the epoch after this consensus's."""
        return self.mix_key(node_id, self.epoch + 1)

    def caches(self, limit: int = MAX_CACHE_SOURCES) -> list[PeerInfo]:
        """Up to ``limit`` other Running relays to fetch the directory from, shuffled."""
        found = []
        for e in self.with_flags(Flag.RUNNING, Flag.VALID):
            if Role.RELAY not in e.descriptor.roles or e.node_id == self.own_id:
                continue
            peer = self.entry_peer(e)
            if peer is not None:
                found.append(peer)
        random.shuffle(found)
        return found[:limit]


# --- the service --------------------------------------------------------------------------------


def _backoff(attempt: int, cap: float) -> float:
    return float(min(cap, FIRST_RETRY * 2**attempt))


class DirectoryAgent:
    """Publishes the node's descriptor and keeps the newest verified consensus.

    ``current`` is that consensus (``None`` before the first), ``directory`` the
    same as a ``ConsensusDirectory``; the agent itself is a ``DirectoryView`` that
    always answers from the newest one. ``on_consensus`` is called (synchronously,
    in the agent's task) with each newer consensus.

    ``vote_lead`` / ``fetch_delay`` default to half and an eighth of the epoch
    (the authorities' default vote lead, §9.2). ``caches`` are extra fetch sources
    tried last (relays known in advance, for a node whose authorities are down).
    """

    def __init__(
        self,
        config: NodeConfig,
        keys: KeyStore,
        *,
        clock: Callable[[], float] = time.time,
        on_consensus: Callable[[Consensus], object] | None = None,
        tcp_port: int | None = None,
        quic_port: int | None = None,
        bandwidth: int = DEFAULT_BANDWIDTH,
        family: Sequence[bytes] = (),
        caches: Sequence[PeerInfo] = (),
        vote_lead: float | None = None,
        fetch_delay: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        entries = config.directory.authorities
        if not entries:
            raise ValueError("no directory authorities configured ([directory] authorities)")
        self.config = config
        self.keys = keys
        self.clock = clock
        self.on_consensus = on_consensus
        self.tcp_port = tcp_port
        self.quic_port = quic_port
        self.bandwidth = bandwidth
        self.family = tuple(family)
        self.extra_caches = tuple(caches)
        self.request_timeout = request_timeout
        self.epoch_seconds = config.directory.epoch_seconds
        self.params = DirectoryParams(epoch_length=self.epoch_seconds)
        self.vote_lead = self.epoch_seconds / 2 if vote_lead is None else vote_lead
        self.fetch_delay = self.epoch_seconds / 8 if fetch_delay is None else fetch_delay
        self.authorities = Authorities.of(e.identity for e in entries)
        self.authority_peers = tuple(e.peer() for e in entries)
        self.cache = DirectoryCache(self.authorities, timeout=request_timeout, clock=clock)
        self.directory: ConsensusDirectory | None = None
        #: The descriptor last published (its envelope) and the authorities that took it.
        self.published: bytes | None = None
        self.accepted_by: frozenset[int] = frozenset()
        self._changed = trio.Event()
        # A config that cannot be published fails here, before anything runs.
        descriptor_addresses(config, tcp_port, quic_port)

    # -- state --

    @property
    def node_id(self) -> bytes:
        return self.keys.identity.node_id

    @property
    def current(self) -> Consensus | None:
        return None if self.directory is None else self.directory.consensus

    def now(self) -> float:
        return self.clock()

    def epoch(self, now: float | None = None) -> int:
        return int((self.now() if now is None else now) // self.epoch_seconds)

    def target_epoch(self, now: float | None = None) -> int:
        """The mix epoch a descriptor published now carries (§9.6)."""
        at = self.now() if now is None else now
        return publish_epoch(at, self.epoch_seconds, self.vote_lead)

    def descriptor(self, epoch: int) -> bytes:
        return build_descriptor(
            self.config,
            self.keys,
            epoch,
            self.now(),
            tcp_port=self.tcp_port,
            quic_port=self.quic_port,
            bandwidth=self.bandwidth,
            family=self.family,
        )

    async def wait_for_consensus(self, min_epoch: int | None = None) -> Consensus:
        """The held consensus once there is one (of at least ``min_epoch``)."""
        while True:
            cons = self.current
            if cons is not None and (min_epoch is None or cons.epoch >= min_epoch):
                return cons
            await self._changed.wait()

    def offer(self, raw: bytes) -> Consensus | None:
        """Verify a consensus document and hold it if newer; the consensus if it was.

        Raises the ``verify_consensus`` error for one that does not verify.
        """
        cons = self.cache.offer_consensus(raw)
        held = self.current
        if held is not None and cons.epoch <= held.epoch:
            return None
        self.directory = ConsensusDirectory(cons, own_id=self.node_id)
        if self.published is not None:
            try:
                self.cache.offer_descriptor(self.published)
            except DirectoryError:
                pass  # the consensus lists another descriptor of ours (or none)
        log.info(
            "consensus epoch=%d nodes=%d listed=%s",
            cons.epoch,
            len(cons.nodes),
            self.directory.own is not None,
        )
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        if self.on_consensus is not None:
            self.on_consensus(cons)
        return cons

    # -- DirectoryView and the stream service --

    def peer_info(self, node_id: bytes) -> PeerInfo | None:
        return None if self.directory is None else self.directory.peer_info(node_id)

    def node_for_link_key(self, link_public: bytes) -> bytes | None:
        return None if self.directory is None else self.directory.node_for_link_key(link_public)

    async def handle_request(self, req: Request) -> Response:
        """Answer one directory request from the held, verified documents."""
        return await self.cache.handle_request(req)

    async def handle_link(self, link: HtxLink) -> None:
        """Answer directory streams on ``link`` (for a listener that serves only those)."""
        await net.serve_link(link, self.handle_request, timeout=self.request_timeout)

    # -- the loops --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish and fetch until cancelled. Ready at once (before the first publish)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._fetch_loop)
            task_status.started()

    async def _sleep_until(self, when: float) -> None:
        await trio.sleep(max(0.0, when - self.now()))

    async def publish_once(self, epoch: int, deadline: float) -> bool:
        """Publish the descriptor for ``epoch`` to every authority, retrying those that
        refuse or cannot be reached until ``deadline``; whether all accepted."""
        envelope = self.descriptor(epoch)
        self.published, self.accepted_by = envelope, frozenset()
        pending = list(range(len(self.authority_peers)))
        cap = max(FIRST_RETRY, self.epoch_seconds / 8)
        attempt = 0
        while pending:
            peers = [self.authority_peers[i] for i in pending]
            results = await publish_descriptor(peers, envelope, timeout=self.request_timeout)
            failed = []
            for i, (peer, err) in zip(pending, results, strict=True):
                if err is None:
                    self.accepted_by |= {i}
                else:
                    failed.append(i)
                    log.debug("publish to %s:%d failed: %s", peer.host, peer.port, err.reason)
            pending = failed
            if not pending:
                break
            delay = _backoff(attempt, cap)
            attempt += 1
            if self.now() + delay >= deadline:
                break
            await trio.sleep(delay)
        log.info(
            "descriptor mix_epoch=%d accepted_by=%d/%d",
            epoch,
            len(self.accepted_by),
            len(self.authority_peers),
        )
        return not pending

    async def _publish_loop(self) -> None:
        while True:
            epoch = self.target_epoch()
            vote_at = epoch * self.epoch_seconds - self.vote_lead
            await self.publish_once(epoch, vote_at)
            # Republish at the start of every epoch (then for the epoch after it).
            await self._sleep_until((self.epoch() + 1) * self.epoch_seconds)

    def sources(self) -> list[PeerInfo]:
        """Where a fetch asks, in order: authorities (shuffled), relays, configured caches."""
        out = list(self.authority_peers)
        random.shuffle(out)
        if self.directory is not None:
            out += self.directory.caches()
        return out + list(self.extra_caches)

    async def fetch_once(self, min_epoch: int | None = None) -> Consensus | None:
        """One pass over the sources; the consensus if a newer one was taken.

        Raises ``NoUsableSource`` when no source gave a verified document.
        """
        held = self.current
        floor = held.epoch + 1 if held is not None else None
        if min_epoch is not None:
            floor = max(floor or 0, min_epoch)
        got = await fetch_consensus(
            self.sources(),
            self.authorities,
            int(self.now()),
            min_epoch=floor,
            timeout=self.request_timeout,
        )
        return self.offer(got.raw)

    async def _fetch_loop(self) -> None:
        cap = max(FIRST_RETRY, self.epoch_seconds / 8)
        while True:
            held = self.current
            want = self.epoch() if held is None else max(self.epoch(), held.epoch + 1)
            # The consensus of ``want`` is served from valid_after(want); ask a little later.
            await self._sleep_until(want * self.epoch_seconds + self.fetch_delay)
            give_up = (want + 1) * self.epoch_seconds
            attempt = 0
            while True:
                try:
                    await self.fetch_once()
                except DirectoryError as exc:  # NoUsableSource, or our own re-check
                    log.debug("consensus fetch for epoch %d failed: %s", want, exc)
                held = self.current
                if held is not None and held.epoch >= want:
                    break
                if self.now() >= give_up:
                    log.warning("no consensus for epoch %d from any source", want)
                    break
                await trio.sleep(_backoff(attempt, cap))
                attempt += 1
