"""The client's first records after the TLS handshake follow Chromium's (issue 7;
spec/fingerprint.md §7).

A recording TCP relay sits between our HTX client and a real HTX server on
loopback and notes the (content type, length) of every record the client sends.
The reference is the checked-in template's ``records`` section.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from qnet.htx import transport as T
from qnet.htx.errors import TemplateError
from qnet.htx.first_flight import H2_PREFACE, HttpFlight, parse_http_flight
from qnet.htx.tls import (
    CHROME_TEMPLATE,
    CHROME_WS_TEMPLATE,
    HelloTemplate,
    TlsClientConfig,
    default_template,
    parse_template,
)
from tests.test_htx_transport import Node, roundtrip, serving

H2_REF = default_template("tcp-h2")
WS_REF = default_template("tcp-ws")


def _records(data: bytes) -> list[tuple[int, int]]:
    out = []
    while len(data) >= 5:
        n = int.from_bytes(data[3:5], "big")
        out.append((data[0], n))
        data = data[5 + n :]
    return out


@asynccontextmanager
async def recording_relay(upstream: int, seen: bytearray) -> AsyncIterator[int]:
    """A TCP relay to 127.0.0.1:``upstream``; client→server bytes are appended to ``seen``."""

    async def pump(src: trio.SocketStream, dst: trio.SocketStream, keep: bool) -> None:
        try:
            while data := await src.receive_some(65536):
                if keep:
                    seen.extend(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await dst.aclose()

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", upstream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server, True)
            nursery.start_soon(pump, server, client, False)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handle, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def _dial_and_record(
    template: HelloTemplate, server_name: str
) -> tuple[list[tuple[int, int]], str]:
    seen = bytearray()
    authority = ""

    async def main() -> None:
        nonlocal authority
        node = Node()
        async with serving(node) as port, recording_relay(port, seen) as relay:
            authority = f"{server_name}:{relay}"
            peer = dataclasses.replace(node.peer(relay), server_name=server_name)
            config = TlsClientConfig(server_name=server_name, template=template)
            async with T.dial_tcp(peer, tls_config=config) as link:
                stream = await link.open_stream()
                payload = os.urandom(5000)
                assert await roundtrip(stream, payload) == payload

    trio.run(main)
    return _records(bytes(seen)), authority


def _after_hello(records: list[tuple[int, int]]) -> list[tuple[int, int]]:
    assert records[0][0] == 0x16  # the ClientHello record
    return records[1:]


@pytest.mark.parametrize("server_name", ["qnet-capture.test", "cdn.example-news.org"])
def test_h2_first_flight_on_the_wire(server_name: str) -> None:
    flight = CHROME_TEMPLATE.http_flight
    assert flight is not None and flight.protocol == "h2"
    lengths = set()
    for _ in range(4):
        records, authority = _dial_and_record(CHROME_TEMPLATE, server_name)
        after = _after_hello(records)
        # CCS, Finished, preface+SETTINGS+WINDOW_UPDATE, HEADERS: as Chromium.
        assert after[:3] == [(20, 1), (23, 53), (23, 87)]
        assert after[3][0] == 23
        assert after[3][1] - 17 in flight.request_lengths(authority)
        lengths.add(after[3][1])
        # Chromium's opening record length is in every captured flight.
        assert all(f[2] == (23, 87) for f in H2_REF.first_flights if len(f) > 2)
    assert lengths  # a draw among the browser's lengths (with and without cache-control)


def test_h1_websocket_first_flight_on_the_wire() -> None:
    flight = CHROME_WS_TEMPLATE.http_flight
    assert flight is not None and flight.protocol == "http/1.1"
    records, authority = _dial_and_record(CHROME_WS_TEMPLATE, "qnet-capture.test")
    after = _after_hello(records)
    assert after[:2] == [(20, 1), (23, 53)]
    assert after[2][0] == 23
    assert after[2][1] - 17 in flight.request_lengths(authority)


def test_length_model_gives_back_the_captured_flights() -> None:
    """Fed the capture's own authority and User-Agent, the model reproduces every
    captured HEADERS record length; with a headed browser's User-Agent it is shorter."""
    flight = H2_REF.hello.http_flight
    assert flight is not None
    captured = {f[3][1] for f in H2_REF.first_flights if len(f) > 3}
    assert len(captured) == 2  # with and without cache-control: max-age=0
    raw = flight.request_lengths(flight.authority, headed=False)
    assert {n + 17 for n in raw} == captured
    headed = flight.request_lengths(flight.authority)
    assert all(h < r for h, r in zip(headed, raw, strict=True))
    for ref in (H2_REF, WS_REF):
        assert ref.hello.http_flight is not None
        ua = ref.hello.http_flight.user_agent()
        assert ua is not None and "Headless" not in ua and "Chrome/156" in ua


