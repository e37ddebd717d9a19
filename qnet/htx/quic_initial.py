"""QUIC v1 Initial packets, sans-I/O: keys, protection, frames, layout (spec/fingerprint.md §5).

RFC 9001 §5: the Initial keys come from the client's first destination
connection id (HKDF-Extract with the v1 initial salt, then HKDF-Expand-Label
"client in"/"server in", then "quic key", "quic iv", "quic hp"); the payload is
AES-128-GCM with the header (through the packet number) as associated data, and
header protection is AES-128-ECB over a 16-byte sample of the ciphertext.

Used three ways: the template generator decrypts the browser's Initials; the
tests decrypt ours; and the QUIC client (``qnet/htx/quic.py``) rewrites its
first flight to look like Chromium's. Anyone holding the first DCID can decrypt
Initials, so their inside is as visible as a TCP ClientHello: which hello bytes
go into which packet (``draw_head_tail_split``: head and tail in the first,
the middle in the second, near-equal shares) and how each packet's CRYPTO bytes
are cut and mixed with PING and PADDING (``relayout``). Packet numbers are
kept, and the pure range helpers (``crypto_ranges``, ``cut_crypto``) let the
caller tell aioquic's loss recovery exactly which bytes each packet holds.
Every other datagram that begins with an Initial is padded like Chromium's
(``pad_initial_datagram``): PADDING inside its last Initial packet, the packets
after it (found from the long headers' Length fields, ``packet_spans``) kept
as they are; our server's datagrams keep their size and only get the zero
bytes after their last packet moved inside (``padding_into_initial``). Nothing
here imports aioquic.
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
    "LONG_TYPES",
    "QUIC_V1",
    "Frame",
    "InitialKeys",
    "InitialPacket",
    "PacketSpan",
    "QuicInitialError",
    "Range",
    "crypto_ranges",
    "cut_crypto",
    "decode_frames",
    "draw_head_tail_split",
    "encode_frames",
    "head_tail_split",
    "header_size",
    "initial_keys",
    "open_initial_datagram",
    "pad_initial_datagram",
    "packet_spans",
    "padding_into_initial",
    "protect_initial",
    "pull_varint",
    "push_varint",
    "relayout",
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


def _unprotect(
    datagram: bytes, pos: int, pn_off: int, length: int, keys: InitialKeys
) -> tuple[int, int, bytes]:
    """(packet number, its length, plaintext payload) of the Initial at ``pos``.

    The packet number is the truncated one on the wire taken as the full one,
    which holds while it is below 2**(8 * pn length), as Initial packet numbers
    are; otherwise the AEAD fails. Raises ``QuicInitialError``."""
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
    try:
        payload = AESGCM(keys.key).decrypt(
            keys.nonce(pn), datagram[pn_off + pn_len : pn_off + length], header
        )
    except Exception as exc:  # noqa: BLE001 - InvalidTag and friends: one typed error
        raise QuicInitialError("aead", "Initial packet did not authenticate") from exc
    return pn, pn_len, payload


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
        pn, pn_len, payload = _unprotect(datagram, pos, pn_off, length, keys)
        end = pn_off + length
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


# --- coalesced packets and padding -----------------------------------------------

#: The packet types of a long header (RFC 9000 §17.2), by the two type bits of QUIC v1.
LONG_TYPES: Final = ("initial", "0rtt", "handshake", "retry")


@dataclass(frozen=True, slots=True)
class PacketSpan:
    """Where one packet of a datagram lies: ``kind`` is a ``LONG_TYPES`` name or
    "1rtt" (a short header, which runs to the end of the datagram)."""

    kind: str
    start: int
    stop: int


def packet_spans(datagram: bytes) -> list[PacketSpan]:
    """The packets coalesced in a QUIC v1 datagram, read from the long headers'
    Length fields only (nothing is decrypted); zero bytes after the last packet
    (padding outside any packet) are left out. Raises ``QuicInitialError`` on
    anything else: another version, a Retry, a truncated packet, or bytes after
    the packets that are not all zero."""
    out: list[PacketSpan] = []
    pos = 0
    while pos < len(datagram):
        first = datagram[pos]
        if not first & 0x40:  # no fixed bit: not a packet, so padding if all zero
            if any(datagram[pos:]):
                raise QuicInitialError("datagram", "bytes after the last packet")
            break
        if not first & 0x80:
            out.append(PacketSpan("1rtt", pos, len(datagram)))
            break
        kind = LONG_TYPES[(first >> 4) & 3]
        if kind == "retry":
            raise QuicInitialError("packet type", "a Retry in a datagram")
        if kind == "initial":
            _, _, _, _, length, p = _parse_long_header(datagram, pos)
        else:
            if len(datagram) < pos + 7:
                raise QuicInitialError("header", "truncated")
            if int.from_bytes(datagram[pos + 1 : pos + 5], "big") != QUIC_V1:
                raise QuicInitialError("version", "not QUIC v1")
            p = pos + 5
            for _ in range(2):  # DCID, SCID
                if p >= len(datagram) or datagram[p] > 20:
                    raise QuicInitialError("connection id", "too long or truncated")
                p += 1 + datagram[p]
            length, p = pull_varint(datagram, p)
            if p + length > len(datagram) or length < 20:
                raise QuicInitialError("length", "packet longer than its datagram")
        out.append(PacketSpan(kind, pos, p + length))
        pos = p + length
    return out


def pad_initial_datagram(datagram: bytes, *, keys: InitialKeys, size: int) -> bytes:
    """``datagram`` brought to exactly ``size`` bytes the way Chromium pads an
    Initial-bearing datagram: PADDING frames at the end of an Initial packet's
    payload, none after the last packet.

    The datagram must begin with one or more Initial packets (``keys`` opens
    them); the last of them is re-encrypted with the same header, packet number
    and packet-number length, its payload followed by PADDING; every other
    packet (Initials before it, Handshake and 1-RTT packets after it) is kept
    byte for byte, and zero bytes after the last packet are dropped. Raises
    ``QuicInitialError`` if the datagram does not parse or the packet does not
    authenticate, ``ValueError`` if its packets take more than ``size`` bytes.
    """
    spans = packet_spans(datagram)
    if not spans or spans[0].kind != "initial":
        raise QuicInitialError("datagram", "does not begin with an Initial")
    last = 0
    while last + 1 < len(spans) and spans[last + 1].kind == "initial":
        last += 1
    span = spans[last]
    _, dcid, scid, token, length, pn_off = _parse_long_header(datagram, span.start)
    pn, pn_len, payload = _unprotect(datagram, span.start, pn_off, length, keys)
    before, after = datagram[: span.start], datagram[span.stop : spans[-1].stop]
    used = len(before) + header_size(dcid, scid, token, pn_len) + len(payload) + 16 + len(after)
    if used > size:
        raise ValueError(f"the packets take {used} bytes, more than {size}")
    packet = protect_initial(
        keys=keys,
        dcid=dcid,
        scid=scid,
        token=token,
        packet_number=pn,
        pn_length=pn_len,
        payload=payload + bytes(size - used),
    )
    return before + packet + after


def padding_into_initial(datagram: bytes, *, keys: InitialKeys) -> bytes:
    """``datagram`` with the zero bytes after its last packet moved inside its last
    leading Initial packet as PADDING frames (``pad_initial_datagram`` to the same
    size); unchanged if nothing follows the last packet. For a datagram that pads
    itself the way RFC 9000 §14.1 allows but an observer can tell: the long
    headers' Length fields show the zeros belong to no packet.

    Raises ``QuicInitialError`` or ``ValueError`` as ``pad_initial_datagram`` does
    (the datagram must begin with an Initial packet ``keys`` opens)."""
    spans = packet_spans(datagram)
    if not spans or spans[-1].stop == len(datagram):
        return datagram
    return pad_initial_datagram(datagram, keys=keys, size=len(datagram))


# --- layout ----------------------------------------------------------------------------

#: A half-open range [start, stop) of CRYPTO stream offsets.
Range = tuple[int, int]


def _uniform(rng: Callable[[int], bytes], n: int) -> int:
    """A number in [0, n) from ``rng`` (4 bytes: modulo bias below 2**-20 for n < 4096)."""
    return int.from_bytes(rng(4), "big") % n if n > 1 else 0


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


def crypto_ranges(frames: Sequence[Frame]) -> list[Range]:
    """The CRYPTO offsets ``frames`` carry, as sorted, merged ranges."""
    spans = sorted((f.offset, f.offset + len(f.data)) for f in frames if f.kind == "crypto")
    out: list[Range] = []
    for start, stop in spans:
        if stop <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def cut_crypto(frames: Sequence[Frame], ranges: Sequence[Range]) -> list[Frame]:
    """One CRYPTO frame per non-empty range, its bytes taken from ``frames``.

    Raises ``ValueError`` if a byte of a range is in none of the CRYPTO frames."""
    crypto = sorted((f for f in frames if f.kind == "crypto" and f.data), key=lambda f: f.offset)
    out: list[Frame] = []
    for start, stop in ranges:
        if stop < start or start < 0:
            raise ValueError(f"bad range [{start}, {stop})")
        chunks: list[bytes] = []
        pos = start
        for f in crypto:
            end = f.offset + len(f.data)
            if pos >= stop:
                break
            if f.offset <= pos < end:
                take = min(stop, end)
                chunks.append(f.data[pos - f.offset : take - f.offset])
                pos = take
        if pos < stop:
            raise ValueError(f"CRYPTO byte {pos} is in no frame")
        if stop > start:
            out.append(Frame("crypto", offset=start, data=b"".join(chunks)))
    return out


def head_tail_split(length: int, *, head: int, difference: int) -> tuple[list[Range], list[Range]]:
    """Chromium's share of a CRYPTO stream [0, ``length``) between two Initial packets.

    The first packet carries the head [0, head) and the tail [b, length), the
    second the middle [head, b); the second share is ``difference`` bytes longer
    than the first, or ``difference + 1`` when ``length - difference`` is odd.
    Raises ``ValueError`` unless the head and the tail are both non-empty."""
    first = (length - difference) // 2
    second = length - first
    if not 0 < head < first or second <= 0:
        raise ValueError(f"no head/tail split of {length} bytes with head {head}")
    b = head + second
    return [(0, head), (b, length)], [(head, b)]


def draw_head_tail_split(
    length: int,
    *,
    head_lengths: Range,
    share_differences: Range,
    rng: Callable[[int], bytes],
) -> tuple[list[Range], list[Range]]:
    """``head_tail_split`` with the head drawn uniformly in ``head_lengths`` and the
    difference in ``share_differences`` (both inclusive [min, max]).

    Only a difference of the parity of ``length`` can be exact (the two shares
    sum to ``length``), so the draw is among those; if the range holds none
    (a single value of the other parity), the second share is one byte longer.
    Raises ``ValueError`` when the split does not fit ``length``."""
    (h_lo, h_hi), (d_lo, d_hi) = head_lengths, share_differences
    if h_lo > h_hi or d_lo > d_hi:
        raise ValueError("empty range")
    head = h_lo + _uniform(rng, h_hi - h_lo + 1)
    exact = [d for d in range(d_lo, d_hi + 1) if (length - d) % 2 == 0]
    difference = exact[_uniform(rng, len(exact))] if exact else d_lo
    return head_tail_split(length, head=head, difference=difference)


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
    pieces (fewer only if the bytes run out; more if ``crypto`` already has
    more), shuffled, and mixed with ``pings`` PING frames and ``padding_runs``
    PADDING runs, each run between frames, no two adjacent (fewer runs only when
    the spare bytes or the gaps between frames run out); the payload is filled
    to exactly ``room`` bytes. Raises ``ValueError`` if the frames do not fit.
    """

    def rand(n: int) -> int:
        return _uniform(rng, n)

    # Cut each contiguous CRYPTO frame; the cuts go to the longest pieces.
    pieces = [f for f in crypto if f.kind == "crypto" and f.data]
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
    runs = min(padding_runs, spare, len(items) + 1)
    if runs <= 0:
        if spare:
            items.append(Frame("padding", size=spare))
        return items
    # Split the spare bytes into ``runs`` runs, each in its own gap between frames
    # (distinct gaps, so that no two runs merge into one on the wire).
    sizes = [1] * runs
    for _ in range(spare - runs):
        sizes[rand(runs)] += 1
    gaps = list(range(len(items) + 1))
    for i in range(runs):
        j = i + rand(len(gaps) - i)
        gaps[i], gaps[j] = gaps[j], gaps[i]
    at = dict(zip(sorted(gaps[:runs]), sizes, strict=True))
    out: list[Frame] = []
    for idx in range(len(items) + 1):
        if idx in at:
            out.append(Frame("padding", size=at[idx]))
        if idx < len(items):
            out.append(items[idx])
    return out
