"""QUIC Initial layout against the captured Chromium template (issue 7; spec/fingerprint.md §5).

Our first QUIC flight is captured by a UDP listener on loopback, decrypted with
the RFC 9001 Initial keys, and compared with ``spec/templates/*quic-h3.json``:
per packet, the CRYPTO byte ranges (Chromium's head + tail, then middle), the
fragment/PING/PADDING counts and the packet-number length. Moving hello bytes
between packets must not break aioquic's loss recovery: a handshake through a
proxy that drops either first datagram still completes, and the lost bytes go
out again in one Initial laid out like the first (a lost head and tail
together, as Chromium sends them). Every later datagram that begins with an
Initial (ACK-only, a retransmission, Initial + Handshake + 1-RTT) is 1,250
bytes like Chromium's, padded inside its last Initial packet with nothing after
the last packet; in Initial + Handshake + 1-RTT the Initial takes the padding,
not the 1-RTT packet. The server's Initial-bearing datagrams keep aioquic's
size but are padded inside the Initial too, not with zeros after the last
packet. The sans-I/O range, layout and padding helpers are checked on their own
with hypothesis.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from aioquic._buffer import Buffer
from aioquic.buffer import size_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.logger import QuicLogger
from aioquic.tls import Epoch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_htx_transport import Node, echo, roundtrip

from qnet.htx import fingerprint as fp
from qnet.htx import quic as Q
from qnet.htx import quic_initial as qi
from qnet.htx.tls import (
    CHROME_QUIC_LAYOUT,
    CHROME_QUIC_TEMPLATE,
    CryptoSplit,
    FirstOneRtt,
    QuicLayout,
    QuicPacketLayout,
    TlsClientConfig,
    TlsServerConfig,
    default_template,
)
from qnet.htx.transport import PeerInfo

Ranges = list[qi.Range]


def _layout() -> QuicLayout:
    layout = CHROME_QUIC_LAYOUT
    assert layout is not None and layout.crypto_split is not None
    return layout


def _within(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _share(ranges: Ranges) -> int:
    return sum(stop - start for start, stop in ranges)


# --- on the wire -------------------------------------------------------------------------


async def _first_flight() -> list[bytes]:
    """The first two datagrams ``dial_quic`` sends to a silent UDP port."""
    ref = default_template("quic-h3")
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        peer = PeerInfo(
            host="127.0.0.1",
            port=sock.getsockname()[1],
            server_name=ref.server_name,
            link_public=bytes(32),
            mlkem_public=bytes(1184),
            ticket_public=bytes(32),
            ticket_key_id=1,
        )

        async def dial() -> None:
            async with Q.dial_quic(peer, timeout=5):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dial)
            with trio.fail_after(5):
                datagrams = [(await sock.recvfrom(65536))[0] for _ in range(2)]
            nursery.cancel_scope.cancel()
    return datagrams


def test_quic_initial_on_the_wire() -> None:
    """Ten first flights, decrypted: Chromium's CRYPTO split and per-packet layout."""
    layout = _layout()
    split = layout.crypto_split
    assert split is not None
    ref = default_template("quic-h3")

    async def main() -> list[list[bytes]]:
        return [await _first_flight() for _ in range(10)]

    heads: set[int] = set()
    for datagrams in trio.run(main):
        packets = []
        for i, d in enumerate(datagrams):
            assert len(d) == layout.datagram_size
            (packet,) = qi.open_initial_datagram(d)
            assert packet.size == len(d)  # padding inside the packet, as Chrome does
            assert len(packet.dcid) == layout.dcid_length
            assert len(packet.scid) == layout.scid_length
            assert packet.packet_number == layout.first_packet_number + i
            packets.append(packet)
            shape = layout.packets[i]
            kinds = [f.kind for f in packet.frames]
            assert set(kinds) <= {"crypto", "ping", "padding"}
            assert packet.pn_length in shape.pn_length
            # Exact: the share (at most ~1,000 bytes) leaves >150 spare bytes in the
            # 1,250-byte datagram for the largest counts, so ``relayout`` never has
            # to fall back to fewer fragments or PINGs, and it puts each PADDING
            # run in its own gap between frames, so no two runs merge.
            assert kinds.count("crypto") in shape.crypto_frames
            assert kinds.count("ping") in shape.pings
            assert kinds.count("padding") in shape.padding_runs
        first, second = (qi.crypto_ranges(p.frames) for p in packets)
        assert len(first) == 2 and len(second) == 1, (first, second)
        (zero, a), (b, length) = first
        assert zero == 0 and second == [(a, b)]
        assert _within(a, split.head_lengths), first
        assert _within(_share(second) - _share(first), split.share_differences)
        heads.add(a)
        crypto = [f for p in packets for f in p.frames if f.kind == "crypto"]
        (whole,) = qi.cut_crypto(crypto, [(0, length)])
        assert whole.data[0] == 1 and 4 + int.from_bytes(whole.data[1:4], "big") == length
        assert fp.ja4(whole.data) == ref.captured_ja4[0]
        assert fp.ja4(whole.data).startswith("q13d")
    assert len(heads) > 1  # the head length is drawn per connection


def _client(layout: QuicLayout | None) -> Q._Quic:
    config = TlsClientConfig(
        server_name="www.example.com", template=CHROME_QUIC_TEMPLATE, alpn=(Q.ALPN,)
    )
    quic = Q._Quic(
        tls_config=config,
        configuration=Q._client_configuration("www.example.com", layout),
        layout=layout,
    )
    quic.connect(("127.0.0.1", 9), now=0.0)
    return quic


def _records(quic: Q._Quic) -> dict[int, tuple[int, Ranges]]:
    """pn -> (sent_bytes, CRYPTO ranges its delivery handlers name), from aioquic's
    sent-packet records (aioquic 1.7.2 internals)."""
    sender = quic._crypto_streams[Epoch.INITIAL].sender
    out: dict[int, tuple[int, Ranges]] = {}
    for pn, record in quic._spaces[Epoch.INITIAL].sent_packets.items():
        ranges = [
            (args[0], args[1])
            for handler, args in record.delivery_handlers
            if handler == sender.on_data_delivery
        ]
        out[pn] = (record.sent_bytes, sorted(ranges))
    return out


