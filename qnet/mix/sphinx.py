"""Sphinx packets, version 1 (spec/sphinx.md): build, unwrap, single-use reply blocks.

Sans-I/O: every function is a pure function of its arguments (the replay set
passed to ``process`` is the one piece of state, and it is the caller's). The
per-hop crypto runs through ``qnet.crypto.accel`` (Cython or pure Python).

Hop side::

    key = MixKey.generate()
    result = process(packet, key, replay)   # Relay | Deliver | SurbReply | CircuitExtend
                                            # | CircuitEnd | Drop

Sender side::

    built = build_packet(route, message)    # route: RouteHop per hop
    send(route[0].node_id, built.packet)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qnet.constants import (
    ALPHA_LEN,
    BETA_LEN,
    GAMMA_LEN,
    HOP_SECRET_LEN,
    MAX_HOPS,
    MESSAGE_LEN,
    PACKET_LEN,
    PAYLOAD_LEN,
    REPLAY_TAG_LEN,
    SLOT_LEN,
    SPHINX_SALT,
    ZERO_PREFIX_LEN,
)
from qnet.crypto import accel
from qnet.crypto.hopcrypto import sphinx_hop_okm
from qnet.crypto.primitives import (
    X25519Key,
    chacha20_stream,
    ct_equal,
    hkdf_sha256,
    keyed_hash,
    random_bytes,
    xor_bytes,
)
from qnet.errors import CryptoError, MalformedPacket, PacketError, TamperedPacket

NODE_ID_LEN = 32
TAG_LEN = 16
PARAMS_LEN = 8
SURB_KEY_LEN = 32
SURB_LEN = NODE_ID_LEN + ALPHA_LEN + GAMMA_LEN + BETA_LEN + SURB_KEY_LEN + 32  # 624

Rng = Callable[[int], bytes]

_ZERO16 = bytes(ZERO_PREFIX_LEN)


class Command(enum.IntEnum):
    """What a hop does with a packet (spec/sphinx.md §6)."""

    RELAY = 0x01
    DELIVER = 0x02
    SURB_REPLY = 0x03
    CIRCUIT_EXTEND = 0x04
    CIRCUIT_END = 0x05

    @property
    def relaying(self) -> bool:
        return self in (Command.RELAY, Command.CIRCUIT_EXTEND)


# Which optional fields each command may set (everything else must be zero).
_USES_DELAY = {Command.RELAY, Command.DELIVER, Command.SURB_REPLY}
_USES_ADDRESS = {Command.RELAY, Command.DELIVER, Command.SURB_REPLY, Command.CIRCUIT_EXTEND}
_USES_TAG = {Command.DELIVER, Command.SURB_REPLY, Command.CIRCUIT_END}
_USES_PARAMS = {Command.CIRCUIT_EXTEND, Command.CIRCUIT_END}


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """One hop's routing instruction, as the sender writes it.

    For relaying commands ``address`` is the next hop's node id; ``build_packet``
    fills it from the route, so callers may leave it zero.
    """

    command: Command
    delay_us: int = 0
    address: bytes = bytes(NODE_ID_LEN)
    tag: bytes = bytes(TAG_LEN)
    params: bytes = bytes(PARAMS_LEN)

    def __post_init__(self) -> None:
        if not isinstance(self.command, Command):
            raise ValueError("command must be a Command")
        if not 0 <= self.delay_us < 2**32:
            raise ValueError("delay_us must fit in 32 bits")
        if self.delay_us and self.command not in _USES_DELAY:
            raise ValueError(f"{self.command.name} carries no delay")
        for name, value, length in (
            ("address", self.address, NODE_ID_LEN),
            ("tag", self.tag, TAG_LEN),
            ("params", self.params, PARAMS_LEN),
        ):
            if not isinstance(value, bytes) or len(value) != length:
                raise ValueError(f"{name} must be {length} bytes")
        if any(self.tag) and self.command not in _USES_TAG:
            raise ValueError(f"{self.command.name} carries no tag")
        if any(self.params) and self.command not in _USES_PARAMS:
            raise ValueError(f"{self.command.name} carries no params")
        if any(self.address) and self.command not in _USES_ADDRESS:
            raise ValueError(f"{self.command.name} carries no address")

    def encode(self, next_alpha: bytes = b"", next_gamma: bytes = b"") -> bytes:
        """The 96 slot bytes. Relaying commands need the next hop's alpha and gamma."""
        if self.command.relaying:
            if len(next_alpha) != ALPHA_LEN or len(next_gamma) != GAMMA_LEN:
                raise ValueError("relaying slot needs next_alpha and next_gamma")
            middle = next_alpha + next_gamma
        else:
            middle = self.tag + bytes(ALPHA_LEN - TAG_LEN + GAMMA_LEN)
        out = (
            bytes([self.command, 0, 0, 0])
            + self.delay_us.to_bytes(4, "big")
            + self.address
            + middle
            + self.params
        )
        assert len(out) == SLOT_LEN
        return out


