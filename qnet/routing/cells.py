"""Link units and relay cells (spec/cells.md): layouts and per-hop layer crypto.

Sans-I/O: codecs are pure functions over bytes; the layer objects hold only a
key and a cell counter. Circuits (who holds which layer) come in ``circuits.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qnet.constants import (
    BODY_LEN,
    CELL_PLAINTEXT_LEN,
    CELL_SALT,
    RELAY_DATA_MAX,
    RELAY_HEADER_LEN,
    UNIT_HEADER_LEN,
    UNIT_LEN,
)
from qnet.crypto import accel
from qnet.crypto.primitives import hkdf_sha256
from qnet.errors import CryptoError, MalformedCell, TamperedCell

COUNTER_LIMIT = 2**64


class UnitCommand(enum.IntEnum):
    PADDING = 0x00
    SPHINX = 0x01
    CREATE = 0x02
    CREATED = 0x03
    RELAY = 0x04
    DESTROY = 0x05


class RelayCommand(enum.IntEnum):
    BEGIN = 0x01
    DATA = 0x02
    END = 0x03
    CONNECTED = 0x04
    SENDME = 0x05
    DROP = 0x06
    RESOLVE = 0x07
    RESOLVED = 0x08
    XOFF = 0x09
    XON = 0x0A


_NO_CIRCUIT = {UnitCommand.PADDING, UnitCommand.SPHINX}


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    """One 2,048-byte link unit."""

    circ_id: int
    command: UnitCommand
    body: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.circ_id < 2**32:
            raise ValueError("circ_id must fit in 32 bits")
        if len(self.body) != BODY_LEN:
            raise ValueError(f"body must be {BODY_LEN} bytes")
        if self.command is UnitCommand.SPHINX and self.circ_id:
            raise ValueError("SPHINX units carry circ_id 0")
        if self.command not in _NO_CIRCUIT and not self.circ_id:
            raise ValueError(f"{self.command.name} needs a circuit id")

    def encode(self) -> bytes:
        return self.circ_id.to_bytes(4, "big") + bytes([self.command, 0, 0, 0]) + self.body


def relay_unit_header(circ_id: int) -> bytes:
    """The 8 header bytes of a RELAY unit on ``circ_id`` (1 .. 2^32-1): what
    ``Unit(circ_id=circ_id, command=RELAY, body=...).encode()`` puts before the body."""
    if not 0 < circ_id < 2**32:
        raise ValueError("a RELAY unit needs a circuit id that fits in 32 bits")
    return circ_id.to_bytes(4, "big") + _RELAY_TAIL


_RELAY_TAIL = bytes([UnitCommand.RELAY, 0, 0, 0])


def decode_unit(raw: bytes) -> Unit:
    """Parse one link unit. Raises ``MalformedCell``; nothing else."""
    if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != UNIT_LEN:
        raise MalformedCell("bad_length", f"a unit is {UNIT_LEN} bytes")
    raw = bytes(raw)
    try:
        command = UnitCommand(raw[4])
    except ValueError:
        raise MalformedCell("bad_command", f"unknown unit command 0x{raw[4]:02x}") from None
    if any(raw[5:UNIT_HEADER_LEN]):
        raise MalformedCell("bad_header", "reserved bytes set")
    try:
        return Unit(
            circ_id=int.from_bytes(raw[:4], "big"), command=command, body=raw[UNIT_HEADER_LEN:]
        )
    except ValueError as exc:
        raise MalformedCell("bad_header", str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCell:
    """The plaintext the far end of a circuit sees (2,024 bytes encoded)."""

    command: RelayCommand
    stream_id: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.stream_id < 2**16:
            raise ValueError("stream_id must fit in 16 bits")
        if len(self.data) > RELAY_DATA_MAX:
            raise ValueError(f"data is at most {RELAY_DATA_MAX} bytes")

    def encode(self) -> bytes:
        head = (
            bytes([self.command])
            + self.stream_id.to_bytes(2, "big")
            + len(self.data).to_bytes(2, "big")
        )
        return head + self.data + bytes(RELAY_DATA_MAX - len(self.data))


def decode_relay_cell(plain: bytes) -> RelayCell:
    """Parse a 2,024-byte relay plaintext. Raises ``MalformedCell``; nothing else."""
    if not isinstance(plain, (bytes, bytearray, memoryview)) or len(plain) != CELL_PLAINTEXT_LEN:
        raise MalformedCell("bad_length", f"a relay plaintext is {CELL_PLAINTEXT_LEN} bytes")
    plain = bytes(plain)
    try:
        command = RelayCommand(plain[0])
    except ValueError:
        raise MalformedCell("bad_command", f"unknown relay command 0x{plain[0]:02x}") from None
    length = int.from_bytes(plain[3:5], "big")
    if length > RELAY_DATA_MAX:
        raise MalformedCell("bad_length", f"data length {length} > {RELAY_DATA_MAX}")
    end = RELAY_HEADER_LEN + length
    if plain.count(0, end) != CELL_PLAINTEXT_LEN - end:  # any(plain[end:]), in C
        raise MalformedCell("bad_padding", "nonzero padding")
    return RelayCell(
        command=command,
        stream_id=int.from_bytes(plain[1:3], "big"),
        data=plain[RELAY_HEADER_LEN:end],
    )


# --- layer crypto ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerKeys:
    """One hop's two direction keys."""

    forward: bytes
    backward: bytes


