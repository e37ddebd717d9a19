"""spec/vectors/sphinx.json reproduced byte for byte by every backend."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import load_vectors
from qnet.crypto.drbg import SeededRandom
from qnet.errors import PacketError
from qnet.mix import sphinx as S

V = load_vectors("sphinx.json")
KEYS = [S.MixKey(bytes.fromhex(n["private"])) for n in V["node_keys"]]
IDS = [bytes.fromhex(n["node_id"]) for n in V["node_keys"]]
X = bytes.fromhex


def slot_of(j: dict[str, Any]) -> S.Slot:
    return S.Slot(command=S.Command[j["command"]], delay_us=j["delay_us"], address=X(j["address"]),
                  tag=X(j["tag"]), params=X(j["params"]))


def route_of(vec: dict[str, Any]) -> list[S.RouteHop]:
    return [S.RouteHop(node_id=IDS[r["node"]], public_key=KEYS[r["node"]].public_bytes, slot=slot_of(r["slot"]))
            for r in vec["route"]]


def check_steps(steps: list[dict[str, Any]]) -> None:
    for step in steps:
        result = S.unwrap(X(step["input"]), KEYS[step["node"]])
        assert type(result).__name__ == step["result"]
        for field, want in step.items():
            if field in ("node", "input", "result"):
                continue
            got = getattr(result, field)
            assert (got if isinstance(got, int) else got.hex()) == want, field


def test_node_keys() -> None:
    for n, key in zip(V["node_keys"], KEYS, strict=True):
        assert key.public_bytes.hex() == n["public"]


@pytest.mark.parametrize("vec", V["forward"], ids=lambda v: v["name"])
def test_forward_build(backend: str, vec: dict[str, Any]) -> None:
    rng = SeededRandom(X(vec["seed"]))
    built = S.build_packet(route_of(vec), X(vec["message"]), rng)
    assert [d.hex() for d in rng.draws] == vec["draws"]
    assert [h.okm.hex() for h in built.hops] == [h["okm"] for h in vec["hops"]]
    assert [h.shared.hex() for h in built.hops] == [h["shared"] for h in vec["hops"]]
    assert built.header.filler.hex() == vec["filler"]
    assert built.packet.hex() == vec["packet"]


@pytest.mark.parametrize("vec", V["forward"], ids=lambda v: v["name"])
def test_forward_unwrap(backend: str, vec: dict[str, Any]) -> None:
    check_steps(vec["steps"])
    final = vec["steps"][-1]
    assert X(final["message"]).startswith(X(vec["message"]))


def test_circuit_vector(backend: str) -> None:
    vec = V["circuit"]
    built = S.build_packet(route_of(vec), X(vec["message"]), SeededRandom(X(vec["seed"])))
    assert built.packet.hex() == vec["packet"]
    check_steps(vec["steps"])
    assert [s["hop_secret"] for s in vec["steps"]] == [h["hop_secret"] for h in vec["hops"]]


def test_surb_vector(backend: str) -> None:
    vec = V["surb"]
    path = vec["path"]
    route = S.iter_route([(IDS[i], KEYS[i].public_bytes) for i in path],
                         S.Slot(command=S.Command.SURB_REPLY, address=X(vec["recipient"])), [1000, 2000, 0])
    rng = SeededRandom(X(vec["seed"]))
    surb, secrets, _ = S.create_surb(route, rng)
    assert [d.hex() for d in rng.draws] == vec["draws"]
    assert surb.encode().hex() == vec["surb"]
    assert S.Surb.decode(X(vec["surb"])) == surb
    _, packet = S.surb_reply_packet(surb, X(vec["reply"]))
    assert packet.hex() == vec["packet"]
    check_steps(vec["steps"])
    opened = S.open_surb_reply(secrets, X(vec["payload_at_recipient"]))
    assert opened.hex() == vec["opened_reply"]


@pytest.mark.parametrize("vec", V["negative"], ids=lambda v: v["name"])
def test_negative(backend: str, vec: dict[str, Any]) -> None:
    key = KEYS[vec["node"]]
    packet = X(vec["packet"])
    if vec["name"] == "replay":
        replay: set[bytes] = set()
        first, second = S.process_batch([packet, packet], key, replay)
        assert isinstance(first, S.Relay)
        assert second == S.Drop("replay")
        return
    if vec["error"] is None:
        # Payload tagging at hop 0 is invisible until the last hop.
        fwd3 = next(v for v in V["forward"] if v["name"] == "forward-3-hops")
        result: Any = S.unwrap(packet, key)
        for i in fwd3["path"][1:]:
            assert isinstance(result, S.Relay)
            try:
                result = S.unwrap(result.packet, KEYS[i])
            except PacketError as exc:
                assert exc.reason == "bad_payload" and i == fwd3["path"][-1]
                return
        pytest.fail("tagged payload was delivered")
    with pytest.raises(PacketError) as info:
        S.unwrap(packet, key)
    assert info.value.reason == vec["error"]
    assert S.process(packet, key, set()) == S.Drop(vec["error"])