def parse_slot(raw: bytes) -> tuple[Slot, bytes, bytes]:
    """Parse 96 decrypted slot bytes into ``(slot, next_alpha, next_gamma)``.

    Raises ``MalformedPacket`` (``bad_command`` or ``bad_slot``); nothing else.
    """
    if len(raw) != SLOT_LEN:
        raise MalformedPacket("bad_slot", "slot must be 96 bytes")
    try:
        command = Command(raw[0])
    except ValueError:
        raise MalformedPacket("bad_command", f"unknown command 0x{raw[0]:02x}") from None
    if any(raw[1:4]):
        raise MalformedPacket("bad_slot", "reserved bytes set")
    delay = int.from_bytes(raw[4:8], "big")
    address, mid, params = raw[8:40], raw[40:88], raw[88:96]
    if command.relaying:
        next_alpha, next_gamma, tag = mid[:ALPHA_LEN], mid[ALPHA_LEN:], bytes(TAG_LEN)
    else:
        next_alpha, next_gamma, tag = b"", b"", mid[:TAG_LEN]
        if any(mid[TAG_LEN:]):
            raise MalformedPacket("bad_slot", "unused next-hop bytes set")
    try:
        slot = Slot(command=command, delay_us=delay, address=address, tag=tag, params=params)
    except ValueError as exc:
        raise MalformedPacket("bad_slot", str(exc)) from None
    return slot, next_alpha, next_gamma


# --- keys and hop-side results ----------------------------------------------------


class MixKey:
    """A node's mix key pair (one per epoch).

    Build it once: building costs a scalar multiplication, so per packet only the
    exchange with ``alpha`` is paid.
    """

    __slots__ = ("_x25519",)

    def __init__(self, private: bytes) -> None:
        self._x25519 = X25519Key(private)

    @classmethod
    def generate(cls) -> MixKey:
        return cls(random_bytes(32))

    @property
    def private_bytes(self) -> bytes:
        return self._x25519.private_bytes

    @property
    def public_bytes(self) -> bytes:
        return self._x25519.public_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Relay:
    """Hold for ``delay_us``, then send ``packet`` to ``next_hop``."""

    next_hop: bytes
    delay_us: int
    packet: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """The packet ends here; ``message`` (1,496 bytes) is for ``address``."""

    address: bytes
    tag: bytes
    delay_us: int
    message: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SurbReply:
    """A reply on a SURB: hand ``payload`` (still encrypted) and ``surb_id`` to ``recipient``."""

    recipient: bytes
    surb_id: bytes
    delay_us: int
    payload: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitExtend:
    """Install circuit state from ``hop_secret`` and send ``packet`` on to ``next_hop``."""

    next_hop: bytes
    params: bytes
    hop_secret: bytes
    packet: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitEnd:
    """This node is the last hop of a new circuit; ``message`` is the create data."""

    tag: bytes
    params: bytes
    hop_secret: bytes
    message: bytes
    replay_tag: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    """The packet was refused; ``reason`` is the drop-counter code."""

    reason: str


Unwrapped = Relay | Deliver | SurbReply | CircuitExtend | CircuitEnd

# Hot-path status -> (error class, reason, detail).
_STATUS_ERRORS: dict[int, tuple[type[PacketError], str, str]] = {
    accel.ERR_LENGTH: (MalformedPacket, "bad_length", f"packet must be {PACKET_LEN} bytes"),
    accel.ERR_POINT: (MalformedPacket, "bad_point", "small-order alpha"),
    accel.ERR_MAC: (TamperedPacket, "bad_mac", "header MAC mismatch"),
}


def _decode(status: int, block: bytes) -> Unwrapped | PacketError:
    """One hot-path output as a result, or the error that refuses it."""
    if status != accel.OK:
        cls, reason, detail = _STATUS_ERRORS[status]
        return cls(reason, detail)
    try:
        return _interpret(block)
    except PacketError as exc:
        return exc


def interpret_output(status: int, block: bytes) -> Unwrapped | Drop:
    """One ``accel.sphinx_unwrap_batch`` output as a result, or a ``Drop`` with its reason.

    For callers that run the hot path themselves (the mix role tries several
    keys and checks replays on its own thread); ``block[:16]`` is the replay tag
    whenever ``status`` is ``accel.OK``.
    """
    result = _decode(status, block)
    return Drop(result.reason) if isinstance(result, PacketError) else result


