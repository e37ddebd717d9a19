"""Mixed-mode streams and the client's mixnet session (spec/mixed.md).

``MixClient`` is one session with one gateway: a random 32-byte secret whose
hash is the client id, a link to the gateway (registered with a one-hop
``DELIVER`` to ``REGISTER_ADDRESS``), the Loopix cover driver, the table of
SURBs and loop packets it is waiting for, and the senders that fill the
payload stream's ticks (streams and messages, round-robin).

``MixedStream`` is a ``trio.abc.HalfCloseableStream`` to ``host:port`` through
gateway → 3 mix layers → a mixed-mode exit, with ARQ both ways; the exit
answers on SURBs the stream ships. ``MixedConnector`` serves SOCKS requests
with it.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from qnet.client.cover import CoverCounters, CoverRates, CoverScheduler, CoverSource, run_cover
from qnet.client.proxy import ConnectError, Connector
from qnet.client.socks import IPAddress, SocksRequest
from qnet.constants import MESSAGE_LEN
from qnet.errors import CellError, PacketError
from qnet.htx.transport import PeerInfo
from qnet.mix import sphinx as S
from qnet.mix.arq import Arq, ArqConfig, ArqFailed
from qnet.mix.delivery import DROP_ADDRESS, EXIT_ADDRESS, REGISTER_ADDRESS
from qnet.mix.frames import Flag, Frame, Kind, decode_frame, max_data
from qnet.mix.gateway import PUSH_DELIVER, PUSH_SURB_REPLY, Pushed, client_id_of, decode_push
from qnet.node.links import DIAL_ERRORS, CellLink, LinkManager
from qnet.routing.cells import Unit, UnitCommand, decode_unit
from qnet.routing.streams import EndReason

log = logging.getLogger("qnet.client.mixed")

Packet = tuple[bytes, bytes]
NodeKey = tuple[bytes, bytes]  # (node id, mix public key)


class ConsensusEntryLike(Protocol):
    @property
    def node_id(self) -> bytes: ...

    @property
    def descriptor(self) -> Any: ...


class ConsensusDirectoryLike(Protocol):
    """What ``ConsensusTopology`` reads (``qnet.node.directory_agent.ConsensusDirectory``)."""

    @property
    def consensus(self) -> Any: ...

    @property
    def entries(self) -> Sequence[ConsensusEntryLike]: ...

    def layer(self, layer: int) -> Sequence[ConsensusEntryLike]: ...

    def current_mix_key(self, node_id: bytes) -> bytes | None: ...

    def peer_info(self, node_id: bytes) -> PeerInfo | None: ...


class MixTopology(Protocol):
    """What the client needs from the consensus (``ConsensusTopology`` in production)."""

    @property
    def params(self) -> Mapping[str, int]: ...

    def layer(self, layer: int) -> Sequence[NodeKey]:
        """The mixnodes of ``layer`` (0, 1, 2) with their current mix keys."""
        ...

    def exits(self) -> Sequence[NodeKey]:
        """Nodes that run a mixed-mode exit, with their current mix keys."""
        ...

    def mix_key(self, node_id: bytes) -> bytes | None: ...

    def peer_info(self, node_id: bytes) -> PeerInfo | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MixedConfig:
    """* ``delay_mean_s``: mean per-hop delay (``None``: the consensus's
      ``mix_delay_mean_ms``).
    * ``rates``: cover rates (``None``: from the consensus parameters).
    * ``surb_target``: SURBs a stream tries to keep at its exit.
    * ``probe_interval``: a stream that heard nothing this long ships SURBs anyway.
    * ``send_buffer``: bytes ``send_all`` queues before it waits.
    """

    delay_mean_s: float | None = None
    rates: CoverRates | None = None
    arq: ArqConfig = field(default_factory=lambda: ArqConfig(mss=max_data(1), window=64))
    surb_target: int = 96
    surb_lifetime: float = 900.0
    probe_interval: float = 2.0
    send_buffer: int = 256 * 1024
    connect_timeout: float = 120.0


class MixClient:
    """One mixed-mode session. Run ``run`` in a nursery (``await nursery.start(...)``)."""

    def __init__(
        self,
        topology: MixTopology,
        gateway: bytes,
        *,
        config: MixedConfig | None = None,
        rng: random.Random | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.topology = topology
        self.gateway = gateway
        self.config = config if config is not None else MixedConfig()
        self.rng = rng if rng is not None else random.SystemRandom()
        self.secret = secret if secret is not None else self.randbytes(32)
        self.client_id = client_id_of(self.secret)
        self.links = LinkManager(
            peer_info=topology.peer_info, on_units=self._on_units, on_closed=self._on_closed
        )
        self._registered_link: int | None = None
        self._surbs: dict[bytes, tuple[S.SurbSecrets, Callable[[bytes, float], None], float]] = {}
        self._loops: dict[bytes, float] = {}
        self.senders: list[Sender] = []
        self._rr = 0
        self.on_deliver: Callable[[Pushed], None] | None = None
        self.cover = CoverCounters()
        self.counts: Counter[str] = Counter()
        self.loops_returned = 0
        self.scheduler: CoverScheduler | None = None

    def randbytes(self, n: int) -> bytes:
        return self.rng.getrandbits(8 * n).to_bytes(n, "big") if n else b""

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dial the gateway, register, and send the Poisson streams until cancelled."""
        rates = self.config.rates or CoverRates.from_params(self.topology.params)
        self.scheduler = CoverScheduler(rates, self.rng, trio.current_time())
        source = CoverSource(real=self._real, loop=self._loop, drop=self._drop, send=self.send)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.links.run)
            await self._gateway_link()
            await nursery.start(run_cover, self.scheduler, source, self.cover)
            task_status.started()
            await trio.sleep_forever()

    async def _gateway_link(self) -> CellLink:
        link = await self.links.get(self.gateway)
        if self._registered_link != link.number:
            route = [
                S.RouteHop(
                    node_id=self.gateway,
                    public_key=self._key(self.gateway),
                    slot=S.Slot(command=S.Command.DELIVER, address=REGISTER_ADDRESS),
                )
            ]
            built = S.build_packet(route, self.secret, self.randbytes)
            await link.send_units([_sphinx_unit(built.packet)])
            self._registered_link = link.number
        return link

    async def send(self, packet: Packet) -> None:
        """Put one packet on the gateway link (dialing and registering if needed).
        A packet that cannot go is dropped: the ARQ above sends it again."""
        first_hop, raw = packet
        try:
            if first_hop == self.gateway:
                link = await self._gateway_link()
            else:  # a SURB reply starts at layer 1 (spec/mixed.md §6)
                link = await self.links.get(first_hop)
            await link.send_units([_sphinx_unit(raw)])
        except (*DIAL_ERRORS, LookupError, trio.ClosedResourceError) as exc:
            self.counts["send_failed"] += 1
            log.debug("gateway send failed: %r", exc)

    async def _on_closed(self, link: CellLink) -> None:
        if link.number == self._registered_link:
            self._registered_link = None

    # --- routes ---------------------------------------------------------------------------------

    def _key(self, node_id: bytes) -> bytes:
        key = self.topology.mix_key(node_id)
        if key is None:
            raise LookupError(f"no mix key for {node_id.hex()[:12]}")
        return key

    def _delay_us(self) -> int:
        mean = self.config.delay_mean_s
        if mean is None:
            mean = self.topology.params.get("mix_delay_mean_ms", 50) / 1000.0
        if mean <= 0:
            return 0
        return min(2**32 - 1, int(self.rng.expovariate(1.0 / mean) * 1e6))

    def _layers(self) -> list[NodeKey]:
        out = []
        for n in range(3):
            nodes = self.topology.layer(n)
            if not nodes:
                raise LookupError(f"mix layer {n} is empty")
            out.append(self.rng.choice(list(nodes)))
        return out

    def _route(self, last: NodeKey, final: S.Slot, *, via_gateway: bool) -> list[S.RouteHop]:
        hops: list[NodeKey] = []
        delays: list[int] = []
        if via_gateway:
            hops.append((self.gateway, self._key(self.gateway)))
            delays.append(0)
        for node in self._layers():
            hops.append(node)
            delays.append(self._delay_us())
        hops.append(last)
        delays.append(final.delay_us)
        return S.mix_route(hops, final, delays)

    def packet_to(self, node: NodeKey, address: bytes, message: bytes, tag: bytes = b"") -> Packet:
        """A forward packet: gateway → 3 layers → ``node`` (``DELIVER`` to ``address``)."""
        slot = S.Slot(command=S.Command.DELIVER, address=address, tag=tag or bytes(S.TAG_LEN))
        built = S.build_packet(self._route(node, slot, via_gateway=True), message, self.randbytes)
        return built.first_hop, built.packet

    def make_surb(self, owner: Callable[[bytes, float], None]) -> S.Surb:
        """A SURB for 3 layers → our gateway → us; ``owner(message, now)`` gets the reply."""
        gw = (self.gateway, self._key(self.gateway))
        slot = S.Slot(command=S.Command.SURB_REPLY, address=self.client_id)
        surb, secrets, _ = S.create_surb(self._route(gw, slot, via_gateway=False), self.randbytes)
        self._surbs[secrets.surb_id] = (secrets, owner, trio.current_time())
        return surb

    def forget_surbs(self, owner: Callable[[bytes, float], None]) -> None:
        for sid in [k for k, v in self._surbs.items() if v[1] == owner]:
            del self._surbs[sid]

    # --- the cover source -----------------------------------------------------------------------

    def _real(self, now: float) -> Packet | None:
        # A snapshot: polling a finished stream removes it from ``senders``.
        senders = list(self.senders)
        n = len(senders)
        for i in range(n):
            sender = senders[(self._rr + i) % n]
            try:
                packet = sender.poll(now)
            except LookupError as exc:  # no route right now
                log.debug("no route: %s", exc)
                continue
            if packet is not None:
                self._rr = (self._rr + i + 1) % max(1, len(self.senders))
                return packet
        return None

    def _loop(self, now: float) -> Packet | None:
        try:
            gw = (self.gateway, self._key(self.gateway))
            loop_id = self.randbytes(S.TAG_LEN)
            slot = S.Slot(command=S.Command.SURB_REPLY, address=self.client_id, tag=loop_id)
            route = self._route(gw, slot, via_gateway=True)
        except LookupError:
            return None
        built = S.build_packet(route, self.randbytes(MESSAGE_LEN), self.randbytes)
        self._loops[loop_id] = now
        self._expire(now)
        return built.first_hop, built.packet

    def _drop(self, now: float) -> Packet | None:
        try:
            candidates = list(self.topology.exits()) or list(self.topology.layer(2))
            if not candidates:
                return None
            return self.packet_to(self.rng.choice(candidates), DROP_ADDRESS, b"")
        except LookupError:
            return None

    def _expire(self, now: float) -> None:
        life = self.config.surb_lifetime
        for lid in [k for k, t in self._loops.items() if now - t > life]:
            del self._loops[lid]
        if len(self._surbs) > 4096:
            for sid in [k for k, v in self._surbs.items() if now - v[2] > life]:
                del self._surbs[sid]

    # --- from the gateway -----------------------------------------------------------------------

    async def _on_units(self, link: CellLink, units: list[bytes]) -> None:
        now = trio.current_time()
        for raw in units:
            try:
                unit = decode_unit(raw)
                if unit.command is not UnitCommand.SPHINX:
                    continue
                pushed = decode_push(unit.body)
            except (CellError, PacketError):
                self.counts["bad_push"] += 1
                continue
            self._on_pushed(pushed, now)

    def _on_pushed(self, pushed: Pushed, now: float) -> None:
        if pushed.kind == PUSH_DELIVER:
            self.counts["delivered"] += 1
            if self.on_deliver is not None:
                self.on_deliver(pushed)
            return
        assert pushed.kind == PUSH_SURB_REPLY
        if self._loops.pop(pushed.tag, None) is not None:
            self.loops_returned += 1
            return
        entry = self._surbs.pop(pushed.tag, None)
        if entry is None:
            self.counts["unknown_surb"] += 1
            return
        secrets, owner, _ = entry
        try:
            message = S.open_surb_reply(secrets, pushed.payload)
        except PacketError:
            self.counts["bad_reply"] += 1
            return
        owner(message, now)

    # --- streams --------------------------------------------------------------------------------

    async def open_stream(self, host: str, port: int) -> MixedStream:
        """A stream to ``host:port`` through a random mixed-mode exit; raises ``ConnectError``."""
        exits = list(self.topology.exits())
        if not exits:
            raise ConnectError(EndReason.MISC, "no mixed-mode exit in the consensus")
        stream = MixedStream(self, self.rng.choice(exits), host, port)
        self.senders.append(stream)
        try:
            with trio.fail_after(self.config.connect_timeout):
                await stream.wait_connected()
        except trio.TooSlowError:
            stream.abort()
            raise ConnectError(EndReason.TIMEOUT, "no answer from the mixed-mode exit") from None
        except ConnectError:
            stream.abort()
            raise
        return stream

    def remove_sender(self, sender: Sender) -> None:
        if sender in self.senders:
            self.senders.remove(sender)


