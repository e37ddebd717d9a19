"""Chrome fingerprint fidelity (issue 7; spec/fingerprint.md).

No browser needed: the captured templates in spec/templates/ are the reference.
Our own hellos are captured on loopback (a raw TCP listener reading the first
record; a UDP listener decrypting our first QUIC Initials) and compared.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from qnet.htx import fingerprint as fp
from qnet.htx import quic_initial as qi
from qnet.htx.errors import TemplateError
from qnet.htx.tls import (
    CHROME_TEMPLATE,
    CHROME_WS_TEMPLATE,
    BrowserTemplate,
    TlsClientConfig,
    TlsConnection,
    default_template,
    generate_hellos,
    load_template,
    parse_template,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "templates"
FILES = sorted(SPEC.glob("chromium-*.json"))


def test_templates_are_checked_in_and_packaged() -> None:
    kinds = {p.name.rsplit("-", 2)[-2] + "-" + p.stem.rsplit("-", 1)[-1] for p in FILES}
    assert kinds == {"tcp-h2", "tcp-ws", "quic-h3"}
    for p in FILES:
        packaged = ROOT / "qnet" / "htx" / "templates" / p.name
        assert packaged.read_bytes() == p.read_bytes(), p.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_generated_hellos_match_captured_ja4_and_ja3_varies(path: Path) -> None:
    tpl = load_template(path)
    quic = tpl.hello.quic
    captured = {fp.ja4(h, quic=quic) for h in tpl.captured_hellos}
    assert captured == set(tpl.captured_ja4) and len(captured) == 1
    made = generate_hellos(tpl, 30)
    assert {fp.ja4(h, quic=quic) for h in made} == captured
    assert {fp.ja4_r(h, quic=quic) for h in made} == {
        fp.ja4_r(h, quic=quic) for h in tpl.captured_hellos
    }
    assert len({fp.ja3(h) for h in made}) > 20  # extensions permuted per hello
    assert len({fp.ja3(h) for h in tpl.captured_hellos}) > 1  # as Chrome's are
    if quic:
        return  # QUIC hello sizes also vary with the GREASE transport parameter
    # Same extension set, bodies of the same lengths as some captured hello.
    cap_sizes = {fp.parse_client_hello(h).message_length for h in tpl.captured_hellos}
    for h in made:
        assert fp.parse_client_hello(h).message_length in cap_sizes


def test_published_foxio_example() -> None:
    """The FoxIO ja4 test vector (rust/ja4/src/tls.rs, test_client_stats_into_out)."""
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8]
    ciphers += [0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    exts = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005]
    exts += [0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    hello = build_hello(ciphers, exts, sigs, "example.com", b"h2")
    assert fp.ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert fp.ja4_r(hello) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,"
        "cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,"
        "ff01_0403,0804,0401,0503,0805,0501,0806,0601"
    )


def test_captured_chrome_matches_foxio_sigalg_grease_snapshot() -> None:
    """FoxIO's snapshot sigalg-grease.pcapng (Chrome with GREASE in signature
    algorithms) gives this JA4; our capture of Debian's Chromium gives the same."""
    tpl = default_template("tcp-h2")
    assert tpl.captured_ja4 == ("t13d1517h2_8daaf6152771_cb7bf5808d99",)