def _interpret(out: bytes) -> Unwrapped:
    """Turn the hot path's output block into a result (spec/sphinx.md §7 step 9)."""
    replay_tag = out[:REPLAY_TAG_LEN]
    hop_secret = out[REPLAY_TAG_LEN : REPLAY_TAG_LEN + HOP_SECRET_LEN]
    base = REPLAY_TAG_LEN + HOP_SECRET_LEN
    slot, next_alpha, next_gamma = parse_slot(out[base : base + SLOT_LEN])
    next_beta = out[base + SLOT_LEN : base + SLOT_LEN + BETA_LEN]
    payload = out[base + SLOT_LEN + BETA_LEN :]
    command = slot.command
    if command.relaying:
        packet = next_alpha + next_gamma + next_beta + payload
        if command is Command.RELAY:
            return Relay(
                next_hop=slot.address, delay_us=slot.delay_us, packet=packet, replay_tag=replay_tag
            )
        return CircuitExtend(
            next_hop=slot.address,
            params=slot.params,
            hop_secret=hop_secret,
            packet=packet,
            replay_tag=replay_tag,
        )
    if command is Command.SURB_REPLY:
        return SurbReply(
            recipient=slot.address,
            surb_id=slot.tag,
            delay_us=slot.delay_us,
            payload=payload,
            replay_tag=replay_tag,
        )
    if not ct_equal(payload[:ZERO_PREFIX_LEN], _ZERO16):
        raise TamperedPacket("bad_payload", "payload integrity prefix is not zero")
    message = payload[ZERO_PREFIX_LEN:]
    if command is Command.DELIVER:
        return Deliver(
            address=slot.address,
            tag=slot.tag,
            delay_us=slot.delay_us,
            message=message,
            replay_tag=replay_tag,
        )
    return CircuitEnd(
        tag=slot.tag,
        params=slot.params,
        hop_secret=hop_secret,
        message=message,
        replay_tag=replay_tag,
    )


def unwrap(packet: bytes, key: MixKey) -> Unwrapped:
    """Peel one layer. Raises ``MalformedPacket`` or ``TamperedPacket``; nothing else.

    Does not look at replays: use ``process`` on a node.
    """
    if not isinstance(packet, (bytes, bytearray, memoryview)):
        raise MalformedPacket("bad_length", "packet must be bytes")
    result = _decode(*accel.sphinx_unwrap(key.private_bytes, key.public_bytes, packet))
    if isinstance(result, PacketError):
        raise result
    return result


def unwrap_batch(packets: Sequence[bytes], key: MixKey) -> list[Unwrapped | PacketError]:
    """``unwrap`` over many packets in one hot-path call; errors are returned, not raised."""
    outputs = accel.sphinx_unwrap_batch(key.private_bytes, key.public_bytes, packets)
    return [_decode(status, block) for status, block in outputs]


class ReplaySet(Protocol):
    """What ``process`` needs from a replay filter (one per mix key)."""

    def __contains__(self, tag: object) -> bool: ...

    def add(self, tag: bytes) -> None: ...


def process(packet: bytes, key: MixKey, replay: ReplaySet) -> Unwrapped | Drop:
    """What a node does with one packet: unwrap, refuse replays, record the tag.

    Never raises for bad packet bytes; returns ``Drop(reason)`` instead. A packet
    whose MAC verifies has its tag recorded even if its slot is then refused, so
    a second copy is always a replay.
    """
    return process_batch([packet], key, replay)[0]


def process_batch(
    packets: Sequence[bytes], key: MixKey, replay: ReplaySet
) -> list[Unwrapped | Drop]:
    """``process`` for a batch, with one hot-path call for the whole batch."""
    out: list[Unwrapped | Drop] = []
    for status, block in accel.sphinx_unwrap_batch(key.private_bytes, key.public_bytes, packets):
        if status == accel.OK:
            # The MAC verified: the tag is recorded before the slot is even parsed.
            tag = block[:REPLAY_TAG_LEN]
            if tag in replay:
                out.append(Drop("replay"))
                continue
            replay.add(tag)
        result = _decode(status, block)
        out.append(Drop(result.reason) if isinstance(result, PacketError) else result)
    return out


# --- building packets (sender side) -----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteHop:
    """One hop of a route: the node's id and current mix public key, and its slot."""

    node_id: bytes
    public_key: bytes
    slot: Slot


