"""A directory authority (spec/directory.md §8.11, §9): the Trio service around the pure code.

    service = AuthorityService(config)
    nursery.start_soon(service.run)                 # schedule, reachability tests
    await serve_tcp(service.handle_link, htx_cfg)   # answer directory requests
    # or, on its own: await service.serve(htx_cfg, host="127.0.0.1", port=0)

Every decision about documents is made by ``qnet.dir.descriptor``, ``vote`` and
``consensus``; this module only keeps state, keeps time and moves documents. For
epoch ``E`` (which starts at ``valid_after(E)``), during epoch ``E − 1``:

* at ``valid_after(E) − vote_lead`` it builds its vote from the descriptors it
  accepted and reached, with a fresh shared-random commit and the reveal of the
  commit it made one epoch before, signs it, and posts it to the other authorities;
* at ``valid_after(E) − consensus_lead`` it pulls the votes it lacks, computes the
  consensus with the consensus of ``E − 1``, signs it and posts its detached
  signature; it keeps pulling signatures until every authority signed or epoch
  ``E`` has run for ``consensus_lead``; each signature is checked against its own
  body, and the document is assembled again whenever one more verifies and at
  least ``threshold`` have;
* it serves the newest assembled document whose epoch has started.

The reveal secrets and the last consensus documents are kept in
``data_dir/authority-state.cbor`` so a restart loses neither.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import trio

from qnet.crypto import random_bytes
from qnet.dir import encoding, net, protocol
from qnet.dir.consensus import (
    Consensus,
    ConsensusSignature,
    assemble,
    check_signature,
    compute_consensus,
    decode_signature,
    sign_body,
    verify_consensus,
)
from qnet.dir.descriptor import Descriptor, Transport, parse_and_verify
from qnet.dir.flags import Observation
from qnet.dir.identity import Identity
from qnet.dir.protocol import Op, ProtocolLimits, Request, Response, Status
from qnet.dir.vote import (
    DEFAULT_NETWORK_PARAMS,
    DEFAULT_PARAMS,
    MAX_NODES,
    SRV_LEN,
    Authorities,
    DirectoryParams,
    Vote,
    build_vote,
    descriptor_digest,
    parse_vote,
    srv_commit,
)
from qnet.errors import DirectoryError, InsufficientVotes, MalformedDocument, StaleDocument
from qnet.htx.transport import HtxLink, PeerInfo, ServerConfig, dial_tcp, serve_tcp

log = logging.getLogger("qnet.dir.authority")

STATE_FILE: Final = "authority-state.cbor"
STATE_VERSION: Final = 1
#: Consensus documents kept (served, persisted, and chained for the shared random value).
KEEP_DOCUMENTS: Final = 3
#: Signature entries held per authority for a body not computed yet (anyone may post).
MAX_PENDING_SIGNATURES: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorityConfig:
    """What an authority needs. ``peers`` maps each other authority's node id to the
    ``PeerInfo`` to reach it by (its own id, if present, is skipped).

    Times are seconds. ``vote_lead`` and ``consensus_lead`` default to half and a
    quarter of the epoch; ``reach_interval`` (how often every node is re-tested)
    defaults to a quarter of the epoch and must stay below
    ``params.rules.running_max_age``. ``measured_bandwidth`` stands in for a
    bandwidth scanner: by default the declared bandwidth.
    """

    identity: Identity
    authorities: Authorities
    peers: Mapping[bytes, PeerInfo]
    data_dir: Path
    params: DirectoryParams = DEFAULT_PARAMS
    network: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_NETWORK_PARAMS))
    vote_lead: float | None = None
    consensus_lead: float | None = None
    reach_interval: float | None = None
    reach_timeout: float = 10.0
    request_timeout: float = net.DEFAULT_TIMEOUT
    limits: ProtocolLimits = protocol.DEFAULT_LIMITS
    #: The Noise static key this authority dials with (``None``: a fresh one per link).
    link_private: bytes | None = None
    measured_bandwidth: Callable[[Descriptor], int] = lambda d: d.bandwidth
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.identity.node_id not in self.authorities.ids:
            raise ValueError("this authority is not in the configured authority list")
        e = self.params.epoch_length
        if not 0 < self.leads[1] < self.leads[0] < e:
            raise ValueError("need 0 < consensus_lead < vote_lead < epoch_length")

    @property
    def leads(self) -> tuple[float, float]:
        e = self.params.epoch_length
        vote = self.vote_lead if self.vote_lead is not None else e / 2
        cons = self.consensus_lead if self.consensus_lead is not None else e / 4
        return vote, cons

    @property
    def interval(self) -> float:
        if self.reach_interval is not None:
            return self.reach_interval
        return self.params.epoch_length / 4


@dataclass(slots=True)
class _Reach:
    """This authority's reachability record for one node."""

    first_seen: int | None = None
    last_reachable: int | None = None
    running_since: int | None = None


