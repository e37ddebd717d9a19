"""The directory request protocol (spec/directory.md §9): messages only, no sockets.

One request per HTX stream. The asker writes one request and half-closes; the
server writes one response and half-closes. Both are deterministic-CBOR maps:

    request  = {"op": text, ...the fields that op needs, nothing else}
    response = {"status": text, "reason": text, "docs": [bytes, ...]}

``encode_request`` / ``decode_request`` and ``encode_response`` /
``decode_response`` are pure; ``MessageReader`` collects a message from
stream chunks and refuses it as soon as it is over its limit. Every refusal is
``MalformedDocument`` with a stable reason. The Trio side is ``qnet.dir.net``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from qnet.dir import encoding
from qnet.dir.descriptor import MAX_EPOCH, _bad, _exact_map, _typed
from qnet.errors import MalformedDocument

DIGEST_LEN: Final = 32
#: Documents one response may carry (votes or signatures of one epoch: one per authority).
MAX_DOCS: Final = 64


class Op(enum.StrEnum):
    """What a request asks for (the ``op`` field)."""

    GET_CONSENSUS = "get_consensus"
    GET_DESCRIPTOR = "get_descriptor"
    GET_VOTES = "get_votes"
    GET_SIGNATURES = "get_signatures"
    POST_DESCRIPTOR = "post_descriptor"
    POST_VOTE = "post_vote"
    POST_SIGNATURE = "post_signature"


class Status(enum.StrEnum):
    """The answer to a request (the ``status`` field)."""

    OK = "ok"
    NOT_FOUND = "not_found"  # the server has no such document (yet)
    REFUSED = "refused"  # the posted document was refused; ``reason`` says why
    BAD_REQUEST = "bad_request"  # the request itself was malformed or too large
    UNAVAILABLE = "unavailable"  # this server does not answer that op (a cache, say)


#: The fields each op carries besides ``op``.
FIELDS: Final[dict[Op, frozenset[str]]] = {
    Op.GET_CONSENSUS: frozenset(),
    Op.GET_DESCRIPTOR: frozenset({"digest"}),
    Op.GET_VOTES: frozenset({"epoch"}),
    Op.GET_SIGNATURES: frozenset({"epoch"}),
    Op.POST_DESCRIPTOR: frozenset({"doc"}),
    Op.POST_VOTE: frozenset({"doc"}),
    Op.POST_SIGNATURE: frozenset({"epoch", "doc"}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolLimits:
    """Sizes a peer may send. Both sides refuse a message over its limit unread.

    ``max_request`` and ``max_response`` bound one whole message in bytes (a vote
    or consensus of a large network is many megabytes; a test network needs far
    less); ``max_docs`` bounds the documents in one response.
    """

    max_request: int = 32 << 20
    max_response: int = 64 << 20
    max_docs: int = MAX_DOCS

    def __post_init__(self) -> None:
        for name in ("max_request", "max_response", "max_docs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProtocolLimits.{name} must be a positive int")

    def request_limits(self) -> encoding.Limits:
        return encoding.Limits(
            max_size=self.max_request, max_depth=1, max_items=16, max_string=self.max_request
        )

    def response_limits(self) -> encoding.Limits:
        return encoding.Limits(
            max_size=self.max_response,
            max_depth=2,
            max_items=8 + self.max_docs,
            max_string=self.max_response,
        )


DEFAULT_LIMITS: Final = ProtocolLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One request. Exactly the fields ``FIELDS[op]`` names are set; the rest are ``None``."""

    op: Op
    digest: bytes | None = None
    epoch: int | None = None
    doc: bytes | None = None

    def __post_init__(self) -> None:
        have = {name for name in ("digest", "epoch", "doc") if getattr(self, name) is not None}
        if have != FIELDS[self.op]:
            raise ValueError(f"{self.op.value} needs exactly {sorted(FIELDS[self.op])}")
        if self.digest is not None and len(self.digest) != DIGEST_LEN:
            raise ValueError("digest must be 32 bytes")
        if self.epoch is not None and not 0 <= self.epoch <= MAX_EPOCH:
            raise ValueError("epoch out of range")

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        out: dict[encoding.Key, encoding.Value] = {"op": self.op.value}
        if self.digest is not None:
            out["digest"] = self.digest
        if self.epoch is not None:
            out["epoch"] = self.epoch
        if self.doc is not None:
            out["doc"] = self.doc
        return out


def get_consensus() -> Request:
    return Request(op=Op.GET_CONSENSUS)


def get_descriptor(digest: bytes) -> Request:
    return Request(op=Op.GET_DESCRIPTOR, digest=bytes(digest))


def get_votes(epoch: int) -> Request:
    return Request(op=Op.GET_VOTES, epoch=epoch)


def get_signatures(epoch: int) -> Request:
    return Request(op=Op.GET_SIGNATURES, epoch=epoch)


def post_descriptor(envelope: bytes) -> Request:
    return Request(op=Op.POST_DESCRIPTOR, doc=bytes(envelope))


