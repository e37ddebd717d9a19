"""HTX access tickets: vectors, hour window, replay, rate limits, carriers, fuzzing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.crypto.drbg import SeededRandom
from qnet.crypto.primitives import X25519Key, random_bytes
from qnet.errors import CryptoError
from qnet.htx import ticket as T
from qnet.lint.ticket_vectors import check_tickets
from qnet.lint.vectors import check_file
from tools import gen_ticket_vectors

DOC = load_vectors("htx_tickets.json")
NOW = 1_767_225_600.0
KEY = X25519Key(bytes(range(1, 33)))
OLD = X25519Key(bytes(range(2, 34)))
PEER = "203.0.113.9"


def verifier(**config: Any) -> T.TicketVerifier:
    return T.TicketVerifier({5: KEY, 4: OLD}, T.TicketConfig(**config))


def fresh(now: float = NOW, key: X25519Key = KEY, key_id: int = 5) -> str:
    return T.build_ticket(key.public_bytes, key_id, now, random_bytes)


# --- vectors -----------------------------------------------------------------------------


def test_vectors() -> None:
    assert check_tickets(DOC) == []
    assert check_file(DOC) == []


def test_vector_file_is_current() -> None:
    assert gen_ticket_vectors.main(["--check"]) == 0


def test_vectors_cover_every_refusal_reason() -> None:
    reasons = {c["reason"] for seq in DOC["verify"] for c in seq["checks"]}
    assert reasons >= T.REASONS | {"ok"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["tickets"][0].__setitem__("ticket", "00" * 32),
        lambda d: d["tickets"][1].__setitem__("carrier", d["tickets"][0]["carrier"]),
        lambda d: d["verify"][4]["checks"][1].__setitem__("reason", "ok"),
        lambda d: d["verify"][0]["checks"][0].__setitem__("reason", "bad_ticket"),
        lambda d: d["upgrade"][0].__setitem__("request", d["upgrade"][1]["request"]),
        lambda d: d["upgrade"][0].__setitem__("response_101", "HTTP/1.1 200 OK\r\n\r\n"),
    ],
)
def test_checker_notices_a_wrong_vector(mutate: Callable[[dict[str, Any]], None]) -> None:
    doc = copy.deepcopy(DOC)
    mutate(doc)
    assert check_tickets(doc)


# --- building ---------------------------------------------------------------------------


def test_layout_and_variable_length() -> None:
    lengths = set()
    for n in range(40):
        parts = T.build_ticket_parts(KEY.public_bytes, 5, NOW, SeededRandom(bytes([n])))
        wire = T.b64url_decode(parts.carrier_value)
        assert wire == parts.wire
        assert wire[0] == T.VERSION and wire[1:33] == parts.client_public and wire[33] == 5
        assert wire[34:50] == parts.nonce and wire[50:82] == parts.ticket
        assert T.PAD_MIN <= len(parts.padding) < T.PAD_MIN + T.PAD_SPAN
        assert "=" not in parts.carrier_value
        lengths.add(len(parts.carrier_value))
    assert len(lengths) > 10


def test_bad_server_key_or_key_id() -> None:
    with pytest.raises(ValueError):
        T.build_ticket(KEY.public_bytes, 256, NOW, random_bytes)
    with pytest.raises(CryptoError):
        T.build_ticket(bytes(31), 1, NOW, random_bytes)
    with pytest.raises(CryptoError):
        T.build_ticket(bytes(32), 1, NOW, random_bytes)  # small order


# --- verification -----------------------------------------------------------------------


def test_accepts_and_names_the_ticket() -> None:
    v = verifier()
    value = fresh()
    verdict = v.check(value, PEER, NOW + 5)
    assert verdict.accepted and verdict.reason == "ok" and verdict.hour == T.hour_of(NOW)
    assert verdict.client_public == T.b64url_decode(value)[1:33]  # type: ignore[index]


def test_previous_key_and_rotation() -> None:
    v = verifier()
    assert v.check(fresh(key=OLD, key_id=4), PEER, NOW).accepted
    v.set_keys({5: KEY})
    assert v.check(fresh(key=OLD, key_id=4), PEER, NOW).reason == "unknown_key"
    # a ticket made for one key id but presented under another fails the MAC
    assert v.check(fresh(key=OLD, key_id=5), PEER, NOW).reason == "bad_ticket"


@pytest.mark.parametrize(
    ("client_offset_hours", "reason"),
    [
        (-3, "bad_ticket"),
        (-2, "stale"),
        (-1, "ok"),
        (0, "ok"),
        (1, "ok"),
        (2, "stale"),
        (3, "bad_ticket"),
    ],
)
def test_hour_window(client_offset_hours: int, reason: str) -> None:
    v = verifier()
    value = fresh(NOW + 1800 + client_offset_hours * 3600)
    assert v.check(value, PEER, NOW + 1800).reason == reason


def test_hour_boundaries() -> None:
    v = verifier()
    value = fresh(NOW)  # hour H
    assert v.check(value, PEER, NOW - 3600).accepted  # server at H-1: ticket is hour+1
    v = verifier()
    assert v.check(value, PEER, NOW + 2 * 3600 - 0.001).accepted  # server at H+1
    assert verifier().check(value, PEER, NOW + 2 * 3600).reason == "stale"  # server at H+2


def test_replay_refused_for_the_whole_window() -> None:
    v = verifier()
    value = fresh(NOW)
    assert v.check(value, PEER, NOW).accepted
    for dt in (1, 600, 3600, 7199):
        assert v.check(value, "198.51.100.1", NOW + dt).reason == "replay"
    # once the ticket's hour has left the window it is stale, and its entry is gone
    assert v.check(value, "198.51.100.1", NOW + 2 * 3600 + 1).reason == "stale"
    assert v.replay_entries == 0


def test_replay_entry_lives_at_least_two_hours() -> None:
    v = verifier()
    value = fresh(NOW + 3600)  # made for hour H+1, presented at the start of H
    assert v.check(value, PEER, NOW).accepted
    assert v.check(value, PEER, NOW + 3 * 3600 - 1).reason == "replay"
    assert v.check(value, PEER, NOW + 3 * 3600 + 1).reason == "stale"


def test_same_client_key_other_hour_is_a_new_ticket() -> None:
    v = verifier()
    eph = random_bytes(32)

    def with_eph(now: float) -> str:
        draws = iter([eph])
        return T.build_ticket(
            KEY.public_bytes, 5, now, lambda n: next(draws) if n == 32 else random_bytes(n)
        )

    assert v.check(with_eph(NOW), PEER, NOW).accepted
    assert v.check(with_eph(NOW), PEER, NOW).reason == "replay"  # new nonce, same (key, hour)
    assert v.check(with_eph(NOW + 3600), PEER, NOW).accepted


def test_replay_memory_is_bounded_and_fails_closed() -> None:
    v = verifier(max_replay_entries=3)
    for _ in range(3):
        assert v.check(fresh(), PEER, NOW).accepted
    assert v.check(fresh(), PEER, NOW).reason == "rate_limited"
    assert v.replay_entries == 3
    assert v.check(fresh(NOW + 4 * 3600), PEER, NOW + 4 * 3600).accepted  # old entries pruned
    assert v.replay_entries == 1


def test_rate_limit_per_ipv4_24() -> None:
    v = verifier(rate_burst=3, rate_per_second=0.1)
    for host in (1, 2, 3):
        assert v.check(None, f"10.1.2.{host}", NOW).reason == "missing"
    assert v.check(fresh(), "10.1.2.200", NOW).reason == "rate_limited"
    assert v.check(fresh(), "10.1.3.1", NOW).accepted
    assert v.check(fresh(), "::ffff:10.1.2.9", NOW).reason == "rate_limited"  # mapped = IPv4
    assert v.check(fresh(), "10.1.2.9", NOW + 10).accepted  # one token back after 10 s


def test_rate_limit_per_ipv6_56() -> None:
    v = verifier(rate_burst=2, rate_per_second=0.1)
    assert v.check(None, "2001:db8:1:2::1", NOW).reason == "missing"
    assert v.check(None, "2001:db8:1:ff:aaaa::1", NOW).reason == "missing"
    assert v.check(fresh(), "2001:db8:1:3::1", NOW).reason == "rate_limited"
    assert v.check(fresh(), "2001:db8:1:100::1", NOW).accepted
    assert v.check(fresh(), "[2001:db8:1:4::1]", NOW).reason == "rate_limited"


def test_global_bucket() -> None:
    v = verifier(global_burst=5, global_rate_per_second=1)
    for n in range(5):
        assert v.check(None, f"10.{n}.0.1", NOW).reason == "missing"
    assert v.check(fresh(), "10.99.0.1", NOW).reason == "rate_limited"
    assert v.check(fresh(), "10.99.0.1", NOW + 1).accepted


def test_prefix_table_is_bounded() -> None:
    v = verifier(max_prefixes=16)
    for n in range(500):
        v.check(None, f"10.{n // 256}.{n % 256}.1", NOW)
    assert v.tracked_prefixes <= 16


@pytest.mark.parametrize(
    ("addr", "prefix"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:aa:bbcc::1", "2001:db8:aa:bb00::/56"),
        ("[2001:db8::1]", "2001:db8::/56"),
        ("fe80::1%eth0", "fe80::/56"),
        ("not an address", "other:not an address"),
    ],
)
def test_source_prefix(addr: str, prefix: str) -> None:
    assert T.source_prefix(addr) == prefix


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        T.TicketConfig(rate_burst=0)
    with pytest.raises(ValueError):
        T.TicketConfig(max_prefixes=0)
    with pytest.raises(TypeError):
        T.TicketVerifier({1: b"x" * 32})  # type: ignore[dict-item]


# --- fuzzing: only a refusal comes out ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=700))
def test_fuzz_text(value: str) -> None:
    verdict = verifier().check(value, PEER, NOW)
    assert not verdict.accepted and verdict.reason in T.REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decoded_bytes(raw: bytes) -> None:
    verdict = verifier().check(T.b64url_encode(raw), PEER, NOW)
    assert not verdict.accepted and verdict.reason in T.REASONS


VALID = T.build_ticket_parts(KEY.public_bytes, 5, NOW, SeededRandom(b"fuzz")).wire


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_fuzz_one_byte_changed(index: int, mask: int) -> None:
    wire = bytearray(VALID)
    wire[index] ^= mask
    verdict = verifier().check(T.b64url_encode(bytes(wire)), PEER, NOW)
    assert not verdict.accepted and verdict.reason in T.REASONS


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID) + 5))
def test_fuzz_truncated_or_extended(n: int) -> None:
    if n == len(VALID):
        return
    wire = VALID[:n] if n < len(VALID) else VALID + bytes(n - len(VALID))
    verdict = verifier().check(T.b64url_encode(wire), PEER, NOW)
    assert not verdict.accepted


def test_padding_only_canonical_base64() -> None:
    value = T.b64url_encode(VALID)
    assert verifier().check(value, PEER, NOW).accepted
    assert verifier().check(value + "=" * (-len(value) % 4), PEER, NOW).reason == "bad_encoding"
    assert verifier().check(value.replace("-", "+"), PEER, NOW).reason in {"bad_encoding", "ok"}


# --- carriers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(T.CarrierKind))
def test_carrier_round_trip(kind: T.CarrierKind) -> None:
    value = fresh()
    placed = T.put_ticket(value, "/app?x=1", T.Carriers(kind=kind))
    headers = [("Host", "example.org"), *placed.headers]
    assert T.extract_ticket(headers, placed.target, placed.body) == value
    assert T.extract_ticket([("Host", "example.org")], "/app?x=1", b"") is None


def test_cookie_among_others_and_split_headers() -> None:
    value = fresh()
    headers = [(b"cookie", b"_ga=GA1.2.3.4; theme=dark"), (b"cookie", f"session={value}".encode())]
    assert T.extract_ticket(headers, b"/") == value
    assert T.extract_ticket([("Cookie", "xsession=1; session2=2")], "/") is None


def test_custom_names() -> None:
    c = T.Carriers(kind=T.CarrierKind.QUERY, query_name="v", cookie_name="sid")
    placed = T.put_ticket("abc", "/", c)
    assert placed.target == "/?v=abc"
    assert T.extract_ticket([("Cookie", "sid=zz")], "/", carriers=c) == "zz"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=200)), max_size=6),
    st.binary(max_size=200),
    st.binary(max_size=200),
)
def test_fuzz_extract(headers: list[tuple[bytes, bytes]], target: bytes, body: bytes) -> None:
    headers = [*headers, (b"content-type", b"application/x-www-form-urlencoded")]
    out = T.extract_ticket(headers, target, body)
    assert out is None or isinstance(out, str)
