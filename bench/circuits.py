"""Circuits through a real test network: build time, throughput, CPU per hop, RSS per circuit.

Usage::

    .venv/bin/python bench/circuits.py [--json] [--quick] [--builds N] [--mib N]
                                       [--mib-each N] [--rounds R] [--circuits K]

The script starts its own ``qnet testnet`` (3 authorities, 3 relays, 2 exits, the web
server and the SOCKS proxy as separate processes, in a temporary directory on free
ports away from the defaults) and always stops it at the end. The client side is
this process: a ``qnet.client.app.Client`` (its own data directory and guards) that
follows the network's consensus and makes paths, with its ``CircuitManager``.

* **Build time**: ``--builds`` circuits built one after another over fresh paths
  (links to the entries already up; each circuit is destroyed before the next),
  median and p95 of the wall time of ``CircuitManager.build`` and of the table's
  own ``build_seconds`` (set-up packet out to CREATED in). Baseline: one HTTP
  request/answer on an open loopback TCP connection to the web server, i.e. one
  round trip between two Python processes.
* **One stream**: GET ``/bytes/N`` from the web server through a 3-hop circuit
  (SHA-256 checked), timed from the request to the last byte, against the same GET
  straight over loopback TCP, in alternating rounds; the median is reported.
* **CPU per MiB at each hop**: ``/proc/<pid>/stat`` of the entry, middle and exit
  processes (found from the circuit's path: node id → consensus address → port →
  test-network node), the web server and this process, before and after each
  circuit transfer; background CPU (measured while idle) is subtracted.
* **Ten circuits**: ten circuits, one stream each, each fetching ``--mib-each`` MiB at
  once; total bytes over the wall time to the last byte, against ten direct TCP
  fetches at once.
* **RSS per 1,000 circuits**: ``--circuits`` circuits opened through one entry relay
  (paths drawn until the entry matches), then ``VmRSS`` growth of every node on
  those paths over its baseline, per 1,000 circuits through that node.

Tor's figures from issue 5 are printed next to ours as external references, not
measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
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
from harness import cpu_seconds, loadavg, machine_info, rss_kib  # noqa: E402

from qnet.client.app import Client  # noqa: E402
from qnet.client.circuits import Circuit, CircuitManager  # noqa: E402
from qnet.client.circuits import Path as CircuitPath  # noqa: E402
from qnet.dir.descriptor import Transport  # noqa: E402
from qnet.node.config import parse_client_config  # noqa: E402
from qnet.testnet.plan import HOST  # noqa: E402

TARGETS = {
    "one_stream_MBps_min": 32.0,
    "build_ms_max": TOR_REFERENCE["build_ms"] / 2,
    "ten_circuits_total_MBps_min": TOR_REFERENCE["ten_circuits_total_MBps"],
}


@dataclass(frozen=True)
class Config:
    builds: int
    mib: int
    mib_each: int
    rounds: int
    circuits: int
    parallel: int
    idle_seconds: float
    quick: bool


# --- the in-process client -------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, net: Testnet, client: Client) -> None:
        self.cfg = cfg
        self.net = net
        self.client = client
        self.manager: CircuitManager = client.manager
        self.names: dict[bytes, str] = {}
        self.background: dict[str, float] = {}

    def learn_nodes(self) -> None:
        """Node id → test-network node name, from the consensus addresses and the plan."""
        consensus = self.client.consensus
        assert consensus is not None
        for entry in consensus.nodes:
            for addr in entry.descriptor.addresses:
                if addr.transport is Transport.TCP:
                    name = self.net.name_for_port(addr.port)
                    if name is not None:
                        self.names[entry.node_id] = name

    def hop_names(self, path: CircuitPath) -> list[str]:
        return [self.names.get(h.node_id, "?") for h in path.hops]

    def path(self) -> CircuitPath:
        assert self.client.selector is not None
        return self.client.selector.build_path(None, now=time.time()).for_circuit()

    # --- build time ----------------------------------------------------------------------------

    async def build_times(self) -> dict[str, Any]:
        # Warm-up: bring up the link to every entry the client's guards give.
        for _ in range(6):
            circuit = await self.manager.build()
            await circuit.aclose()
        links0 = len(self.manager.links.links)
        walls: list[float] = []
        rtts: list[float] = []
        for _ in range(self.cfg.builds):
            t0 = time.perf_counter()
            circuit = await self.manager.build()
            walls.append(time.perf_counter() - t0)
            rtts.append(circuit.build_seconds)
            await circuit.aclose()
        new_links = len(self.manager.links.links) - links0
        # Baseline: one request/answer on an open TCP connection to the web server.
        base: list[float] = []
        stream = await direct_stream(self.net.web_port)
        async with stream:
            reader = HttpReader(stream)
            for _ in range(self.cfg.builds):
                fetch = await reader.get("/bytes/1", keep_alive=True)
                base.append(fetch.total)
        wall = summary_ms(walls)
        rtt = summary_ms(rtts)
        baseline = summary_ms(base)
        return {
            "build_wall": wall,
            "build_rtt": rtt,
            "baseline_tcp_round_trip": baseline,
            "links_dialed_during_timing": new_links,
            "ratio_median_build_wall/tcp_round_trip": rnd(
                div(wall["median_ms"], baseline["median_ms"]), 2
            ),
            "ratio_median_build_wall/tor": rnd(
                div(wall["median_ms"], TOR_REFERENCE["build_ms"]), 3
            ),
        }

    # --- one stream ----------------------------------------------------------------------------

    async def fetch_circuit(self, circuit: Circuit, n: int) -> Fetch:
        stream = await circuit.open_stream(HOST, self.net.web_port)
        async with stream:
            fetch = await HttpReader(stream).get(f"/bytes/{n}")
        check(fetch, n)
        return fetch

    async def fetch_direct(self, n: int) -> Fetch:
        stream = await direct_stream(self.net.web_port)
        async with stream:
            fetch = await HttpReader(stream).get(f"/bytes/{n}")
        check(fetch, n)
        return fetch

    def cpu_snapshot(self, names: list[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in names:
            out[name] = cpu_seconds(os.getpid() if name == "client" else self.net.pid(name))
        return out

    async def measure_background(self, names: list[str]) -> None:
        """CPU seconds per second each process uses while nothing is transferred."""
        before = self.cpu_snapshot(names)
        t0 = time.perf_counter()
        await trio.sleep(self.cfg.idle_seconds)
        after = self.cpu_snapshot(names)
        wall = time.perf_counter() - t0
        for name in names:
            a, b = before[name], after[name]
            self.background[name] = 0.0 if a is None or b is None else (b - a) / wall

    async def one_stream(self) -> dict[str, Any]:
        n = self.cfg.mib * MIB
        expected_digest(n)
        path = self.path()
        circuit = await self.manager.build(path)
        hops = self.hop_names(path)
        roles = ["entry", "middle", "exit"]
        watched = [*hops, "web", "client"]
        await self.measure_background(watched)
        await self.fetch_circuit(circuit, min(n, 4 * MIB))  # warm-up, checked
        await self.fetch_direct(min(n, 4 * MIB))
        direct: list[float] = []
        through: list[float] = []
        cpu: dict[str, list[float]] = {name: [] for name in watched}
        for r in range(self.cfg.rounds):
            order = ["direct", "circuit"] if r % 2 == 0 else ["circuit", "direct"]
            for kind in order:
                if kind == "direct":
                    fetch = await self.fetch_direct(n)
                    direct.append(n / fetch.total / 1e6)
                    continue
                c0 = self.cpu_snapshot(watched)
                t0 = time.perf_counter()
                fetch = await self.fetch_circuit(circuit, n)
                wall = time.perf_counter() - t0
                c1 = self.cpu_snapshot(watched)
                through.append(n / fetch.total / 1e6)
                for name in watched:
                    a, b = c0[name], c1[name]
                    if a is not None and b is not None:
                        net_cpu = (b - a) - self.background.get(name, 0.0) * wall
                        cpu[name].append(net_cpu / (n / MIB))
            say(f"  one stream round {r + 1}/{self.cfg.rounds} done")
        await circuit.aclose()
        med_c = statistics.median(through)
        med_d = statistics.median(direct)
        per_hop: dict[str, Any] = {}
        for i, name in enumerate([*hops, "web", "client"]):
            role = roles[i] if i < 3 else name
            values = cpu[name]
            per_hop[role] = {
                "node": name,
                "cpu_s_per_MiB": rnd(statistics.median(values), 4) if values else None,
                "background_cpus": rnd(self.background.get(name), 3),
            }
        return {
            "mib": self.cfg.mib,
            "path": hops,
            "circuit_MBps": rnd(med_c, 2),
            "circuit_MBps_samples": [rnd(x, 2) for x in through],
            "direct_tcp_MBps": rnd(med_d, 2),
            "direct_tcp_MBps_samples": [rnd(x, 2) for x in direct],
            "ratio_circuit/direct_tcp": rnd(med_c / med_d, 4),
            "ratio_circuit/tor": rnd(med_c / TOR_REFERENCE["one_stream_MBps"], 3),
            "cpu_per_hop": per_hop,
        }

    # --- ten circuits --------------------------------------------------------------------------

    async def ten_circuits(self, count: int = 10) -> dict[str, Any]:
        n = self.cfg.mib_each * MIB
        expected_digest(n)
        circuits = [await self.manager.build() for _ in range(count)]
        paths = [self.hop_names(c.path) for c in circuits]

        async def together(one: Any) -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, i)
            return time.perf_counter() - t0

        async def via_circuit(i: int) -> None:
            await self.fetch_circuit(circuits[i], n)

        async def via_tcp(i: int) -> None:
            await self.fetch_direct(n)

        through: list[float] = []
        direct: list[float] = []
        for r in range(max(1, self.cfg.rounds // 2)):
            for kind in ["tcp", "circuit"] if r % 2 == 0 else ["circuit", "tcp"]:
                if kind == "tcp":
                    direct.append(count * n / await together(via_tcp) / 1e6)
                else:
                    through.append(count * n / await together(via_circuit) / 1e6)
        for c in circuits:
            await c.aclose()
        med_c, med_d = statistics.median(through), statistics.median(direct)
        return {
            "circuits": count,
            "mib_each": self.cfg.mib_each,
            "distinct_paths": len({tuple(p) for p in paths}),
            "entries": dict(Counter(p[0] for p in paths)),
            "circuit_total_MBps": rnd(med_c, 2),
            "circuit_total_MBps_samples": [rnd(x, 2) for x in through],
            "direct_tcp_total_MBps": rnd(med_d, 2),
            "direct_tcp_total_MBps_samples": [rnd(x, 2) for x in direct],
            "ratio_circuits/direct_tcp": rnd(med_c / med_d, 4),
            "ratio_circuits/tor": rnd(med_c / TOR_REFERENCE["ten_circuits_total_MBps"], 3),
        }

    # --- memory per circuit --------------------------------------------------------------------

    async def memory(self) -> dict[str, Any]:
        # The entry relay: the one most paths start at (the client's primary guards).
        firsts = Counter(self.path().entry_id for _ in range(60))
        entry_id = firsts.most_common(1)[0][0]
        paths: list[CircuitPath] = []
        tries = 0
        while len(paths) < self.cfg.circuits and tries < self.cfg.circuits * 50:
            tries += 1
            p = self.path()
            if p.entry_id == entry_id:
                paths.append(p)
        through: Counter[str] = Counter()
        for p in paths:
            for name in self.hop_names(p):
                through[name] += 1
        nodes = sorted(through)
        await self.manager.build(paths[0])  # the link to the entry is up before the baseline
        await trio.sleep(0.5)
        rss0 = {name: rss_kib(self.net.pid(name)) for name in nodes}
        client0 = rss_kib(os.getpid())
        opened: list[Circuit] = []
        failed: Counter[str] = Counter()
        limit = trio.Semaphore(self.cfg.parallel)
        t0 = time.perf_counter()

        async def one(p: CircuitPath) -> None:
            async with limit:
                try:
                    opened.append(await self.manager.build(p))
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failed[type(exc).__name__ + ":" + str(getattr(exc, "reason", ""))] += 1

        async with trio.open_nursery() as nursery:
            for p in paths[1:]:
                nursery.start_soon(one, p)
        took = time.perf_counter() - t0
        await trio.sleep(1.0)
        rss1 = {name: rss_kib(self.net.pid(name)) for name in nodes}
        client1 = rss_kib(os.getpid())
        open_now = len([c for c in opened if not c.closed]) + 1
        per_node: dict[str, Any] = {}
        for name in nodes:
            a, b = rss0[name], rss1[name]
            count = through[name]
            per_node[name] = {
                "circuits": count,
                "rss_before_kib": a,
                "rss_after_kib": b,
                "kib_per_1000_circuits": (
                    None if a is None or b is None else round((b - a) / count * 1000, 1)
                ),
            }
        entry = self.names.get(entry_id, "?")
        await self.manager.aclose()
        return {
            "entry": entry,
            "circuits_requested": self.cfg.circuits,
            "circuits_open": open_now,
            "build_failures": dict(failed),
            "seconds_to_open": round(took, 2),
            "entry_kib_per_1000_circuits": per_node.get(entry, {}).get("kib_per_1000_circuits"),
            "per_node": per_node,
            "client_kib_per_1000_circuits": (
                None
                if client0 is None or client1 is None
                else round((client1 - client0) / open_now * 1000, 1)
            ),
        }


def client_config(net: Testnet, home: Path) -> Any:
    """A client config like the proxy's, with its own data directory (guards)."""
    home.mkdir(parents=True, exist_ok=True)
    text = f"""[proxy]
host = "{HOST}"
port = 0
data_dir = "data"

[directory]
authorities_file = "{net.directory / "authorities.toml"}"
epoch_seconds = {net.plan.epoch_seconds}
testing = true
"""
    return parse_client_config(text, home)


