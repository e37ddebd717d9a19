"""HTX outer layer: TLS 1.3 over TCP, sans-I/O (spec/htx-tls.md).

``aioquic.tls.Context`` runs the handshake state machine and key schedule; this
module adds what TCP needs and QUIC does not: the record layer (RFC 8446 §5),
ChangeCipherSpec compatibility records, alerts, close_notify, KeyUpdate and the
exporter. It also adds the hybrid group X25519MLKEM768 (0x11EC), which aioquic
lacks, and writes the client's ClientHello from a ``HelloTemplate`` so that the
hello can imitate a browser. ``quic_engine``/``quic_exporter`` put the same
engine under aioquic's ``QuicConnection`` (``qnet/htx/quic.py``).

Every reach into aioquic internals is in the ``_Engine`` class below and is
written against aioquic 1.7.2 (pinned in pyproject.toml). Nothing else in QNet
may import ``aioquic.tls``.

Usage (both roles)::

    conn = TlsConnection(TlsClientConfig(server_name="example.org"), now=now)
    sock.sendall(conn.data_to_send())           # the ClientHello
    for event in conn.receive_data(chunk):      # b"" means EOF
        ...                                     # HandshakeComplete, ApplicationData, ...
    sock.sendall(conn.data_to_send())

``receive_data`` returns events or raises ``TlsError``; when it raises, a fatal
alert is queued in ``data_to_send()`` and the connection is dead. Local misuse
(sending before the handshake completes, after close) raises ``TlsStateError``.
The core never reads the clock: ``get_timer()`` gives the handshake deadline and
``handle_timer(now)`` raises ``HtxTimeout`` once it has passed.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import ipaddress
import os
import secrets
import ssl
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aioquic import tls as _aq
from aioquic._buffer import Buffer, BufferReadError, BufferWriteError
from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.x509.oid import NameOID

from qnet.crypto import primitives as prim
from qnet.errors import CryptoError, QNetError
from qnet.htx.errors import HtxTimeout, TemplateError, TlsError
from qnet.htx.first_flight import HttpFlight, parse_http_flight

__all__ = [
    "CHROME_QUIC_LAYOUT",
    "CHROME_QUIC_TEMPLATE",
    "CHROME_TEMPLATE",
    "CHROME_WS_TEMPLATE",
    "BrowserTemplate",
    "QuicLayout",
    "TemplateError",
    "default_template",
    "generate_hellos",
    "load_template",
    "parse_template",
    "quic_transport_parameters",
    "GREASE_SLOT",
    "AlertReceived",
    "ApplicationData",
    "CipherSuite",
    "Event",
    "Group",
    "HandshakeComplete",
    "HelloTemplate",
    "PeerClosed",
    "TlsClientConfig",
    "TlsConnection",
    "TlsServerConfig",
    "TlsStateError",
    "VerifyMode",
    "certificate_fingerprint",
    "make_self_signed",
    "quic_engine",
    "quic_exporter",
    "write_client_hello",
]

# --- wire constants (RFC 8446) -----------------------------------------------------

CT_CHANGE_CIPHER_SPEC: Final = 20
CT_ALERT: Final = 21
CT_HANDSHAKE: Final = 22
CT_APPLICATION_DATA: Final = 23

HT_CLIENT_HELLO: Final = 1
HT_NEW_SESSION_TICKET: Final = 4
HT_KEY_UPDATE: Final = 24

TLS12: Final = 0x0303
TLS13: Final = 0x0304

MAX_PLAINTEXT: Final = 2**14
MAX_INNER_PLAINTEXT: Final = MAX_PLAINTEXT + 1  # content + the inner type byte
MAX_CIPHERTEXT: Final = MAX_PLAINTEXT + 256
TAG_LEN: Final = 16
# A handshake message bigger than this is refused (certificate chains of real
# sites are a few KiB; 2^24 is the format's limit, far more than anyone needs).
MAX_HANDSHAKE_MESSAGE: Final = 2**18
# Rekey our sending direction well before AES-GCM's per-key record limit
# (RFC 8446 §5.5: 2^24.5 full-size records).
AUTO_KEY_UPDATE_RECORDS: Final = 2**23

# The ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
HRR_RANDOM: Final = hashlib.sha256(b"HelloRetryRequest").digest()

# The 16 GREASE values of RFC 8701: 0x0A0A, 0x1A1A, ..., 0xFAFA.
GREASE_VALUES: Final = tuple(0x0A0A + 0x1010 * i for i in range(16))
# In a template, this value marks a GREASE slot; a fresh value is drawn per hello.
GREASE_SLOT: Final = 0x0A0A


class CipherSuite(enum.IntEnum):
    AES_128_GCM_SHA256 = 0x1301
    AES_256_GCM_SHA384 = 0x1302
    CHACHA20_POLY1305_SHA256 = 0x1303


class Group(enum.IntEnum):
    SECP256R1 = 0x0017
    SECP384R1 = 0x0018
    X25519 = 0x001D
    X25519MLKEM768 = 0x11EC


class Alert(enum.IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    illegal_parameter = 47
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    internal_error = 80
    user_canceled = 90
    missing_extension = 109
    no_application_protocol = 120


HYBRID_CLIENT_SHARE_LEN: Final = prim.MLKEM768_PUBLIC_LEN + prim.X25519_LEN  # 1216
HYBRID_SERVER_SHARE_LEN: Final = prim.MLKEM768_CIPHERTEXT_LEN + prim.X25519_LEN  # 1120

_SUITE_PARAMS: Final[dict[int, tuple[int, Callable[[], hashes.HashAlgorithm]]]] = {
    CipherSuite.AES_128_GCM_SHA256: (16, hashes.SHA256),
    CipherSuite.AES_256_GCM_SHA384: (32, hashes.SHA384),
    CipherSuite.CHACHA20_POLY1305_SHA256: (32, hashes.SHA256),
}


class TlsStateError(QNetError):
    """The local caller used the connection in a state that does not allow it."""


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete:
    """Both Finished messages are done; application data may flow."""

    alpn: str | None
    cipher_suite: int
    group: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationData:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    """The peer closed its sending side. ``clean`` is False for EOF without close_notify."""

    clean: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertReceived:
    """The peer sent an alert other than close_notify (``description`` per RFC 8446 §6)."""

    description: int
    fatal: bool = True


Event = HandshakeComplete | ApplicationData | PeerClosed | AlertReceived


# --- key schedule helpers (RFC 8446 §7.1) --------------------------------------------


def _expand_label(
    algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _export(
    algorithm: hashes.HashAlgorithm,
    exporter_secret: bytes,
    label: bytes,
    context: bytes,
    length: int,
) -> bytes:
    """TLS-Exporter(label, context, length) from exporter_master_secret (RFC 8446 §7.5)."""
    if not 0 < length <= 255 * algorithm.digest_size:
        raise ValueError("length out of range for the exporter")
    derived = _expand_label(
        algorithm, exporter_secret, bytes(label), _hash(algorithm, b""), algorithm.digest_size
    )
    return _expand_label(algorithm, derived, b"exporter", _hash(algorithm, bytes(context)), length)


class _RecordKey:
    """One direction's AEAD state for one traffic secret (RFC 8446 §5.2-5.3, §7.3)."""

    __slots__ = ("_aead", "_iv", "algorithm", "secret", "seq", "suite")

    def __init__(self, suite: int, secret: bytes) -> None:
        key_len, hash_cls = _SUITE_PARAMS[suite]
        self.suite = suite
        self.algorithm = hash_cls()
        self.secret = secret
        key = _expand_label(self.algorithm, secret, b"key", b"", key_len)
        self._iv = int.from_bytes(_expand_label(self.algorithm, secret, b"iv", b"", 12), "big")
        self._aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(key) if suite == CipherSuite.CHACHA20_POLY1305_SHA256 else AESGCM(key)
        )
        self.seq = 0

    def _nonce(self) -> bytes:
        if self.seq >= 2**64 - 1:
            raise TlsStateError("record sequence number exhausted")
        nonce = (self._iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return nonce

    def seal(self, header: bytes, inner: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(), inner, header)

    def open(self, header: bytes, sealed: bytes) -> bytes:
        return self._aead.decrypt(self._nonce(), sealed, header)

    def next(self) -> _RecordKey:
        """The key after a KeyUpdate: Expand-Label(secret, "traffic upd", "", Hash.len)."""
        size = self.algorithm.digest_size
        return _RecordKey(
            self.suite, _expand_label(self.algorithm, self.secret, b"traffic upd", b"", size)
        )


# --- the ClientHello writer ----------------------------------------------------------

EXT_SERVER_NAME: Final = 0
EXT_STATUS_REQUEST: Final = 5
EXT_SUPPORTED_GROUPS: Final = 10
EXT_EC_POINT_FORMATS: Final = 11
EXT_SIGNATURE_ALGORITHMS: Final = 13
EXT_ALPN: Final = 16
EXT_SCT: Final = 18
EXT_PADDING: Final = 21
EXT_EXTENDED_MASTER_SECRET: Final = 23
EXT_COMPRESS_CERTIFICATE: Final = 27
EXT_SESSION_TICKET: Final = 35
EXT_PRE_SHARED_KEY: Final = 41
EXT_SUPPORTED_VERSIONS: Final = 43
EXT_PSK_KEY_EXCHANGE_MODES: Final = 45
EXT_KEY_SHARE: Final = 51
EXT_QUIC_TRANSPORT_PARAMETERS: Final = 0x0039
EXT_ALPS: Final = 0x44CD  # application_settings, Chrome's current codepoint
EXT_ALPS_OLD: Final = 0x4469
EXT_ECH: Final = 0xFE0D
EXT_RENEGOTIATION_INFO: Final = 0xFF01

# Extensions whose body the writer builds from the template and the connection.
_BUILT_EXTENSIONS: Final = frozenset(
    {
        EXT_SERVER_NAME,
        EXT_SUPPORTED_GROUPS,
        EXT_EC_POINT_FORMATS,
        EXT_SIGNATURE_ALGORITHMS,
        EXT_ALPN,
        EXT_PADDING,
        EXT_COMPRESS_CERTIFICATE,
        EXT_SUPPORTED_VERSIONS,
        EXT_PSK_KEY_EXCHANGE_MODES,
        EXT_KEY_SHARE,
        EXT_ALPS,
        EXT_ALPS_OLD,
        EXT_ECH,
        EXT_QUIC_TRANSPORT_PARAMETERS,
    }
)
# Extensions that keep their template position when the order is shuffled.
_PINNED_EXTENSIONS: Final = frozenset({GREASE_SLOT, EXT_PADDING, EXT_PRE_SHARED_KEY})
# Groups the client can make a key share for.
_SHARE_GROUPS: Final = frozenset({Group.X25519, Group.X25519MLKEM768})


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloTemplate:
    """Everything the writer needs to produce a ClientHello (spec/htx-tls.md §3).

    ``GREASE_SLOT`` in ``cipher_suites``, ``extensions``, ``supported_groups``,
    ``key_share_groups`` or ``supported_versions`` marks a place where a fresh
    GREASE value is drawn per hello. Extensions named in ``extensions`` are
    either built by the writer (``_BUILT_EXTENSIONS``) or sent with the fixed
    body from ``opaque_extensions``.
    """

    name: str
    record_version: int = 0x0301
    session_id_len: int = 32
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    shuffle_extensions: bool = True
    supported_groups: tuple[int, ...]
    key_share_groups: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    supported_versions: tuple[int, ...] = (GREASE_SLOT, TLS13, TLS12)
    psk_modes: tuple[int, ...] = (1,)
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    alps_protocols: tuple[str, ...] = ("h2",)
    compress_certificate: tuple[int, ...] = (2,)
    ec_point_formats: tuple[int, ...] = (0,)
    # ECH GREASE: HPKE (kdf, aead) and the payload lengths to pick from.
    ech_suite: tuple[int, int] = (0x0001, 0x0001)
    ech_payload_lengths: tuple[int, ...] = (144, 176, 208, 240)
    # Body of the first and of any later GREASE extension.
    grease_extension_bodies: tuple[bytes, bytes] = (b"", b"\x00")
    # If the hello (handshake message) is shorter than this and the template
    # lists the padding extension, pad up to exactly this length; else drop it.
    pad_to: int | None = None
    opaque_extensions: Mapping[int, bytes] = field(default_factory=dict)
    # A QUIC hello: lists quic_transport_parameters (0x39), whose body the QUIC
    # connection supplies, and has an empty session id (RFC 9001 §8.4).
    quic: bool = False
    # What the browser wrote after its Finished (TCP templates; first_flight.py).
    http_flight: HttpFlight | None = None

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"HelloTemplate {self.name!r}: {name}: {why}")

        if not 0 <= self.session_id_len <= 32:
            fail("session_id_len", "must be 0..32")
        tls13 = [c for c in self.cipher_suites if c in _SUITE_PARAMS]
        if not tls13:
            fail("cipher_suites", "needs at least one TLS 1.3 suite")
        if TLS13 not in self.supported_versions:
            fail("supported_versions", "must include TLS 1.3 (0x0304)")
        shares = [g for g in self.key_share_groups if g != GREASE_SLOT]
        if not shares:
            fail("key_share_groups", "needs at least one real group")
        for g in shares:
            if g not in _SHARE_GROUPS:
                fail("key_share_groups", f"cannot make a share for group 0x{g:04x}")
            if g not in self.supported_groups:
                fail("key_share_groups", f"group 0x{g:04x} missing from supported_groups")
        if len(set(shares)) != len(shares):
            fail("key_share_groups", "duplicate group")
        real = [e for e in self.extensions if e != GREASE_SLOT]
        if len(set(real)) != len(real):
            fail("extensions", "duplicate extension")
        for e in (EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS, EXT_SUPPORTED_GROUPS):
            if e not in real:
                fail("extensions", f"TLS 1.3 needs extension {e}")
        if EXT_SIGNATURE_ALGORITHMS not in real:
            fail("extensions", "TLS 1.3 needs signature_algorithms (13)")
        if self.quic:
            if EXT_QUIC_TRANSPORT_PARAMETERS not in real:
                fail("extensions", "a QUIC template needs quic_transport_parameters (0x39)")
            if self.session_id_len != 0:
                fail("session_id_len", "QUIC has no middlebox compatibility session id")
        elif EXT_QUIC_TRANSPORT_PARAMETERS in real:
            fail("extensions", "quic_transport_parameters is not sent over TCP")
        if EXT_PRE_SHARED_KEY in real:
            fail("extensions", "pre_shared_key is not supported (no resumption)")
        for e in real:
            if e not in _BUILT_EXTENSIONS and e not in self.opaque_extensions:
                fail("opaque_extensions", f"no body for extension {e}")
        if EXT_PADDING in real and self.pad_to is None:
            fail("pad_to", "the padding extension needs a target length")
        if EXT_ECH in real and not self.ech_payload_lengths:
            fail("ech_payload_lengths", "needs at least one length")

    @property
    def tls13_suites(self) -> list[int]:
        return [c for c in self.cipher_suites if c in _SUITE_PARAMS]


