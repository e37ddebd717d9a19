"""The "htx-tickets-v1" vector checker (spec/vectors/htx_tickets.json).

Rebuilds every ticket from its seed, replays each verification sequence on a
fresh ``TicketVerifier`` and rebuilds the HTTP/1.1 upgrade requests; any byte
or verdict that differs is a finding.
"""

from __future__ import annotations

from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import X25519Key
from qnet.errors import DecodeError
from qnet.htx import cover
from qnet.htx import ticket as T
from qnet.lint.findings import Collector, Finding

X = bytes.fromhex


def _keys(doc: dict[str, Any]) -> dict[int, X25519Key]:
    return {k["key_id"]: X25519Key(X(k["private"])) for k in doc["server_keys"]}


def _check_build(c: Collector, vec: dict[str, Any]) -> None:
    rng = SeededRandom(X(vec["seed"]))
    t = T.build_ticket_parts(X(vec["server_public"]), vec["key_id"], vec["now"], rng)
    c.same("draws", [d.hex() for d in rng.draws], vec["draws"])
    c.same("hour", t.hour, vec["hour"])
    c.same("client public", t.client_public.hex(), vec["client_public"])
    c.same("shared", t.shared.hex(), vec["shared"])
    c.same("nonce", t.nonce.hex(), vec["nonce"])
    c.same("padding", t.padding.hex(), vec["padding"])
    c.same("ticket", t.ticket.hex(), vec["ticket"])
    c.same("wire", t.wire.hex(), vec["wire"])
    c.same("carrier", t.carrier_value, vec["carrier"])


def _check_sequence(c: Collector, keys: dict[int, X25519Key], seq: dict[str, Any]) -> None:
    verifier = T.TicketVerifier(keys, T.TicketConfig(**seq.get("config", {})))
    for n, chk in enumerate(seq["checks"]):
        verdict = verifier.check(chk["carrier"], chk["peer"], chk["now"])
        c.same(f"check {n} reason", verdict.reason, chk["reason"])
        c.same(f"check {n} accepted", verdict.accepted, chk["reason"] == "ok")


def _check_upgrade(c: Collector, vec: dict[str, Any]) -> None:
    rng = SeededRandom(X(vec["seed"]))
    carriers = T.Carriers(kind=T.CarrierKind(vec["carrier"]))
    client = cover.Http1TunnelClient(
        vec["host"], vec["path"], vec["ticket"], rng, carriers=carriers
    )
    c.same("draws", [d.hex() for d in rng.draws], vec["draws"])
    c.same("request", client.request_bytes.decode("latin-1"), vec["request"])
    c.same("accept", cover.websocket_accept(client.key), vec["sec_websocket_accept"])
    if "response_101" not in vec:
        return
    server = cover.Http1Server()
    actions = server.receive_data(vec["request"].encode("latin-1"), vec["now"])
    if not any(isinstance(a, cover.TunnelRequest) for a in actions):
        c.fail("the server did not see a tunnel request")
        return
    server.accept_tunnel(0, vec["now"])
    c.same("101 answer", server.data_to_send().decode("latin-1"), vec["response_101"])
    try:
        opened = client.receive_data(vec["response_101"].encode("latin-1"))
    except DecodeError as exc:
        c.fail(f"client refused a correct 101 ({exc})")
        return
    c.same("opened", opened is not None, True)


def check_tickets(doc: dict[str, Any]) -> list[Finding]:
    """Tickets from seeds, verification sequences (each refusal reason), upgrade requests."""

    findings: list[Finding] = []
    keys = _keys(doc)
    c = Collector("server_keys")
    for k in doc["server_keys"]:
        c.same(f"key {k['key_id']} public", keys[k["key_id"]].public_bytes.hex(), k["public"])
    findings += c.findings
    for n, vec in enumerate(doc["tickets"]):
        c = Collector(f"ticket {n}")
        _check_build(c, vec)
        findings += c.findings
    for seq in doc["verify"]:
        c = Collector(seq["name"])
        _check_sequence(c, keys, seq)
        findings += c.findings
    for vec in doc["upgrade"]:
        c = Collector(f"upgrade {vec['name']}")
        _check_upgrade(c, vec)
        findings += c.findings
    return findings
