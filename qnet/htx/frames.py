"""HTX frames: codec, per-direction sealer, and a streaming reader (spec/htx.md §4).

A frame on the wire::

    len u24 ‖ type u8 ‖ stream_id u32 ‖ ext u16 ‖ ChaCha20-Poly1305(payload) ‖ tag16

Integers are big-endian; ``len`` counts every byte after itself; the AEAD's
associated data is the 10 header bytes. Each direction seals with its own key
and a frame counter that starts at 0 for every key.

Only the length is acted on before authentication: ``FrameReader`` refuses a
length outside ``[MIN_LEN, MAX_LEN]`` as soon as its three bytes are in, then
authenticates the whole frame, and only then looks at type, ext, stream id and
payload. Every refusal is a ``qnet.htx.errors.HtxError`` subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from qnet.crypto.primitives import AEAD_TAG_LEN
from qnet.errors import AuthenticationError
from qnet.htx.errors import FrameAuthError, MalformedFrame
from qnet.htx.keys import DirectionKeys

# --- sizes -----------------------------------------------------------------------------

LEN_FIELD: Final = 3
HEADER_LEN: Final = 10  # len u24 ‖ type u8 ‖ stream_id u32 ‖ ext u16
#: A whole frame (header, sealed payload, tag) is at most one full TLS 1.3 record
#: (2^14 bytes), so bulk data fills records like an HTTPS download and the reader
#: never holds more than one record's worth of one frame.
MAX_FRAME: Final = 2**14
MIN_LEN: Final = HEADER_LEN - LEN_FIELD + AEAD_TAG_LEN  # empty payload
MAX_LEN: Final = MAX_FRAME - LEN_FIELD
MAX_PAYLOAD: Final = MAX_FRAME - HEADER_LEN - AEAD_TAG_LEN
STREAM_HEADER: Final = 11  # flags u8 ‖ offset u64 ‖ data_len u16
#: The most STREAM data one frame carries (16,347 bytes).
MAX_STREAM_DATA: Final = MAX_PAYLOAD - STREAM_HEADER
MAX_REASON: Final = MAX_PAYLOAD - 4
PING_LEN: Final = 8
#: Frames a receiver still accepts under the old key after a KEY_UPDATE (§5.5).
DEFAULT_OVERLAP: Final = 8

T_STREAM: Final = 0x00
T_WINDOW_UPDATE: Final = 0x01
T_PING: Final = 0x02
T_KEY_UPDATE: Final = 0x03
T_CLOSE: Final = 0x04
FLAG_FIN: Final = 0x01
SCOPE_CONNECTION: Final = 0
SCOPE_STREAM: Final = 1
MAX_CREDIT: Final = 2**32 - 1


# --- frames ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFrame:
    """Stream data. ``stream_id`` 0 is padding, which receivers discard."""

    stream_id: int
    offset: int
    data: bytes
    fin: bool = False

    def __post_init__(self) -> None:
        _check_u32("stream_id", self.stream_id)
        if not 0 <= self.offset < 2**64:
            raise ValueError("offset must fit in u64")
        if len(self.data) > MAX_STREAM_DATA:
            raise ValueError(f"data must be at most {MAX_STREAM_DATA} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowUpdateFrame:
    """Flow-control credit: ``stream_id`` 0 means the connection (scope 0)."""

    stream_id: int
    credit: int

    def __post_init__(self) -> None:
        _check_u32("stream_id", self.stream_id)
        if not 0 < self.credit <= MAX_CREDIT:
            raise ValueError("credit must be 1 .. 2^32-1")


@dataclass(frozen=True, slots=True, kw_only=True)
class PingFrame:
    """An 8-byte token; the peer echoes it back unchanged."""

    token: bytes

    def __post_init__(self) -> None:
        if len(self.token) != PING_LEN:
            raise ValueError("token must be 8 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdateFrame:
    """The sender's last frame under its current key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseFrame:
    """The session ends with ``code`` (spec/htx.md §5.8) and a short reason."""

    code: int
    reason: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.code < 2**16:
            raise ValueError("code must fit in u16")
        if len(self.reason) > MAX_REASON:
            raise ValueError("reason too long")


Frame = StreamFrame | WindowUpdateFrame | PingFrame | KeyUpdateFrame | CloseFrame


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value < 2**32:
        raise ValueError(f"{name} must fit in u32")


# --- plaintext codec ------------------------------------------------------------------------