def _u8(v: int) -> bytes:
    return bytes([v])


def _u16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def _vec8(body: bytes) -> bytes:
    return _u8(len(body)) + body


def _vec16(body: bytes) -> bytes:
    return _u16(len(body)) + body


def _vec24(body: bytes) -> bytes:
    return len(body).to_bytes(3, "big") + body


def _grease_draw(rng: Callable[[int], bytes]) -> dict[str, int]:
    """Independent GREASE values per role; the two GREASE extensions always differ."""
    pick = rng(6)
    vals = {
        "cipher": GREASE_VALUES[pick[0] & 15],
        "group": GREASE_VALUES[pick[1] & 15],
        "version": GREASE_VALUES[pick[2] & 15],
        "ext1": GREASE_VALUES[pick[3] & 15],
        "ext2": GREASE_VALUES[pick[4] & 15],
        "sigalg": GREASE_VALUES[pick[5] & 15],
    }
    if vals["ext2"] == vals["ext1"]:
        vals["ext2"] ^= 0x1010
    return vals


def _shuffled(order: Sequence[int], rng: Callable[[int], bytes]) -> list[int]:
    """Permute the unpinned extensions; pinned ones keep their slots (Fisher-Yates)."""
    free = [e for e in order if e not in _PINNED_EXTENSIONS]
    for i in range(len(free) - 1, 0, -1):
        j = int.from_bytes(rng(4), "big") % (i + 1)
        free[i], free[j] = free[j], free[i]
    it = iter(free)
    return [e if e in _PINNED_EXTENSIONS else next(it) for e in order]


def write_client_hello(
    template: HelloTemplate,
    *,
    server_name: str | None,
    key_shares: Mapping[int, bytes],
    alpn: Sequence[str] | None = None,
    random: bytes | None = None,
    session_id: bytes | None = None,
    rng: Callable[[int], bytes] = secrets.token_bytes,
    quic_transport_parameters: bytes | None = None,
) -> bytes:
    """The ClientHello handshake message (4-byte header included) for ``template``.

    ``key_shares`` maps each real group of ``template.key_share_groups`` to its
    public share. ``rng`` supplies GREASE values, the extension permutation and
    the ECH GREASE bytes; ``random`` and ``session_id`` default to fresh bytes.
    ``quic_transport_parameters`` is the body of extension 0x39, which only a
    QUIC template lists (it is required there). This function is the only place
    a ClientHello is composed.
    """
    if template.quic and quic_transport_parameters is None:
        raise ValueError("a QUIC template needs quic_transport_parameters")
    alpn_list = list(template.alpn if alpn is None else alpn)
    g = _grease_draw(rng)

    def slot(value: int, kind: str) -> int:
        return g[kind] if value == GREASE_SLOT else value

    if server_name is not None:
        try:
            ipaddress.ip_address(server_name)
            server_name = None  # RFC 6066: no literal addresses in SNI
        except ValueError:
            pass

    order = list(template.extensions)
    if template.shuffle_extensions:
        order = _shuffled(order, rng)

    def body_for(ext: int) -> bytes | None:
        if ext == EXT_SERVER_NAME:
            if server_name is None:
                return None
            host = server_name.encode("idna")
            return _vec16(_u8(0) + _vec16(host))
        if ext == EXT_SUPPORTED_GROUPS:
            return _vec16(b"".join(_u16(slot(x, "group")) for x in template.supported_groups))
        if ext == EXT_EC_POINT_FORMATS:
            return _vec8(bytes(template.ec_point_formats))
        if ext == EXT_SIGNATURE_ALGORITHMS:
            return _vec16(b"".join(_u16(slot(x, "sigalg")) for x in template.signature_algorithms))
        if ext == EXT_ALPN:
            if not alpn_list:
                return None
            return _vec16(b"".join(_vec8(p.encode()) for p in alpn_list))
        if ext in (EXT_ALPS, EXT_ALPS_OLD):
            if not template.alps_protocols:
                return None
            return _vec16(b"".join(_vec8(p.encode()) for p in template.alps_protocols))
        if ext == EXT_COMPRESS_CERTIFICATE:
            return _vec8(b"".join(_u16(x) for x in template.compress_certificate))
        if ext == EXT_SUPPORTED_VERSIONS:
            return _vec8(b"".join(_u16(slot(x, "version")) for x in template.supported_versions))
        if ext == EXT_PSK_KEY_EXCHANGE_MODES:
            return _vec8(bytes(template.psk_modes))
        if ext == EXT_KEY_SHARE:
            entries = []
            for grp in template.key_share_groups:
                if grp == GREASE_SLOT:
                    entries.append(_u16(g["group"]) + _vec16(b"\x00"))
                else:
                    entries.append(_u16(grp) + _vec16(key_shares[grp]))
            return _vec16(b"".join(entries))
        if ext == EXT_ECH:
            kdf, aead = template.ech_suite
            lengths = template.ech_payload_lengths
            payload_len = lengths[rng(1)[0] % len(lengths)]
            return (
                _u8(0)  # ECHClientHelloType outer
                + _u16(kdf)
                + _u16(aead)
                + rng(1)  # config_id
                + _vec16(rng(32))  # enc: an X25519 HPKE public value
                + _vec16(rng(payload_len))
            )
        if ext == EXT_QUIC_TRANSPORT_PARAMETERS:
            return quic_transport_parameters
        return template.opaque_extensions[ext]

    grease_seen = 0
    encoded: list[tuple[int, bytes]] = []
    for ext in order:
        if ext == GREASE_SLOT:
            value = g["ext1"] if grease_seen == 0 else g["ext2"]
            body = template.grease_extension_bodies[min(grease_seen, 1)]
            grease_seen += 1
            encoded.append((value, body))
            continue
        if ext == EXT_PADDING:
            encoded.append((ext, b""))  # sized below
            continue
        maybe = body_for(ext)
        if maybe is not None:
            encoded.append((ext, maybe))

    random = prim.random_bytes(32) if random is None else random
    if session_id is None:
        session_id = prim.random_bytes(template.session_id_len)
    suites = b"".join(_u16(slot(c, "cipher")) for c in template.cipher_suites)
    head = _u16(TLS12) + random + _vec8(session_id) + _vec16(suites) + _vec8(b"\x00")

    def assemble(exts: list[tuple[int, bytes]]) -> bytes:
        blob = b"".join(_u16(t) + _vec16(b) for t, b in exts)
        return _u8(HT_CLIENT_HELLO) + _vec24(head + _vec16(blob))

    if any(t == EXT_PADDING for t, _ in encoded):
        without = [(t, b) for t, b in encoded if t != EXT_PADDING]
        length = len(assemble(without))
        assert template.pad_to is not None
        if length + 4 <= template.pad_to:
            pad = bytes(template.pad_to - length - 4)
            encoded = [(t, pad if t == EXT_PADDING else b) for t, b in encoded]
        else:
            encoded = without
    return assemble(encoded)


