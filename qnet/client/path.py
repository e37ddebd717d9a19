"""Path selection: which nodes a circuit goes through (spec/paths.md), sans-I/O.

    selector = PathSelector(consensus, PathConfig.builder().build(), random.SystemRandom(),
                            guards=guard_set)
    path = selector.build_path(443, now=now, isolation=("socks-user", "alice"))
    path.hops    # tuple[HopRoute, ...], entry first: what ``build_create`` needs
    path.peers   # tuple[PeerInfo, ...], one per hop: how to dial each of them

The selector holds policy only: it reads the consensus it was given (and the
``GuardSet``, if any), draws from the ``rng`` it was given, and never reads a
clock or touches a socket. ``now`` is an argument wherever time matters (guard
retries). A new consensus goes in through ``set_consensus``.

Choices are weighted by bandwidth times the consensus position weights of
spec/directory.md §8.7; hops never share a node, a family (declared by both
sides) or, unless relaxed for loopback test networks, a /16 (IPv4) or /32
(IPv6). Anything impossible raises ``NoPathError`` with a short ``reason``;
nothing else is raised for a well-formed call.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from qnet.constants import MAX_HOPS
from qnet.dir.consensus import WEIGHT_SCALE, Consensus, ConsensusEntry
from qnet.dir.descriptor import Action, IPAddress, IPNetwork, Role, Transport
from qnet.dir.flags import Flag
from qnet.dir.vote import NodeSummary
from qnet.errors import QNetError
from qnet.htx.transport import PeerInfo
from qnet.routing.circuit import HopRoute

if TYPE_CHECKING:
    from qnet.client.circuits import Path as CircuitPath
    from qnet.client.guards import GuardSet

#: Ports whose streams tend to live for hours: they get Stable nodes (Tor's LongLivedPorts).
LONG_LIVED_PORTS: Final = frozenset(
    {21, 22, 706, 1863, 5050, 5190, 5222, 5223, 6523, 6667, 6697, 8300}
)
#: How many isolation keys remember the exit they were last given.
ISOLATION_MEMORY: Final = 256
#: Random draws of (exit, middles) tried per entry before it is given up on.
ATTEMPTS_PER_ENTRY: Final = 16
#: Significant rejects for hostnames: networks at least this wide (prefix at most this long).
_WIDE_REJECT: Final = {4: 8, 6: 16}


# --- errors -----------------------------------------------------------------------------------


class NoPathError(QNetError, LookupError):
    """No path satisfies the request. ``reason`` is a short code:

    ``no_exit`` (no usable exit allows the destination), ``no_guard`` (no guard is
    usable now: none eligible, or every one unreachable and not yet due for a retry),
    ``no_middle`` / ``constraints`` (the family and subnet rules leave no way to
    complete the path), ``too_few_nodes``.

    It is a ``LookupError``, which ``qnet.client.circuits.PathSource`` callers expect.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --- configuration ----------------------------------------------------------------------------

C = TypeVar("C")


class ConfigBuilder(Generic[C]):
    """Collects settings for an immutable config; ``build()`` makes (and checks) it.

    ``set(name=value, ...)`` refuses unknown names at once (``TypeError``); values are
    checked by the config itself in ``build()`` (``ValueError``/``TypeError``).
    """

    def __init__(self, kind: type[C], **values: Any) -> None:
        self._kind = kind
        self._names = frozenset(f.name for f in fields(kind))  # type: ignore[arg-type]
        self._values: dict[str, Any] = {}
        self.set(**values)

    def set(self, **values: Any) -> ConfigBuilder[C]:
        for name in values:
            if name not in self._names:
                raise TypeError(f"{self._kind.__name__} has no setting {name!r}")
        self._values.update(values)
        return self

    def build(self) -> C:
        return self._kind(**self._values)


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be a bool, got {value!r}")


