"""ctypes binding of libqnet (bindings/c/include/qnet.h).

Loads ``libqnet.so`` from ``$QNET_LIB`` if set, else from ``bindings/c/build/`` next to
this file, else from the system library path. Every function takes and returns
``bytes``; a status other than ``QNET_OK`` raises :class:`QnetError`, whose ``reason``
is the spec's short code (``"bad_mac"``, ``"bad_tag"``, ...).

Only the standard library is used, so the file can be copied into any project.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
DEFAULT_LIB = _HERE.parent / "build" / "libqnet.so"

PACKET_LEN = 2040
PAYLOAD_LEN = 1512
MESSAGE_LEN = 1496
SURB_LEN = 624
MAX_HOPS = 5
CELL_BODY_LEN = 2040
CELL_PLAINTEXT_LEN = 2024
UNIT_LEN = 2048
HTX_MAX_FRAME = 16384
HTX_MAX_PAYLOAD = 16358
TICKET_MAX_WIRE = 337
TICKET_MAX_CARRIER = 512
NEED_MORE = 4

COMMANDS = {
    "RELAY": 1,
    "DELIVER": 2,
    "SURB_REPLY": 3,
    "CIRCUIT_EXTEND": 4,
    "CIRCUIT_END": 5,
}

_u8p = ctypes.POINTER(ctypes.c_uint8)

# A route: (node_id, public_key, slot) per hop; slot keys as in spec/vectors/sphinx.json
# ("command" as a name or number, "delay_us", "address", "tag", "params" as bytes).
Route = list[tuple[bytes, bytes, dict[str, Any]]]


class QnetError(ValueError):
    """A libqnet call returned an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.status = status
        self.reason = reason


class Slot(ctypes.Structure):
    _fields_ = [
        ("command", ctypes.c_uint8),
        ("delay_us", ctypes.c_uint32),
        ("address", ctypes.c_uint8 * 32),
        ("tag", ctypes.c_uint8 * 16),
        ("params", ctypes.c_uint8 * 8),
    ]


class RouteHop(ctypes.Structure):
    _fields_ = [
        ("node_id", ctypes.c_uint8 * 32),
        ("public_key", ctypes.c_uint8 * 32),
        ("slot", Slot),
    ]


class HopKeys(ctypes.Structure):
    _fields_ = [
        ("alpha", ctypes.c_uint8 * 32),
        ("shared", ctypes.c_uint8 * 32),
        ("okm", ctypes.c_uint8 * 240),
    ]


class SphinxResult(ctypes.Structure):
    _fields_ = [
        ("slot", Slot),
        ("replay_tag", ctypes.c_uint8 * 16),
        ("hop_secret", ctypes.c_uint8 * 32),
        ("data", ctypes.c_uint8 * PACKET_LEN),
        ("data_len", ctypes.c_size_t),
    ]


class SurbSecrets(ctypes.Structure):
    _fields_ = [
        ("surb_id", ctypes.c_uint8 * 16),
        ("surb_key", ctypes.c_uint8 * 32),
        ("n_hops", ctypes.c_size_t),
        ("lioness_keys", (ctypes.c_uint8 * 128) * MAX_HOPS),
    ]


class HtxKeys(ctypes.Structure):
    _fields_ = [
        ("secret", ctypes.c_uint8 * 32),
        ("key", ctypes.c_uint8 * 32),
        ("nonce_salt", ctypes.c_uint8 * 12),
        ("generation", ctypes.c_uint64),
    ]


class HtxFrame(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("stream_id", ctypes.c_uint32),
        ("payload_len", ctypes.c_size_t),
        ("consumed", ctypes.c_size_t),
        ("fin", ctypes.c_uint8),
        ("offset", ctypes.c_uint64),
        ("data_offset", ctypes.c_size_t),
        ("data_len", ctypes.c_size_t),
        ("scope", ctypes.c_uint8),
        ("credit", ctypes.c_uint32),
        ("close_code", ctypes.c_uint16),
    ]


class TicketKey(ctypes.Structure):
    _fields_ = [
        ("key_id", ctypes.c_uint8),
        ("private_key", ctypes.c_uint8 * 32),
        ("public_key", ctypes.c_uint8 * 32),
    ]


