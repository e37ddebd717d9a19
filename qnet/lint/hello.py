"""``qnet-lint hello CAPTURE --template T``: one captured ClientHello against a browser template.

The capture is hex (whitespace ignored), raw bytes, or a classic pcap file
(Ethernet or raw IP, IPv4 or IPv6, TCP; the first ClientHello found, reassembled
from the following segments of the same flow). The template is a
``qnet-hello-template/1`` file (``spec/templates/``). Fingerprints come from
``qnet.htx.fingerprint``; the field-by-field comparison is here: cipher and
extension lists with their GREASE slots, the extension set and the positions the
browser never permutes, each extension's body by the template's rule, the GREASE
equal/differ rules, and the hello's length against the lengths the browser uses.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from qnet.htx import fingerprint as fp
from qnet.lint.report import Check, Result, failed, passed

TL: Final = "spec/htx-tls.md §4"
CHECKS: Final[dict[str, Check]] = {
    c.id: c
    for c in [
        Check("HELLO-PARSE-001", TL, "the capture holds one well-formed ClientHello"),
        Check("HELLO-JA4-001", TL, "the JA4 equals the browser's"),
        Check("HELLO-VERSION-001", TL, "legacy version and session id length"),
        Check("HELLO-CIPHERS-001", TL, "cipher suites in order, GREASE where the browser has it"),
        Check("HELLO-EXT-001", TL, "the extension set, and the positions never permuted"),
        Check("HELLO-EXTBODY-001", TL, "each extension's body follows the template's rule"),
        Check("HELLO-GREASE-001", TL, "GREASE values: which are equal and which differ"),
        Check("HELLO-LEN-001", TL, "the hello's length is one the browser produces"),
    ]
}
GREASE: Final = "GREASE"


class CaptureError(Exception):
    """The capture file holds no ClientHello that can be read."""


def load_capture(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
    ):
        return _from_pcap(raw)
    try:
        text = raw.decode("ascii")
        return bytes.fromhex("".join(text.split()))
    except (UnicodeDecodeError, ValueError):
        return raw


def _from_pcap(raw: bytes) -> bytes:
    endian = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", raw[20:24])[0]
    off = 24
    flows: dict[tuple[bytes, bytes, int, int], bytearray] = {}
    while off + 16 <= len(raw):
        incl = struct.unpack(endian + "I", raw[off + 8 : off + 12])[0]
        pkt = raw[off + 16 : off + 16 + incl]
        off += 16 + incl
        seg = _tcp_payload(pkt, linktype)
        if seg is None:
            continue
        key, payload = seg
        buf = flows.get(key)
        if buf is None:
            if payload[:1] != b"\x16" or payload[1:2] != b"\x03":
                continue
            buf = flows[key] = bytearray()
        buf += payload
        try:
            fp.parse_client_hello(bytes(buf))
        except fp.HelloParseError:
            continue
        return bytes(buf)
    raise CaptureError("no complete TLS ClientHello in the pcap")


def _tcp_payload(pkt: bytes, linktype: int) -> tuple[tuple[bytes, bytes, int, int], bytes] | None:
    if linktype == 1:  # Ethernet
        if len(pkt) < 14:
            return None
        ethertype, pkt = struct.unpack("!H", pkt[12:14])[0], pkt[14:]
        if ethertype == 0x8100 and len(pkt) >= 4:  # one VLAN tag
            ethertype, pkt = struct.unpack("!H", pkt[2:4])[0], pkt[4:]
    elif linktype in (101, 12, 228, 229):  # raw IP
        ethertype = 0x0800 if pkt[:1] and pkt[0] >> 4 == 4 else 0x86DD
    else:
        return None
    if ethertype == 0x0800 and len(pkt) >= 20 and pkt[9] == 6:
        ihl = (pkt[0] & 0x0F) * 4
        src, dst, tcp = pkt[12:16], pkt[16:20], pkt[ihl:]
    elif ethertype == 0x86DD and len(pkt) >= 40 and pkt[6] == 6:
        src, dst, tcp = pkt[8:24], pkt[24:40], pkt[40:]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport = struct.unpack("!HH", tcp[:4])
    payload = tcp[(tcp[12] >> 4) * 4 :]
    return ((src, dst, sport, dport), payload) if payload else None


# --- field parsers for extension bodies -------------------------------------------------------


def _u16s(b: bytes) -> list[int]:
    return [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b) - 1, 2)]


def _vec(b: bytes, n: int) -> bytes:
    size = int.from_bytes(b[:n], "big")
    if len(b) != n + size:
        raise ValueError("vector length does not match the body")
    return b[n:]


def _names(b: bytes) -> list[str]:
    out, i = [], 0
    while i < len(b):
        n = b[i]
        out.append(b[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return out


def _key_shares(b: bytes) -> list[tuple[int, int]]:
    body, out, i = _vec(b, 2), [], 0
    while i + 4 <= len(body):
        group, n = struct.unpack("!HH", body[i : i + 4])
        out.append((group, n))
        i += 4 + n
    return out


def _slots(got: list[int], want: list[Any]) -> str | None:
    """Compare a list with GREASE slots; the reason it differs, or ``None``."""
    if len(got) != len(want):
        return f"{len(got)} entries, want {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w == GREASE:
            if not fp.is_grease(g):
                return f"entry {i} is 0x{g:04x}, want a GREASE value"
        elif g != w:
            return f"entry {i} is 0x{g:04x}, want 0x{int(w):04x}"
    return None


# --- the comparison ---------------------------------------------------------------------------


class _Compare:
    def __init__(self, hello: fp.ParsedHello, tpl: dict[str, Any], subject: str) -> None:
        self.h, self.t, self.tls = hello, tpl, tpl["tls"]
        self.subject = subject
        self.results: list[Result] = []

    def verdict(self, cid: str, problems: list[str]) -> None:
        check = CHECKS[cid]
        if problems:
            self.results.append(failed(check, self.subject, "; ".join(problems[:3])))
        else:
            self.results.append(passed(check, self.subject))

    def run(self) -> list[Result]:
        h, t = self.h, self.tls
        want_ja4 = self.t.get("captured", {}).get("ja4", [])
        got = fp.ja4(h)
        self.verdict("HELLO-JA4-001", [] if got in want_ja4 else [f"JA4 {got}, want {want_ja4}"])
        ver = []
        if h.legacy_version != t["legacy_version"]:
            ver.append(f"legacy version 0x{h.legacy_version:04x}, want 0x{t['legacy_version']:04x}")
        if len(h.session_id) != t["session_id_len"]:
            ver.append(f"session id {len(h.session_id)} bytes, want {t['session_id_len']}")
        self.verdict("HELLO-VERSION-001", ver)
        why = _slots(list(h.cipher_suites), t["cipher_suites"])
        self.verdict("HELLO-CIPHERS-001", [f"cipher suites: {why}"] if why else [])
        self.verdict("HELLO-EXT-001", self._extensions())
        self.verdict("HELLO-EXTBODY-001", self._bodies())
        self.verdict("HELLO-GREASE-001", self._grease())
        lengths = self.t.get("records", {}).get("hello_record_lengths", [])
        ok = not lengths or h.message_length in lengths
        self.verdict(
            "HELLO-LEN-001", [] if ok else [f"{h.message_length} bytes, want one of {lengths}"]
        )
        return self.results

    def _kinds(self) -> list[Any]:
        return [GREASE if fp.is_grease(x) else x for x in self.h.extension_types]

    def _extensions(self) -> list[str]:
        want = [e["type"] for e in self.tls["extensions"]]
        got = self._kinds()
        problems = []
        if sorted(map(str, got)) != sorted(map(str, want)):
            extra = [x for x in got if x not in want]
            missing = [x for x in want if x not in got]
            problems.append(f"extension set differs (extra {extra}, missing {missing})")
        elif not self.tls.get("shuffle_extensions"):
            if got != want:
                problems.append("extension order differs and the browser does not permute")
        else:
            for pos in self.tls.get("pinned_positions", []):
                if pos < len(got) and got[pos] != want[pos]:
                    problems.append(f"position {pos} holds {got[pos]}, want {want[pos]}")
        return problems

    def _bodies(self) -> list[str]:
        t, out = self.tls, []
        rules: dict[str, Callable[[bytes], str | None]] = {
            "supported_versions": lambda b: _slots(_u16s(_vec(b, 1)), t["supported_versions"]),
            "supported_groups": lambda b: _slots(_u16s(_vec(b, 2)), t["supported_groups"]),
            "signature_algorithms": lambda b: _slots(_u16s(_vec(b, 2)), t["signature_algorithms"]),
            "ec_point_formats": lambda b: _same(list(_vec(b, 1)), t["ec_point_formats"]),
            "psk_key_exchange_modes": lambda b: _same(list(_vec(b, 1)), t["psk_modes"]),
            "alpn": lambda b: _same(_names(_vec(b, 2)), t["alpn"]),
            "application_settings": lambda b: _same(_names(_vec(b, 2)), t["alps_protocols"]),
            "compress_certificate": lambda b: _same(_u16s(_vec(b, 1)), t["compress_certificate"]),
            "key_share": self._key_share,
            "server_name": lambda b: None if self.h.server_name else "no host name",
            "encrypted_client_hello_grease": self._ech,
            "grease": lambda b: _same(b.hex(), None, t.get("grease_extension_bodies", [])),
        }
        opaque = t.get("opaque_extensions", {})
        by_type = {str(e["type"]): e["rule"] for e in t["extensions"]}
        for ext, body in self.h.extensions:
            key = GREASE if fp.is_grease(ext) else str(ext)
            rule = by_type.get(key)
            if rule is None:
                continue  # reported by HELLO-EXT-001
            try:
                if rule == "opaque":
                    why = _same(body.hex(), opaque.get(key))
                else:
                    check = rules.get(rule)
                    why = check(body) if check else None
            except (ValueError, IndexError, KeyError) as exc:
                why = f"unreadable ({exc})"
            if why:
                out.append(f"extension {key} ({rule}): {why}")
        return out

    def _key_share(self, body: bytes) -> str | None:
        shares = _key_shares(body)
        why = _slots([g for g, _ in shares], self.tls["key_share_groups"])
        if why:
            return why
        lengths = self.tls["key_share_lengths"]
        for g, n in shares:
            want = lengths.get(GREASE if fp.is_grease(g) else str(g))
            if want is not None and n != want:
                return f"group 0x{g:04x} share is {n} bytes, want {want}"
        return None

    def _ech(self, body: bytes) -> str | None:
        ech = self.tls.get("ech")
        if not ech or len(body) < 10:
            return None if not ech else "too short"
        # type u8 (0 outer) ‖ kdf u16 ‖ aead u16 ‖ config_id u8 ‖ enc<2> ‖ payload<2>
        kdf, aead = struct.unpack("!HH", body[1:5])
        enc_len = int.from_bytes(body[6:8], "big")
        payload_len = int.from_bytes(body[8 + enc_len : 10 + enc_len], "big")
        if (kdf, aead) != (ech["kdf"], ech["aead"]) or enc_len != ech["enc_length"]:
            want = f"{ech['kdf']}/{ech['aead']}/{ech['enc_length']}"
            return f"kdf/aead/enc {kdf}/{aead}/{enc_len}, want {want}"
        if payload_len not in ech["payload_lengths"]:
            return f"payload {payload_len} bytes, want one of {ech['payload_lengths']}"
        return None

    def _grease_values(self) -> dict[str, int | None]:
        h = self.h

        def first(values: Any) -> int | None:
            return next((v for v in values if fp.is_grease(v)), None)

        exts = [t for t in h.extension_types if fp.is_grease(t)]
        ks = h.body(51)
        return {
            "cipher": first(h.cipher_suites),
            "group": first(h.supported_groups),
            "key_share": first(g for g, _ in _key_shares(ks)) if ks else None,
            "version": first(h.supported_versions),
            "signature_algorithm": first(h.signature_algorithms),
            "extension1": exts[0] if exts else None,
            "extension2": exts[1] if len(exts) > 1 else None,
        }

    def _grease(self) -> list[str]:
        try:
            v = self._grease_values()
        except (ValueError, IndexError) as exc:
            return [f"unreadable ({exc})"]
        out = []
        for a, b in self.tls.get("grease_same", []):
            if v.get(a) is not None and v.get(a) != v.get(b):
                out.append(f"{a} and {b} GREASE differ; the browser uses one value")
        for a, b in self.tls.get("grease_differ", []):
            if v.get(a) is not None and v.get(a) == v.get(b):
                out.append(
                    f"{a} and {b} GREASE are both 0x{v[a]:04x}; the browser draws them apart"
                )
        return out


def _same(got: Any, want: Any, one_of: list[Any] | None = None) -> str | None:
    if one_of is not None:
        return None if got in one_of else f"{got!r:.40}, want one of {one_of}"
    return None if got == want else f"{got!r:.60}, want {want!r:.60}"


def check_hello(capture: Path, template: Path) -> list[Result]:
    """Every HELLO-* check of ``capture`` against ``template``; ``CaptureError``/``OSError``/
    ``ValueError`` when the files cannot be read at all (a usage error)."""
    tpl = json.loads(template.read_text())
    if not isinstance(tpl, dict) or "tls" not in tpl:
        raise ValueError(f"{template} is not a hello template")
    subject = f"{capture.name} vs {template.name}"
    data = load_capture(capture)
    try:
        hello = fp.parse_client_hello(data)
    except fp.HelloParseError as exc:
        return [failed(CHECKS["HELLO-PARSE-001"], subject, f"not a ClientHello: {exc}")]
    return [passed(CHECKS["HELLO-PARSE-001"], subject), *_Compare(hello, tpl, subject).run()]
