"""Identities and signed descriptors: vectors, both signatures required, validation, fuzzing."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.dir import descriptor as D
from qnet.dir import encoding as E
from qnet.dir.identity import Identity, Signatures, node_id
from qnet.dir.vectors import check_directory
from qnet.errors import (
    BadSignature,
    DirectoryError,
    IdentityMismatch,
    MalformedDocument,
    StaleDocument,
)

FUZZ = settings(max_examples=150, deadline=None)
DOC = load_vectors("directory.json")
ROOT = Path(__file__).resolve().parent.parent
X = bytes.fromhex
IDENT = Identity(X(DOC["identity"]["ed25519_seed"]), X(DOC["identity"]["mldsa65_seed"]))
DESC = D.decode_body(X(DOC["descriptor"]["body"]))
ENVELOPE = X(DOC["descriptor"]["envelope"])
NOW = DOC["descriptor"]["now"]


def test_vector_file_passes_the_checker() -> None:
    assert check_directory(DOC) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["identity"].__setitem__("node_id", "00" * 32),
        lambda d: d["descriptor"].__setitem__("sig_ed25519", "00" * 64),
        lambda d: d["negative"][0].__setitem__("error", "bad_mldsa65_signature"),
        lambda d: d["negative"][4].__setitem__("now", NOW),
        lambda d: d["encoding"]["negative"][0].__setitem__("cbor", "17"),
    ],
)
def test_checker_notices_a_wrong_vector(mutate: Any) -> None:
    doc = copy.deepcopy(DOC)
    mutate(doc)
    assert check_directory(doc)


def generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.gen_dir_vectors", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generator_reproduces_the_checked_in_file() -> None:
    proc = generator("--check")
    assert proc.returncode == 0, proc.stderr


def test_check_refuses_a_forged_mldsa_signature(tmp_path: Path) -> None:
    doc = copy.deepcopy(DOC)
    sig = bytearray(X(doc["descriptor"]["sig_mldsa65"]))
    sig[0] ^= 1
    doc["descriptor"]["sig_mldsa65"] = sig.hex()
    out = tmp_path / "directory.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    proc = generator("--check", "--out", str(out))
    assert proc.returncode == 1 and "does not verify" in proc.stderr


def test_valid_descriptor_parses_to_the_same_fields() -> None:
    got = D.parse_and_verify(ENVELOPE, NOW)
    assert got == DESC
    assert got.encode() == X(DOC["descriptor"]["body"])
    assert got.node_id == IDENT.node_id == node_id(got.id_ed25519, got.id_mldsa65)


@pytest.mark.parametrize("vec", DOC["negative"], ids=lambda v: v["name"])
def test_negative_vectors(vec: dict[str, Any]) -> None:
    with pytest.raises(DirectoryError) as info:
        D.parse_and_verify(X(vec["envelope"]), vec["now"])
    assert type(info.value).__name__ == vec["class"]
    assert info.value.reason == vec["error"]


def test_both_signatures_are_required() -> None:
    body = DESC.encode()
    good = IDENT.sign(D.DESCRIPTOR_CONTEXT, body)
    other = IDENT.sign(D.DESCRIPTOR_CONTEXT, body + b"x")  # valid signatures, other message
    D.parse_and_verify(D.envelope(body, good), NOW)
    with pytest.raises(BadSignature) as info:
        D.parse_and_verify(D.envelope(body, dataclasses.replace(good, mldsa65=other.mldsa65)), NOW)
    assert info.value.reason == "bad_mldsa65_signature"
    with pytest.raises(BadSignature) as info:
        D.parse_and_verify(D.envelope(body, dataclasses.replace(good, ed25519=other.ed25519)), NOW)
    assert info.value.reason == "bad_ed25519_signature"


def test_signature_is_bound_to_the_descriptor_context() -> None:
    body = DESC.encode()
    sigs = IDENT.sign(b"qnet-dir-v1 vote\x00", body)
    with pytest.raises(BadSignature):
        D.parse_and_verify(D.envelope(body, sigs), NOW)


def test_another_identity_cannot_sign_or_be_substituted() -> None:
    stranger = Identity(bytes(range(32)), bytes(range(1, 33)))
    with pytest.raises(ValueError):
        DESC.sign(stranger)
    # Same body but the stranger's keys: the node id no longer matches.
    forged = dataclasses.replace(
        DESC, id_ed25519=stranger.public.ed25519, id_mldsa65=stranger.public.mldsa65
    )
    body = forged.encode()
    with pytest.raises(IdentityMismatch):
        D.parse_and_verify(D.envelope(body, stranger.sign(D.DESCRIPTOR_CONTEXT, body)), NOW)


def test_fresh_signature_round_trip_and_freshness_window() -> None:
    raw = DESC.sign(IDENT)
    assert D.parse_and_verify(raw, DESC.published + D.MAX_AGE) == DESC
    assert D.parse_and_verify(raw, DESC.published - D.MAX_SKEW) == DESC
    with pytest.raises(StaleDocument):
        D.parse_and_verify(raw, DESC.published + 10, max_age=9)


def test_identity_keeps_its_seeds_out_of_repr() -> None:
    assert "ed25519_seed" not in repr(IDENT)
    assert IDENT.node_id.hex() in repr(IDENT)
    with pytest.raises(ValueError):
        Identity(bytes(31), bytes(32))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"node_id": bytes(31)}, "bad_length"),
        ({"mix_next": DESC.mix_current}, "bad_value"),
        ({"software": ""}, "bad_value"),
        ({"software": "q\nnet"}, "bad_value"),
        ({"bandwidth": -1}, "bad_value"),
        ({"bandwidth": True}, "bad_type"),
        ({"addresses": ()}, "bad_value"),
        ({"roles": (D.Role.RELAY, D.Role.EXIT)}, "not_canonical"),
        ({"roles": (D.Role.EXIT, D.Role.EXIT)}, "not_canonical"),
        ({"family": (DESC.node_id,)}, "bad_value"),
        ({"family": tuple(reversed(DESC.family))}, "not_canonical"),
    ],
)
def test_descriptor_fields_are_checked_when_built(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedDocument) as info:
        dataclasses.replace(DESC, **change)
    assert info.value.reason == reason


def test_exit_policy_first_match_wins() -> None:
    ip = ipaddress.ip_address
    assert DESC.allows_exit(ip("198.51.100.7"), 443)
    assert not DESC.allows_exit(ip("10.1.2.3"), 443)  # rejected before the accept-all
    assert not DESC.allows_exit(ip("198.51.100.7"), 22)  # no rule matches
    assert DESC.allows_exit(ip("2001:db8::1"), 443)
    relay_only = dataclasses.replace(DESC, roles=(D.Role.RELAY,))
    assert not relay_only.allows_exit(ip("198.51.100.7"), 443)


def test_policy_rule_ports_checked() -> None:
    with pytest.raises(MalformedDocument):
        D.PolicyRule(
            action=D.Action.ACCEPT,
            network=ipaddress.ip_network("0.0.0.0/0"),
            port_min=10,
            port_max=9,
        )


@FUZZ
@given(st.data())
def test_mutated_envelopes_raise_only_directory_errors(data: st.DataObject) -> None:
    raw = bytearray(ENVELOPE)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    try:
        D.parse_and_verify(bytes(raw[:cut]), NOW)
    except DirectoryError as exc:
        assert exc.reason
    else:
        assert bytes(raw[:cut]) == ENVELOPE


@FUZZ
@given(st.data())
def test_mutated_bodies_raise_only_malformed(data: st.DataObject) -> None:
    body = E.decode(DESC.encode())
    assert isinstance(body, dict)
    key = data.draw(st.sampled_from(sorted(str(k) for k in body)))
    body[key] = data.draw(
        st.one_of(
            st.none(),
            st.integers(min_value=-5, max_value=2**40),
            st.binary(max_size=40),
            st.text(max_size=10),
            st.lists(st.integers(min_value=0, max_value=3), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
        )
    )
    try:
        D.decode_body(E.encode(body))
    except MalformedDocument as exc:
        assert exc.reason


def test_oversized_envelope_is_refused_before_work() -> None:
    with pytest.raises(MalformedDocument) as info:
        D.parse_and_verify(b"\x00" * (D.ENVELOPE_LIMITS.max_size + 1), NOW)
    assert info.value.reason == "too_large"


def test_unsigned_envelope_shape() -> None:
    sigs = Signatures(ed25519=bytes(64), mldsa65=bytes(3309))
    body, got = D.split_envelope(D.envelope(b"abc", sigs))
    assert body == b"abc" and got == sigs


def test_node_id_commits_to_both_keys() -> None:
    ed, ml = IDENT.public.ed25519, IDENT.public.mldsa65
    assert node_id(ed, ml).hex() == DOC["identity"]["node_id"]
    assert node_id(bytes(32), ml) != node_id(ed, ml)
    assert node_id(ed, bytes(1952)) != node_id(ed, ml)
    with pytest.raises(ValueError):
        node_id(ed, ml[:-1])


# --- server_name ------------------------------------------------------------------------------

_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _is_host_name(name: str) -> bool:
    """The rule of spec/directory.md §5, written out independently of the implementation."""
    if not 1 <= len(name) <= 253:
        return False
    labels = name.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63 or not set(label) <= _LDH:
            return False
        if label.startswith("-") or label.endswith("-"):
            return False
    return not all(c in "0123456789" for c in labels[-1])


def _body_with_name(name: object) -> bytes:
    body = E.decode(DESC.encode())
    assert isinstance(body, dict)
    body["server_name"] = name  # type: ignore[assignment]
    return E.encode(body)


def test_vector_descriptor_carries_its_server_name() -> None:
    assert DESC.server_name == DOC["descriptor"]["fields"]["server_name"]
    assert DESC.to_cbor()["server_name"] == DESC.server_name
    assert D.DESCRIPTOR_VERSION == 2


def test_descriptor_round_trips_with_another_server_name() -> None:
    desc = dataclasses.replace(DESC, server_name="cdn.birch-quartz.com")
    got = D.parse_and_verify(desc.sign(IDENT), NOW)
    assert got == desc and got.server_name == "cdn.birch-quartz.com"
    assert D.decode_body(desc.encode()).server_name == "cdn.birch-quartz.com"


def test_server_name_is_covered_by_the_signatures() -> None:
    raw = DESC.sign(IDENT)
    body, sigs = D.split_envelope(raw)
    swapped = _body_with_name("www.someone-else.org")
    assert swapped != body
    with pytest.raises(BadSignature):
        D.parse_and_verify(D.envelope(swapped, sigs), NOW)


def test_version_1_without_server_name_is_refused_as_a_version() -> None:
    body = E.decode(DESC.encode())
    assert isinstance(body, dict)
    del body["server_name"]
    body["version"] = 1
    with pytest.raises(MalformedDocument) as info:
        D.decode_body(E.encode(body))
    assert info.value.reason == "bad_version"
    body["version"] = 2
    with pytest.raises(MalformedDocument) as info:
        D.decode_body(E.encode(body))
    assert info.value.reason == "missing_field"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "192.0.2.10",
        "10.1",
        "::1",
        "2001:db8::10",
        "[2001:db8::10]",
        "example.net.",
        ".example.net",
        "static..example.net",
        "Static.example.net",
        "static_1.example.net",
        "-static.example.net",
        "static-.example.net",
        "static example.net",
        "st\u00e4tic.example.net",
        "static.example.net\n",
        "a" * 64 + ".net",
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters
        "example.123",
    ],
)
def test_bad_server_names_are_refused(name: str) -> None:
    assert not _is_host_name(name)
    with pytest.raises(MalformedDocument) as info:
        dataclasses.replace(DESC, server_name=name)
    assert info.value.reason == "bad_value"
    with pytest.raises(MalformedDocument) as info:
        D.decode_body(_body_with_name(name))
    assert info.value.reason == "bad_value" and "server_name" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "a",
        "xn--bcher-kva.example",
        "static.amber-harbor.net",
        "1password.com",
        "0.example.io",
        ".".join(["a" * 63] * 3 + ["b" * 61]),  # 253 characters
    ],
)
def test_good_server_names_are_accepted(name: str) -> None:
    assert _is_host_name(name)
    assert D.decode_body(_body_with_name(name)).server_name == name


@pytest.mark.parametrize("value", [b"static.example.net", 7, None, ["a.net"], True])
def test_server_name_must_be_text(value: object) -> None:
    with pytest.raises(MalformedDocument) as info:
        D.decode_body(_body_with_name(value))
    assert info.value.reason == "bad_type" and "server_name" in str(info.value)


_NAME_CHARS = "abz09-.AZ_ :é\n\x00"


@FUZZ
@given(
    st.one_of(
        st.text(alphabet=_NAME_CHARS, max_size=80),
        st.lists(st.text(alphabet="az09-", max_size=64), min_size=1, max_size=6).map(".".join),
        st.ip_addresses().map(str),
        st.text(max_size=40),
    )
)
def test_server_name_accepted_exactly_when_it_is_a_host_name(name: str) -> None:
    try:
        got = D.decode_body(_body_with_name(name))
    except MalformedDocument as exc:
        assert not _is_host_name(name), name
        assert exc.reason == "bad_value" and "server_name" in str(exc)
    else:
        assert _is_host_name(name), name
        assert got.server_name == name
        with pytest.raises(ValueError):
            ipaddress.ip_address(name)


def test_consensus_summary_checks_the_server_name_too() -> None:
    from qnet.dir.vote import NodeSummary, decode_summary

    summary = NodeSummary.of(DESC, bytes(32))
    assert decode_summary(summary.to_cbor()) == summary
    assert decode_summary(summary.to_cbor()).server_name == DESC.server_name
    for bad, reason in (("10.0.0.1", "bad_value"), ("a..b", "bad_value"), (b"a.b", "bad_type")):
        raw = summary.to_cbor()
        raw["server_name"] = bad
        with pytest.raises(MalformedDocument) as info:
            decode_summary(raw)
        assert info.value.reason == reason
    raw = summary.to_cbor()
    del raw["server_name"]
    with pytest.raises(MalformedDocument) as info:
        decode_summary(raw)
    assert info.value.reason == "missing_field"