async def run_all(cfg: Config, net: Testnet, home: Path) -> dict[str, Any]:
    client = Client(client_config(net, home))
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(client.manager.run)
        with trio.fail_after(60):
            await nursery.start(client.follow_consensus)
        bench = Bench(cfg, net, client)
        bench.learn_nodes()
        big = 30.0 + 10.0 * cfg.mib * cfg.rounds
        await phase(results, "build", 30.0 + cfg.builds, bench.build_times)
        # Memory before the transfers: their freed buffers would make RSS fall meanwhile.
        await phase(results, "memory", 60.0 + cfg.circuits / 10, bench.memory)
        await phase(results, "one_stream", big, bench.one_stream)
        ten = 30.0 + 20.0 * cfg.mib_each * max(1, cfg.rounds // 2)
        await phase(results, "ten_circuits", ten, bench.ten_circuits)
        nursery.cancel_scope.cancel()
    return results


def verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    one = results.get("one_stream", {}).get("circuit_MBps")
    build = results.get("build", {}).get("build_wall", {}).get("median_ms")
    ten = results.get("ten_circuits", {}).get("circuit_total_MBps")
    return {
        "one_stream >= 32 MB/s": None if one is None else one >= TARGETS["one_stream_MBps_min"],
        "build median <= 7.75 ms": None if build is None else build <= TARGETS["build_ms_max"],
        "ten circuits >= 76 MB/s": (
            None if ten is None else ten >= TARGETS["ten_circuits_total_MBps_min"]
        ),
    }


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    tor = TOR_REFERENCE
    print(f"test network started in {report['testnet_start_seconds']:.1f} s")
    for key, row in r.items():
        if not row.get("available"):
            print(f"{key}: unavailable ({row.get('reason')})")
    print(f"\n{'measure':<42}{'qnet':>12}{'baseline':>12}{'Tor (ext.)':>12}")
    if r["build"].get("available"):
        w, t = r["build"]["build_wall"], r["build"]["baseline_tcp_round_trip"]
        print(
            f"{'build, median ms':<42}{w['median_ms']:>12.2f}{t['median_ms']:>12.2f}"
            f"{tor['build_ms']:>12}"
        )
        print(f"{'build, p95 ms':<42}{w['p95_ms']:>12.2f}{t['p95_ms']:>12.2f}{'-':>12}")
        rtt = r["build"]["build_rtt"]
        print(f"{'build, round trip only (median ms)':<42}{rtt['median_ms']:>12.2f}")
    one = r["one_stream"]
    if one.get("available"):
        print(
            f"{'one stream MB/s (' + str(one['mib']) + ' MiB)':<42}{one['circuit_MBps']:>12.1f}"
            f"{one['direct_tcp_MBps']:>12.1f}{tor['one_stream_MBps']:>12}"
        )
    ten = r["ten_circuits"]
    if ten.get("available"):
        print(
            f"{'10 circuits total MB/s':<42}{ten['circuit_total_MBps']:>12.1f}"
            f"{ten['direct_tcp_total_MBps']:>12.1f}{tor['ten_circuits_total_MBps']:>12}"
        )
    if one.get("available"):
        print("\nCPU seconds per MiB (one stream, background subtracted):")
        for role, row in one["cpu_per_hop"].items():
            print(f"  {role:<8}{row['node']:<8}{row['cpu_s_per_MiB']!s:>10}")
    mem = r["memory"]
    if mem.get("available"):
        print(f"\nRSS per 1,000 circuits ({mem['circuits_open']} open through {mem['entry']}):")
        for name, row in mem["per_node"].items():
            print(
                f"  {name:<8}{row['circuits']:>6} circuits {row['kib_per_1000_circuits']!s:>10} KiB"
            )
        print(f"  client  {mem['client_kib_per_1000_circuits']!s:>25} KiB")
    print(f"\nTor figures: {TOR_NOTE}.")
    print("targets:")
    for key, met in report["meets_targets"].items():
        print(f"  {key:<30}{'-' if met is None else ('yes' if met else 'NO')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="small sizes: a CI smoke run")
    ap.add_argument("--builds", type=int, help="circuits built for the timing (50; quick 10)")
    ap.add_argument("--mib", type=int, help="MiB for the one-stream transfer (32; quick 2)")
    ap.add_argument("--mib-each", type=int, help="MiB per stream of ten (8; quick 1)")
    ap.add_argument("--rounds", type=int, help="one-stream rounds, median reported (3; quick 1)")
    ap.add_argument("--circuits", type=int, help="circuits for the memory figure (1000; quick 100)")
    ap.add_argument("--parallel", type=int, default=25, help="builds in flight for memory")
    ap.add_argument("--base-port", type=int, help="first port of the test network (auto)")
    ap.add_argument("--keep", action="store_true", help="keep the test network's directory")
    args = ap.parse_args(argv)
    q = args.quick
    cfg = Config(
        builds=args.builds or (10 if q else 50),
        mib=args.mib or (2 if q else 32),
        mib_each=args.mib_each or (1 if q else 8),
        rounds=args.rounds or (1 if q else 3),
        circuits=args.circuits or (100 if q else 1000),
        parallel=args.parallel,
        idle_seconds=0.5 if q else 2.0,
        quick=q,
    )
    stop_on_sigterm()
    machine = machine_info()
    t0 = time.perf_counter()
    with TestnetRunner(base_port=args.base_port, keep=args.keep) as net:
        with tempfile.TemporaryDirectory(prefix="qnet-bench-client-") as home:
            results = trio.run(run_all, cfg, net, Path(home))
        start_seconds = net.start_seconds
    machine["loadavg_end"] = loadavg()
    report: dict[str, Any] = {
        "benchmark": "circuits",
        "config": cfg.__dict__,
        "machine": machine,
        "testnet": {"authorities": 3, "relays": 3, "exits": 2},
        "testnet_start_seconds": round(start_seconds, 2),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "results": results,
        "targets": TARGETS,
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
