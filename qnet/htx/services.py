"""Stream services: the first byte of every HTX stream says what the stream carries.

The side that opens a stream writes the service byte before anything else; the
accepting side reads it and hands the stream to that service, or closes the
stream for a service it does not offer (spec/htx.md §6).
"""

from __future__ import annotations

import enum

import trio

from qnet.htx.transport import HtxLink, HtxStream

#: How long an accepting side waits for the service byte of a new stream.
SERVICE_TIMEOUT = 10.0


class Service(enum.IntEnum):
    CELLS = 0x01  # link units (spec/cells.md), one such stream per link
    DIRECTORY = 0x02  # one directory request and its answer (spec/directory.md §9)


async def open_service_stream(link: HtxLink, service: Service) -> HtxStream:
    """Open a stream on ``link`` for ``service`` (the service byte is already sent)."""
    stream = await link.open_stream()
    await stream.send_all(bytes([service]))
    return stream


async def read_service(stream: HtxStream, timeout: float = SERVICE_TIMEOUT) -> Service | None:
    """The service a peer-opened stream asks for; ``None`` if unknown, empty or too slow."""
    with trio.move_on_after(timeout):
        first = await stream.receive_some(1)
        if len(first) == 1:
            try:
                return Service(first[0])
            except ValueError:
                return None
    return None
