"""Relay-cell layer crypto throughput (bytes/s), every backend in one run.

Usage::

    .venv/bin/python bench/cells.py [--json] [--batch B] [--seconds S] [--repeats R]

Three operations of spec/cells.md §3, each on batches of B consecutive 2,040-byte
cell bodies under one key (cell k of a batch uses counter c + k):

* ``xor``: the pass-through layer, ``cell_xor_batch`` (ChaCha20 keystream XOR).
* ``open``: the end layer, ``cell_open_batch`` (ChaCha20-Poly1305 open; every
  cell must verify).
* ``seal``: the end layer, ``cell_seal_batch`` (ChaCha20-Poly1305 seal of 2,024-byte
  plaintexts).

Each for four backends: ``python`` (``qnet.crypto.hopcrypto``), ``cython_1w``
(``qnet._fast``, one thread), ``cython_2w`` (two threads, own keys and batches, total
of both) and ``c_loop`` (``bench/c/cells_loop.c``, libsodium from plain C). Every
figure counts body bytes, 2,040 per cell, for all three operations.

Each measurement runs for S seconds; R rounds run every row once in a rotated order,
and the median is reported. Before timing, each backend's output for a fixed case is
checked against the pure-Python reference.

Target: the Cython pass-through layer at >= 1 GB/s (10^9 bytes/s) on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

# The shared harness; bench/ is on sys.path as the script's own directory.
from harness import (
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

from qnet.constants import BODY_LEN, CELL_PLAINTEXT_LEN
from qnet.crypto import hopcrypto

OPS = ("xor", "open", "seal")
BACKENDS = ("python", "cython_1w", "cython_2w", "c_loop")
GB = 1e9
XOR_TARGET_GBPS = 1.0
CHECK_KEY = bytes(range(32))


class CellBackend(Protocol):
    """The three batch functions shared by ``hopcrypto`` and ``qnet._fast``."""

    def cell_xor_batch(self, key: bytes, counter: int, bodies: bytes) -> bytes: ...

    def cell_seal_batch(self, key: bytes, counter: int, plaintexts: bytes) -> bytes: ...

    def cell_open_batch(self, key: bytes, counter: int, bodies: bytes) -> tuple[bytes, int]: ...


@dataclass(frozen=True)
class Batch:
    """One worker's data: a key, random bodies, random plaintexts, and their seal."""

    key: bytes
    bodies: bytes  # batch * 2040, for xor
    plaintexts: bytes  # batch * 2024, for seal
    sealed: bytes  # plaintexts sealed with counters 0 .. batch-1, for open

    @classmethod
    def random(cls, cells: int) -> Batch:
        key = os.urandom(32)
        plaintexts = os.urandom(cells * CELL_PLAINTEXT_LEN)
        sealed = hopcrypto.cell_seal_batch(key, 0, plaintexts)
        return cls(key, os.urandom(cells * BODY_LEN), plaintexts, sealed)


def op_step(backend: CellBackend, op: str, data: Batch) -> Callable[[], int]:
    """One call of ``op`` on ``data``; the step returns the body bytes it handled."""
    size = len(data.bodies)
    cells = size // BODY_LEN
    counter = [0]

    def xor() -> int:
        backend.cell_xor_batch(data.key, counter[0], data.bodies)
        counter[0] += cells
        return size

    def seal() -> int:
        backend.cell_seal_batch(data.key, counter[0], data.plaintexts)
        counter[0] += cells
        return size

    def open_() -> int:
        backend.cell_open_batch(data.key, 0, data.sealed)
        return size

    return {"xor": xor, "open": open_, "seal": seal}[op]


def check_backend(backend: CellBackend, cells: int) -> None:
    """Raise ``Unavailable`` unless ``backend`` matches the Python reference on a fixed case."""
    ref = hopcrypto
    zeros_body, zeros_plain = bytes(cells * BODY_LEN), bytes(cells * CELL_PLAINTEXT_LEN)
    try:
        sealed = backend.cell_seal_batch(CHECK_KEY, 7, zeros_plain)
        checks = {
            "xor": backend.cell_xor_batch(CHECK_KEY, 7, zeros_body)
            == ref.cell_xor_batch(CHECK_KEY, 7, zeros_body),
            "seal": sealed == ref.cell_seal_batch(CHECK_KEY, 7, zeros_plain),
            "open": tuple(backend.cell_open_batch(CHECK_KEY, 7, sealed)) == (zeros_plain, -1),
        }
    except Exception as exc:  # noqa: BLE001 - a half-built module can fail any way
        raise Unavailable(f"cell batch call failed: {exc!r}") from exc
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise Unavailable(f"output differs from the pure-Python reference: {', '.join(wrong)}")


def c_expected_digests(cells: int) -> dict[str, str]:
    """What cells_loop's fixed case must print (key 00..1f, zero data, counters from 0)."""
    xor = hopcrypto.cell_xor_batch(CHECK_KEY, 0, bytes(cells * BODY_LEN))
    seal = hopcrypto.cell_seal_batch(CHECK_KEY, 0, bytes(cells * CELL_PLAINTEXT_LEN))
    return {
        "xor": hashlib.blake2b(xor, digest_size=32).hexdigest(),
        "seal": hashlib.blake2b(seal, digest_size=32).hexdigest(),
    }


def c_samplers(cells: int, seconds: float) -> dict[str, Sampler]:
    """One sampler per operation, each a run of ``cells_loop -o OP``."""
    binary, why = build_c("cells_loop")
    if binary is None:
        raise Unavailable(why or "build failed")
    expected = c_expected_digests(cells)

    def run(op: str, secs: float) -> dict[str, Any]:
        result = run_c([str(binary), "-b", str(cells), "-t", str(secs), "-o", op])
        if result.get("digests") != expected or result.get("open_failures") != 0:
            raise Unavailable(f"cells_loop does not match the Python reference: {result}")
        return result

    run("open", 0.01)  # validate once before timing

    def make(op: str) -> Sampler:
        return lambda: Sample(float(run(op, seconds)[f"{op}_bytes_per_s"]))

    return {op: make(op) for op in OPS}


