"""What bench/circuits.py and bench/proxy.py share: a private test network, HTTP over
any Trio stream, per-process CPU and memory readings, and Tor's reference figures.

``Testnet`` lays out a ``qnet testnet`` in a temporary directory on a block of free
ports (away from the defaults 7100.. and 1080), starts it with
``qnet.testnet.run.start`` (real processes: authorities, relays, exits, the web
server, the SOCKS proxy) and always stops it again, on error too.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

import trio  # noqa: E402

from qnet.testnet import run as testnet_run  # noqa: E402
from qnet.testnet.plan import HOST, Layout, NetworkPlan, lay_out  # noqa: E402
from qnet.testnet.web import digest_of  # noqa: E402

MIB = 1024 * 1024
READ = 64 * 1024

#: Tor 0.4.9 on a private loopback network of this kind of machine (3 authorities,
#: 5 relays, curl through its SOCKS port), as given in issues 5 and 6. External
#: reference numbers: NOT measured by these scripts.
TOR_REFERENCE: dict[str, float] = {
    "one_stream_MBps": 8.0,
    "one_stream_conflux_MBps": 16.0,
    "build_ms": 15.5,
    "ten_circuits_total_MBps": 76.0,
    "ttfb_1k_warm_ms": 12.6,
    "ttfb_1k_fresh_ms": 33.7,
    "ttfb_1k_back_to_back_ms": 49.0,
}
TOR_NOTE = (
    "Tor 0.4.9 on a private loopback network (issues 5 and 6); external reference, "
    "not measured in this run"
)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that the test network is stopped on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


async def phase(
    results: dict[str, Any], name: str, limit: float, body: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """Run one measurement into ``results[name]``; a failure or a stall past ``limit``
    seconds is reported there (``available: false`` and the reason), not fatal."""
    say(f"{name} ...")
    t0 = time.perf_counter()
    try:
        with trio.fail_after(limit):
            out = await body()
        out["available"] = True
    except trio.TooSlowError:
        out = {"available": False, "reason": f"did not finish within {limit:g} s (stalled)"}
    except Exception as exc:  # noqa: BLE001 - reported, and the other phases go on
        out = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if not out["available"]:
        say(f"warning: {name}: {out['reason']}")
    results[name] = out


# --- the test network ------------------------------------------------------------------------


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def free_block(count: int, first: int = 17100, step: int = 100, tries: int = 40) -> int:
    """The first base port ``first + k * step`` with ``count`` free consecutive ports."""
    for k in range(tries):
        base = first + k * step
        if _ports_free(list(range(base, base + count))):
            return base
    raise RuntimeError(f"no block of {count} free ports from {first}")


@dataclass
class Testnet:
    """A started test network: its plan, pids by name, and its directory."""

    plan: NetworkPlan
    pids: dict[str, int]
    directory: Path
    start_seconds: float

    def pid(self, name: str) -> int:
        return self.pids[name]

    def name_for_port(self, port: int) -> str | None:
        return next((n.name for n in self.plan.nodes if n.port == port), None)

    @property
    def web_port(self) -> int:
        return self.plan.web_port

    @property
    def socks_port(self) -> int:
        return self.plan.socks_port


class TestnetRunner:
    """``with TestnetRunner(relays=3, exits=2) as net:`` starts and always stops a network."""

    def __init__(
        self, *, relays: int = 3, exits: int = 2, base_port: int | None = None, keep: bool = False
    ) -> None:
        self.relays = relays
        self.exits = exits
        self.base_port = base_port
        self.keep = keep
        self.root: Path | None = None
        self.net: Testnet | None = None

    def __enter__(self) -> Testnet:
        self.root = Path(tempfile.mkdtemp(prefix="qnet-bench-"))
        try:
            nodes = 3 + self.relays + self.exits
            base = self.base_port or free_block(nodes + 2)
            layout = Layout(
                directory=self.root / "net",
                relays=self.relays,
                exits=self.exits,
                base_port=base,
                socks_port=base + nodes + 1,  # the web server takes base + nodes
            )
            plan = lay_out(layout)
            say(f"starting a test network in {plan.directory} (ports {base}..{base + nodes + 1})")
            t0 = time.perf_counter()
            procs = testnet_run.start(plan, timeout=120.0, say=say)
            took = time.perf_counter() - t0
            say(f"test network usable after {took:.1f} s")
        except BaseException:
            self._cleanup()
            raise
        self.net = Testnet(plan, {p.name: p.pid for p in procs}, Path(plan.directory), took)
        return self.net

    def __exit__(self, *exc: object) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is None:
            return
        net_dir = self.root / "net"
        if net_dir.exists():
            testnet_run.stop(net_dir)
        if self.keep:
            say(f"kept the test network's directory {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


# --- HTTP/1.1 over any Trio stream -----------------------------------------------------------


@dataclass
class Fetch:
    """One GET: seconds to the first response byte and to the last body byte."""

    ttfb: float
    total: float
    nbytes: int
    sha256: str


class HttpReader:
    """Reads responses to GETs from one stream (keep-alive: several in a row)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _more(self) -> None:
        data = await self.stream.receive_some(READ)
        if not data:
            raise RuntimeError("the connection closed before the response was complete")
        self.buf += data

    async def get(
        self, path: str, *, keep_alive: bool = False, start: float | None = None
    ) -> Fetch:
        """GET ``path``; times count from ``start`` (``perf_counter``), else from the request."""
        conn = "keep-alive" if keep_alive else "close"
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: {conn}\r\n\r\n"
        if start is None:
            start = time.perf_counter()
        await self.stream.send_all(request.encode())
        while not self.buf:
            await self._more()
        first = time.perf_counter()
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._more()
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        if not head.startswith("HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head[:60]!r}")
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("no Content-Length in the answer")
        h = hashlib.sha256()
        got = 0
        while True:
            take = min(length - got, len(self.buf))
            if take:
                h.update(memoryview(self.buf)[:take])
                del self.buf[:take]
                got += take
            if got >= length:
                break
            await self._more()
        return Fetch(first - start, time.perf_counter() - start, length, h.hexdigest())


_DIGESTS: dict[int, str] = {}


def expected_digest(n: int) -> str:
    """The SHA-256 of the web server's ``/bytes/N`` (computed here, cached)."""
    if n not in _DIGESTS:
        _DIGESTS[n] = digest_of(n)
    return _DIGESTS[n]


def check(fetch: Fetch, n: int) -> None:
    if fetch.nbytes != n or fetch.sha256 != expected_digest(n):
        raise RuntimeError(f"fetched {fetch.nbytes} bytes of {n}: the checksum differs")


async def direct_stream(port: int) -> trio.SocketStream:
    """A TCP connection to the web server with TCP_NODELAY (as curl sets it)."""
    stream = await trio.open_tcp_stream(HOST, port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    return stream


# --- figures ---------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    """Median, p95, min and max of ``seconds``, in milliseconds."""
    ms = [s * 1000 for s in seconds]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "n": len(ms),
        "median_ms": r(quantile(ms, 0.5)),
        "p95_ms": r(quantile(ms, 0.95)),
        "min_ms": r(min(ms)) if ms else None,
        "max_ms": r(max(ms)) if ms else None,
    }


def div(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