# --- template files (spec/fingerprint.md §2) ------------------------------------------

TEMPLATE_FORMAT: Final = "qnet-hello-template/1"
_GREASE_WORD: Final = "GREASE"
# Extension rules of a template file and the codepoints they may name.
_RULES: Final[dict[str, frozenset[int]]] = {
    "server_name": frozenset({EXT_SERVER_NAME}),
    "supported_groups": frozenset({EXT_SUPPORTED_GROUPS}),
    "ec_point_formats": frozenset({EXT_EC_POINT_FORMATS}),
    "signature_algorithms": frozenset({EXT_SIGNATURE_ALGORITHMS}),
    "alpn": frozenset({EXT_ALPN}),
    "padding": frozenset({EXT_PADDING}),
    "compress_certificate": frozenset({EXT_COMPRESS_CERTIFICATE}),
    "supported_versions": frozenset({EXT_SUPPORTED_VERSIONS}),
    "psk_key_exchange_modes": frozenset({EXT_PSK_KEY_EXCHANGE_MODES}),
    "key_share": frozenset({EXT_KEY_SHARE}),
    "quic_transport_parameters": frozenset({EXT_QUIC_TRANSPORT_PARAMETERS}),
    "application_settings": frozenset({EXT_ALPS}),
    "application_settings_old": frozenset({EXT_ALPS_OLD}),
    "encrypted_client_hello_grease": frozenset({EXT_ECH}),
}
_SHARE_LENGTHS: Final[dict[int, int]] = {
    Group.X25519: prim.X25519_LEN,
    Group.X25519MLKEM768: HYBRID_CLIENT_SHARE_LEN,
}
TP_INITIAL_SOURCE_CONNECTION_ID: Final = 0x0F
TP_VERSION_INFORMATION: Final = 0x11


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicPacketLayout:
    """What one Initial packet of the browser's first flight held (sets seen)."""

    crypto_frames: tuple[int, ...]
    pings: tuple[int, ...]
    padding_runs: tuple[int, ...]
    pn_length: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportParameter:
    """One entry of the browser's quic_transport_parameters, in its order.

    ``pid`` is None for a GREASE parameter (reserved id 31*N+27, fresh per
    connection, body of one of ``grease_lengths``); ``rule`` is
    ``initial_source_connection_id`` or ``version_information`` when the body is
    built per connection, else ``body`` is sent as is."""

    pid: int | None
    body: bytes = b""
    rule: str | None = None
    grease_lengths: tuple[int, ...] = (0,)


@dataclass(frozen=True, slots=True, kw_only=True)
class CryptoSplit:
    """How the browser shares the hello's CRYPTO bytes between its two Initial packets:
    the first carries a head of ``head_lengths`` (min, max) bytes and the tail, the
    second the middle; second share minus first share is in ``share_differences``."""

    head_lengths: tuple[int, int]
    share_differences: tuple[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstOneRtt:
    """The browser's first two 1-RTT packets that carry STREAM data (spec/fingerprint.md
    §5): sizes seen as (min, max) and, per packet, the bytes of each stream; the
    first holds the HTTP/3 control stream, the second the first request, whose
    decoded header lists and packet sizes are in ``requests`` (for the length
    model: a size moves by the difference of QPACK lengths for another authority)."""

    control_packet_sizes: tuple[int, int]
    control_stream_bytes: tuple[int, int]
    request_packet_sizes: tuple[int, int]
    request_control_bytes: tuple[int, int]
    request_stream_bytes: tuple[int, int]
    requests: tuple[tuple[int, tuple[tuple[str, str], ...]], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicLayout:
    """The browser's QUIC Initial layout (spec/fingerprint.md §5)."""

    dcid_length: int
    scid_length: int
    token_length: int
    first_packet_number: int
    datagram_size: int
    packets: tuple[QuicPacketLayout, ...]
    transport_parameters: tuple[TransportParameter, ...]
    shuffle_transport_parameters: bool
    crypto_split: CryptoSplit | None = None
    first_1rtt: FirstOneRtt | None = None

    def parameter(self, pid: int) -> bytes | None:
        for p in self.transport_parameters:
            if p.pid == pid and p.rule is None:
                return p.body
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BrowserTemplate:
    """A template file: the hello template plus what was captured with it."""

    name: str
    browser: str
    version: str
    transport: str
    hello: HelloTemplate
    server_name: str
    captured_hellos: tuple[bytes, ...]
    captured_ja4: tuple[str, ...]
    hello_record_lengths: tuple[int, ...] = ()
    first_flights: tuple[tuple[tuple[int, int], ...], ...] = ()
    quic: QuicLayout | None = None


class _Fields:
    """Typed access to a JSON object; every failure names the field path."""

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, dict):
            raise TemplateError(path or "(top)", "must be an object")
        self.obj: dict[str, object] = obj
        self.path = path

    def _p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: object = ...) -> object:
        if key not in self.obj:
            if default is ...:
                raise TemplateError(self._p(key), "missing")
            return default
        return self.obj[key]

    def sub(self, key: str) -> _Fields:
        return _Fields(self.get(key), self._p(key))

    def str_(self, key: str, default: object = ...) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise TemplateError(self._p(key), "must be a string")
        return v

    def int_(self, key: str, lo: int, hi: int, default: object = ...) -> int:
        v = self.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise TemplateError(self._p(key), f"must be an integer in {lo}..{hi}")
        return v

    def bool_(self, key: str, default: object = ...) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise TemplateError(self._p(key), "must be true or false")
        return v

    def list_(self, key: str, default: object = ...) -> list[object]:
        v = self.get(key, default)
        if not isinstance(v, list):
            raise TemplateError(self._p(key), "must be a list")
        return v

    def u16s(
        self, key: str, *, grease: bool, default: object = ..., hi: int = 0xFFFF
    ) -> tuple[int, ...]:
        out = []
        for i, v in enumerate(self.list_(key, default)):
            if grease and v == _GREASE_WORD:
                out.append(GREASE_SLOT)
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi:
                if grease and v in GREASE_VALUES:
                    raise TemplateError(f"{self._p(key)}[{i}]", 'write GREASE slots as "GREASE"')
                out.append(v)
            else:
                raise TemplateError(f"{self._p(key)}[{i}]", f"must be an integer 0..{hi}")
        return tuple(out)

    def strs(self, key: str, default: object = ...) -> tuple[str, ...]:
        out = []
        for i, v in enumerate(self.list_(key, default)):
            if not isinstance(v, str) or not v or len(v) > 255:
                raise TemplateError(f"{self._p(key)}[{i}]", "must be a non-empty string")
            out.append(v)
        return tuple(out)

    def hex_(self, key: str, default: object = ...) -> bytes:
        v = self.str_(key, default)
        try:
            return bytes.fromhex(v)
        except ValueError:
            raise TemplateError(self._p(key), "must be hex") from None


