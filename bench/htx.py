"""HTX link costs on loopback: throughput, handshakes per second, memory per idle session.

Usage::

    .venv/bin/python bench/htx.py [--json] [--quick] [--mib N] [--rounds R]
                                  [--hs-seconds S] [--sessions 1000,10000]

Three measurements, every figure next to a baseline taken in the same run (this is a
shared 2-core machine, so only ratios between rows of one run are worth comparing):

* **Throughput, one stream.** The client (this process) sends N MiB one way over one
  stream to a server in a child process (``bench/_htx_peer.py serve``), in 64 KiB
  writes, then EOF; the server hashes everything it receives and answers with the
  hex SHA-256, which the client checks. Timed from the first write to the answer.
  Rows: ``plain_tcp`` (the same transfer over a bare Trio TCP socket: no TLS, no
  HTX), ``htx_tcp``, ``htx_quic``. Link set-up is outside the timing.
* **Handshakes per second.** Full HTX dials one after another (TCP or QUIC, TLS 1.3,
  the ticket request, the inner Noise XK + ML-KEM handshake, then close) for S
  seconds, against ``plain_connect``: TCP connect + close to a listener that
  accepts and closes.
* **Memory per idle session.** A fresh server and a fresh client process
  (``_htx_peer.py idle-client``); the client opens HTX/TCP links (at most 50
  handshakes at once) and keeps them open with no streams until each target count
  is reached; the RSS growth (``VmRSS``) of each process over its baseline (taken
  after one warm-up link) is divided by the number of open links.

QUIC rows are reported ``unavailable`` with the reason when ``qnet.htx.quic`` cannot
be imported, does not start, or fails its check transfer. The ticket rate limits of
the server are lifted (see ``_htx_peer.BENCH_TICKETS``); everything else is the
default configuration. The timing harness is in ``bench/harness.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

import trio  # noqa: E402
from _htx_peer import peer_info, raise_nofile  # noqa: E402
from harness import (  # noqa: E402
    Row,
    Sample,
    Unavailable,
    cpu_seconds,
    fmt_num,
    loadavg,
    machine_info,
    ratio,
    rss_kib,
    run_rounds,
)

from qnet.htx import transport as T  # noqa: E402

PEER_SCRIPT = BENCH_DIR / "_htx_peer.py"
MIB = 1024 * 1024
CHUNK = 64 * 1024
Dialer = Callable[[T.PeerInfo], AbstractAsyncContextManager[T.HtxLink]]


@dataclass(frozen=True)
class Config:
    mib: int
    rounds: int
    hs_seconds: float
    sessions: tuple[int, ...]
    parallel: int
    cap_seconds: float
    quick: bool


# --- child processes ----------------------------------------------------------------------


class Child:
    """A ``_htx_peer.py`` process spoken to in JSON lines; stderr goes to ours."""

    def __init__(self, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty as exc:
            raise Unavailable(f"peer process gave no answer in {timeout:g} s") from exc
        if line is None:
            raise Unavailable(f"peer process exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def links(self) -> int:
        self.send("links")
        return int(self.read(10)["links"])

    def close(self) -> None:
        try:
            self.send("quit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- throughput and handshakes ------------------------------------------------------------


class Bench:
    """Samplers against one server child; the client side runs in this process."""

    def __init__(self, cfg: Config, server: Child, info: dict[str, Any]) -> None:
        self.cfg = cfg
        self.server = server
        self.info = info
        self.payload = os.urandom(cfg.mib * MIB)
        self.digest = hashlib.sha256(self.payload).hexdigest().encode()
        self.server_cpus: dict[str, list[float]] = {}

    def timed(self, name: str, body: Callable[[], Awaitable[tuple[float, float]]]) -> Sample:
        """Run ``body`` (returns units done and its timed wall seconds) in a fresh Trio
        loop; the server's CPU use over the whole sample is recorded under ``name``."""
        limit = 60.0 + self.cfg.mib * 2.0 + self.cfg.hs_seconds * 4

        async def bounded() -> tuple[float, float, float]:
            with trio.fail_after(limit):
                cpu0 = time.process_time()
                units, wall = await body()
                return units, wall, time.process_time() - cpu0

        srv0, wall0 = cpu_seconds(self.server.pid), time.perf_counter()
        try:
            units, wall, cpu = trio.run(bounded)
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing row is reported, not fatal
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        srv1, wall1 = cpu_seconds(self.server.pid), time.perf_counter()
        if srv0 is not None and srv1 is not None:
            self.server_cpus.setdefault(name, []).append((srv1 - srv0) / (wall1 - wall0))
        return Sample(units / wall, cpu / (wall1 - wall0))

    # one-stream transfers

    def plain_transfer(self, nbytes: int | None = None) -> Sample:
        data = memoryview(self.payload)[: nbytes or len(self.payload)]
        want = hashlib.sha256(data).hexdigest().encode()

        async def body() -> tuple[float, float]:
            sock = await trio.open_tcp_stream("127.0.0.1", int(self.info["plain_port"]))
            async with sock:
                start = time.perf_counter()
                for i in range(0, len(data), CHUNK):
                    await sock.send_all(data[i : i + CHUNK])
                await sock.send_eof()
                reply = await _read_all(sock.receive_some)
                wall = time.perf_counter() - start
            _check_digest(reply, want)
            return len(data) / 1e6, wall

        return self.timed("plain_tcp", body)

    def htx_transfer(self, name: str, dial: Dialer, port: int, nbytes: int | None = None) -> Sample:
        data = memoryview(self.payload)[: nbytes or len(self.payload)]
        want = hashlib.sha256(data).hexdigest().encode()
        peer = peer_info(self.info, port=port)

        async def body() -> tuple[float, float]:
            async with dial(peer) as link:
                stream = await link.open_stream()
                start = time.perf_counter()
                for i in range(0, len(data), CHUNK):
                    await stream.send_all(data[i : i + CHUNK])
                await stream.send_eof()
                reply = await _read_all(stream.receive_some)
                wall = time.perf_counter() - start
            _check_digest(reply, want)
            return len(data) / 1e6, wall

        return self.timed(name, body)

    # handshakes

    def plain_connects(self) -> Sample:
        port = int(self.info["connect_port"])

        async def body() -> tuple[float, float]:
            done, start = 0, time.perf_counter()
            deadline = start + self.cfg.hs_seconds
            while True:
                sock = await trio.open_tcp_stream("127.0.0.1", port)
                await sock.aclose()
                done += 1
                if (now := time.perf_counter()) >= deadline:
                    return done, now - start

        return self.timed("plain_connect", body)

    def htx_dials(self, name: str, dial: Dialer, port: int, seconds: float | None = None) -> Sample:
        peer = peer_info(self.info, port=port)
        span = self.cfg.hs_seconds if seconds is None else seconds

        async def body() -> tuple[float, float]:
            done, start = 0, time.perf_counter()
            deadline = start + span
            while True:
                async with dial(peer):
                    pass
                done += 1
                if (now := time.perf_counter()) >= deadline:
                    return done, now - start

        return self.timed(name, body)