class Sender(Protocol):
    def poll(self, now: float) -> Packet | None:
        """The next packet for a payload tick, or ``None``."""
        ...


def _sphinx_unit(packet: bytes) -> bytes:
    return Unit(circ_id=0, command=UnitCommand.SPHINX, body=packet).encode()


class MixedStream(trio.abc.HalfCloseableStream):
    """One mixed-mode stream. Built by ``MixClient.open_stream``."""

    def __init__(self, client: MixClient, exit_node: NodeKey, host: str, port: int) -> None:
        self.client = client
        self.exit_node = exit_node
        self.conn_id = client.randbytes(16)
        cfg = client.config
        self.arq = Arq(cfg.arq)
        self.arq.send_syn(f"{host}:{port}".encode())
        self._recv = bytearray()
        self._eof = False
        self.error: EndReason | None = None
        self._connected = False
        self._changed = trio.Event()
        self._credit = 0
        self._shipped: deque[tuple[float, int]] = deque()
        self._last_heard = trio.current_time()
        self._last_probe = self._last_heard
        self._rst_pending = False
        self._dead = False
        self._closed = False
        self.counts: Counter[str] = Counter()

    # --- sans-I/O core: frames out, frames in ---------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _surb_need(self, now: float) -> int:
        arq = self.arq
        if arq.fin_received and arq.all_acked:
            return 0
        target = self.client.config.surb_target if self._connected else 4
        horizon = max(0.5, 2 * (arq.srtt if arq.srtt is not None else arq.rto))
        while self._shipped and now - self._shipped[0][0] > horizon:
            self._shipped.popleft()
        return target - self._credit - sum(n for _, n in self._shipped)

    def poll(self, now: float) -> Packet | None:
        if self._dead:
            if self._rst_pending:
                self._rst_pending = False
                self.client.remove_sender(self)
                frame = Frame(kind=Kind.STREAM, conn_id=self.conn_id, flags=Flag.RST | Flag.NOSEQ)
                return self._packet(frame)
            self.client.remove_sender(self)
            return None
        try:
            seg = self.arq.next_segment(now)
        except ArqFailed:
            self._fail(EndReason.TIMEOUT, rst=True)
            return None
        need = self._surb_need(now)
        ack, sack = self.arq.ack_fields()
        flags = Flag.ACK if self.arq.received_any else Flag(0)
        if seg is not None:
            surbs: tuple[S.Surb, ...] = (self.client.make_surb(self._on_reply),) if need > 0 else ()
            frame = Frame(
                kind=Kind.STREAM,
                conn_id=self.conn_id,
                flags=flags | seg.flags,
                seq=seg.seq,
                ack=ack,
                sack=sack,
                surbs=surbs,
                data=seg.data,
            )
        else:
            probe = now - self._last_heard > self.client.config.probe_interval and (
                now - self._last_probe > self.client.config.probe_interval
            )
            if probe and need > 0:
                self._last_probe = now
                n = 2
            elif need >= 2 or (need > 0 and self.arq.ack_due(now)):
                n = min(2, need)
            elif self.arq.ack_due(now):
                n = 0
            else:
                self._maybe_done(now)
                return None
            surbs = tuple(self.client.make_surb(self._on_reply) for _ in range(n))
            frame = Frame(
                kind=Kind.STREAM,
                conn_id=self.conn_id,
                flags=flags | Flag.NOSEQ,
                ack=ack,
                sack=sack,
                surbs=surbs,
            )
        if frame.surbs:
            self._shipped.append((now, len(frame.surbs)))
        self.arq.ack_sent()
        return self._packet(frame)

    def _packet(self, frame: Frame) -> Packet:
        return self.client.packet_to(self.exit_node, EXIT_ADDRESS, frame.encode())

    def _maybe_done(self, now: float) -> None:
        arq = self.arq
        if self._closed and arq.all_acked and arq.fin_received and not arq.ack_due(now):
            self._dead = True
            self.client.remove_sender(self)
            self.client.forget_surbs(self._on_reply)

    def _on_reply(self, message: bytes, now: float) -> None:
        try:
            frame = decode_frame(message)
        except PacketError:
            self.counts["bad_frame"] += 1
            return
        if frame.kind is not Kind.STREAM or frame.conn_id != self.conn_id:
            self.counts["wrong_stream"] += 1
            return
        self._last_heard = now
        self._credit = frame.credit
        self._shipped.clear()
        if frame.flags & Flag.RST:
            self._fail(EndReason.MISC, rst=False)
            return
        if frame.flags & Flag.ACK:
            self.arq.on_ack(frame.ack, frame.sack, now)
        if not frame.flags & Flag.NOSEQ:
            self.arq.on_segment(frame.seq, frame.flags, frame.data, now)
            for seg_flags, data in self.arq.take_received():
                if seg_flags & Flag.SYN:
                    status = data[0] if data else EndReason.MISC
                    if status:
                        try:
                            self.error = EndReason(status)
                        except ValueError:
                            self.error = EndReason.MISC
                    else:
                        self._connected = True
                    continue
                self._recv += data
                if seg_flags & Flag.FIN:
                    self._eof = True
        self._notify()

    def _fail(self, reason: EndReason, *, rst: bool) -> None:
        if self.error is None:
            self.error = reason
        self._dead = True
        self._rst_pending = rst
        if not rst:
            self.client.remove_sender(self)
        self.client.forget_surbs(self._on_reply)
        self._notify()

    def abort(self) -> None:
        """Give up on the stream: the exit is told with an RST frame."""
        if not self._dead:
            self._fail(self.error or EndReason.MISC, rst=True)

    async def wait_connected(self) -> None:
        while not self._connected:
            if self.error is not None:
                raise ConnectError(self.error, "refused by the mixed-mode exit")
            event = self._changed
            await event.wait()

    # --- trio.abc.HalfCloseableStream -----------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._dead or self.error is not None:
            raise trio.BrokenResourceError(f"mixed stream failed: {self.error}")
        self.arq.send(bytes(data))
        await self.wait_send_all_might_not_block()

    async def wait_send_all_might_not_block(self) -> None:
        while self.arq.buffered > self.client.config.send_buffer:
            if self._dead:
                raise trio.BrokenResourceError(f"mixed stream failed: {self.error}")
            event = self._changed
            await event.wait()

    async def send_eof(self) -> None:
        if not self._dead:
            self.arq.close()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._recv:
            if self._eof:
                return b""
            if self._dead:
                raise trio.BrokenResourceError(f"mixed stream failed: {self.error}")
            event = self._changed
            await event.wait()
        n = len(self._recv) if max_bytes is None else min(max_bytes, len(self._recv))
        out = bytes(self._recv[:n])
        del self._recv[:n]
        return out

    async def aclose(self) -> None:
        """Close: a stream not finished both ways is aborted (RST to the exit)."""
        if self._closed:
            return
        self._closed = True
        if not (self._eof and self.arq.all_acked and self.arq.fin_received):
            if not self._dead:
                # Let queued data and the FIN go out; the stream removes itself when done.
                self.arq.close()
        await trio.lowlevel.checkpoint()


