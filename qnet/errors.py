"""Typed errors. Decoders raise only these (``DecodeError`` subclasses).

Every ``DecodeError`` carries ``reason``: a short, stable code used in drop
counters and logs (for example ``bad_mac``). Errors are also ``ValueError`` so
that callers that only know the standard library still catch them.
"""

from __future__ import annotations


class QNetError(Exception):
    """Base of every error QNet raises on purpose."""


class DecodeError(QNetError, ValueError):
    """Input bytes were refused. ``reason`` says why, in a short code."""

    reason: str

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PacketError(DecodeError):
    """A Sphinx packet was refused (spec/sphinx.md §11)."""


class MalformedPacket(PacketError):
    """Wrong length, small-order key, bad slot layout or unknown command."""


class TamperedPacket(PacketError):
    """Header MAC or payload integrity check failed."""


class CellError(DecodeError):
    """A link unit or relay cell was refused (spec/cells.md §4)."""


class MalformedCell(CellError):
    """Wrong length or a bad unit / relay-cell layout."""


class TamperedCell(CellError):
    """The end-to-end AEAD check of a relay cell failed."""


class CircuitError(DecodeError):
    """A circuit handshake or circuit-level message was refused (spec/circuits.md)."""


class CryptoError(QNetError):
    """A primitive refused its input (wrong key length, invalid key, bad signature)."""


class AuthenticationError(CryptoError):
    """An AEAD open or a MAC check failed. Deliberately carries no detail."""


class DirectoryError(DecodeError):
    """A directory document was refused (spec/directory.md §7)."""


class MalformedDocument(DirectoryError):
    """Not canonical encoding, over a limit, or a field missing, unknown or out of range."""


class BadSignature(DirectoryError):
    """One of the two signatures (Ed25519 or ML-DSA-65) did not verify."""


class IdentityMismatch(DirectoryError):
    """The node id in a document is not the hash of the identity keys it carries."""


class StaleDocument(DirectoryError):
    """The document is too old (``expired``) or dated too far ahead (``future``)."""


class UnknownAuthority(DirectoryError):
    """A vote or a consensus signature names an authority that is not configured."""


class InsufficientSignatures(DirectoryError):
    """A consensus carries signatures from no more than half of the known authorities."""


class InsufficientVotes(DirectoryError):
    """Too few valid votes to compute a consensus (no more than half of the authorities)."""


class RequestRefused(DirectoryError):
    """A directory server answered a request with a status other than ``ok``.

    ``reason`` is the status (``not_found``, ``refused``, ``bad_request``,
    ``unavailable``); ``remote_reason`` is the server's own short code, if any.
    """

    def __init__(self, reason: str, detail: str = "", remote_reason: str = "") -> None:
        self.remote_reason = remote_reason
        super().__init__(reason, detail)


class DirectoryUnreachable(DirectoryError):
    """A directory request got no answer: ``unreachable`` (no link), ``timeout``, or
    ``link_closed`` (the link or stream ended before a whole response)."""


class NoUsableSource(DirectoryError):
    """Every source was tried and none gave a usable document (``no_usable_source``).

    ``failures`` lists ``(source, error)`` for each attempt, in the order tried.
    """

    def __init__(self, detail: str, failures: list[tuple[object, DirectoryError]]) -> None:
        self.failures = failures
        super().__init__("no_usable_source", detail)
