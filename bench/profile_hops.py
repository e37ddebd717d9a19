"""Profile the hops of one 3-hop circuit while a stream flows (py-spy, per process).

Usage::

    .venv/bin/python bench/profile_hops.py [--seconds S] [--mib N] [--rate HZ]
                                           [--out DIR] [--top K] [--no-spy]

Starts a test network (like ``bench/circuits.py``), builds one circuit from an
in-process client, and fetches ``/bytes/N`` over one stream back to back for
``--seconds``; meanwhile ``py-spy record`` (from the venv, if installed) samples
the entry, middle and exit processes and this client. Prints the throughput, each
process's CPU seconds per MiB, and the top functions by self time and by inclusive
time per process (collapsed stacks are kept in ``--out``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

import trio  # noqa: E402
from _testnet import MIB, HttpReader, TestnetRunner, check, expected_digest, say  # noqa: E402
from circuits import Bench, Config, client_config  # noqa: E402
from harness import cpu_seconds  # noqa: E402

from qnet.client.app import Client  # noqa: E402
from qnet.testnet.plan import HOST  # noqa: E402


def spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def summarize(path: Path, top: int) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)] if total else [],
        "inclusive": (
            [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 2)] if total else []
        ),
    }


async def run(args: argparse.Namespace, net: Any, home: Path, out: Path) -> None:
    cfg = Config(1, args.mib, 1, 1, 1, 1, 1.0, True)
    client = Client(client_config(net, home))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.manager.run)
        with trio.fail_after(60):
            await nursery.start(client.follow_consensus)
        bench = Bench(cfg, net, client)
        bench.learn_nodes()
        for attempt in range(10):  # right after start, a relay may lack the consensus yet
            path = bench.path()
            try:
                circuit = await bench.manager.build(path)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then raised
                say(f"build {attempt + 1} failed: {exc!r}; retrying")
                if attempt == 9:
                    raise
                await trio.sleep(1.0)
        hops = bench.hop_names(path)
        say(f"path: {hops}")
        n = args.mib * MIB
        expected_digest(n)
        await bench.fetch_circuit(circuit, 4 * MIB)  # warm-up
        pids = {
            role: net.pid(name)
            for role, name in zip(["entry", "middle", "exit"], hops, strict=True)
        }
        pids["client"] = os.getpid()
        spies: dict[str, subprocess.Popen[bytes]] = {}
        spy = None if args.no_spy else spy_binary()
        if spy is not None:
            for role, pid in pids.items():
                if role not in args.roles:
                    continue
                cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds))]
                cmd += ["--rate", str(args.rate), "--format", "raw", "--nonblocking"]
                cmd += ["--output", str(out / f"{role}.txt")]
                cmd += ["--gil"] if args.gil else []
                spies[role] = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            await trio.sleep(0.5)
        c0 = {role: cpu_seconds(pid) for role, pid in pids.items()}
        t0 = time.perf_counter()
        moved = 0
        rates: list[float] = []
        while time.perf_counter() - t0 < args.seconds:
            stream = await circuit.open_stream(HOST, net.web_port)
            async with stream:
                fetch = await HttpReader(stream).get(f"/bytes/{n}")
            check(fetch, n)
            moved += n
            rates.append(n / fetch.total / 1e6)
        wall = time.perf_counter() - t0
        c1 = {role: cpu_seconds(pid) for role, pid in pids.items()}
        for proc in spies.values():
            await trio.to_thread.run_sync(proc.wait)
        await circuit.aclose()
        nursery.cancel_scope.cancel()
    print(f"moved {moved / MIB:.0f} MiB in {wall:.1f} s: {moved / wall / 1e6:.2f} MB/s overall")
    print("per fetch MB/s:", " ".join(f"{r:.1f}" for r in rates))
    for role in pids:
        a, b = c0[role], c1[role]
        if a is not None and b is not None:
            print(f"  {role:<7} CPU {(b - a) / (moved / MIB):.4f} s/MiB")
    for role in spies:
        f = out / f"{role}.txt"
        if not f.exists():
            print(f"{role}: no py-spy output")
            continue
        s = summarize(f, args.top)
        print(f"\n== {role}: {s['samples']} samples; self time")
        for name, pct in s["self"]:
            print(f"  {pct:5.1f}%  {name}")
        print(f"-- {role}: inclusive")
        for name, pct in s["inclusive"]:
            print(f"  {pct:5.1f}%  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="directory for the collapsed stacks (temporary)")
    ap.add_argument(
        "--gil",
        action="store_true",
        help="sample only while the GIL is held (leaves out syscalls and waiting for a CPU)",
    )
    ap.add_argument(
        "--roles",
        type=lambda text: text.split(","),
        default=["entry", "middle", "exit", "client"],
        help="processes to sample (comma-separated; entry,middle,exit,client)",
    )
    ap.add_argument("--no-spy", action="store_true", help="only throughput and CPU per MiB")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="qnet-prof-"))
    out.mkdir(parents=True, exist_ok=True)
    with TestnetRunner() as net:
        with tempfile.TemporaryDirectory(prefix="qnet-prof-client-") as home:
            trio.run(run, args, net, Path(home), out)
    say(f"collapsed stacks in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
