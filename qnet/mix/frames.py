"""Mixed-mode frames: what travels inside one Sphinx message (spec/mixed.md §2).

A frame is the 1,496-byte message of a Sphinx packet (``MESSAGE_LEN``)::

    kind (1) ‖ flags (1) ‖ n_surbs (1) ‖ reserved (1) ‖ conn_id (16)
    ‖ seq (4) ‖ ack (4) ‖ sack (4) ‖ length (2) ‖ credit (2)
    ‖ n_surbs × SURB (624 each) ‖ data (length) ‖ zero padding

Pure codec, no state: ``Frame.encode`` and ``decode_frame``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qnet.constants import MESSAGE_LEN
from qnet.errors import MalformedPacket
from qnet.mix.sphinx import SURB_LEN, Surb

FRAME_HEADER_LEN = 36
CONN_ID_LEN = 16
MAX_SURBS = (MESSAGE_LEN - FRAME_HEADER_LEN) // SURB_LEN  # 2


def max_data(n_surbs: int) -> int:
    """Data bytes that fit next to ``n_surbs`` SURBs (1,460 / 836 / 212)."""
    return MESSAGE_LEN - FRAME_HEADER_LEN - n_surbs * SURB_LEN


class Kind(enum.IntEnum):
    STREAM = 0x01  # a mixed-mode stream segment (client <-> exit)
    MESSAGE = 0x02  # an anonymous message (client -> client)
    REGISTER = 0x03  # a client announcing itself to its gateway


class Flag(enum.IntFlag):
    SYN = 0x01  # first segment of a direction: the destination, or the exit's answer
    FIN = 0x02  # last segment of a direction
    ACK = 0x04  # ack and sack are valid
    RST = 0x08  # abort the stream; no sequence number
    NOSEQ = 0x10  # carries no sequence number (a pure ack, or SURBs only): not acknowledged


_KNOWN_FLAGS = int(Flag.SYN | Flag.FIN | Flag.ACK | Flag.RST | Flag.NOSEQ)


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame. ``surbs`` ride along so that the far end can answer."""

    kind: Kind
    conn_id: bytes
    flags: Flag = Flag(0)
    seq: int = 0
    ack: int = 0
    sack: int = 0
    credit: int = 0
    surbs: tuple[Surb, ...] = ()
    data: bytes = b""

    def __post_init__(self) -> None:
        if len(self.conn_id) != CONN_ID_LEN:
            raise ValueError(f"conn_id must be {CONN_ID_LEN} bytes")
        for name in ("seq", "ack", "sack"):
            if not 0 <= getattr(self, name) < 2**32:
                raise ValueError(f"{name} must fit in 32 bits")
        if not 0 <= self.credit < 2**16:
            raise ValueError("credit must fit in 16 bits")
        if len(self.surbs) > MAX_SURBS:
            raise ValueError(f"at most {MAX_SURBS} SURBs fit in a frame")
        if len(self.data) > max_data(len(self.surbs)):
            raise ValueError(f"{len(self.data)} data bytes do not fit next to the SURBs")

    def encode(self) -> bytes:
        head = (
            bytes([self.kind, int(self.flags), len(self.surbs), 0])
            + self.conn_id
            + self.seq.to_bytes(4, "big")
            + self.ack.to_bytes(4, "big")
            + self.sack.to_bytes(4, "big")
            + len(self.data).to_bytes(2, "big")
            + self.credit.to_bytes(2, "big")
        )
        body = head + b"".join(s.encode() for s in self.surbs) + self.data
        return body + bytes(MESSAGE_LEN - len(body))


def decode_frame(message: bytes) -> Frame:
    """Parse a 1,496-byte message. Raises ``MalformedPacket`` (``bad_frame``); nothing else."""
    if len(message) != MESSAGE_LEN:
        raise MalformedPacket("bad_frame", f"a frame is {MESSAGE_LEN} bytes")
    raw = bytes(message)
    try:
        kind = Kind(raw[0])
    except ValueError:
        raise MalformedPacket("bad_frame", f"unknown kind 0x{raw[0]:02x}") from None
    if raw[1] & ~_KNOWN_FLAGS or raw[3]:
        raise MalformedPacket("bad_frame", "unknown flags or reserved byte set")
    n_surbs = raw[2]
    if n_surbs > MAX_SURBS:
        raise MalformedPacket("bad_frame", "too many SURBs")
    length = int.from_bytes(raw[32:34], "big")
    if length > max_data(n_surbs):
        raise MalformedPacket("bad_frame", "data length too large")
    pos = FRAME_HEADER_LEN
    surbs = []
    for _ in range(n_surbs):
        surbs.append(Surb.decode(raw[pos : pos + SURB_LEN]))
        pos += SURB_LEN
    data = raw[pos : pos + length]
    if any(raw[pos + length :]):
        raise MalformedPacket("bad_frame", "nonzero padding")
    return Frame(
        kind=kind,
        conn_id=raw[4:20],
        flags=Flag(raw[1]),
        seq=int.from_bytes(raw[20:24], "big"),
        ack=int.from_bytes(raw[24:28], "big"),
        sack=int.from_bytes(raw[28:32], "big"),
        credit=int.from_bytes(raw[34:36], "big"),
        surbs=tuple(surbs),
        data=data,
    )
