"""Node descriptors: what a node says about itself, signed by both identity keys.

Wire form (spec/directory.md §5, §6): a deterministic-CBOR envelope
``{"body": bytes, "sig_ed25519": bytes, "sig_mldsa65": bytes}`` where ``body``
is the deterministic CBOR of the descriptor map and both signatures cover
``DESCRIPTOR_CONTEXT ‖ body``.

``parse_and_verify(raw, now)`` is the only way in from the network; it returns
a ``Descriptor`` or raises a ``qnet.errors.DirectoryError`` subclass.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from qnet.dir import encoding
from qnet.dir.identity import (
    ED25519_PUBLIC_LEN,
    ED25519_SIG_LEN,
    MLDSA65_PUBLIC_LEN,
    MLDSA65_SIG_LEN,
    NODE_ID_LEN,
    Identity,
    PublicIdentity,
    Signatures,
)
from qnet.errors import MalformedDocument, StaleDocument

#: 2: ``server_name`` added (required). Version 1 bodies are refused (``bad_version``).
DESCRIPTOR_VERSION: Final = 2
DESCRIPTOR_CONTEXT: Final = b"qnet-dir-v1 descriptor\x00"
X25519_PUBLIC_LEN: Final = 32
MLKEM768_PUBLIC_LEN: Final = 1184

MAX_AGE: Final = 24 * 3600  # a node republishes every epoch; a day is generous
MAX_SKEW: Final = 300  # clocks may disagree by this much in the future direction
MAX_ADDRESSES: Final = 8
MAX_POLICY_RULES: Final = 64
MAX_FAMILY: Final = 32
MAX_SOFTWARE_LEN: Final = 64
MAX_SERVER_NAME_LEN: Final = 253
MAX_BANDWIDTH: Final = 2**48 - 1  # bytes per second
MAX_EPOCH: Final = 2**48 - 1

ENVELOPE_LIMITS: Final = encoding.Limits(max_size=16384, max_depth=2, max_items=8, max_string=8192)
BODY_LIMITS: Final = encoding.Limits(max_size=8192, max_depth=3, max_items=1024, max_string=2048)

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Transport(enum.StrEnum):
    TCP = "tcp"
    QUIC = "quic"


class Role(enum.StrEnum):
    RELAY = "relay"
    EXIT = "exit"
    MIX = "mix"
    AUTHORITY = "authority"


class Action(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


def _bad(reason: str, field: str, why: str) -> MalformedDocument:
    return MalformedDocument(reason, f"{field}: {why}")


_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def server_name_problem(name: str) -> str | None:
    """Why ``name`` is not a server name a descriptor may carry (``None``: it is).

    A server name (spec/directory.md §5) is a DNS host name in one spelling:
    1..253 characters, dot-separated labels of 1..63 lower-case letters, digits
    and hyphens, no label starting or ending with a hyphen, no empty label (so
    no leading, doubled or trailing dot), and not an IP literal: the last label
    is not all digits (which also refuses ``127.0.0.1`` and ``10.1``).
    """
    if not 1 <= len(name) <= MAX_SERVER_NAME_LEN:
        return f"must be 1..{MAX_SERVER_NAME_LEN} characters"
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return "must be dot-separated labels of 1..63 of a-z 0-9 - (not at a label's ends)"
    if labels[-1].isdigit():
        return "must be a host name, not an IP address"
    return None


def check_server_name(field: str, value: object) -> str:
    """``value`` if it is a valid server name; ``MalformedDocument`` naming ``field``
    otherwise (``bad_type`` for a non-string, ``bad_value`` for a bad name)."""
    if not isinstance(value, str):
        raise _bad("bad_type", field, "must be str")
    why = server_name_problem(value)
    if why is not None:
        raise _bad("bad_value", field, why)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """One listening endpoint. Raises ``MalformedDocument`` for a bad port."""

    transport: Transport
    ip: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise _bad("bad_value", "addresses.port", "must be 1..65535")

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {"transport": self.transport.value, "ip": self.ip.packed, "port": self.port}


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    """``action`` destinations in ``network`` on ports ``port_min..port_max`` (inclusive)."""

    action: Action
    network: IPNetwork
    port_min: int
    port_max: int

    def __post_init__(self) -> None:
        if not 1 <= self.port_min <= self.port_max <= 65535:
            raise _bad("bad_value", "exit_policy.ports", "need 1 <= port_min <= port_max <= 65535")

    def matches(self, ip: IPAddress, port: int) -> bool:
        return ip in self.network and self.port_min <= port <= self.port_max

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "action": self.action.value,
            "ip": self.network.network_address.packed,
            "prefix": self.network.prefixlen,
            "port_min": self.port_min,
            "port_max": self.port_max,
        }


def _check_len(field: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes):
        raise _bad("bad_type", field, "must be bytes")
    if len(value) != length:
        raise _bad("bad_length", field, f"must be {length} bytes, got {len(value)}")


def _check_sorted_set(field: str, items: list[encoding.Value]) -> None:
    encoded = [encoding.encode(i) for i in items]
    if any(a >= b for a, b in zip(encoded, encoded[1:], strict=False)):
        raise _bad("not_canonical", field, "set must be sorted by encoding, without repeats")


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    """A node descriptor (spec/directory.md §5). Every field is checked when built.

    Building one with a bad field raises ``MalformedDocument`` (a ``ValueError``).
    Set-valued fields (``addresses``, ``roles``, ``family``) must already be in
    canonical order; ``canonical_order`` helps a node publishing its own.
    """

    node_id: bytes
    published: int
    addresses: tuple[Address, ...]
    roles: tuple[Role, ...]
    exit_policy: tuple[PolicyRule, ...]
    bandwidth: int
    software: str
    server_name: str
    family: tuple[bytes, ...]
    id_ed25519: bytes
    id_mldsa65: bytes
    link_x25519: bytes
    kem_mlkem768: bytes
    ticket_x25519: bytes
    ticket_key_id: int
    mix_epoch: int
    mix_current: bytes
    mix_next: bytes

    def __post_init__(self) -> None:
        _check_len("node_id", self.node_id, NODE_ID_LEN)
        _check_len("id_ed25519", self.id_ed25519, ED25519_PUBLIC_LEN)
        _check_len("id_mldsa65", self.id_mldsa65, MLDSA65_PUBLIC_LEN)
        _check_len("link_x25519", self.link_x25519, X25519_PUBLIC_LEN)
        _check_len("kem_mlkem768", self.kem_mlkem768, MLKEM768_PUBLIC_LEN)
        _check_len("ticket_x25519", self.ticket_x25519, X25519_PUBLIC_LEN)
        _check_len("mix_current", self.mix_current, X25519_PUBLIC_LEN)
        _check_len("mix_next", self.mix_next, X25519_PUBLIC_LEN)
        if self.mix_current == self.mix_next:
            raise _bad("bad_value", "mix_next", "must differ from mix_current")
        for name, value, top in (
            ("published", self.published, encoding.UINT_MAX),
            ("bandwidth", self.bandwidth, MAX_BANDWIDTH),
            ("mix_epoch", self.mix_epoch, MAX_EPOCH),
            ("ticket_key_id", self.ticket_key_id, 255),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad("bad_type", name, "must be an unsigned integer")
            if not 0 <= value <= top:
                raise _bad("bad_value", name, f"must be 0..{top}")
        if not isinstance(self.software, str) or not 1 <= len(self.software) <= MAX_SOFTWARE_LEN:
            raise _bad("bad_value", "software", f"must be 1..{MAX_SOFTWARE_LEN} characters")
        if not all(0x20 <= ord(c) < 0x7F for c in self.software):
            raise _bad("bad_value", "software", "must be printable ASCII")
        check_server_name("server_name", self.server_name)
        if not 1 <= len(self.addresses) <= MAX_ADDRESSES:
            raise _bad("bad_value", "addresses", f"need 1..{MAX_ADDRESSES}")
        _check_sorted_set("addresses", [a.to_cbor() for a in self.addresses])
        if not 1 <= len(self.roles) <= len(Role):
            raise _bad("bad_value", "roles", "need at least one role")
        _check_sorted_set("roles", [r.value for r in self.roles])
        if len(self.exit_policy) > MAX_POLICY_RULES:
            raise _bad("bad_value", "exit_policy", f"at most {MAX_POLICY_RULES} rules")
        if len(self.family) > MAX_FAMILY:
            raise _bad("bad_value", "family", f"at most {MAX_FAMILY} members")
        for member in self.family:
            _check_len("family", member, NODE_ID_LEN)
        _check_sorted_set("family", list(self.family))
        if self.node_id in self.family:
            raise _bad("bad_value", "family", "must not list the node itself")

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity(ed25519=self.id_ed25519, mldsa65=self.id_mldsa65)

    def allows_exit(self, ip: IPAddress, port: int) -> bool:
        """First matching rule wins; no match, or no ``exit`` role, means reject."""
        if Role.EXIT not in self.roles:
            return False
        for rule in self.exit_policy:
            if rule.matches(ip, port):
                return rule.action is Action.ACCEPT
        return False

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {
            "version": DESCRIPTOR_VERSION,
            "node_id": self.node_id,
            "published": self.published,
            "addresses": [a.to_cbor() for a in self.addresses],
            "roles": [r.value for r in self.roles],
            "exit_policy": [r.to_cbor() for r in self.exit_policy],
            "bandwidth": self.bandwidth,
            "software": self.software,
            "server_name": self.server_name,
            "family": list(self.family),
            "id_ed25519": self.id_ed25519,
            "id_mldsa65": self.id_mldsa65,
            "link_x25519": self.link_x25519,
            "kem_mlkem768": self.kem_mlkem768,
            "ticket_x25519": self.ticket_x25519,
            "ticket_key_id": self.ticket_key_id,
            "mix_epoch": self.mix_epoch,
            "mix_current": self.mix_current,
            "mix_next": self.mix_next,
        }

    def encode(self) -> bytes:
        """The deterministic encoding of the body (what is signed, after the context)."""
        return encoding.encode(self.to_cbor())

    def sign(self, identity: Identity) -> bytes:
        """The signed envelope. Raises ``ValueError`` if ``identity`` is not this node's."""
        if identity.public != self.identity or identity.node_id != self.node_id:
            raise ValueError("descriptor keys or node id do not belong to this identity")
        body = self.encode()
        return envelope(body, identity.sign(DESCRIPTOR_CONTEXT, body))


