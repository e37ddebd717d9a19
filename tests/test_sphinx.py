"""Sphinx behaviour: round trips, tamper and replay detection, fuzzed decoders."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnet.constants import HEADER_LEN, MESSAGE_LEN, PACKET_LEN
from qnet.errors import MalformedPacket, PacketError
from qnet.mix import sphinx as S

KEYS = [S.MixKey(bytes([i + 1]) * 32) for i in range(5)]
IDS = [bytes([0xA0 + i]) * 32 for i in range(5)]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hops(n: int) -> list[tuple[bytes, bytes]]:
    return [(IDS[i], KEYS[i].public_bytes) for i in range(n)]


def deliver(tag: bytes = b"t" * 16) -> S.Slot:
    return S.Slot(command=S.Command.DELIVER, tag=tag)


def run_path(packet: bytes, n: int) -> S.Unwrapped:
    result: S.Unwrapped | None = None
    for i in range(n):
        result = S.unwrap(packet, KEYS[i])
        if isinstance(result, (S.Relay, S.CircuitExtend)):
            assert result.next_hop == IDS[i + 1]
            packet = result.packet
            assert len(packet) == PACKET_LEN
    assert result is not None
    return result


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_round_trip_every_length(backend: str, n: int) -> None:
    msg = os.urandom(MESSAGE_LEN)
    built = S.build_packet(S.mix_route(hops(n), deliver(), list(range(n))), msg)
    result = run_path(built.packet, n)
    assert isinstance(result, S.Deliver) and result.message == msg and result.tag == b"t" * 16


def test_replay_tags_match_sender_view(backend: str) -> None:
    built = S.build_packet(S.mix_route(hops(3), deliver()), b"x")
    seen: set[bytes] = set()
    packet = built.packet
    for i, hop in enumerate(built.hops):
        r = S.process(packet, KEYS[i], seen)
        assert not isinstance(r, S.Drop)
        assert r.replay_tag == hop.replay_tag
        packet = getattr(r, "packet", packet)
    assert len(seen) == 3


def test_process_refuses_replay_and_keeps_serving(backend: str) -> None:
    a = S.build_packet(S.mix_route(hops(2), deliver()), b"a").packet
    b = S.build_packet(S.mix_route(hops(2), deliver()), b"b").packet
    seen: set[bytes] = set()
    results = S.process_batch([a, b"junk", a, b], KEYS[0], seen)
    assert isinstance(results[0], S.Relay)
    assert results[1] == S.Drop("bad_length")
    assert results[2] == S.Drop("replay")
    assert isinstance(results[3], S.Relay)


def test_slot_must_be_terminal_only_at_the_end() -> None:
    with pytest.raises(ValueError):
        S.build_packet(
            [
                S.RouteHop(
                    node_id=IDS[0],
                    public_key=KEYS[0].public_bytes,
                    slot=S.Slot(command=S.Command.RELAY),
                )
            ],
            b"",
        )
    with pytest.raises(ValueError):
        S.build_packet(S.mix_route(hops(5) + hops(1), deliver()), b"")
    with pytest.raises(ValueError):
        S.encode_message(bytes(MESSAGE_LEN + 1))


def test_hop_cannot_see_its_position(backend: str) -> None:
    # The routing bytes a hop forwards are the same length whatever the path length,
    # and the last hop's leftover routing bytes are not the zeros a naive sender leaves.
    r1 = S.unwrap(S.build_packet(S.mix_route(hops(1), deliver()), b"").packet, KEYS[0])
    r5 = S.unwrap(S.build_packet(S.mix_route(hops(5), deliver()), b"").packet, KEYS[0])
    assert isinstance(r1, S.Deliver) and isinstance(r5, S.Relay)
    assert len(r5.packet) == PACKET_LEN


@FUZZ
@given(where=st.integers(min_value=0, max_value=HEADER_LEN * 8 - 1))
def test_any_header_bit_flip_is_caught(where: int) -> None:
    packet = bytearray(_PACKET)
    packet[where // 8] ^= 1 << (where % 8)
    with pytest.raises(PacketError) as info:
        S.unwrap(bytes(packet), KEYS[0])
    assert info.value.reason in ("bad_mac", "bad_point")


@FUZZ
@given(where=st.integers(min_value=HEADER_LEN * 8, max_value=PACKET_LEN * 8 - 1))
def test_any_payload_bit_flip_destroys_the_message(where: int) -> None:
    packet = bytearray(_PACKET)
    packet[where // 8] ^= 1 << (where % 8)
    with pytest.raises(PacketError) as info:
        run_path(bytes(packet), 3)
    assert info.value.reason == "bad_payload"


_PACKET = S.build_packet(S.mix_route(hops(3), deliver()), b"fuzz target").packet


@FUZZ
@given(data=st.binary(max_size=PACKET_LEN + 10))
def test_unwrap_fuzz_only_typed_errors(data: bytes) -> None:
    try:
        S.unwrap(data, KEYS[0])
    except PacketError:
        pass


@FUZZ
@given(data=st.binary(min_size=PACKET_LEN, max_size=PACKET_LEN))
def test_process_fuzz_never_raises(data: bytes) -> None:
    result = S.process(data, KEYS[0], set())
    assert isinstance(result, S.Drop)


@FUZZ
@given(raw=st.binary(min_size=96, max_size=96))
def test_parse_slot_fuzz(raw: bytes) -> None:
    try:
        slot, alpha, gamma = S.parse_slot(raw)
    except MalformedPacket as exc:
        assert exc.reason in ("bad_command", "bad_slot")
    else:
        assert slot.encode(alpha, gamma) == raw


@FUZZ
@given(
    command=st.sampled_from(list(S.Command)),
    delay=st.integers(0, 2**32 - 1),
    address=st.binary(min_size=32, max_size=32),
    tag=st.binary(min_size=16, max_size=16),
    params=st.binary(min_size=8, max_size=8),
    alpha=st.binary(min_size=32, max_size=32),
    gamma=st.binary(min_size=16, max_size=16),
)
def test_slot_round_trip(
    command: S.Command,
    delay: int,
    address: bytes,
    tag: bytes,
    params: bytes,
    alpha: bytes,
    gamma: bytes,
) -> None:
    try:
        slot = S.Slot(command=command, delay_us=delay, address=address, tag=tag, params=params)
    except ValueError:
        return
    raw = slot.encode(alpha, gamma)
    parsed, a, g = S.parse_slot(raw)
    assert parsed == slot
    if command.relaying:
        assert (a, g) == (alpha, gamma)


@FUZZ
@given(data=st.binary(max_size=700))
def test_surb_decode_fuzz(data: bytes) -> None:
    try:
        surb = S.Surb.decode(data)
    except MalformedPacket as exc:
        assert exc.reason == "bad_surb"
    else:
        assert surb.encode() == data


def test_surb_round_trip_and_tamper(backend: str) -> None:
    route = S.mix_route(hops(3), S.Slot(command=S.Command.SURB_REPLY, address=b"c" * 32))
    surb, secrets, _ = S.create_surb(route)
    first, packet = S.surb_reply_packet(S.Surb.decode(surb.encode()), b"hello back")
    assert first == IDS[0]
    result = run_path(packet, 3)
    assert isinstance(result, S.SurbReply) and result.surb_id == secrets.surb_id
    assert result.recipient == b"c" * 32
    assert S.open_surb_reply(secrets, result.payload).startswith(b"hello back")
    tampered = bytearray(result.payload)
    tampered[77] ^= 4
    with pytest.raises(PacketError) as info:
        S.open_surb_reply(secrets, bytes(tampered))
    assert info.value.reason == "bad_payload"


def test_circuit_commands(backend: str) -> None:
    route = [
        S.RouteHop(
            node_id=IDS[0],
            public_key=KEYS[0].public_bytes,
            slot=S.Slot(command=S.Command.CIRCUIT_EXTEND, params=b"p" * 8),
        ),
        S.RouteHop(
            node_id=IDS[1],
            public_key=KEYS[1].public_bytes,
            slot=S.Slot(command=S.Command.CIRCUIT_END, params=b"q" * 8),
        ),
    ]
    built = S.build_packet(route, b"create")
    first = S.unwrap(built.packet, KEYS[0])
    assert isinstance(first, S.CircuitExtend) and first.params == b"p" * 8
    assert first.hop_secret == built.hops[0].hop_secret
    last = S.unwrap(first.packet, KEYS[1])
    assert isinstance(last, S.CircuitEnd) and last.hop_secret == built.hops[1].hop_secret
    assert last.message.startswith(b"create")
