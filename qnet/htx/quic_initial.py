"""QUIC v1 Initial packets, sans-I/O: keys, protection, frames, layout (spec/fingerprint.md §5).

RFC 9001 §5: the Initial keys come from the client's first destination
connection id (HKDF-Extract with the v1 initial salt, then HKDF-Expand-Label
"client in"/"server in", then "quic key", "quic iv", "quic hp"); the payload is
AES-128-GCM with the header (through the packet number) as associated data, and
header protection is AES-128-ECB over a 16-byte sample of the ciphertext.

Used three ways: the template generator decrypts the browser's Initials; the
tests decrypt ours; and the QUIC client (``qnet/htx/quic.py``) re-lays out the
frames of its first Initial packets to follow a template (``relayout``),
keeping each packet's number and the CRYPTO bytes it carries, so aioquic's loss
recovery sees exactly the packets it built. Nothing here imports aioquic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from qnet.errors import DecodeError

__all__ = [
    "INITIAL_SALT_V1",
    "QUIC_V1",
    "Frame",
    "InitialKeys",
    "InitialPacket",
    "QuicInitialError",
    "decode_frames",
    "encode_frames",
    "initial_keys",
    "open_initial_datagram",
    "protect_initial",
    "pull_varint",
    "push_varint",
]

QUIC_V1: Final = 0x00000001
INITIAL_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")

FRAME_PADDING: Final = 0x00
FRAME_PING: Final = 0x01
FRAME_ACK: Final = 0x02
FRAME_CRYPTO: Final = 0x06


class QuicInitialError(DecodeError):
    """A datagram did not hold a well-formed, authentic Initial packet."""


# --- varints (RFC 9000 §16) ---------------------------------------------------------


def push_varint(value: int) -> bytes:
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value < 0x4000000000000000:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError("varint out of range")


def pull_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, new position); raises ``QuicInitialError`` when truncated."""
    if pos >= len(data):
        raise QuicInitialError("varint", "truncated")
    size = 1 << (data[pos] >> 6)
    if pos + size > len(data):
        raise QuicInitialError("varint", "truncated")
    value = int.from_bytes(data[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


# --- keys ----------------------------------------------------------------------------


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(secret)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    key: bytes
    iv: bytes
    hp: bytes

    def mask(self, sample: bytes) -> bytes:
        enc = Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()
        return enc.update(sample) + enc.finalize()

    def nonce(self, packet_number: int) -> bytes:
        return bytes(a ^ b for a, b in zip(self.iv, packet_number.to_bytes(12, "big"), strict=True))


def initial_keys(dcid: bytes, *, client: bool = True) -> InitialKeys:
    """RFC 9001 §5.2 Initial keys of one direction for the client's first DCID."""
    mac = hmac.HMAC(INITIAL_SALT_V1, hashes.SHA256())  # HKDF-Extract(salt, dcid)
    mac.update(dcid)
    prk = mac.finalize()
    secret = _expand_label(prk, b"client in" if client else b"server in", 32)
    return InitialKeys(
        key=_expand_label(secret, b"quic key", 16),
        iv=_expand_label(secret, b"quic iv", 12),
        hp=_expand_label(secret, b"quic hp", 16),
    )


# --- frames --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of an Initial payload. ``kind`` is "crypto", "ping", "padding" or "ack";
    ``offset``/``data`` for CRYPTO, ``size`` = bytes of a PADDING run, ``raw`` for ACK."""

    kind: str
    offset: int = 0
    data: bytes = b""
    size: int = 0
    raw: bytes = b""


def decode_frames(payload: bytes) -> list[Frame]:
    """Frames of an Initial payload; consecutive PADDING bytes form one run."""
    out: list[Frame] = []
    pos = 0
    while pos < len(payload):
        start = pos
        ftype, pos = pull_varint(payload, pos)
        if ftype == FRAME_PADDING:
            while pos < len(payload) and payload[pos] == 0:
                pos += 1
            out.append(Frame("padding", size=pos - start))
        elif ftype == FRAME_PING:
            out.append(Frame("ping"))
        elif ftype == FRAME_CRYPTO:
            offset, pos = pull_varint(payload, pos)
            length, pos = pull_varint(payload, pos)
            if pos + length > len(payload):
                raise QuicInitialError("crypto frame", "truncated")
            out.append(Frame("crypto", offset=offset, data=payload[pos : pos + length]))
            pos += length
        elif ftype in (FRAME_ACK, FRAME_ACK + 1):
            _, pos = pull_varint(payload, pos)  # largest
            _, pos = pull_varint(payload, pos)  # delay
            count, pos = pull_varint(payload, pos)
            _, pos = pull_varint(payload, pos)  # first range
            for _ in range(2 * count):
                _, pos = pull_varint(payload, pos)
            if ftype == FRAME_ACK + 1:
                for _ in range(3):
                    _, pos = pull_varint(payload, pos)
            out.append(Frame("ack", raw=payload[start:pos]))
        elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE
            out.append(Frame("close", raw=payload[start:]))
            break
        else:
            raise QuicInitialError("frame type", f"0x{ftype:x} not allowed in an Initial")
    return out


def encode_frames(frames: Sequence[Frame]) -> bytes:
    out = bytearray()
    for f in frames:
        if f.kind == "padding":
            out += bytes(f.size)
        elif f.kind == "ping":
            out += b"\x01"
        elif f.kind == "crypto":
            out += b"\x06" + push_varint(f.offset) + push_varint(len(f.data)) + f.data
        else:
            out += f.raw
    return bytes(out)


# --- packets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialPacket:
    """One decrypted Initial packet and where it sat in its datagram."""

    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    packet_number: int
    pn_length: int
    frames: tuple[Frame, ...]
    size: int  # bytes of this packet in the datagram
    payload_length: int  # plaintext payload bytes (frames)


def _parse_long_header(data: bytes, pos: int) -> tuple[int, bytes, bytes, bytes, int, int]:
    """(version, dcid, scid, token, length, pn_offset) of an Initial at ``pos``."""
    first = data[pos]
    if not first & 0x80:
        raise QuicInitialError("header", "not a long header")
    if len(data) < pos + 7:
        raise QuicInitialError("header", "truncated")
    version = int.from_bytes(data[pos + 1 : pos + 5], "big")
    if version != QUIC_V1:
        raise QuicInitialError("version", f"0x{version:08x} is not QUIC v1")
    if (first >> 4) & 3 != 0:
        raise QuicInitialError("packet type", "not an Initial")
    p = pos + 5
    dlen = data[p]
    dcid = data[p + 1 : p + 1 + dlen]
    p += 1 + dlen
    if p >= len(data):
        raise QuicInitialError("header", "truncated")
    slen = data[p]
    scid = data[p + 1 : p + 1 + slen]
    p += 1 + slen
    if dlen > 20 or slen > 20 or p > len(data):
        raise QuicInitialError("connection id", "too long or truncated")
    tlen, p = pull_varint(data, p)
    token = data[p : p + tlen]
    p += tlen
    length, p = pull_varint(data, p)
    if p + length > len(data) or length < 20:
        raise QuicInitialError("length", "packet longer than its datagram")
    return version, dcid, scid, token, length, p


def open_initial_datagram(
    datagram: bytes, *, dcid: bytes | None = None, client: bool = True
) -> list[InitialPacket]:
    """Decrypt every Initial packet at the front of a datagram (padding after them ignored).

    ``dcid`` is the connection id the keys come from (the client's first DCID);
    by default the first packet's DCID. Raises ``QuicInitialError``.
    """
    out: list[InitialPacket] = []
    pos = 0
    while pos < len(datagram) and datagram[pos] & 0x80 and (datagram[pos] >> 4) & 3 == 0:
        version, pdcid, scid, token, length, pn_off = _parse_long_header(datagram, pos)
        keys = initial_keys(pdcid if dcid is None else dcid, client=client)
        sample = datagram[pn_off + 4 : pn_off + 20]
        if len(sample) < 16:
            raise QuicInitialError("sample", "packet too short")
        mask = keys.mask(sample)
        first = datagram[pos] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        pn_bytes = bytes(
            b ^ m for b, m in zip(datagram[pn_off : pn_off + pn_len], mask[1:], strict=False)
        )
        pn = int.from_bytes(pn_bytes, "big")
        header = bytes([first]) + datagram[pos + 1 : pn_off] + pn_bytes
        end = pn_off + length
        try:
            payload = AESGCM(keys.key).decrypt(
                keys.nonce(pn), datagram[pn_off + pn_len : end], header
            )
        except Exception as exc:  # noqa: BLE001 - InvalidTag and friends: one typed error
            raise QuicInitialError("aead", "Initial packet did not authenticate") from exc
        out.append(
            InitialPacket(
                version=version,
                dcid=pdcid,
                scid=scid,
                token=token,
                packet_number=pn,
                pn_length=pn_len,
                frames=tuple(decode_frames(payload)),
                size=end - pos,
                payload_length=len(payload),
            )
        )
        pos = end
    if not out:
        raise QuicInitialError("datagram", "no Initial packet")
    return out


def protect_initial(
    *,
    keys: InitialKeys,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    packet_number: int,
    pn_length: int,
    payload: bytes,
) -> bytes:
    """One protected Initial packet (long header, Length field as a 2-byte varint)."""
    if not 1 <= pn_length <= 4:
        raise ValueError("pn_length must be 1..4")
    pn_bytes = (packet_number & ((1 << (8 * pn_length)) - 1)).to_bytes(pn_length, "big")
    length = pn_length + len(payload) + 16
    if length >= 0x4000:
        raise ValueError("Initial packet too long")
    first = 0xC0 | (pn_length - 1)
    header = (
        bytes([first])
        + QUIC_V1.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + push_varint(len(token))
        + token
        + (length | 0x4000).to_bytes(2, "big")
    )
    sealed = AESGCM(keys.key).encrypt(keys.nonce(packet_number), payload, header + pn_bytes)
    pn_off = len(header)
    sample = sealed[4 - pn_length : 20 - pn_length]
    mask = keys.mask(sample)
    masked_first = bytes([first ^ (mask[0] & 0x0F)])
    masked_pn = bytes(b ^ m for b, m in zip(pn_bytes, mask[1:], strict=False))
    return masked_first + header[1:pn_off] + masked_pn + sealed


# --- layout ----------------------------------------------------------------------------


def header_size(dcid: bytes, scid: bytes, token: bytes, pn_length: int) -> int:
    return (
        1
        + 4
        + 1
        + len(dcid)
        + 1
        + len(scid)
        + len(push_varint(len(token)))
        + len(token)
        + 2
        + pn_length
    )


def relayout(
    crypto: Sequence[Frame],
    *,
    room: int,
    fragments: int,
    pings: int,
    padding_runs: int,
    rng: Callable[[int], bytes],
) -> list[Frame]:
    """Chrome-style CRYPTO layout of one packet's payload (``room`` bytes in all).

    The CRYPTO bytes of ``crypto`` (contiguous or not) are cut into ``fragments``
    pieces, shuffled, and mixed with ``pings`` PING frames and ``padding_runs``
    PADDING runs; the payload is filled to exactly ``room`` bytes with padding.
    Raises ``ValueError`` if the frames do not fit.
    """

    def rand(n: int) -> int:
        return int.from_bytes(rng(4), "big") % n if n > 1 else 0

    # Cut each contiguous CRYPTO frame; the cuts go to the longest pieces.
    pieces = [f for f in crypto if f.data]
    while len(pieces) < fragments:
        pieces.sort(key=lambda f: -len(f.data))
        big = pieces[0]
        if len(big.data) < 2:
            break
        cut = 1 + rand(len(big.data) - 1)
        pieces[0:1] = [
            Frame("crypto", offset=big.offset, data=big.data[:cut]),
            Frame("crypto", offset=big.offset + cut, data=big.data[cut:]),
        ]
    items: list[Frame] = list(pieces) + [Frame("ping") for _ in range(pings)]
    for i in range(len(items) - 1, 0, -1):
        j = rand(i + 1)
        items[i], items[j] = items[j], items[i]
    used = len(encode_frames(items))
    spare = room - used
    if spare < 0:
        raise ValueError("frames do not fit the packet")
    runs = min(padding_runs, spare)
    if runs <= 0:
        if spare:
            items.append(Frame("padding", size=spare))
        return items
    # Split the spare bytes into ``runs`` runs placed between frames.
    sizes = [1] * runs
    for _ in range(spare - runs):
        sizes[rand(runs)] += 1
    slots = sorted(rand(len(items) + 1) for _ in range(runs))
    out: list[Frame] = []
    k = 0
    for idx in range(len(items) + 1):
        while k < runs and slots[k] == idx:
            out.append(Frame("padding", size=sizes[k]))
            k += 1
        if idx < len(items):
            out.append(items[idx])
    # Adjacent padding runs would read back as one; merge them.
    merged: list[Frame] = []
    for f in out:
        if merged and f.kind == "padding" and merged[-1].kind == "padding":
            merged[-1] = Frame("padding", size=merged[-1].size + f.size)
        else:
            merged.append(f)
    return merged
