"""Getting directory documents as a client or a node, and caching them as a relay (spec §9).

    got = await fetch_consensus(sources, authorities, now)   # verified, or NoUsableSource
    desc = await fetch_descriptor(sources, digest, now)
    results = await publish_descriptor(authority_peers, envelope)

    cache = DirectoryCache(authorities)                       # a relay's directory cache
    await cache.refresh(authority_peers)                      # fetches and verifies
    await serve_tcp(cache.handle_link, htx_cfg)               # serves only what it verified

Every document is verified before it is returned or cached; a source that gives
a bad one (or none) is skipped and the next is tried. Sources are tried in the
order given: a caller that wants to spread load shuffles them first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from qnet.dir import net, protocol
from qnet.dir.consensus import Consensus, verify_consensus
from qnet.dir.descriptor import Descriptor, parse_and_verify, split_envelope
from qnet.dir.protocol import Op, ProtocolLimits, Request, Response, Status
from qnet.dir.vote import DEFAULT_PARAMS, Authorities, descriptor_digest
from qnet.errors import (
    DirectoryError,
    IdentityMismatch,
    MalformedDocument,
    NoUsableSource,
    StaleDocument,
)
from qnet.htx.transport import HtxLink, PeerInfo

#: Seconds one source may take to answer a fetch.
FETCH_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetched:
    """A verified consensus document, what it says, and the source that gave it."""

    raw: bytes
    consensus: Consensus
    source: PeerInfo


def _one(docs: tuple[bytes, ...], what: str) -> bytes:
    if len(docs) != 1:
        raise MalformedDocument("bad_value", f"{what}: expected one document, got {len(docs)}")
    return docs[0]


def _source(peer: PeerInfo) -> str:
    return f"{peer.host}:{peer.port}"


async def fetch_consensus(
    sources: Sequence[PeerInfo],
    authorities: Authorities,
    now: int | None = None,
    *,
    min_epoch: int | None = None,
    max_skew: int = DEFAULT_PARAMS.max_skew,
    limits: ProtocolLimits = protocol.DEFAULT_LIMITS,
    timeout: float = FETCH_TIMEOUT,
) -> Fetched:
    """The first consensus from ``sources`` (authorities or caches) that verifies.

    Each answer goes through ``verify_consensus(raw, authorities, now)``: a document
    that is under-signed, carries a bad signature of either kind, names an unknown
    authority, is expired or not yet valid, or is malformed is refused with its typed
    error, and so is one older than ``min_epoch`` (``StaleDocument``,
    ``older_than_held``: a cache must not roll a node back). Then the next source is
    tried. If none gives a usable document, raises ``NoUsableSource`` whose
    ``failures`` lists every source with its error.
    """
    failures: list[tuple[object, DirectoryError]] = []
    for peer in sources:
        try:
            docs = await net.ask(peer, protocol.get_consensus(), limits=limits, timeout=timeout)
            raw = _one(docs, "consensus")
            at = int(time.time()) if now is None else now
            cons = verify_consensus(raw, authorities, at, max_skew=max_skew)
            if min_epoch is not None and cons.epoch < min_epoch:
                raise StaleDocument("older_than_held", f"epoch {cons.epoch} < {min_epoch}")
        except DirectoryError as exc:
            failures.append((peer, exc))
            continue
        return Fetched(raw=raw, consensus=cons, source=peer)
    tried = ", ".join(f"{_source(p)}: {e.reason}" for p, e in failures if isinstance(p, PeerInfo))
    raise NoUsableSource(f"no verified consensus ({tried or 'no sources'})", failures)


def check_descriptor(raw: bytes, digest: bytes, now: int) -> Descriptor:
    """``parse_and_verify`` plus: the body is the one ``digest`` names
    (``IdentityMismatch``, ``digest_mismatch``)."""
    body, _ = split_envelope(raw)
    if descriptor_digest(body) != digest:
        raise IdentityMismatch("digest_mismatch", "descriptor body does not match its digest")
    return parse_and_verify(raw, now)


async def fetch_descriptor(
    sources: Sequence[PeerInfo],
    digest: bytes,
    now: int | None = None,
    *,
    limits: ProtocolLimits = protocol.DEFAULT_LIMITS,
    timeout: float = FETCH_TIMEOUT,
) -> tuple[bytes, Descriptor]:
    """The descriptor named ``digest`` (the consensus lists it), verified, from the first
    source that has it. Raises ``NoUsableSource``."""
    failures: list[tuple[object, DirectoryError]] = []
    for peer in sources:
        try:
            req = protocol.get_descriptor(digest)
            docs = await net.ask(peer, req, limits=limits, timeout=timeout)
            raw = _one(docs, "descriptor")
            desc = check_descriptor(raw, digest, int(time.time()) if now is None else now)
        except DirectoryError as exc:
            failures.append((peer, exc))
            continue
        return raw, desc
    raise NoUsableSource(f"descriptor {digest.hex()[:16]} not found", failures)


async def publish_descriptor(
    authorities: Sequence[PeerInfo],
    envelope: bytes,
    *,
    limits: ProtocolLimits = protocol.DEFAULT_LIMITS,
    timeout: float = FETCH_TIMEOUT,
    static_private: bytes | None = None,
) -> list[tuple[PeerInfo, DirectoryError | None]]:
    """Post a node's signed descriptor to every authority at once.

    Returns, in the order given, each authority with ``None`` (accepted) or the
    error it gave (``RequestRefused`` with the authority's reason, or
    ``DirectoryUnreachable``). The node republishes every epoch anyway.
    """
    results: list[DirectoryError | None] = [None] * len(authorities)

    async def one(i: int, peer: PeerInfo) -> None:
        try:
            await net.ask(
                peer,
                protocol.post_descriptor(envelope),
                limits=limits,
                timeout=timeout,
                static_private=static_private,
            )
        except DirectoryError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i, peer in enumerate(authorities):
            nursery.start_soon(one, i, peer)
    return list(zip(authorities, results, strict=True))


class DirectoryCache:
    """What a relay keeps to serve the directory: only documents it verified itself.

    ``offer_consensus`` / ``offer_descriptor`` verify before keeping (and raise the
    typed error otherwise); ``handle_request`` serves the held consensus while it is
    still valid, and descriptors by digest. A cache answers only the two ``get``
    ops of §9; the others get ``unavailable``.
    """

    def __init__(
        self,
        authorities: Authorities,
        *,
        max_skew: int = DEFAULT_PARAMS.max_skew,
        limits: ProtocolLimits = protocol.DEFAULT_LIMITS,
        timeout: float = net.DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authorities = authorities
        self.max_skew = max_skew
        self.limits = limits
        self.timeout = timeout
        self.clock = clock
        self.raw: bytes | None = None
        self.consensus: Consensus | None = None
        self._descriptors: dict[bytes, bytes] = {}

    def now(self) -> int:
        return int(self.clock())

    def offer_consensus(self, raw: bytes, now: int | None = None) -> Consensus:
        """Verify ``raw`` and hold it if it is newer than what is held. Raises the
        ``verify_consensus`` error for a document that does not verify."""
        at = self.now() if now is None else now
        cons = verify_consensus(raw, self.authorities, at, max_skew=self.max_skew)
        if self.consensus is None or cons.epoch > self.consensus.epoch:
            self.raw, self.consensus = bytes(raw), cons
            listed = {n.descriptor.digest for n in cons.nodes}
            self._descriptors = {d: r for d, r in self._descriptors.items() if d in listed}
        return cons

    def offer_descriptor(self, raw: bytes, now: int | None = None) -> bytes:
        """Verify a descriptor the held consensus lists and hold it; its digest.

        Raises the ``parse_and_verify`` error, or ``MalformedDocument``
        (``not_listed``) for a descriptor the held consensus does not name.
        """
        body, _ = split_envelope(raw)
        digest = descriptor_digest(body)
        if self.consensus is None or digest not in {
            n.descriptor.digest for n in self.consensus.nodes
        }:
            raise MalformedDocument("not_listed", "the held consensus does not list it")
        check_descriptor(raw, digest, self.now() if now is None else now)
        self._descriptors[digest] = bytes(raw)
        return digest

    def descriptor(self, digest: bytes) -> bytes | None:
        return self._descriptors.get(digest)

    async def refresh(self, sources: Sequence[PeerInfo], *, fetch_descriptors: bool = True) -> None:
        """Fetch a newer consensus (and, optionally, the descriptors it lists) from
        ``sources``. Raises ``NoUsableSource`` when no source has a verified one."""
        floor = self.consensus.epoch + 1 if self.consensus is not None else None
        got = await fetch_consensus(
            sources,
            self.authorities,
            self.now(),
            min_epoch=floor,
            max_skew=self.max_skew,
            limits=self.limits,
            timeout=self.timeout,
        )
        self.offer_consensus(got.raw)
        if not fetch_descriptors:
            return
        for node in got.consensus.nodes:
            digest = node.descriptor.digest
            if digest in self._descriptors:
                continue
            try:
                raw, _ = await fetch_descriptor(
                    sources, digest, self.now(), limits=self.limits, timeout=self.timeout
                )
                self.offer_descriptor(raw)
            except DirectoryError:
                continue

    async def handle_request(self, req: Request) -> Response:
        if req.op is Op.GET_CONSENSUS:
            cons = self.consensus
            if self.raw is None or cons is None or self.now() >= cons.valid_until + self.max_skew:
                return protocol.error(Status.NOT_FOUND, "no_consensus")
            return protocol.ok([self.raw])
        if req.op is Op.GET_DESCRIPTOR:
            assert req.digest is not None
            raw = self._descriptors.get(req.digest)
            return protocol.ok([raw]) if raw else protocol.error(Status.NOT_FOUND, "unknown_digest")
        return protocol.error(Status.UNAVAILABLE, "not_an_authority")

    async def handle_link(self, link: HtxLink) -> None:
        """Answer directory requests on ``link`` (a ``serve_tcp`` handler)."""
        await net.serve_link(link, self.handle_request, limits=self.limits, timeout=self.timeout)
