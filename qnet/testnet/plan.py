"""Lay out a test network on disk: keys, node configs, the shared authority list.

Everything goes under one directory::

    DIR/authorities.toml        the [[authorities]] list every node and client uses
    DIR/<name>/node.toml        each node's config (authorities auth1.., relays, exits)
    DIR/<name>/data/            each node's data directory (keys, state)
    DIR/client/client.toml      the SOCKS proxy's config
    DIR/web/                    the local web server's files
    DIR/testnet.json            what ``start`` launched (pids, ports), for status/stop

Ports are consecutive from ``base_port``: authorities first, then relays, exits,
the web server; the SOCKS proxy listens on ``socks_port``.

Each node gets its own plausible TLS server name (``server_name_for``, e.g.
``static.amber-harbor.net``): its certificate and cover site are made for it,
its descriptor publishes it, and every dialer claims it as SNI and HTTP
authority, as on a real network (spec/directory.md §5). Certificates are
self-signed and never checked against the name.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qnet.node.keys import KeyStore

HOST = "127.0.0.1"

_PREFIXES = ("static", "cdn", "www", "assets", "media", "img")
_WORDS = (
    "amber", "birch", "cedar", "coral", "delta", "ember", "fable", "grove",
    "harbor", "indigo", "juniper", "kestrel", "lumen", "maple", "nimbus", "orchid",
    "pebble", "quartz", "raven", "sable", "tidal", "umber", "velvet", "willow",
    "yonder", "zephyr", "atlas", "brook", "cinder", "dune", "fern", "glacier",
)  # fmt: skip
_TLDS = ("net", "com", "org", "io")


def server_name_for(name: str, taken: frozenset[str] | set[str] = frozenset()) -> str:
    """A plausible host name for node ``name`` (``static.amber-harbor.net`` style),
    the same on every run and none of ``taken``."""
    for attempt in range(1000):
        h = hashlib.sha256(f"qnet-testnet-name {name} {attempt}".encode()).digest()
        first, second = _WORDS[h[1] % len(_WORDS)], _WORDS[h[2] % len(_WORDS)]
        if first == second:
            continue
        host = f"{_PREFIXES[h[0] % len(_PREFIXES)]}.{first}-{second}.{_TLDS[h[3] % len(_TLDS)]}"
        if host not in taken:
            return host
    raise RuntimeError("no free server name")  # pragma: no cover - 6 * 32 * 31 * 4 names


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """How big the network is and where it listens."""

    directory: Path
    authorities: int = 3
    relays: int = 3
    exits: int = 2
    mixes: int = 0
    base_port: int = 7100
    socks_port: int = 1080
    epoch_seconds: int = 10

    def __post_init__(self) -> None:
        if self.authorities < 1 or self.authorities % 2 == 0:
            raise ValueError("--authorities must be a positive odd number")
        if self.relays < 1 or self.exits < 1:
            raise ValueError("a network needs at least one relay and one exit")
        if self.relays + self.exits < 3:
            raise ValueError("a 3-hop circuit needs at least 3 relays and exits together")


@dataclass(slots=True, kw_only=True)
class NodePlan:
    name: str
    roles: list[str]
    port: int
    config: str
    data_dir: str
    #: The node's TLS server name (``[htx] server_name``, published in its descriptor).
    server_name: str = ""


@dataclass(slots=True, kw_only=True)
class NetworkPlan:
    directory: str
    nodes: list[NodePlan] = field(default_factory=list)
    web_port: int = 0
    socks_port: int = 0
    epoch_seconds: int = 10

    def save(self) -> None:
        path = Path(self.directory) / "plan.json"
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: Path) -> NetworkPlan:
        raw = json.loads((directory / "plan.json").read_text())
        nodes = [NodePlan(**n) for n in raw.pop("nodes")]
        return cls(nodes=nodes, **raw)


def _authority_entry(store: KeyStore, nickname: str, port: int, server_name: str) -> str:
    peer = store.peer_info(HOST, port, server_name)
    ident = store.identity.public
    return "\n".join(
        [
            "[[authorities]]",
            f'nickname = "{nickname}"',
            f'address = "{HOST}"',
            f"port = {port}",
            f'server_name = "{server_name}"',
            f'id_ed25519 = "{ident.ed25519.hex()}"',
            f'id_mldsa65 = "{ident.mldsa65.hex()}"',
            f'link_x25519 = "{peer.link_public.hex()}"',
            f'kem_mlkem768 = "{peer.mlkem_public.hex()}"',
            f'ticket_x25519 = "{peer.ticket_public.hex()}"',
            f"ticket_key_id = {peer.ticket_key_id}",
            "",
        ]
    )


def _node_config(
    name: str, roles: list[str], port: int, layout: Layout, index: int, server_name: str
) -> str:
    # Each exit connects from its own loopback address, so the web server can tell
    # which exit a stream left from (tests of stream isolation use this).
    bind = f'bind_address = "127.0.0.{10 + index}"\n' if "exit" in roles else ""
    return f"""# {name}: generated by `qnet testnet` for a loopback test network.
