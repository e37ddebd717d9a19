"""Anonymous messages between two mixed-mode clients (spec/mixed.md §6).

An address names where a client can be reached and how to encrypt for it::

    gateway node id (32) ‖ client id (32) ‖ X25519 public key (32)

written as ``qm1`` followed by the 96 bytes in lowercase hex. A message is one
Sphinx packet: sender → its gateway → 3 layers → the recipient's gateway
(``DELIVER`` to the client id), which pushes it to the recipient or holds it
until the recipient registers. Inside, sealed to the recipient's key::

    eph_public (32) ‖ ChaCha20-Poly1305(key, nonce 0, plaintext)   (1,496 bytes)
    plaintext = msg_id (16) ‖ has_surb (1) ‖ length (2) ‖ SURB (624, if any) ‖ text ‖ pad
    key = HKDF(salt="qnet-mixed-v1", ikm=X25519(eph, recipient), info=eph_public ‖ recipient, 32)

The recipient answers once on the SURB: the reply is a ``Kind.MESSAGE`` frame
whose ``conn_id`` is the message id. Python API::

    messenger = Messenger(client, keypair)
    await messenger.send(address, b"hi")          # returns the message id
    msg = await messenger.receive()               # Received(text, msg_id, surb)
    await messenger.reply(msg, b"hello back")
    reply = await messenger.receive_reply()       # (msg_id, text)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

from qnet.constants import MESSAGE_LEN
from qnet.crypto.primitives import X25519Key, aead_open, aead_seal, hkdf_sha256
from qnet.errors import CryptoError, PacketError
from qnet.mix import sphinx as S
from qnet.mix.frames import Frame, Kind, decode_frame, max_data
from qnet.mix.gateway import Pushed

ADDRESS_PREFIX = "qm1"
_SALT = b"qnet-mixed-v1"
_ZERO_NONCE = bytes(12)
_INNER_LEN = MESSAGE_LEN - 32 - 16
_INNER_HEAD = 16 + 1 + 2
#: Text bytes that fit in one message with a reply SURB.
MAX_TEXT = _INNER_LEN - _INNER_HEAD - S.SURB_LEN
#: Text bytes of one reply.
MAX_REPLY = max_data(0)


class AddressError(ValueError):
    """Not a QNet mixed-mode address."""


@dataclass(frozen=True, slots=True)
class MixAddress:
    gateway: bytes
    client_id: bytes
    public_key: bytes

    def __str__(self) -> str:
        return ADDRESS_PREFIX + (self.gateway + self.client_id + self.public_key).hex()

    @classmethod
    def parse(cls, text: str) -> MixAddress:
        if not text.startswith(ADDRESS_PREFIX):
            raise AddressError(f"an address starts with {ADDRESS_PREFIX!r}")
        try:
            raw = bytes.fromhex(text[len(ADDRESS_PREFIX) :])
        except ValueError:
            raise AddressError("an address is hex after its prefix") from None
        if len(raw) != 96:
            raise AddressError("an address holds 96 bytes")
        return cls(raw[:32], raw[32:64], raw[64:])


@dataclass(frozen=True, slots=True)
class Received:
    text: bytes
    msg_id: bytes
    surb: S.Surb | None


def _key(shared: bytes, eph_public: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, _SALT, eph_public + recipient, 32)


def seal_message(
    recipient: bytes, msg_id: bytes, text: bytes, surb: S.Surb | None, eph: X25519Key
) -> bytes:
    """The 1,496-byte sealed message (see the module docstring)."""
    limit = MAX_TEXT if surb is not None else _INNER_LEN - _INNER_HEAD
    if len(text) > limit:
        raise ValueError(f"a message holds at most {limit} bytes")
    inner = msg_id + bytes([surb is not None]) + len(text).to_bytes(2, "big")
    inner += (surb.encode() if surb is not None else b"") + text
    inner += bytes(_INNER_LEN - len(inner))
    key = _key(eph.exchange(recipient), eph.public_bytes, recipient)
    return eph.public_bytes + aead_seal(key, _ZERO_NONCE, inner)


def open_message(sealed: bytes, keypair: X25519Key) -> Received:
    """Raises ``PacketError`` (``bad_message``) for anything that does not open."""
    try:
        eph = sealed[:32]
        key = _key(keypair.exchange(eph), eph, keypair.public_bytes)
        inner = aead_open(key, _ZERO_NONCE, sealed[32:MESSAGE_LEN])
    except (CryptoError, ValueError):
        raise PacketError("bad_message", "message does not open") from None
    has_surb, length = inner[16], int.from_bytes(inner[17:19], "big")
    pos = _INNER_HEAD
    surb = None
    if has_surb:
        surb = S.Surb.decode(inner[pos : pos + S.SURB_LEN])
        pos += S.SURB_LEN
    if has_surb > 1 or pos + length > len(inner):
        raise PacketError("bad_message", "bad message layout")
    return Received(inner[pos : pos + length], inner[:16], surb)


class Messenger:
    """Send and receive anonymous messages on a running ``MixClient``.

    ``keypair`` is the X25519 key of this client's address; the client's secret
    (its id) and gateway must stay the same for the address to stay valid.
    """

    def __init__(self, client: object, keypair: X25519Key) -> None:
        from qnet.client.mixed import MixClient  # noqa: PLC0415 - avoid an import cycle

        assert isinstance(client, MixClient)
        self.client = client
        self.keypair = keypair
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._inbox: deque[Received] = deque()
        self._replies: deque[tuple[bytes, bytes]] = deque()
        self._changed = trio.Event()
        client.on_deliver = self._on_deliver
        client.senders.append(self)

    @property
    def address(self) -> MixAddress:
        return MixAddress(self.client.gateway, self.client.client_id, self.keypair.public_bytes)

    def poll(self, now: float) -> tuple[bytes, bytes] | None:
        return self._outbox.popleft() if self._outbox else None

    async def send(self, to: MixAddress, text: bytes, *, want_reply: bool = True) -> bytes:
        """Queue ``text`` for ``to`` (it leaves on the next payload tick); the message id."""
        client = self.client
        msg_id = client.randbytes(16)
        surb = client.make_surb(self._on_reply) if want_reply else None
        sealed = seal_message(to.public_key, msg_id, text, surb, X25519Key(client.randbytes(32)))
        key = client.topology.mix_key(to.gateway)
        if key is None:
            raise LookupError("the recipient's gateway is not in the consensus")
        self._outbox.append(client.packet_to((to.gateway, key), to.client_id, sealed))
        await trio.lowlevel.checkpoint()
        return msg_id

    async def reply(self, received: Received, text: bytes) -> None:
        """Answer ``received`` on its SURB (once). The packet leaves on a payload tick,
        on a link to the SURB's first hop (a layer-1 mixnode), not to our gateway."""
        if received.surb is None:
            raise ValueError("the message carried no SURB")
        frame = Frame(kind=Kind.MESSAGE, conn_id=received.msg_id, data=text)
        self._outbox.append(S.surb_reply_packet(received.surb, frame.encode()))
        await trio.lowlevel.checkpoint()

    def _on_deliver(self, pushed: Pushed) -> None:
        try:
            got = open_message(pushed.payload[16:], self.keypair)
        except PacketError:
            return
        self._inbox.append(got)
        self._notify()

    def _on_reply(self, message: bytes, now: float) -> None:
        try:
            frame = decode_frame(message)
        except PacketError:
            return
        if frame.kind is Kind.MESSAGE:
            self._replies.append((frame.conn_id, frame.data))
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def receive(self) -> Received:
        while not self._inbox:
            event = self._changed
            await event.wait()
        return self._inbox.popleft()

    async def receive_reply(self) -> tuple[bytes, bytes]:
        while not self._replies:
            event = self._changed
            await event.wait()
        return self._replies.popleft()