class Ticket(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint8),
        ("client_public", ctypes.c_uint8 * 32),
        ("key_id", ctypes.c_uint8),
        ("nonce", ctypes.c_uint8 * 16),
        ("ticket", ctypes.c_uint8 * 32),
        ("padding", ctypes.c_uint8 * 255),
        ("padding_len", ctypes.c_size_t),
    ]


class DirEnvelope(ctypes.Structure):
    _fields_ = [
        ("body", _u8p),
        ("body_len", ctypes.c_size_t),
        ("sig_ed25519", _u8p),
        ("sig_mldsa65", _u8p),
    ]


def find_library() -> str:
    """Where libqnet.so is loaded from (see the module docstring)."""
    env = os.environ.get("QNET_LIB")
    if env:
        return env
    if DEFAULT_LIB.exists():
        return str(DEFAULT_LIB)
    found = ctypes.util.find_library("qnet")
    if found is None:
        raise OSError("libqnet not found: build it with `make -C bindings/c` or set QNET_LIB")
    return found


_SIGNATURES: dict[str, list[object]] = {
    "qnet_init": [],
    "qnet_sphinx_create": [
        ctypes.POINTER(RouteHop), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(HopKeys),
    ],
    "qnet_sphinx_unwrap": [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.POINTER(SphinxResult),
    ],
    "qnet_surb_create": [
        ctypes.POINTER(RouteHop), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(SurbSecrets),
        ctypes.POINTER(HopKeys),
    ],
    "qnet_surb_reply": [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
        ctypes.c_char_p,
    ],
    "qnet_surb_open": [
        ctypes.POINTER(SurbSecrets), ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_lioness_encrypt": [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p],
    "qnet_lioness_decrypt": [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p],
    "qnet_cell_layer_keys": [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p],
    "qnet_cell_xor": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_cell_xor_batch": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_cell_seal": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_cell_seal_batch": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_cell_open": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
    ],
    "qnet_cell_open_batch": [
        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_size_t),
    ],
    "qnet_unit_decode": [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_uint8),
    ],
    "qnet_relay_cell_decode": [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint8),
        ctypes.POINTER(ctypes.c_uint16), ctypes.POINTER(ctypes.c_size_t),
    ],
    "qnet_htx_session_keys": [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(HtxKeys), ctypes.POINTER(HtxKeys),
    ],
    "qnet_htx_keys_next": [ctypes.POINTER(HtxKeys), ctypes.POINTER(HtxKeys)],
    "qnet_htx_frame_seal": [
        ctypes.POINTER(HtxKeys), ctypes.c_uint64, ctypes.c_uint8, ctypes.c_uint32,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t),
    ],
    "qnet_htx_frame_open": [
        ctypes.POINTER(HtxKeys), ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(HtxFrame),
    ],
    "qnet_ticket_build": [
        ctypes.c_char_p, ctypes.c_uint8, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_size_t),
    ],
    "qnet_ticket_parse": [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(Ticket)],
    "qnet_ticket_verify": [
        ctypes.POINTER(Ticket), ctypes.POINTER(TicketKey), ctypes.c_size_t, ctypes.c_uint64,
        ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint64),
    ],
    "qnet_dir_node_id": [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p],
    "qnet_dir_envelope_split": [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(DirEnvelope)],
    "qnet_dir_verify_ed25519": [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
    ],
}


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """One peeled Sphinx layer."""

    command: int
    delay_us: int
    address: bytes
    tag: bytes
    params: bytes
    replay_tag: bytes
    hop_secret: bytes
    data: bytes  # next packet, message, or SURB payload (by command)


@dataclass(frozen=True, slots=True)
class Frame:
    """One opened HTX frame (fields that do not apply to the type are zero)."""

    type: int
    stream_id: int
    payload: bytes
    consumed: int
    fin: bool
    offset: int
    data: bytes
    credit: int
    close_code: int


def _fill(array: ctypes.Array[ctypes.c_uint8], value: bytes) -> None:
    if len(value) != len(array):
        raise ValueError(f"expected {len(array)} bytes, got {len(value)}")
    ctypes.memmove(array, value, len(value))