def encode_frame(frame: Frame) -> tuple[int, int, bytes]:
    """``(type, stream_id, payload)`` for a frame; ext is always 0 in this version."""
    if isinstance(frame, StreamFrame):
        flags = FLAG_FIN if frame.fin else 0
        head = bytes([flags]) + frame.offset.to_bytes(8, "big") + len(frame.data).to_bytes(2, "big")
        return T_STREAM, frame.stream_id, head + bytes(frame.data)
    if isinstance(frame, WindowUpdateFrame):
        scope = SCOPE_CONNECTION if frame.stream_id == 0 else SCOPE_STREAM
        return T_WINDOW_UPDATE, frame.stream_id, bytes([scope]) + frame.credit.to_bytes(4, "big")
    if isinstance(frame, PingFrame):
        return T_PING, 0, bytes(frame.token)
    if isinstance(frame, KeyUpdateFrame):
        return T_KEY_UPDATE, 0, b""
    reason = bytes(frame.reason)
    return T_CLOSE, 0, frame.code.to_bytes(2, "big") + len(reason).to_bytes(2, "big") + reason


def decode_frame(ftype: int, stream_id: int, ext: int, payload: bytes) -> Frame:
    """Parse an authenticated frame's fields. Raises ``MalformedFrame`` only.

    Reasons: ``bad_ext`` (ext ≠ 0), ``unknown_type``, ``bad_payload`` (a size or
    a field value that the type does not allow), ``bad_stream_id`` (a
    connection-level frame on a stream, or a stream-scoped update on stream 0).
    """
    if ext != 0:
        raise MalformedFrame("bad_ext", f"ext={ext:#06x}")
    n = len(payload)
    if ftype == T_STREAM:
        if n < STREAM_HEADER:
            raise MalformedFrame("bad_payload", "STREAM shorter than its header")
        flags = payload[0]
        data_len = int.from_bytes(payload[9:11], "big")
        if flags & ~FLAG_FIN:
            raise MalformedFrame("bad_payload", f"unknown STREAM flags {flags:#04x}")
        if data_len != n - STREAM_HEADER:
            raise MalformedFrame("bad_payload", "STREAM data_len disagrees with len")
        return StreamFrame(
            stream_id=stream_id,
            offset=int.from_bytes(payload[1:9], "big"),
            data=bytes(payload[11:]),
            fin=bool(flags & FLAG_FIN),
        )
    if ftype == T_WINDOW_UPDATE:
        if n != 5 or payload[0] not in (SCOPE_CONNECTION, SCOPE_STREAM):
            raise MalformedFrame("bad_payload", "WINDOW_UPDATE layout")
        if (payload[0] == SCOPE_CONNECTION) != (stream_id == 0):
            raise MalformedFrame("bad_stream_id", "WINDOW_UPDATE scope and stream_id disagree")
        credit = int.from_bytes(payload[1:5], "big")
        if credit == 0:
            raise MalformedFrame("bad_payload", "WINDOW_UPDATE with zero credit")
        return WindowUpdateFrame(stream_id=stream_id, credit=credit)
    if ftype in (T_PING, T_KEY_UPDATE, T_CLOSE) and stream_id != 0:
        raise MalformedFrame("bad_stream_id", f"type {ftype:#04x} on stream {stream_id}")
    if ftype == T_PING:
        if n != PING_LEN:
            raise MalformedFrame("bad_payload", "PING token must be 8 bytes")
        return PingFrame(token=bytes(payload))
    if ftype == T_KEY_UPDATE:
        if n != 0:
            raise MalformedFrame("bad_payload", "KEY_UPDATE carries no payload")
        return KeyUpdateFrame()
    if ftype == T_CLOSE:
        if n < 4 or int.from_bytes(payload[2:4], "big") != n - 4:
            raise MalformedFrame("bad_payload", "CLOSE reason_len disagrees with len")
        return CloseFrame(code=int.from_bytes(payload[0:2], "big"), reason=bytes(payload[4:]))
    raise MalformedFrame("unknown_type", f"type {ftype:#04x}")


def frame_header(ftype: int, stream_id: int, payload_len: int, ext: int = 0) -> bytes:
    """The 10 header bytes (the AEAD's associated data) for a payload of that size."""
    length = HEADER_LEN - LEN_FIELD + payload_len + AEAD_TAG_LEN
    return (
        length.to_bytes(3, "big")
        + bytes([ftype])
        + stream_id.to_bytes(4, "big")
        + ext.to_bytes(2, "big")
    )