async def _read_all(receive: Callable[[], Awaitable[bytes | bytearray]]) -> bytes:
    out = bytearray()
    while data := await receive():
        out += data
    return bytes(out)


def _check_digest(reply: bytes, want: bytes) -> None:
    if reply != want:
        raise Unavailable(f"SHA-256 mismatch at the receiver: got {reply[:16]!r}...")


def _load_quic(info: dict[str, Any]) -> tuple[Dialer | None, str | None]:
    """``dial_quic`` when both ends have QUIC, else ``(None, why)``."""
    if "quic_port" not in info:
        return None, f"server: {info.get('quic_error', 'serve_quic did not start')}"
    try:
        from qnet.htx.quic import dial_quic
    except Exception as exc:  # noqa: BLE001 - the module is optional in this run
        return None, f"qnet.htx.quic not importable: {type(exc).__name__}: {exc}"
    return dial_quic, None


def build_rows(bench: Bench, progress: bool) -> tuple[list[Row], list[Row]]:
    """Throughput and handshake rows; each backend is checked once before it is timed."""
    info = bench.info
    tcp_port = int(info["htx_port"])
    tcp_dial: Dialer = T.dial_tcp
    quic_dial, quic_reason = _load_quic(info)
    quic_port = int(info.get("quic_port", 0))
    check = min(len(bench.payload), 4 * MIB)

    def checked(
        name: str,
        label: str,
        unit: str,
        probe: Callable[[], object],
        sampler: Callable[[], Sample],
        reason: str | None = None,
    ) -> Row:
        if reason is None:
            try:
                probe()
            except Unavailable as exc:
                reason = f"check failed: {exc}"
        if reason is not None:
            if progress:
                print(f"  {name}: unavailable ({reason})", file=sys.stderr)
            return Row(name, label, unit, reason=reason)
        return Row(name, label, unit, sampler=sampler)

    tp = [
        checked(
            "plain_tcp",
            "plain Trio TCP, no TLS",
            "MB/s",
            lambda: bench.plain_transfer(check),
            bench.plain_transfer,
        ),
        checked(
            "htx_tcp",
            "HTX over TCP (TLS 1.3)",
            "MB/s",
            lambda: bench.htx_transfer("htx_tcp", tcp_dial, tcp_port, check),
            lambda: bench.htx_transfer("htx_tcp", tcp_dial, tcp_port),
        ),
    ]
    hs = [
        checked(
            "plain_connect",
            "plain TCP connect + close",
            "conn/s",
            lambda: None,
            bench.plain_connects,
        ),
        checked(
            "htx_tcp_dial",
            "HTX/TCP full dial + close",
            "dials/s",
            lambda: bench.htx_dials("htx_tcp_dial", tcp_dial, tcp_port, 0.0),
            lambda: bench.htx_dials("htx_tcp_dial", tcp_dial, tcp_port),
        ),
    ]
    if quic_dial is not None:
        qd: Dialer = quic_dial
        tp.append(
            checked(
                "htx_quic",
                "HTX over QUIC",
                "MB/s",
                lambda: bench.htx_transfer("htx_quic", qd, quic_port, check),
                lambda: bench.htx_transfer("htx_quic", qd, quic_port),
            )
        )
        hs.append(
            checked(
                "htx_quic_dial",
                "HTX/QUIC full dial + close",
                "dials/s",
                lambda: bench.htx_dials("htx_quic_dial", qd, quic_port, 0.0),
                lambda: bench.htx_dials("htx_quic_dial", qd, quic_port),
            )
        )
    else:
        tp.append(Row("htx_quic", "HTX over QUIC", "MB/s", reason=quic_reason))
        hs.append(Row("htx_quic_dial", "HTX/QUIC full dial + close", "dials/s", reason=quic_reason))
    return tp, hs


