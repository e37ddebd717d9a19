"""Sphinx hop-unwrap throughput (packets/s), every backend in one run.

Usage::

    .venv/bin/python bench/sphinx.py [--json] [--packets N] [--seconds S] [--repeats R] [--batch B]

What is measured, all on hop 0 of valid 3-hop packets built with ``qnet.mix.sphinx``
(so every MAC verifies and every unwrap does the full work of spec/sphinx.md §7):

* ``python``: ``qnet.crypto.hopcrypto.sphinx_unwrap_batch`` (pure Python over
  ``cryptography``/``hashlib``), one thread.
* ``cython_1w``: ``qnet._fast.sphinx_unwrap_batch`` on batches of B packets, one thread.
* ``cython_2w``: the same from two threads at once, each on its own batches (the
  module releases the GIL around its loop); the figure is the total of both.
* ``process_batch``: the node-side API ``qnet.mix.sphinx.process_batch`` on batches of
  B, with whatever backend ``qnet.crypto.accel`` picked; adds the Python slot parse,
  result objects and the replay set (a fresh set per batch, so no packet is a replay).
* ``c_loop``: ``bench/c/sphinx_loop.c``, the same primitives called from a plain C
  loop with libsodium, compiled at run time.

Each measurement runs for S seconds; R rounds run every row once, in a rotated
order each round so that noise from other work on the machine falls on all rows
alike, and the median of the R samples is reported. Before timing, every backend's
output is checked byte for byte against the pure-Python reference.

The timing harness is in ``bench/harness.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

from harness import (  # noqa: E402
    Row,
    Sample,
    Sampler,
    Unavailable,
    build_c,
    fmt_num,
    fmt_ratio_lines,
    load_fast,
    loadavg,
    machine_info,
    meets,
    rate_for,
    rate_threads,
    ratio,
    run_c,
    run_rounds,
)

from qnet.crypto import accel, hopcrypto  # noqa: E402
from qnet.mix.sphinx import (  # noqa: E402
    Command,
    MixKey,
    Relay,
    Slot,
    build_packet,
    mix_route,
    process_batch,
)

HOPS = 3
NYM_PUBLISHED_PPS = 6300.0
NYM_NOTE = (
    "external published figure (Nym: about 6,300 Sphinx packets/s unwrapped per core), "
    "not measured here"
)
TARGETS: dict[str, float | None] = {
    "cython_1w/c_loop": 0.8,
    "cython_2w/cython_1w": 1.8,
    "cython_1w/python": None,
    "process_batch/cython_1w": None,
    "cython_1w/nym_published": 2.0,
}


@dataclass(frozen=True)
class Workload:
    """Packets for one node key: hop 0 of distinct valid 3-hop packets."""

    key: MixKey
    packets: list[bytes]
    reference: list[tuple[int, bytes]]  # pure-Python unwrap of every packet
    digest: str  # BLAKE2b-256 over the reference output blocks, in order

    def batches(self, size: int) -> list[list[bytes]]:
        return [self.packets[i : i + size] for i in range(0, len(self.packets), size)]


def make_workload(count: int) -> Workload:
    """Build ``count`` distinct 3-hop packets and their pure-Python reference unwraps."""
    keys = [MixKey.generate() for _ in range(HOPS)]
    hops = [(bytes([i + 1]) * 32, k.public_bytes) for i, k in enumerate(keys)]
    final = Slot(command=Command.DELIVER, address=bytes([0xEE]) * 32, tag=bytes([0x5A]) * 16)
    route = mix_route(hops, final)
    packets = [build_packet(route, i.to_bytes(4, "big") * 8).packet for i in range(count)]
    reference = hopcrypto.sphinx_unwrap_batch(keys[0].private_bytes, keys[0].public_bytes, packets)
    bad = sum(1 for status, _ in reference if status != hopcrypto.OK)
    if bad:
        raise RuntimeError(f"{bad} freshly built packets did not unwrap in pure Python")
    h = hashlib.blake2b(digest_size=32)
    for _, out in reference:
        h.update(out)
    return Workload(keys[0], packets, reference, h.hexdigest())


def cycle(batches: Sequence[Sequence[bytes]]) -> Callable[[], Sequence[bytes]]:
    """A function returning the next batch each call, round-robin."""
    state = {"i": 0}

    def nxt() -> Sequence[bytes]:
        i = state["i"]
        state["i"] = (i + 1) % len(batches)
        return batches[i]

    return nxt


def unwrap_sampler(
    unwrap_batch: Callable[[bytes, bytes, Sequence[bytes]], list[tuple[int, bytes]]],
    work: Workload,
    batch: int,
    seconds: float,
) -> Sampler:
    """Single-thread ``unwrap_batch`` over batches of ``batch`` packets."""
    priv, pub = work.key.private_bytes, work.key.public_bytes
    nxt = cycle(work.batches(batch))

    def step() -> int:
        return len(unwrap_batch(priv, pub, nxt()))

    return lambda: rate_for(step, seconds)


def threaded_sampler(
    unwrap_batch: Callable[[bytes, bytes, Sequence[bytes]], list[tuple[int, bytes]]],
    work: Workload,
    batch: int,
    seconds: float,
    workers: int,
) -> Sampler:
    """``workers`` threads, each calling ``unwrap_batch`` on its own share of the batches."""
    batches = work.batches(batch)
    if len(batches) < workers:
        raise Unavailable(f"need at least {workers} batches: raise --packets or lower --batch")
    priv, pub = work.key.private_bytes, work.key.public_bytes

    def make_step(mine: Sequence[Sequence[bytes]]) -> Callable[[], int]:
        nxt = cycle(mine)
        return lambda: len(unwrap_batch(priv, pub, nxt()))

    steps = [make_step(batches[i::workers]) for i in range(workers)]
    return lambda: rate_threads(steps, seconds)


def process_sampler(work: Workload, batch: int, seconds: float) -> Sampler:
    """``qnet.mix.sphinx.process_batch`` with a fresh replay set per batch."""
    nxt = cycle(work.batches(batch))

    def step() -> int:
        return len(process_batch(nxt(), work.key, set()))

    return lambda: rate_for(step, seconds)


def check_fast(fast: ModuleType, work: Workload) -> None:
    """Raise ``Unavailable`` unless ``fast`` gives the reference bytes for every packet."""
    priv, pub = work.key.private_bytes, work.key.public_bytes
    try:
        got = fast.sphinx_unwrap_batch(priv, pub, work.packets)
    except Exception as exc:  # noqa: BLE001 - a half-built module can fail any way
        raise Unavailable(f"qnet._fast.sphinx_unwrap_batch failed: {exc!r}") from exc
    if list(map(tuple, got)) != work.reference:
        raise Unavailable("qnet._fast output differs from the pure-Python reference")


def check_process(work: Workload) -> None:
    """Raise ``Unavailable`` unless ``process_batch`` relays every packet."""
    results = process_batch(work.packets, work.key, set())
    wrong = [r for r in results if not isinstance(r, Relay)]
    if wrong:
        raise Unavailable(f"process_batch did not relay {len(wrong)} packets: {wrong[0]!r}")


def c_sampler(work: Workload, seconds: float, tmp: Path) -> Sampler:
    """The C loop over the same packets; checks failures == 0 and the digest each run."""
    binary, why = build_c("sphinx_loop")
    if binary is None:
        raise Unavailable(why or "build failed")
    data = tmp / "packets.bin"
    data.write_bytes(work.key.private_bytes + work.key.public_bytes + b"".join(work.packets))

    def sample() -> Sample:
        result = run_c([str(binary), "-t", str(seconds), str(data)])
        if result.get("failures") != 0:
            raise RuntimeError(f"C loop: MAC failures: {result}")
        if result.get("digest") != work.digest:
            raise RuntimeError("C loop output differs from the pure-Python reference")
        return Sample(float(result["packets_per_s"]))

    result = run_c([str(binary), "-n", "1", str(data)])  # validate once before timing
    if result.get("digest") != work.digest or result.get("failures") != 0:
        raise Unavailable(f"C loop does not match the Python reference: {result}")
    return sample


def build_rows(
    work: Workload,
    fast: ModuleType | None,
    fast_why: str | None,
    args: argparse.Namespace,
    tmp: Path,
) -> list[Row]:
    """Every row of the report, with a sampler or the reason it is unavailable."""
    unit = "packets/s"
    rows = [
        Row("python", "pure Python (hopcrypto)", unit),
        Row("cython_1w", f"Cython, 1 worker, batch {args.batch}", unit),
        Row("cython_2w", f"Cython, 2 workers, batch {args.batch}", unit),
        Row("process_batch", f"process_batch [{accel.BACKEND_NAME}], batch {args.batch}", unit),
        Row("c_loop", "C loop (libsodium)", unit),
    ]
    by_name = {r.name: r for r in rows}
    by_name["python"].sampler = unwrap_sampler(
        hopcrypto.sphinx_unwrap_batch, work, args.batch, args.seconds
    )
    try:
        if fast is None:
            raise Unavailable(fast_why or "qnet._fast missing")
        check_fast(fast, work)
        by_name["cython_1w"].sampler = unwrap_sampler(
            fast.sphinx_unwrap_batch, work, args.batch, args.seconds
        )
        by_name["cython_2w"].sampler = threaded_sampler(
            fast.sphinx_unwrap_batch, work, args.batch, args.seconds, workers=2
        )
    except Unavailable as exc:
        by_name["cython_1w"].reason = by_name["cython_2w"].reason = str(exc)
    try:
        check_process(work)
        by_name["process_batch"].sampler = process_sampler(work, args.batch, args.seconds)
    except Unavailable as exc:
        by_name["process_batch"].reason = str(exc)
    try:
        by_name["c_loop"].sampler = c_sampler(work, args.seconds, tmp)
    except Unavailable as exc:
        by_name["c_loop"].reason = str(exc)
    return rows


def compute_ratios(rows: dict[str, Row], fast: ModuleType | None) -> dict[str, float | None]:
    """The report's ratios (``None`` where a side is unavailable)."""
    process_on_cython = fast is not None and accel.backend is fast
    return {
        "cython_1w/c_loop": ratio(rows["cython_1w"], rows["c_loop"]),
        "cython_2w/cython_1w": ratio(rows["cython_2w"], rows["cython_1w"]),
        "cython_1w/python": ratio(rows["cython_1w"], rows["python"]),
        "process_batch/cython_1w": (
            ratio(rows["process_batch"], rows["cython_1w"]) if process_on_cython else None
        ),
        "cython_1w/nym_published": ratio(rows["cython_1w"], NYM_PUBLISHED_PPS),
    }