def seal_raw(keys: DirectionKeys, counter: int, header: bytes, payload: bytes) -> bytes:
    """``header ‖ AEAD(key, nonce(counter), payload, ad=header)``: one wire frame."""
    return header + keys.aead.seal(keys.nonce(counter), payload, header)


# --- per-direction state ---------------------------------------------------------------------


class FrameSealer:
    """Seals one direction's frames, counting them.

    After sealing a ``KeyUpdateFrame`` it moves to ``keys.next()`` with the
    counter back at 0. When to rekey is the session's policy, not this class's.
    """

    __slots__ = ("bytes_sealed", "counter", "keys")

    def __init__(self, keys: DirectionKeys) -> None:
        self.keys = keys
        self.counter = 0
        self.bytes_sealed = 0  # wire bytes under the current key

    def seal(self, frame: Frame) -> bytes:
        """The frame's wire bytes."""
        ftype, stream_id, payload = encode_frame(frame)
        wire = seal_raw(
            self.keys, self.counter, frame_header(ftype, stream_id, len(payload)), payload
        )
        self.counter += 1
        self.bytes_sealed += len(wire)
        if ftype == T_KEY_UPDATE:
            self.keys = self.keys.next()
            self.counter = 0
            self.bytes_sealed = 0
        return wire


class FrameReader:
    """Buffers one direction's bytes and yields its authenticated frames in order.

    ``feed(data)`` only buffers; ``next_frame()`` returns the next ``Frame``, or
    ``None`` when a whole frame is not yet buffered. A ``KeyUpdateFrame`` is
    returned after the reader has moved to the peer's next key. Raises
    ``MalformedFrame`` (length, layout) or ``FrameAuthError`` (tag); after one
    error the reader is dead and raises the same error again.

    Overlap (§5.5): after a KEY_UPDATE the old key stays for frames that do not
    open under the new key, at most ``overlap`` of them, and is erased as soon as
    one frame opens under the new key.
    """

    __slots__ = (
        "_buf",
        "_error",
        "_old",
        "_old_counter",
        "_old_left",
        "_overlap",
        "_pos",
        "counter",
        "keys",
    )

    def __init__(self, keys: DirectionKeys, overlap: int = DEFAULT_OVERLAP) -> None:
        self.keys = keys
        self.counter = 0
        self._overlap = overlap
        self._buf = bytearray()
        self._pos = 0
        self._error: Exception | None = None
        self._old: DirectionKeys | None = None
        self._old_counter = 0
        self._old_left = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]  # compact once most of the buffer is consumed
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except (MalformedFrame, FrameAuthError) as exc:
            self._error = exc
            raise

    def _next(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < LEN_FIELD:
            return None
        length = int.from_bytes(buf[pos : pos + 3], "big")
        if not MIN_LEN <= length <= MAX_LEN:
            raise MalformedFrame("bad_length", f"len={length}")
        end = pos + LEN_FIELD + length
        if len(buf) < end:
            return None
        header = bytes(buf[pos : pos + HEADER_LEN])
        self._pos = end
        # Opened straight from the buffer; the views end before it can change.
        with memoryview(buf) as view, view[pos + HEADER_LEN : end] as sealed:
            payload, old = self._open(header, sealed)
        frame = decode_frame(
            header[3],
            int.from_bytes(header[4:8], "big"),
            int.from_bytes(header[8:10], "big"),
            payload,
        )
        if isinstance(frame, KeyUpdateFrame):
            if old:
                raise MalformedFrame("bad_key_update", "KEY_UPDATE under a retired key")
            self._old, self._old_counter, self._old_left = self.keys, self.counter, self._overlap
            self.keys, self.counter = self.keys.next(), 0
        return frame

    def _open(self, header: bytes, sealed: bytes | memoryview) -> tuple[bytes, bool]:
        """Open under the current key, else (during the overlap) the old one."""
        try:
            payload = self.keys.aead.open(self.keys.nonce(self.counter), sealed, header)
        except AuthenticationError:
            if self._old is None or self._old_left <= 0:
                raise FrameAuthError("bad_tag") from None
            try:
                nonce = self._old.nonce(self._old_counter)
                payload = self._old.aead.open(nonce, sealed, header)
            except AuthenticationError:
                raise FrameAuthError("bad_tag") from None
            self._old_counter += 1
            self._old_left -= 1
            if self._old_left == 0:
                self._old = None
            return payload, True
        self.counter += 1
        self._old = None  # the sender has moved on: frames under the old key are over
        return payload, False