# --- memory per idle session --------------------------------------------------------------


def measure_memory(cfg: Config, progress: bool) -> dict[str, Any]:
    """Open idle HTX/TCP links from a fresh client process to a fresh server process."""
    out: dict[str, Any] = {"available": True, "reason": None, "levels": []}
    server = Child("serve")
    client: Child | None = None
    try:
        info = server.read(60)
        client = Child("idle-client")
        client.send(json.dumps(info))
        client.send(
            json.dumps(
                {
                    "targets": list(cfg.sessions),
                    "parallel": cfg.parallel,
                    "cap_seconds": cfg.cap_seconds,
                }
            )
        )
        client.read(60)  # ready, after its warm-up link
        _wait_links(server, 0)
        base_s, base_c = rss_kib(server.pid), rss_kib(client.pid)
        out["baseline_rss_kib"] = {"server": base_s, "client": base_c}
        client.send("go")
        for target in cfg.sessions:
            msg = client.read(cfg.cap_seconds + 120)
            opened = int(msg["open"])
            server_links = _wait_links(server, opened)
            rs, rc = rss_kib(server.pid), rss_kib(client.pid)
            level = {
                "target": target,
                "open": opened,
                "server_links": server_links,
                "failed": msg["failed"],
                "errors": msg["errors"],
                "seconds_to_open": msg["seconds"],
                "hit_time_cap": msg["capped"],
                "server_rss_kib": rs,
                "client_rss_kib": rc,
                "server_kib_per_session": _per(rs, base_s, opened),
                "client_kib_per_session": _per(rc, base_c, opened),
            }
            out["levels"].append(level)
            if progress:
                print(
                    f"  {opened:,} idle links open in {msg['seconds']:.1f} s "
                    f"(failed {msg['failed']}): server "
                    f"{fmt_num(level['server_kib_per_session'], 1)} KiB/session, client "
                    f"{fmt_num(level['client_kib_per_session'], 1)} KiB/session",
                    file=sys.stderr,
                )
            client.send("go")
    except Unavailable as exc:
        out["available"], out["reason"] = bool(out["levels"]), str(exc)
    finally:
        if client is not None:
            client.close()
        server.close()
    return out


