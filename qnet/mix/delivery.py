"""What a mixnode does with a packet that ends at it (spec/mixed.md §3).

The mix role unwraps; a ``Deliver`` or ``SurbReply`` result is handed, with the
number of the link it arrived on, to one ``DeliveryHandler`` per node::

    handler.deliver(result, link)     # never blocks, never raises for bad input
    handler.link_closed(link)         # a link ended (the gateway forgets its clients)

``DeliveryRouter`` is that handler: it dispatches ``DELIVER`` by address to the
node's services (the mixed-mode exit, the drop sink, client registration) and
everything addressed to a client id (``DELIVER`` of an anonymous message,
``SURB_REPLY``) to the gateway.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import trio

from qnet.crypto.primitives import keyed_hash
from qnet.mix import sphinx as S

Delivered = S.Deliver | S.SurbReply


def service_address(name: str) -> bytes:
    """The 32-byte ``DELIVER`` address of a well-known service ``name``."""
    return keyed_hash(b"qnet-mixed service".ljust(32, b"\x00"), name.encode(), 32)


#: A mixed-mode exit (``qnet.node.mixed_exit``).
EXIT_ADDRESS = service_address("exit")
#: Cover drop packets: counted and discarded.
DROP_ADDRESS = service_address("drop")
#: A client announcing its id to its gateway (a one-hop packet).
REGISTER_ADDRESS = service_address("register")


class DeliveryHandler(Protocol):
    def deliver(self, result: Delivered, link: int) -> None:
        """Take a packet that ended at this node; ``link`` is where it arrived."""
        ...

    def link_closed(self, link: int) -> None:
        """Link ``link`` ended."""
        ...


class DeliveryRouter:
    """The node's one delivery handler: services by address, the rest to the gateway."""

    def __init__(self) -> None:
        self.services: dict[bytes, DeliveryHandler] = {}
        self.gateway: DeliveryHandler | None = None
        self.counts: Counter[str] = Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the handlers that have tasks (an exit's streams) until cancelled."""
        async with trio.open_nursery() as nursery:
            for handler in {id(h): h for h in self.services.values()}.values():
                runner = getattr(handler, "run", None)
                if callable(runner):
                    await nursery.start(runner)
            task_status.started()

    def deliver(self, result: Delivered, link: int) -> None:
        if isinstance(result, S.Deliver):
            if result.address == DROP_ADDRESS:
                self.counts["drop_cover"] += 1
                return
            handler = self.services.get(result.address)
            if handler is not None:
                self.counts["service"] += 1
                handler.deliver(result, link)
                return
        if self.gateway is None:
            self.counts["no_gateway"] += 1
            return
        self.counts["gateway"] += 1
        self.gateway.deliver(result, link)

    def link_closed(self, link: int) -> None:
        for handler in self.services.values():
            handler.link_closed(link)
        if self.gateway is not None:
            self.gateway.link_closed(link)