class Library:
    """One loaded libqnet. Thread-safe: it holds no state besides the handle."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or find_library()
        self._lib = ctypes.CDLL(self.path)
        lib = self._lib
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        lib.qnet_reason.argtypes = [ctypes.c_int]
        lib.qnet_reason.restype = ctypes.c_char_p
        lib.qnet_strerror.argtypes = [ctypes.c_int]
        lib.qnet_strerror.restype = ctypes.c_char_p
        lib.qnet_version.argtypes = []
        lib.qnet_version.restype = ctypes.c_char_p
        self._check(lib.qnet_init())

    # --- plumbing

    def reason(self, status: int) -> str:
        return str(self._lib.qnet_reason(status).decode())

    def version(self) -> str:
        return str(self._lib.qnet_version().decode())

    def _check(self, status: int) -> None:
        if status != 0:
            raise QnetError(
                status, self.reason(status), self._lib.qnet_strerror(status).decode()
            )

    @staticmethod
    def _route(route: Route) -> ctypes.Array[RouteHop]:
        """``route``: (node_id, public_key, slot dict) per hop; slot keys as in the vectors."""
        hops = (RouteHop * len(route))()
        for hop, (node_id, public, slot) in zip(hops, route, strict=True):
            _fill(hop.node_id, node_id)
            _fill(hop.public_key, public)
            command = slot["command"]
            hop.slot.command = COMMANDS[command] if isinstance(command, str) else int(command)
            hop.slot.delay_us = int(slot.get("delay_us", 0))
            for field, size in (("address", 32), ("tag", 16), ("params", 8)):
                _fill(getattr(hop.slot, field), bytes(slot.get(field, bytes(size))))
        return hops

    # --- Sphinx

    def sphinx_create(
        self,
        route: Route,
        message: bytes,
        ephemerals: bytes | None = None,
        padding: bytes | None = None,
    ) -> tuple[bytes, list[bytes]]:
        """The packet and each hop's 240-byte okm."""
        hops = self._route(route)
        keys = (HopKeys * len(route))()
        out = ctypes.create_string_buffer(PACKET_LEN)
        self._check(
            self._lib.qnet_sphinx_create(
                hops, len(route), message, len(message), ephemerals, padding, out, keys
            )
        )
        return out.raw, [bytes(k.okm) for k in keys]

    def sphinx_unwrap(self, private: bytes, public: bytes, packet: bytes) -> Unwrapped:
        res = SphinxResult()
        self._check(self._lib.qnet_sphinx_unwrap(private, public, packet, len(packet), res))
        return Unwrapped(
            command=res.slot.command,
            delay_us=res.slot.delay_us,
            address=bytes(res.slot.address),
            tag=bytes(res.slot.tag),
            params=bytes(res.slot.params),
            replay_tag=bytes(res.replay_tag),
            hop_secret=bytes(res.hop_secret),
            data=bytes(res.data[: res.data_len]),
        )

    def surb_create(
        self,
        route: Route,
        surb_id: bytes | None = None,
        ephemerals: bytes | None = None,
        padding: bytes | None = None,
        surb_key: bytes | None = None,
    ) -> tuple[bytes, SurbSecrets]:
        hops = self._route(route)
        secrets = SurbSecrets()
        out = ctypes.create_string_buffer(SURB_LEN)
        self._check(
            self._lib.qnet_surb_create(
                hops, len(route), surb_id, ephemerals, padding, surb_key, out, secrets, None
            )
        )
        return out.raw, secrets

    def surb_reply(self, surb: bytes, reply: bytes) -> tuple[bytes, bytes]:
        first = ctypes.create_string_buffer(32)
        packet = ctypes.create_string_buffer(PACKET_LEN)
        self._check(self._lib.qnet_surb_reply(surb, len(surb), reply, len(reply), first, packet))
        return first.raw, packet.raw

    def surb_open(self, secrets: SurbSecrets, payload: bytes) -> bytes:
        out = ctypes.create_string_buffer(MESSAGE_LEN)
        self._check(self._lib.qnet_surb_open(secrets, payload, len(payload), out))
        return out.raw

    def lioness_encrypt(self, keys: bytes, block: bytes) -> bytes:
        out = ctypes.create_string_buffer(len(block))
        self._check(self._lib.qnet_lioness_encrypt(keys, block, len(block), out))
        return out.raw

    def lioness_decrypt(self, keys: bytes, block: bytes) -> bytes:
        out = ctypes.create_string_buffer(len(block))
        self._check(self._lib.qnet_lioness_decrypt(keys, block, len(block), out))
        return out.raw

    # --- cells

    def cell_layer_keys(self, material: bytes) -> tuple[bytes, bytes]:
        fwd, bwd = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
        self._check(self._lib.qnet_cell_layer_keys(material, len(material), fwd, bwd))
        return fwd.raw, bwd.raw

    def cell_xor(self, key: bytes, counter: int, body: bytes) -> bytes:
        out = ctypes.create_string_buffer(len(body))
        self._check(self._lib.qnet_cell_xor(key, counter, body, len(body), out))
        return out.raw

    def cell_xor_batch(self, key: bytes, counter: int, bodies: bytes) -> bytes:
        if len(bodies) % CELL_BODY_LEN:
            raise ValueError(f"batch is not a multiple of {CELL_BODY_LEN}")
        out = ctypes.create_string_buffer(len(bodies))
        n = len(bodies) // CELL_BODY_LEN
        self._check(self._lib.qnet_cell_xor_batch(key, counter, bodies, n, out))
        return out.raw

    def cell_seal(self, key: bytes, counter: int, plaintext: bytes) -> bytes:
        out = ctypes.create_string_buffer(CELL_BODY_LEN)
        self._check(self._lib.qnet_cell_seal(key, counter, plaintext, len(plaintext), out))
        return out.raw

    def cell_seal_batch(self, key: bytes, counter: int, plaintexts: bytes) -> bytes:
        if len(plaintexts) % CELL_PLAINTEXT_LEN:
            raise ValueError(f"batch is not a multiple of {CELL_PLAINTEXT_LEN}")
        n = len(plaintexts) // CELL_PLAINTEXT_LEN
        out = ctypes.create_string_buffer(n * CELL_BODY_LEN)
        self._check(self._lib.qnet_cell_seal_batch(key, counter, plaintexts, n, out))
        return out.raw

    def cell_open(self, key: bytes, counter: int, body: bytes) -> bytes:
        out = ctypes.create_string_buffer(CELL_PLAINTEXT_LEN)
        self._check(self._lib.qnet_cell_open(key, counter, body, len(body), out))
        return out.raw

    def cell_open_batch(self, key: bytes, counter: int, bodies: bytes) -> tuple[bytes, int]:
        """(plaintexts that opened, index of the first failure or -1)."""
        if len(bodies) % CELL_BODY_LEN:
            raise ValueError(f"batch is not a multiple of {CELL_BODY_LEN}")
        n = len(bodies) // CELL_BODY_LEN
        out = ctypes.create_string_buffer(n * CELL_PLAINTEXT_LEN)
        failed = ctypes.c_size_t()
        status = self._lib.qnet_cell_open_batch(key, counter, bodies, n, out, ctypes.byref(failed))
        if status == 20:  # QNET_ERR_TAG
            return out.raw[: failed.value * CELL_PLAINTEXT_LEN], failed.value
        self._check(status)
        return out.raw, -1

    def unit_decode(self, unit: bytes) -> tuple[int, int, bytes]:
        circ, cmd = ctypes.c_uint32(), ctypes.c_uint8()
        self._check(
            self._lib.qnet_unit_decode(unit, len(unit), ctypes.byref(circ), ctypes.byref(cmd))
        )
        return circ.value, cmd.value, unit[8:]

    def relay_cell_decode(self, plaintext: bytes) -> tuple[int, int, bytes]:
        cmd, sid, n = ctypes.c_uint8(), ctypes.c_uint16(), ctypes.c_size_t()
        self._check(
            self._lib.qnet_relay_cell_decode(
                plaintext, len(plaintext), ctypes.byref(cmd), ctypes.byref(sid), ctypes.byref(n)
            )
        )
        return cmd.value, sid.value, plaintext[5 : 5 + n.value]

    # --- HTX

    def htx_session_keys(self, session_secret: bytes) -> tuple[bytes, HtxKeys, HtxKeys]:
        k0 = ctypes.create_string_buffer(32)
        client, server = HtxKeys(), HtxKeys()
        self._check(self._lib.qnet_htx_session_keys(session_secret, k0, client, server))
        return k0.raw, client, server

    def htx_keys_next(self, keys: HtxKeys) -> HtxKeys:
        out = HtxKeys()
        self._check(self._lib.qnet_htx_keys_next(keys, out))
        return out

    def htx_frame_seal(
        self, keys: HtxKeys, counter: int, ftype: int, stream_id: int, payload: bytes
    ) -> bytes:
        out = ctypes.create_string_buffer(HTX_MAX_FRAME)
        n = ctypes.c_size_t()
        self._check(
            self._lib.qnet_htx_frame_seal(
                keys, counter, ftype, stream_id, payload, len(payload), out, HTX_MAX_FRAME,
                ctypes.byref(n),
            )
        )
        return out.raw[: n.value]

    def htx_frame_open(self, keys: HtxKeys, counter: int, wire: bytes) -> Frame | None:
        """The frame at the start of ``wire``; ``None`` when more bytes are needed."""
        payload = ctypes.create_string_buffer(HTX_MAX_PAYLOAD)
        fr = HtxFrame()
        status = self._lib.qnet_htx_frame_open(
            keys, counter, wire, len(wire), payload, HTX_MAX_PAYLOAD, fr
        )
        if status == NEED_MORE:
            return None
        self._check(status)
        body = payload.raw[: fr.payload_len]
        return Frame(
            type=fr.type,
            stream_id=fr.stream_id,
            payload=body,
            consumed=fr.consumed,
            fin=bool(fr.fin),
            offset=fr.offset,
            data=body[fr.data_offset : fr.data_offset + fr.data_len],
            credit=fr.credit,
            close_code=fr.close_code,
        )

    # --- tickets

    def ticket_build(
        self,
        server_public: bytes,
        key_id: int,
        hour: int,
        ephemeral: bytes | None,
        nonce: bytes | None,
        padding: bytes,
    ) -> tuple[bytes, str]:
        wire = ctypes.create_string_buffer(TICKET_MAX_WIRE)
        carrier = ctypes.create_string_buffer(TICKET_MAX_CARRIER + 1)
        wlen, clen = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(
            self._lib.qnet_ticket_build(
                server_public, key_id, hour, ephemeral, nonce, padding, len(padding), wire,
                TICKET_MAX_WIRE, ctypes.byref(wlen), carrier, TICKET_MAX_CARRIER + 1,
                ctypes.byref(clen),
            )
        )
        return wire.raw[: wlen.value], carrier.raw[: clen.value].decode("ascii")

    def ticket_check(
        self,
        carrier: str | None,
        keys: list[tuple[int, bytes, bytes]],
        server_hour: int,
        skew_hours: int = 1,
        stale_hours: int = 1,
    ) -> tuple[bytes, int]:
        """Parse and verify; returns ``(client_public, ticket_hour)`` or raises."""
        raw = (carrier or "").encode("utf-8", "surrogateescape")
        ticket = Ticket()
        self._check(self._lib.qnet_ticket_parse(raw, len(raw), ticket))
        table = (TicketKey * max(len(keys), 1))()
        for slot, (key_id, private, public) in zip(table, keys, strict=False):
            slot.key_id = key_id
            _fill(slot.private_key, private)
            _fill(slot.public_key, public)
        hour = ctypes.c_uint64()
        self._check(
            self._lib.qnet_ticket_verify(
                ticket, table, len(keys), server_hour, skew_hours, stale_hours, ctypes.byref(hour)
            )
        )
        ctypes.memset(table, 0, ctypes.sizeof(table))
        return bytes(ticket.client_public), hour.value

    # --- directory

    def dir_node_id(self, ed25519_public: bytes, mldsa65_public: bytes) -> bytes:
        out = ctypes.create_string_buffer(32)
        self._check(
            self._lib.qnet_dir_node_id(ed25519_public, mldsa65_public, len(mldsa65_public), out)
        )
        return out.raw

    def dir_envelope_split(self, envelope: bytes) -> tuple[bytes, bytes, bytes]:
        """(body, sig_ed25519, sig_mldsa65)."""
        env = DirEnvelope()
        buf = ctypes.create_string_buffer(envelope, len(envelope))
        self._check(self._lib.qnet_dir_envelope_split(buf, len(envelope), env))
        return (
            ctypes.string_at(env.body, env.body_len),
            ctypes.string_at(env.sig_ed25519, 64),
            ctypes.string_at(env.sig_mldsa65, 3309),
        )

    def dir_verify_ed25519(self, public: bytes, context: bytes, body: bytes, sig: bytes) -> None:
        """Returns if the Ed25519 signature over ``context ‖ body`` verifies, else raises."""
        scratch = ctypes.create_string_buffer(len(context) + len(body))
        self._check(
            self._lib.qnet_dir_verify_ed25519(
                public, context, len(context), body, len(body), sig, scratch, len(scratch)
            )
        )
