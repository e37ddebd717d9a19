"""The SOCKS proxy of a real test network: latency of small fetches, and throughput.

Usage::

    .venv/bin/python bench/proxy.py [--json] [--quick] [--requests N] [--fresh N]
                                    [--mib N] [--mib-each N] [--rounds R]

The script starts its own ``qnet testnet`` (3 authorities, 3 relays, 2 exits, the web
server, the SOCKS proxy; real processes, a temporary directory, free ports away from
the defaults) and always stops it at the end. The client is this process: a small
SOCKS5 client on Trio sockets (RFC 1928 CONNECT by hostname, RFC 1929
username/password), with TCP_NODELAY set as curl does. Every figure has a baseline
taken in the same run: the same fetch straight to the web server over loopback TCP.

* **1 KiB on a warm circuit**: a new SOCKS connection per request, always with the
  same username (so the same isolation key and circuit, built before timing);
  ``GET /bytes/1024`` with ``Connection: close``. Time to first byte (TTFB) runs
  from the TCP connect to the proxy to the first byte of the HTTP answer, total
  time to its last byte; the baseline connects straight to the web server.
* **1 KiB on a fresh circuit**: the same with a new username per request, so the
  proxy builds a new circuit for each (stream isolation by SOCKS credentials).
* **Back to back**: one SOCKS connection, HTTP keep-alive, requests one after
  another on the same stream (and circuit); per request TTFB and total, against
  the same on one direct keep-alive connection.
* **Throughput**: ``/bytes/N`` through the proxy on one stream (SHA-256 checked),
  and ten at once, on ten circuits (ten usernames) and on one circuit (one
  username); against one and ten direct fetches.

Tor's figures from issue 6 are printed next to ours as external references, not
measured here; the targets are at most half of each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
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
from _testnet import (  # noqa: E402
    MIB,
    TOR_NOTE,
    TOR_REFERENCE,
    Fetch,
    HttpReader,
    Testnet,
    TestnetRunner,
    check,
    direct_stream,
    div,
    expected_digest,
    phase,
    rnd,
    say,
    stop_on_sigterm,
    summary_ms,
)
from harness import cpu_seconds, loadavg, machine_info  # noqa: E402

from qnet.testnet.plan import HOST  # noqa: E402

TARGETS_MS = {
    "ttfb_warm_ms_max": TOR_REFERENCE["ttfb_1k_warm_ms"] / 2,
    "ttfb_fresh_ms_max": TOR_REFERENCE["ttfb_1k_fresh_ms"] / 2,
    "ttfb_back_to_back_ms_max": TOR_REFERENCE["ttfb_1k_back_to_back_ms"] / 2,
}
SMALL = 1024


@dataclass(frozen=True)
class Config:
    requests: int
    fresh: int
    mib: int
    mib_each: int
    rounds: int
    quick: bool


# --- a small SOCKS5 client -------------------------------------------------------------------


class SocksError(Exception):
    pass


async def _exactly(stream: trio.SocketStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.receive_some(n - len(out))
        if not data:
            raise SocksError("the proxy closed the connection")
        out += data
    return bytes(out)


async def socks_connect(
    proxy_port: int, host: str, port: int, username: str | None = None
) -> trio.SocketStream:
    """CONNECT to ``host:port`` (by name, resolved at the exit) through the proxy."""
    stream = await trio.open_tcp_stream(HOST, proxy_port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    try:
        method = b"\x02" if username is not None else b"\x00"
        await stream.send_all(b"\x05\x01" + method)
        if await _exactly(stream, 2) != b"\x05" + method:
            raise SocksError("the proxy refused the authentication method")
        if username is not None:
            user, password = username.encode(), b"x"
            await stream.send_all(
                b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
            )
            if (await _exactly(stream, 2))[1] != 0:
                raise SocksError("the proxy refused the username")
        name = host.encode()
        request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
        await stream.send_all(request)
        head = await _exactly(stream, 4)
        if head[1] != 0:
            raise SocksError(f"the proxy answered CONNECT with reply code {head[1]}")
        skip = {1: 4, 4: 16}.get(head[3])
        if skip is None:
            skip = (await _exactly(stream, 1))[0]
        await _exactly(stream, skip + 2)
    except BaseException:
        await stream.aclose()
        raise
    return stream


# --- the measurements ------------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, net: Testnet) -> None:
        self.cfg = cfg
        self.net = net
        self.serial = 0

    def fresh_user(self) -> str:
        self.serial += 1
        return f"bench-{os.getpid()}-{self.serial}"

    async def open_proxy(self, user: str) -> trio.SocketStream:
        return await socks_connect(self.net.socks_port, HOST, self.net.web_port, user)

    async def fetch_proxy(self, user: str, n: int) -> Fetch:
        start = time.perf_counter()
        stream = await self.open_proxy(user)
        async with stream:
            fetch = await HttpReader(stream).get(f"/bytes/{n}", start=start)
        check(fetch, n)
        return fetch

    async def fetch_direct(self, n: int) -> Fetch:
        start = time.perf_counter()
        stream = await direct_stream(self.net.web_port)
        async with stream:
            fetch = await HttpReader(stream).get(f"/bytes/{n}", start=start)
        check(fetch, n)
        return fetch

    async def alternate(
        self, count: int, proxy: Callable[[], Awaitable[Fetch]]
    ) -> tuple[list[Fetch], list[Fetch]]:
        """``count`` proxy fetches and as many direct 1 KiB fetches, interleaved."""
        through: list[Fetch] = []
        direct: list[Fetch] = []
        for i in range(count):
            if i % 2:
                through.append(await proxy())
                direct.append(await self.fetch_direct(SMALL))
            else:
                direct.append(await self.fetch_direct(SMALL))
                through.append(await proxy())
        return through, direct

    async def warm(self) -> dict[str, Any]:
        user = self.fresh_user()
        await self.fetch_proxy(user, SMALL)  # builds the circuit (untimed)
        await self.fetch_proxy(user, SMALL)
        through, direct = await self.alternate(
            self.cfg.requests, lambda: self.fetch_proxy(user, SMALL)
        )
        return latency(through, direct, TOR_REFERENCE["ttfb_1k_warm_ms"])

    async def fresh(self) -> dict[str, Any]:
        through, direct = await self.alternate(
            self.cfg.fresh, lambda: self.fetch_proxy(self.fresh_user(), SMALL)
        )
        return latency(through, direct, TOR_REFERENCE["ttfb_1k_fresh_ms"])

    async def back_to_back(self) -> dict[str, Any]:
        user = self.fresh_user()
        await self.fetch_proxy(user, SMALL)  # the circuit exists before timing

        async def series(stream: trio.SocketStream) -> list[Fetch]:
            reader = HttpReader(stream)
            out: list[Fetch] = []
            async with stream:
                await reader.get(f"/bytes/{SMALL}", keep_alive=True)  # first one not counted
                for _ in range(self.cfg.requests):
                    fetch = await reader.get(f"/bytes/{SMALL}", keep_alive=True)
                    check(fetch, SMALL)
                    out.append(fetch)
            return out

        direct = await series(await direct_stream(self.net.web_port))
        through = await series(await self.open_proxy(user))
        return latency(through, direct, TOR_REFERENCE["ttfb_1k_back_to_back_ms"])

    async def one_stream(self) -> dict[str, Any]:
        n = self.cfg.mib * MIB
        expected_digest(n)
        user = self.fresh_user()
        await self.fetch_proxy(user, SMALL)
        await self.fetch_proxy(user, min(n, 4 * MIB))  # warm-up, checked
        proxy_pid = self.net.pid("proxy")
        through: list[float] = []
        direct: list[float] = []
        proxy_cpu: list[float] = []
        for r in range(self.cfg.rounds):
            for kind in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
                if kind == "direct":
                    direct.append(n / (await self.fetch_direct(n)).total / 1e6)
                    continue
                c0 = cpu_seconds(proxy_pid)
                through.append(n / (await self.fetch_proxy(user, n)).total / 1e6)
                c1 = cpu_seconds(proxy_pid)
                if c0 is not None and c1 is not None:
                    proxy_cpu.append((c1 - c0) / (n / MIB))
            say(f"  one stream round {r + 1}/{self.cfg.rounds} done")
        med_p, med_d = statistics.median(through), statistics.median(direct)
        return {
            "mib": self.cfg.mib,
            "proxy_MBps": rnd(med_p, 2),
            "proxy_MBps_samples": [rnd(x, 2) for x in through],
            "direct_tcp_MBps": rnd(med_d, 2),
            "direct_tcp_MBps_samples": [rnd(x, 2) for x in direct],
            "ratio_proxy/direct_tcp": rnd(med_p / med_d, 4),
            "ratio_proxy/tor": rnd(med_p / TOR_REFERENCE["one_stream_MBps"], 3),
            "proxy_process_cpu_s_per_MiB": (
                rnd(statistics.median(proxy_cpu), 4) if proxy_cpu else None
            ),
        }

    async def ten_streams(self, *, circuits: int) -> dict[str, Any]:
        """Ten fetches at once through the proxy on ``circuits`` (1 or 10) circuits."""
        n = self.cfg.mib_each * MIB
        expected_digest(n)
        users = [self.fresh_user() for _ in range(circuits)]
        for user in users:
            await self.fetch_proxy(user, SMALL)  # build the circuits first

        async def together(one: Callable[[int], Awaitable[object]]) -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            return time.perf_counter() - t0

        async def via_proxy(i: int) -> None:
            await self.fetch_proxy(users[i % circuits], n)

        async def via_tcp(i: int) -> None:
            await self.fetch_direct(n)

        through: list[float] = []
        direct: list[float] = []
        for r in range(max(1, self.cfg.rounds // 2)):
            for kind in ("tcp", "proxy") if r % 2 == 0 else ("proxy", "tcp"):
                if kind == "tcp":
                    direct.append(10 * n / await together(via_tcp) / 1e6)
                else:
                    through.append(10 * n / await together(via_proxy) / 1e6)
        med_p, med_d = statistics.median(through), statistics.median(direct)
        out: dict[str, Any] = {
            "streams": 10,
            "circuits": circuits,
            "mib_each": self.cfg.mib_each,
            "proxy_total_MBps": rnd(med_p, 2),
            "proxy_total_MBps_samples": [rnd(x, 2) for x in through],
            "direct_tcp_total_MBps": rnd(med_d, 2),
            "direct_tcp_total_MBps_samples": [rnd(x, 2) for x in direct],
            "ratio_proxy/direct_tcp": rnd(med_p / med_d, 4),
        }
        if circuits == 10:
            out["ratio_proxy/tor"] = rnd(med_p / TOR_REFERENCE["ten_circuits_total_MBps"], 3)
        return out


def latency(through: list[Fetch], direct: list[Fetch], tor_ms: float) -> dict[str, Any]:
    ttfb = summary_ms([f.ttfb for f in through])
    total = summary_ms([f.total for f in through])
    base_ttfb = summary_ms([f.ttfb for f in direct])
    base_total = summary_ms([f.total for f in direct])
    return {
        "ttfb": ttfb,
        "total": total,
        "direct_ttfb": base_ttfb,
        "direct_total": base_total,
        "ratio_ttfb/direct": rnd(div(ttfb["median_ms"], base_ttfb["median_ms"]), 2),
        "tor_ttfb_ms": tor_ms,
        "ratio_ttfb/tor": rnd(div(ttfb["median_ms"], tor_ms), 3),
    }


async def run_all(cfg: Config, net: Testnet) -> dict[str, Any]:
    bench = Bench(cfg, net)
    results: dict[str, Any] = {}
    small = 30.0 + 2.0 * (cfg.requests + cfg.fresh)
    big = 30.0 + 10.0 * cfg.mib * cfg.rounds
    ten = 20.0 if cfg.quick else 30.0 + 20.0 * cfg.mib_each * max(1, cfg.rounds // 2)
    await phase(results, "warm_1k", small, bench.warm)
    await phase(results, "fresh_1k", small, bench.fresh)
    await phase(results, "back_to_back_1k", small, bench.back_to_back)
    await phase(results, "one_stream", big, bench.one_stream)
    await phase(results, "ten_streams_ten_circuits", ten, lambda: bench.ten_streams(circuits=10))
    # Last: when this one stalls (see bench/README.md), the proxy's circuit is left stuck.
    await phase(results, "ten_streams_one_circuit", ten, lambda: bench.ten_streams(circuits=1))
    return results


def verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, target in (
        ("warm_1k", TARGETS_MS["ttfb_warm_ms_max"]),
        ("fresh_1k", TARGETS_MS["ttfb_fresh_ms_max"]),
        ("back_to_back_1k", TARGETS_MS["ttfb_back_to_back_ms_max"]),
    ):
        median = results.get(key, {}).get("ttfb", {}).get("median_ms")
        out[f"{key} ttfb median <= {target:g} ms"] = None if median is None else median <= target
    return out


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    print(f"test network started in {report['testnet_start_seconds']:.1f} s")
    for key, row in r.items():
        if not row.get("available"):
            print(f"{key}: unavailable ({row.get('reason')})")
    print(f"\n{'1 KiB fetch':<26}{'TTFB ms':>10}{'p95':>8}{'total ms':>10}{'direct':>9}{'Tor':>7}")
    for key in ("warm_1k", "fresh_1k", "back_to_back_1k"):
        row = r[key]
        if row.get("available"):
            print(
                f"{key:<26}{row['ttfb']['median_ms']:>10.2f}{row['ttfb']['p95_ms']:>8.2f}"
                f"{row['total']['median_ms']:>10.2f}{row['direct_ttfb']['median_ms']:>9.2f}"
                f"{row['tor_ttfb_ms']:>7}"
            )
    print(f"\n{'throughput':<26}{'proxy MB/s':>12}{'direct':>10}")
    one = r["one_stream"]
    if one.get("available"):
        print(f"{'one stream':<26}{one['proxy_MBps']:>12.1f}{one['direct_tcp_MBps']:>10.1f}")
    for key in ("ten_streams_ten_circuits", "ten_streams_one_circuit"):
        row = r[key]
        if row.get("available"):
            print(f"{key:<26}{row['proxy_total_MBps']:>12.1f}{row['direct_tcp_total_MBps']:>10.1f}")
    print(f"\nTor figures: {TOR_NOTE}.")
    print("targets (at most half of Tor's):")
    for key, met in report["meets_targets"].items():
        print(f"  {key:<42}{'-' if met is None else ('yes' if met else 'NO')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="small sizes: a CI smoke run")
    ap.add_argument("--requests", type=int, help="warm and back-to-back requests (50; quick 5)")
    ap.add_argument("--fresh", type=int, help="fresh-circuit requests (30; quick 3)")
    ap.add_argument("--mib", type=int, help="MiB for the one-stream fetch (32; quick 2)")
    ap.add_argument("--mib-each", type=int, help="MiB per stream of ten (8; quick 1)")
    ap.add_argument("--rounds", type=int, help="throughput rounds, median reported (3; quick 1)")
    ap.add_argument("--base-port", type=int, help="first port of the test network (auto)")
    ap.add_argument("--keep", action="store_true", help="keep the test network's directory")
    args = ap.parse_args(argv)
    q = args.quick
    cfg = Config(
        requests=args.requests or (5 if q else 50),
        fresh=args.fresh or (3 if q else 30),
        mib=args.mib or (2 if q else 32),
        mib_each=args.mib_each or (1 if q else 8),
        rounds=args.rounds or (1 if q else 3),
        quick=q,
    )
    stop_on_sigterm()
    machine = machine_info()
    t0 = time.perf_counter()
    with TestnetRunner(base_port=args.base_port, keep=args.keep) as net:
        results = trio.run(run_all, cfg, net)
        start_seconds = net.start_seconds
    machine["loadavg_end"] = loadavg()
    report: dict[str, Any] = {
        "benchmark": "proxy",
        "config": cfg.__dict__,
        "machine": machine,
        "testnet": {"authorities": 3, "relays": 3, "exits": 2},
        "testnet_start_seconds": round(start_seconds, 2),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "results": results,
        "targets": TARGETS_MS,
        "meets_targets": verdicts(results),
        "tor_reference": {"note": TOR_NOTE, **TOR_REFERENCE},
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