def _parse_tls(t: _Fields, name: str, transport: str) -> HelloTemplate:
    quic = transport.startswith("quic")
    exts: list[int] = []
    opaque_src = t.sub("opaque_extensions")
    opaque: dict[int, bytes] = {}
    for i, raw in enumerate(t.list_("extensions")):
        e = _Fields(raw, f"{t.path}.extensions[{i}]")
        rule = e.str_("rule")
        if rule == "grease":
            if e.get("type") != _GREASE_WORD:
                raise TemplateError(f"{e.path}.type", 'a grease rule needs type "GREASE"')
            exts.append(GREASE_SLOT)
            continue
        etype = e.int_("type", 0, 0xFFFF)
        if etype in GREASE_VALUES:
            raise TemplateError(f"{e.path}.type", 'write GREASE extensions as "GREASE"')
        if rule == "opaque":
            opaque[etype] = opaque_src.hex_(str(etype))
        elif rule not in _RULES:
            raise TemplateError(f"{e.path}.rule", f"unknown rule {rule!r}")
        elif etype not in _RULES[rule]:
            raise TemplateError(f"{e.path}.rule", f"rule {rule!r} does not build type {etype}")
        exts.append(etype)
    shares = t.u16s("key_share_groups", grease=True)
    lengths = t.sub("key_share_lengths")
    for g in shares:
        want = 1 if g == GREASE_SLOT else _SHARE_LENGTHS.get(g)
        key = _GREASE_WORD if g == GREASE_SLOT else str(g)
        if want is not None and lengths.int_(key, 0, 0xFFFF) != want:
            raise TemplateError(f"{lengths.path}.{key}", f"we can only make {want}-byte shares")
    body_list: list[bytes] = []
    for i, b in enumerate(t.list_("grease_extension_bodies", [])):
        try:
            body_list.append(bytes.fromhex(b) if isinstance(b, str) else b"")
        except ValueError:
            raise TemplateError(f"{t.path}.grease_extension_bodies[{i}]", "must be hex") from None
    bodies = tuple(body_list)
    kwargs: dict[str, object] = {}
    if EXT_ECH in exts:
        ech = t.sub("ech")
        if ech.int_("enc_length", 0, 0xFFFF) != 32:
            raise TemplateError(f"{ech.path}.enc_length", "only X25519 (32-byte enc) is supported")
        kwargs["ech_suite"] = (ech.int_("kdf", 0, 0xFFFF), ech.int_("aead", 0, 0xFFFF))
        kwargs["ech_payload_lengths"] = ech.u16s("payload_lengths", grease=False)
    try:
        return HelloTemplate(
            name=name,
            record_version=t.int_("record_version", 0x0300, 0x03FF, 0x0301),
            session_id_len=t.int_("session_id_len", 0, 32),
            cipher_suites=t.u16s("cipher_suites", grease=True),
            extensions=tuple(exts),
            shuffle_extensions=t.bool_("shuffle_extensions"),
            supported_groups=t.u16s("supported_groups", grease=True),
            key_share_groups=shares,
            signature_algorithms=t.u16s("signature_algorithms", grease=True),
            supported_versions=t.u16s("supported_versions", grease=True),
            psk_modes=t.u16s("psk_modes", grease=False, hi=255),
            alpn=t.strs("alpn"),
            alps_protocols=t.strs("alps_protocols", []),
            compress_certificate=t.u16s("compress_certificate", grease=False),
            ec_point_formats=t.u16s("ec_point_formats", grease=False, hi=255),
            grease_extension_bodies=(
                bodies[0] if bodies else b"",
                bodies[-1] if len(bodies) > 1 else b"\x00",
            ),
            opaque_extensions=opaque,
            quic=quic,
            **kwargs,  # type: ignore[arg-type]
        )
    except TemplateError:
        raise
    except ValueError as exc:
        # HelloTemplate's own checks say "HelloTemplate 'x': field: why".
        text = str(exc)
        field_name = text.split(": ")[1] if text.count(": ") >= 2 else "tls"
        raise TemplateError(f"{t.path}.{field_name}", text) from None


def _parse_quic(q: _Fields) -> QuicLayout:
    packets = []
    for i, raw in enumerate(q.list_("packets")):
        p = _Fields(raw, f"{q.path}.packets[{i}]")
        packets.append(
            QuicPacketLayout(
                crypto_frames=p.u16s("crypto_frames", grease=False, hi=64),
                pings=p.u16s("pings", grease=False, hi=64),
                padding_runs=p.u16s("padding_runs", grease=False, hi=64),
                pn_length=p.u16s("pn_length", grease=False, hi=4),
            )
        )
        for key in ("crypto_frames", "pings", "padding_runs", "pn_length"):
            if not getattr(packets[-1], key):
                raise TemplateError(f"{p.path}.{key}", "needs at least one value")
        if 0 in packets[-1].pn_length:
            raise TemplateError(f"{p.path}.pn_length", "must be 1..4")
    if not packets:
        raise TemplateError(f"{q.path}.packets", "needs at least one packet")
    params = []
    for i, raw in enumerate(q.list_("transport_parameters")):
        p = _Fields(raw, f"{q.path}.transport_parameters[{i}]")
        if p.get("id") == _GREASE_WORD:
            lengths = p.u16s("lengths", grease=False, default=[0], hi=64)
            params.append(TransportParameter(pid=None, grease_lengths=lengths or (0,)))
            continue
        pid = p.int_("id", 0, 2**62 - 1)
        rule = p.get("rule", None)
        if rule is not None and rule not in ("initial_source_connection_id", "version_information"):
            raise TemplateError(f"{p.path}.rule", f"unknown rule {rule!r}")
        body = p.hex_("body", "") if rule != "initial_source_connection_id" else b""
        params.append(
            TransportParameter(pid=pid, body=body, rule=rule if isinstance(rule, str) else None)
        )
    if not any(p.rule == "initial_source_connection_id" for p in params):
        raise TemplateError(f"{q.path}.transport_parameters", "needs initial_source_connection_id")
    return QuicLayout(
        dcid_length=q.int_("dcid_length", 8, 20),
        scid_length=q.int_("scid_length", 0, 20),
        token_length=q.int_("token_length", 0, 0),
        first_packet_number=q.int_("first_packet_number", 0, 2**16),
        datagram_size=q.int_("datagram_size", 1200, 1452),
        packets=tuple(packets),
        transport_parameters=tuple(params),
        shuffle_transport_parameters=q.bool_("shuffle_transport_parameters"),
        crypto_split=_parse_crypto_split(q),
        first_1rtt=_parse_first_1rtt(q),
    )


def _min_max(f: _Fields, key: str, lo: int, hi: int) -> tuple[int, int]:
    v = f.get(key)
    if (
        not isinstance(v, list)
        or len(v) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        or not lo <= v[0] <= v[1] <= hi
    ):
        raise TemplateError(f"{f.path}.{key}", f"must be [min, max] integers in {lo}..{hi}")
    return int(v[0]), int(v[1])


def _parse_first_1rtt(q: _Fields) -> FirstOneRtt | None:
    if q.get("first_1rtt", None) is None:
        return None
    f = q.sub("first_1rtt")
    requests = []
    for i, raw in enumerate(f.list_("requests")):
        r = _Fields(raw, f"{f.path}.requests[{i}]")
        size = r.int_("packet_size", 21, 1500)
        headers = []
        for j, h in enumerate(r.list_("headers")):
            if (
                not isinstance(h, list)
                or len(h) != 2
                or not all(isinstance(x, str) for x in h)
                or not h[0]
            ):
                raise TemplateError(f"{r.path}.headers[{j}]", "must be [name, value] strings")
            headers.append((str(h[0]), str(h[1])))
        if not any(name == ":authority" for name, _ in headers):
            raise TemplateError(f"{r.path}.headers", "needs :authority")
        requests.append((size, tuple(headers)))
    if not requests:
        raise TemplateError(f"{f.path}.requests", "needs at least one request")
    return FirstOneRtt(
        control_packet_sizes=_min_max(f, "control_packet_sizes", 21, 1500),
        control_stream_bytes=_min_max(f, "control_stream_bytes", 0, 1500),
        request_packet_sizes=_min_max(f, "request_packet_sizes", 21, 1500),
        request_control_bytes=_min_max(f, "request_control_bytes", 0, 1500),
        request_stream_bytes=_min_max(f, "request_stream_bytes", 0, 1500),
        requests=tuple(requests),
    )


def _parse_crypto_split(q: _Fields) -> CryptoSplit | None:
    if q.get("crypto_split", None) is None:
        return None
    c = q.sub("crypto_split")
    if c.str_("kind") != "head_tail_then_middle":
        raise TemplateError(f"{c.path}.kind", "must be head_tail_then_middle")
    pairs = []
    for key, lo, hi in (("head_lengths", 0, 1 << 14), ("share_differences", -(1 << 14), 1 << 14)):
        v = c.list_(key)
        if (
            len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            or not lo <= v[0] <= v[1] <= hi  # type: ignore[operator]
        ):
            raise TemplateError(f"{c.path}.{key}", "must be [min, max] integers")
        pairs.append((int(v[0]), int(v[1])))  # type: ignore[call-overload]
    return CryptoSplit(head_lengths=pairs[0], share_differences=pairs[1])


def parse_template(data: bytes | str) -> BrowserTemplate:
    """A template file's contents → ``BrowserTemplate``; ``TemplateError`` names the field."""
    import json

    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TemplateError("(file)", f"not JSON (truncated?): {exc}") from None
    top = _Fields(obj, "")
    if top.str_("format") != TEMPLATE_FORMAT:
        raise TemplateError("format", f"expected {TEMPLATE_FORMAT!r}")
    browser, version = top.str_("browser"), top.str_("version")
    transport = top.str_("transport")
    if transport not in ("tcp-h2", "tcp-ws", "quic-h3"):
        raise TemplateError("transport", "must be tcp-h2, tcp-ws or quic-h3")
    name = f"{browser}-{version.split('.')[0]}-{transport}"
    hello = _parse_tls(top.sub("tls"), name, transport)
    cap = top.sub("captured")
    hellos = []
    for i, h in enumerate(cap.list_("hellos")):
        if not isinstance(h, str):
            raise TemplateError(f"captured.hellos[{i}]", "must be hex")
        try:
            hellos.append(bytes.fromhex(h))
        except ValueError:
            raise TemplateError(f"captured.hellos[{i}]", "must be hex") from None
    quic = _parse_quic(top.sub("quic")) if hello.quic else None
    record_lengths: tuple[int, ...] = ()
    flights: list[tuple[tuple[int, int], ...]] = []
    if not hello.quic:
        rec = top.sub("records")
        record_lengths = rec.u16s("hello_record_lengths", grease=False)
        for i, fl in enumerate(rec.list_("first_flight", [])):
            if not isinstance(fl, list) or not all(
                isinstance(x, list) and len(x) == 2 and all(isinstance(y, int) for y in x)
                for x in fl
            ):
                raise TemplateError(f"records.first_flight[{i}]", "must be [[type, length], ...]")
            flights.append(tuple((int(x[0]), int(x[1])) for x in fl))
        if rec.get("http", None) is not None:
            hello = dataclasses.replace(
                hello, http_flight=parse_http_flight(rec.get("http"), f"{rec.path}.http")
            )
    return BrowserTemplate(
        name=name,
        browser=browser,
        version=version,
        transport=transport,
        hello=hello,
        server_name=cap.str_("server_name"),
        captured_hellos=tuple(hellos),
        captured_ja4=cap.strs("ja4"),
        hello_record_lengths=record_lengths,
        first_flights=tuple(flights),
        quic=quic,
    )


