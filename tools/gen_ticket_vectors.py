"""Regenerate spec/vectors/htx_tickets.json (HTX access tickets) from fixed seeds.

    python -m tools.gen_ticket_vectors            # write the file
    python -m tools.gen_ticket_vectors --check    # fail if the file differs from a fresh run

Every random value comes from ``SeededRandom`` and is listed in ``draws``, so
another implementation can replay the draws and must produce the same bytes.
The format is "htx-tickets-v1"; ``qnet.lint.ticket_vectors`` checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import X25519Key, hkdf_sha256
from qnet.htx import cover
from qnet.htx import ticket as T
from qnet.lint.ticket_vectors import check_tickets
from tools.vectorio import write_or_check

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "htx_tickets.json"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, the start of an hour
KEY_ID = 7
PREVIOUS_KEY_ID = 6


def hx(b: bytes) -> str:
    return bytes(b).hex()


def server_key(label: bytes) -> X25519Key:
    return X25519Key(hkdf_sha256(label, b"qnet-vectors", b"ticket key", 32))


CURRENT = server_key(b"qnet-vector-ticket-server-current")
PREVIOUS = server_key(b"qnet-vector-ticket-server-previous")


def build(seed: bytes, key: X25519Key, key_id: int, now: float) -> dict[str, Any]:
    rng = SeededRandom(seed)
    t = T.build_ticket_parts(key.public_bytes, key_id, now, rng)
    return {
        "seed": hx(seed),
        "server_public": hx(key.public_bytes),
        "key_id": key_id,
        "now": now,
        "hour": t.hour,
        "draws": [hx(d) for d in rng.draws],
        "client_private": hx(rng.draws[0]),
        "client_public": hx(t.client_public),
        "shared": hx(t.shared),
        "nonce": hx(t.nonce),
        "padding": hx(t.padding),
        "ticket": hx(t.ticket),
        "wire": hx(t.wire),
        "carrier": t.carrier_value,
    }


def reencode(wire: bytes) -> str:
    return T.b64url_encode(wire)


def tickets_vectors() -> dict[str, Any]:
    builds = [
        build(b"ticket-0", CURRENT, KEY_ID, NOW + 17),
        build(b"ticket-1", CURRENT, KEY_ID, NOW + 3599.5),
        build(b"ticket-2", PREVIOUS, PREVIOUS_KEY_ID, NOW - 3600),
        build(b"ticket-3", CURRENT, KEY_ID, NOW + 2 * 3600),
        build(b"ticket-4", CURRENT, KEY_ID, NOW - 2 * 3600 + 5),
    ]
    good = builds[0]["carrier"]
    wire = bytes.fromhex(builds[0]["wire"])
    flipped = bytearray(wire)
    flipped[60] ^= 0x01
    padded = bytearray(wire)
    padded[-1] ^= 0x80
    peer = "192.0.2.10"

    def one(carrier: str | None, reason: str, now: float = NOW, p: str = peer) -> dict[str, Any]:
        return {"carrier": carrier, "peer": p, "now": now, "reason": reason}

    sequences = [
        {"name": "accept-current-hour", "checks": [one(good, "ok")]},
        {"name": "accept-previous-key", "checks": [one(builds[2]["carrier"], "ok")]},
        {"name": "accept-next-hour", "checks": [one(builds[3]["carrier"], "ok", NOW + 3600)]},
        {
            "name": "hour-window",
            "checks": [
                one(builds[1]["carrier"], "ok", NOW + 3600 * 1.5),
                one(builds[3]["carrier"], "ok", NOW + 3600 * 1.5),
                one(builds[4]["carrier"], "stale", NOW),
                one(builds[3]["carrier"], "bad_ticket", NOW - 1),
            ],
        },
        {"name": "replay", "checks": [one(good, "ok"), one(good, "replay", NOW + 7000)]},
        {
            "name": "replay-across-prefixes",
            "checks": [one(good, "ok"), one(good, "replay", NOW + 60, "2001:db8::1")],
        },
        {"name": "missing", "checks": [one(None, "missing"), one("", "missing")]},
        {
            "name": "bad-encoding",
            "checks": [
                one(good + "=", "bad_encoding"),
                one(good.replace(good[5], "+", 1), "bad_encoding"),
                one(good[:100], "bad_encoding"),
                one(reencode(wire[:81]), "bad_encoding"),
                one(reencode(wire + bytes(300)), "bad_encoding"),
                one("A" * 513, "bad_encoding"),
            ],
        },
        {"name": "bad-version", "checks": [one(reencode(b"\x02" + wire[1:]), "bad_version")]},
        {
            "name": "unknown-key",
            "checks": [one(reencode(wire[:33] + b"\x09" + wire[34:]), "unknown_key")],
        },
        {
            "name": "bad-ticket",
            "checks": [
                one(reencode(bytes(flipped)), "bad_ticket"),
                one(reencode(bytes(padded)), "bad_ticket"),
                one(reencode(wire[:1] + bytes(32) + wire[33:]), "bad_ticket"),
            ],
        },
        {
            "name": "rate-limit-ipv4-24",
            "config": {"rate_burst": 2, "rate_per_second": 0.01},
            "checks": [
                one(None, "missing", NOW, "198.51.100.1"),
                one(None, "missing", NOW, "198.51.100.200"),
                one(good, "rate_limited", NOW, "198.51.100.7"),
                one(good, "ok", NOW, "198.51.101.7"),
                one(builds[1]["carrier"], "ok", NOW + 100, "198.51.100.7"),
            ],
        },
        {
            "name": "rate-limit-ipv6-56",
            "config": {"rate_burst": 1, "rate_per_second": 0.01},
            "checks": [
                one(None, "missing", NOW, "2001:db8:0:ff::1"),
                one(good, "rate_limited", NOW, "2001:db8:0:1::2"),
                one(good, "ok", NOW, "2001:db8:0:100::1"),
            ],
        },
    ]
    up_rng = SeededRandom(b"upgrade-0")
    client = cover.Http1TunnelClient("www.example.com", "/", good, up_rng)
    q_rng = SeededRandom(b"upgrade-1")
    query = T.Carriers(kind=T.CarrierKind.QUERY)
    q_client = cover.Http1TunnelClient("www.example.com", "/live", good, q_rng, carriers=query)
    server = cover.Http1Server()
    server.receive_data(client.request_bytes, NOW)
    server.accept_tunnel(0, NOW)
    return {
        "format": "htx-tickets-v1",
        "description": "HTX access tickets: derivation, carrier encoding, server verdicts, "
        "and the HTTP/1.1 upgrade request (spec/htx-tickets.md)",
        "constants": {
            "version": T.VERSION,
            "nonce_len": T.NONCE_LEN,
            "pad_min": T.PAD_MIN,
            "pad_span": T.PAD_SPAN,
            "max_pad": T.MAX_PAD,
            "salt": hx(T.SALT),
            "info_label": hx(T.INFO_LABEL),
        },
        "server_keys": [
            {
                "key_id": KEY_ID,
                "private": hx(CURRENT.private_bytes),
                "public": hx(CURRENT.public_bytes),
            },
            {
                "key_id": PREVIOUS_KEY_ID,
                "private": hx(PREVIOUS.private_bytes),
                "public": hx(PREVIOUS.public_bytes),
            },
        ],
        "tickets": builds,
        "verify": sequences,
        "upgrade": [
            {
                "name": "cookie",
                "host": "www.example.com",
                "path": "/",
                "carrier": "cookie",
                "ticket": good,
                "seed": hx(b"upgrade-0"),
                "draws": [hx(d) for d in up_rng.draws],
                "request": client.request_bytes.decode("latin-1"),
                "sec_websocket_accept": cover.websocket_accept(client.key),
                "now": NOW,
                "response_101": server.data_to_send().decode("latin-1"),
            },
            {
                "name": "query",
                "host": "www.example.com",
                "path": "/live",
                "carrier": "query",
                "ticket": good,
                "seed": hx(b"upgrade-1"),
                "draws": [hx(d) for d in q_rng.draws],
                "request": q_client.request_bytes.decode("latin-1"),
                "sec_websocket_accept": cover.websocket_accept(q_client.key),
            },
        ],
    }


def main(argv: list[str] | None = None) -> int:
    doc = tickets_vectors()
    # the expected verdicts are written by hand: the reference must agree with them
    findings = check_tickets(doc)
    for f in findings:
        print(f"reference disagrees with the intended vector: {f}", file=sys.stderr)
    if findings:
        return 1
    return write_or_check({OUT: lambda: doc}, argv, (__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
