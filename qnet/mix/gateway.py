"""The gateway: a client's entry node in mixed mode (spec/mixed.md §3).

The client's SPHINX units reach the gateway's mix role like any other (the
gateway is the first hop and relays them into layer 1). What ends at the
gateway for a client comes here:

* ``DELIVER`` to ``REGISTER_ADDRESS`` (a one-hop packet from the client): the
  message starts with the client's 32-byte session secret; the client id is
  ``client_id_of(secret)``, so nobody who only knows the id can claim it. The
  link it came on becomes that client's link.
* ``SURB_REPLY`` with ``recipient`` = a client id, and ``DELIVER`` with
  ``address`` = a client id (an anonymous message): pushed to the client's link
  as one SPHINX unit (``encode_push``), or held (bounded, for ``hold_seconds``)
  until the client registers.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from qnet.constants import BODY_LEN, PAYLOAD_LEN
from qnet.crypto.primitives import keyed_hash
from qnet.errors import MalformedPacket
from qnet.mix import sphinx as S
from qnet.mix.delivery import REGISTER_ADDRESS, Delivered
from qnet.routing.cells import Unit, UnitCommand

CLIENT_ID_LEN = 32
PUSH_DELIVER = 0x01
PUSH_SURB_REPLY = 0x02
_PUSH_HEADER = 1 + S.TAG_LEN


def client_id_of(secret: bytes) -> bytes:
    """A client's 32-byte id from its session secret."""
    if len(secret) != 32:
        raise ValueError("the session secret is 32 bytes")
    return keyed_hash(b"qnet-mixed client id".ljust(32, b"\x00"), secret, CLIENT_ID_LEN)


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a gateway pushed to a client: ``kind`` (``PUSH_DELIVER`` or
    ``PUSH_SURB_REPLY``), the 16-byte ``tag`` (SURB id or message tag) and the
    1,512-byte ``payload`` (for ``DELIVER``: 16 zero bytes and the message)."""

    kind: int
    tag: bytes
    payload: bytes


def encode_push(kind: int, tag: bytes, payload: bytes) -> bytes:
    """The 2,048-byte SPHINX unit a gateway sends down a client's link."""
    if kind not in (PUSH_DELIVER, PUSH_SURB_REPLY) or len(tag) != S.TAG_LEN:
        raise ValueError("bad push kind or tag")
    if len(payload) != PAYLOAD_LEN:
        raise ValueError(f"payload must be {PAYLOAD_LEN} bytes")
    body = bytes([kind]) + tag + payload
    return Unit(
        circ_id=0, command=UnitCommand.SPHINX, body=body + bytes(BODY_LEN - len(body))
    ).encode()


def decode_push(body: bytes) -> Pushed:
    """Parse a pushed unit's body. Raises ``MalformedPacket`` (``bad_push``)."""
    if len(body) != BODY_LEN or body[0] not in (PUSH_DELIVER, PUSH_SURB_REPLY):
        raise MalformedPacket("bad_push", "not a gateway push")
    end = _PUSH_HEADER + PAYLOAD_LEN
    if any(body[end:]):
        raise MalformedPacket("bad_push", "nonzero padding")
    return Pushed(body[0], bytes(body[1:_PUSH_HEADER]), bytes(body[_PUSH_HEADER:end]))


class Gateway:
    """Client-link registry and store-and-forward for one node.

    ``push(link, units)`` queues units on a link without waiting (``LinkManager.queue``)
    and returns ``False`` when the link is gone or full; ``clock()`` is the time.
    """

    def __init__(
        self,
        push: Callable[[int, list[bytes]], bool],
        clock: Callable[[], float],
        *,
        hold_per_client: int = 512,
        hold_total: int = 65536,
        hold_seconds: float = 3600.0,
        max_clients: int = 65536,
    ) -> None:
        self._push = push
        self._clock = clock
        self.clients: dict[bytes, int] = {}  # client id -> link number
        self._held: dict[bytes, deque[tuple[float, bytes]]] = {}
        self._held_total = 0
        self.hold_per_client = hold_per_client
        self.hold_total = hold_total
        self.hold_seconds = hold_seconds
        self.max_clients = max_clients
        self.counts: Counter[str] = Counter()

    def deliver(self, result: Delivered, link: int) -> None:
        if isinstance(result, S.SurbReply):
            self._forward(
                result.recipient, encode_push(PUSH_SURB_REPLY, result.surb_id, result.payload)
            )
            return
        if result.address == REGISTER_ADDRESS:
            self._register(result.message[:32], link)
            return
        payload = bytes(16) + result.message
        self._forward(result.address, encode_push(PUSH_DELIVER, result.tag, payload))

    def link_closed(self, link: int) -> None:
        for cid in [c for c, n in self.clients.items() if n == link]:
            del self.clients[cid]

    def _register(self, secret: bytes, link: int) -> None:
        cid = client_id_of(secret)
        if cid not in self.clients and len(self.clients) >= self.max_clients:
            self.counts["register_full"] += 1
            return
        self.clients[cid] = link
        self.counts["registered"] += 1
        held = self._held.pop(cid, None)
        if held:
            self._held_total -= len(held)
            now = self._clock()
            units = [u for t, u in held if now - t <= self.hold_seconds]
            if units and not self._push(link, units):
                self.counts["push_failed"] += len(units)

    def _forward(self, cid: bytes, unit: bytes) -> None:
        link = self.clients.get(cid)
        if link is not None:
            if self._push(link, [unit]):
                self.counts["pushed"] += 1
                return
            del self.clients[cid]
        self._hold(cid, unit)

    def _hold(self, cid: bytes, unit: bytes) -> None:
        now = self._clock()
        if self._held_total >= self.hold_total:
            self._expire(now)
            if self._held_total >= self.hold_total:
                self.counts["hold_full"] += 1
                return
        queue = self._held.setdefault(cid, deque())
        if len(queue) >= self.hold_per_client:
            queue.popleft()
            self._held_total -= 1
            self.counts["hold_evicted"] += 1
        queue.append((now, unit))
        self._held_total += 1
        self.counts["held"] += 1

    def _expire(self, now: float) -> None:
        for cid in list(self._held):
            queue = self._held[cid]
            while queue and now - queue[0][0] > self.hold_seconds:
                queue.popleft()
                self._held_total -= 1
            if not queue:
                del self._held[cid]

    def held(self, cid: bytes) -> int:
        return len(self._held.get(cid, ()))