@dataclass(frozen=True, slots=True, kw_only=True)
class HopKeys:
    """What the sender derived for one hop (kept for SURBs and circuits; in vectors)."""

    ephemeral: bytes
    alpha: bytes
    shared: bytes
    okm: bytes

    @property
    def lioness_keys(self) -> bytes:
        return self.okm[64:192]

    @property
    def hop_secret(self) -> bytes:
        return self.okm[208:240]

    @property
    def replay_tag(self) -> bytes:
        return self.okm[192:208]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltHeader:
    alpha: bytes
    gamma: bytes
    beta: bytes
    hops: tuple[HopKeys, ...]
    filler: bytes
    padding: bytes

    @property
    def header(self) -> bytes:
        return self.alpha + self.gamma + self.beta


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltPacket:
    """A packet ready for ``first_hop``, with the per-hop keys the sender keeps."""

    first_hop: bytes
    packet: bytes
    header: BuiltHeader

    @property
    def hops(self) -> tuple[HopKeys, ...]:
        return self.header.hops


def _check_route(route: Sequence[RouteHop]) -> None:
    if not 1 <= len(route) <= MAX_HOPS:
        raise ValueError(f"a route has 1..{MAX_HOPS} hops, got {len(route)}")
    for i, hop in enumerate(route):
        last = i == len(route) - 1
        if hop.slot.command.relaying == last:
            want = "a terminal" if last else "a relaying"
            raise ValueError(f"hop {i} needs {want} command, got {hop.slot.command.name}")
        if len(hop.node_id) != NODE_ID_LEN or len(hop.public_key) != 32:
            raise ValueError(f"hop {i}: node_id and public_key must be 32 bytes")


def build_header(route: Sequence[RouteHop], rng: Rng = random_bytes) -> BuiltHeader:
    """Build the header for ``route`` (spec/sphinx.md §8 steps 1–4)."""
    _check_route(route)
    n = len(route)
    hops: list[HopKeys] = []
    for hop in route:
        ephemeral = rng(32)
        key = X25519Key(ephemeral)
        try:
            shared = key.exchange(hop.public_key)
        except CryptoError as exc:
            raise ValueError("hop public key is a small-order point") from exc
        okm = sphinx_hop_okm(shared, key.public_bytes, hop.public_key)
        hops.append(HopKeys(ephemeral=ephemeral, alpha=key.public_bytes, shared=shared, okm=okm))
    streams = [chacha20_stream(h.okm[0:32], BETA_LEN + SLOT_LEN) for h in hops]

    filler = b""
    for i in range(n - 1):
        filler = xor_bytes(filler + bytes(SLOT_LEN), streams[i][BETA_LEN - SLOT_LEN * i :])

    padding = rng(BETA_LEN - SLOT_LEN * n)
    last = route[-1].slot.encode()
    beta = xor_bytes(last + padding, streams[n - 1][: BETA_LEN - SLOT_LEN * (n - 1)]) + filler
    gamma = keyed_hash(hops[n - 1].okm[32:64], beta, GAMMA_LEN)
    for i in range(n - 2, -1, -1):
        slot = _with_address(route[i].slot, route[i + 1].node_id)
        raw = slot.encode(hops[i + 1].alpha, gamma)
        beta = xor_bytes(raw + beta[: BETA_LEN - SLOT_LEN], streams[i][:BETA_LEN])
        gamma = keyed_hash(hops[i].okm[32:64], beta, GAMMA_LEN)
    return BuiltHeader(
        alpha=hops[0].alpha,
        gamma=gamma,
        beta=beta,
        hops=tuple(hops),
        filler=filler,
        padding=padding,
    )


def _with_address(slot: Slot, address: bytes) -> Slot:
    return Slot(
        command=slot.command,
        delay_us=slot.delay_us,
        address=address,
        tag=slot.tag,
        params=slot.params,
    )


def encode_message(message: bytes) -> bytes:
    """The 1,512-byte plaintext payload: 16 zero bytes, the message, zero padding."""
    if len(message) > MESSAGE_LEN:
        raise ValueError(f"message is {len(message)} bytes; at most {MESSAGE_LEN} fit")
    return _ZERO16 + bytes(message) + bytes(MESSAGE_LEN - len(message))


def build_packet(route: Sequence[RouteHop], message: bytes, rng: Rng = random_bytes) -> BuiltPacket:
    """Build a forward packet carrying ``message`` (at most 1,496 bytes) along ``route``."""
    payload = encode_message(message)
    header = build_header(route, rng)
    for hop in reversed(header.hops):
        payload = accel.lioness_encrypt_block(hop.lioness_keys, payload)
    return BuiltPacket(first_hop=route[0].node_id, packet=header.header + payload, header=header)


