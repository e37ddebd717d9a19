"""``qnet-lint hello``: captured ClientHellos against the browser templates."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from qnet.lint.cli import main
from qnet.lint.hello import check_hello

TEMPLATES = Path(__file__).resolve().parents[1] / "spec" / "templates"
TCP = sorted(TEMPLATES.glob("*-tcp-*.json"))
pytestmark = pytest.mark.skipif(not TCP, reason="no TCP hello templates in spec/templates")


def hellos(template: Path) -> list[bytes]:
    return [bytes.fromhex(h) for h in json.loads(template.read_text())["captured"]["hellos"]]


def failing(capture: Path, template: Path) -> set[str]:
    return {r.check.id for r in check_hello(capture, template) if r.status == "fail"}


@pytest.mark.parametrize("template", TCP, ids=lambda p: p.stem)
def test_the_browsers_own_hellos_pass(template: Path, tmp_path: Path) -> None:
    for n, hello in enumerate(hellos(template)):
        cap = tmp_path / f"h{n}.hex"
        cap.write_text(hello.hex())
        assert failing(cap, template) == set(), n


def _cipher_offset(hello: bytes) -> int:
    sid_len = hello[4 + 2 + 32]
    return 4 + 2 + 32 + 1 + sid_len + 2  # first cipher suite


def test_a_changed_cipher_suite_is_caught(tmp_path: Path) -> None:
    template = TCP[0]
    hello = bytearray(hellos(template)[0])
    at = _cipher_offset(hello) + 2  # the first suite after the GREASE slot
    hello[at : at + 2] = b"\x00\x2f"
    cap = tmp_path / "bad.hex"
    cap.write_text(hello.hex())
    bad = failing(cap, template)
    assert "HELLO-CIPHERS-001" in bad and "HELLO-JA4-001" in bad


def test_a_fixed_grease_value_is_caught(tmp_path: Path) -> None:
    template = TCP[0]
    hello = bytearray(hellos(template)[0])
    at = _cipher_offset(hello)
    hello[at : at + 2] = b"\x13\x01"  # the GREASE slot holds a real suite
    cap = tmp_path / "bad.hex"
    cap.write_text(hello.hex())
    assert "HELLO-CIPHERS-001" in failing(cap, template)


def test_the_wrong_template_is_caught(tmp_path: Path) -> None:
    if len(TCP) < 2:
        pytest.skip("one TCP template only")
    cap = tmp_path / "h.hex"
    cap.write_text(hellos(TCP[0])[0].hex())
    assert {"HELLO-JA4-001", "HELLO-EXT-001"} <= failing(cap, TCP[1])


def _pcap(segments: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for seq, payload in enumerate(segments):
        tcp = struct.pack("!HHIIBBHHH", 50000, 443, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
        ip_len = 20 + len(tcp) + len(payload)
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            ip_len,
            0,
            0,
            64,
            6,
            0,
            bytes([10, 0, 0, 1]),
            bytes([10, 0, 0, 2]),
        )
        frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    return out


def test_pcap_capture_split_over_two_segments(tmp_path: Path) -> None:
    template = TCP[0]
    message = hellos(template)[0]
    record = b"\x16\x03\x01" + struct.pack("!H", len(message)) + message
    cap = tmp_path / "hello.pcap"
    cap.write_bytes(_pcap([record[:700], record[700:]]))
    assert failing(cap, template) == set()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "h.hex"
    cap.write_text(hellos(TCP[0])[0].hex())
    assert main(["hello", str(cap), "--template", str(TCP[0]), "--format", "json"]) == 0
    assert '"HELLO-GREASE-001"' in capsys.readouterr().out
    assert main(["hello", str(tmp_path / "missing.hex"), "--template", str(TCP[0])]) == 2
    assert main(["hello", str(cap)]) == 2
