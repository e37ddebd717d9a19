"""The node configuration: one TOML file, read into frozen dataclasses.

    config = load_config("node.toml")        # raises ConfigError, nothing else
    config.htx.tcp_port, config.exit.allows(ip, 443), config.limits.max_links

Every key has a documented default (the field comments below, and the commented
example ``docs/node.example.toml``, which parses to exactly these defaults). The
parser is strict: an unknown key, a value of the wrong type or a value out of
range raises :class:`ConfigError` naming the full key path (``exit.policy[2]``),
the value and the reason. Nothing is bound or written before the whole file has
been checked.

Relative paths (``node.data_dir``, ``htx.cover_dir``,
``directory.authorities_file``) are taken relative to the directory holding the
config file, so a node started from any working directory finds the same files.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from qnet.dir.descriptor import (
    MAX_POLICY_RULES,
    MLKEM768_PUBLIC_LEN,
    X25519_PUBLIC_LEN,
    Action,
    IPAddress,
    IPNetwork,
    PolicyRule,
    Role,
    server_name_problem,
)
from qnet.dir.identity import ED25519_PUBLIC_LEN, MLDSA65_PUBLIC_LEN, PublicIdentity
from qnet.errors import QNetError
from qnet.htx.transport import PeerInfo

__all__ = [
    "PRIVATE_NETWORKS",
    "AuthorityEntry",
    "ConfigError",
    "defaults",
    "DirectorySection",
    "ExitSection",
    "HtxSection",
    "LimitsSection",
    "LogFormat",
    "MetricsSection",
    "NodeConfig",
    "NodeSection",
    "load_config",
    "parse_config",
    "parse_policy_rule",
]

T = TypeVar("T")


class ConfigError(QNetError, ValueError):
    """The configuration was refused. ``key`` is the full key path (``None`` for a
    file that is not TOML at all), ``value`` the offending value, ``reason`` why."""

    def __init__(self, key: str | None, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if key is None:
            where = "config file"
        elif value is None:
            where = key
        else:
            where = f"{key} = {shown}"
        super().__init__(f"{where}: {reason}")


# --- the sections -----------------------------------------------------------------------


class LogFormat(enum.StrEnum):
    JSON = "json"  # one JSON object per line (for log shippers)
    TEXT = "text"  # "time level event key=value ..." (for people)


LOG_LEVELS: Final = ("debug", "info", "warning", "error")
NICKNAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    """``[node]``: who this node is and where it keeps its state."""

    #: A name for logs and the operator; 1..32 of ``A-Z a-z 0-9 _ -``. Not secret, not unique.
    nickname: str = "unnamed"
    #: Keys and state (created 0700). Relative to the config file's directory.
    data_dir: Path = Path("qnet-data")
    #: Any non-empty combination of relay, exit, mix, authority (no repeats).
    roles: tuple[Role, ...] = (Role.RELAY,)
    #: debug, info, warning or error.
    log_level: str = "info"
    #: json (JSON lines) or text (key=value).
    log_format: LogFormat = LogFormat.JSON
    #: Log peer and destination addresses in clear. Off: they appear as "[scrubbed]".
    log_addresses: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HtxSection:
    """``[htx]``: the HTX listeners and the web site they show to everyone else."""

    #: Address to bind (an IP literal; "0.0.0.0" or "::" for every interface).
    host: str = "0.0.0.0"
    #: TLS-over-TCP port; 0 lets the system pick one (tests).
    tcp_port: int = 443
    #: QUIC (UDP) port; absent means no QUIC listener, 0 lets the system pick.
    quic_port: int | None = None
    #: The IP address published in the descriptor; absent means ``host`` when it is
    #: not a wildcard (a node behind NAT must set it).
    advertise: str | None = None
    #: The name the node's web site answers for (TLS certificate, SNI, Host).
    server_name: str = "localhost"
    #: A directory of static files served as the cover site; absent means the
    #: built-in stock-web-server pages. Relative to the config file's directory.
    cover_dir: Path | None = None
    #: Seconds a connection may take from TCP accept to an open HTX link.
    handshake_timeout: float = 15.0


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


#: Destinations every exit refuses unless ``exit.allow_private`` is set, checked
#: before the operator's own rules. IPv4-mapped IPv6 addresses are checked as IPv4.
PRIVATE_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    _net(n)
    for n in (
        "0.0.0.0/8",  # "this network", includes the unspecified address (RFC 1122)
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::ffff:0:0/96",  # IPv4-mapped (normally unwrapped before matching)
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitSection:
    """``[exit]``: where this node's exit streams may go (used with the exit role).

    The effective policy is ``PRIVATE_NETWORKS`` refused first (unless
    ``allow_private``), then ``policy`` in order; the first matching rule wins and
    no match means refuse. The resolver must apply ``allows`` to every address a
    hostname resolves to, so a name pointing at 127.0.0.1 is refused too.
    """

    #: Rules "accept|reject NETWORK:PORTS". NETWORK is "*" (every IPv4 and IPv6
    #: address), an address or a CIDR network ("[v6]" brackets optional); PORTS is
    #: "*", "N" or "N-M". Default: accept everything not private.
    policy: tuple[PolicyRule, ...] = field(
        default_factory=lambda: parse_policy_rule("accept *:*", "exit.policy[0]")
    )
    #: Allow the private, loopback, link-local, CGNAT and multicast ranges (test networks only).
    allow_private: bool = False
    #: The local address exit streams connect from (an IP literal); absent: the system's choice.
    bind_address: str | None = None

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        """The effective rule list, as published in the descriptor."""
        private: tuple[PolicyRule, ...] = ()
        if not self.allow_private:
            private = tuple(
                PolicyRule(action=Action.REJECT, network=n, port_min=1, port_max=65535)
                for n in PRIVATE_NETWORKS
            )
        return private + self.policy

    def allows(self, ip: IPAddress | str, port: int) -> bool:
        """Whether an exit stream to ``ip:port`` is allowed (first match wins)."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not 1 <= port <= 65535:
            return False
        for rule in self.rules:
            if rule.matches(addr, port):
                return rule.action is Action.ACCEPT
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorityEntry:
    """One directory authority, as a dialer and a verifier need it."""

    nickname: str
    address: str  # IP literal
    port: int  # its HTX TCP port
    id_ed25519: bytes
    id_mldsa65: bytes
    link_x25519: bytes
    kem_mlkem768: bytes
    ticket_x25519: bytes
    ticket_key_id: int
    server_name: str = "localhost"

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity(ed25519=self.id_ed25519, mldsa65=self.id_mldsa65)

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    def peer(self) -> PeerInfo:
        """What ``dial_tcp`` needs to reach this authority."""
        return PeerInfo(
            host=self.address,
            port=self.port,
            link_public=self.link_x25519,
            mlkem_public=self.kem_mlkem768,
            ticket_public=self.ticket_x25519,
            ticket_key_id=self.ticket_key_id,
            server_name=self.server_name,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorySection:
    """``[directory]``: the authorities this node trusts and the epoch length."""

    #: The authorities, inline (``[[directory.authorities]]``) and/or read from
    #: ``authorities_file`` (a TOML file of ``[[authorities]]`` tables).
    authorities: tuple[AuthorityEntry, ...] = ()
    #: Where the authorities came from, if a file (relative to the config file).
    authorities_file: Path | None = None
    #: Epoch length in seconds: 3600 in production, a few seconds in tests (>= 1).
    epoch_seconds: int = 3600
    #: A private test network (like Tor's TestingTorNetwork): flags need no uptime
    #: history, any bandwidth is Fast and Guard, and loopback HTX peers are not
    #: rate-limited. Never set it on a public network.
    testing: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSection:
    """``[limits]``: memory bounds. Past a limit the newest unit or peer is refused."""

    #: HTX links open at once, both directions (one per peer). Each costs a socket
    #: and up to about 1 MiB of buffers, so 1,024 bounds link memory near 1 GiB.
    max_links: int = 1024
    #: Circuits one link may carry. A busy relay pair shares thousands; this stops
    #: one peer from filling the circuit table.
    max_circuits_per_link: int = 4096
    #: Cells queued for one circuit before it is torn down: 1,024 cells of 2,048
    #: bytes is 2 MiB, well above a healthy congestion window's backlog.
    max_cells_queued_per_circuit: int = 1024
    #: Streams one circuit may hold open at once.
    max_streams_per_circuit: int = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSection:
    """``[metrics]``: the optional Prometheus endpoint (``/metrics``)."""

    #: Off by default: metrics describe traffic and should be opted into.
    enabled: bool = False
    #: Address to bind; a non-loopback address needs ``allow_remote``.
    host: str = "127.0.0.1"
    #: TCP port; 0 lets the system pick one (tests).
    port: int = 9420
    #: Permit a non-loopback ``host`` (the operator then protects the port).
    allow_remote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """The whole configuration. ``NodeConfig()`` is the documented default."""

    node: NodeSection = field(default_factory=NodeSection)
    htx: HtxSection = field(default_factory=HtxSection)
    exit: ExitSection = field(default_factory=ExitSection)
    directory: DirectorySection = field(default_factory=DirectorySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)


# --- the reader -------------------------------------------------------------------------


class _Table:
    """A TOML table being consumed: each key is taken once; leftovers are errors."""

    def __init__(self, path: str, value: object) -> None:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "must be a table")
        self.path = path
        self.items: dict[str, object] = dict(value)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str) -> object | None:
        return self.items.pop(name, None)

    def done(self) -> None:
        for name, value in self.items.items():
            raise ConfigError(self.key(name), value, "unknown key")

    def get(self, name: str, check: Callable[[str, object], T], default: T) -> T:
        value = self.take(name)
        return default if value is None else check(self.key(name), value)