def test_h2_opening_is_chromiums() -> None:
    flight = CHROME_TEMPLATE.http_flight
    assert flight is not None
    opening = flight.h2_opening()
    assert opening.startswith(H2_PREFACE)
    assert len(opening) + 17 == 87
    # SETTINGS: HEADER_TABLE_SIZE, ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE.
    assert [k for k, _ in flight.settings] == [1, 2, 4, 6]


def test_longer_names_move_the_target_like_the_browser() -> None:
    flight = CHROME_TEMPLATE.http_flight
    assert flight is not None
    short = flight.request_lengths("a.example:443")
    long = flight.request_lengths("a-much-longer-host-name.example:443")
    assert all(b > a for a, b in zip(short, long, strict=True))


# --- bad sections ----------------------------------------------------------------------


TEMPLATE_DIR = Path(T.__file__).resolve().parent / "templates"


def _template_json(transport: str) -> dict[str, Any]:
    """The newest packaged Chromium template for ``transport``, as JSON."""
    newest = max(
        TEMPLATE_DIR.glob(f"chromium-*-{transport}.json"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    data: dict[str, Any] = json.loads(newest.read_text())
    return data


def _h2_template() -> dict[str, Any]:
    return _template_json("tcp-h2")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda h: h.pop("protocol"), "records.http.protocol"),
        (lambda h: h.__setitem__("protocol", "spdy"), "records.http.protocol"),
        (lambda h: h["settings"].__setitem__(0, [1]), "records.http.settings[0]"),
        (lambda h: h.__setitem__("window_update", -1), "records.http.window_update"),
        (lambda h: h["priority"].__setitem__("weight", 0), "records.http.priority.weight"),
        (lambda h: h.__setitem__("requests", []), "records.http.requests"),
        (lambda h: h["requests"][0].pop("length"), "records.http.requests[0].length"),
        (
            lambda h: h["requests"][0]["headers"].__setitem__(2, ["x"]),
            "records.http.requests[0].headers[2]",
        ),
    ],
)
def test_malformed_http_section_names_the_field(mutate: Any, field: str) -> None:
    data = copy.deepcopy(_h2_template())
    mutate(data["records"]["http"])
    with pytest.raises(TemplateError) as info:
        parse_template(json.dumps(data))
    assert info.value.field == field


def test_http_section_parses_alone() -> None:
    section = _h2_template()["records"]["http"]
    assert isinstance(parse_http_flight(section), HttpFlight)
    with pytest.raises(TemplateError):
        parse_http_flight([1, 2])


# --- fuzzing: any mutation of a template gives a template or a TemplateError ------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:6]):
            out += _paths(v, (*prefix, i))
    return out


_TEMPLATES = {kind: _template_json(kind) for kind in ("tcp-h2", "tcp-ws", "quic-h3")}
_PATHS = {kind: [p for p in _paths(t) if p] for kind, t in _TEMPLATES.items()}


@settings(max_examples=int(os.environ.get("QNET_FUZZ_EXAMPLES", "400")), deadline=None)
@given(
    kind=st.sampled_from(sorted(_TEMPLATES)),
    pick=st.integers(min_value=0),
    value=_json_values,
    delete=st.booleans(),
)
def test_fuzzed_templates_are_refused_with_a_typed_error(
    kind: str, pick: int, value: Any, delete: bool
) -> None:
    data = copy.deepcopy(_TEMPLATES[kind])
    path = _PATHS[kind][pick % len(_PATHS[kind])]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        parse_template(json.dumps(data))
    except TemplateError:
        pass


@settings(max_examples=300, deadline=None)
@given(value=_json_values)
def test_fuzzed_http_sections_are_refused_with_a_typed_error(value: Any) -> None:
    try:
        parse_http_flight(value)
    except TemplateError:
        pass