def post_vote(envelope: bytes) -> Request:
    return Request(op=Op.POST_VOTE, doc=bytes(envelope))


def post_signature(epoch: int, entry: bytes) -> Request:
    return Request(op=Op.POST_SIGNATURE, epoch=epoch, doc=bytes(entry))


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """One response: ``docs`` is empty unless ``status`` is ``ok`` (and may be empty then)."""

    status: Status
    reason: str = ""
    docs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.status is not Status.OK and self.docs:
            raise ValueError("only an ok response carries documents")
        if not _reason_ok(self.reason):
            raise ValueError("reason must be 0..64 characters of [a-z0-9_]")

    def to_cbor(self) -> dict[encoding.Key, encoding.Value]:
        return {"status": self.status.value, "reason": self.reason, "docs": list(self.docs)}


def ok(docs: Sequence[bytes] = ()) -> Response:
    return Response(status=Status.OK, docs=tuple(bytes(d) for d in docs))


def error(status: Status, reason: str) -> Response:
    """A non-ok response; a reason that is not a short code is replaced by ``other``."""
    return Response(status=status, reason=reason if _reason_ok(reason) else "other")


def _reason_ok(reason: object) -> bool:
    return (
        isinstance(reason, str)
        and len(reason) <= 64
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in reason)
    )


# --- encoding and decoding --------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    return encoding.encode(request.to_cbor())


def encode_response(response: Response) -> bytes:
    return encoding.encode(response.to_cbor())


def decode_request(raw: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Request:
    """Decode a request. Raises ``MalformedDocument`` only: any §2.3 reason, or
    ``bad_type``, ``bad_value`` (unknown op, epoch out of range), ``bad_length``
    (digest), ``missing_field`` / ``unknown_field`` for the fields of that op."""
    value = encoding.decode(raw, limits.request_limits())
    if not isinstance(value, dict):
        raise _bad("bad_type", "request", "must be a map")
    op_raw = value.get("op")
    if op_raw is None:
        raise _bad("missing_field", "request", "op")
    op_text = _typed("op", op_raw, str)
    try:
        op = Op(op_text)
    except ValueError:
        raise _bad("bad_value", "op", f"unknown op {op_raw!r}") from None
    m = _exact_map(f"{op.value} request", value, FIELDS[op] | {"op"})
    digest = epoch = doc = None
    if "digest" in m:
        digest = _typed("digest", m["digest"], bytes)
        if len(digest) != DIGEST_LEN:
            raise _bad("bad_length", "digest", f"must be {DIGEST_LEN} bytes")
    if "epoch" in m:
        epoch = _typed("epoch", m["epoch"], int)
        if not 0 <= epoch <= MAX_EPOCH:
            raise _bad("bad_value", "epoch", f"must be 0..{MAX_EPOCH}")
    if "doc" in m:
        doc = _typed("doc", m["doc"], bytes)
    return Request(op=op, digest=digest, epoch=epoch, doc=doc)


_RESPONSE_KEYS: Final = frozenset({"status", "reason", "docs"})


def decode_response(raw: bytes, limits: ProtocolLimits = DEFAULT_LIMITS) -> Response:
    """Decode a response. Raises ``MalformedDocument`` only (§2.3 reasons, ``bad_type``,
    ``bad_value`` for an unknown status, a bad reason code, documents on a non-ok
    response or more than ``max_docs``, ``missing_field`` / ``unknown_field``)."""
    m = _exact_map("response", encoding.decode(raw, limits.response_limits()), _RESPONSE_KEYS)
    status_text = _typed("status", m["status"], str)
    try:
        status = Status(status_text)
    except ValueError:
        raise _bad("bad_value", "status", f"unknown status {m['status']!r}") from None
    reason = _typed("reason", m["reason"], str)
    if not _reason_ok(reason):
        raise _bad("bad_value", "reason", "0..64 characters of [a-z0-9_]")
    docs = _typed("docs", m["docs"], list)
    if len(docs) > limits.max_docs:
        raise _bad("bad_value", "docs", f"at most {limits.max_docs}")
    if docs and status is not Status.OK:
        raise _bad("bad_value", "docs", "only an ok response carries documents")
    return Response(
        status=status, reason=reason, docs=tuple(_typed("docs[]", d, bytes) for d in docs)
    )


class MessageReader:
    """Collects one message from stream chunks, refusing it once it is over ``limit``.

    ``feed`` raises ``MalformedDocument`` (``too_large``) as soon as the total is
    over the limit, so a peer cannot make the reader buffer more than that;
    ``finish`` returns the bytes once the peer has half-closed.
    """

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self._buf) + len(data) > self.limit:
            raise MalformedDocument("too_large", f"message over {self.limit} bytes")
        self._buf += data

    def finish(self) -> bytes:
        if not self._buf:
            raise MalformedDocument("truncated", "empty message")
        return bytes(self._buf)