# --- the SOCKS connector -----------------------------------------------------------------------


def wants_mixed(request: SocksRequest, *, default: bool = False) -> bool:
    """A request is for mixed mode when its SOCKS username starts with ``mix``, or
    when ``default`` (the ``proxy.mixed`` config flag) says so."""
    creds = request.credentials
    if creds is not None and creds.username.startswith(b"mix"):
        return True
    return default


class MixedConnector:
    """The proxy's ``Connector`` for mixed mode."""

    def __init__(self, client: MixClient) -> None:
        self.client = client

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        host = request.host
        text = f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)
        return await self.client.open_stream(text, request.port)

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        raise ConnectError(EndReason.MISC, "name resolution is not offered in mixed mode")

    async def resolve_ptr(self, request: SocksRequest) -> str:
        raise ConnectError(EndReason.MISC, "reverse lookups are not offered in mixed mode")


class SelectingConnector:
    """Chooses the connector per request: mixed mode for ``wants_mixed`` requests
    (SOCKS username prefix ``mix``, or ``mixed_default``), circuits otherwise."""

    def __init__(self, fast: Connector, mixed: Connector, *, mixed_default: bool = False) -> None:
        self.fast = fast
        self.mixed = mixed
        self.mixed_default = mixed_default

    def _pick(self, request: SocksRequest) -> Connector:
        return self.mixed if wants_mixed(request, default=self.mixed_default) else self.fast

    async def connect(self, request: SocksRequest) -> trio.abc.Stream:
        return await self._pick(request).connect(request)

    async def resolve(self, request: SocksRequest) -> Sequence[IPAddress]:
        return await self._pick(request).resolve(request)

    async def resolve_ptr(self, request: SocksRequest) -> str:
        return await self._pick(request).resolve_ptr(request)