def _typed(kind: type[T], label: str) -> Callable[[str, object], T]:
    def check(key: str, value: object) -> T:
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(key, value, f"must be {label}")
        if not isinstance(value, kind):
            raise ConfigError(key, value, f"must be {label}")
        return value

    return check


_str = _typed(str, "a string")
_bool = _typed(bool, "true or false")


def _int_range(lo: int, hi: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        n = _typed(int, "an integer")(key, value)
        if not lo <= n <= hi:
            raise ConfigError(key, value, f"must be {lo}..{hi}")
        return n

    return check


def _positive_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, value, "must be a number")
    if not 0 < value <= 3600:  # NaN fails this too
        raise ConfigError(key, value, "must be more than 0 and at most 3600 seconds")
    return float(value)


def _ip_literal(key: str, value: object) -> str:
    text = _str(key, value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(key, value, "must be an IPv4 or IPv6 address literal") from None


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        text = _str(key, value)
        if text not in options:
            raise ConfigError(key, value, f"must be one of {', '.join(options)}")
        return text

    return check


def _path(base: Path) -> Callable[[str, object], Path]:
    def check(key: str, value: object) -> Path:
        text = _str(key, value)
        if not text or "\x00" in text:
            raise ConfigError(key, value, "must be a non-empty path")
        try:
            return base / Path(text).expanduser()
        except RuntimeError:  # "~user" for an unknown user
            raise ConfigError(key, value, "names an unknown home directory") from None

    return check


def _hex(length: int) -> Callable[[str, object], bytes]:
    def check(key: str, value: object) -> bytes:
        text = _str(key, value)
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ConfigError(key, value, "must be hexadecimal") from None
        if len(raw) != length:
            raise ConfigError(key, value, f"must be {length} bytes ({2 * length} hex digits)")
        return raw

    return check


def _array(key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(key, value, "must be an array")
    return value


def _ports(key: str, text: str, whole: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    lo_text, dash, hi_text = text.partition("-")
    try:  # int() refuses what isdigit() admits beyond ASCII ("²") and huge strings
        lo = int(lo_text) if lo_text.isdigit() else -1
        hi = (int(hi_text) if hi_text.isdigit() else -1) if dash else lo
    except ValueError:
        lo = hi = -1
    if not 1 <= lo <= hi <= 65535:
        raise ConfigError(key, whole, "ports must be '*', 'N' or 'N-M' with 1 <= N <= M <= 65535")
    return lo, hi


def parse_policy_rule(text: str, key: str = "rule") -> tuple[PolicyRule, ...]:
    """Parse one "accept|reject NETWORK:PORTS" rule; "*" gives an IPv4 and an IPv6 rule.

    Raises ``ConfigError`` naming ``key``.
    """
    words = text.split()
    if len(words) != 2 or words[0] not in ("accept", "reject"):
        raise ConfigError(key, text, "must be 'accept NETWORK:PORTS' or 'reject NETWORK:PORTS'")
    action = Action(words[0])
    target, colon, port_text = words[1].rpartition(":")
    if not colon or not target:
        raise ConfigError(key, text, "the network needs ':PORTS' ('*' for every port)")
    lo, hi = _ports(key, port_text, text)
    if target == "*":
        networks: list[IPNetwork] = [_net("0.0.0.0/0"), _net("::/0")]
    else:
        if target.startswith("[") and target.endswith("]"):
            target = target[1:-1]
        try:
            networks = [ipaddress.ip_network(target, strict=True)]
        except ValueError as exc:
            raise ConfigError(key, text, f"bad network: {exc}") from None
    return tuple(PolicyRule(action=action, network=n, port_min=lo, port_max=hi) for n in networks)


def _node(t: _Table, base: Path) -> NodeSection:
    d = NodeSection()
    nickname = t.get("nickname", _str, d.nickname)
    if not NICKNAME_RE.fullmatch(nickname):
        raise ConfigError(t.key("nickname"), nickname, "must be 1..32 of A-Z a-z 0-9 _ -")
    roles = d.roles
    raw_roles = t.take("roles")
    if raw_roles is not None:
        items = _array(t.key("roles"), raw_roles)
        if not items:
            raise ConfigError(t.key("roles"), raw_roles, "needs at least one role")
        found: list[Role] = []
        for i, item in enumerate(items):
            k = f"{t.key('roles')}[{i}]"
            name = _choice(tuple(r.value for r in Role))(k, item)
            if Role(name) in found:
                raise ConfigError(k, item, "is listed twice")
            found.append(Role(name))
        roles = tuple(found)
    return NodeSection(
        nickname=nickname,
        data_dir=t.get("data_dir", _path(base), base / d.data_dir),
        roles=roles,
        log_level=t.get("log_level", _choice(LOG_LEVELS), d.log_level),
        log_format=LogFormat(
            t.get("log_format", _choice(tuple(f.value for f in LogFormat)), d.log_format.value)
        ),
        log_addresses=t.get("log_addresses", _bool, d.log_addresses),
    )


_PORT = _int_range(0, 65535)


def _server_name(key: str, value: object) -> str:
    """A DNS host name as a descriptor carries it (spec/directory.md §5), lower-cased:
    a name the descriptor would refuse could never be published."""
    text = _str(key, value)
    # ASCII first: lower() maps a few non-ASCII letters to ASCII ones (K, the Kelvin sign).
    name = text.lower() if text.isascii() else text
    why = server_name_problem(name)
    if why is not None:
        raise ConfigError(key, value, f"must be a DNS name: {why}")
    return name


def _htx(t: _Table, base: Path) -> HtxSection:
    d = HtxSection()
    host = t.get("host", _ip_literal, d.host)
    advertise = t.get("advertise", _ip_literal, None)
    if advertise is not None and ipaddress.ip_address(advertise).is_unspecified:
        raise ConfigError(t.key("advertise"), advertise, "must be a reachable address")
    server_name = t.get("server_name", _server_name, d.server_name)
    return HtxSection(
        host=host,
        tcp_port=t.get("tcp_port", _PORT, d.tcp_port),
        quic_port=t.get("quic_port", _PORT, None),
        advertise=advertise,
        server_name=server_name,
        cover_dir=t.get("cover_dir", _path(base), None),
        handshake_timeout=t.get("handshake_timeout", _positive_float, d.handshake_timeout),
    )


def _exit(t: _Table) -> ExitSection:
    d = ExitSection()
    allow_private = t.get("allow_private", _bool, d.allow_private)
    bind = t.get("bind_address", _ip_literal, None)
    raw = t.take("policy")
    if raw is None:
        return ExitSection(allow_private=allow_private, bind_address=bind)
    rules: list[PolicyRule] = []
    for i, item in enumerate(_array(t.key("policy"), raw)):
        k = f"{t.key('policy')}[{i}]"
        rules += parse_policy_rule(_str(k, item), k)
    room = MAX_POLICY_RULES - len(PRIVATE_NETWORKS)
    if len(rules) > room:
        raise ConfigError(t.key("policy"), raw, f"at most {room} rules ('*' counts twice)")
    return ExitSection(policy=tuple(rules), allow_private=allow_private, bind_address=bind)


def _authority(t: _Table) -> AuthorityEntry:
    for name in AUTHORITY_REQUIRED:
        if name not in t.items:
            raise ConfigError(t.key(name), None, "is required")
    entry = AuthorityEntry(
        nickname=t.get("nickname", _str, "authority"),
        address=t.get("address", _ip_literal, ""),
        port=t.get("port", _int_range(1, 65535), 0),
        id_ed25519=t.get("id_ed25519", _hex(ED25519_PUBLIC_LEN), b""),
        id_mldsa65=t.get("id_mldsa65", _hex(MLDSA65_PUBLIC_LEN), b""),
        link_x25519=t.get("link_x25519", _hex(X25519_PUBLIC_LEN), b""),
        kem_mlkem768=t.get("kem_mlkem768", _hex(MLKEM768_PUBLIC_LEN), b""),
        ticket_x25519=t.get("ticket_x25519", _hex(X25519_PUBLIC_LEN), b""),
        ticket_key_id=t.get("ticket_key_id", _int_range(0, 255), -1),
        server_name=t.get("server_name", _server_name, "localhost"),
    )
    t.done()
    return entry


AUTHORITY_REQUIRED: Final = (
    "address",
    "port",
    "id_ed25519",
    "id_mldsa65",
    "link_x25519",
    "kem_mlkem768",
    "ticket_x25519",
    "ticket_key_id",
)


def _authorities(key: str, raw: object) -> Iterator[AuthorityEntry]:
    for i, item in enumerate(_array(key, raw)):
        yield _authority(_Table(f"{key}[{i}]", item))


def _directory(t: _Table, base: Path) -> DirectorySection:
    d = DirectorySection()
    inline = t.take("authorities")
    entries = [] if inline is None else list(_authorities(t.key("authorities"), inline))
    path = t.get("authorities_file", _path(base), None)
    if path is not None:
        key = t.key("authorities_file")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(key, str(path), f"cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(key, str(path), f"is not valid TOML: {exc}") from None
        ft = _Table("", doc)
        listed = ft.take("authorities")
        if listed is not None:
            entries += _authorities(f"{path.name}:authorities", listed)
        ft.done()
    ids = [e.node_id for e in entries]
    if len(set(ids)) != len(ids):
        raise ConfigError(t.key("authorities"), None, "an authority is listed twice")
    return DirectorySection(
        authorities=tuple(entries),
        authorities_file=path,
        epoch_seconds=t.get("epoch_seconds", _int_range(1, 7 * 86400), d.epoch_seconds),
        testing=t.get("testing", _bool, d.testing),
    )


def _limits(t: _Table) -> LimitsSection:
    d = LimitsSection()
    return LimitsSection(
        max_links=t.get("max_links", _int_range(1, 1_000_000), d.max_links),
        max_circuits_per_link=t.get(
            "max_circuits_per_link", _int_range(1, 1_000_000), d.max_circuits_per_link
        ),
        max_cells_queued_per_circuit=t.get(
            "max_cells_queued_per_circuit",
            _int_range(16, 1_000_000),
            d.max_cells_queued_per_circuit,
        ),
        max_streams_per_circuit=t.get(
            "max_streams_per_circuit", _int_range(1, 65535), d.max_streams_per_circuit
        ),
    )


def _metrics(t: _Table) -> MetricsSection:
    d = MetricsSection()
    allow_remote = t.get("allow_remote", _bool, d.allow_remote)
    host = t.get("host", _ip_literal, d.host)
    if not allow_remote and not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(
            t.key("host"), host, "is not a loopback address (set metrics.allow_remote = true)"
        )
    return MetricsSection(
        enabled=t.get("enabled", _bool, d.enabled),
        host=host,
        port=t.get("port", _PORT, d.port),
        allow_remote=allow_remote,
    )


_SECTIONS: Final = ("node", "htx", "exit", "directory", "limits", "metrics")


def parse_config(text: str, base_dir: Path | str = ".") -> NodeConfig:
    """Parse TOML ``text``; relative paths are taken from ``base_dir``.

    Raises ``ConfigError`` and nothing else, whatever the input.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, None, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(None, None, "not valid TOML: nested too deeply") from None
    base = Path(base_dir)
    top = _Table("", doc)
    tables: dict[str, _Table] = {}
    for name in _SECTIONS:
        raw = top.take(name)
        tables[name] = _Table(name, {} if raw is None else raw)
    top.done()
    config = NodeConfig(
        node=_node(tables["node"], base),
        htx=_htx(tables["htx"], base),
        exit=_exit(tables["exit"]),
        directory=_directory(tables["directory"], base),
        limits=_limits(tables["limits"]),
        metrics=_metrics(tables["metrics"]),
    )
    for table in tables.values():
        table.done()
    return config


def load_config(path: Path | str) -> NodeConfig:
    """Read and parse the file at ``path``. Raises ``ConfigError`` (unreadable too)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(None, str(p), f"cannot read the config file: {exc}") from None
    return parse_config(text, p.resolve().parent)


def defaults(base_dir: Path | str = ".") -> NodeConfig:
    """The configuration an empty file gives (paths resolved against ``base_dir``)."""
    return parse_config("", base_dir)


# --- the client proxy's config (``qnet proxy --config``) ----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySection:
    """``[proxy]``: where the SOCKS proxy listens and where it keeps state."""

    #: The SOCKS listener: an IP literal; keep it on loopback unless you mean it.
    host: str = "127.0.0.1"
    port: int = 1080
    #: Guards and other client state (relative to the config file).
    data_dir: Path = Path("qnet-client")
    #: Hops per circuit (2..5).
    hops: int = 3
    #: Streams to different destination ports never share a circuit (Tor's IsolateDestPort).
    isolate_dest_port: bool = False
    #: Exit-side refusals and build failures are retried this many times on new circuits.
    retries: int = 2
    #: Every stream in mixed mode (through the mixnet); otherwise only SOCKS usernames
    #: starting with "mix" are.
    mixed: bool = False
    log_level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    proxy: ProxySection = field(default_factory=ProxySection)
    directory: DirectorySection = field(default_factory=DirectorySection)


def _proxy(t: _Table, base: Path) -> ProxySection:
    d = ProxySection()
    return ProxySection(
        host=t.get("host", _ip_literal, d.host),
        port=t.get("port", _int_range(0, 65535), d.port),
        data_dir=t.get("data_dir", _path(base), base / d.data_dir),
        hops=t.get("hops", _int_range(2, 5), d.hops),
        isolate_dest_port=t.get("isolate_dest_port", _bool, d.isolate_dest_port),
        retries=t.get("retries", _int_range(0, 10), d.retries),
        mixed=t.get("mixed", _bool, d.mixed),
        log_level=t.get("log_level", _choice(("debug", "info", "warning", "error")), d.log_level),
    )


def parse_client_config(text: str, base_dir: Path | str = ".") -> ClientConfig:
    """Parse a client proxy config (``[proxy]`` and ``[directory]``). Raises ``ConfigError``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, None, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(None, None, "not valid TOML: nested too deeply") from None
    base = Path(base_dir)
    top = _Table("", doc)
    proxy = _Table("proxy", top.take("proxy") or {})
    directory = _Table("directory", top.take("directory") or {})
    top.done()
    config = ClientConfig(proxy=_proxy(proxy, base), directory=_directory(directory, base))
    proxy.done()
    directory.done()
    return config


def load_client_config(path: Path | str) -> ClientConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(None, str(p), f"cannot be read: {exc}") from None
    return parse_client_config(text, p.parent)
