"""Typed errors of the HTX link layer. Decoders raise only these.

Each carries ``reason`` (a short code for counters and logs) and, where the
session must close, the CLOSE ``code`` to send (spec/htx.md).
"""

from __future__ import annotations

from qnet.errors import DecodeError, QNetError


class HtxError(DecodeError):
    """Bytes from the peer were refused. ``code`` is the CLOSE code to send (0 = none)."""

    code: int = 0


class MalformedFrame(HtxError):
    """A frame's layout is wrong (length, type, field values)."""

    code = 0x0001


class FrameAuthError(HtxError):
    """A frame failed AEAD authentication (forged, reordered, or wrong key)."""

    code = 0x0002


class FlowControlError(HtxError):
    """The peer sent more than its window allowed."""

    code = 0x0003


class StreamStateError(HtxError):
    """A frame arrived for a stream in a state that does not allow it."""

    code = 0x0004


class TicketError(DecodeError):
    """An access ticket was refused. The server answers with its cover site, never an error."""


class TlsError(DecodeError):
    """The TLS layer refused a record or a handshake message (an alert was queued)."""


class HandshakeError(DecodeError):
    """The inner (Noise XK + ML-KEM) handshake failed."""


class HtxTimeout(QNetError):
    """A handshake or a read did not finish in time."""


class TemplateError(DecodeError):
    """A hello template file was refused. ``field`` (also ``reason``) names the
    offending field, as a path such as ``tls.cipher_suites[3]``."""

    def __init__(self, field: str, detail: str = "") -> None:
        self.field = field
        super().__init__(field, detail)