class ConsensusTopology:
    """``MixTopology`` over the consensus the client follows (a ``ConsensusDirectory``).

    Mixed-mode exits are nodes with both the exit and the mix role (the exit's end
    of a mixed stream runs in its mix service); gateways are any Mix-flagged node.
    """

    def __init__(self, directory: ConsensusDirectoryLike) -> None:
        self.directory = directory

    @property
    def params(self) -> Mapping[str, int]:
        params: Mapping[str, int] = self.directory.consensus.params
        return params

    def _keyed(self, entries: Sequence[ConsensusEntryLike]) -> list[NodeKey]:
        out: list[NodeKey] = []
        for entry in entries:
            key = self.directory.current_mix_key(entry.node_id)
            if key is not None:
                out.append((entry.node_id, key))
        return out

    def layer(self, layer: int) -> Sequence[NodeKey]:
        return self._keyed(self.directory.layer(layer))

    def exits(self) -> Sequence[NodeKey]:
        from qnet.dir.descriptor import Role

        return self._keyed(
            [
                e
                for e in self.directory.entries
                if Role.EXIT in e.descriptor.roles and Role.MIX in e.descriptor.roles
            ]
        )

    def gateways(self) -> Sequence[NodeKey]:
        return self._keyed([e for layer in range(3) for e in self.directory.layer(layer)])

    def mix_key(self, node_id: bytes) -> bytes | None:
        return self.directory.current_mix_key(node_id)

    def peer_info(self, node_id: bytes) -> PeerInfo | None:
        return self.directory.peer_info(node_id)
