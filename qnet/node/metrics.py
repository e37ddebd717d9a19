"""Node metrics, and an optional Prometheus endpoint for them.

    metrics = NodeMetrics()                          # one registry per node
    metrics.cells_forwarded.inc(); metrics.drop("bad_mac")
    await nursery.start(serve_metrics, metrics, "127.0.0.1", 9420)   # GET /metrics

Each node owns a ``CollectorRegistry`` (never prometheus-client's global one),
so several nodes can run in one process (tests) without their numbers mixing.

The endpoint is a small Trio HTTP/1.1 server over ``h11`` rather than
prometheus-client's own threaded server: it lives in the node's nursery, stops
with it when cancelled, and needs no thread. It answers ``GET``/``HEAD
/metrics`` with the text exposition format and anything else with 404 or 405;
each connection gets ``REQUEST_TIMEOUT`` seconds and one request. The config
only lets it bind loopback unless the operator set ``metrics.allow_remote``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

import h11
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["NodeMetrics", "serve_metrics"]

#: Seconds a metrics client has to send its request and read the answer.
REQUEST_TIMEOUT: Final = 10.0
#: Largest request head accepted.
MAX_REQUEST: Final = 8192


class NodeMetrics:
    """The node's counters and gauges, in the node's own registry.

    Names follow Prometheus conventions: a ``qnet_`` prefix, base units in the
    name, ``_total`` on counters (added by prometheus-client).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._clock = clock
        self._consensus_valid_after: float | None = None
        self.circuits = Gauge("qnet_circuits", "Circuits open through this node.", registry=r)
        self.streams = Gauge("qnet_streams", "Streams open at this node (exit side).", registry=r)
        self.cells_forwarded = Counter(
            "qnet_cells_forwarded", "Cells and packets forwarded to a next hop.", registry=r
        )
        self.bytes_forwarded = Counter(
            "qnet_bytes_forwarded", "Bytes of cells and packets forwarded.", registry=r
        )
        self.drops = Counter(
            "qnet_drops", "Units dropped, by reason code.", labelnames=("reason",), registry=r
        )
        self.htx_sessions = Gauge("qnet_htx_sessions", "HTX links open (both ways).", registry=r)
        self.htx_handshake_failures = Counter(
            "qnet_htx_handshake_failures",
            "HTX connections that ended before a link (TLS, ticket or inner handshake).",
            registry=r,
        )
        self.consensus_age = Gauge(
            "qnet_consensus_age_seconds",
            "Seconds since the valid-after time of the consensus in use (NaN: none yet).",
            registry=r,
        )
        self.consensus_age.set_function(self._consensus_age)

    def _consensus_age(self) -> float:
        if self._consensus_valid_after is None:
            return math.nan
        return self._clock() - self._consensus_valid_after

    def set_consensus(self, valid_after: float) -> None:
        """Record the valid-after time (Unix seconds) of the consensus now in use."""
        self._consensus_valid_after = float(valid_after)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` dropped units under ``reason`` (a ``DecodeError.reason`` code)."""
        self.drops.labels(reason=reason).inc(count)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


async def _answer(metrics: NodeMetrics, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    request: h11.Request | None = None
    while request is None:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MAX_REQUEST))
        elif isinstance(event, h11.Request):
            request = event
        else:
            return  # closed before a request
    status, body, headers = 200, b"", [(b"Content-Type", CONTENT_TYPE_LATEST.encode())]
    path = request.target.split(b"?", 1)[0]
    if request.method not in (b"GET", b"HEAD"):
        status, headers = 405, [(b"Allow", b"GET, HEAD")]
    elif path != b"/metrics":
        status, headers = 404, [(b"Content-Type", b"text/plain")]
        body = b"not found; try /metrics\n"
    else:
        body = metrics.render()
    headers += [(b"Content-Length", str(len(body)).encode()), (b"Connection", b"close")]
    out = conn.send(h11.Response(status_code=status, headers=headers))
    if request.method != b"HEAD":
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
    out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(out)


async def serve_metrics(
    metrics: NodeMetrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``host:port`` until cancelled; ``started`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(metrics, stream)
        except (h11.ProtocolError, trio.BrokenResourceError, OSError):
            pass  # a bad or vanished client loses only its own connection
        finally:
            await stream.aclose()

    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