def build_rows(
    fast: ModuleType | None, fast_why: str | None, args: argparse.Namespace
) -> list[Row]:
    """Rows ``<op>.<backend>`` with samplers, or the reason they are unavailable."""
    rows = {
        f"{op}.{b}": Row(f"{op}.{b}", f"{op:<5} {_backend_label(b, args.batch)}", "bytes/s")
        for op in OPS
        for b in BACKENDS
    }
    mine, theirs = Batch.random(args.batch), Batch.random(args.batch)
    for op in OPS:
        rows[f"{op}.python"].sampler = _single(hopcrypto, op, mine, args.seconds)
    try:
        if fast is None:
            raise Unavailable(fast_why or "qnet._fast missing")
        check_backend(fast, args.batch)
        for op in OPS:
            rows[f"{op}.cython_1w"].sampler = _single(fast, op, mine, args.seconds)
            steps = [op_step(fast, op, mine), op_step(fast, op, theirs)]
            rows[f"{op}.cython_2w"].sampler = _threads(steps, args.seconds)
    except Unavailable as exc:
        for op in OPS:
            rows[f"{op}.cython_1w"].reason = rows[f"{op}.cython_2w"].reason = str(exc)
    try:
        for op, sampler in c_samplers(args.batch, args.seconds).items():
            rows[f"{op}.c_loop"].sampler = sampler
    except Unavailable as exc:
        for op in OPS:
            rows[f"{op}.c_loop"].reason = str(exc)
    return list(rows.values())


def _single(backend: CellBackend, op: str, data: Batch, seconds: float) -> Sampler:
    step = op_step(backend, op, data)
    return lambda: rate_for(step, seconds)


def _threads(steps: Sequence[Callable[[], int]], seconds: float) -> Sampler:
    return lambda: rate_threads(steps, seconds)


def _backend_label(backend: str, batch: int) -> str:
    return {
        "python": "pure Python (hopcrypto)",
        "cython_1w": f"Cython, 1 worker, batch {batch}",
        "cython_2w": f"Cython, 2 workers, batch {batch}",
        "c_loop": f"C loop (libsodium), batch {batch}",
    }[backend]


def compute_ratios(rows: dict[str, Row]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for op in OPS:
        one = rows[f"{op}.cython_1w"]
        out[f"{op}: cython_1w/c_loop"] = ratio(one, rows[f"{op}.c_loop"])
        out[f"{op}: cython_2w/cython_1w"] = ratio(rows[f"{op}.cython_2w"], one)
        out[f"{op}: cython_1w/python"] = ratio(one, rows[f"{op}.python"])
    out["xor: cython_1w GB/s"] = ratio(rows["xor.cython_1w"], GB)
    return out


TARGETS: dict[str, float | None] = {"xor: cython_1w GB/s": XOR_TARGET_GBPS}


def report(rows: list[Row], args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    by_name = {r.name: r for r in rows}
    ratios = compute_ratios(by_name)
    figures = {r.name: r.as_json() for r in rows}
    for fig in figures.values():
        fig["median_gb_per_s"] = None if fig["median"] is None else fig["median"] / GB
    return {
        "benchmark": "cell_layers",
        "unit": "bytes/s (2040-byte bodies)",
        "config": {
            "cell_body_bytes": BODY_LEN,
            "batch": args.batch,
            "seconds_per_sample": args.seconds,
            "repeats": args.repeats,
            "statistic": "median of repeats",
        },
        "machine": info,
        "rows": figures,
        "ratios": ratios,
        "targets": {k: v for k, v in TARGETS.items() if v is not None},
        "meets_targets": meets(ratios, TARGETS),
    }


def print_table(result: dict[str, Any]) -> None:
    cfg, machine = result["config"], result["machine"]
    print(
        f"Relay-cell layers: batches of {cfg['batch']} x {cfg['cell_body_bytes']}-byte bodies, "
        f"median of {cfg['repeats']} x {cfg['seconds_per_sample']} s"
    )
    print(
        f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, Python "
        f"{machine['python']}, libsodium {machine['libsodium']}, load {machine['loadavg_start']}"
        f" -> {machine['loadavg_end']}"
    )
    print()
    print(f"{'row':<46}{'GB/s':>8}{'cells/s':>12}{'CPUs':>6}")
    for row in result["rows"].values():
        if not row["available"]:
            print(f"{row['label']:<46}{'unavailable':>12}   {row['reason']}")
            continue
        cells = row["median"] / BODY_LEN
        cpus = fmt_num(row["cpus_busy"], 2)
        print(f"{row['label']:<46}{row['median_gb_per_s']:>8.3f}{fmt_num(cells):>12}{cpus:>6}")
    print()
    notes = {"xor: cython_1w GB/s": "(pass-through layer, one core)"}
    for line in fmt_ratio_lines(result["ratios"], TARGETS, notes):
        print(line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--batch", type=int, default=64, help="cells per batch call (default 64)")
    p.add_argument("--seconds", type=float, default=0.75, help="seconds per sample (default 0.75)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; median reported (default 5)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.seconds <= 0:
        p.error("--batch and --repeats must be >= 1, --seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    fast, fast_why = load_fast()
    rows = build_rows(fast, fast_why, args)
    run_rounds(rows, args.repeats, progress=not args.json)
    info["loadavg_end"] = loadavg()
    result = report(rows, args, info)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
