"""One-round-trip circuit handshake (spec/circuits.md §2–§4), sans-I/O.

Client::

    packet, pending = build_create(path)          # send CREATE(circ_id, packet) to path[0]
    keys = pending.complete(created_body)         # CircuitError("bad_reply") on mismatch

Hop (after ``sphinx.process`` returned ``CircuitExtend`` or ``CircuitEnd``)::

    hop = accept_hop(result.hop_secret, alpha)    # alpha = the incoming packet's first 32 bytes
    body = hop.exit_reply()                       # the last hop answers at once, or
    body = hop.wrap_reply(created_body_from_next) # an extending hop wraps the next hop's answer
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qnet.constants import ALPHA_LEN, BODY_LEN, MAX_HOPS
from qnet.crypto.primitives import (
    X25519Key,
    chacha20_stream,
    ct_equal,
    hkdf_sha256,
    hmac_sha256,
    random_bytes,
    xor_bytes,
)
from qnet.errors import CircuitError, CryptoError
from qnet.mix import sphinx as S
from qnet.routing.cells import LayerKeys, derive_layer_keys

CIRCUIT_SALT = b"qnet-circuit-v1"
CREATED_LABEL = b"qnet-circuit-v1 created"
PARAMS_VERSION = 1
CC_VEGAS = 1
PARAMS_V1 = bytes([PARAMS_VERSION, CC_VEGAS, 0, 0, 0, 0, 0, 0])
REPLY_SLOT_LEN = 64
REPLY_KEEP = BODY_LEN - REPLY_SLOT_LEN  # 1976

Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class HopRoute:
    """A hop as the client knows it from the consensus: node id and current mix key."""

    node_id: bytes
    onion_public: bytes


def check_params(params: bytes) -> None:
    """Refuse circuit parameters this version does not speak (``CircuitError``)."""
    if len(params) != 8 or params[0] != PARAMS_VERSION or params[1] != CC_VEGAS or any(params[2:]):
        raise CircuitError("bad_params", f"unsupported circuit params {params.hex()}")


def _reply_key(hop_secret: bytes) -> bytes:
    return hkdf_sha256(hop_secret, CIRCUIT_SALT, b"reply", 32)


def _hop_okm(hop_secret: bytes, dh: bytes, alpha: bytes, y_public: bytes) -> bytes:
    return hkdf_sha256(hop_secret + dh, CIRCUIT_SALT, alpha + y_public, 64)


def _auth(confirm_key: bytes, alpha: bytes, y_public: bytes) -> bytes:
    return hmac_sha256(confirm_key, CREATED_LABEL + alpha + y_public)


def _stream_xor(key: bytes, data: bytes) -> bytes:
    return xor_bytes(data, chacha20_stream(key, len(data)))


# --- hop side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HopAccept:
    """What a hop keeps for a circuit it accepted: its layer keys and its reply part."""

    layer_keys: LayerKeys = field(repr=False)
    slot: bytes
    reply_key: bytes = field(repr=False)
    rng: Rng = field(default=random_bytes, repr=False, compare=False)

    def exit_reply(self) -> bytes:
        """The last hop's ``CREATED`` body."""
        return _stream_xor(self.reply_key, self.slot + self.rng(REPLY_KEEP))

    def wrap_reply(self, created_body: bytes) -> bytes:
        """An extending hop's ``CREATED`` body around the next hop's one."""
        if len(created_body) != BODY_LEN:
            raise CircuitError("bad_reply", f"a CREATED body is {BODY_LEN} bytes")
        return _stream_xor(self.reply_key, self.slot + bytes(created_body[:REPLY_KEEP]))


def accept_hop(hop_secret: bytes, alpha: bytes, rng: Rng = random_bytes) -> HopAccept:
    """spec/circuits.md §3 steps 2–3. ``y`` lives only inside this call."""
    if len(alpha) != ALPHA_LEN:
        raise CircuitError("bad_create", "alpha must be 32 bytes")
    y = X25519Key(rng(32))
    try:
        dh = y.exchange(alpha)
    except CryptoError as exc:
        raise CircuitError("bad_create", "small-order alpha") from exc
    okm = _hop_okm(hop_secret, dh, alpha, y.public_bytes)
    slot = y.public_bytes + _auth(okm[32:64], alpha, y.public_bytes)
    return HopAccept(
        layer_keys=derive_layer_keys(okm[:32]),
        slot=slot,
        reply_key=_reply_key(hop_secret),
        rng=rng,
    )


# --- client side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingCreate:
    """The client's secrets for a circuit being built; ``complete`` finishes it."""

    hops: tuple[S.HopKeys, ...] = field(repr=False)

    def complete(self, created_body: bytes) -> list[LayerKeys]:
        """Peel and check the ``CREATED`` body; the layer keys of every hop, in path order.

        Raises ``CircuitError("bad_reply")`` if any hop's part does not verify.
        """
        if len(created_body) != BODY_LEN:
            raise CircuitError("bad_reply", f"a CREATED body is {BODY_LEN} bytes")
        body = bytes(created_body)
        keys: list[LayerKeys] = []
        for i, hop in enumerate(self.hops):
            plain = _stream_xor(_reply_key(hop.hop_secret), body)
            slot, body = plain[:REPLY_SLOT_LEN], plain[REPLY_SLOT_LEN:]
            y_public, auth = slot[:32], slot[32:]
            try:
                dh = X25519Key(hop.ephemeral).exchange(y_public)
            except CryptoError:
                raise CircuitError("bad_reply", f"hop {i}: small-order reply key") from None
            okm = _hop_okm(hop.hop_secret, dh, hop.alpha, y_public)
            if not ct_equal(auth, _auth(okm[32:64], hop.alpha, y_public)):
                raise CircuitError("bad_reply", f"hop {i}: reply does not verify")
            keys.append(derive_layer_keys(okm[:32]))
        return keys


def build_create(path: Sequence[HopRoute], rng: Rng = random_bytes) -> tuple[bytes, PendingCreate]:
    """The ``CREATE`` body (a Sphinx packet) for ``path`` and what the client keeps."""
    if not 1 <= len(path) <= MAX_HOPS:
        raise ValueError(f"a circuit has 1..{MAX_HOPS} hops")
    route = [
        S.RouteHop(
            node_id=hop.node_id,
            public_key=hop.onion_public,
            slot=S.Slot(
                command=S.Command.CIRCUIT_EXTEND if i < len(path) - 1 else S.Command.CIRCUIT_END,
                params=PARAMS_V1,
            ),
        )
        for i, hop in enumerate(path)
    ]
    built = S.build_packet(route, b"", rng)
    return built.packet, PendingCreate(hops=built.hops)