def report(
    rows: list[Row], args: argparse.Namespace, info: dict[str, Any], fast: ModuleType | None
) -> dict[str, Any]:
    by_name = {r.name: r for r in rows}
    ratios = compute_ratios(by_name, fast)
    return {
        "benchmark": "sphinx_unwrap",
        "unit": "packets/s",
        "config": {
            "hops": HOPS,
            "hop_measured": 0,
            "packets": args.packets,
            "batch": args.batch,
            "seconds_per_sample": args.seconds,
            "repeats": args.repeats,
            "statistic": "median of repeats",
        },
        "machine": info,
        "rows": {r.name: r.as_json() for r in rows},
        "external": {"nym_published_packets_per_s_per_core": NYM_PUBLISHED_PPS, "note": NYM_NOTE},
        "ratios": ratios,
        "targets": {k: v for k, v in TARGETS.items() if v is not None},
        "meets_targets": meets(ratios, TARGETS),
    }


def print_table(result: dict[str, Any]) -> None:
    cfg, machine = result["config"], result["machine"]
    print(
        f"Sphinx hop unwrap: hop 0 of {cfg['hops']}-hop packets, {cfg['packets']} distinct "
        f"packets, median of {cfg['repeats']} x {cfg['seconds_per_sample']} s"
    )
    print(
        f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, Python "
        f"{machine['python']}, libsodium {machine['libsodium']}, load {machine['loadavg_start']}"
        f" -> {machine['loadavg_end']}"
    )
    print()
    print(f"{'row':<44}{'packets/s':>12}{'us/packet':>11}{'CPUs':>6}   min .. max")
    for row in result["rows"].values():
        if not row["available"]:
            print(f"{row['label']:<44}{'unavailable':>12}   {row['reason']}")
            continue
        med = row["median"]
        spread = f"{min(row['samples']):,.0f} .. {max(row['samples']):,.0f}"
        cpus = fmt_num(row["cpus_busy"], 2)
        print(f"{row['label']:<44}{fmt_num(med):>12}{1e6 / med:>11.1f}{cpus:>6}   {spread}")
    print()
    notes = {"cython_1w/nym_published": "(6,300/s: external published figure, not measured here)"}
    for line in fmt_ratio_lines(result["ratios"], TARGETS, notes):
        print(line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--packets", type=int, default=1024, help="distinct packets (default 1024)")
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per sample (default 1.5)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; median reported (default 5)")
    p.add_argument("--batch", type=int, default=256, help="packets per batch call (default 256)")
    args = p.parse_args(argv)
    if args.packets < 2 * args.batch:
        p.error("--packets must be at least 2 x --batch (two workers need their own batches)")
    if args.repeats < 1 or args.seconds <= 0:
        p.error("--repeats must be >= 1 and --seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.json
    info = machine_info()
    fast, fast_why = load_fast()
    if progress:
        print(f"building {args.packets} packets ...", file=sys.stderr)
    work = make_workload(args.packets)
    with tempfile.TemporaryDirectory(prefix="qnet-bench-") as tmp:
        rows = build_rows(work, fast, fast_why, args, Path(tmp))
        run_rounds(rows, args.repeats, progress)
    info["loadavg_end"] = loadavg()
    result = report(rows, args, info, fast)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