def test_first_flight_records_name_the_moved_bytes() -> None:
    """aioquic's records of the two packets name exactly the CRYPTO bytes each carries."""
    for _ in range(5):
        quic = _client(_layout())
        datagrams = quic.datagrams_to_send(0.0)
        assert len(datagrams) == 2  # aioquic builds the whole first flight in one call
        records = _records(quic)
        for data, _ in datagrams:
            (packet,) = qi.open_initial_datagram(data)
            sent_bytes, ranges = records[packet.packet_number]
            assert ranges == qi.crypto_ranges(packet.frames)
        pns = sorted(records)
        assert len(records[pns[0]][1]) == 2 and len(records[pns[1]][1]) == 1
        assert records[pns[0]][0] == Q.MIN_INITIAL_DATAGRAM  # sent_bytes stays aioquic's


@pytest.mark.parametrize(
    "split",
    [None, CryptoSplit(head_lengths=(5000, 5000), share_differences=(4, 5))],
    ids=["no-split", "split-does-not-fit"],
)
def test_first_flight_falls_back_to_per_packet_layout(split: CryptoSplit | None) -> None:
    """Without a (fitting) split, each packet keeps aioquic's bytes and records."""
    quic = _client(dataclasses.replace(_layout(), crypto_split=split))
    datagrams = quic.datagrams_to_send(0.0)
    records = _records(quic)
    got = []
    for data, _ in datagrams:
        assert len(data) == _layout().datagram_size
        (packet,) = qi.open_initial_datagram(data)
        got.append(qi.crypto_ranges(packet.frames))
        assert records[packet.packet_number][1] == got[-1]
    assert got[0][0][0] == 0 and len(got[0]) == 1 and got[1][0][0] == got[0][0][1]


# --- loss recovery through a dropping proxy -----------------------------------------------