def derive_layer_keys(hop_key_material: bytes) -> LayerKeys:
    """spec/cells.md §3: HKDF(salt="qnet-cell-v1", info="layer keys", L=64)."""
    okm = hkdf_sha256(hop_key_material, CELL_SALT, b"layer keys", 64)
    return LayerKeys(forward=okm[:32], backward=okm[32:])


class _Counter:
    __slots__ = ("key", "counter")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise CryptoError("layer key must be 32 bytes")
        self.key = bytes(key)
        self.counter = 0

    def _take(self, n: int) -> int:
        start = self.counter
        if start + n > COUNTER_LIMIT:
            raise CryptoError("cell counter exhausted; the circuit must be rebuilt")
        self.counter = start + n
        return start


class PassLayer(_Counter):
    """A pass-through layer (one hop, one direction): XOR with the ChaCha20 keystream."""

    __slots__ = ()

    def apply(self, body: bytes) -> bytes:
        if len(body) != BODY_LEN:
            raise MalformedCell("bad_length", f"a cell body is {BODY_LEN} bytes")
        return accel.cell_xor(self.key, self._take(1), body)

    def apply_batch(self, bodies: bytes) -> bytes:
        """Apply to ``len(bodies) // 2040`` consecutive cells in one hot-path call."""
        if len(bodies) % BODY_LEN:
            raise MalformedCell("bad_length", f"batch is not a multiple of {BODY_LEN}")
        return accel.cell_xor_batch(self.key, self._take(len(bodies) // BODY_LEN), bodies)


class EndLayer(_Counter):
    """The far end's layer (one direction): ChaCha20-Poly1305 with the cell counter as nonce."""

    __slots__ = ()

    def seal(self, plaintext: bytes) -> bytes:
        if len(plaintext) != CELL_PLAINTEXT_LEN:
            raise ValueError(f"a relay plaintext is {CELL_PLAINTEXT_LEN} bytes")
        return accel.cell_seal(self.key, self._take(1), plaintext)

    def seal_batch(self, plaintexts: bytes) -> bytes:
        """Seal ``len(plaintexts) // 2024`` consecutive cells in one hot-path call."""
        if len(plaintexts) % CELL_PLAINTEXT_LEN:
            raise ValueError(f"batch is not a multiple of {CELL_PLAINTEXT_LEN}")
        return accel.cell_seal_batch(
            self.key, self._take(len(plaintexts) // CELL_PLAINTEXT_LEN), plaintexts
        )

    def open(self, body: bytes) -> bytes:
        """Open the next cell. Raises ``TamperedCell`` (the circuit must then be destroyed)."""
        if len(body) != BODY_LEN:
            raise MalformedCell("bad_length", f"a cell body is {BODY_LEN} bytes")
        plain = accel.cell_open(self.key, self.counter, body)
        if plain is None:
            raise TamperedCell("bad_tag", "relay cell failed its end-to-end check")
        self._take(1)
        return plain

    def open_prefix(self, bodies: bytes) -> tuple[bytes, int]:
        """Open consecutive cells up to the first that fails: ``(plaintexts, failed)``,
        ``failed`` being that cell's index or -1. The counter moves past the opened ones."""
        if len(bodies) % BODY_LEN:
            raise MalformedCell("bad_length", f"batch is not a multiple of {BODY_LEN}")
        plains, failed = accel.cell_open_batch(self.key, self.counter, bodies)
        self._take(len(plains) // CELL_PLAINTEXT_LEN)
        return plains, failed

    def open_batch(self, bodies: bytes) -> bytes:
        """Open consecutive cells; raises ``TamperedCell`` at the first failure."""
        if len(bodies) % BODY_LEN:
            raise MalformedCell("bad_length", f"batch is not a multiple of {BODY_LEN}")
        plains, failed = accel.cell_open_batch(self.key, self.counter, bodies)
        if failed >= 0:
            self._take(failed)
            raise TamperedCell("bad_tag", f"cell {failed} of the batch failed its end-to-end check")
        self._take(len(bodies) // BODY_LEN)
        return plains


class ClientOnion:
    """The client's view of a circuit's layers: seal forward cells, open backward ones."""

    def __init__(self, hops: list[LayerKeys]) -> None:
        if not hops:
            raise ValueError("a circuit has at least one hop")
        self._fwd = [PassLayer(h.forward) for h in hops[:-1]]
        self._back = [PassLayer(h.backward) for h in hops[:-1]]
        self._end_fwd = EndLayer(hops[-1].forward)
        self._end_back = EndLayer(hops[-1].backward)

    def seal_forward(self, plaintext: bytes) -> bytes:
        body = self._end_fwd.seal(plaintext)
        for layer in reversed(self._fwd):
            body = layer.apply(body)
        return body

    def open_backward(self, body: bytes) -> bytes:
        for layer in self._back:
            body = layer.apply(body)
        return self._end_back.open(body)

    def seal_forward_batch(self, plaintexts: bytes) -> bytes:
        """``seal_forward`` over consecutive 2,024-byte plaintexts, bodies joined."""
        body = self._end_fwd.seal_batch(plaintexts)
        for layer in reversed(self._fwd):
            body = layer.apply_batch(body)
        return body

    def open_backward_batch(self, bodies: bytes) -> tuple[bytes, int]:
        """``open_backward`` over consecutive bodies up to the first that fails its
        check: ``(plaintexts, failed)``, ``failed`` being that cell's index or -1."""
        for layer in self._back:
            bodies = layer.apply_batch(bodies)
        return self._end_back.open_prefix(bodies)
