"""ClientHello fingerprints: JA3, JA4 and JA4_r (spec/fingerprint.md).

Pure functions over the bytes of one ClientHello handshake message (the 4-byte
handshake header included; ``parse_client_hello`` also accepts a whole TLS
record). They are what a censor computes, and what our tests compare between
the browser's captured hellos and the hellos ``write_client_hello`` makes.

* JA3 (Salesforce): ``version,ciphers,extensions,groups,point_formats`` in
  decimal, GREASE values dropped, lists joined by ``-``; the hash is MD5.
* JA4 (FoxIO, ``ja4/technical_details/JA4.md``): ``a_b_c`` with
  ``a`` = transport (``t``/``q``) ‖ TLS version ‖ ``d``/``i`` (SNI or not) ‖
  cipher count ‖ extension count ‖ first and last character of the first ALPN;
  ``b`` = first 12 hex of SHA-256 of the sorted cipher list; ``c`` = first 12
  hex of SHA-256 of the sorted extension list without SNI and ALPN, ``_``, the
  signature algorithms in their order. ``JA4_r`` is the same with the lists in
  clear instead of hashed.

Malformed input raises ``HelloParseError`` (a ``DecodeError``) naming the part.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from qnet.errors import DecodeError

__all__ = [
    "HelloParseError",
    "ParsedHello",
    "is_grease",
    "ja3",
    "ja3_string",
    "ja4",
    "ja4_r",
    "parse_client_hello",
]

EXT_SERVER_NAME: Final = 0x0000
EXT_SUPPORTED_GROUPS: Final = 0x000A
EXT_EC_POINT_FORMATS: Final = 0x000B
EXT_SIGNATURE_ALGORITHMS: Final = 0x000D
EXT_ALPN: Final = 0x0010
EXT_SUPPORTED_VERSIONS: Final = 0x002B
EXT_QUIC_TRANSPORT_PARAMETERS: Final = 0x0039

_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}


class HelloParseError(DecodeError):
    """The bytes are not a well-formed ClientHello; ``reason`` names the part."""


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE: 0x?A?A with both bytes equal."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


class _Reader:
    __slots__ = ("data", "pos", "where")

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.pos = 0
        self.where = where

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloParseError(what, f"truncated in {self.where}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vec(self, size: int, what: str) -> bytes:
        n = int.from_bytes(self.take(size, what), "big")
        return self.take(n, what)

    def done(self) -> bool:
        return self.pos == len(self.data)


def _u16_list(body: bytes, what: str) -> tuple[int, ...]:
    if len(body) % 2:
        raise HelloParseError(what, "odd length")
    return tuple(int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2))


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedHello:
    """The fields of a ClientHello that fingerprints and layout checks read."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]  # (type, body) in wire order
    message_length: int  # the handshake message, 4-byte header included

    @property
    def extension_types(self) -> tuple[int, ...]:
        return tuple(t for t, _ in self.extensions)

    def body(self, ext: int) -> bytes | None:
        for t, b in self.extensions:
            if t == ext:
                return b
        return None

    @property
    def server_name(self) -> str | None:
        body = self.body(EXT_SERVER_NAME)
        if body is None:
            return None
        r = _Reader(_Reader(body, "server_name").vec(2, "server_name"), "server_name")
        while not r.done():
            kind = r.u8("server_name")
            name = r.vec(2, "server_name")
            if kind == 0:
                return name.decode("ascii", "replace")
        return None

    @property
    def alpn(self) -> tuple[bytes, ...]:
        body = self.body(EXT_ALPN)
        if body is None:
            return ()
        r = _Reader(_Reader(body, "alpn").vec(2, "alpn"), "alpn")
        out = []
        while not r.done():
            out.append(r.vec(1, "alpn"))
        return tuple(out)

    @property
    def supported_versions(self) -> tuple[int, ...]:
        body = self.body(EXT_SUPPORTED_VERSIONS)
        if body is None:
            return ()
        return _u16_list(_Reader(body, "supported_versions").vec(1, "supported_versions"), "sv")

    @property
    def supported_groups(self) -> tuple[int, ...]:
        body = self.body(EXT_SUPPORTED_GROUPS)
        if body is None:
            return ()
        return _u16_list(_Reader(body, "supported_groups").vec(2, "supported_groups"), "groups")

    @property
    def ec_point_formats(self) -> tuple[int, ...]:
        body = self.body(EXT_EC_POINT_FORMATS)
        if body is None:
            return ()
        return tuple(_Reader(body, "ec_point_formats").vec(1, "ec_point_formats"))

    @property
    def signature_algorithms(self) -> tuple[int, ...]:
        body = self.body(EXT_SIGNATURE_ALGORITHMS)
        if body is None:
            return ()
        r = _Reader(body, "signature_algorithms")
        return _u16_list(r.vec(2, "signature_algorithms"), "signature_algorithms")