@dataclass(slots=True)
class _Held:
    raw: bytes
    descriptor: Descriptor
    digest: bytes


@dataclass(slots=True)
class _Round:
    """Everything about computing the consensus of one epoch."""

    epoch: int
    votes: dict[bytes, tuple[bytes, Vote]] = field(default_factory=dict)
    body: bytes | None = None
    signatures: dict[bytes, ConsensusSignature] = field(default_factory=dict)
    pending: dict[bytes, list[ConsensusSignature]] = field(default_factory=dict)
    document: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Published:
    raw: bytes
    consensus: Consensus


class AuthorityService:
    """One directory authority. ``run`` drives the schedule; ``handle_link`` (or
    ``handle_request``) answers directory requests."""

    def __init__(self, config: AuthorityConfig) -> None:
        self.config = config
        self.node_id = config.identity.node_id
        self._descs: dict[bytes, _Held] = {}
        self._by_digest: dict[bytes, bytes] = {}
        self._reach: dict[bytes, _Reach] = {}
        self._rounds: dict[int, _Round] = {}
        self._published: dict[int, _Published] = {}
        self._reveals: dict[int, bytes] = {}  # epoch a secret is revealed in -> secret
        self._testing: set[bytes] = set()
        self._nursery: trio.Nursery | None = None
        self._pool: net.LinkPool | None = None
        self._load_state()

    # --- time -----------------------------------------------------------------------------

    def now(self) -> int:
        return int(self.config.clock())

    async def _sleep_until(self, when: float) -> None:
        await trio.sleep(max(0.0, when - self.config.clock()))

    # --- the published documents ----------------------------------------------------------

    def document(self, now: int | None = None) -> bytes | None:
        """The consensus document served at ``now``: the newest whose epoch has started
        (or the newest at all, before any has)."""
        if not self._published:
            return None
        t = self.now() if now is None else now
        started = [e for e, p in self._published.items() if p.consensus.valid_after <= t]
        return self._published[max(started or self._published)].raw

    def consensus(self, epoch: int) -> Consensus | None:
        held = self._published.get(epoch)
        return held.consensus if held is not None else None

    # --- requests -------------------------------------------------------------------------

    async def handle_link(self, link: HtxLink) -> None:
        """Answer directory requests on every stream of ``link`` (a ``serve_tcp`` handler)."""
        await net.serve_link(
            link,
            self.handle_request,
            limits=self.config.limits,
            timeout=self.config.request_timeout,
        )

    async def handle_request(self, req: Request) -> Response:
        """One request. A refused document raises its ``DirectoryError`` (sent as ``refused``)."""
        if req.op is Op.GET_CONSENSUS:
            doc = self.document()
            return protocol.ok([doc]) if doc else protocol.error(Status.NOT_FOUND, "no_consensus")
        if req.op is Op.GET_DESCRIPTOR:
            assert req.digest is not None
            raw = self._by_digest.get(req.digest)
            return protocol.ok([raw]) if raw else protocol.error(Status.NOT_FOUND, "unknown_digest")
        if req.op is Op.GET_VOTES:
            assert req.epoch is not None
            rnd = self._rounds.get(req.epoch)
            if rnd is None or not rnd.votes:
                return protocol.error(Status.NOT_FOUND, "no_votes")
            return protocol.ok([raw for _, (raw, _) in sorted(rnd.votes.items())])
        if req.op is Op.GET_SIGNATURES:
            assert req.epoch is not None
            rnd = self._rounds.get(req.epoch)
            if rnd is None or not rnd.signatures:
                return protocol.error(Status.NOT_FOUND, "no_signatures")
            return protocol.ok([s.encode() for _, s in sorted(rnd.signatures.items())])
        assert req.doc is not None
        if req.op is Op.POST_DESCRIPTOR:
            self.accept_descriptor(req.doc)
        elif req.op is Op.POST_VOTE:
            self.accept_vote(req.doc)
        else:
            assert req.epoch is not None
            self.accept_signature(req.epoch, req.doc)
        return protocol.ok()

    # --- descriptors and reachability -----------------------------------------------------

    def accept_descriptor(self, raw: bytes) -> Descriptor:
        """Verify a node's descriptor and keep it (the latest per node); test it soon.

        Raises the ``DirectoryError`` of ``parse_and_verify``, or ``MalformedDocument``
        (``bad_value``) for a descriptor without a TCP address, or (``too_many_items``)
        when this authority already holds ``MAX_NODES`` nodes.
        """
        desc = parse_and_verify(raw, self.now())
        if not any(a.transport is Transport.TCP for a in desc.addresses):
            raise MalformedDocument("bad_value", "addresses: no tcp address to test")
        held = self._descs.get(desc.node_id)
        if held is not None and held.descriptor.published >= desc.published:
            return held.descriptor  # an older or equal copy: keep what we have
        if held is None and len(self._descs) >= MAX_NODES:
            raise MalformedDocument("too_many_items", "this authority holds MAX_NODES nodes")
        body_digest = descriptor_digest(desc.encode())
        self._descs[desc.node_id] = _Held(raw=bytes(raw), descriptor=desc, digest=body_digest)
        self._by_digest[body_digest] = bytes(raw)
        moved = held is None or (
            held.descriptor.addresses != desc.addresses
            or held.descriptor.link_x25519 != desc.link_x25519
        )
        if moved and self._nursery is not None:
            self._nursery.start_soon(self._test_node, desc.node_id)
        return desc

    async def _test_node(self, node_id: bytes) -> None:
        if node_id in self._testing or node_id not in self._descs:
            return
        self._testing.add(node_id)
        try:
            ok = await self._reachable(self._descs[node_id].descriptor)
        finally:
            self._testing.discard(node_id)
        now = self.now()
        r = self._reach.setdefault(node_id, _Reach())
        if ok:
            if r.first_seen is None:
                r.first_seen = now
            if r.running_since is None:
                r.running_since = now
            r.last_reachable = now
        else:
            r.running_since = None
        log.debug("reachability %s: %s", node_id.hex()[:16], "ok" if ok else "failed")

    async def _reachable(self, desc: Descriptor) -> bool:
        """An HTX link (TLS, ticket, inner handshake against ``link_x25519``) to a TCP address."""
        for addr in desc.addresses:
            if addr.transport is not Transport.TCP:
                continue
            peer = PeerInfo(
                host=str(addr.ip),
                port=addr.port,
                link_public=desc.link_x25519,
                mlkem_public=desc.kem_mlkem768,
                ticket_public=desc.ticket_x25519,
                ticket_key_id=desc.ticket_key_id,
                server_name=desc.server_name,  # what a client will claim, too
            )
            try:
                with trio.fail_after(self.config.reach_timeout):
                    async with dial_tcp(
                        peer,
                        static_private=self.config.link_private,
                        timeout=self.config.reach_timeout,
                    ):
                        return True
            except (trio.TooSlowError, *net._DIAL_ERRORS) as exc:
                log.debug("reachability test of %s failed: %r", desc.node_id.hex()[:16], exc)
        return False

    async def _reach_loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for node_id in list(self._descs):
                    nursery.start_soon(self._test_node, node_id)
            await trio.sleep(self.config.interval)

    def observations(self) -> list[Observation]:
        """What this authority would vote on now: every node it has reached at least once."""
        out = []
        for node_id, held in sorted(self._descs.items()):
            r = self._reach.get(node_id)
            if r is None or r.first_seen is None:
                continue
            out.append(
                Observation(
                    descriptor=held.descriptor,
                    first_seen=r.first_seen,
                    last_reachable=r.last_reachable,
                    running_since=r.running_since,
                    measured_bandwidth=max(0, self.config.measured_bandwidth(held.descriptor)),
                )
            )
        return out

    # --- votes ----------------------------------------------------------------------------

    def _round(self, epoch: int) -> _Round:
        rnd = self._rounds.get(epoch)
        if rnd is None:
            rnd = self._rounds[epoch] = _Round(epoch)
            for old in [e for e in self._rounds if e < epoch - KEEP_DOCUMENTS]:
                del self._rounds[old]
        return rnd

    def accept_vote(self, raw: bytes) -> Vote:
        """Check another authority's vote (``parse_vote``) and keep the first one per authority.

        Raises its ``DirectoryError``; ``StaleDocument`` (``wrong_epoch``) for a vote not
        for the next or the current epoch; ``MalformedDocument`` (``conflicting_vote``)
        for a second, different vote by one authority (the first is kept).
        """
        now = self.now()
        vote = parse_vote(raw, self.config.authorities, now, self.config.params)
        current = self.config.params.epoch_at(now)
        if vote.epoch not in (current, current + 1):
            raise StaleDocument("wrong_epoch", f"vote for {vote.epoch}, now in {current}")
        rnd = self._round(vote.epoch)
        held = rnd.votes.get(vote.authority)
        if held is None:
            rnd.votes[vote.authority] = (bytes(raw), vote)
        elif held[1].encode() != vote.encode():
            log.warning("authority %s sent two votes for %d", vote.authority.hex()[:16], vote.epoch)
            raise MalformedDocument("conflicting_vote", "a different vote is already held")
        return vote

    def make_vote(self, epoch: int) -> bytes:
        """Build, sign and keep this authority's vote for ``epoch`` (persisting the new secret)."""
        now = self.now()
        secret = random_bytes(SRV_LEN)
        self._reveals[epoch + 1] = secret
        reveal = self._reveals.get(epoch)
        self._reveals = {e: s for e, s in self._reveals.items() if e >= epoch}
        self._save_state()  # before the commit leaves: a lost secret is a lost reveal
        vote = build_vote(
            self.config.identity,
            epoch,
            self.observations(),
            now,
            self.config.params,
            self.config.network,
            srv_commit=srv_commit(self.node_id, epoch + 1, secret),
            srv_reveal=reveal,
        )
        raw = vote.sign(self.config.identity)
        self._round(epoch).votes[self.node_id] = (raw, vote)
        return raw

    # --- signatures -----------------------------------------------------------------------

    def accept_signature(self, epoch: int, raw: bytes) -> None:
        """A detached signature entry for our consensus of ``epoch``.

        Raises ``MalformedDocument``, ``UnknownAuthority`` or ``BadSignature`` (the
        signer signed another body: it is outvoted, and its entry is not counted).
        Entries that arrive before our body is computed are held and checked then.
        """
        sig = decode_signature(raw)
        self.config.authorities.get(sig.authority, "consensus signature")
        current = self.config.params.epoch_at(self.now())
        if epoch not in (current, current + 1):
            raise StaleDocument("wrong_epoch", f"signature for {epoch}, now in {current}")
        rnd = self._round(epoch)
        if rnd.body is None:
            held = rnd.pending.setdefault(sig.authority, [])
            if len(held) < MAX_PENDING_SIGNATURES:
                held.append(sig)
            return
        self._add_signature(rnd, sig)

    def _add_signature(self, rnd: _Round, sig: ConsensusSignature) -> None:
        assert rnd.body is not None
        if sig.authority in rnd.signatures:
            return
        check_signature(rnd.body, sig, self.config.authorities)
        rnd.signatures[sig.authority] = sig
        if len(rnd.signatures) >= self.config.authorities.threshold:
            self._publish(rnd)

    def _publish(self, rnd: _Round) -> None:
        assert rnd.body is not None
        doc = assemble(rnd.body, rnd.signatures.values())
        cons = verify_consensus(doc, self.config.authorities, self.now(), max_skew=self._skew())
        rnd.document = doc
        self._published[rnd.epoch] = _Published(doc, cons)
        for old in sorted(self._published)[:-KEEP_DOCUMENTS]:
            del self._published[old]
        self._prune_digests()
        self._save_state()
        log.info(
            "consensus for epoch %d: %d nodes, %d signatures",
            rnd.epoch,
            len(cons.nodes),
            len(rnd.signatures),
        )

    def _skew(self) -> int:
        # A document is published before its epoch starts: allow at least one epoch ahead.
        return max(self.config.params.max_skew, self.config.params.epoch_length)

    def _prune_digests(self) -> None:
        keep = {h.digest for h in self._descs.values()}
        for p in self._published.values():
            keep.update(n.descriptor.digest for n in p.consensus.nodes)
        self._by_digest = {d: raw for d, raw in self._by_digest.items() if d in keep}

    # --- the schedule ---------------------------------------------------------------------

    def _others(self) -> list[tuple[bytes, PeerInfo]]:
        return sorted((a, p) for a, p in self.config.peers.items() if a != self.node_id)

    async def _ask(self, peer: PeerInfo, req: Request) -> tuple[bytes, ...] | None:
        try:
            if self._pool is None:
                return await net.ask(
                    peer,
                    req,
                    limits=self.config.limits,
                    timeout=self.config.request_timeout,
                    static_private=self.config.link_private,
                )
            return await self._pool.request(
                peer, req, limits=self.config.limits, timeout=self.config.request_timeout
            )
        except DirectoryError as exc:
            log.debug("%s to %s:%d: %s", req.op.value, peer.host, peer.port, exc)
            return None

    async def _to_all(self, req: Request) -> None:
        async with trio.open_nursery() as nursery:
            for _, peer in self._others():
                nursery.start_soon(self._ask, peer, req)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reachability tests and the vote/consensus schedule until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._pool = net.LinkPool(
                nursery,
                static_private=self.config.link_private,
                dial_timeout=self.config.request_timeout,
            )
            nursery.start_soon(self._reach_loop)
            task_status.started()
            try:
                while True:
                    await self._one_round()
            finally:
                self._nursery = None
                self._pool = None

    async def serve(
        self,
        htx: ServerConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``run`` plus an HTX listener answering directory requests (no other role)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            listeners = await nursery.start(
                partial(serve_tcp, host=host, port=port), self.handle_link, htx
            )
            task_status.started(listeners)

    async def _one_round(self) -> None:
        params = self.config.params
        vote_lead, cons_lead = self.config.leads
        epoch = params.epoch_at(self.now()) + 1
        start = params.times(epoch)[0]
        if self.config.clock() >= start - cons_lead:
            # Too late to take part in this epoch's round: wait for the next one.
            await self._sleep_until(start)
            return
        await self._sleep_until(start - vote_lead)
        rnd = self._round(epoch)
        if self.node_id not in rnd.votes:
            await self._to_all(protocol.post_vote(self.make_vote(epoch)))
        await self._sleep_until(start - cons_lead)
        await self._compute(rnd)
        await self._collect(rnd, until=start + cons_lead)
        await self._sleep_until(start)

    async def _compute(self, rnd: _Round) -> None:
        """Pull missing votes, compute and sign the consensus, post the signature."""
        missing = [(a, p) for a, p in self._others() if a not in rnd.votes]
        async with trio.open_nursery() as nursery:
            for _, peer in missing:
                nursery.start_soon(self._pull_votes, peer, rnd.epoch)
        previous = self.consensus(rnd.epoch - 1) or await self._fetch_previous(rnd.epoch - 1)
        try:
            cons = self.compute(rnd.epoch, [v for _, v in rnd.votes.values()], previous)
        except (InsufficientVotes, StaleDocument) as exc:
            log.warning("no consensus for epoch %d: %s", rnd.epoch, exc)
            return
        rnd.body = cons.encode()
        mine = sign_body(rnd.body, self.config.identity)
        self._add_signature(rnd, mine)
        for sigs in rnd.pending.values():
            for sig in sigs:
                self._try_signature(rnd, sig)
        rnd.pending.clear()
        await self._to_all(protocol.post_signature(rnd.epoch, mine.encode()))

    def compute(self, epoch: int, votes: list[Vote], previous: Consensus | None) -> Consensus:
        """The consensus of ``epoch`` from ``votes`` (``compute_consensus``; tests override it)."""
        del epoch  # the votes name it
        return compute_consensus(
            votes, self.config.authorities, self.now(), self.config.params, previous=previous
        )

    def _try_signature(self, rnd: _Round, sig: ConsensusSignature) -> None:
        try:
            self._add_signature(rnd, sig)
        except DirectoryError as exc:
            log.info("signature by %s not counted: %s", sig.authority.hex()[:16], exc)

    async def _pull_votes(self, peer: PeerInfo, epoch: int) -> None:
        for raw in await self._ask(peer, protocol.get_votes(epoch)) or ():
            try:
                self.accept_vote(raw)
            except DirectoryError as exc:
                log.debug("pulled vote refused: %s", exc)

    async def _fetch_previous(self, epoch: int) -> Consensus | None:
        """The consensus of ``epoch`` from another authority, verified, if one has it."""
        for _, peer in self._others():
            for raw in await self._ask(peer, protocol.get_consensus()) or ():
                try:
                    cons = verify_consensus(
                        raw, self.config.authorities, self.now(), max_skew=self._skew()
                    )
                except DirectoryError:
                    continue
                if cons.epoch == epoch:
                    self._published[epoch] = _Published(raw, cons)
                    return cons
        return None

    async def _collect(self, rnd: _Round, until: float) -> None:
        """Pull signatures until every authority signed our body or ``until``."""
        if rnd.body is None:
            return
        step = max(0.05, self.config.params.epoch_length / 40)
        while len(rnd.signatures) < len(self.config.authorities.members):
            if self.config.clock() >= until:
                return
            lacking = [(a, p) for a, p in self._others() if a not in rnd.signatures]
            async with trio.open_nursery() as nursery:
                for _, peer in lacking:
                    nursery.start_soon(self._pull_signatures, peer, rnd)
            if len(rnd.signatures) < len(self.config.authorities.members):
                await trio.sleep(step)

    async def _pull_signatures(self, peer: PeerInfo, rnd: _Round) -> None:
        for raw in await self._ask(peer, protocol.get_signatures(rnd.epoch)) or ():
            try:
                self._try_signature(rnd, decode_signature(raw))
            except DirectoryError:
                continue

    # --- persistence ----------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.config.data_dir / STATE_FILE

    def _save_state(self) -> None:
        state: dict[encoding.Key, encoding.Value] = {
            "version": STATE_VERSION,
            "authority": self.node_id,
            "reveals": [{"epoch": e, "secret": s} for e, s in sorted(self._reveals.items())],
            "consensus": [p.raw for _, p in sorted(self._published.items())],
        }
        data = encoding.encode(state)
        self.config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def _load_state(self) -> None:
        """Read the state file if there is one; a damaged or foreign file is ignored."""
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            m = encoding.decode(data, encoding.Limits(max_size=1 << 30, max_string=1 << 30))
            if not isinstance(m, dict) or m.get("version") != STATE_VERSION:
                raise MalformedDocument("bad_version", "state file")
            if m.get("authority") != self.node_id:
                raise MalformedDocument("bad_value", "state file of another authority")
            reveals = m.get("reveals")
            docs = m.get("consensus")
            if not isinstance(reveals, list) or not isinstance(docs, list):
                raise MalformedDocument("bad_type", "state file")
            for r in reveals:
                if isinstance(r, dict):
                    e, s = r.get("epoch"), r.get("secret")
                    if isinstance(e, int) and isinstance(s, bytes) and len(s) == SRV_LEN:
                        self._reveals[e] = s
            now = self.now()
            for raw in docs:
                if not isinstance(raw, bytes):
                    continue
                try:
                    cons = verify_consensus(
                        raw, self.config.authorities, now, max_skew=self._skew()
                    )
                except DirectoryError:
                    continue
                self._published[cons.epoch] = _Published(raw, cons)
        except DirectoryError as exc:
            log.warning("ignoring the authority state file: %s", exc)