def _wait_links(server: Child, want: int, timeout: float = 30.0) -> int:
    """Poll the server until it holds ``want`` links (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        have = server.links()
        if have == want or time.monotonic() >= deadline:
            return have
        time.sleep(0.2)


def _per(now: int | None, base: int | None, count: int) -> float | None:
    if now is None or base is None or count <= 0:
        return None
    return round((now - base) / count, 2)


# --- report -------------------------------------------------------------------------------


def row_json(row: Row, bench: Bench) -> dict[str, Any]:
    d = row.as_json()
    srv = bench.server_cpus.get(row.name)
    d["server_cpus_busy"] = round(sorted(srv)[len(srv) // 2], 2) if srv and row.samples else None
    return d


def ratios(tp: list[Row], hs: list[Row]) -> dict[str, float | None]:
    t = {r.name: r for r in tp}
    h = {r.name: r for r in hs}
    return {
        "throughput htx_tcp/plain_tcp": ratio(t["htx_tcp"], t["plain_tcp"]),
        "throughput htx_quic/plain_tcp": ratio(t["htx_quic"], t["plain_tcp"]),
        "throughput htx_quic/htx_tcp": ratio(t["htx_quic"], t["htx_tcp"]),
        "handshakes htx_tcp_dial/plain_connect": ratio(h["htx_tcp_dial"], h["plain_connect"]),
        "handshakes htx_quic_dial/plain_connect": ratio(h["htx_quic_dial"], h["plain_connect"]),
    }


def print_table(
    tp: list[Row],
    hs: list[Row],
    bench: Bench,
    mem: dict[str, Any],
    rat: dict[str, float | None],
    cfg: Config,
) -> None:
    print(
        f"HTX on loopback, {cfg.mib} MiB one way per transfer, {cfg.rounds} round(s), median shown"
    )
    print(
        f"{'row':<16}{'what':<30}{'median':>12} {'unit':<8}{'min..max':>22}  {'CPUs cli/srv':>12}"
    )
    for row in tp + hs:
        if not row.available:
            print(f"{row.name:<16}{row.label:<30}{'unavailable':>12}   {row.reason}")
            continue
        digits = 1 if row.unit == "MB/s" else 0
        rng = f"{fmt_num(min(row.rates), digits)}..{fmt_num(max(row.rates), digits)}"
        j = row_json(row, bench)
        cpus = f"{fmt_num(row.cpus, 2)}/{fmt_num(j['server_cpus_busy'], 2)}"
        print(
            f"{row.name:<16}{row.label:<30}{fmt_num(row.median, digits):>12} {row.unit:<8}"
            f"{rng:>22}  {cpus:>12}"
        )
    print()
    for key, value in rat.items():
        print(f"{key:<42}{'-' if value is None else f'{value:.3f}':>8}")
    print()
    if not mem["available"]:
        print(f"memory per idle session: unavailable ({mem['reason']})")
    for lv in mem["levels"]:
        print(
            f"idle HTX/TCP links {lv['open']:>6,} of {lv['target']:,} "
            f"(opened in {lv['seconds_to_open']:.1f} s, {lv['failed']} failed): "
            f"server {fmt_num(lv['server_kib_per_session'], 1)} KiB/session, "
            f"client {fmt_num(lv['client_kib_per_session'], 1)} KiB/session"
        )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[Config, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 MiB, 1 round, 0.5 s of dials, 100 sessions",
    )
    ap.add_argument("--mib", type=int, help="MiB per transfer (default 64)")
    ap.add_argument("--rounds", type=int, help="rounds, the median is reported (default 3)")
    ap.add_argument("--hs-seconds", type=float, help="seconds of dials per sample (default 2)")
    ap.add_argument("--sessions", help="idle-link counts, comma-separated (default 1000,10000)")
    ap.add_argument("--parallel", type=int, default=50, help="handshakes in flight (default 50)")
    ap.add_argument(
        "--cap-seconds",
        type=float,
        default=60.0,
        help="time allowed to reach each session count (default 60)",
    )
    a = ap.parse_args(argv)
    q = a.quick
    sessions = a.sessions or ("100" if q else "1000,10000")
    cfg = Config(
        mib=a.mib or (4 if q else 64),
        rounds=a.rounds or (1 if q else 3),
        hs_seconds=a.hs_seconds or (0.5 if q else 2.0),
        sessions=tuple(sorted(int(x) for x in sessions.split(",") if x.strip())),
        parallel=a.parallel,
        cap_seconds=a.cap_seconds,
        quick=q,
    )
    if cfg.mib < 1 or cfg.rounds < 1 or cfg.hs_seconds <= 0 or not cfg.sessions:
        ap.error("--mib, --rounds, --hs-seconds and --sessions must be positive")
    return cfg, bool(a.json)


def main(argv: list[str] | None = None) -> int:
    cfg, as_json = parse_args(argv)
    progress = True
    raise_nofile()
    machine = machine_info()
    started = time.perf_counter()

    print("throughput and handshakes: starting the server process", file=sys.stderr)
    server = Child("serve")
    try:
        info = server.read(60)
        bench = Bench(cfg, server, info)
        tp, hs = build_rows(bench, progress)
        run_rounds(tp + hs, cfg.rounds, progress, drop_unavailable=True)
    finally:
        server.close()
    print("memory per idle session: fresh server and client processes", file=sys.stderr)
    mem = measure_memory(cfg, progress)
    machine["loadavg_end"] = loadavg()
    rat = ratios(tp, hs)

    if as_json:
        doc = {
            "benchmark": "htx",
            "config": asdict(cfg) | {"chunk_bytes": CHUNK, "check": "sha256 at the receiver"},
            "machine": machine,
            "throughput": {r.name: row_json(r, bench) for r in tp},
            "handshakes": {r.name: row_json(r, bench) for r in hs},
            "memory_per_idle_session": mem,
            "ratios": rat,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(tp, hs, bench, mem, rat, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
