"""Checker for ``spec/vectors/htx_frames.json`` (format ``htx-frames-v1``, spec/htx.md §3–§4).

Reproduces the key schedule, seals and opens every listed frame, replays the
KEY_UPDATE and overlap sequences, and feeds each negative case to a fresh
``FrameReader``, which must refuse it with the listed error class and reason
(or, for ``"error": null``, wait for more bytes).
"""

from __future__ import annotations

from typing import Any

from qnet.errors import CryptoError
from qnet.htx import frames as F
from qnet.htx.errors import HtxError
from qnet.htx.keys import DirectionKeys, SessionKeys
from qnet.lint.findings import Collector, Finding

X = bytes.fromhex


def frame_from_json(j: dict[str, Any]) -> F.Frame:
    """The frame a vector's ``frame`` object describes; ``KeyError``/``ValueError`` if malformed."""
    kind = j["type"]
    if kind == "STREAM":
        return F.StreamFrame(
            stream_id=j["stream_id"], offset=j["offset"], data=X(j["data"]), fin=j["fin"]
        )
    if kind == "WINDOW_UPDATE":
        return F.WindowUpdateFrame(stream_id=j["stream_id"], credit=j["credit"])
    if kind == "PING":
        return F.PingFrame(token=X(j["token"]))
    if kind == "KEY_UPDATE":
        return F.KeyUpdateFrame()
    if kind == "CLOSE":
        return F.CloseFrame(code=j["code"], reason=X(j["reason"]))
    raise ValueError(f"unknown frame type {kind!r}")


def _keys_at(first: DirectionKeys, generation: int) -> DirectionKeys:
    k = first
    for _ in range(generation):
        k = k.next()
    return k


def _check_keys(c: Collector, k: DirectionKeys, want: dict[str, Any], what: str) -> None:
    c.same(f"{what} secret", k.secret.hex(), want["secret"])
    c.same(f"{what} key", k.key.hex(), want["key"])
    c.same(f"{what} nonce_salt", k.nonce_salt.hex(), want["nonce_salt"])


def _check_sealed(c: Collector, first: DirectionKeys, v: dict[str, Any], what: str) -> None:
    """Seal the listed frame at its generation and counter; open the listed wire bytes."""
    keys = _keys_at(first, v["generation"])
    frame = frame_from_json(v["frame"])
    ftype, sid, payload = F.encode_frame(frame)
    header = F.frame_header(ftype, sid, len(payload))
    c.same(f"{what} nonce", keys.nonce(v["counter"]).hex(), v["nonce"])
    c.same(f"{what} header", header.hex(), v["header"])
    c.same(f"{what} payload", payload.hex(), v["payload"])
    c.same(f"{what} wire", F.seal_raw(keys, v["counter"], header, payload).hex(), v["wire"])
    reader = F.FrameReader(keys)
    reader.counter = v["counter"]
    reader.feed(X(v["wire"]))
    try:
        got = reader.next_frame()
    except HtxError as exc:
        c.fail(f"{what}: refused a valid frame ({type(exc).__name__} {exc.reason})")
        return
    c.same(f"{what} decoded", got, frame)


def _expect_error(c: Collector, reader: F.FrameReader, want: Any, what: str) -> None:
    try:
        got = reader.next_frame()
    except HtxError as exc:
        if want is None:
            c.fail(f"{what}: refused ({exc.reason}) where it must wait for more bytes")
        else:
            c.same(
                f"{what} error", [type(exc).__name__, exc.reason], [want["class"], want["reason"]]
            )
        return
    if want is not None:
        c.fail(f"{what}: accepted a frame that must be refused ({want['reason']})")
    elif got is not None:
        c.fail(f"{what}: returned a frame from incomplete input")


def check_htx_frames(doc: dict[str, Any]) -> list[Finding]:
    """Every HTX frame vector: keys, frames of each type, KEY_UPDATE, overlap, negatives."""

    c = Collector("htx key schedule")
    secret = X(doc["session_secret"])
    try:
        keys = SessionKeys.derive(secret)
    except CryptoError as exc:
        c.fail(f"session_secret refused: {exc}")
        return c.findings
    first = {"client": keys.client, "server": keys.server}
    c.same("k0", keys.k0.hex(), doc["k0"])
    for name, k in first.items():
        _check_keys(c, k, doc["directions"][name], name)
    for name, vecs in doc["frames"].items():
        for v in vecs:
            c.vector = f"htx {name} {v['frame']['type']} #{v['counter']}"
            _check_sealed(c, first[name], v, "frame")

    ku = doc["key_update"]
    c.vector = "htx key_update"
    start = first[ku["direction"]]
    for g, want in enumerate(ku["keys"]):
        _check_keys(c, _keys_at(start, g), want, f"generation {g}")
    sealer = F.FrameSealer(start)
    wire = b"".join(sealer.seal(frame_from_json(s["frame"])) for s in ku["frames"])
    c.same("sealed sequence", wire.hex(), ku["wire"])
    for n, s in enumerate(ku["frames"]):
        _check_sealed(c, start, s, f"step {n}")
    reader = F.FrameReader(start)
    reader.feed(X(ku["wire"]))
    try:
        got = list(iter(reader.next_frame, None))
        c.same("opened sequence", got, [frame_from_json(s["frame"]) for s in ku["frames"]])
    except HtxError as exc:
        c.fail(f"refused the KEY_UPDATE sequence ({exc.reason})")

    ov = doc["overlap"]
    c.vector = "htx overlap"
    reader = F.FrameReader(first[ov["direction"]], ov["overlap_frames"])
    for n, s in enumerate(ov["accepted"]):
        reader.feed(X(s["wire"]))
        try:
            c.same(f"accepted {n}", reader.next_frame(), frame_from_json(s["frame"]))
        except HtxError as exc:
            c.fail(f"accepted {n}: refused ({exc.reason})")
            return c.findings
    reader.feed(X(ov["refused"]["wire"]))
    _expect_error(c, reader, ov["refused"]["error"], "old key after a new-key frame")

    for neg in doc["negative"]:
        c.vector = f"htx negative {neg['name']}"
        reader = F.FrameReader(first[neg["direction"]])
        reader.counter = neg["counter"]
        reader.feed(X(neg["wire"]))
        _expect_error(c, reader, neg["error"], neg["name"])
    return c.findings