[node]
nickname = "{name}"
data_dir = "data"
roles = {json.dumps(roles)}
log_level = "info"

[htx]
host = "{HOST}"
tcp_port = {port}
server_name = "{server_name}"

[exit]
# Port 25 is refused by policy (tests check the SOCKS reply for that); the rest is open.
policy = ["reject *:25", "accept *:*"]
# A test network's exits reach the local web server on 127.0.0.1.
allow_private = true
{bind}
[directory]
authorities_file = "../authorities.toml"
epoch_seconds = {layout.epoch_seconds}
testing = true
"""


def _client_config(layout: Layout) -> str:
    return f"""# The test network's SOCKS proxy (generated by `qnet testnet`).
[proxy]
host = "{HOST}"
port = {layout.socks_port}
data_dir = "data"

[directory]
authorities_file = "../authorities.toml"
epoch_seconds = {layout.epoch_seconds}
testing = true
"""


def lay_out(layout: Layout) -> NetworkPlan:
    """Create keys and configs for ``layout`` (keys that exist are kept)."""
    root = layout.directory.resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan = NetworkPlan(
        directory=str(root), socks_port=layout.socks_port, epoch_seconds=layout.epoch_seconds
    )
    port = layout.base_port
    entries: list[str] = ["# The test network's directory authorities (generated).", ""]
    groups = [
        ("auth", layout.authorities, ["authority"]),
        ("relay", layout.relays, ["relay"]),
        # With mixnodes, exits also run the mix role: that is where mixed-mode streams end.
        ("exit", layout.exits, ["relay", "exit", "mix"] if layout.mixes else ["relay", "exit"]),
        ("mix", layout.mixes, ["mix"]),
    ]
    now = time.time()
    names: set[str] = set()
    for prefix, count, roles in groups:
        for i in range(1, count + 1):
            name = f"{prefix}{i}"
            server_name = server_name_for(name, names)
            names.add(server_name)
            home = root / name
            home.mkdir(exist_ok=True, mode=0o700)
            # A certificate that exists is kept (the name is not checked by dialers).
            store = KeyStore.open(home / "data", server_name=server_name, now=now)
            if prefix == "auth":
                entries.append(_authority_entry(store, name, port, server_name))
            (home / "node.toml").write_text(_node_config(name, roles, port, layout, i, server_name))
            plan.nodes.append(
                NodePlan(
                    name=name,
                    roles=roles,
                    port=port,
                    config=str(home / "node.toml"),
                    data_dir=str(home / "data"),
                    server_name=server_name,
                )
            )
            port += 1
    (root / "authorities.toml").write_text("\n".join(entries))
    plan.web_port = port
    client = root / "client"
    client.mkdir(exist_ok=True, mode=0o700)
    (client / "client.toml").write_text(_client_config(layout))
    (root / "web").mkdir(exist_ok=True)
    plan.save()
    return plan
