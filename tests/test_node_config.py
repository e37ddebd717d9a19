"""The node config: defaults, the example file, every error naming its key, exit policy."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.dir.descriptor import Action, Role
from qnet.dir.identity import Identity
from qnet.node.config import (
    PRIVATE_NETWORKS,
    ConfigError,
    LogFormat,
    NodeConfig,
    defaults,
    load_config,
    parse_config,
    parse_policy_rule,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "node.example.toml"


def test_example_file_parses_to_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config == defaults(EXAMPLE.parent)
    assert config.node.data_dir == EXAMPLE.parent / "qnet-data"


def test_defaults_are_documented_values() -> None:
    c = defaults("/srv/qnet")
    assert c.node.roles == (Role.RELAY,)
    assert c.node.log_format is LogFormat.JSON and not c.node.log_addresses
    assert c.htx.quic_port is None and c.htx.cover_dir is None
    assert not c.metrics.enabled and c.metrics.host == "127.0.0.1"
    assert not c.exit.allow_private
    assert c.directory.authorities == () and c.directory.epoch_seconds == 3600
    # Everything but the resolved paths equals the bare dataclass defaults.
    bare = NodeConfig()
    assert c.limits == bare.limits and c.metrics == bare.metrics and c.exit == bare.exit


def test_a_full_config() -> None:
    text = """
[node]
nickname = "relay-7"
data_dir = "/var/lib/qnet"
roles = ["relay", "exit", "mix"]
log_level = "debug"
log_format = "text"
log_addresses = true
[htx]
host = "::"
tcp_port = 8443
quic_port = 8443
advertise = "2001:db8::7"
server_name = "www.example.org"
cover_dir = "site"
[exit]
policy = ["reject 203.0.113.0/24:*", "accept *:80", "accept [2001:db8::/32]:443-444"]
[directory]
epoch_seconds = 5
[limits]
max_links = 10
[metrics]
enabled = true
host = "::1"
port = 0
"""
    c = parse_config(text, "/etc/qnet")
    assert c.node.roles == (Role.RELAY, Role.EXIT, Role.MIX)
    assert c.node.data_dir == Path("/var/lib/qnet")
    assert c.htx.cover_dir == Path("/etc/qnet/site")
    assert c.htx.quic_port == 8443 and c.htx.advertise == "2001:db8::7"
    assert c.limits.max_links == 10 and c.limits.max_streams_per_circuit == 512
    assert len(c.exit.policy) == 4  # "*" is one IPv4 and one IPv6 rule
    assert c.exit.allows("198.51.100.1", 80) and not c.exit.allows("198.51.100.1", 22)
    assert not c.exit.allows("203.0.113.5", 80)
    assert c.exit.allows("2001:db8::1", 444) and not c.exit.allows("2001:db8::1", 445)


BAD = [
    ("nope = 1", "nope", "unknown key"),
    ("[node]\nnick = 'x'", "node.nick", "unknown key"),
    ("node = 3", "node", "must be a table"),
    ("[node]\nnickname = 'has space'", "node.nickname", "A-Z"),
    ("[node]\nnickname = 5", "node.nickname", "string"),
    ("[node]\nroles = []", "node.roles", "at least one"),
    ("[node]\nroles = 'relay'", "node.roles", "array"),
    ("[node]\nroles = ['relay', 'bridge']", "node.roles[1]", "one of"),
    ("[node]\nroles = ['exit', 'exit']", "node.roles[1]", "twice"),
    ("[node]\nlog_level = 'loud'", "node.log_level", "one of"),
    ("[node]\nlog_format = 'xml'", "node.log_format", "one of"),
    ("[node]\nlog_addresses = 1", "node.log_addresses", "true or false"),
    ("[node]\ndata_dir = ''", "node.data_dir", "non-empty"),
    ("[htx]\nhost = 'example.com'", "htx.host", "address literal"),
    ("[htx]\ntcp_port = 65536", "htx.tcp_port", "0..65535"),
    ("[htx]\ntcp_port = true", "htx.tcp_port", "integer"),
    ("[htx]\nquic_port = '443'", "htx.quic_port", "integer"),
    ("[htx]\nadvertise = '0.0.0.0'", "htx.advertise", "reachable"),
    ("[htx]\nserver_name = 'bad name'", "htx.server_name", "DNS name"),
    # The descriptor's rule (spec/directory.md §5): a config that loads can be published.
    ("[htx]\nserver_name = '127.0.0.1'", "htx.server_name", "not an IP address"),
    ("[htx]\nserver_name = 'static..example.net'", "htx.server_name", "DNS name"),
    ("[htx]\nserver_name = 'example.net.'", "htx.server_name", "DNS name"),
    ("[htx]\nserver_name = 'a_b.example.net'", "htx.server_name", "DNS name"),
    ("[htx]\nserver_name = '\u212a.example.net'", "htx.server_name", "DNS name"),
    ("[htx]\nhandshake_timeout = 0", "htx.handshake_timeout", "more than 0"),
    ("[htx]\nhandshake_timeout = nan", "htx.handshake_timeout", "more than 0"),
    ("[exit]\npolicy = 'accept *:*'", "exit.policy", "array"),
    ("[exit]\npolicy = ['accept *:*', 'allow *:*']", "exit.policy[1]", "accept NETWORK"),
    ("[exit]\npolicy = ['accept *:*', 'reject 1.2.3.4', 'x']", "exit.policy[1]", ":PORTS"),
    ("[exit]\npolicy = ['accept *:*', 'x', 'accept *:0']", "exit.policy[1]", "accept"),
    (
        "[exit]\npolicy = ['accept 1.2.3.4:*', 'accept *:1', 'accept *:9-2']",
        "exit.policy[2]",
        "ports",
    ),
    ("[exit]\npolicy = ['accept 10.0.0.1/8:*']", "exit.policy[0]", "host bits"),
    ("[exit]\npolicy = ['accept 300.0.0.0/8:*']", "exit.policy[0]", "bad network"),
    ("[exit]\npolicy = ['accept *:*', 7]", "exit.policy[1]", "string"),
    (
        "[exit]\npolicy = " + repr([f"accept *:{p}" for p in range(1, 60)]),
        "exit.policy",
        "at most",
    ),
    ("[exit]\nallow_private = 'yes'", "exit.allow_private", "true or false"),
    ("[directory]\nepoch_seconds = 0", "directory.epoch_seconds", "1.."),
    ("[directory]\nauthorities = 3", "directory.authorities", "array"),
    ("[directory]\nauthorities = [3]", "directory.authorities[0]", "table"),
    ("[[directory.authorities]]\naddress = '1.2.3.4'", "directory.authorities[0].port", "required"),
    ("[directory]\nauthorities_file = 'does-not-exist.toml'", "directory.authorities_file", "read"),
    ("[limits]\nmax_links = 0", "limits.max_links", "1.."),
    ("[limits]\nmax_cells_queued_per_circuit = 2", "limits.max_cells_queued_per_circuit", "16.."),
    ("[limits]\nmax_streams = 1", "limits.max_streams", "unknown key"),
    ("[metrics]\nhost = '0.0.0.0'", "metrics.host", "allow_remote"),
    ("[metrics]\nhost = '192.0.2.1'\nenabled = true", "metrics.host", "loopback"),
    ("[metrics]\nport = -1", "metrics.port", "0..65535"),
    ("[metrics]\nenabled = 'false'", "metrics.enabled", "true or false"),
]


@pytest.mark.parametrize(("text", "key", "why"), BAD)
def test_every_error_names_its_key(text: str, key: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path)
    assert info.value.key == key
    assert why in info.value.reason
    assert str(info.value).startswith(key)


def test_not_toml_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        parse_config("[node\n")
    assert info.value.key is None
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_remote_metrics_needs_the_switch() -> None:
    c = parse_config("[metrics]\nhost = '0.0.0.0'\nallow_remote = true")
    assert c.metrics.host == "0.0.0.0"


# --- authorities ---


def _authority_toml(name: str, table: str) -> tuple[str, Identity]:
    ident = Identity.generate()
    text = f"""
