"""Regenerate spec/vectors/directory.json (format ``directory-v1``) from fixed seeds.

    python -m tools.gen_dir_vectors            # write the file
    python -m tools.gen_dir_vectors --check    # fail if the file differs from a fresh run

ML-DSA-65 signing is randomized, so a fresh run cannot reproduce the recorded
ML-DSA signature. Instead the generator *reuses* the recorded signature when it
still verifies over the freshly built message, and signs anew only when it does
not (the message changed). ``--check`` therefore compares every byte of the
file, ML-DSA signature included, and fails if the recorded signature does not
verify: everything except the signer's random draws is pinned.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from qnet.crypto import MLKEM768Key, hkdf_sha256, mldsa65_verify, x25519_public
from qnet.dir import encoding
from qnet.dir.descriptor import (
    DESCRIPTOR_CONTEXT,
    MAX_AGE,
    MAX_SKEW,
    Action,
    Address,
    Descriptor,
    PolicyRule,
    Role,
    Transport,
    canonical_order,
    envelope,
)
from qnet.dir.identity import NODE_ID_KEY, Identity, Signatures, node_id, signed_message
from qnet.errors import AuthenticationError, CryptoError

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "directory.json"
PUBLISHED = 1_800_000_000  # 2027-01-15T08:00:00Z
X = bytes.fromhex


def hx(b: bytes) -> str:
    return bytes(b).hex()


def seed(label: str, n: int = 32) -> bytes:
    return hkdf_sha256(f"qnet-dir-vector-{label}".encode(), b"qnet-vectors", b"directory", n)


def flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


# --- generic encoding vectors ------------------------------------------------------------

POSITIVE: list[tuple[str, encoding.Value]] = [
    ("uint-boundaries", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]),
    ("nint-boundaries", [-1, -24, -25, -256, -257, -(2**64)]),
    ("strings", [b"", b"\x00\xff", "", "qnet", "\u00e9\u4e2d"]),
    ("simple", [True, False, None]),
    ("map-keys-sort-by-encoding", {"b": 1, "aa": 2, 10: 3, -1: 4, b"k": 5, 100: 6}),
    ("nested", {"a": [1, [2, {"c": b"d"}]], "e": {}}),
]

NEGATIVE: list[tuple[str, str, str]] = [
    ("uint-8bit-non-shortest", "1817", "non_shortest"),
    ("uint-16bit-non-shortest", "1900ff", "non_shortest"),
    ("uint-32bit-non-shortest", "1a0000ffff", "non_shortest"),
    ("uint-64bit-non-shortest", "1b00000000ffffffff", "non_shortest"),
    ("length-non-shortest", "580161", "non_shortest"),
    ("indefinite-bytes", "5f4100ff", "indefinite_length"),
    ("indefinite-array", "9f00ff", "indefinite_length"),
    ("lone-break", "ff", "indefinite_length"),
    ("reserved-info", "1c", "reserved_info"),
    ("reserved-info-major-7", "fc", "reserved_info"),
    ("unsorted-keys", "a26162016161 02".replace(" ", ""), "unsorted_keys"),
    ("length-first-order", "a2626161016162 02".replace(" ", ""), "unsorted_keys"),
    ("duplicate-key", "a2616101616102", "duplicate_key"),
    ("array-key", "a18000", "bad_key_type"),
    ("bool-key", "a1f500", "bad_key_type"),
    ("float16", "f93c00", "unsupported_type"),
    ("float64", "fb3ff0000000000000", "unsupported_type"),
    ("tag", "c100", "unsupported_type"),
    ("undefined", "f7", "unsupported_type"),
    ("invalid-utf8", "62c328", "invalid_utf8"),
    ("utf8-surrogate", "63eda080", "invalid_utf8"),
    ("trailing-bytes", "0000", "trailing_bytes"),
    ("truncated-head", "18", "truncated"),
    ("truncated-string", "43aabb", "truncated"),
    ("huge-array-count", "9bffffffffffffffff", "truncated"),
    ("huge-string-length", "5b0000000100000000", "too_large"),
    ("too-deep", "81" * 17 + "00", "too_deep"),
    ("empty-input", "", "truncated"),
]


#: Server names a descriptor must refuse (``bad_value``), with the vector's name suffix.
BAD_SERVER_NAMES: list[tuple[str, str]] = [
    ("empty", ""),
    ("ipv4-literal", "192.0.2.10"),
    ("numeric-last-label", "10.1"),
    ("ipv6-literal", "2001:db8::10"),
    ("trailing-dot", "static.example.net."),
    ("empty-label", "static..example.net"),
    ("upper-case", "Static.Example.net"),
    ("underscore", "static_1.example.net"),
    ("hyphen-at-label-end", "static-.example.net"),
    ("label-64", "a" * 64 + ".example.net"),
    ("name-254", ".".join(["a" * 63] * 3 + ["b" * 62])),
    ("non-ascii", "st\u00e4tic.example.net"),
    ("space", "static example.net"),
]


def encoding_vectors() -> dict[str, Any]:
    return {
        "limits": {
            "max_size": encoding.DEFAULT_LIMITS.max_size,
            "max_depth": encoding.DEFAULT_LIMITS.max_depth,
            "max_items": encoding.DEFAULT_LIMITS.max_items,
            "max_string": encoding.DEFAULT_LIMITS.max_string,
        },
        "positive": [{"name": n, "cbor": hx(encoding.encode(v))} for n, v in POSITIVE],
        "negative": [{"name": n, "cbor": c, "error": e} for n, c, e in NEGATIVE],
    }


# --- identity and descriptor -------------------------------------------------------------


def identity() -> Identity:
    return Identity(seed("ed25519"), seed("mldsa65"))


def descriptor(ident: Identity) -> Descriptor:
    addrs = [
        Address(transport=Transport.TCP, ip=_ip("192.0.2.10"), port=443),
        Address(transport=Transport.QUIC, ip=_ip("192.0.2.10"), port=443),
        Address(transport=Transport.TCP, ip=_ip("2001:db8::10"), port=8443),
    ]
    policy = (
        PolicyRule(action=Action.REJECT, network=_net("10.0.0.0/8"), port_min=1, port_max=65535),
        PolicyRule(action=Action.ACCEPT, network=_net("0.0.0.0/0"), port_min=80, port_max=80),
        PolicyRule(action=Action.ACCEPT, network=_net("0.0.0.0/0"), port_min=443, port_max=443),
        PolicyRule(action=Action.ACCEPT, network=_net("2000::/3"), port_min=443, port_max=443),
    )
    family = [seed("family-a"), seed("family-b")]
    return Descriptor(
        node_id=ident.node_id,
        published=PUBLISHED,
        addresses=canonical_order(addrs, Address.to_cbor),
        roles=canonical_order([Role.RELAY, Role.EXIT, Role.MIX], lambda r: r.value),
        exit_policy=policy,
        bandwidth=12_500_000,
        software="qnet/0.1.0",
        server_name="static.quiet-harbor.example.net",
        family=canonical_order(family, lambda f: f),
        id_ed25519=ident.public.ed25519,
        id_mldsa65=ident.public.mldsa65,
        link_x25519=x25519_public(seed("link-x25519")),
        kem_mlkem768=MLKEM768Key(seed("mlkem768", 64)).public_bytes,
        ticket_x25519=x25519_public(seed("ticket-x25519")),
        ticket_key_id=7,
        mix_epoch=500_000,
        mix_current=x25519_public(seed("mix-500000")),
        mix_next=x25519_public(seed("mix-500001")),
    )


def _ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def _net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def descriptor_json(d: Descriptor) -> dict[str, Any]:
    return {
        "node_id": hx(d.node_id),
        "published": d.published,
        "addresses": [
            {"transport": a.transport.value, "ip": str(a.ip), "port": a.port} for a in d.addresses
        ],
        "roles": [r.value for r in d.roles],
        "exit_policy": [
            {
                "action": r.action.value,
                "network": str(r.network),
                "port_min": r.port_min,
                "port_max": r.port_max,
            }
            for r in d.exit_policy
        ],
        "bandwidth": d.bandwidth,
        "software": d.software,
        "server_name": d.server_name,
        "family": [hx(f) for f in d.family],
        "id_ed25519": hx(d.id_ed25519),
        "id_mldsa65": hx(d.id_mldsa65),
        "link_x25519": hx(d.link_x25519),
        "kem_mlkem768": hx(d.kem_mlkem768),
        "ticket_x25519": hx(d.ticket_x25519),
        "ticket_key_id": d.ticket_key_id,
        "mix_epoch": d.mix_epoch,
        "mix_current": hx(d.mix_current),
        "mix_next": hx(d.mix_next),
    }


def _recorded_mldsa(previous: dict[str, Any] | None, public: bytes, message: bytes) -> bytes | None:
    if previous is None:
        return None
    try:
        sig = X(previous["descriptor"]["sig_mldsa65"])
        mldsa65_verify(public, message, sig)
    except (KeyError, TypeError, ValueError, AuthenticationError, CryptoError):
        return None
    return sig


def _body_with(body: bytes, **changes: encoding.Value) -> bytes:
    m = encoding.decode(body)
    assert isinstance(m, dict)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    return encoding.encode(m)


def descriptor_vectors(previous: dict[str, Any] | None) -> dict[str, Any]:
    ident = identity()
    desc = descriptor(ident)
    body = desc.encode()
    message = signed_message(DESCRIPTOR_CONTEXT, body)
    ml = _recorded_mldsa(previous, ident.public.mldsa65, message)
    sigs = ident.sign(DESCRIPTOR_CONTEXT, body)
    if ml is not None:
        sigs = Signatures(ed25519=sigs.ed25519, mldsa65=ml)
    env = envelope(body, sigs)
    now = PUBLISHED + 60
    ed, mlsig = sigs.ed25519, sigs.mldsa65

    def neg(name: str, raw: bytes, error_class: str, error: str, at: int = now) -> dict[str, Any]:
        return {"name": name, "now": at, "envelope": hx(raw), "class": error_class, "error": error}

    other_id = seed("someone-else")
    bad_body = _body_with(body, node_id=other_id)
    reversed_roles = _body_with(body, roles=[r.value for r in reversed(desc.roles)])
    host_bits = _body_with(
        body,
        exit_policy=[
            {
                "action": "reject",
                "ip": bytes([10, 0, 0, 1]),
                "prefix": 8,
                "port_min": 1,
                "port_max": 65535,
            }
        ],
    )
    short_form = bytes([0x1A]) + PUBLISHED.to_bytes(4, "big")
    assert body.count(short_form) == 1
    long_int = body.replace(short_form, bytes([0x1B]) + PUBLISHED.to_bytes(8, "big"))
    negatives = [
        neg(
            "flipped-ed25519-signature",
            envelope(body, Signatures(ed25519=flip(ed, 10), mldsa65=mlsig)),
            "BadSignature",
            "bad_ed25519_signature",
        ),
        neg(
            "flipped-mldsa65-signature",
            envelope(body, Signatures(ed25519=ed, mldsa65=flip(mlsig, 10))),
            "BadSignature",
            "bad_mldsa65_signature",
        ),
        neg(
            "flipped-body-bit",
            envelope(flip(body, len(body) - 1), sigs),
            "BadSignature",
            "bad_ed25519_signature",
        ),
        neg("wrong-node-id", envelope(bad_body, sigs), "IdentityMismatch", "node_id_mismatch"),
        neg("expired", env, "StaleDocument", "expired", PUBLISHED + MAX_AGE + 1),
        neg("future-dated", env, "StaleDocument", "future", PUBLISHED - MAX_SKEW - 1),
        neg("envelope-trailing-byte", env + b"\x00", "MalformedDocument", "trailing_bytes"),
        neg(
            "envelope-missing-signature",
            encoding.encode({"body": body, "sig_ed25519": ed}),
            "MalformedDocument",
            "missing_field",
        ),
        neg(
            "envelope-short-mldsa65-signature",
            envelope(body, Signatures(ed25519=ed, mldsa65=mlsig[:-1])),
            "MalformedDocument",
            "bad_length",
        ),
        neg(
            "body-unknown-field",
            envelope(_body_with(body, extra=1), sigs),
            "MalformedDocument",
            "unknown_field",
        ),
        neg(
            "body-missing-field",
            envelope(_body_with(body, software=None), sigs),
            "MalformedDocument",
            "missing_field",
        ),
        neg(
            "body-short-mix-key",
            envelope(_body_with(body, mix_next=bytes(31)), sigs),
            "MalformedDocument",
            "bad_length",
        ),
        neg(
            "body-wrong-type",
            envelope(_body_with(body, bandwidth="fast"), sigs),
            "MalformedDocument",
            "bad_type",
        ),
        neg(
            "body-roles-not-sorted",
            envelope(reversed_roles, sigs),
            "MalformedDocument",
            "not_canonical",
        ),
        neg("body-policy-host-bits", envelope(host_bits, sigs), "MalformedDocument", "bad_value"),
        neg("body-non-shortest-int", envelope(long_int, sigs), "MalformedDocument", "non_shortest"),
        neg(
            "body-unknown-version",
            envelope(_body_with(body, version=3), sigs),
            "MalformedDocument",
            "bad_version",
        ),
        neg(
            "body-version-1",  # the version before server_name: refused, not read without it
            envelope(_body_with(body, version=1, server_name=None), sigs),
            "MalformedDocument",
            "bad_version",
        ),
        neg(
            "body-missing-server-name",
            envelope(_body_with(body, server_name=None), sigs),
            "MalformedDocument",
            "missing_field",
        ),
        neg(
            "body-server-name-bytes",
            envelope(_body_with(body, server_name=desc.server_name.encode()), sigs),
            "MalformedDocument",
            "bad_type",
        ),
        *(
            neg(
                f"body-server-name-{label}",
                envelope(_body_with(body, server_name=bad), sigs),
                "MalformedDocument",
                "bad_value",
            )
            for label, bad in BAD_SERVER_NAMES
        ),
    ]
    return {
        "identity": {
            "ed25519_seed": hx(seed("ed25519")),
            "mldsa65_seed": hx(seed("mldsa65")),
            "ed25519_public": hx(ident.public.ed25519),
            "mldsa65_public": hx(ident.public.mldsa65),
            "node_id_key": hx(NODE_ID_KEY),
            "node_id": hx(node_id(ident.public.ed25519, ident.public.mldsa65)),
        },
        "medium_term_seeds": {
            "link_x25519_private": hx(seed("link-x25519")),
            "mlkem768_seed": hx(seed("mlkem768", 64)),
            "mix_current_private": hx(seed("mix-500000")),
            "mix_next_private": hx(seed("mix-500001")),
        },
        "descriptor": {
            "fields": descriptor_json(desc),
            "context": hx(DESCRIPTOR_CONTEXT),
            "body": hx(body),
            "sig_ed25519": hx(ed),
            "sig_mldsa65": hx(mlsig),
            "envelope": hx(env),
            "now": now,
            "max_age": MAX_AGE,
            "max_skew": MAX_SKEW,
        },
        "negative": negatives,
    }


def build(previous: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": "directory-v1",
        "spec": "spec/directory.md",
        "note": "sig_mldsa65 is randomized: check that it verifies, not that re-signing matches",
        "encoding": encoding_vectors(),
        **descriptor_vectors(previous),
    }


def render(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", type=Path, default=OUT, help="vector file (default: spec/vectors)")
    args = ap.parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    if args.check:
        if previous is None:
            print(f"{args.out}: missing", file=sys.stderr)
            return 1
        fresh = build(previous)
        if fresh["descriptor"]["sig_mldsa65"] != previous["descriptor"].get("sig_mldsa65"):
            print(f"{args.out}: recorded ML-DSA-65 signature does not verify", file=sys.stderr)
            return 1
        if render(fresh) != args.out.read_text():
            print(f"{args.out}: differs from a fresh generation", file=sys.stderr)
            return 1
        return 0
    text = render(build(previous))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