def _check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        top = "" if high is None else f"..{high}"
        raise ValueError(f"{owner}.{name} must be in {low}{top}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PathConfig:
    """Path-selection policy. Make one with ``PathConfig.builder()...build()``.

    n_hops: hops per circuit, entry and exit included (3; 2..``MAX_HOPS``).
    enforce_family: no two hops of one family, declared by both nodes (True).
    enforce_distinct_subnets: no two hops sharing an IPv4 /``ipv4_prefix`` or an IPv6
        /``ipv6_prefix`` (True). A loopback test network (everything on 127.0.0.1)
        must turn this off.
    ipv4_prefix / ipv6_prefix: the subnet sizes of that rule (16 / 32).
    require_fast: every hop needs the Fast flag (True).
    require_exit_flag: the exit needs the Exit flag, not only a policy allowing the
        destination (True). A test network whose exits allow only loopback never gets
        the flag (spec/directory.md §8.3) and turns this off.
    long_lived_ports: a request for one of these ports needs Stable hops (Tor's list).
    isolate_exits: a request with an isolation key avoids the exits last given to
        other isolation keys while another allowed exit exists (True).
    """

    n_hops: int = 3
    enforce_family: bool = True
    enforce_distinct_subnets: bool = True
    ipv4_prefix: int = 16
    ipv6_prefix: int = 32
    require_fast: bool = True
    require_exit_flag: bool = True
    long_lived_ports: frozenset[int] = LONG_LIVED_PORTS
    isolate_exits: bool = True

    def __post_init__(self) -> None:
        owner = "PathConfig"
        _check_int(owner, "n_hops", self.n_hops, 2, MAX_HOPS)
        _check_int(owner, "ipv4_prefix", self.ipv4_prefix, 1, 32)
        _check_int(owner, "ipv6_prefix", self.ipv6_prefix, 1, 128)
        for name in ("enforce_family", "enforce_distinct_subnets", "require_fast"):
            _check_bool(owner, name, getattr(self, name))
        for name in ("require_exit_flag", "isolate_exits"):
            _check_bool(owner, name, getattr(self, name))
        if not isinstance(self.long_lived_ports, frozenset) or not all(
            isinstance(p, int) and 1 <= p <= 65535 for p in self.long_lived_ports
        ):
            raise TypeError(f"{owner}.long_lived_ports must be a frozenset of ports")

    @classmethod
    def builder(cls, **values: Any) -> ConfigBuilder[PathConfig]:
        return ConfigBuilder(cls, **values)


# --- what one node can do ---------------------------------------------------------------------


class Position(enum.Enum):
    """Where in a path a node is chosen for (the weights differ, spec/directory.md §8.7)."""

    GUARD = "guard"
    MIDDLE = "middle"
    EXIT = "exit"


def position_weight(flags: Collection[Flag], position: Position, weights: Mapping[str, int]) -> int:
    """The consensus weight (0..10,000) of a node with ``flags`` in ``position``."""
    guard, exit_ = Flag.GUARD in flags, Flag.EXIT in flags
    if position is Position.GUARD:
        name = "wgd" if exit_ else "wgg"
    elif position is Position.EXIT:
        name = "wed" if guard else "wee"
    elif guard and exit_:
        name = "wmd"
    elif guard:
        name = "wmg"
    elif exit_:
        name = "wme"
    else:
        name = "wmm"
    return max(0, weights.get(name, WEIGHT_SCALE))


class ExitSupport(enum.IntEnum):
    """How sure a node's policy is to allow a destination whose address is unknown."""

    NO = 0
    MAYBE = 1  # some addresses on the port are allowed, or a wide range is refused
    SURE = 2  # every public address on the port is allowed, bar narrow holes


def allows_exit(summary: NodeSummary, ip: IPAddress, port: int) -> bool:
    """The descriptor's exit rule (spec/directory.md §5): first matching rule wins;
    no match, or no ``exit`` role, is a refusal."""
    if Role.EXIT not in summary.roles:
        return False
    for rule in summary.exit_policy:
        if rule.matches(ip, port):
            return rule.action is Action.ACCEPT
    return False


def exit_support(summary: NodeSummary, port: int) -> ExitSupport:
    """Whether the policy allows ``port`` towards an address not yet known (a hostname).

    Rules covering the port are read in order. An accept of a whole address family
    is SURE; a narrower accept makes the answer at least MAYBE. A reject counts only
    if it covers public space and is wide (IPv4 /8 or wider, IPv6 /16 or wider): it
    ends the walk. Narrow or non-public rejects are holes the exit may refuse
    individually (the client then retries elsewhere).
    """
    if Role.EXIT not in summary.roles:
        return ExitSupport.NO
    maybe = False
    for rule in summary.exit_policy:
        if not rule.port_min <= port <= rule.port_max:
            continue
        net = rule.network
        if rule.action is Action.ACCEPT:
            if net.prefixlen == 0:
                return ExitSupport.SURE
            maybe = True
        elif net.prefixlen <= _WIDE_REJECT[net.version] and _public(net):
            break
    return ExitSupport.MAYBE if maybe else ExitSupport.NO


def _public(net: IPNetwork) -> bool:
    special = net.is_private or net.is_loopback or net.is_link_local or net.is_multicast
    return net.prefixlen == 0 or not special


def onion_key(entry: ConsensusEntry, epoch: int) -> bytes | None:
    """The node's mix (onion) key for ``epoch``, from its summary's two keys, or ``None``
    when the summary holds no key for it (spec/directory.md §9.6)."""
    summary = entry.descriptor
    if summary.mix_epoch == epoch:
        return summary.mix_current
    if summary.mix_epoch + 1 == epoch:
        return summary.mix_next
    if summary.mix_epoch == epoch + 1:  # published early; the node accepts next-epoch keys
        return summary.mix_current
    return None


def mutual_families(nodes: Iterable[ConsensusEntry]) -> dict[bytes, frozenset[bytes]]:
    """Each node's family: the nodes it lists that also list it (never itself)."""
    listed = {n.node_id: frozenset(n.descriptor.family) for n in nodes}
    return {
        nid: frozenset(m for m in members if m != nid and nid in listed.get(m, ()))
        for nid, members in listed.items()
    }


def subnet_keys(
    entry: ConsensusEntry, v4_prefix: int, v6_prefix: int
) -> frozenset[tuple[int, int]]:
    """(IP version, network number) of every address's /``v4_prefix`` or /``v6_prefix``."""
    out = set()
    for a in entry.descriptor.addresses:
        prefix = v4_prefix if a.ip.version == 4 else v6_prefix
        net = ipaddress.ip_network((a.ip, prefix), strict=False)
        out.add((a.ip.version, int(net.network_address)))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class _Node:
    entry: ConsensusEntry
    route: HopRoute
    peer: PeerInfo
    subnets: frozenset[tuple[int, int]]
    family: frozenset[bytes]

    @property
    def node_id(self) -> bytes:
        return self.entry.node_id

    @property
    def flags(self) -> frozenset[Flag]:
        return self.entry.flags


# --- the result -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Path:
    """A chosen path, entry first. ``hops[i]`` and ``peers[i]`` describe the same node.

    It has the ``hops``, ``entry`` and ``entry_id`` that ``qnet.client.circuits``
    reads; ``for_circuit()`` gives that module's own ``Path``.
    """

    hops: tuple[HopRoute, ...]
    peers: tuple[PeerInfo, ...]
    port: int | None
    isolation: Hashable = None

    @property
    def entry(self) -> PeerInfo:
        return self.peers[0]

    @property
    def entry_id(self) -> bytes:
        return self.hops[0].node_id

    @property
    def exit_id(self) -> bytes:
        return self.hops[-1].node_id

    @property
    def node_ids(self) -> tuple[bytes, ...]:
        return tuple(h.node_id for h in self.hops)

    def for_circuit(self) -> CircuitPath:
        """The same path as ``qnet.client.circuits.Path`` (hops and entry)."""
        from qnet.client.circuits import Path as CircuitPath

        return CircuitPath(hops=self.hops, entry=self.peers[0])


# --- the selector -----------------------------------------------------------------------------


class PathSelector:
    """Chooses paths from one consensus (replace it with ``set_consensus``).

    ``rng`` is any ``random.Random``: ``random.SystemRandom()`` in production, a
    seeded ``random.Random`` in tests. With ``guards``, the entry comes from the
    guard set's primary guards (``qnet.client.guards``); without, it is drawn
    afresh from the Guard-flagged nodes for each path.
    """

    def __init__(
        self,
        consensus: Consensus,
        config: PathConfig | None = None,
        rng: random.Random | None = None,
        *,
        guards: GuardSet | None = None,
    ) -> None:
        self.config = config if config is not None else PathConfig()
        self._rng = rng if rng is not None else random.SystemRandom()
        self.guards = guards
        self._isolation_exits: OrderedDict[Hashable, bytes] = OrderedDict()
        self._nodes: dict[bytes, _Node] = {}
        self.consensus = consensus
        self.set_consensus(consensus)

    def set_consensus(self, consensus: Consensus) -> None:
        """Use ``consensus`` from now on. Nodes without a TCP address, without a
        relaying role or without a mix key for the consensus epoch are left out."""
        cfg = self.config
        families = mutual_families(consensus.nodes)
        nodes: dict[bytes, _Node] = {}
        for e in consensus.nodes:
            key = onion_key(e, consensus.epoch)
            tcp = [a for a in e.descriptor.addresses if a.transport is Transport.TCP]
            if key is None or not tcp:
                continue
            if Role.RELAY not in e.descriptor.roles and Role.EXIT not in e.descriptor.roles:
                continue
            d = e.descriptor
            peer = PeerInfo(
                host=str(tcp[0].ip),
                port=tcp[0].port,
                link_public=d.link_x25519,
                mlkem_public=d.kem_mlkem768,
                ticket_public=d.ticket_x25519,
                ticket_key_id=d.ticket_key_id,
                server_name=d.server_name,  # the node's own published name (SNI, Host)
            )
            nodes[e.node_id] = _Node(
                entry=e,
                route=HopRoute(node_id=e.node_id, onion_public=key),
                peer=peer,
                subnets=subnet_keys(e, cfg.ipv4_prefix, cfg.ipv6_prefix),
                family=families.get(e.node_id, frozenset()),
            )
        self.consensus = consensus
        self._nodes = nodes

    # -- building blocks --

    def compatible(self, a: bytes, b: bytes) -> bool:
        """May the nodes ``a`` and ``b`` (node ids) share a path? False if either is unknown."""
        na, nb = self._nodes.get(a), self._nodes.get(b)
        return na is not None and nb is not None and self._compatible(na, nb)

    def _compatible(self, a: _Node, b: _Node) -> bool:
        if a.node_id == b.node_id:
            return False
        if self.config.enforce_family and (b.node_id in a.family or a.node_id in b.family):
            return False
        return not (self.config.enforce_distinct_subnets and a.subnets & b.subnets)

    def _usable(self, n: _Node, stable: bool) -> bool:
        need = {Flag.RUNNING, Flag.VALID}
        if self.config.require_fast:
            need.add(Flag.FAST)
        if stable:
            need.add(Flag.STABLE)
        return need <= n.flags

    def usable_guard(self, node_id: bytes, *, stable: bool = False) -> bool:
        """Could ``node_id`` be an entry in this consensus (flags, key, TCP address)?"""
        n = self._nodes.get(node_id)
        return n is not None and Flag.GUARD in n.flags and self._usable(n, stable)

    def guard_candidates(self) -> list[tuple[bytes, int]]:
        """Every node that can be an entry, with its guard-position weight (for sampling)."""
        w = self.consensus.weights
        nodes = [
            n for n in self._nodes.values() if Flag.GUARD in n.flags and self._usable(n, False)
        ]
        # Exits are scarce: an exit made a guard is one exit fewer for every path
        # (and for stream isolation). Use them as guards only when nothing else can be.
        relays = [n for n in nodes if Role.EXIT not in n.entry.descriptor.roles]
        return [
            (n.node_id, n.entry.bandwidth * position_weight(n.flags, Position.GUARD, w))
            for n in (relays or nodes)
        ]

    def _pick(self, nodes: Sequence[_Node], position: Position) -> _Node:
        w = self.consensus.weights
        weights = [n.entry.bandwidth * position_weight(n.flags, position, w) for n in nodes]
        return nodes[weighted_index(weights, self._rng)]

    def _exits(
        self, usable: list[_Node], port: int | None, address: IPAddress | None
    ) -> list[_Node]:
        cfg = self.config
        cands = [
            n
            for n in usable
            if Role.EXIT in n.entry.descriptor.roles
            and (Flag.EXIT in n.flags or not cfg.require_exit_flag)
        ]
        if port is None:
            return cands
        if address is not None:
            return [n for n in cands if allows_exit(n.entry.descriptor, address, port)]
        support = {n.node_id: exit_support(n.entry.descriptor, port) for n in cands}
        sure = [n for n in cands if support[n.node_id] is ExitSupport.SURE]
        return sure or [n for n in cands if support[n.node_id] is ExitSupport.MAYBE]

    # -- the one call --

    def build_path(
        self,
        port: int | None = None,
        *,
        now: float,
        address: IPAddress | str | None = None,
        isolation: Hashable = None,
        stable: bool | None = None,
        avoid: Collection[bytes] = (),
    ) -> Path:
        """A fresh path whose exit allows ``port`` (and ``address``, when known).

        port: the destination port; ``None`` for a general-purpose (preemptive)
            circuit, whose exit only needs the Exit flag.
        now: Unix seconds (guard retry times).
        address: the destination IP if known (first-match policy check); for a
            hostname leave it ``None``: exits sure to allow the port for any public
            address are preferred, exits that might allow it are the fallback.
        isolation: the stream isolation key the circuit is for; with
            ``isolate_exits`` it steers away from other keys' recent exits.
        stable: require Stable hops; by default, when ``port`` is long-lived.
        avoid: node ids that must not appear (say, the hops of a path that just
            failed). With a guard set it does not apply to the entry: a guard is
            given up on only through ``GuardSet.note_failure``.

        Raises ``NoPathError``; ``ValueError`` for a port out of range or an
        unparseable ``address``.
        """
        if port is not None and (isinstance(port, bool) or not 1 <= port <= 65535):
            raise ValueError(f"port must be 1..65535 or None, got {port!r}")
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        need_stable = stable if stable is not None else port in self.config.long_lived_ports
        banned = frozenset(avoid)
        usable = [
            n
            for n in self._nodes.values()
            if n.node_id not in banned and self._usable(n, need_stable)
        ]
        if len(usable) < self.config.n_hops:
            raise NoPathError(
                "too_few_nodes", f"{len(usable)} usable nodes for {self.config.n_hops} hops"
            )
        exits = self._exits(usable, port, ip)
        if not exits:
            where = f"port {port}" if ip is None else f"{ip} port {port}"
            raise NoPathError("no_exit", f"no usable exit allows {where}")
        if isolation is not None and self.config.isolate_exits:
            taken = {x for k, x in self._isolation_exits.items() if k != isolation}
            exits = [n for n in exits if n.node_id not in taken] or exits

        if self.guards is not None:
            self.guards.update(self, now)
            ids = self.guards.entry_candidates(self, now)
            # ``avoid`` does not reach the guards: only ``note_failure`` moves the entry,
            # so a retry loop cannot rotate a client through its guards by accident.
            entries = [self._nodes[i] for i in ids if i in self._nodes]
            entries = [n for n in entries if self._usable(n, need_stable)]
            if not entries:
                raise NoPathError("no_guard", "no guard is usable now")
            path, why = None, "constraints"
            for entry in entries:
                path, why = self._complete(entry, exits, usable)
                if path is not None:
                    break
        else:
            path, why = self._without_guards(exits, usable)
        if path is None:
            raise NoPathError(why, "the family and subnet rules leave no complete path")
        if isolation is not None:
            self._isolation_exits[isolation] = path[-1].node_id
            self._isolation_exits.move_to_end(isolation)
            while len(self._isolation_exits) > ISOLATION_MEMORY:
                self._isolation_exits.popitem(last=False)
        return Path(
            hops=tuple(n.route for n in path),
            peers=tuple(n.peer for n in path),
            port=port,
            isolation=isolation,
        )

    def _middles(self, chosen: list[_Node], usable: list[_Node]) -> list[_Node] | None:
        middles: list[_Node] = []
        for _ in range(self.config.n_hops - 2):
            taken = chosen + middles
            cands = [n for n in usable if all(self._compatible(n, t) for t in taken)]
            if not cands:
                return None
            middles.append(self._pick(cands, Position.MIDDLE))
        return middles

    def _complete(
        self, entry: _Node, exits: list[_Node], usable: list[_Node]
    ) -> tuple[list[_Node] | None, str]:
        """Exit and middles around a fixed entry, or (None, reason)."""
        ok_exits = [x for x in exits if self._compatible(entry, x)]
        if not ok_exits:
            return None, "no_exit"
        for _ in range(ATTEMPTS_PER_ENTRY):
            exit_ = self._pick(ok_exits, Position.EXIT)
            middles = self._middles([entry, exit_], usable)
            if middles is not None:
                return [entry, *middles, exit_], ""
        return None, "no_middle"

    def _without_guards(
        self, exits: list[_Node], usable: list[_Node]
    ) -> tuple[list[_Node] | None, str]:
        guards = [n for n in usable if Flag.GUARD in n.flags]
        if not guards:
            return None, "no_guard"
        why = "constraints"
        for _ in range(ATTEMPTS_PER_ENTRY * 4):
            exit_ = self._pick(exits, Position.EXIT)
            entries = [g for g in guards if self._compatible(g, exit_)]
            if not entries:
                why = "no_guard"
                continue
            entry = self._pick(entries, Position.GUARD)
            middles = self._middles([entry, exit_], usable)
            if middles is None:
                why = "no_middle"
                continue
            return [entry, *middles, exit_], ""
        return None, why


def weighted_index(weights: Sequence[int], rng: random.Random) -> int:
    """An index drawn with probability proportional to ``weights`` (integers, none
    negative); uniform when they sum to zero. ``weights`` must not be empty."""
    total = sum(weights)
    if total <= 0:
        return rng.randrange(len(weights))
    x = rng.randrange(total)
    for i, w in enumerate(weights):
        if x < w:
            return i
        x -= w
    raise AssertionError("unreachable: x < total")
