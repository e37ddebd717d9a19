"""Regenerate spec/vectors/htx_frames.json (HTX key schedule and frames, spec/htx.md §3–§4).

    python -m tools.gen_htx_vectors            # write the file
    python -m tools.gen_htx_vectors --check    # fail if the file differs from a fresh run

Frames are deterministic given the keys; the one random input, ``session_secret``,
comes from ``SeededRandom`` and is written out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qnet.crypto.drbg import SeededRandom
from qnet.htx import frames as F
from qnet.htx.keys import DirectionKeys, SessionKeys
from tools.vectorio import write_or_check

OUT = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "htx_frames.json"
SEED = b"qnet vector htx frames"


def hx(b: bytes) -> str:
    return bytes(b).hex()


def frame_json(frame: F.Frame) -> dict[str, Any]:
    """The plaintext fields of a frame, as the vector file spells them."""
    if isinstance(frame, F.StreamFrame):
        return {
            "type": "STREAM",
            "stream_id": frame.stream_id,
            "fin": frame.fin,
            "offset": frame.offset,
            "data": hx(frame.data),
        }
    if isinstance(frame, F.WindowUpdateFrame):
        return {"type": "WINDOW_UPDATE", "stream_id": frame.stream_id, "credit": frame.credit}
    if isinstance(frame, F.PingFrame):
        return {"type": "PING", "token": hx(frame.token)}
    if isinstance(frame, F.KeyUpdateFrame):
        return {"type": "KEY_UPDATE"}
    return {"type": "CLOSE", "code": frame.code, "reason": hx(frame.reason)}


def keys_json(k: DirectionKeys) -> dict[str, Any]:
    return {
        "generation": k.generation,
        "secret": hx(k.secret),
        "key": hx(k.key),
        "nonce_salt": hx(k.nonce_salt),
    }


def sealed_json(keys: DirectionKeys, counter: int, frame: F.Frame) -> dict[str, Any]:
    ftype, sid, payload = F.encode_frame(frame)
    header = F.frame_header(ftype, sid, len(payload))
    wire = F.seal_raw(keys, counter, header, payload)
    return {
        "generation": keys.generation,
        "counter": counter,
        "frame": frame_json(frame),
        "nonce": hx(keys.nonce(counter)),
        "header": hx(header),
        "payload": hx(payload),
        "wire": hx(wire),
    }


def every_type(keys: DirectionKeys, stream_id: int, text: bytes) -> list[dict[str, Any]]:
    frames: list[F.Frame] = [
        F.StreamFrame(stream_id=stream_id, offset=0, data=text),
        F.StreamFrame(stream_id=stream_id, offset=len(text), data=b"", fin=True),
        F.StreamFrame(stream_id=0, offset=0, data=bytes(24)),  # padding
        F.WindowUpdateFrame(stream_id=0, credit=32_768),
        F.WindowUpdateFrame(stream_id=stream_id, credit=40_000),
        F.PingFrame(token=bytes.fromhex("0102030405060708")),
        F.CloseFrame(code=0x0003, reason=b"flow control"),
        F.KeyUpdateFrame(),
    ]
    return [sealed_json(keys, n, f) for n, f in enumerate(frames)]


def key_update_sequence(first: DirectionKeys) -> dict[str, Any]:
    """Two frames, KEY_UPDATE, two frames under the next key, through ``FrameSealer``."""
    sealer = F.FrameSealer(first)
    steps = []
    frames: list[F.Frame] = [
        F.StreamFrame(stream_id=1, offset=0, data=b"before the update, 0"),
        F.StreamFrame(stream_id=1, offset=20, data=b"before the update, 1"),
        F.KeyUpdateFrame(),
        F.StreamFrame(stream_id=1, offset=40, data=b"after the update, 0"),
        F.PingFrame(token=bytes.fromhex("a1a2a3a4a5a6a7a8")),
    ]
    for frame in frames:
        keys, counter = sealer.keys, sealer.counter
        wire = sealer.seal(frame)
        step = sealed_json(keys, counter, frame)
        assert step["wire"] == hx(wire)
        steps.append(step)
    wire_all = bytes.fromhex("".join(s["wire"] for s in steps))
    reader = F.FrameReader(first)
    reader.feed(wire_all)
    assert [frame_json(f) for f in iter(reader.next_frame, None)] == [s["frame"] for s in steps]
    return {
        "direction": "client",
        "keys": [keys_json(first), keys_json(first.next()), keys_json(first.next().next())],
        "frames": steps,
        "wire": hx(wire_all),
    }


def overlap_sequence(first: DirectionKeys) -> dict[str, Any]:
    """After a KEY_UPDATE: an old-key frame is accepted until a new-key frame arrives."""
    new = first.next()
    f = F.StreamFrame
    steps = [
        sealed_json(first, 0, F.KeyUpdateFrame()),
        sealed_json(first, 1, f(stream_id=2, offset=0, data=b"sealed ahead, old key")),
        sealed_json(new, 0, f(stream_id=2, offset=21, data=b"new key")),
    ]
    late = sealed_json(first, 2, f(stream_id=2, offset=28, data=b"too late"))
    return {
        "direction": "server",
        "overlap_frames": F.DEFAULT_OVERLAP,
        "accepted": steps,
        "refused": {**late, "error": {"class": "FrameAuthError", "reason": "bad_tag"}},
    }


def negatives(keys: DirectionKeys) -> list[dict[str, Any]]:
    good = bytes.fromhex(sealed_json(keys, 0, F.PingFrame(token=b"negative"))["wire"])

    def flip(b: bytes, i: int) -> bytes:
        return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]

    def sealed(ftype: int, sid: int, payload: bytes, ext: int = 0) -> bytes:
        return F.seal_raw(keys, 0, F.frame_header(ftype, sid, len(payload), ext), payload)

    def err(cls: str, reason: str) -> dict[str, str]:
        return {"class": cls, "reason": reason}

    oversized = (F.MAX_LEN + 1).to_bytes(3, "big") + bytes(7)
    malformed = [
        ("oversized-len", oversized, "bad_length"),
        ("undersized-len", b"\x00\x00\x16" + good[3:], "bad_length"),
        ("unknown-type", sealed(0x05, 0, b""), "unknown_type"),
        ("nonzero-ext", sealed(F.T_PING, 0, b"negative", ext=1), "bad_ext"),
        ("stream-data-len", sealed(F.T_STREAM, 1, bytes(9) + b"\x00\x05abcd"), "bad_payload"),
        ("ping-on-stream", sealed(F.T_PING, 7, b"negative"), "bad_stream_id"),
    ]
    return [
        {"name": "flipped-tag-bit", "wire": hx(flip(good, len(good) - 1))},
        {"name": "flipped-header-bit", "wire": hx(flip(good, 4))},
        {"name": "wrong-counter", "counter": 1, "wire": hx(good)},
        {"name": "truncated", "wire": hx(good[:-1]), "error": None},
        *(
            {"name": name, "wire": hx(wire), "error": err("MalformedFrame", reason)}
            for name, wire, reason in malformed
        ),
    ]


def htx_vectors() -> dict[str, Any]:
    secret = SeededRandom(SEED)(32)
    keys = SessionKeys.derive(secret)
    negs = negatives(keys.client)
    for n in negs:
        n.setdefault("direction", "client")
        n.setdefault("counter", 0)
        n.setdefault("error", {"class": "FrameAuthError", "reason": "bad_tag"})
    return {
        "format": "htx-frames-v1",
        "spec": "spec/htx.md",
        "generator": "python -m tools.gen_htx_vectors",
        "sizes": {
            k: getattr(F, k)
            for k in ("HEADER_LEN", "MAX_FRAME", "MIN_LEN", "MAX_LEN", "MAX_STREAM_DATA")
        },
        "seed": hx(SEED),
        "drbg": "session_secret = SeededRandom(seed)(32)",
        "session_secret": hx(secret),
        "k0": hx(keys.k0),
        "directions": {"client": keys_json(keys.client), "server": keys_json(keys.server)},
        "frames": {
            "client": every_type(keys.client, 1, b"GET / HTTP/1.1\r\n"),
            "server": every_type(keys.server, 2, b"HTTP/1.1 200 OK\r\n"),
        },
        "key_update": key_update_sequence(keys.client),
        "overlap": overlap_sequence(keys.server),
        "negative": negs,
    }


def main(argv: list[str] | None = None) -> int:
    return write_or_check({OUT: htx_vectors}, argv, (__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