@asynccontextmanager
async def _serving(node: Node) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        sock = await nursery.start(Q.serve_quic, echo, node.config)
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _dropping_proxy(
    server_port: int,
    drop: Callable[[int], bool],
    seen: list[bytes],
    answers: list[bytes] | None = None,
) -> AsyncIterator[int]:
    """A loopback UDP relay; client datagram number ``n`` (from 0) is not forwarded if
    ``drop(n)``. Every client datagram is appended to ``seen``, every server datagram
    to ``answers``."""
    front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with front, back:
        await front.bind(("127.0.0.1", 0))
        await back.bind(("127.0.0.1", 0))
        client: list[tuple[str, int]] = []

        async def up() -> None:
            while True:
                data, addr = await front.recvfrom(65536)
                client[:] = [addr]
                seen.append(data)
                if not drop(len(seen) - 1):
                    await back.sendto(data, ("127.0.0.1", server_port))

        async def down() -> None:
            while True:
                data, _ = await back.recvfrom(65536)
                if answers is not None:
                    answers.append(data)
                if client:
                    await front.sendto(data, client[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(up)
            nursery.start_soon(down)
            yield front.getsockname()[1]
            nursery.cancel_scope.cancel()


def _initial_crypto(datagram: bytes, dcid: bytes) -> list[qi.Frame]:
    """CRYPTO frames of the client Initial packets at the front of ``datagram``."""
    try:
        packets = qi.open_initial_datagram(datagram, dcid=dcid)
    except qi.QuicInitialError:
        return []  # Handshake / 1-RTT only
    return [f for p in packets for f in p.frames if f.kind == "crypto"]


def _handshake_through_proxy(
    dropped: int | None, answers: list[bytes] | None = None
) -> list[bytes]:
    """Every client datagram of a dial_quic <-> serve_quic link that carries data,
    the client's datagram number ``dropped`` lost on the way; the server's datagrams
    go to ``answers``."""
    seen: list[bytes] = []

    async def main() -> None:
        node = Node()
        with trio.fail_after(10):
            async with (
                _serving(node) as port,
                _dropping_proxy(port, lambda n: n == dropped, seen, answers) as proxy,
                Q.dial_quic(node.peer(proxy)) as link,
            ):
                stream = await link.open_stream()
                payload = os.urandom(5000)
                assert await roundtrip(stream, payload) == payload

    trio.run(main)
    return seen


def _check_initial_datagrams(seen: list[bytes]) -> list[list[str]]:
    """Every client datagram that begins with an Initial is the template's size, with
    the padding inside its Initial packets (as Chromium pads them) and no bytes after
    its last packet; returns the packet kinds of each such datagram."""
    size = _layout().datagram_size
    (first,) = qi.open_initial_datagram(seen[0])
    kinds = []
    for d in seen:
        if d[0] & 0xF0 != 0xC0:
            continue
        assert len(d) == size
        spans = qi.packet_spans(d)
        assert spans[-1].stop == len(d) and d[-8:] != bytes(8)  # nothing after the packets
        packets = qi.open_initial_datagram(d, dcid=first.dcid)
        initial = spans[: len(packets)]
        assert all(s.kind == "initial" for s in initial)
        assert "initial" not in [s.kind for s in spans[len(packets) :]]
        # Each decrypted Initial (its padding included) reaches where the next packet begins.
        assert [p.size for p in packets] == [s.stop - s.start for s in initial]
        assert sum(p.size for p in packets) == (
            spans[len(packets)].start if len(spans) > len(packets) else len(d)
        )
        assert all(p.packet_number >= first.packet_number for p in packets)
        kinds.append([s.kind for s in spans])
    return kinds


def _check_finished_datagrams(seen: list[bytes]) -> int:
    """In every client datagram with an Initial and a 1-RTT packet (Initial + Handshake
    + 1-RTT: ACK, Finished, the first 1-RTT data) the Initial takes the padding, as in
    Chromium's ``I(~1100)[ACK, PADDING] + H(79) + 1-RTT(~70)``; the 1-RTT packet is
    aioquic's unpadded one (aioquic alone pads it to ~1,000 bytes). Returns how many."""
    (first,) = qi.open_initial_datagram(seen[0])
    count = 0
    for d in seen:
        if d[0] & 0xF0 != 0xC0:
            continue
        spans = qi.packet_spans(d)
        if spans[-1].kind != "1rtt":
            continue
        count += 1
        *_, last = qi.open_initial_datagram(d, dcid=first.dcid)
        assert last.frames[-1].kind == "padding" and last.frames[-1].size > 600, last.frames
        assert spans[-1].stop - spans[-1].start < 300, spans
    return count


def _check_layout(packet: qi.InitialPacket, shape: QuicPacketLayout) -> None:
    """``packet`` fills the template's datagram and is laid out per ``shape`` (exact
    counts: a share of at most ~1,000 CRYPTO bytes leaves room for the largest)."""
    assert packet.size == _layout().datagram_size
    kinds = [f.kind for f in packet.frames]
    assert set(kinds) <= {"crypto", "ping", "padding"}
    assert packet.pn_length in shape.pn_length
    assert kinds.count("crypto") in shape.crypto_frames
    assert kinds.count("ping") in shape.pings
    assert kinds.count("padding") in shape.padding_runs


def test_every_initial_datagram_is_padded_inside() -> None:
    """After the first flight too (ACK-only Initials, Initial + Handshake + 1-RTT),
    Initial-bearing datagrams are 1,250 bytes, padded inside the Initial; in the
    datagram with the Finished, the Initial takes the padding, not the 1-RTT packet."""
    seen = _handshake_through_proxy(None)
    kinds = _check_initial_datagrams(seen)
    # ACK-only Initials come or not with the timing (``_Quic._write_handshake``: the
    # server Initials of the last 1 ms get one ACK); the Finished always brings one.
    assert ["initial", "handshake", "1rtt"] in kinds  # ACK + Finished + 1-RTT
    assert _check_finished_datagrams(seen) >= 1
    later = [d for d in seen[2:] if d[0] & 0xF0 == 0xC0]
    (first,) = qi.open_initial_datagram(seen[0])
    for d in later:  # aioquic's packets, padded at the end of the last Initial
        *_, last = qi.open_initial_datagram(d, dcid=first.dcid)
        assert last.frames[-1].kind == "padding"


@pytest.mark.parametrize("dropped", [0, 1], ids=["head-and-tail", "middle"])
def test_handshake_survives_losing_a_first_flight_datagram(dropped: int) -> None:
    """The moved bytes are retransmitted: drop either first datagram, the link still
    opens. As Chromium does, the lost ranges (a head and a tail, or the middle) go out
    again in ONE Initial packet laid out like the first flight's first packet; every
    Initial-bearing datagram is padded inside as usual."""
    seen = _handshake_through_proxy(dropped)
    kinds = _check_initial_datagrams(seen)
    assert _check_finished_datagrams(seen) >= 1
    (first,) = qi.open_initial_datagram(seen[0])
    lost = qi.crypto_ranges(_initial_crypto(seen[dropped], first.dcid))
    assert len(lost) == (2 if dropped == 0 else 1)  # head + tail, or the middle
    length = max(stop for _, stop in qi.crypto_ranges(_initial_crypto(seen[0], first.dcid)))
    # What reached the server: the other first-flight datagram, then retransmissions
    # that carry the lost ranges (the moved bytes included).
    later = [f for d in seen[dropped + 1 :] for f in _initial_crypto(d, first.dcid)]
    kept = [] if dropped == 0 else _initial_crypto(seen[0], first.dcid)
    assert qi.crypto_ranges(later + kept) == [(0, length)]
    assert qi.cut_crypto(later, lost)  # every lost byte was sent again
    # The first retransmission: one Initial, every lost range, the first packet's layout.
    again = next(d for d in seen[2:] if _initial_crypto(d, first.dcid))
    assert kinds.count(["initial", "initial"]) == 0
    (packet,) = qi.open_initial_datagram(again, dcid=first.dcid)
    assert packet.packet_number > first.packet_number + 1
    assert qi.crypto_ranges(packet.frames) == lost
    _check_layout(packet, _layout().packets[0])


def _check_server_initial_datagrams(answers: list[bytes], odcid: bytes, *, lossless: bool) -> int:
    """Every server datagram that begins with an Initial has nothing after its last
    packet: the padding aioquic appended as zero bytes is inside its last Initial
    (PADDING frames), the datagram as long as aioquic made it (1,200 bytes when an
    Initial is ack-eliciting and nothing limits it, RFC 9000 §14.1). Returns how
    many were padded inside."""
    padded = 0
    for d in answers:
        if d[0] & 0xF0 != 0xC0:
            continue
        assert len(d) <= Q.MIN_INITIAL_DATAGRAM
        spans = qi.packet_spans(d)
        assert spans[-1].stop == len(d) and d[-8:] != bytes(8), spans  # no zeros after
        packets = qi.open_initial_datagram(d, dcid=odcid, client=False)
        initial = spans[: len(packets)]
        assert all(s.kind == "initial" for s in initial)
        assert [p.size for p in packets] == [s.stop - s.start for s in initial]
        eliciting = any(f.kind in ("crypto", "ping") for p in packets for f in p.frames)
        if eliciting and lossless:
            assert len(d) == Q.MIN_INITIAL_DATAGRAM
        if packets[-1].frames[-1].kind == "padding":
            padded += 1
    return padded


@pytest.mark.parametrize("dropped", [None, 0, 1], ids=["no-loss", "first-lost", "second-lost"])
def test_server_initial_datagrams_are_padded_inside(dropped: int | None) -> None:
    """Server -> client on the wire: aioquic's server would send e.g. ``I(43)[ACK,
    PING] + 1,157 zero bytes`` and ``I(65)[CRYPTO] + H(648) + 487 zero bytes``; ours
    sends the same sizes with the zeros as PADDING inside the Initial, so the long
    headers' Length fields cover the whole datagram. Data flows."""
    answers: list[bytes] = []
    seen = _handshake_through_proxy(dropped, answers)
    (first,) = qi.open_initial_datagram(seen[0])
    assert _check_server_initial_datagrams(answers, first.dcid, lossless=dropped is None) >= 1


def _server(node: Node, odcid: bytes) -> Q._Quic:
    """A server ``_Quic`` as ``serve_quic`` makes one for a client's first DCID ``odcid``."""
    return Q._Quic(
        tls_config=TlsServerConfig(
            certificate_chain=node.config.certificate_chain,  # type: ignore[arg-type]
            private_key=node.config.certificate_key,
            alpn=(Q.ALPN,),
        ),
        configuration=QuicConfiguration(
            is_client=False,
            alpn_protocols=[Q.ALPN],
            certificate=node.config.certificate_chain[0],
            private_key=node.config.certificate_key,
        ),
        original_destination_connection_id=odcid,
    )


def test_pad_server_moves_only_the_zeros_after_the_last_packet() -> None:
    """``_Quic._pad_server``: zeros after the last packet move inside the last Initial
    (same size, same frames, packet number and pn length, the Handshake packet kept);
    an unpadded ACK-only Initial, a datagram not beginning with an Initial, and one
    that does not open pass unchanged."""
    odcid = os.urandom(8)
    server = _server(Node(), odcid)
    keys = qi.initial_keys(odcid, client=False)
    scid = os.urandom(8)

    def initial(pn: int, payload: bytes) -> bytes:
        return qi.protect_initial(
            keys=keys,
            dcid=b"",
            scid=scid,
            token=b"",
            packet_number=pn,
            pn_length=2,
            payload=payload,
        )

    ack = b"\x02\x00\x00\x00\x00"
    ack_only = initial(0, ack)
    assert server._pad_server(ack_only) is ack_only  # aioquic does not pad it: neither do we
    for rest in (b"", _long_packet(0xE0, b"", scid, os.urandom(600))):
        body = initial(1, ack + b"\x01") + rest
        datagram = body + bytes(1200 - len(body))
        padded = server._pad_server(datagram)
        assert len(padded) == 1200 and padded.endswith(rest)
        assert qi.packet_spans(padded)[-1].stop == 1200
        (opened,) = qi.open_initial_datagram(padded, dcid=odcid, client=False)
        assert (opened.packet_number, opened.pn_length) == (1, 2)
        assert [f.kind for f in opened.frames] == ["ack", "ping", "padding"]
        assert opened.size == 1200 - len(rest)
    short = bytes([0x40]) + os.urandom(60)
    assert server._pad_server(short) is short
    broken = bytearray(initial(2, ack + b"\x01") + bytes(1000))
    broken[30] ^= 1
    assert server._pad_server(bytes(broken)) == bytes(broken)


# --- what aioquic builds, before the datagrams are shaped ---------------------------------


@pytest.mark.parametrize("ping", [False, True], ids=["initial-only", "initial-and-1rtt"])
def test_a_1rtt_packet_behind_an_initial_is_not_padded(ping: bool) -> None:
    """aioquic pads a 1-RTT packet that follows a client Initial in its datagram to
    fill it; ``_Quic._write_application`` keeps it unpadded (``_pad`` then pads the
    Initial), and when no 1-RTT packet comes after all, aioquic still pads the
    datagram (zeros after the Initial, which ``_pad`` moves inside)."""
    layout = _layout()
    results = {}
    for shaped in (None, layout):
        quic = _client(shaped)
        quic.datagrams_to_send(0.0)  # the first flight
        dcid = quic._peer_cid.cid
        # aioquic 1.7.2 internals: stand-in 1-RTT keys, an Initial to acknowledge.
        quic._cryptos[Epoch.ONE_RTT].setup_initial(dcid, is_client=True, version=quic._version)
        space = quic._spaces[Epoch.INITIAL]
        space.ack_queue.add(0)
        space.ack_at = space.largest_received_time = 0.01
        if ping:
            quic.send_ping(7)
        # aioquic's datagram, through our ``_write_application``, before ``_pad``.
        ((raw, _),) = Q.QuicConnection.datagrams_to_send(quic, 0.02)
        results[shaped is not None] = (quic, dcid, raw)
    aioquic_raw = results[False][2]
    quic, dcid, raw = results[True]
    spans = qi.packet_spans(raw)
    if not ping:
        assert [s.kind for s in spans] == ["initial"] and len(raw) == Q.MIN_INITIAL_DATAGRAM
        padded = quic._pad(raw)
        (packet,) = qi.open_initial_datagram(padded, dcid=dcid)
        assert packet.size == len(padded) == layout.datagram_size
        return
    assert [s.kind for s in qi.packet_spans(aioquic_raw)] == ["initial", "1rtt"]
    assert len(aioquic_raw) == Q.MIN_INITIAL_DATAGRAM  # aioquic: the 1-RTT packet fills it
    assert [s.kind for s in spans] == ["initial", "1rtt"] and len(raw) < 100
    peer = CryptoPair()
    peer.setup_initial(dcid, is_client=False, version=quic._version)
    _, payload, _ = peer.decrypt_packet(raw[spans[1].start :], 1 + len(dcid), 0)
    assert payload.rstrip(b"\0") == b"\x01"  # the PING, no PADDING run
    padded = quic._pad(raw)
    assert len(padded) == layout.datagram_size and padded.endswith(raw[spans[1].start :])
    (packet,) = qi.open_initial_datagram(padded, dcid=dcid)
    assert [f.kind for f in packet.frames] == ["ack", "padding"]


@pytest.mark.parametrize("gap", [0.0, 0.005], ids=["back-to-back", "5ms-apart"])
def test_server_initials_back_to_back_get_one_ack(gap: float) -> None:
    """Sans-I/O client <-> server: the client acknowledges server Initials after
    aioquic's own 1 ms ACK delay (``_Quic._write_handshake``), so the Initial that
    does not complete the ServerHello and the one that does, arriving together, get
    one ACK, in the datagram with the Finished (as Chromium's one ACK). 5 ms apart,
    the first gets an ACK-only Initial 1 ms after it arrived, not at once."""
    client = _client(_layout())
    flight = [d for d, _ in client.datagrams_to_send(0.0)]
    (first,) = qi.open_initial_datagram(flight[0])
    server = _server(Node(), first.dcid)
    for d in flight:
        server.receive_datagram(d, ("127.0.0.1", 4433), now=0.01)
    answers = [d for d, _ in server.datagrams_to_send(0.01)]
    assert [s.kind for s in qi.packet_spans(answers[0])] == ["initial"]  # no Handshake keys yet
    sent: list[tuple[float, bytes]] = []

    def run_timers(until: float) -> None:  # what ``_Connection.drive`` does
        while (timer := client.get_timer()) is not None and timer <= until:
            client.handle_timer(timer)
            sent.extend((timer, d) for d, _ in client.datagrams_to_send(timer))

    now = 0.02
    for i, d in enumerate(answers):
        now += gap if i else 0.0
        run_timers(now)
        client.receive_datagram(d, ("127.0.0.1", 9), now=now)
        sent.extend((now, d) for d, _ in client.datagrams_to_send(now))
        if i == 0:
            assert not sent  # the ACK waits for its time
            assert client.get_timer() == pytest.approx(now + 0.001)
    run_timers(now + 0.002)
    kinds = [[s.kind for s in qi.packet_spans(d)] for _, d in sent]
    assert kinds[-1] == ["initial", "handshake"]  # ACK + Finished
    acks = [(t, d) for (t, d), k in zip(sent, kinds, strict=True) if k == ["initial"]]
    if gap == 0.0:
        assert acks == []
    else:
        ((t, d),) = acks
        assert t == pytest.approx(0.021)
        (packet,) = qi.open_initial_datagram(d, dcid=first.dcid)
        assert len(d) == packet.size == _layout().datagram_size
        assert [f.kind for f in packet.frames] == ["ack", "padding"]


@pytest.mark.parametrize("lost", [0, 1], ids=["head-and-tail", "middle"])
def test_lost_ranges_go_out_again_in_one_initial(lost: int) -> None:
    """After a first-flight packet is declared lost, aioquic's next Initial carries
    every lost range (``_Quic._write_crypto_frame``), ``_reshape`` lays it out like
    the first packet, and its sent-packet record names exactly those ranges."""
    layout = _layout()
    quic = _client(layout)
    flight = quic.datagrams_to_send(0.0)
    (packet,) = qi.open_initial_datagram(flight[lost][0])
    ranges = _records(quic)[packet.packet_number][1]
    assert len(ranges) == (2 if lost == 0 else 1)
    # aioquic 1.7.2 internal: what its loss detection does with a lost packet.
    space = quic._spaces[Epoch.INITIAL]
    quic._loss._on_packets_lost(
        now=0.5, packets=[space.sent_packets[packet.packet_number]], space=space
    )
    ((again, _),) = quic.datagrams_to_send(0.5)
    (resent,) = qi.open_initial_datagram(again)
    assert resent.packet_number == layout.first_packet_number + 2
    assert qi.crypto_ranges(resent.frames) == ranges
    assert qi.cut_crypto(resent.frames, ranges) == qi.cut_crypto(packet.frames, ranges)
    _check_layout(resent, layout.packets[0])
    sent_bytes, recorded = _records(quic)[resent.packet_number]
    assert recorded == ranges and sent_bytes <= Q.MIN_INITIAL_DATAGRAM


# --- sans-I/O helpers ---------------------------------------------------------------------


def test_head_tail_split_matches_the_observed_chromium_flight() -> None:
    # Chromium 156: L=1919, packet 1 = [0,78) ∪ [1040,1919), packet 2 = [78,1040).
    assert qi.head_tail_split(1919, head=78, difference=5) == (
        [(0, 78), (1040, 1919)],
        [(78, 1040)],
    )
    # Parity: 1918 - 5 is odd, so the second share is 6 bytes longer.
    first, second = qi.head_tail_split(1918, head=78, difference=5)
    assert _share(second) - _share(first) == 6
    with pytest.raises(ValueError):
        qi.head_tail_split(100, head=60, difference=4)  # no tail left
    with pytest.raises(ValueError):
        qi.head_tail_split(1900, head=0, difference=4)


def _rng_from(data: st.DataObject) -> Callable[[int], bytes]:
    def rng(n: int) -> bytes:
        return data.draw(st.binary(min_size=n, max_size=n))

    return rng


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1200, 2500),
    head_lo=st.integers(1, 200),
    head_span=st.integers(0, 50),
    diff_lo=st.integers(-20, 20),
    diff_span=st.integers(0, 3),
    data=st.data(),
)
def test_draw_head_tail_split_partitions_the_stream(
    length: int,
    head_lo: int,
    head_span: int,
    diff_lo: int,
    diff_span: int,
    data: st.DataObject,
) -> None:
    heads, diffs = (head_lo, head_lo + head_span), (diff_lo, diff_lo + diff_span)
    first, second = qi.draw_head_tail_split(
        length, head_lengths=heads, share_differences=diffs, rng=_rng_from(data)
    )
    (h0, a), (b, end) = first
    assert h0 == 0 and end == length and second == [(a, b)] and 0 < a < b < length
    assert sorted(first + second) == [(0, a), (a, b), (b, length)]  # a partition of [0, L)
    assert _within(a, heads)
    difference = _share(second) - _share(first)
    if diff_span:  # both parities in range: exact
        assert _within(difference, diffs)
    else:  # one value; parity may force one more byte
        assert difference in (diff_lo, diff_lo + 1)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1200, 2500),
    cuts=st.lists(st.integers(1, 2499), max_size=12),
    data=st.data(),
)
def test_cut_crypto_takes_exactly_the_ranges(
    length: int, cuts: list[int], data: st.DataObject
) -> None:
    stream = bytes(data.draw(st.binary(min_size=length, max_size=length)))
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    frames = [
        qi.Frame("crypto", offset=s, data=stream[s:e])
        for s, e in zip(bounds, bounds[1:], strict=False)
    ]
    frames.reverse()  # order must not matter
    assert qi.crypto_ranges(frames) == [(0, length)]
    first, second = qi.draw_head_tail_split(
        length, head_lengths=(58, 84), share_differences=(4, 5), rng=_rng_from(data)
    )
    for ranges in (first, second):
        got = qi.cut_crypto(frames, ranges)
        assert [(f.offset, f.offset + len(f.data)) for f in got] == ranges
        assert all(f.data == stream[f.offset : f.offset + len(f.data)] for f in got)
    with pytest.raises(ValueError):
        qi.cut_crypto(frames[:1] if len(frames) > 1 else [], [(0, length)])