def load_template(path: str | os.PathLike[str]) -> BrowserTemplate:
    """Read a template file (spec/templates/*.json); ``TemplateError`` names a bad field."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TemplateError("(file)", f"cannot read {path}: {exc}") from None
    return parse_template(data)


_TEMPLATE_DIR: Final = Path(__file__).resolve().parent / "templates"


def default_template(transport: str) -> BrowserTemplate:
    """The newest packaged Chromium template for ``tcp-h2``, ``tcp-ws`` or ``quic-h3``."""
    found = sorted(
        _TEMPLATE_DIR.glob(f"chromium-*-{transport}.json"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not found:
        raise TemplateError("(file)", f"no packaged template for {transport} in {_TEMPLATE_DIR}")
    return load_template(found[-1])


def generate_hellos(
    template: BrowserTemplate, count: int, *, server_name: str | None = None
) -> list[bytes]:
    """``count`` hellos from ``template`` with fresh keys and randomness (tests, self-test)."""
    out = []
    for _ in range(count):
        shares: dict[int, bytes] = {}
        for grp in template.hello.key_share_groups:
            if grp == Group.X25519:
                shares[grp] = prim.X25519Key.generate().public_bytes
            elif grp == Group.X25519MLKEM768:
                shares[grp] = (
                    prim.MLKEM768Key.generate().public_bytes
                    + prim.X25519Key.generate().public_bytes
                )
        tp = None
        if template.quic is not None:
            tp = quic_transport_parameters(template.quic, b"")
        out.append(
            write_client_hello(
                template.hello,
                server_name=server_name or template.server_name,
                key_shares=shares,
                quic_transport_parameters=tp,
            )
        )
    return out


def _varint(value: int) -> bytes:
    for size, mark in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | (mark << (8 * size - 8))).to_bytes(size, "big")
    raise ValueError("varint out of range")


def quic_transport_parameters(
    layout: QuicLayout, scid: bytes, rng: Callable[[int], bytes] = secrets.token_bytes
) -> bytes:
    """The body of quic_transport_parameters in the browser's shape: its ids, values
    and order (shuffled per connection when the browser does), a fresh GREASE
    parameter, our ``scid`` as initial_source_connection_id."""
    items: list[tuple[int, bytes]] = []
    for p in layout.transport_parameters:
        if p.pid is None:
            n = int.from_bytes(rng(4), "big") % (2**30)
            lengths = p.grease_lengths
            body = rng(lengths[rng(1)[0] % len(lengths)])
            items.append((31 * n + 27, body))
        elif p.rule == "initial_source_connection_id":
            items.append((p.pid, scid))
        elif p.rule == "version_information":
            # chosen version, then the available ones; a GREASE version (0x?a?a?a?a)
            # takes the place of any the browser sent.
            words = [p.body[i : i + 4] for i in range(0, len(p.body), 4)]
            out = b""
            for w in words:
                v = int.from_bytes(w, "big")
                if v & 0x0F0F0F0F == 0x0A0A0A0A:
                    v = (int.from_bytes(rng(4), "big") & 0xF0F0F0F0) | 0x0A0A0A0A
                out += v.to_bytes(4, "big")
            items.append((p.pid, out))
        else:
            items.append((p.pid, p.body))
    if layout.shuffle_transport_parameters:
        for i in range(len(items) - 1, 0, -1):
            j = int.from_bytes(rng(4), "big") % (i + 1)
            items[i], items[j] = items[j], items[i]
    return b"".join(_varint(pid) + _varint(len(body)) + body for pid, body in items)


_TCP_H2: Final = default_template("tcp-h2")
_TCP_WS: Final = default_template("tcp-ws")
_QUIC_H3: Final = default_template("quic-h3")
#: The captured Chromium templates (spec/templates/), the defaults of every dial.
CHROME_TEMPLATE: Final = _TCP_H2.hello
CHROME_WS_TEMPLATE: Final = _TCP_WS.hello
CHROME_QUIC_TEMPLATE: Final = _QUIC_H3.hello
CHROME_QUIC_LAYOUT: Final = _QUIC_H3.quic

# --- configuration ------------------------------------------------------------------


class VerifyMode(enum.Enum):
    """How a client checks the server certificate.

    HTX node links authenticate the node inside the tunnel (Noise XK against the
    directory's link key, bound to the TLS exporter), so the outer certificate
    is cover, not trust: ``NONE`` is the normal setting there. ``PIN`` accepts
    exactly one leaf (SHA-256 of its DER); ``CA`` does ordinary WebPKI checks.
    """

    NONE = "none"
    PIN = "pin"
    CA = "ca"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsClientConfig:
    server_name: str | None = None
    template: HelloTemplate = CHROME_TEMPLATE
    alpn: tuple[str, ...] | None = None  # None = the template's list
    verify: VerifyMode = VerifyMode.NONE
    pinned_sha256: bytes | None = None
    cafile: str | None = None
    cadata: bytes | None = None
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.verify is VerifyMode.PIN and (
            self.pinned_sha256 is None or len(self.pinned_sha256) != 32
        ):
            raise ValueError("pinned_sha256: VerifyMode.PIN needs a 32-byte SHA-256")
        if self.verify is VerifyMode.CA and self.server_name is None:
            raise ValueError("server_name: VerifyMode.CA needs the name to check")


CertificateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsServerConfig:
    certificate_chain: tuple[x509.Certificate, ...]  # leaf first
    private_key: CertificateKey
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # preference order
    cipher_suites: tuple[int, ...] = (
        CipherSuite.AES_128_GCM_SHA256,
        CipherSuite.AES_256_GCM_SHA384,
        CipherSuite.CHACHA20_POLY1305_SHA256,
    )
    groups: tuple[int, ...] = (Group.X25519MLKEM768, Group.X25519)  # preference order
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.certificate_chain:
            raise ValueError("certificate_chain: needs at least the leaf certificate")
        for c in self.cipher_suites:
            if c not in _SUITE_PARAMS:
                raise ValueError(f"cipher_suites: 0x{c:04x} is not a TLS 1.3 suite")
        for grp in self.groups:
            if grp not in _SHARE_GROUPS:
                raise ValueError(f"groups: 0x{grp:04x} is not supported")


def make_self_signed(
    hostname: str, *, now: datetime.datetime | None = None, days: int = 365
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 certificate for ``hostname`` (SAN dNSName), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def certificate_fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER encoding (what ``VerifyMode.PIN`` compares)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


# --- the handshake engine: every aioquic internal lives here ------------------------


class _Engine(_aq.Context):
    """``aioquic.tls.Context`` (aioquic 1.7.2) adapted to TLS over TCP.

    Overridden internals, all of aioquic 1.7.2:
    * ``_client_send_hello``: the hello comes from ``write_client_hello``;
    * ``_client_handle_hello`` / ``_server_handle_hello``: rewritten to add
      X25519MLKEM768 and drop PSK resumption (never offered, never accepted);
    * ``_client_handle_encrypted_extensions``: a server may decline ALPN, as
      browsers allow; a choice we did not offer is refused;
    * ``_client_handle_certificate_verify``: certificate pinning.
    Under QUIC (``quic_engine``) the same overrides also carry the transport
    parameters: the client's from ``handshake_extensions`` into the hello
    (extension 0x39), the server's into EncryptedExtensions, and the server
    calls ``alpn_cb`` as the stock server does (QuicConnection reads the
    client's transport parameters there). Also read: ``handshake_extensions``,
    ``alpn_cb``, ``update_traffic_key_cb``, ``received_extensions``.
    Attributes read or written: ``_cipher_suites``, ``_signature_algorithms``,
    ``_key_schedule_proxy``, ``key_schedule``, ``_enc_key``, ``_next_dec_key``,
    ``_peer_certificate``, ``_psk_key_exchange_mode``, ``legacy_session_id``,
    ``client_random``, ``server_random``, ``state``; helpers ``_set_state``,
    ``_setup_traffic_protection``, ``_server_expect_finished``,
    ``_signature_algorithms_for_private_key``; the module's pull/push codecs,
    ``KeySchedule``, ``KeyScheduleProxy``, ``signature_algorithm_params``.
    """

    def __init__(self, config: TlsClientConfig | TlsServerConfig) -> None:
        is_client = isinstance(config, TlsClientConfig)
        if isinstance(config, TlsClientConfig):
            verify = ssl.CERT_REQUIRED if config.verify is VerifyMode.CA else ssl.CERT_NONE
            super().__init__(
                is_client=True,
                alpn_protocols=None,  # the template writes ALPN; we check the answer
                cadata=config.cadata,
                cafile=config.cafile,
                server_name=config.server_name,
                verify_mode=verify,
                cipher_suites=[_aq.CipherSuite(c) for c in config.template.tls13_suites],
            )
            self._signature_algorithms = list(config.template.signature_algorithms)
            self.legacy_session_id = prim.random_bytes(config.template.session_id_len)
        else:
            super().__init__(
                is_client=False,
                alpn_protocols=list(config.alpn),
                cipher_suites=[_aq.CipherSuite(c) for c in config.cipher_suites],
                verify_mode=ssl.CERT_NONE,
            )
            self.certificate = config.certificate_chain[0]
            self.certificate_chain = list(config.certificate_chain[1:])
            self.certificate_private_key = config.private_key
        assert self._is_client == is_client
        self.qnet_config = config
        self.qnet_group: int | None = None
        self.qnet_offered_alpn: list[str] = []
        self._qnet_x25519: prim.X25519Key | None = None
        self._qnet_hybrid: tuple[prim.MLKEM768Key, prim.X25519Key] | None = None
        self.qnet_exporter: tuple[hashes.HashAlgorithm, bytes] | None = None  # QUIC only

    # -- client --

    def _client_send_hello(self, output_buf: Buffer) -> None:
        cfg = self.qnet_config
        assert isinstance(cfg, TlsClientConfig)
        shares: dict[int, bytes] = {}
        for grp in cfg.template.key_share_groups:
            if grp == Group.X25519:
                self._qnet_x25519 = prim.X25519Key.generate()
                shares[grp] = self._qnet_x25519.public_bytes
            elif grp == Group.X25519MLKEM768:
                kem, dh = prim.MLKEM768Key.generate(), prim.X25519Key.generate()
                self._qnet_hybrid = (kem, dh)
                shares[grp] = kem.public_bytes + dh.public_bytes
        self.qnet_offered_alpn = list(cfg.template.alpn if cfg.alpn is None else cfg.alpn)
        hello = write_client_hello(
            cfg.template,
            server_name=cfg.server_name,
            key_shares=shares,
            alpn=self.qnet_offered_alpn,
            random=self.client_random,
            session_id=self.legacy_session_id,
            quic_transport_parameters=self._qnet_quic_parameters(),
        )
        proxy = _aq.KeyScheduleProxy(self._cipher_suites)
        proxy.extract(None)
        proxy.update_hash(hello)
        self._key_schedule_proxy = proxy
        output_buf.push_bytes(hello)
        self._set_state(_aq.State.CLIENT_EXPECT_SERVER_HELLO)

    def _qnet_quic_parameters(self) -> bytes | None:
        """The body of quic_transport_parameters that a QuicConnection asked us to send."""
        for ext_type, body in self.handshake_extensions:
            if ext_type == EXT_QUIC_TRANSPORT_PARAMETERS:
                return body
        return None

    def _client_handle_hello(self, input_buf: Buffer, output_buf: Buffer) -> None:
        hello = _aq.pull_server_hello(input_buf)
        if hello.random == HRR_RANDOM:
            raise _aq.AlertHandshakeFailure("HelloRetryRequest is not supported")
        if hello.supported_version != TLS13:
            raise _aq.AlertProtocolVersion("server did not select TLS 1.3")
        if hello.legacy_session_id != self.legacy_session_id:
            raise _aq.AlertIllegalParameter("session id not echoed")
        if hello.compression_method != 0:
            raise _aq.AlertIllegalParameter("compression")
        if hello.cipher_suite not in self._cipher_suites:
            raise _aq.AlertIllegalParameter("cipher suite not offered")
        if hello.pre_shared_key is not None:
            raise _aq.AlertIllegalParameter("PSK not offered")
        if hello.key_share is None:
            raise _aq.AlertMissingExtension("no key share")
        group, share = hello.key_share
        try:
            if group == Group.X25519 and self._qnet_x25519 is not None:
                if len(share) != prim.X25519_LEN:
                    raise _aq.AlertIllegalParameter("bad X25519 share")
                secret = self._qnet_x25519.exchange(share)
            elif group == Group.X25519MLKEM768 and self._qnet_hybrid is not None:
                if len(share) != HYBRID_SERVER_SHARE_LEN:
                    raise _aq.AlertIllegalParameter("bad X25519MLKEM768 share")
                kem, dh = self._qnet_hybrid
                ct, peer = share[: prim.MLKEM768_CIPHERTEXT_LEN], share[-prim.X25519_LEN :]
                secret = kem.decapsulate(ct) + dh.exchange(peer)
            else:
                raise _aq.AlertIllegalParameter("key share group not offered")
        except CryptoError as exc:
            raise _aq.AlertIllegalParameter("invalid key share") from exc
        self.qnet_group = int(group)
        self._qnet_x25519 = None
        self._qnet_hybrid = None
        assert self._key_schedule_proxy is not None
        self.key_schedule = self._key_schedule_proxy.select(_aq.CipherSuite(hello.cipher_suite))
        self._key_schedule_proxy = None
        self.key_schedule.update_hash(input_buf.data)
        self.key_schedule.extract(secret)
        self._setup_traffic_protection(_aq.Direction.DECRYPT, _aq.Epoch.HANDSHAKE, b"s hs traffic")
        self._setup_traffic_protection(_aq.Direction.ENCRYPT, _aq.Epoch.HANDSHAKE, b"c hs traffic")
        self._set_state(_aq.State.CLIENT_EXPECT_ENCRYPTED_EXTENSIONS)

    def _client_handle_encrypted_extensions(self, input_buf: Buffer) -> None:
        super()._client_handle_encrypted_extensions(input_buf)
        chosen = self.alpn_negotiated
        if chosen is not None and chosen not in self.qnet_offered_alpn:
            raise _aq.AlertNoApplicationProtocol("server chose an ALPN we did not offer")
        if chosen is None and self.alpn_cb is not None:  # QUIC (RFC 9001 §8.1)
            raise _aq.AlertNoApplicationProtocol("QUIC needs ALPN")

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)
        cfg = self.qnet_config
        assert isinstance(cfg, TlsClientConfig)
        if cfg.verify is VerifyMode.PIN:
            assert self._peer_certificate is not None and cfg.pinned_sha256 is not None
            if not prim.ct_equal(
                certificate_fingerprint(self._peer_certificate), cfg.pinned_sha256
            ):
                raise _aq.AlertBadCertificate("certificate does not match the pin")

    # -- server --

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
    ) -> None:
        cfg = self.qnet_config
        assert isinstance(cfg, TlsServerConfig)
        hello = _aq.pull_client_hello(input_buf)
        if hello.supported_versions is None or TLS13 not in hello.supported_versions:
            raise _aq.AlertProtocolVersion("client does not offer TLS 1.3")
        if hello.legacy_compression_methods != [0]:
            raise _aq.AlertIllegalParameter("compression methods must be [null]")
        if len(hello.legacy_session_id) > 32:
            raise _aq.AlertIllegalParameter("session id too long")
        suite = next((c for c in self._cipher_suites if c in hello.cipher_suites), None)
        if suite is None:
            raise _aq.AlertHandshakeFailure("no common cipher suite")
        sig_algs = hello.signature_algorithms or []
        sig_alg = next(
            (a for a in self._signature_algorithms_for_private_key() if a in sig_algs), None
        )
        if sig_alg is None:
            raise _aq.AlertHandshakeFailure("no common signature algorithm")
        if hello.key_share is None:
            raise _aq.AlertMissingExtension("no key share")
        offered_groups = [grp for grp, _ in hello.key_share]
        if len(set(offered_groups)) != len(offered_groups):
            raise _aq.AlertIllegalParameter("duplicate key share group")
        shares = dict(hello.key_share)
        if hello.alpn_protocols:
            chosen = next((p for p in cfg.alpn if p in hello.alpn_protocols), None)
            if chosen is None:
                raise _aq.AlertNoApplicationProtocol("no common ALPN protocol")
            self.alpn_negotiated = chosen
        group = next((grp for grp in cfg.groups if grp in shares), None)
        if group is None:
            # A HelloRetryRequest would be legal here; an HTX server does not send one.
            raise _aq.AlertHandshakeFailure("no supported key share")
        peer = shares[group]
        try:
            if group == Group.X25519MLKEM768:
                if len(peer) != HYBRID_CLIENT_SHARE_LEN:
                    raise _aq.AlertIllegalParameter("bad X25519MLKEM768 share")
                ct, kem_secret = prim.mlkem768_encapsulate(peer[: prim.MLKEM768_PUBLIC_LEN])
                dh = prim.X25519Key.generate()
                secret = kem_secret + dh.exchange(peer[prim.MLKEM768_PUBLIC_LEN :])
                our_share = ct + dh.public_bytes
            else:
                if len(peer) != prim.X25519_LEN:
                    raise _aq.AlertIllegalParameter("bad X25519 share")
                dh = prim.X25519Key.generate()
                secret = dh.exchange(peer)
                our_share = dh.public_bytes
        except CryptoError as exc:
            raise _aq.AlertIllegalParameter("invalid key share") from exc
        self.qnet_group = int(group)
        self.client_random = hello.random
        self.server_random = prim.random_bytes(32)
        self.legacy_session_id = hello.legacy_session_id
        self.received_extensions = hello.other_extensions
        if self.alpn_cb is not None:  # set only under QUIC: reads the transport parameters
            if self.alpn_negotiated is None:
                raise _aq.AlertNoApplicationProtocol("QUIC needs ALPN (RFC 9001 §8.1)")
            self.alpn_cb(self.alpn_negotiated)

        ks = _aq.KeySchedule(suite)
        self.key_schedule = ks
        ks.extract(None)
        ks.update_hash(input_buf.data)
        server_hello = _aq.ServerHello(
            random=self.server_random,
            legacy_session_id=self.legacy_session_id,
            cipher_suite=suite,
            compression_method=0,
            key_share=(group, our_share),
            supported_version=TLS13,
        )
        with _aq.push_message(ks, initial_buf):
            _aq.push_server_hello(initial_buf, server_hello)
        ks.extract(secret)
        self._setup_traffic_protection(_aq.Direction.ENCRYPT, _aq.Epoch.HANDSHAKE, b"s hs traffic")
        self._setup_traffic_protection(_aq.Direction.DECRYPT, _aq.Epoch.HANDSHAKE, b"c hs traffic")
        with _aq.push_message(ks, handshake_buf):
            _aq.push_encrypted_extensions(
                handshake_buf,
                _aq.EncryptedExtensions(
                    alpn_protocol=self.alpn_negotiated,
                    other_extensions=list(self.handshake_extensions),  # empty over TCP
                ),
            )
        with _aq.push_message(ks, handshake_buf):
            _aq.push_certificate(
                handshake_buf,
                _aq.Certificate(
                    request_context=b"",
                    certificates=[
                        (c.public_bytes(serialization.Encoding.DER), b"")
                        for c in [self.certificate, *self.certificate_chain]
                        if c is not None
                    ],
                ),
            )
        assert self.certificate_private_key is not None
        signature = self.certificate_private_key.sign(
            ks.certificate_verify_data(_aq.SERVER_CONTEXT_STRING),
            *_aq.signature_algorithm_params(sig_alg),
        )
        with _aq.push_message(ks, handshake_buf):
            _aq.push_certificate_verify(
                handshake_buf, _aq.CertificateVerify(algorithm=sig_alg, signature=signature)
            )
        assert self._enc_key is not None
        with _aq.push_message(ks, handshake_buf):
            _aq.push_finished(
                handshake_buf, _aq.Finished(verify_data=ks.finished_verify_data(self._enc_key))
            )
        ks.extract(None)
        self._setup_traffic_protection(_aq.Direction.ENCRYPT, _aq.Epoch.ONE_RTT, b"s ap traffic")
        self._next_dec_key = ks.derive_secret(b"c ap traffic")
        self._psk_key_exchange_mode = None
        self._server_expect_finished()


# --- the engine under QUIC ----------------------------------------------------------


def quic_engine(config: TlsClientConfig | TlsServerConfig, stock: _aq.Context) -> _aq.Context:
    """Our engine in place of the ``stock`` context an aioquic 1.7.2 ``QuicConnection``
    built for itself (``QuicConnection.tls``): same transport parameters, ALPN and
    traffic-key callbacks, but our ClientHello writer (the template must be a QUIC
    one) and X25519MLKEM768 on both sides. No resumption, no 0-RTT.

    The first 1-RTT traffic key arrives when the transcript ends at the server
    Finished; that is where exporter_master_secret is taken (see ``quic_exporter``).
    """
    if isinstance(config, TlsClientConfig) and not config.template.quic:
        raise ValueError("template: a QUIC connection needs a QUIC template")
    engine = _Engine(config)
    engine.handshake_extensions = list(stock.handshake_extensions)
    engine.alpn_cb = stock.alpn_cb
    forward = stock.update_traffic_key_cb

    def on_key(
        direction: _aq.Direction, epoch: _aq.Epoch, suite: _aq.CipherSuite, secret: bytes
    ) -> None:
        if epoch is _aq.Epoch.ONE_RTT and engine.qnet_exporter is None:
            ks = engine.key_schedule
            assert ks is not None
            engine.qnet_exporter = (ks.algorithm, ks.derive_secret(b"exp master"))
        forward(direction, epoch, suite, secret)

    engine.update_traffic_key_cb = on_key
    return engine


def quic_exporter(engine: _aq.Context, label: bytes, context: bytes, length: int) -> bytes:
    """TLS-Exporter (RFC 8446 §7.5) of a QUIC connection's engine from ``quic_engine``."""
    held = getattr(engine, "qnet_exporter", None)
    if held is None:
        raise TlsStateError("the exporter needs a completed handshake")
    algorithm, secret = held
    return _export(algorithm, secret, label, context, length)


# --- the connection -----------------------------------------------------------------


class _Fatal(Exception):
    """Internal: abort with this alert."""

    def __init__(self, alert: int, detail: str) -> None:
        self.alert = alert
        self.detail = detail
        super().__init__(detail)


class _State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"  # both directions done or we failed
    FAILED = "failed"


_HEADER = struct.Struct("!BHH")
#: The one-byte content type that ends a TLSInnerPlaintext, for each type value.
_CONTENT_TYPE: Final = [bytes([t]) for t in range(256)]


class TlsConnection:
    """One TLS 1.3 connection over a byte stream, client or server, without I/O.

    ``receive_data(data)`` feeds bytes from the peer (``b""`` = EOF) and returns
    the events they caused; it raises ``TlsError`` (reason = the alert name)
    after queueing a fatal alert. ``data_to_send()`` drains the bytes to write.
    ``send``, ``key_update`` and ``close`` queue records.
    """

    def __init__(self, config: TlsClientConfig | TlsServerConfig, *, now: float = 0.0) -> None:
        self.is_client = isinstance(config, TlsClientConfig)
        self._config = config
        self._engine = _Engine(config)
        self._engine.update_traffic_key_cb = self._on_traffic_key
        self._state = _State.HANDSHAKE
        self._deadline: float | None = now + config.handshake_timeout
        self._out = bytearray()
        self._in = bytearray()
        self._hs = bytearray()
        self._read_key: _RecordKey | None = None
        self._write_keys: dict[_aq.Epoch, _RecordKey] = {}
        self._write_epoch: _aq.Epoch | None = None  # newest write key installed
        self._exporter_secret: bytes | None = None
        self._exporter_hash: hashes.HashAlgorithm | None = None
        self._ccs_sent = False
        self._ccs_allowed = self.is_client  # server: only after the ClientHello
        self._sent_close = False
        self._peer_closed = False
        self.alert_sent: int | None = None
        self.cipher_suite: int | None = None
        if self.is_client:
            self._drive(b"")

    # -- public surface --

    @property
    def handshake_complete(self) -> bool:
        return self._state is _State.OPEN or (
            self._state is _State.CLOSED and self._exporter_secret is not None
        )

    @property
    def alpn(self) -> str | None:
        return self._engine.alpn_negotiated

    @property
    def group(self) -> int | None:
        return self._engine.qnet_group

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        return self._engine._peer_certificate  # aioquic 1.7.2 internal

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """The handshake deadline, or None once the handshake is over."""
        return self._deadline if self._state is _State.HANDSHAKE else None

    def handle_timer(self, now: float) -> None:
        """Raise ``HtxTimeout`` (and mark the connection failed) if the handshake is late."""
        if self._state is _State.HANDSHAKE and self._deadline is not None and now >= self._deadline:
            self._state = _State.FAILED
            raise HtxTimeout("TLS handshake did not finish in time")

    def send(self, data: bytes) -> None:
        """Queue application data (split into records of at most 2^14 bytes)."""
        if self._state is not _State.OPEN or self._sent_close:
            raise TlsStateError(f"cannot send application data in state {self._state.value}")
        view = memoryview(bytes(data))  # a snapshot: the caller may reuse a bytearray
        for i in range(0, len(view), MAX_PLAINTEXT):
            self._maybe_auto_rekey()
            self._write_record(CT_APPLICATION_DATA, view[i : i + MAX_PLAINTEXT])

    def send_record(self, data: bytes, pad_to: int | None = None) -> None:
        """Queue ``data`` as exactly one application-data record; with ``pad_to``, zero
        padding (RFC 8446 §5.4) makes its content ``pad_to`` bytes long, so the record
        is ``pad_to + 17`` bytes. Raises ``ValueError`` when that does not fit."""
        if self._state is not _State.OPEN or self._sent_close:
            raise TlsStateError(f"cannot send application data in state {self._state.value}")
        pad = 0 if pad_to is None else pad_to - len(data)
        if pad < 0 or len(data) + pad > MAX_PLAINTEXT:
            raise ValueError(f"{len(data)} bytes cannot be padded to {pad_to}")
        self._maybe_auto_rekey()
        assert self._write_epoch is not None
        self._seal(self._write_keys[self._write_epoch], CT_APPLICATION_DATA, data, pad)

    def key_update(self, request_peer: bool = True) -> None:
        """Send a KeyUpdate and switch our sending key (RFC 8446 §4.6.3)."""
        if self._state is not _State.OPEN or self._sent_close:
            raise TlsStateError(f"cannot update keys in state {self._state.value}")
        self._send_key_update(request_peer)

    def close(self) -> None:
        """Queue close_notify; no more data may be sent. Idempotent."""
        if self._sent_close or self._state is _State.FAILED:
            return
        self._sent_close = True
        self._write_alert(Alert.close_notify, fatal=False)
        if self._peer_closed or self._state is _State.HANDSHAKE:
            self._state = _State.CLOSED

    def exporter(self, label: bytes, context: bytes, length: int) -> bytes:
        """TLS-Exporter(label, context, length) of RFC 8446 §7.5."""
        if self._exporter_secret is None or self._exporter_hash is None:
            raise TlsStateError("the exporter needs a completed handshake")
        return _export(self._exporter_hash, self._exporter_secret, label, context, length)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; ``b""`` means the peer closed TCP."""
        if self._state is _State.FAILED:
            raise TlsError("closed", "the connection already failed")
        events: list[Event] = []
        if self._peer_closed or (self._sent_close and not self.handshake_complete):
            # RFC 8446 §6.1: nothing after close_notify counts; and a handshake we
            # abandoned with close() is not continued.
            return events
        if not data:
            if self._in or self._hs:
                self._fail(Alert.decode_error)
                raise TlsError("decode_error", "connection closed inside a record")
            self._peer_closed = True
            if self._state is _State.HANDSHAKE:
                self._state = _State.FAILED
                raise TlsError("eof", "connection closed during the handshake")
            self._state = _State.CLOSED
            events.append(PeerClosed(clean=False))
            return events
        self._in += data
        try:
            self._read_records(events)
        except _Fatal as f:
            self._fail(f.alert)
            name = Alert(f.alert).name if f.alert in Alert._value2member_map_ else str(f.alert)
            raise TlsError(name, f.detail) from None
        return events

    # -- records in --

    def _read_records(self, events: list[Event]) -> None:
        while len(self._in) >= 5 and not self._peer_closed and self._state is not _State.FAILED:
            ctype, version, length = _HEADER.unpack_from(self._in)
            if ctype not in (CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE, CT_APPLICATION_DATA):
                raise _Fatal(Alert.unexpected_message, f"record type {ctype}")
            if version >> 8 != 3:
                raise _Fatal(Alert.decode_error, "record version")
            limit = MAX_CIPHERTEXT if self._read_key is not None else MAX_PLAINTEXT
            if length > limit:
                raise _Fatal(Alert.record_overflow, f"record of {length} bytes")
            if len(self._in) < 5 + length:
                break
            header = bytes(self._in[:5])
            with memoryview(self._in) as view:
                fragment = bytes(view[5 : 5 + length])  # one copy, not two
            del self._in[: 5 + length]
            self._handle_record(ctype, header, fragment, events)

    def _handle_record(
        self, ctype: int, header: bytes, fragment: bytes, events: list[Event]
    ) -> None:
        if ctype == CT_CHANGE_CIPHER_SPEC:
            # Middlebox compatibility (RFC 8446 §5): one byte 0x01, unprotected,
            # only between the ClientHello and the peer's Finished; dropped.
            if fragment != b"\x01" or not self._ccs_allowed or self._state is not _State.HANDSHAKE:
                raise _Fatal(Alert.unexpected_message, "change_cipher_spec")
            return
        if self._read_key is None:
            if ctype == CT_APPLICATION_DATA:
                raise _Fatal(Alert.unexpected_message, "protected record before keys")
            content_type, content = ctype, fragment
        else:
            if ctype != CT_APPLICATION_DATA:
                raise _Fatal(Alert.unexpected_message, "unprotected record after keys")
            if len(fragment) < TAG_LEN + 1:
                raise _Fatal(Alert.bad_record_mac, "record too short")
            try:
                inner = self._read_key.open(header, fragment)
            except InvalidTag:
                raise _Fatal(Alert.bad_record_mac, "record authentication failed") from None
            if len(inner) > MAX_INNER_PLAINTEXT:
                raise _Fatal(Alert.record_overflow, "inner plaintext too long")
            stripped = inner.rstrip(b"\x00")
            if not stripped:
                raise _Fatal(Alert.unexpected_message, "record without content type")
            content_type, content = stripped[-1], stripped[:-1]
        if self._hs and content_type != CT_HANDSHAKE:
            raise _Fatal(Alert.unexpected_message, "record interleaved with a handshake message")
        if content_type == CT_HANDSHAKE:
            if not content:
                raise _Fatal(Alert.unexpected_message, "empty handshake record")
            self._handle_handshake_bytes(content, events)
        elif content_type == CT_ALERT:
            self._handle_alert(content, events)
        elif content_type == CT_APPLICATION_DATA:
            if self._state is not _State.OPEN and not (
                self._state is _State.CLOSED and self.handshake_complete
            ):
                raise _Fatal(Alert.unexpected_message, "application data before the handshake")
            if content:
                events.append(ApplicationData(data=content))
        else:
            raise _Fatal(Alert.unexpected_message, f"inner content type {content_type}")

    def _handle_alert(self, content: bytes, events: list[Event]) -> None:
        if len(content) != 2:
            raise _Fatal(Alert.decode_error, "alert length")
        level, description = content
        if level not in (1, 2):
            raise _Fatal(Alert.illegal_parameter, "alert level")
        if description == Alert.close_notify:
            self._peer_closed = True
            if self._state is _State.HANDSHAKE:
                self._state = _State.FAILED
                raise TlsError("close_notify", "peer closed during the handshake")
            if self._sent_close:
                self._state = _State.CLOSED
            events.append(PeerClosed(clean=True))
        elif description == Alert.user_canceled:
            events.append(AlertReceived(description=description, fatal=False))
        else:
            # Every other alert is fatal in TLS 1.3 whatever its level (§6.2).
            self._peer_closed = True
            self._state = _State.FAILED
            events.append(AlertReceived(description=description, fatal=True))

    def _handle_handshake_bytes(self, content: bytes, events: list[Event]) -> None:
        self._hs += content
        while len(self._hs) >= 4:
            size = 4 + int.from_bytes(self._hs[1:4], "big")
            if size > MAX_HANDSHAKE_MESSAGE:
                raise _Fatal(Alert.decode_error, "handshake message too large")
            if len(self._hs) < size:
                break
            message = bytes(self._hs[:size])
            del self._hs[:size]
            key_before = self._read_key
            self._handle_handshake_message(message, events)
            if self._read_key is not key_before and self._hs:
                # §5.1: a message before a key change must end its record.
                raise _Fatal(Alert.unexpected_message, "handshake data across a key change")

    def _handle_handshake_message(self, message: bytes, events: list[Event]) -> None:
        mtype = message[0]
        if self._state is not _State.HANDSHAKE:
            if mtype == HT_KEY_UPDATE:
                self._handle_key_update(message)
                return
            if mtype == HT_NEW_SESSION_TICKET and self.is_client:
                self._drive(message)  # aioquic parses it; we never resume
                return
            raise _Fatal(Alert.unexpected_message, f"post-handshake message type {mtype}")
        if not self.is_client and mtype == HT_CLIENT_HELLO:
            self._ccs_allowed = True
        self._drive(message)
        done = (
            _aq.State.CLIENT_POST_HANDSHAKE if self.is_client else _aq.State.SERVER_POST_HANDSHAKE
        )
        if self._engine.state is done:
            self._state = _State.CLOSED if self._sent_close else _State.OPEN
            self._ccs_allowed = False
            self._deadline = None
            assert self.cipher_suite is not None and self._engine.qnet_group is not None
            events.append(
                HandshakeComplete(
                    alpn=self._engine.alpn_negotiated,
                    cipher_suite=self.cipher_suite,
                    group=self._engine.qnet_group,
                )
            )

    def _handle_key_update(self, message: bytes) -> None:
        if len(message) != 5 or message[1:4] != b"\x00\x00\x01":
            raise _Fatal(Alert.decode_error, "KeyUpdate length")
        request = message[4]
        if request not in (0, 1):
            raise _Fatal(Alert.illegal_parameter, "KeyUpdate request value")
        assert self._read_key is not None
        self._read_key = self._read_key.next()
        if request == 1 and not self._sent_close:
            self._send_key_update(False)

    def _drive(self, message: bytes) -> None:
        """Hand one whole handshake message to aioquic and write what it produced."""
        bufs = {
            e: Buffer(capacity=1 << 17)
            for e in (_aq.Epoch.INITIAL, _aq.Epoch.HANDSHAKE, _aq.Epoch.ONE_RTT)
        }
        try:
            self._engine.handle_message(message, bufs)
        except _aq.Alert as exc:
            raise _Fatal(int(exc.description), str(exc) or type(exc).__name__) from None
        except (BufferReadError, BufferWriteError, ValueError, KeyError, IndexError) as exc:
            raise _Fatal(Alert.decode_error, f"handshake message: {type(exc).__name__}") from None
        except UnsupportedAlgorithm:
            raise _Fatal(Alert.handshake_failure, "unsupported algorithm") from None
        initial = bufs[_aq.Epoch.INITIAL].data
        handshake = bufs[_aq.Epoch.HANDSHAKE].data
        one_rtt = bufs[_aq.Epoch.ONE_RTT].data
        if initial:
            cfg = self._config
            version = cfg.template.record_version if isinstance(cfg, TlsClientConfig) else TLS12
            for i in range(0, len(initial), MAX_PLAINTEXT):
                self._out += _HEADER.pack(
                    CT_HANDSHAKE, version, len(initial[i : i + MAX_PLAINTEXT])
                )
                self._out += initial[i : i + MAX_PLAINTEXT]
            if not self.is_client and self._engine.legacy_session_id:
                self._send_ccs()  # like OpenSSL, in middlebox compatibility mode
        if handshake:
            if self.is_client:
                self._send_ccs()  # like browsers, before the client's second flight
            self._write_handshake(_aq.Epoch.HANDSHAKE, handshake)
        if one_rtt:
            self._write_handshake(_aq.Epoch.ONE_RTT, one_rtt)

    # -- records out --

    def _send_ccs(self) -> None:
        if not self._ccs_sent:
            self._ccs_sent = True
            self._out += _HEADER.pack(CT_CHANGE_CIPHER_SPEC, TLS12, 1) + b"\x01"

    def _write_handshake(self, epoch: _aq.Epoch, data: bytes) -> None:
        for i in range(0, len(data), MAX_PLAINTEXT):
            self._seal(self._write_keys[epoch], CT_HANDSHAKE, data[i : i + MAX_PLAINTEXT])

    def _seal(self, key: _RecordKey, ctype: int, content: bytes | memoryview, pad: int = 0) -> None:
        inner = b"".join((content, _CONTENT_TYPE[ctype], bytes(pad)))
        header = _HEADER.pack(CT_APPLICATION_DATA, TLS12, len(inner) + TAG_LEN)
        self._out += header
        self._out += key.seal(header, inner)

    def _write_record(self, ctype: int, content: bytes | memoryview) -> None:
        if self._write_epoch is None:
            self._out += _HEADER.pack(ctype, TLS12, len(content)) + content
        else:
            self._seal(self._write_keys[self._write_epoch], ctype, content)

    def _write_alert(self, description: int, *, fatal: bool) -> None:
        self._write_record(CT_ALERT, bytes([2 if fatal else 1, description]))

    def _send_key_update(self, request_peer: bool) -> None:
        self._write_record(CT_HANDSHAKE, bytes([HT_KEY_UPDATE, 0, 0, 1, int(request_peer)]))
        epoch = _aq.Epoch.ONE_RTT
        self._write_keys[epoch] = self._write_keys[epoch].next()

    def _maybe_auto_rekey(self) -> None:
        key = self._write_keys.get(_aq.Epoch.ONE_RTT)
        if key is not None and key.seq >= AUTO_KEY_UPDATE_RECORDS:
            self._send_key_update(False)

    def _fail(self, alert: int) -> None:
        if self._state is not _State.FAILED and not self._sent_close:
            self._write_alert(alert, fatal=True)
            self.alert_sent = alert
        self._state = _State.FAILED

    # -- aioquic callback --

    def _on_traffic_key(
        self, direction: _aq.Direction, epoch: _aq.Epoch, suite: _aq.CipherSuite, secret: bytes
    ) -> None:
        if epoch not in (_aq.Epoch.HANDSHAKE, _aq.Epoch.ONE_RTT):
            raise _aq.AlertInternalError("unexpected epoch")  # 0-RTT is never offered
        self.cipher_suite = int(suite)
        key = _RecordKey(int(suite), secret)
        if direction is _aq.Direction.DECRYPT:
            self._read_key = key
        else:
            self._write_keys[epoch] = key
            self._write_epoch = epoch
        if epoch is _aq.Epoch.ONE_RTT and self._exporter_secret is None:
            # The first 1-RTT secret is derived when the transcript ends at the
            # server Finished, which is where exporter_master_secret is defined.
            ks = self._engine.key_schedule
            assert ks is not None
            self._exporter_secret = ks.derive_secret(b"exp master")
            self._exporter_hash = ks.algorithm