def parse_client_hello(data: bytes) -> ParsedHello:
    """Parse a ClientHello message, or a TLS handshake record (type 22) holding one.

    Raises ``HelloParseError`` for anything malformed or truncated.
    """
    data = bytes(data)
    if len(data) >= 5 and data[0] == 22 and data[1] == 3:
        # A record: the hello may span several records of type 22.
        joined = bytearray()
        r = _Reader(data, "record")
        while not r.done():
            if r.u8("record type") != 22:
                raise HelloParseError("record type", "not a handshake record")
            r.take(2, "record version")
            joined += r.vec(2, "record length")
        data = bytes(joined)
    r = _Reader(data, "handshake header")
    if r.u8("handshake type") != 1:
        raise HelloParseError("handshake type", "not a ClientHello")
    body = r.vec(3, "handshake length")
    length = 4 + len(body)
    h = _Reader(body, "ClientHello")
    legacy_version = h.u16("legacy_version")
    random = h.take(32, "random")
    session_id = h.vec(1, "session_id")
    suites = _u16_list(h.vec(2, "cipher_suites"), "cipher_suites")
    compression = h.vec(1, "compression_methods")
    exts: list[tuple[int, bytes]] = []
    if not h.done():
        e = _Reader(h.vec(2, "extensions"), "extensions")
        while not e.done():
            exts.append((e.u16("extension type"), e.vec(2, "extension body")))
    if not h.done():
        raise HelloParseError("trailing bytes", "after the extensions")
    return ParsedHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=suites,
        compression_methods=compression,
        extensions=tuple(exts),
        message_length=length,
    )


def _hello(hello: ParsedHello | bytes) -> ParsedHello:
    return hello if isinstance(hello, ParsedHello) else parse_client_hello(hello)


# --- JA3 ----------------------------------------------------------------------------


def ja3_string(hello: ParsedHello | bytes) -> str:
    """The JA3 text: decimal fields, GREASE removed, extensions in wire order."""
    h = _hello(hello)

    def join(values: tuple[int, ...]) -> str:
        return "-".join(str(v) for v in values if not is_grease(v))

    return ",".join(
        [
            str(h.legacy_version),
            join(h.cipher_suites),
            join(h.extension_types),
            join(h.supported_groups),
            "-".join(str(v) for v in h.ec_point_formats),
        ]
    )


def ja3(hello: ParsedHello | bytes) -> str:
    """MD5 hex of ``ja3_string``."""
    return hashlib.md5(ja3_string(hello).encode(), usedforsecurity=False).hexdigest()


# --- JA4 ----------------------------------------------------------------------------


def _alnum(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A


def _ja4_parts(h: ParsedHello, quic: bool | None) -> tuple[str, list[str], list[str], list[str]]:
    if quic is None:  # as FoxIO's tool decides: the hello carries QUIC transport parameters
        quic = EXT_QUIC_TRANSPORT_PARAMETERS in h.extension_types
    versions = [v for v in h.supported_versions if not is_grease(v)]
    version = max(versions) if versions else h.legacy_version
    ciphers = [c for c in h.cipher_suites if not is_grease(c)]
    exts = [t for t in h.extension_types if not is_grease(t)]
    alpn = h.alpn
    if not alpn or not alpn[0]:
        alpn_code = "00"
    else:
        first = alpn[0]
        if _alnum(first[0]) and _alnum(first[-1]):
            alpn_code = chr(first[0]) + chr(first[-1])
        else:
            hexed = first.hex()
            alpn_code = hexed[0] + hexed[-1]
    a = (
        ("q" if quic else "t")
        + _VERSIONS.get(version, "00")
        + ("d" if h.body(EXT_SERVER_NAME) is not None else "i")
        + f"{min(len(ciphers), 99):02d}"
        + f"{min(len(exts), 99):02d}"
        + alpn_code
    )
    cipher_hex = sorted(f"{c:04x}" for c in ciphers)
    ext_hex = sorted(f"{t:04x}" for t in exts if t not in (EXT_SERVER_NAME, EXT_ALPN))
    sig_hex = [f"{s:04x}" for s in h.signature_algorithms if not is_grease(s)]
    return a, cipher_hex, ext_hex, sig_hex


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ja4(hello: ParsedHello | bytes, *, quic: bool | None = None) -> str:
    """JA4 of a ClientHello. The transport letter is ``q`` when ``quic`` is true,
    ``t`` when false, and by default ``q`` iff the hello carries extension 0x39."""
    a, ciphers, exts, sigs = _ja4_parts(_hello(hello), quic)
    b = _sha12(",".join(ciphers)) if ciphers else "000000000000"
    if not exts:
        c = "000000000000"
    else:
        c_text = ",".join(exts) + ("_" + ",".join(sigs) if sigs else "")
        c = _sha12(c_text)
    return f"{a}_{b}_{c}"


def ja4_r(hello: ParsedHello | bytes, *, quic: bool | None = None) -> str:
    """JA4_r: JA4 with the sorted lists in clear instead of hashed."""
    a, ciphers, exts, sigs = _ja4_parts(_hello(hello), quic)
    out = f"{a}_{','.join(ciphers)}_{','.join(exts)}"
    return out + (f"_{','.join(sigs)}" if sigs else "")