[[{table}]]
nickname = "{name}"
address = "127.0.0.1"
port = 7001
id_ed25519 = "{ident.public.ed25519.hex()}"
id_mldsa65 = "{ident.public.mldsa65.hex()}"
link_x25519 = "{"11" * 32}"
kem_mlkem768 = "{"22" * 1184}"
ticket_x25519 = "{"33" * 32}"
ticket_key_id = 0
"""
    return text, ident


def test_authorities_inline_and_from_a_file(tmp_path: Path) -> None:
    inline, a = _authority_toml("a1", "directory.authorities")
    listed, b = _authority_toml("a2", "authorities")
    (tmp_path / "auths.toml").write_text(listed)
    c = parse_config("[directory]\nauthorities_file = 'auths.toml'\n" + inline, tmp_path)
    assert [e.nickname for e in c.directory.authorities] == ["a1", "a2"]
    assert c.directory.authorities[0].node_id == a.node_id
    assert c.directory.authorities[1].node_id == b.node_id
    peer = c.directory.authorities[1].peer()
    assert peer.port == 7001 and peer.ticket_key_id == 0 and peer.link_public == bytes([0x11]) * 32


def test_authority_errors_name_the_field(tmp_path: Path) -> None:
    text, _ = _authority_toml("a1", "directory.authorities")
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace('"11', '"zz'), tmp_path)
    assert info.value.key == "directory.authorities[0].link_x25519"
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace("ticket_key_id = 0", "ticket_key_id = 256"), tmp_path)
    assert info.value.key == "directory.authorities[0].ticket_key_id"
    with pytest.raises(ConfigError) as info:
        parse_config(text + "colour = 'red'\n", tmp_path)
    assert info.value.key == "directory.authorities[0].colour"
    with pytest.raises(ConfigError, match="twice"):
        parse_config(text + text.replace("port = 7001", "port = 7002"), tmp_path)
    (tmp_path / "f.toml").write_text(text.replace("directory.authorities", "authorities") + "x=1")
    with pytest.raises(ConfigError) as info:
        parse_config("[directory]\nauthorities_file = 'f.toml'", tmp_path)
    assert info.value.key == "f.toml:authorities[0].x"


# --- exit policy ---

REFUSED = [
    "0.0.0.0",
    "10.1.2.3",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "224.0.0.251",
    "239.255.255.250",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "febf::1",
    "ff02::1",
    "ff0e::1",
]
ALLOWED = ["93.184.216.34", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1111"]


@pytest.mark.parametrize("ip", REFUSED)
def test_default_policy_refuses_private_ranges(ip: str) -> None:
    exit_policy = defaults().exit
    for port in (1, 80, 443, 65535):
        assert not exit_policy.allows(ip, port), (ip, port)


@pytest.mark.parametrize("ip", ALLOWED)
def test_default_policy_allows_public_addresses(ip: str) -> None:
    assert defaults().exit.allows(ip, 443)
    assert defaults().exit.allows(ipaddress.ip_address(ip), 80)


def test_default_policy_refuses_bad_ports() -> None:
    assert not defaults().exit.allows("8.8.8.8", 0)
    assert not defaults().exit.allows("8.8.8.8", 65536)


def test_allow_private_opens_loopback() -> None:
    c = parse_config("[exit]\nallow_private = true")
    assert c.exit.allows("127.0.0.1", 8080) and c.exit.allows("::1", 8080)
    assert c.exit.allows("10.0.0.1", 22)


def test_private_rules_come_first_and_fit_a_descriptor() -> None:
    c = parse_config("[exit]\npolicy = ['accept 127.0.0.0/8:*', 'accept *:*']")
    assert not c.exit.allows("127.0.0.1", 80)  # the operator's rule cannot reopen it
    rules = c.exit.rules
    assert [r.network for r in rules[: len(PRIVATE_NETWORKS)]] == list(PRIVATE_NETWORKS)
    assert all(r.action is Action.REJECT for r in rules[: len(PRIVATE_NETWORKS)])
    assert len(parse_config("[exit]\nallow_private = true").exit.rules) == 2


def test_policy_rule_forms() -> None:
    (r,) = parse_policy_rule("reject [::1]:80")
    assert r.action is Action.REJECT and r.port_min == r.port_max == 80
    (r,) = parse_policy_rule("accept 192.0.2.0/24:1000-2000")
    assert (r.port_min, r.port_max) == (1000, 2000)
    (r,) = parse_policy_rule("accept fc00::/7:*")
    assert r.network == ipaddress.ip_network("fc00::/7") and r.port_max == 65535


# --- fuzz: only ConfigError escapes ---

_KEYS = [
    "nickname", "data_dir", "roles", "log_level", "log_format", "log_addresses", "host",
    "tcp_port", "quic_port", "advertise", "server_name", "cover_dir", "handshake_timeout",
    "policy", "allow_private", "authorities", "authorities_file", "epoch_seconds", "max_links",
    "max_circuits_per_link", "max_cells_queued_per_circuit", "max_streams_per_circuit",
    "enabled", "port", "allow_remote", "address", "id_ed25519", "ticket_key_id", "x",
]  # fmt: skip
_SECTIONS = ["node", "htx", "exit", "directory", "limits", "metrics", "other",
             "[directory.authorities]"]  # fmt: skip
_SCALARS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["true", "false", "nan", "inf", "-0.0", "1.5", "1979-05-27", "{}", "[]"]),
    st.sampled_from(
        [
            "relay",
            "exit",
            "bogus",
            "127.0.0.1",
            "::",
            "accept *:*",
            "reject fc00::/7:1-2",
            "accept 1.2.3.4:99999",
            "~nobody-here/x",
            "",
            "json",
            "debug",
            "ab" * 16,
        ]
    ).map(lambda s: '"' + s + '"'),  # fmt: skip
    st.text(max_size=12).map(repr),
)
_VALUES = st.one_of(
    _SCALARS, st.lists(_SCALARS, max_size=4).map(lambda v: "[" + ", ".join(v) + "]")
)
_LINE = st.one_of(
    st.sampled_from(_SECTIONS).map(lambda s: f"[{s}]"),
    st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=20),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, max_size=12))
def test_fuzz_only_config_error_escapes(lines: list[str]) -> None:
    try:
        parse_config("\n".join(lines), "/nonexistent-base")
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError:
        pass