def canonical_order(items: Iterable[T], to_cbor: Callable[[T], encoding.Value]) -> tuple[T, ...]:
    """``items`` sorted by the encoding of ``to_cbor(item)``: the order sets must use."""
    return tuple(sorted(items, key=lambda i: encoding.encode(to_cbor(i))))


def envelope(body: bytes, sigs: Signatures) -> bytes:
    return encoding.encode({"body": body, "sig_ed25519": sigs.ed25519, "sig_mldsa65": sigs.mldsa65})


# --- parsing ------------------------------------------------------------------------------

_ENVELOPE_KEYS: Final = frozenset({"body", "sig_ed25519", "sig_mldsa65"})
_BODY_KEYS: Final = frozenset(
    {
        "version",
        "node_id",
        "published",
        "addresses",
        "roles",
        "exit_policy",
        "bandwidth",
        "software",
        "server_name",
        "family",
        "id_ed25519",
        "id_mldsa65",
        "link_x25519",
        "kem_mlkem768",
        "ticket_x25519",
        "ticket_key_id",
        "mix_epoch",
        "mix_current",
        "mix_next",
    }
)
_ADDRESS_KEYS: Final = frozenset({"transport", "ip", "port"})
_RULE_KEYS: Final = frozenset({"action", "ip", "prefix", "port_min", "port_max"})