# --- single-use reply blocks ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Surb:
    """What the creator gives the replier (spec/sphinx.md §9)."""

    first_hop: bytes
    header: bytes
    surb_key: bytes

    def encode(self) -> bytes:
        return self.first_hop + self.header + self.surb_key + bytes(32)

    @classmethod
    def decode(cls, raw: bytes) -> Surb:
        """Raises ``MalformedPacket`` for a wrong length or nonzero reserved bytes."""
        if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != SURB_LEN:
            raise MalformedPacket("bad_surb", f"a SURB is {SURB_LEN} bytes")
        raw = bytes(raw)
        if any(raw[-32:]):
            raise MalformedPacket("bad_surb", "reserved bytes set")
        header_end = NODE_ID_LEN + ALPHA_LEN + GAMMA_LEN + BETA_LEN
        return cls(
            first_hop=raw[:NODE_ID_LEN],
            header=raw[NODE_ID_LEN:header_end],
            surb_key=raw[header_end : header_end + SURB_KEY_LEN],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SurbSecrets:
    """What the creator keeps, under ``surb_id``, to read the reply."""

    surb_id: bytes
    surb_key: bytes
    lioness_keys: tuple[bytes, ...] = field(repr=False)


def _surb_payload_keys(surb_key: bytes) -> bytes:
    return hkdf_sha256(surb_key, SPHINX_SALT, b"surb payload", 128)


def create_surb(
    route: Sequence[RouteHop], rng: Rng = random_bytes
) -> tuple[Surb, SurbSecrets, BuiltHeader]:
    """Make a SURB for ``route``, whose last slot must be ``SURB_REPLY``.

    Draws, in order: the 16-byte SURB id (written into the last slot's tag), the
    header's values (§8), then the 32-byte ``surb_key``.
    """
    if not route or route[-1].slot.command is not Command.SURB_REPLY:
        raise ValueError("a SURB route ends in a SURB_REPLY slot")
    surb_id = rng(TAG_LEN)
    last = route[-1]
    route = [
        *route[:-1],
        RouteHop(
            node_id=last.node_id,
            public_key=last.public_key,
            slot=Slot(
                command=Command.SURB_REPLY,
                delay_us=last.slot.delay_us,
                address=last.slot.address,
                tag=surb_id,
            ),
        ),
    ]
    header = build_header(route, rng)
    surb_key = rng(SURB_KEY_LEN)
    surb = Surb(first_hop=route[0].node_id, header=header.header, surb_key=surb_key)
    secrets = SurbSecrets(
        surb_id=surb_id, surb_key=surb_key, lioness_keys=tuple(h.lioness_keys for h in header.hops)
    )
    return surb, secrets, header


def surb_reply_packet(surb: Surb, reply: bytes) -> tuple[bytes, bytes]:
    """The replier's side: ``(first_hop, packet)`` carrying ``reply`` on ``surb``."""
    payload = accel.lioness_encrypt_block(_surb_payload_keys(surb.surb_key), encode_message(reply))
    return surb.first_hop, surb.header + payload


def open_surb_reply(secrets: SurbSecrets, payload: bytes) -> bytes:
    """The creator's side: the 1,496-byte reply from the payload its gateway handed over.

    Raises ``TamperedPacket`` (``bad_payload``) if the payload was changed on the way.
    """
    if len(payload) != PAYLOAD_LEN:
        raise MalformedPacket("bad_length", f"payload must be {PAYLOAD_LEN} bytes")
    block = bytes(payload)
    for keys in reversed(secrets.lioness_keys):
        block = accel.lioness_encrypt_block(keys, block)
    block = accel.lioness_decrypt_block(_surb_payload_keys(secrets.surb_key), block)
    if not ct_equal(block[:ZERO_PREFIX_LEN], _ZERO16):
        raise TamperedPacket("bad_payload", "reply payload integrity prefix is not zero")
    return block[ZERO_PREFIX_LEN:]


def mix_route(
    hops: Iterable[tuple[bytes, bytes]], final: Slot, delays_us: Sequence[int] | None = None
) -> list[RouteHop]:
    """A mix route: ``RELAY`` slots through ``hops[:-1]`` and ``final`` at the last hop."""
    hop_list = list(hops)
    delays = list(delays_us) if delays_us is not None else [0] * len(hop_list)
    route = [
        RouteHop(node_id=nid, public_key=pub, slot=Slot(command=Command.RELAY, delay_us=d))
        for (nid, pub), d in zip(hop_list[:-1], delays[:-1], strict=True)
    ]
    nid, pub = hop_list[-1]
    route.append(RouteHop(node_id=nid, public_key=pub, slot=final))
    return route
