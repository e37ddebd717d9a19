"""The Trio layer of HTX over QUIC: a UDP socket, aioquic's sans-I/O QUIC and HTTP/3.

    async with dial_quic(peer) as link:            # same HtxLink as dial_tcp gives
        stream = await link.open_stream()

    await nursery.start(serve_quic, handler, server_config)  # started() gets the socket

The layering per connection (spec/htx-quic.md): UDP ⇄ ``QuicConnection`` (with our
TLS engine from ``qnet.htx.tls.quic_engine``) ⇄ ``H3Connection`` ⇄ the tunnel =
the DATA of one extended-CONNECT request stream ⇄ the inner handshake, then
``HtxSession`` inside the shared ``HtxLink``. Without a valid ticket the server is
an HTTP/3 web server for its cover site.

aioquic is pinned at 1.7.2. Every reach into its QUIC internals is in this module
and marked "aioquic 1.7.2 internal"; the TLS engine's are in ``qnet/htx/tls.py``.

The client's Initial packets are rewritten to look like Chromium's (anyone can
decrypt an Initial, so their inside is part of the fingerprint): the first
flight gets Chromium's share of the hello between its two packets, which means
moving CRYPTO bytes from one packet to the other; aioquic's records of what each
packet carried are changed to match, or its loss recovery would retransmit the
wrong bytes. Later Initials keep their bytes and are only re-laid out (a
retransmission carries every lost range in one packet, as Chromium's does), and
every other datagram that begins with an Initial is padded to Chromium's size
inside that packet, also when a Handshake and a 1-RTT packet follow it. Server
Initials are acknowledged after aioquic's 1 ms ACK delay, so that those that
arrive together get one ACK, as Chromium's do. The server pads its
Initial-bearing datagrams inside the Initial too, where aioquic would append
zero bytes after the last packet.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio
from aioquic._buffer import Buffer
from aioquic.buffer import size_uint_var
from aioquic.h3 import events as h3e
from aioquic.h3.connection import ErrorCode as H3ErrorCode
from aioquic.h3.connection import H3Connection, Setting
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicNetworkPath
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch
from pylsqpack import Encoder as QpackEncoder

from qnet.crypto.primitives import random_bytes
from qnet.htx import cover
from qnet.htx import quic_initial as qi
from qnet.htx.errors import HandshakeError, HtxTimeout, TicketError, TlsError
from qnet.htx.first_flight import as_sent_to
from qnet.htx.inner import EXPORTER_LABEL
from qnet.htx.session import HtxConfig
from qnet.htx.ticket import (
    DEFAULT_CARRIERS,
    Carriers,
    TicketVerifier,
    build_ticket,
    extract_ticket,
    put_ticket,
)
from qnet.htx.tls import (
    CHROME_QUIC_LAYOUT,
    CHROME_QUIC_TEMPLATE,
    FirstOneRtt,
    QuicLayout,
    QuicPacketLayout,
    TlsClientConfig,
    TlsServerConfig,
    TlsStateError,
    quic_engine,
    quic_exporter,
    quic_transport_parameters,
)
from qnet.htx.transport import (
    HtxLink,
    LinkHandler,
    PeerInfo,
    ServerConfig,
    run_inner_client,
    run_inner_server,
)

__all__ = [
    "ALPN",
    "dial_quic",
    "first_request_sizes",
    "qpack_headers_length",
    "reserved_frame",
    "serve_quic",
]

log = logging.getLogger("qnet.htx")

ALPN: Final = "h3"
#: Largest UDP payload we read.
DATAGRAM_READ: Final = 65536
#: QUIC bytes queued on the tunnel stream (unacknowledged) before ``send_tunnel`` waits.
TUNNEL_SEND_LIMIT: Final = 512 * 1024
#: Server connections kept at once; Initial packets beyond this are dropped.
MAX_SERVER_CONNECTIONS: Final = 4096
#: Shortest datagram that may open a connection (RFC 9000 §14.1).
MIN_INITIAL_DATAGRAM: Final = 1200
EXT_QUIC_TRANSPORT_PARAMETERS: Final = 0x39
#: HTTP/3 HEADERS frame type (RFC 9114 §7.2.2).
H3_HEADERS: Final = 0x01
#: AEAD tag of a 1-RTT packet.
AEAD_TAG: Final = 16
#: A STREAM frame as aioquic 1.7.2 writes it: type, stream id, offset when not 0,
#: and a 2-byte length (``_write_stream_frame``); this is the type plus the length.
STREAM_FRAME_FIXED: Final = 3
#: The shortest reserved frame: a 1-byte type (0x21) and a zero length.
RESERVED_FRAME_MIN: Final = 2


def reserved_frame(size: int, rng: Callable[[int], bytes] = random_bytes) -> bytes:
    """An HTTP/3 frame of a reserved type (0x1f·N + 0x21, RFC 9114 §7.2.8) that is
    exactly ``size`` bytes long (type, length and random payload; minimal varints),
    as Chromium's GREASE frames; receivers ignore it. ``size`` must be 2..16386."""
    if not RESERVED_FRAME_MIN <= size <= 16386:
        raise ValueError(f"a reserved frame of {size} bytes cannot be made")
    # (type length, lowest N, highest N) of the minimal varint encodings
    kinds = [(1, 0, 0), (2, 1, (0x3FFF - 0x21) // 0x1F), (4, 528, (0x3FFFFFFF - 0x21) // 0x1F)]
    fits = []
    for tlen, lo, hi in kinds:
        for llen, plo, phi in ((1, 0, 63), (2, 64, 16383)):
            payload = size - tlen - llen
            if plo <= payload <= phi:
                fits.append((tlen, lo, hi, payload))
    tlen, lo, hi, payload = fits[int.from_bytes(rng(2), "big") % len(fits)]
    n = lo + int.from_bytes(rng(4), "big") % (hi - lo + 1)
    out = Buffer(capacity=size)
    out.push_uint_var(0x1F * n + 0x21)
    out.push_uint_var(payload)
    out.push_bytes(rng(payload) if payload else b"")
    assert out.tell() == size and tlen == size_uint_var(0x1F * n + 0x21)
    return bytes(out.data)


def qpack_headers_length(headers: Sequence[tuple[str, str]]) -> int:
    """Bytes of the HEADERS frame (type, length, field section) a fresh QPACK encoder
    without a dynamic table makes of ``headers``, as for a browser's first request."""
    _, section = QpackEncoder().encode(
        0, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    )
    return 1 + size_uint_var(len(section)) + len(section)


def first_request_sizes(
    first: FirstOneRtt, authority: str, *, headed: bool = True
) -> tuple[int, ...]:
    """Sizes of the browser's first-request 1-RTT packet had it gone to ``authority``
    (sorted, distinct): each captured size moved by the difference of the HEADERS
    frame lengths (``qpack_headers_length``) of its header list with ``:authority``
    (and ``origin``) set to ``authority`` and, ``headed``, the User-Agent without the
    capture tool's "Headless" marker."""
    out = set()
    for size, headers in first.requests:
        moved = as_sent_to(headers, authority, headed=headed)
        out.add(size + qpack_headers_length(moved) - qpack_headers_length(headers))
    return tuple(sorted(out))


class _Quic(QuicConnection):
    """``QuicConnection`` whose TLS context is our engine, and (client, with a
    ``layout``) whose Initial packets follow a browser template.

    aioquic 1.7.2 internals, all here:

    * ``_initialize`` builds ``self.tls`` (a stock ``aioquic.tls.Context``) with
      the transport parameters and callbacks; we swap in ``quic_engine``, which
      keeps them, and with a layout replace the transport parameters by the
      template's (``handshake_extensions``). It runs once per connection
      (``connect`` on a client, the first Initial packet on a server).
    * With a layout: ``_peer_cid.cid`` and ``_original_destination_connection_id``
      get a DCID of the template's length (aioquic sizes it like our own id);
      ``_packet_number`` starts at the template's first packet number;
      ``_replenish_connection_ids`` issues nothing when our id is empty (RFC 9000
      §5.1.1: a zero-length id cannot be changed); ``datagrams_to_send`` passes
      every Initial-only datagram through ``_reshape`` (``quic_initial.relayout``)
      and pads every other one that begins with an Initial to the template's
      datagram size inside its last Initial packet (``_pad``), as Chromium does;
      aioquic pads them to 1,200 bytes, partly with zero bytes after the last
      packet, which are dropped. ``_write_application`` keeps aioquic from
      padding a 1-RTT packet that follows an Initial in the same datagram
      (``QuicPacketBuilder._datagram_needs_padding``), so that ``_pad`` puts
      that padding into the Initial; ``_write_crypto_frame`` writes every
      pending range of the Initial CRYPTO stream into the packet while there is
      room (aioquic writes one per packet), so that a lost head and tail go out
      again in one Initial; ``_write_handshake`` holds an Initial ACK until its
      ``_spaces[INITIAL].ack_at`` while we have no Handshake keys, so that server
      Initials arriving back to back get one ACK.
    * With a layout that has ``crypto_split``, the first flight (two datagrams,
      one Initial each, CRYPTO [0, x) and [x, L)) goes through
      ``_split_first_flight`` instead: the CRYPTO bytes are redistributed
      (head + tail, then middle) and the CRYPTO delivery handlers of the two
      records in ``_spaces[INITIAL].sent_packets`` are rewritten to the new
      ranges (``sent_bytes`` stays aioquic's). Anything unexpected: the
      per-packet ``_reshape``.
    * A server (no layout) passes every datagram that begins with an Initial
      through ``_pad_server``: the zero bytes aioquic appends after the last
      packet become PADDING inside the last Initial, the size unchanged.
    """

    def __init__(
        self,
        *,
        tls_config: TlsClientConfig | TlsServerConfig,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes | None = None,
        layout: QuicLayout | None = None,
    ) -> None:
        self._qnet_tls_config = tls_config
        self._qnet_layout = layout if configuration.is_client else None
        self._qnet_server = not configuration.is_client
        self._qnet_first_flight = False
        first = self._qnet_layout.first_1rtt if self._qnet_layout is not None else None
        #: the template's first 1-RTT packets, until the first one has been shaped
        self.qnet_first_1rtt: FirstOneRtt | None = first
        self._qnet_control_shaped = first is None
        #: the HTTP/3 control stream (set by the client connection)
        self.qnet_control_stream: int | None = None
        self._qnet_hold_ack = False
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        if self._qnet_layout is not None:
            dcid = random_bytes(self._qnet_layout.dcid_length)
            self._peer_cid.cid = dcid
            self._original_destination_connection_id = dcid
            self._packet_number = self._qnet_layout.first_packet_number
        self._qnet_odcid = self._original_destination_connection_id
        self._qnet_server_keys: qi.InitialKeys | None = None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls = quic_engine(self._qnet_tls_config, self.tls)
        if self._qnet_layout is not None:
            body = quic_transport_parameters(self._qnet_layout, self.host_cid)
            self.tls.handshake_extensions = [(EXT_QUIC_TRANSPORT_PARAMETERS, body)]

    def _replenish_connection_ids(self) -> None:
        if self._qnet_layout is not None and not self.host_cid:
            return
        super()._replenish_connection_ids()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if not self._qnet_control_shaped and self._cryptos[Epoch.ONE_RTT].send.is_valid():
            self._qnet_control_shaped = True
            self._shape_control_packet()
        if self._qnet_hold_ack:
            # aioquic 1.7.2 internal ``ack_at``: hidden for this call, so that no ACK
            # joins a shaped 1-RTT packet; it goes out at its timer.
            self._qnet_hold_ack = False
            space = self._spaces[Epoch.ONE_RTT]
            ack_at, space.ack_at = space.ack_at, None
            try:
                out = super().datagrams_to_send(now)
            finally:
                if space.ack_at is None:
                    space.ack_at = ack_at
        else:
            out = super().datagrams_to_send(now)
        layout = self._qnet_layout
        if layout is None:
            if self._qnet_server:
                return [(self._pad_server(data), addr) for data, addr in out]
            return out
        shapes = layout.packets
        if out and not self._qnet_first_flight:
            self._qnet_first_flight = True
            try:
                split = self._split_first_flight(out)
            except (ValueError, qi.QuicInitialError):
                split = None
            if split is not None:
                return split
            # The first flight packet by packet: each Initial like the template's.
            return [
                (self._shape(data, shapes[min(i, len(shapes) - 1)]), addr)
                for i, (data, addr) in enumerate(out)
            ]
        # Later CRYPTO Initials are retransmissions: like Chromium's, they are laid
        # out as its first Initial is (fragments, PINGs, padding runs, pn length).
        return [(self._shape(data, shapes[0]), addr) for data, addr in out]

    def one_rtt_base(self) -> int:
        """A 1-RTT packet's bytes besides its frames (aioquic 1.7.2 internals, as
        ``one_rtt_size``)."""
        return 1 + len(self._peer_cid.cid) + PACKET_NUMBER_SEND_SIZE + AEAD_TAG

    def one_rtt_size(self) -> int | None:
        """The size of the 1-RTT packet aioquic would build now from the stream data
        waiting to be sent (no ACK, one STREAM frame per stream), or None when
        nothing waits or a stream waits with more than one range.

        aioquic 1.7.2 internals: ``_peer_cid.cid``, the 2-byte packet number
        (``PACKET_NUMBER_SEND_SIZE``), the STREAM frame of ``_write_stream_frame``
        (type, stream id, offset when not 0, 2-byte length) and the sender's
        ``_pending`` ranges; a packet holds one STREAM frame per stream."""
        frames = 0
        for sid, stream in self._streams.items():
            pending = list(stream.sender._pending)
            if len(pending) > 1:
                return None
            for r in pending:
                offset = size_uint_var(r.start) if r.start else 0
                frames += STREAM_FRAME_FIXED + size_uint_var(sid) + offset + r.stop - r.start
        if not frames:
            return None
        return self.one_rtt_base() + frames

    def pad_stream_packet(self, stream_id: int, target: int) -> bool:
        """Append a reserved HTTP/3 frame to ``stream_id`` so that the next 1-RTT packet
        (``one_rtt_size``) is ``target`` bytes, and keep ACKs out of it; False (nothing
        done) if it cannot be made so."""
        size = self.one_rtt_size()
        if size is None or target - size < RESERVED_FRAME_MIN or target > MIN_INITIAL_DATAGRAM:
            return False
        self.send_stream_data(stream_id, reserved_frame(target - size))
        self._qnet_hold_ack = True
        return True

    def _shape_control_packet(self) -> None:
        """The first 1-RTT packet (control stream, QPACK stream types) brought to a size
        of the template's ``control_packet_sizes`` with a reserved frame on the control
        stream, as Chromium's control stream carries one."""
        first, sid = self.qnet_first_1rtt, self.qnet_control_stream
        if first is None or sid is None:
            return
        lo, hi = first.control_packet_sizes
        target = lo + int.from_bytes(random_bytes(2), "big") % (hi - lo + 1)
        if not self.pad_stream_packet(sid, target):
            log.debug("first 1-RTT packet left unshaped (target %d)", target)

    def _shape(self, datagram: bytes, shape: QuicPacketLayout) -> bytes:
        """A client datagram: ``_reshape`` per ``shape`` if it is a lone CRYPTO
        Initial, else ``_pad`` if it begins with an Initial."""
        shaped = self._reshape(datagram, shape)
        return self._pad(datagram) if shaped is datagram else shaped

    def _pad_server(self, datagram: bytes) -> bytes:
        """A server datagram that begins with an Initial, with the zero bytes aioquic
        put after its last packet moved inside its last Initial as PADDING frames;
        the datagram keeps the size aioquic chose (``quic_initial.padding_into_initial``).

        aioquic pads a server datagram only when it holds an ack-eliciting Initial
        (RFC 9000 §14.1: to 1,200 bytes, or less under the anti-amplification
        limit), with zeros after the last packet unless a 1-RTT packet ends the
        datagram, which it pads from inside; a datagram whose Initials only
        acknowledge is not padded. Datagrams without zeros after the last packet,
        and anything that does not parse, pass unchanged. ``sent_bytes`` stay
        aioquic's; the keys are the server's Initial keys of the client's first
        DCID (the ``original_destination_connection_id`` we were made with)."""
        odcid = self._qnet_odcid
        if odcid is None or not datagram or datagram[0] & 0xF0 != 0xC0:
            return datagram
        if self._qnet_server_keys is None:
            self._qnet_server_keys = qi.initial_keys(odcid, client=False)
        try:
            return qi.padding_into_initial(datagram, keys=self._qnet_server_keys)
        except (ValueError, qi.QuicInitialError):
            return datagram

    def _write_application(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        """aioquic's 1-RTT packets, except that (client with a layout) a 1-RTT packet
        coalesced after an Initial is not padded: ``_pad`` then pads the datagram
        inside the Initial, as Chromium's Initial + Handshake + 1-RTT datagram is
        (``I(~1100)[ACK, PADDING] + H + 1-RTT(~70)``, where aioquic would send
        ``I(92) + H(81) + 1-RTT(1077)``).

        Why here and so: aioquic 1.7.2 internal ``QuicPacketBuilder`` sets
        ``_datagram_needs_padding`` when a client Initial packet ends, and when
        the 1-RTT packet that follows it in the datagram ends, fills that packet
        with PADDING (it may not append bytes after a short-header packet). The
        builder is made inside ``datagrams_to_send``, so it cannot be replaced;
        the 1-RTT packets are all started here, so for this call its
        ``start_packet`` is wrapped: right after a 1-RTT packet starts behind other
        packets of its datagram, the flag is cleared. If that packet stays
        empty (aioquic then drops it and the datagram ends with the Initial), the
        flag is set again so that aioquic still pads the datagram, with zeros
        that ``_pad`` moves inside the Initial. The other option, re-encrypting
        the padded 1-RTT packet without its PADDING, would need a parser of
        every 1-RTT frame to tell the PADDING from the zero bytes a frame may end
        with. Packet numbers and ``sent_bytes`` are aioquic's; a 1-RTT packet
        not padded simply counts fewer bytes, and ``_pad`` adds to the Initial
        bytes it does not count, as for every datagram it pads.
        """
        if self._qnet_layout is None:
            super()._write_application(builder, network_path, now)
            return
        start_packet = builder.start_packet
        unpadded = False  # this datagram's 1-RTT packet was kept from padding

        def start(packet_type: QuicPacketType, crypto: CryptoPair) -> None:
            nonlocal unpadded
            start_packet(packet_type, crypto)
            if builder._packet_start == 0:
                unpadded = False  # a datagram of its own: aioquic's padding rules
            elif packet_type == QuicPacketType.ONE_RTT and builder._datagram_needs_padding:
                builder._datagram_needs_padding = False
                unpadded = True

        builder.start_packet = start  # type: ignore[method-assign]
        try:
            super()._write_application(builder, network_path, now)
        finally:
            del builder.start_packet
            if unpadded and builder._packet is not None and builder.packet_is_empty:
                builder._datagram_needs_padding = True

    def _write_handshake(self, builder: QuicPacketBuilder, epoch: Epoch, now: float) -> None:
        """aioquic's Initial and Handshake packets, except that (client with a layout,
        no Handshake keys yet) an Initial ACK goes out once it is due, and then in
        an Initial of its own.

        aioquic 1.7.2 internal: on an ack-eliciting packet it sets the space's
        ``ack_at`` to now + 1 ms (``K_GRANULARITY``) and ``get_timer`` wakes us
        then, but ``_write_handshake`` writes a pending ACK at any call, and we
        call after every datagram: server Initials a moment apart (the rest of
        the ServerHello, then the one that completes it) got an ACK-only Initial
        each, where Chromium, acknowledging Initials after ~1 ms, sends one. So
        ``ack_at`` is hidden from the call, and the call is made once more with
        it if the ACK is due and nothing else went out (an ACK never rides in a
        retransmitted CRYPTO Initial, which ``_reshape`` could not lay out; it
        follows at once, the timer being due). RFC 9000 §13.2.1 wants Initials
        acknowledged at once: 1 ms is the timer granularity aioquic itself
        uses. With Handshake keys (the datagram with the Finished is being
        built) aioquic's rule is kept: the ACK goes with it.
        """
        space = self._spaces[epoch]
        ack_at = space.ack_at
        if (
            self._qnet_layout is None
            or epoch != Epoch.INITIAL
            or ack_at is None
            or self._cryptos[Epoch.HANDSHAKE].send.is_valid()
        ):
            super()._write_handshake(builder, epoch, now)
            return
        packets = builder.packet_number
        space.ack_at = None
        try:
            super()._write_handshake(builder, epoch, now)
        finally:
            space.ack_at = ack_at
        if ack_at <= now and builder.packet_number == packets:
            super()._write_handshake(builder, epoch, now)

    def _write_crypto_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> bool:
        """aioquic's CRYPTO frame, and (client with a layout, Initial stream) more
        of them while data is pending and the packet has room.

        aioquic 1.7.2 writes one CRYPTO frame per packet, from the first pending
        range: after the first datagram of the first flight is lost, the head
        and the tail it carried went out as two Initial packets in one datagram.
        Chromium sends one Initial with both ranges, laid out like its first
        Initial (``_reshape`` takes any number of ranges). Each frame is
        aioquic's own (its delivery handler in the packet's record), so loss
        recovery sees exactly the ranges the packet carries."""
        wrote = super()._write_crypto_frame(builder=builder, space=space, stream=stream)
        if self._qnet_layout is None or stream is not self._crypto_streams[Epoch.INITIAL]:
            return wrote
        more = wrote
        while more and not stream.sender.buffer_is_empty:
            more = super()._write_crypto_frame(builder=builder, space=space, stream=stream)
        return wrote

    def _pad(self, datagram: bytes) -> bytes:
        """An Initial-bearing datagram (ACK-only Initials, Initial + Handshake
        [+ 1-RTT], several Initials) padded to the template's datagram
        size as Chromium does: PADDING inside its last Initial packet, nothing
        after the last packet (``quic_initial.pad_initial_datagram``). aioquic's
        ``sent_bytes`` stay as built. Anything unexpected passes unchanged."""
        layout = self._qnet_layout
        assert layout is not None and self._qnet_odcid is not None
        size = layout.datagram_size
        if not datagram or datagram[0] & 0xF0 != 0xC0 or len(datagram) >= size:
            return datagram  # no Initial first, or already as long
        try:
            return qi.pad_initial_datagram(
                datagram, keys=qi.initial_keys(self._qnet_odcid), size=size
            )
        except (ValueError, qi.QuicInitialError):
            return datagram

    def _sole_initial(self, datagram: bytes) -> qi.InitialPacket | None:
        """The datagram's Initial packet if it is the only packet and holds only
        CRYPTO (at least one), PING and PADDING frames; else None."""
        assert self._qnet_odcid is not None
        if not datagram or datagram[0] & 0xF0 != 0xC0:
            return None
        try:
            packets = qi.open_initial_datagram(datagram, dcid=self._qnet_odcid)
        except qi.QuicInitialError:
            return None
        if len(packets) != 1 or any(datagram[packets[0].size :]):
            return None
        frames = packets[0].frames
        if not any(f.kind == "crypto" for f in frames) or any(
            f.kind not in ("crypto", "padding", "ping") for f in frames
        ):
            return None
        return packets[0]

    def _split_first_flight(
        self, out: list[tuple[bytes, NetworkAddress]]
    ) -> list[tuple[bytes, NetworkAddress]] | None:
        """The first flight with the hello's bytes shared between its two Initial
        packets as the template's ``crypto_split`` says, and aioquic's records of
        the two packets changed to match; None (nothing changed) unless the
        flight is exactly two one-packet datagrams with [0, x) and [x, L) of a
        complete hello and the re-laid-out packets fit.

        aioquic 1.7.2 internals: ``_spaces[INITIAL].sent_packets[pn].delivery_handlers``
        holds ``(sender.on_data_delivery, (start, stop, fin))`` per CRYPTO frame,
        ``sender`` being ``_crypto_streams[INITIAL].sender``; on ACK or loss
        the handler marks exactly those bytes acknowledged or pending again, so
        they must name the bytes the packet really carried.
        """
        layout = self._qnet_layout
        assert layout is not None
        split = layout.crypto_split
        if split is None or len(out) != 2 or out[0][1] != out[1][1]:
            return None
        packets = [self._sole_initial(data) for data, _ in out]
        if packets[0] is None or packets[1] is None:
            return None
        first, second = packets[0], packets[1]
        crypto = [f for p in (first, second) for f in p.frames if f.kind == "crypto"]
        have = [qi.crypto_ranges(first.frames), qi.crypto_ranges(second.frames)]
        if len(have[0]) != 1 or len(have[1]) != 1 or have[0][0][0] != 0:
            return None
        x, length = have[0][0][1], have[1][0][1]
        if have[1][0][0] != x:
            return None
        (hello,) = qi.cut_crypto(crypto, [(0, 4)])
        if hello.data[0] != 1 or 4 + int.from_bytes(hello.data[1:4], "big") != length:
            return None  # not one whole ClientHello
        # aioquic 1.7.2 internal: the sent-packet records (see the docstring).
        space = self._spaces[Epoch.INITIAL]
        sender = self._crypto_streams[Epoch.INITIAL].sender
        deliver = sender.on_data_delivery
        records = [space.sent_packets.get(p.packet_number) for p in (first, second)]
        for record, ranges in zip(records, have, strict=True):
            if record is None:
                return None  # already acknowledged or lost
            carried = [args for handler, args in record.delivery_handlers if handler == deliver]
            if carried != [(start, stop, False) for start, stop in ranges]:
                return None
        head_tail, middle = qi.draw_head_tail_split(
            length,
            head_lengths=split.head_lengths,
            share_differences=split.share_differences,
            rng=random_bytes,
        )
        shapes = layout.packets[0], layout.packets[min(1, len(layout.packets) - 1)]
        built = [
            self._layout_packet(first, qi.cut_crypto(crypto, head_tail), shapes[0]),
            self._layout_packet(second, qi.cut_crypto(crypto, middle), shapes[1]),
        ]
        if built[0] is None or built[1] is None:
            return None
        # Nothing can fail from here: commit.
        for record, ranges in zip(records, (head_tail, middle), strict=True):
            assert record is not None
            record.delivery_handlers = [
                (handler, args) for handler, args in record.delivery_handlers if handler != deliver
            ] + [(deliver, (start, stop, False)) for start, stop in ranges]
        return [(built[0], out[0][1]), (built[1], out[1][1])]

    def _reshape(self, datagram: bytes, shape: QuicPacketLayout) -> bytes:
        """One client Initial packet carrying CRYPTO (one range or several),
        re-laid out per ``shape`` (same packet number, same CRYPTO bytes);
        anything else passes unchanged."""
        packet = self._sole_initial(datagram)
        if packet is None:
            return datagram
        crypto = [f for f in packet.frames if f.kind == "crypto"]
        built = self._layout_packet(packet, crypto, shape)
        return datagram if built is None else built

    def _layout_packet(
        self, packet: qi.InitialPacket, crypto: list[qi.Frame], shape: QuicPacketLayout
    ) -> bytes | None:
        """``packet`` (its header and number) carrying ``crypto``, laid out per
        ``shape`` to the template's datagram size; None if it cannot fit."""
        layout = self._qnet_layout
        assert layout is not None and self._qnet_odcid is not None

        def pick(values: tuple[int, ...]) -> int:
            return values[int.from_bytes(random_bytes(2), "big") % len(values)]

        pn_len = pick(shape.pn_length)
        room = (
            layout.datagram_size
            - qi.header_size(packet.dcid, packet.scid, packet.token, pn_len)
            - 16
        )
        fragments, pings, runs = (
            pick(shape.crypto_frames),
            pick(shape.pings),
            pick(shape.padding_runs),
        )
        while True:
            try:
                frames = qi.relayout(
                    crypto,
                    room=room,
                    fragments=fragments,
                    pings=pings,
                    padding_runs=runs,
                    rng=random_bytes,
                )
                break
            except ValueError:
                if fragments > len(crypto):
                    fragments -= 1
                elif pings > 0:
                    pings -= 1
                else:
                    return None  # cannot fit
        return qi.protect_initial(
            keys=qi.initial_keys(self._qnet_odcid),
            dcid=packet.dcid,
            scid=packet.scid,
            token=packet.token,
            packet_number=packet.packet_number,
            pn_length=pn_len,
            payload=qi.encode_frames(frames),
        )

    def exporter(self) -> bytes:
        """The inner handshake's prologue: TLS exporter of this QUIC connection's TLS."""
        return quic_exporter(self.tls, EXPORTER_LABEL, b"", 32)

    @property
    def closing(self) -> bool:
        """True once either side started closing (aioquic 1.7.2 internal ``_close_event``)."""
        return self._close_event is not None

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes queued on a stream and not yet acknowledged (aioquic 1.7.2 internals
        ``_streams`` and the sender's ``_buffer_start``/``_buffer_stop``)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start


Sender = Callable[[bytes, NetworkAddress], None]


class _Connection:
    """One QUIC + HTTP/3 connection driven from Trio, and the ``TunnelWire`` over its
    tunnel stream once one is open.

    ``datagram`` feeds a received datagram; ``drive`` is the connection's one task:
    it hands events to ``on_h3``, writes datagrams after every batch, and runs the
    QUIC timer. Waiters use ``_wait`` and wake after each batch.
    """

    def __init__(self, quic: _Quic, send: Sender) -> None:
        self.quic = quic
        self.h3 = H3Connection(quic)
        self._send = send
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.handshake_done = False
        self.terminated = False
        self.tunnel_id: int | None = None
        self._tunnel_in: list[bytes] = []
        self._tunnel_eof = False
        self._tunnel_sent_fin = False

    # -- driving --

    def poke(self) -> None:
        self._wake.set()

    def datagram(self, data: bytes, addr: NetworkAddress) -> None:
        if self.terminated:
            return
        self.quic.receive_datagram(data, addr, trio.current_time())
        self.poke()

    def _transmit(self) -> None:
        for data, addr in self.quic.datagrams_to_send(trio.current_time()):
            self._send(data, addr)

    async def drive(self) -> None:
        """Run the connection until QUIC reports it terminated."""
        while not self.terminated:
            self._wake = trio.Event()
            while (event := self.quic.next_event()) is not None:
                self._on_quic(event)
            if self.quic.closing:
                self._tunnel_eof = True
            self._transmit()
            self._changed.set()
            self._changed = trio.Event()
            if self.terminated:
                break
            deadline = self.quic.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.quic.handle_timer(now)

    def _on_quic(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.HandshakeCompleted):
            self.handshake_done = True
        elif isinstance(event, qe.ConnectionTerminated):
            self.terminated = True
            self._tunnel_eof = True
            log.debug("quic connection ended: 0x%x %s", event.error_code, event.reason_phrase or "")
        elif isinstance(event, qe.StreamReset) and event.stream_id == self.tunnel_id:
            self._tunnel_eof = True
        self.on_quic(event)
        if self.terminated:
            return
        for h3_event in self.h3.handle_event(event):
            self.on_h3(h3_event)

    def on_quic(self, event: qe.QuicEvent) -> None:
        """Hook for subclasses (connection ids on the server)."""

    def on_h3(self, event: h3e.H3Event) -> None:
        raise NotImplementedError

    async def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``; raises ``trio.BrokenResourceError`` if the connection ends."""
        while not ready():
            if self.terminated or self.quic.closing:
                raise trio.BrokenResourceError("the QUIC connection closed")
            await self._changed.wait()

    def _tunnel_data(self, data: bytes, ended: bool) -> None:
        if data:
            self._tunnel_in.append(data)
        self._tunnel_eof = self._tunnel_eof or ended

    # -- TunnelWire --

    async def read_tunnel(self) -> bytes | None:
        while not self._tunnel_in:
            if self._tunnel_eof or self.terminated:
                return None
            await self._changed.wait()
        data = b"".join(self._tunnel_in)
        self._tunnel_in.clear()
        return data

    async def send_tunnel(self, data: bytes) -> None:
        sid = self.tunnel_id
        if sid is None or self._tunnel_sent_fin or self.terminated or self.quic.closing:
            raise trio.BrokenResourceError("the tunnel is closed")
        self.h3.send_data(sid, data, end_stream=False)
        self.poke()
        await self._wait(lambda: self.quic.stream_backlog(sid) <= TUNNEL_SEND_LIMIT)

    async def aclose(self) -> None:
        """End the tunnel stream and close QUIC (H3_NO_ERROR); bounded, never raises."""
        with trio.move_on_after(1) as scope:
            scope.shield = True
            if not self.terminated and not self.quic.closing:
                if self.tunnel_id is not None and not self._tunnel_sent_fin:
                    self._tunnel_sent_fin = True
                    try:
                        self.h3.send_data(self.tunnel_id, b"", end_stream=True)
                    except Exception:  # noqa: BLE001 - stream already gone: nothing to end
                        pass
                self.quic.close(error_code=H3ErrorCode.H3_NO_ERROR)
                self.poke()
                await self._changed.wait()  # the CONNECTION_CLOSE went out


# --- client -------------------------------------------------------------------------------


class _ClientConnection(_Connection):
    def __init__(self, quic: _Quic, send: Sender) -> None:
        super().__init__(quic, send)
        self.status: bytes | None = None
        # aioquic 1.7.2 internal: H3Connection's control stream (made in its __init__)
        quic.qnet_control_stream = self.h3._local_control_stream_id

    def on_h3(self, event: h3e.H3Event) -> None:
        if isinstance(event, h3e.HeadersReceived) and event.stream_id == self.tunnel_id:
            if self.status is None:
                self.status = dict(event.headers).get(b":status", b"")
            if event.stream_ended:
                self._tunnel_eof = True
        elif isinstance(event, h3e.DataReceived) and event.stream_id == self.tunnel_id:
            if self.status == b"200":
                self._tunnel_data(event.data, event.stream_ended)
            elif event.stream_ended:
                self._tunnel_eof = True


def _connect_headers(
    peer: PeerInfo, ticket: str, carriers: Carriers, *, minimal: bool = False
) -> list[tuple[bytes, bytes]]:
    """The extended CONNECT's header list (``cover.connect_headers``); ``minimal``:
    only what the tunnel needs (the request is then padded to the browser's size,
    spec/fingerprint.md §5)."""
    placed = put_ticket(ticket, peer.path, carriers)
    if placed.body:
        raise ValueError("the form-body carrier does not exist on HTTP/3")
    pairs = cover.connect_headers(peer.authority, placed, cover.CHROME_UA, minimal=minimal)
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


async def _open_client_tunnel(conn: _ClientConnection, peer: PeerInfo, carriers: Carriers) -> None:
    """Send the extended CONNECT with a ticket; return once the server answered 200."""
    try:
        await conn._wait(lambda: conn.h3.received_settings is not None)
    except trio.BrokenResourceError as exc:
        raise TicketError("refused", "connection closed before the server's SETTINGS") from exc
    settings = conn.h3.received_settings or {}
    if settings.get(Setting.ENABLE_CONNECT_PROTOCOL) != 1:
        raise TicketError("refused", "server does not offer extended CONNECT")
    ticket = build_ticket(peer.ticket_public, peer.ticket_key_id, time.time(), random_bytes)
    sid = conn.quic.get_next_available_stream_id()
    conn.tunnel_id = sid
    _send_connect(conn, sid, peer, ticket, carriers)
    conn.poke()
    try:
        await conn._wait(lambda: conn.status is not None or conn._tunnel_eof)
    except trio.BrokenResourceError as exc:
        raise TicketError("refused", "connection closed before an answer") from exc
    if conn.status != b"200":
        raise TicketError("refused", f"status {conn.status!r}")


def _send_connect(
    conn: _ClientConnection, sid: int, peer: PeerInfo, ticket: str, carriers: Carriers
) -> None:
    """The extended CONNECT. With the template's ``first_1rtt``, when it fits: the
    minimal header list and, after its HEADERS frame, a reserved frame that brings
    the 1-RTT packet to a size the browser's first request would have for this
    authority (``first_request_sizes``), drawn among those it fits; else the full
    header list as is."""
    first = conn.quic.qnet_first_1rtt
    if first is not None:
        headers = _connect_headers(peer, ticket, carriers, minimal=True)
        pending = conn.quic.one_rtt_size()
        base = (pending if pending is not None else conn.quic.one_rtt_base()) + (
            STREAM_FRAME_FIXED
            + size_uint_var(sid)
            + qpack_headers_length([(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
        )
        # slack for what QPACK's dynamic table may add
        fits = [
            t
            for t in first_request_sizes(first, peer.authority)
            if base + RESERVED_FRAME_MIN + 16 <= t <= MIN_INITIAL_DATAGRAM
        ]
        if fits:
            conn.h3.send_headers(sid, headers)
            target = fits[int.from_bytes(random_bytes(2), "big") % len(fits)]
            if not conn.quic.pad_stream_packet(sid, target):
                log.debug("CONNECT packet left unshaped (target %d)", target)
            return
    conn.h3.send_headers(sid, _connect_headers(peer, ticket, carriers))


class _Udp:
    """A UDP socket: Trio waits for reads; writes are immediate (a datagram that does
    not fit in the socket buffer is dropped, as the network would drop it, and QUIC
    retransmits). The driver therefore never awaits a send."""

    def __init__(self, family: int) -> None:
        self.raw = socket.socket(family, socket.SOCK_DGRAM)
        self.raw.setblocking(False)
        self.trio = trio.socket.from_stdlib_socket(self.raw)

    def send(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self.raw.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            log.debug("quic send failed: %s", exc)

    async def receive(self) -> tuple[bytes, NetworkAddress]:
        while True:
            try:
                data, addr = await self.trio.recvfrom(DATAGRAM_READ)
            except OSError as exc:  # ICMP port unreachable and the like
                log.debug("quic receive failed: %s", exc)
                continue
            return data, (str(addr[0]), int(addr[1]))

    def close(self) -> None:
        self.trio.close()


async def _resolve(host: str, port: int) -> tuple[int, NetworkAddress]:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, addr = infos[0]
    return int(family), (str(addr[0]), int(addr[1]))


async def _read_datagrams(udp: _Udp, conn: _Connection) -> None:
    while True:
        data, addr = await udp.receive()
        conn.datagram(data, addr)


def _tp_int(layout: QuicLayout, pid: int) -> int | None:
    body = layout.parameter(pid)
    if not body:
        return None
    try:
        return qi.pull_varint(body, 0)[0]
    except qi.QuicInitialError:
        return None


def _client_configuration(server_name: str, layout: QuicLayout | None) -> QuicConfiguration:
    """aioquic's client settings; with a layout, the limits it enforces are the ones
    the template's transport parameters announce (else aioquic would refuse data
    the server may send), our connection id has the template's length, and
    aioquic builds 1,200-byte Initials that ``_Quic._reshape`` grows to the
    template's datagram size (the room takes the CRYPTO fragment headers)."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name,
        verify_mode=ssl.CERT_NONE,  # our engine checks the certificate per ``config.verify``
    )
    if layout is None:
        return config
    config.connection_id_length = layout.scid_length
    config.max_datagram_size = MIN_INITIAL_DATAGRAM
    max_data = _tp_int(layout, 0x04)
    stream_data = _tp_int(layout, 0x05)
    idle_ms = _tp_int(layout, 0x01)
    if max_data:
        config.max_data = max_data
    if stream_data:
        config.max_stream_data = stream_data
    if idle_ms:
        config.idle_timeout = idle_ms / 1000
    return config


@asynccontextmanager
async def dial_quic(
    peer: PeerInfo,
    *,
    static_private: bytes | None = None,
    tls_config: TlsClientConfig | None = None,
    session_config: HtxConfig | None = None,
    carriers: Carriers = DEFAULT_CARRIERS,
    timeout: float = 15.0,
    quic_layout: QuicLayout | None = CHROME_QUIC_LAYOUT,
) -> AsyncIterator[HtxLink]:
    """Open an HTX link to ``peer`` over QUIC (HTTP/3). Same contract as ``dial_tcp``:
    raises ``HtxTimeout``, ``TicketError`` (the node answered as a web site),
    ``TlsError`` (QUIC/TLS failed), ``HandshakeError`` or ``OSError``.

    ``tls_config`` must use a QUIC template (the default is ``CHROME_QUIC_TEMPLATE``).
    ``quic_layout`` shapes the Initial packets and transport parameters like the
    browser's (spec/fingerprint.md §5); ``None`` leaves them to aioquic.
    """
    config = tls_config or TlsClientConfig(
        server_name=peer.server_name, template=CHROME_QUIC_TEMPLATE, alpn=(ALPN,)
    )
    if not config.template.quic:
        raise ValueError("tls_config: a QUIC connection needs a QUIC template")
    quic_config = _client_configuration(peer.server_name, quic_layout)
    family, addr = await _resolve(peer.host, peer.port)
    udp = _Udp(family)
    try:
        await udp.trio.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        conn = _ClientConnection(
            _Quic(tls_config=config, configuration=quic_config, layout=quic_layout), udp.send
        )
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_datagrams, udp, conn)
            nursery.start_soon(conn.drive)
            conn.quic.connect(addr, now=trio.current_time())
            conn.poke()
            link: HtxLink | None = None
            try:
                with trio.fail_after(timeout):
                    link = await _client_handshake(
                        conn, peer, static_private, session_config, carriers
                    )
            except trio.TooSlowError:
                failure = HtxTimeout("HTX handshake over QUIC timed out")
            except (TicketError, TlsError, HandshakeError, OSError) as exc:
                failure = exc
            if link is None:
                await conn.aclose()
                nursery.cancel_scope.cancel()
            else:
                nursery.start_soon(link.run)
                try:
                    yield link
                finally:
                    await link.aclose()
                    nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        udp.close()


async def _client_handshake(
    conn: _ClientConnection,
    peer: PeerInfo,
    static_private: bytes | None,
    session_config: HtxConfig | None,
    carriers: Carriers,
) -> HtxLink:
    try:
        await conn._wait(lambda: conn.handshake_done)
    except trio.BrokenResourceError as exc:
        raise TlsError("quic", "the QUIC handshake failed") from exc
    try:
        exporter = conn.quic.exporter()
    except TlsStateError as exc:
        raise TlsError("quic", "no exporter after the QUIC handshake") from exc
    await _open_client_tunnel(conn, peer, carriers)
    try:
        return await run_inner_client(conn, peer, exporter, static_private, session_config)
    except trio.BrokenResourceError as exc:
        raise HandshakeError("eof", "connection closed during the inner handshake") from exc


# --- server -------------------------------------------------------------------------------


class _ServerConnection(_Connection):
    """A server connection: an HTTP/3 cover site until a request carries a valid ticket."""

    def __init__(
        self,
        quic: _Quic,
        send: Sender,
        server: _QuicServer,
        peer_ip: str,
    ) -> None:
        super().__init__(quic, send)
        self.server = server
        self.peer_ip = peer_ip
        self.cids: set[bytes] = set()
        # request stream -> (method, target, headers) until the request ends
        self._requests: dict[int, tuple[str, str, cover.Headers]] = {}
        self._nursery: trio.Nursery | None = None

    def on_quic(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.ConnectionIdIssued):
            self.cids.add(event.connection_id)
            self.server.routes[event.connection_id] = self
        elif isinstance(event, qe.ConnectionIdRetired):
            self.cids.discard(event.connection_id)
            if self.server.routes.get(event.connection_id) is self:
                del self.server.routes[event.connection_id]

    def on_h3(self, event: h3e.H3Event) -> None:
        if isinstance(event, h3e.HeadersReceived):
            self._on_headers(event)
        elif isinstance(event, h3e.DataReceived):
            sid = event.stream_id
            if sid == self.tunnel_id:
                self._tunnel_data(event.data, event.stream_ended)
            elif event.stream_ended and sid in self._requests:
                self._answer(sid, *self._requests.pop(sid))
            # request bodies of the cover site are read and dropped

    def _on_headers(self, event: h3e.HeadersReceived) -> None:
        sid = event.stream_id
        if sid == self.tunnel_id or sid in self._requests:
            return  # trailers
        pseudo: dict[str, str] = {}
        headers: list[tuple[str, str]] = []
        for k, v in event.headers:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            if name.startswith(":"):
                pseudo[name] = value
            else:
                headers.append((name, value))
        method, target = pseudo.get(":method", ""), pseudo.get(":path", "")
        request = (method, target, tuple(headers))
        now = time.time()
        if method == "CONNECT" and pseudo.get(":protocol", "").lower() == "websocket":
            if self.tunnel_id is None and not event.stream_ended:
                ticket = extract_ticket(headers, target, b"", self.server.carriers)
                verdict = self.server.verifier.check(ticket, self.peer_ip, now)
                if verdict.accepted:
                    self._accept(sid, now)
                    return
                log.debug("tunnel request refused: %s", verdict.reason)
            self._answer(sid, *request)
            return
        if event.stream_ended:
            self._answer(sid, *request)
        else:
            self._requests[sid] = request

    def _accept(self, sid: int, now: float) -> None:
        site = self.server.config.site
        self.h3.send_headers(
            sid,
            [
                (b":status", b"200"),
                (b"server", site.server.encode("latin-1")),
                (b"date", cover.http_date(now).encode("latin-1")),
            ],
        )
        self.tunnel_id = sid
        assert self._nursery is not None
        self._nursery.start_soon(self._run_tunnel)

    def _answer(self, sid: int, method: str, target: str, headers: cover.Headers) -> None:
        """The cover site's answer, exactly as the h2 server gives it."""
        site, now = self.server.config.site, time.time()
        if not target.startswith("/") and method != "CONNECT":
            resp = site.error(400, now)
        else:
            resp = site.respond(method, target, headers, now)
        fields = [(b":status", str(resp.status).encode())] + [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers
        ]
        try:
            self.h3.send_headers(sid, fields, end_stream=not resp.body)
            if resp.body:
                self.h3.send_data(sid, resp.body, end_stream=True)
        except Exception as exc:  # noqa: BLE001 - the peer reset the stream meanwhile
            log.debug("cover answer on stream %d dropped: %r", sid, exc)

    async def _run_tunnel(self) -> None:
        config = self.server.config
        try:
            with trio.fail_after(config.handshake_timeout):
                link = await run_inner_server(self, config, self.quic.exporter())
        except (trio.TooSlowError, HandshakeError, TlsStateError, trio.BrokenResourceError) as exc:
            log.debug("htx connection over quic ended before a link: %r", exc)
            if config.on_handshake_failure is not None:
                config.on_handshake_failure(type(exc).__name__)
            await self.aclose()
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                try:
                    await self.server.handler(link)
                finally:
                    await link.aclose()
        except Exception:  # noqa: BLE001 - a failing handler ends its own connection only
            log.exception("htx link handler failed")
        finally:
            await self.aclose()

    async def run(self) -> None:
        """The connection's life: drive QUIC; drop it if the handshake stalls."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watchdog)
                await self.drive()
                nursery.cancel_scope.cancel()
        finally:
            self.server.forget(self)

    async def _watchdog(self) -> None:
        await trio.sleep(self.server.config.handshake_timeout)
        if not self.handshake_done:
            log.debug("quic handshake stalled; dropping the connection")
            self.terminated = True
            self.poke()


class _QuicServer:
    """The UDP dispatcher: routes datagrams by destination connection id."""

    def __init__(
        self,
        handler: LinkHandler,
        config: ServerConfig,
        udp: _Udp,
        nursery: trio.Nursery,
    ) -> None:
        self.handler = handler
        self.config = config
        self.carriers = DEFAULT_CARRIERS
        self.verifier = TicketVerifier(config.ticket_keys, config.ticket_config)
        self.send = udp.send
        self.nursery = nursery
        self.routes: dict[bytes, _ServerConnection] = {}
        self.connections: set[_ServerConnection] = set()
        self.dropped = 0
        self.quic_config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN],
            # aioquic wants these; our TLS engine takes them from ``tls_config``.
            certificate=config.certificate_chain[0],
            private_key=config.certificate_key,
        )
        self.tls_config = TlsServerConfig(
            certificate_chain=config.certificate_chain,  # type: ignore[arg-type]
            private_key=config.certificate_key,
            alpn=(ALPN,),
        )

    def forget(self, conn: _ServerConnection) -> None:
        self.connections.discard(conn)
        for cid in conn.cids:
            if self.routes.get(cid) is conn:
                del self.routes[cid]

    def datagram(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.quic_config.connection_id_length
            )
        except ValueError:
            self.dropped += 1
            return
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.quic_config.supported_versions
        ):
            self.send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.quic_config.supported_versions,
                ),
                addr,
            )
            return
        conn = self.routes.get(header.destination_cid)
        if conn is None:
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(data) < MIN_INITIAL_DATAGRAM
                or len(self.connections) >= MAX_SERVER_CONNECTIONS
            ):
                self.dropped += 1
                return
            quic = _Quic(
                tls_config=self.tls_config,
                configuration=self.quic_config,
                original_destination_connection_id=header.destination_cid,
            )
            conn = _ServerConnection(quic, self.send, self, str(addr[0]))
            conn.cids = {header.destination_cid, quic.host_cid}
            for cid in conn.cids:
                self.routes[cid] = conn
            self.connections.add(conn)
            self.nursery.start_soon(conn.run)
        try:
            conn.datagram(data, addr)
        except Exception:  # noqa: BLE001 - one connection's failure must not stop the rest
            log.exception("quic connection failed on a datagram; dropping it")
            conn.terminated = True
            conn.poke()


async def serve_quic(
    handler: LinkHandler,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[trio.socket.SocketType] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTX over QUIC on UDP ``host:port`` until cancelled.

    ``task_status.started`` gets the bound UDP socket. Each connection is an
    HTTP/3 web server (the cover site) until an extended CONNECT carries a valid
    ticket; then the inner handshake runs on that request stream and
    ``handler(link)`` is awaited. A failure on one connection is logged and ends
    only that connection; undecodable datagrams are counted and dropped.
    """
    family, bind_addr = await _resolve(host, port)
    udp = _Udp(family)
    try:
        await udp.trio.bind(bind_addr)
        async with trio.open_nursery() as nursery:
            server = _QuicServer(handler, config, udp, nursery)
            task_status.started(udp.trio)
            while True:
                data, addr = await udp.receive()
                try:
                    server.datagram(data, addr)
                except Exception:  # noqa: BLE001 - one datagram must not stop the server
                    log.exception("quic datagram from a new peer failed; dropped")
    finally:
        udp.close()