def _versioned_map(
    field: str, value: encoding.Value, keys: frozenset[str], version: int
) -> dict[str, object]:
    """``_exact_map`` of a document body whose ``version`` must be ``version``. The
    version is checked first: a body of another version has other keys, and
    ``bad_version`` says more than naming the first key that differs."""
    if isinstance(value, dict) and "version" in value:
        if _typed("version", value["version"], int) != version:
            raise _bad("bad_version", "version", f"only {version} is known")
    return _exact_map(field, value, keys)


def _exact_map(field: str, value: encoding.Value, keys: frozenset[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _bad("bad_type", field, "must be a map")
    for k in value:
        if k not in keys:
            raise _bad("unknown_field", field, repr(k))
    for k in sorted(keys):
        if k not in value:
            raise _bad("missing_field", field, k)
    return {str(k): v for k, v in value.items()}


def _typed(field: str, value: object, kind: type[T]) -> T:
    if isinstance(value, bool) and kind is not bool:
        raise _bad("bad_type", field, f"must be {kind.__name__}")
    if not isinstance(value, kind):
        raise _bad("bad_type", field, f"must be {kind.__name__}")
    return value


def _enum(field: str, value: object, kind: Callable[[str], T]) -> T:
    try:
        return kind(_typed(field, value, str))
    except ValueError:
        raise _bad("bad_value", field, f"unknown value {value!r}") from None


def _ip(field: str, value: object) -> IPAddress:
    raw = _typed(field, value, bytes)
    if len(raw) not in (4, 16):
        raise _bad("bad_length", field, "an address is 4 or 16 bytes")
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def _address(value: encoding.Value) -> Address:
    m = _exact_map("addresses[]", value, _ADDRESS_KEYS)
    return Address(
        transport=_enum("addresses.transport", m["transport"], Transport),
        ip=_ip("addresses.ip", m["ip"]),
        port=_typed("addresses.port", m["port"], int),
    )


def _rule(value: encoding.Value) -> PolicyRule:
    m = _exact_map("exit_policy[]", value, _RULE_KEYS)
    ip = _ip("exit_policy.ip", m["ip"])
    prefix = _typed("exit_policy.prefix", m["prefix"], int)
    try:
        network = ipaddress.ip_network((ip, prefix), strict=True)
    except ValueError:
        # A prefix out of range, or host bits set: both have another spelling.
        raise _bad("bad_value", "exit_policy.prefix", "bad prefix or host bits set") from None
    return PolicyRule(
        action=_enum("exit_policy.action", m["action"], Action),
        network=network,
        port_min=_typed("exit_policy.port_min", m["port_min"], int),
        port_max=_typed("exit_policy.port_max", m["port_max"], int),
    )


def _array(field: str, value: object) -> list[encoding.Value]:
    return _typed(field, value, list)


def decode_body(body: bytes) -> Descriptor:
    """Decode and validate a descriptor body. Raises ``MalformedDocument`` only.

    No signature or freshness check: use ``parse_and_verify`` for input from peers.
    """
    m = _versioned_map(
        "descriptor", encoding.decode(body, BODY_LIMITS), _BODY_KEYS, DESCRIPTOR_VERSION
    )
    return Descriptor(
        node_id=_typed("node_id", m["node_id"], bytes),
        published=_typed("published", m["published"], int),
        addresses=tuple(_address(a) for a in _array("addresses", m["addresses"])),
        roles=tuple(_enum("roles[]", r, Role) for r in _array("roles", m["roles"])),
        exit_policy=tuple(_rule(r) for r in _array("exit_policy", m["exit_policy"])),
        bandwidth=_typed("bandwidth", m["bandwidth"], int),
        software=_typed("software", m["software"], str),
        server_name=check_server_name("server_name", m["server_name"]),
        family=tuple(_typed("family[]", f, bytes) for f in _array("family", m["family"])),
        id_ed25519=_typed("id_ed25519", m["id_ed25519"], bytes),
        id_mldsa65=_typed("id_mldsa65", m["id_mldsa65"], bytes),
        link_x25519=_typed("link_x25519", m["link_x25519"], bytes),
        kem_mlkem768=_typed("kem_mlkem768", m["kem_mlkem768"], bytes),
        ticket_x25519=_typed("ticket_x25519", m["ticket_x25519"], bytes),
        ticket_key_id=_typed("ticket_key_id", m["ticket_key_id"], int),
        mix_epoch=_typed("mix_epoch", m["mix_epoch"], int),
        mix_current=_typed("mix_current", m["mix_current"], bytes),
        mix_next=_typed("mix_next", m["mix_next"], bytes),
    )


def split_envelope(raw: bytes) -> tuple[bytes, Signatures]:
    """The body bytes and both signatures of an envelope. Raises ``MalformedDocument``."""
    m = _exact_map("envelope", encoding.decode(raw, ENVELOPE_LIMITS), _ENVELOPE_KEYS)
    body = _typed("body", m["body"], bytes)
    ed = _typed("sig_ed25519", m["sig_ed25519"], bytes)
    ml = _typed("sig_mldsa65", m["sig_mldsa65"], bytes)
    _check_len("sig_ed25519", ed, ED25519_SIG_LEN)
    _check_len("sig_mldsa65", ml, MLDSA65_SIG_LEN)
    return body, Signatures(ed25519=ed, mldsa65=ml)


def check_fresh(published: int, now: int, max_age: int = MAX_AGE, max_skew: int = MAX_SKEW) -> None:
    """Raise ``StaleDocument`` unless ``now - max_age <= published <= now + max_skew``."""
    if published > now + max_skew:
        raise StaleDocument("future", f"published {published}, now {now}")
    if published < now - max_age:
        raise StaleDocument("expired", f"published {published}, now {now}")


def parse_and_verify(
    raw: bytes, now: int, *, max_age: int = MAX_AGE, max_skew: int = MAX_SKEW
) -> Descriptor:
    """Parse a signed descriptor from a peer and check everything, cheapest first.

    Order (fixed, so the reason for a doubly bad document is predictable):
    envelope and body encoding and fields (``MalformedDocument``), node id
    against the keys (``IdentityMismatch``), freshness against ``now`` in Unix
    seconds (``StaleDocument``), then the Ed25519 and ML-DSA-65 signatures
    (``BadSignature``). Nothing else is raised.
    """
    body, sigs = split_envelope(raw)
    desc = decode_body(body)
    ident = desc.identity
    ident.check_node_id(desc.node_id)
    check_fresh(desc.published, now, max_age, max_skew)
    ident.verify(DESCRIPTOR_CONTEXT, body, sigs)
    return desc