@settings(max_examples=200, deadline=None)
@given(
    share=st.integers(600, 1100),
    head=st.integers(58, 84),
    fragments=st.integers(1, 12),
    pings=st.integers(0, 10),
    runs=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_relayout_gives_the_asked_counts(
    share: int, head: int, fragments: int, pings: int, runs: int, seed: int
) -> None:
    """Fragments, PINGs and PADDING runs come out exactly as asked when they fit,
    the payload fills the room, and the CRYPTO bytes are unchanged."""
    room = 1215
    crypto = [
        qi.Frame("crypto", offset=0, data=os.urandom(head)),
        qi.Frame("crypto", offset=2000, data=os.urandom(share - head)),
    ]
    rng = random.Random(seed).randbytes  # hundreds of draws: too many for data.draw
    frames = qi.relayout(
        crypto, room=room, fragments=fragments, pings=pings, padding_runs=runs, rng=rng
    )
    payload = qi.encode_frames(frames)
    assert len(payload) == room
    decoded = qi.decode_frames(payload)
    kinds = [f.kind for f in decoded]
    assert kinds.count("crypto") == max(fragments, 2)
    assert kinds.count("ping") == pings
    assert kinds.count("padding") == min(runs, max(fragments, 2) + pings + 1)  # one per gap
    assert qi.crypto_ranges(decoded) == [(0, head), (2000, 2000 + share - head)]
    assert qi.cut_crypto(decoded, [(0, head), (2000, 2000 + share - head)]) == crypto
    with pytest.raises(ValueError):
        qi.relayout(crypto, room=share, fragments=3, pings=0, padding_runs=1, rng=os.urandom)


# --- padding Initial-bearing datagrams ------------------------------------------------------


_frame = st.one_of(
    st.builds(
        lambda offset, data: qi.Frame("crypto", offset=offset, data=data),
        st.integers(0, 5000),
        st.binary(min_size=1, max_size=300),
    ),
    st.just(qi.Frame("ping")),
    st.builds(lambda n: qi.Frame("padding", size=n), st.integers(1, 60)),
    st.builds(  # ACK: largest, delay, no more ranges, first range
        lambda largest, delay, first: qi.Frame(
            "ack",
            raw=b"\x02"
            + qi.push_varint(largest)
            + qi.push_varint(delay)
            + b"\x00"
            + qi.push_varint(min(first, largest)),
        ),
        st.integers(0, 2**20),
        st.integers(0, 2**14),
        st.integers(0, 2**20),
    ),
)


def _long_packet(first: int, dcid: bytes, scid: bytes, body: bytes) -> bytes:
    """A long-header packet that is not an Initial, as far as its header goes."""
    return (
        bytes([first])
        + qi.QUIC_V1.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + (len(body) | 0x4000).to_bytes(2, "big")
        + body
    )


@settings(max_examples=200, deadline=None)
@given(
    odcid=st.binary(min_size=8, max_size=20),
    dcid=st.binary(min_size=0, max_size=20),
    scid=st.binary(min_size=0, max_size=20),
    token=st.binary(max_size=40),
    initials=st.lists(
        st.tuples(st.lists(_frame, min_size=1, max_size=8), st.integers(1, 4), st.integers(0)),
        min_size=1,
        max_size=2,
    ),
    handshake=st.one_of(st.none(), st.binary(min_size=20, max_size=300)),
    short=st.one_of(st.none(), st.binary(min_size=20, max_size=300)),
    zeros=st.integers(0, 300),
    spare=st.integers(0, 400),
    bits=st.integers(0, 0x3F),
)
def test_pad_initial_datagram_pads_inside_the_last_initial(
    odcid: bytes,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    initials: list[tuple[list[qi.Frame], int, int]],
    handshake: bytes | None,
    short: bytes | None,
    zeros: int,
    spare: int,
    bits: int,
) -> None:
    """The last Initial gets the padding (same frames, packet number and pn length);
    the Initials before it and the packets after it keep their bytes; the zero
    bytes after the last packet are gone; the datagram is exactly ``size``."""
    keys = qi.initial_keys(odcid)
    packets, payloads = [], []
    for i, (frames, pn_length, pn_seed) in enumerate(initials):
        payload = qi.encode_frames(frames)
        payload += bytes(max(0, 4 - len(payload)))  # room for the header-protection sample
        pn = (pn_seed + i) % (1 << (8 * pn_length))
        packets.append(
            qi.protect_initial(
                keys=keys,
                dcid=dcid,
                scid=scid,
                token=token,
                packet_number=pn,
                pn_length=pn_length,
                payload=payload,
            )
        )
        payloads.append((pn, pn_length, payload))
    rest = b""
    expect_kinds = ["initial"] * len(packets)
    if handshake is not None:
        rest += _long_packet(0xE0 | (bits & 0x0F), dcid, scid, handshake)
        expect_kinds.append("handshake")
    if short is not None:
        rest += bytes([0x40 | bits]) + short
        expect_kinds.append("1rtt")
    real = b"".join(packets) + rest
    datagram = real + (bytes(zeros) if short is None else b"")
    spans = qi.packet_spans(datagram)
    assert [s.kind for s in spans] == expect_kinds and spans[-1].stop == len(real)

    size = len(real) + spare
    padded = qi.pad_initial_datagram(datagram, keys=keys, size=size)
    assert len(padded) == size
    head = b"".join(packets[:-1])
    assert padded.startswith(head)
    assert padded.endswith(rest)  # Handshake / 1-RTT byte for byte
    opened = qi.open_initial_datagram(padded, dcid=odcid)
    assert len(opened) == len(packets)
    last = opened[-1]
    assert sum(p.size for p in opened) == size - len(rest)  # the padding is inside
    pn, pn_length, payload = payloads[-1]
    assert (last.packet_number, last.pn_length) == (pn, pn_length)
    assert (last.dcid, last.scid, last.token) == (dcid, scid, token)
    assert qi.encode_frames(last.frames) == payload + bytes(spare)
    if spare:
        assert last.frames[-1].kind == "padding"
    assert qi.packet_spans(padded)[-1].stop == size  # nothing after the last packet

    with pytest.raises(ValueError):
        qi.pad_initial_datagram(datagram, keys=keys, size=len(real) - 1)
    with pytest.raises(qi.QuicInitialError):  # not the client's keys
        qi.pad_initial_datagram(datagram, keys=qi.initial_keys(odcid, client=False), size=size)
    if short is None:
        with pytest.raises(qi.QuicInitialError):  # bytes after the packets that are not zero
            qi.pad_initial_datagram(datagram + b"\x00\x01", keys=keys, size=size + 2)
    if rest:
        with pytest.raises(qi.QuicInitialError):  # does not begin with an Initial
            qi.pad_initial_datagram(rest + b"".join(packets), keys=keys, size=size)


@settings(max_examples=200, deadline=None)
@given(
    odcid=st.binary(min_size=8, max_size=20),
    scid=st.binary(min_size=0, max_size=20),
    initials=st.lists(
        st.tuples(st.lists(_frame, min_size=1, max_size=8), st.integers(1, 4)),
        min_size=1,
        max_size=2,
    ),
    handshake=st.one_of(st.none(), st.binary(min_size=20, max_size=300)),
    short=st.one_of(st.none(), st.binary(min_size=20, max_size=300)),
    zeros=st.integers(0, 1200),
)
def test_padding_into_initial_keeps_the_size(
    odcid: bytes,
    scid: bytes,
    initials: list[tuple[list[qi.Frame], int]],
    handshake: bytes | None,
    short: bytes | None,
    zeros: int,
) -> None:
    """A server-side datagram (server keys, empty client id): the zeros after the
    last packet become PADDING at the end of the last Initial, the datagram keeps its
    length, every other packet its bytes; with nothing after the last packet (no
    zeros, or a 1-RTT packet last) the datagram is returned as it is."""
    keys = qi.initial_keys(odcid, client=False)
    packets, payloads = [], []
    for pn, (frames, pn_length) in enumerate(initials):
        payload = qi.encode_frames(frames)
        payload += bytes(max(0, 4 - len(payload)))
        packets.append(
            qi.protect_initial(
                keys=keys,
                dcid=b"",
                scid=scid,
                token=b"",
                packet_number=pn,
                pn_length=pn_length,
                payload=payload,
            )
        )
        payloads.append(payload)
    rest = b""
    if handshake is not None:
        rest += _long_packet(0xE0, b"", scid, handshake)
    if short is not None:
        rest += bytes([0x40]) + short
    real = b"".join(packets) + rest
    datagram = real + (bytes(zeros) if short is None else b"")
    out = qi.padding_into_initial(datagram, keys=keys)
    if short is not None or zeros == 0:
        assert out is datagram
        return
    assert len(out) == len(datagram)
    assert out.startswith(b"".join(packets[:-1])) and out.endswith(rest)
    assert qi.packet_spans(out)[-1].stop == len(out)
    opened = qi.open_initial_datagram(out, dcid=odcid, client=False)
    assert len(opened) == len(packets)
    assert qi.encode_frames(opened[-1].frames) == payloads[-1] + bytes(zeros)
    assert opened[-1].frames[-1].kind == "padding"
    with pytest.raises(qi.QuicInitialError):  # the client's keys do not open it
        qi.padding_into_initial(datagram, keys=qi.initial_keys(odcid))


def test_pad_leaves_what_it_cannot_read() -> None:
    """``_Quic._pad`` sends unchanged what is not an Initial-bearing datagram it can open."""
    quic = _client(_layout())
    first, _ = quic.datagrams_to_send(0.0)[0]
    (packet,) = qi.open_initial_datagram(first)
    assert quic._pad(first) is first  # already the template's size
    short = bytes([0x40]) + os.urandom(60)
    assert quic._pad(short) is short
    ack = qi.protect_initial(
        keys=qi.initial_keys(packet.dcid),
        dcid=packet.dcid,
        scid=packet.scid,
        token=b"",
        packet_number=7,
        pn_length=2,
        payload=b"\x02\x06\x00\x00\x00",
    )
    padded = quic._pad(ack + bytes(1200 - len(ack)))
    assert len(padded) == _layout().datagram_size
    (opened,) = qi.open_initial_datagram(padded)
    assert opened.size == len(padded) and opened.packet_number == 7
    assert [f.kind for f in opened.frames] == ["ack", "padding"]
    broken = bytearray(ack + bytes(1200 - len(ack)))
    broken[30] ^= 1  # fails to authenticate
    assert quic._pad(bytes(broken)) == bytes(broken)
    garbage = ack + b"\x01" + bytes(1199 - len(ack))
    assert quic._pad(garbage) == garbage


# --- the first 1-RTT packets ---------------------------------------------------------------


def _first_1rtt() -> FirstOneRtt:
    first = _layout().first_1rtt
    assert first is not None
    return first


def _server_qlog(monkeypatch: pytest.MonkeyPatch, links: int) -> tuple[list[Any], list[str]]:
    """``links`` dial_quic <-> serve_quic links that carry data, the server's
    ``QuicConfiguration`` given a ``QuicLogger``; its traces and each link's authority."""
    logger = QuicLogger()
    real = Q.QuicConfiguration

    def configuration(**kwargs: Any) -> QuicConfiguration:
        if not kwargs.get("is_client"):
            kwargs["quic_logger"] = logger
        return real(**kwargs)

    monkeypatch.setattr(Q, "QuicConfiguration", configuration)
    authorities: list[str] = []

    async def main() -> None:
        node = Node()
        with trio.fail_after(20):
            async with _serving(node) as port:
                for _ in range(links):
                    peer = node.peer(port)
                    authorities.append(f"{peer.server_name}:{port}")
                    async with Q.dial_quic(peer) as link:
                        stream = await link.open_stream()
                        payload = os.urandom(3000)
                        assert await roundtrip(stream, payload) == payload

    trio.run(main)
    return list(logger.to_dict()["traces"]), authorities


def _stream_packets(trace: dict[str, Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    """(size, frames) of the client's 1-RTT packets with STREAM frames, as received."""
    out = []
    for ev in trace["events"]:
        data = ev.get("data", {})
        if ev.get("name") != "transport:packet_received":
            continue
        if data.get("header", {}).get("packet_type") != "1RTT":
            continue
        frames = data.get("frames", [])
        if any(f.get("frame_type") == "stream" for f in frames):
            out.append((int(data["raw"]["length"]), frames))
    return out


def test_first_1rtt_packets_have_the_browser_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control-stream packet is a size of the template's range, the CONNECT packet
    one of the sizes Chromium's GET would have for our authority; both are one
    packet of STREAM frames only (no ACK), the request whole in the second."""
    first = _first_1rtt()
    traces, authorities = _server_qlog(monkeypatch, 3)
    assert len(traces) == 3
    for trace, authority in zip(traces, authorities, strict=True):
        packets = _stream_packets(trace)
        control, control_frames = packets[0]
        # aioquic's QPACK encoder sends its table capacity on its own in between
        # (the server's SETTINGS come after our first 1-RTT packet): 35 bytes
        request, request_frames = next(
            p for p in packets if any(f.get("stream_id") == 0 for f in p[1])
        )
        assert _within(control, first.control_packet_sizes)
        assert {f["frame_type"] for f in control_frames} == {"stream"}
        assert 2 in {f["stream_id"] for f in control_frames}
        assert request in Q.first_request_sizes(first, authority)
        assert {f["frame_type"] for f in request_frames} == {"stream"}
        (headers,) = [f for f in request_frames if f["stream_id"] == 0]
        assert headers["offset"] == 0 and not headers.get("fin")
        # nothing but the frames: packet = short header + STREAM frames + tag
        frames = sum(
            3
            + (1 if f["stream_id"] < 64 else 2)
            + (1 if 0 < f["offset"] < 64 else 0)
            + (2 if f["offset"] >= 64 else 0)
            + f["length"]
            for f in request_frames
        )
        assert request == 1 + 8 + 2 + frames + 16


def test_connect_unshaped_without_first_1rtt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout without ``first_1rtt`` sends aioquic's packets (the full header list)."""
    layout = dataclasses.replace(_layout(), first_1rtt=None)
    real = Q.dial_quic
    monkeypatch.setattr(Q, "dial_quic", lambda peer: real(peer, quic_layout=layout))
    traces, _ = _server_qlog(monkeypatch, 1)
    packets = _stream_packets(traces[0])
    control_frames = packets[0][1]
    # aioquic's own control stream (no GREASE frame), whether or not an ACK joined it
    control = [f for f in control_frames if f.get("stream_id") == 2]
    assert control and control[0]["length"] < _first_1rtt().control_stream_bytes[0]
    # the request went out (its size is aioquic's; it may match a target by chance)
    assert any(f.get("stream_id") == 0 for _, fs in packets for f in fs)


def test_request_size_model_gives_back_the_capture() -> None:
    first = _first_1rtt()
    for size, headers in first.requests:
        one = dataclasses.replace(first, requests=((size, headers),))
        authority = dict(headers)[":authority"]
        assert Q.first_request_sizes(one, authority, headed=False) == (size,)
        assert Q.first_request_sizes(one, authority)[0] < size  # no "Headless" marker
        longer = Q.first_request_sizes(one, authority + "x" * 40)[0]
        assert longer > Q.first_request_sizes(one, authority)[0]
    assert _within(first.requests[0][0], first.request_packet_sizes)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(2, 16386), data=st.data())
def test_reserved_frame_is_exactly_the_asked_size(size: int, data: st.DataObject) -> None:
    frame = Q.reserved_frame(size, _rng_from(data))
    assert len(frame) == size
    buf = Buffer(data=frame)
    ftype = buf.pull_uint_var()
    assert buf.tell() == size_uint_var(ftype)  # minimal varints
    assert (ftype - 0x21) % 0x1F == 0 and ftype >= 0x21
    length = buf.pull_uint_var()
    assert buf.tell() == size_uint_var(ftype) + size_uint_var(length)
    assert length == size - buf.tell()


@pytest.mark.parametrize("size", [-1, 0, 1, 16387])
def test_reserved_frame_refuses_impossible_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        Q.reserved_frame(size)