def build_hello(
    ciphers: list[int], exts: list[int], sigs: list[int], sni: str, alpn: bytes
) -> bytes:
    def v16(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    bodies = {
        0x0000: v16(b"\x00" + v16(sni.encode())),
        0x0010: v16(bytes([len(alpn)]) + alpn),
        0x000D: v16(b"".join(s.to_bytes(2, "big") for s in sigs)),
        0x002B: b"\x02\x03\x04",
        0x000A: v16(b"\x00\x1d"),
        0x000B: b"\x01\x00",
    }
    blob = b"".join(e.to_bytes(2, "big") + v16(bodies.get(e, b"")) for e in exts)
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + v16(b"".join(c.to_bytes(2, "big") for c in ciphers))
        + b"\x01\x00"
        + v16(blob)
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


# --- our hellos on the wire ------------------------------------------------------------


def first_record_over_tcp(config: TlsClientConfig) -> bytes:
    """Our client's first bytes, read by a raw TCP listener on loopback."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = srv.accept()
        buf = b""
        while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
        got.append(buf)
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    cli = socket.create_connection(srv.getsockname())
    cli.sendall(TlsConnection(config).data_to_send())
    t.join(10)
    cli.close()
    srv.close()
    return got[0]


@pytest.mark.parametrize(
    ("transport", "template"), [("tcp-h2", CHROME_TEMPLATE), ("tcp-ws", CHROME_WS_TEMPLATE)]
)
def test_tcp_hello_on_the_wire(transport: str, template: Any) -> None:
    ref = default_template(transport)
    ja3s = set()
    for _ in range(8):
        record = first_record_over_tcp(
            TlsClientConfig(server_name=ref.server_name, template=template)
        )
        assert record[:3] == b"\x16\x03\x01"
        assert int.from_bytes(record[3:5], "big") in ref.hello_record_lengths
        hello = fp.parse_client_hello(record)
        assert fp.ja4(hello) == ref.captured_ja4[0]
        ja3s.add(fp.ja3(hello))
    assert len(ja3s) > 1


def test_tcp_first_flight_shape_matches_browser() -> None:
    """CCS then a 53-byte Finished record, as every captured Chromium flight starts."""
    from qnet.htx.tls import TlsServerConfig, make_self_signed

    ref = default_template("tcp-h2")
    cert, key = make_self_signed("cover.example")
    c = TlsConnection(TlsClientConfig(server_name="cover.example"))
    s = TlsConnection(TlsServerConfig(certificate_chain=(cert,), private_key=key))
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    flight = c.data_to_send()
    recs = []
    while flight:
        n = int.from_bytes(flight[3:5], "big")
        recs.append((flight[0], n))
        flight = flight[5 + n :]
    for browser in ref.first_flights:
        assert tuple(recs) == browser[: len(recs)]


# --- bad template files ----------------------------------------------------------------


def _good() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FILES[0].read_text())
    return data


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("format"), "format"),
        (lambda d: d["tls"].pop("cipher_suites"), "tls.cipher_suites"),
        (lambda d: d["tls"]["cipher_suites"].__setitem__(1, "x"), "tls.cipher_suites[1]"),
        (lambda d: d["tls"]["extensions"][1].__setitem__("rule", "nope"), "tls.extensions[1].rule"),
        (lambda d: d["tls"].__setitem__("session_id_len", 99), "tls.session_id_len"),
        (lambda d: d["tls"].__setitem__("shuffle_extensions", "yes"), "tls.shuffle_extensions"),
        (lambda d: d["captured"]["hellos"].__setitem__(0, "zz"), "captured.hellos[0]"),
        (lambda d: d.__setitem__("transport", "sctp"), "transport"),
    ],
)
def test_malformed_template_names_the_field(mutate: Any, field: str) -> None:
    data = _good()
    mutate(data)
    with pytest.raises(TemplateError) as info:
        parse_template(json.dumps(data))
    assert info.value.field == field


def test_truncated_template_is_a_typed_error(tmp_path: Path) -> None:
    text = FILES[0].read_text()
    bad = tmp_path / "cut.json"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(TemplateError) as info:
        load_template(bad)
    assert info.value.field == "(file)"
    with pytest.raises(TemplateError):
        load_template(tmp_path / "missing.json")


def test_quic_template_missing_layout_field() -> None:
    path = next(p for p in FILES if "quic" in p.name)
    data = json.loads(path.read_text())
    del data["quic"]["datagram_size"]
    with pytest.raises(TemplateError) as info:
        parse_template(json.dumps(data))
    assert info.value.field == "quic.datagram_size"
    assert isinstance(load_template(path), BrowserTemplate)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.__setitem__("kind", "spread"), "quic.crypto_split.kind"),
        (lambda c: c.__setitem__("head_lengths", [90, 10]), "quic.crypto_split.head_lengths"),
        (lambda c: c.__setitem__("head_lengths", [1]), "quic.crypto_split.head_lengths"),
        (lambda c: c.pop("share_differences"), "quic.crypto_split.share_differences"),
        (
            lambda c: c.__setitem__("share_differences", ["4", 5]),
            "quic.crypto_split.share_differences",
        ),
    ],
)
def test_malformed_crypto_split_names_the_field(mutate: Any, field: str) -> None:
    path = next(p for p in FILES if "quic" in p.name)
    data = json.loads(path.read_text())
    mutate(data["quic"]["crypto_split"])
    with pytest.raises(TemplateError) as info:
        parse_template(json.dumps(data))
    assert info.value.field == field


def test_template_without_crypto_split_still_loads() -> None:
    path = next(p for p in FILES if "quic" in p.name)
    data = json.loads(path.read_text())
    del data["quic"]["crypto_split"]
    tpl = parse_template(json.dumps(data))
    assert tpl.quic is not None and tpl.quic.crypto_split is None


def test_rfc9001_initial_keys() -> None:
    k = qi.initial_keys(bytes.fromhex("8394c8f03e515708"))
    assert k.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert k.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert k.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_protect_then_open_round_trip() -> None:
    keys = qi.initial_keys(b"\x01" * 8)
    frames = [
        qi.Frame("ping"),
        qi.Frame("crypto", offset=5, data=b"abc"),
        qi.Frame("padding", size=40),
    ]
    wire = qi.protect_initial(
        keys=keys,
        dcid=b"\x01" * 8,
        scid=b"",
        token=b"",
        packet_number=7,
        pn_length=2,
        payload=qi.encode_frames(frames),
    )
    (p,) = qi.open_initial_datagram(wire)
    assert p.packet_number == 7 and list(p.frames) == frames
    with pytest.raises(qi.QuicInitialError):
        qi.open_initial_datagram(wire[:-1] + bytes([wire[-1] ^ 1]))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda f: f.__setitem__("control_packet_sizes", [80, 70]), "control_packet_sizes"),
        (lambda f: f.__setitem__("control_stream_bytes", "43"), "control_stream_bytes"),
        (lambda f: f.pop("request_packet_sizes"), "request_packet_sizes"),
        (lambda f: f.__setitem__("request_stream_bytes", [1, True]), "request_stream_bytes"),
        (lambda f: f.__setitem__("request_control_bytes", [1, 2, 3]), "request_control_bytes"),
        (lambda f: f.__setitem__("requests", []), "requests"),
        (lambda f: f["requests"][0].__setitem__("packet_size", 5), "requests[0].packet_size"),
        (lambda f: f["requests"][0]["headers"].__setitem__(0, ["a"]), "requests[0].headers[0]"),
        (
            lambda f: f["requests"][0].__setitem__("headers", [[":method", "GET"]]),
            "requests[0].headers",
        ),
        (lambda f: f.pop("requests"), "requests"),
    ],
)
def test_malformed_first_1rtt_names_the_field(mutate: Any, field: str) -> None:
    path = next(p for p in FILES if "quic" in p.name)
    data = json.loads(path.read_text())
    mutate(data["quic"]["first_1rtt"])
    with pytest.raises(TemplateError) as info:
        parse_template(json.dumps(data))
    assert info.value.field == f"quic.first_1rtt.{field}"


def test_template_without_first_1rtt_still_loads() -> None:
    path = next(p for p in FILES if "quic" in p.name)
    data = json.loads(path.read_text())
    assert parse_template(json.dumps(data)).quic.first_1rtt is not None  # type: ignore[union-attr]
    del data["quic"]["first_1rtt"]
    tpl = parse_template(json.dumps(data))
    assert tpl.quic is not None and tpl.quic.first_1rtt is None
