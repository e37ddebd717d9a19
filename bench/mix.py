"""Mixnode throughput (packets/s) with 1 and 2 worker threads, against the C loop.

Usage::

    .venv/bin/python bench/mix.py [--json] [--packets N] [--seconds S] [--repeats R] [--batch B]

What is measured, all on hop 0 of valid 3-hop packets (delay 0, so every packet
is released at once):

* ``mix_1w`` / ``mix_2w``: the node's real ``qnet.node.mix.MixService`` under
  Trio with 1 or 2 workers: intake and token bucket (``receive``), batches
  unwrapped in threads by ``trio.to_thread`` with the GIL released, the replay
  check against a Bloom filter at 1e-6, the delay heap, the timer task, and the
  SPHINX unit written to an in-memory link queue. No sockets: HTX costs are
  ``bench/htx.py``'s subject. The figure is packets queued on the outgoing link
  per wall second; ``cpus_busy`` is process CPU time over wall time, so CPU per
  packet is ``cpus_busy / rate``.
* ``unwrap_1w``: ``qnet._fast.sphinx_unwrap_batch`` alone in one thread (the
  hot path's share of the work).
* ``c_loop``: ``bench/c/sphinx_loop.c``, the same primitives in a plain C loop
  with libsodium (one core), as in ``bench/sphinx.py``.

The workload cycles over N distinct packets. A mix would refuse the second
copy, so at the end of each pass the producer lets the pipeline drain and
empties the filter in place (a short pause every N packets, counted in the
figure; the filter's pages stay resident, as they are in a node that has run
for a while).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

import trio  # noqa: E402
from harness import (  # noqa: E402
    Row,
    Sample,
    Sampler,
    Unavailable,
    fmt_num,
    fmt_ratio_lines,
    load_fast,
    loadavg,
    machine_info,
    meets,
    ratio,
    run_rounds,
)
from sphinx import Workload, c_sampler, make_workload, unwrap_sampler  # noqa: E402

from qnet.mix.mixnode import MixSettings  # noqa: E402
from qnet.node.mix import MixService  # noqa: E402

TARGETS: dict[str, float | None] = {
    "mix_1w_per_s": 12_000.0,
    "mix_2w_per_s": 25_000.0,
    "mix_1w/c_loop": None,
    "mix_2w/mix_1w": None,
}


class SinkLink:
    """An outgoing link that only counts what the mix queued on it."""

    closed = False

    def __init__(self) -> None:
        self.units = 0

    def queue_units(self, units: list[bytes], limit: int) -> bool:
        self.units += len(units)
        return True


class SinkLinks:
    """What ``MixService`` needs from a ``LinkManager``: every next hop is connected."""

    def __init__(self) -> None:
        self.link = SinkLink()

    def connected(self, node_id: bytes) -> SinkLink:
        return self.link


def mix_sampler(work: Workload, workers: int, batch: int, seconds: float) -> Sampler:
    settings = MixSettings(
        workers=workers,
        batch=batch,
        max_inbox=8 * batch * workers,
        link_rate=1e9,
        link_burst=1 << 30,
        max_held=1 << 20,
    )
    packets = work.packets

    def sample() -> Sample:
        service = MixService(settings, mix_keys=lambda: [work.key])
        links = SinkLinks()
        service.attach(links)  # type: ignore[arg-type]
        result: dict[str, float] = {}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                core = service.core
                chunk = batch
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                deadline = trio.current_time() + seconds
                while trio.current_time() < deadline:
                    for i in range(0, len(packets), chunk):
                        while core.inbox_len >= settings.max_inbox - chunk:
                            await trio.sleep(0.001)  # the workers are behind: wait
                        service.receive(1, packets[i : i + chunk])
                        await trio.sleep(0)
                    # One pass done: drain, then an empty filter for the next pass.
                    while core.inbox_len or core.in_flight or core.held_len:
                        await trio.sleep(0.001)
                    core.filters.for_key(work.key.public_bytes).clear()
                wall = time.perf_counter() - start_wall
                cpu = time.process_time() - start_cpu
                result.update(rate=links.link.units / wall, cpus=cpu / wall)
                nursery.cancel_scope.cancel()

        trio.run(main)
        if sum(service.drops.values()):
            raise RuntimeError(f"the mix dropped packets: {dict(service.drops)}")
        return Sample(result["rate"], result["cpus"])

    return sample


def build_rows(work: Workload, args: argparse.Namespace, tmp: Path) -> list[Row]:
    unit = "packets/s"
    rows = [
        Row("mix_1w", f"MixService, 1 worker, batch {args.batch}", unit),
        Row("mix_2w", f"MixService, 2 workers, batch {args.batch}", unit),
        Row("unwrap_1w", f"Cython unwrap only, 1 thread, batch {args.batch}", unit),
        Row("c_loop", "C loop (libsodium)", unit),
    ]
    by_name = {r.name: r for r in rows}
    by_name["mix_1w"].sampler = mix_sampler(work, 1, args.batch, args.seconds)
    by_name["mix_2w"].sampler = mix_sampler(work, 2, args.batch, args.seconds)
    fast, why = load_fast()
    if fast is None:
        by_name["unwrap_1w"].reason = why or "qnet._fast missing"
    else:
        by_name["unwrap_1w"].sampler = unwrap_sampler(
            fast.sphinx_unwrap_batch, work, args.batch, args.seconds
        )
    try:
        by_name["c_loop"].sampler = c_sampler(work, args.seconds, tmp)
    except Unavailable as exc:
        by_name["c_loop"].reason = str(exc)
    return rows


def report(rows: list[Row], args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    by = {r.name: r for r in rows}
    ratios: dict[str, float | None] = {
        "mix_1w_per_s": by["mix_1w"].median,
        "mix_2w_per_s": by["mix_2w"].median,
        "mix_1w/c_loop": ratio(by["mix_1w"], by["c_loop"]),
        "mix_2w/mix_1w": ratio(by["mix_2w"], by["mix_1w"]),
    }
    cpu_us: dict[str, float | None] = {}
    for name in ("mix_1w", "mix_2w"):
        row = by[name]
        med, cpus = row.median, row.cpus
        cpu_us[name] = None if not med or cpus is None else round(cpus / med * 1e6, 1)
    c_med = by["c_loop"].median
    cpu_us["c_loop"] = None if not c_med else round(1e6 / c_med, 1)
    return {
        "benchmark": "mixnode",
        "unit": "packets/s",
        "config": {
            "hops": 3,
            "hop_measured": 0,
            "packets": args.packets,
            "batch": args.batch,
            "seconds_per_sample": args.seconds,
            "repeats": args.repeats,
            "statistic": "median of repeats",
            "replay_filter": "Bloom, fp 1e-6",
        },
        "machine": info,
        "rows": {r.name: r.as_json() for r in rows},
        "cpu_us_per_packet": cpu_us,
        "ratios": ratios,
        "targets": {k: v for k, v in TARGETS.items() if v is not None},
        "meets_targets": meets(ratios, TARGETS),
    }


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"Mixnode: hop 0 of 3-hop packets, {cfg['packets']} distinct, "
        f"median of {cfg['repeats']} x {cfg['seconds_per_sample']} s"
    )
    print(f"{'row':<44}{'packets/s':>12}{'CPUs':>6}{'CPU us/pkt':>12}")
    for name, row in result["rows"].items():
        if not row["available"]:
            print(f"{row['label']:<44}{'unavailable':>12}   {row['reason']}")
            continue
        cpu = result["cpu_us_per_packet"].get(name)
        print(
            f"{row['label']:<44}{fmt_num(row['median']):>12}"
            f"{fmt_num(row['cpus_busy'], 2):>6}{fmt_num(cpu, 1):>12}"
        )
    print()
    for line in fmt_ratio_lines(result["ratios"], TARGETS, {}):
        print(line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--packets", type=int, default=4096, help="distinct packets (default 4096)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per sample (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; median reported (default 3)")
    p.add_argument("--batch", type=int, default=64, help="packets per worker call (default 64)")
    args = p.parse_args(argv)
    if args.packets < 4 * args.batch or args.repeats < 1 or args.seconds <= 0:
        p.error("need --packets >= 4 x --batch, --repeats >= 1, --seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    if not args.json:
        print(f"building {args.packets} packets ...", file=sys.stderr)
    work = make_workload(args.packets)
    with tempfile.TemporaryDirectory(prefix="qnet-bench-") as tmp:
        rows = build_rows(work, args, Path(tmp))
        run_rounds(rows, args.repeats, not args.json)
    info["loadavg_end"] = loadavg()
    result = report(rows, args, info)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
