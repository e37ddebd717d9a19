"""libqnet (bindings/c) against raw libsodium: Sphinx unwrap and cell layers, one run.

Usage::

    .venv/bin/python bench/clib.py [--json] [--packets N] [--batch B] [--seconds S]
                                   [--repeats R]

Rows, all on this machine in the same run, in rotated order (``bench/harness.py``):

* ``sphinx.c_raw``: ``bench/c/sphinx_loop.c``, one hop unwrap made of raw libsodium
  calls (the baseline ``bench/sphinx.py`` uses);
* ``sphinx.libqnet``: ``bench/c/libqnet_loop.c sphinx``, the same packets, one
  ``qnet_sphinx_unwrap`` call each (slot parsed, next packet assembled);
* ``sphinx.ctypes``: the same call from Python through ``bindings/c/python/qnet_c.py``,
  one call per packet (what a Python user of the binding gets);
* ``<op>.c_raw`` / ``<op>.libqnet`` for the cell layers ``xor`` (pass-through),
  ``open`` (end-layer decrypt) and ``seal``: ``bench/c/cells_loop.c`` against
  ``libqnet_loop cells`` (``qnet_cell_*_batch``), batches of B cells.

Every loop first proves it computes the right bytes: the Sphinx loops hash their output
blocks and must match the pure-Python reference; the cell loops print the digests of a
fixed case that must match ``qnet.crypto.hopcrypto``. libqnet is built with its own
Makefile (``make -C bindings/c``, default ``-O2``); the loop programs with the flags of
``bench/harness.py``.

Targets: libqnet within 10 % of the raw loops (ratio >= 0.9).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

from harness import (  # noqa: E402
    C_BUILD_DIR,
    C_DIR,
    C_FLAGS,
    Row,
    Sample,
    Sampler,
    Unavailable,
    build_c,
    fmt_num,
    fmt_ratio_lines,
    loadavg,
    machine_info,
    meets,
    rate_for,
    ratio,
    run_c,
    run_rounds,
)

CLIB_DIR = REPO / "bindings" / "c"
OPS = ("xor", "open", "seal")
TARGETS: dict[str, float | None] = {
    "sphinx.libqnet/c_raw": 0.9,
    "xor.libqnet/c_raw": 0.9,
    "open.libqnet/c_raw": 0.9,
    "seal.libqnet/c_raw": 0.9,
    "sphinx.ctypes/libqnet": None,
}


def _load(name: str, path: Path) -> ModuleType:
    """Import a bench script or the binding by path (``bench/sphinx.py`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_libqnet_loop() -> Path:
    """``make -C bindings/c`` and compile ``bench/c/libqnet_loop.c`` against libqnet.a."""
    proc = subprocess.run(
        ["make", "-C", str(CLIB_DIR), "all"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Unavailable(f"building libqnet failed (compiler or libsodium missing?): {tail}")
    source, binary = C_DIR / "libqnet_loop.c", C_BUILD_DIR / "libqnet_loop"
    archive = CLIB_DIR / "build" / "libqnet.a"
    C_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        os.environ.get("CC", "cc"), *C_FLAGS, f"-I{CLIB_DIR / 'include'}", "-o", str(binary),
        str(source), str(archive), "-lsodium",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise Unavailable(f"compiling libqnet_loop.c failed: {proc.stderr.strip()[:200]}")
    return binary


def sphinx_samplers(work: Any, seconds: float, tmp: Path) -> dict[str, Sampler]:
    """The raw and libqnet Sphinx loops over the same packets, validated once."""
    data = tmp / "packets.bin"
    data.write_bytes(work.key.private_bytes + work.key.public_bytes + b"".join(work.packets))
    out: dict[str, Sampler] = {}
    raw, why = build_c("sphinx_loop")
    commands: dict[str, list[str]] = {}
    if raw is not None:
        commands["c_raw"] = [str(raw)]
    lq = build_libqnet_loop()
    commands["libqnet"] = [str(lq), "sphinx"]
    for name, prefix in commands.items():
        first = run_c([*prefix, "-n", "1", str(data)])
        if first.get("digest") != work.digest or first.get("failures") != 0:
            raise Unavailable(f"{name} Sphinx loop differs from the Python reference: {first}")

        def sample(prefix: list[str] = prefix) -> Sample:
            result = run_c([*prefix, "-t", str(seconds), str(data)])
            if result.get("failures") != 0 or result.get("digest") != work.digest:
                raise RuntimeError(f"Sphinx loop went wrong: {result}")
            return Sample(float(result["packets_per_s"]))

        out[name] = sample
    if raw is None:
        print(f"warning: sphinx_loop unavailable: {why}", file=sys.stderr)
    return out


def ctypes_sampler(work: Any, seconds: float, batch: int) -> Sampler:
    """``qnet_sphinx_unwrap`` from Python via ctypes, one call per packet."""
    qnet_c = _load("qnet_c", CLIB_DIR / "python" / "qnet_c.py")
    lib = qnet_c.Library(str(CLIB_DIR / "build" / "libqnet.so"))
    priv, pub = work.key.private_bytes, work.key.public_bytes
    first = lib.sphinx_unwrap(priv, pub, work.packets[0])
    if first.replay_tag != work.reference[0][1][:16]:
        raise Unavailable("ctypes unwrap differs from the Python reference")
    packets = work.packets[:batch]

    def step() -> int:
        for p in packets:
            lib.sphinx_unwrap(priv, pub, p)
        return len(packets)

    return lambda: rate_for(step, seconds)


def cell_samplers(cells_mod: ModuleType, batch: int, seconds: float) -> dict[str, Sampler]:
    """``<op>.<impl>`` samplers for the raw and libqnet cell loops."""
    expected = cells_mod.c_expected_digests(batch)
    raw, why = build_c("cells_loop")
    progs: dict[str, list[str]] = {"libqnet": [str(build_libqnet_loop()), "cells"]}
    if raw is not None:
        progs["c_raw"] = [str(raw)]
    else:
        print(f"warning: cells_loop unavailable: {why}", file=sys.stderr)
    out: dict[str, Sampler] = {}
    for impl, prefix in progs.items():

        def run(op: str, secs: float, prefix: list[str] = prefix) -> dict[str, Any]:
            result = run_c([*prefix, "-b", str(batch), "-t", str(secs), "-o", op])
            if result.get("digests") != expected or result.get("open_failures") != 0:
                raise Unavailable(f"cell loop does not match the Python reference: {result}")
            return result

        run("open", 0.01, prefix)
        for op in OPS:
            out[f"{op}.{impl}"] = (
                lambda op=op, run=run: Sample(float(run(op, seconds)[f"{op}_bytes_per_s"]))
            )
    return out


def build_rows(args: argparse.Namespace, tmp: Path) -> tuple[list[Row], Any]:
    sphinx_mod = _load("bench_sphinx", BENCH_DIR / "sphinx.py")
    cells_mod = _load("bench_cells", BENCH_DIR / "cells.py")
    rows = [
        Row("sphinx.c_raw", "Sphinx unwrap, raw libsodium loop", "packets/s"),
        Row("sphinx.libqnet", "Sphinx unwrap, qnet_sphinx_unwrap", "packets/s"),
        Row("sphinx.ctypes", "Sphinx unwrap, libqnet via Python ctypes", "packets/s"),
    ]
    for op in OPS:
        label = f"cell {op:<5}"
        rows.append(Row(f"{op}.c_raw", f"{label} raw libsodium, batch {args.batch}", "bytes/s"))
        rows.append(Row(f"{op}.libqnet", f"{label} libqnet, batch {args.batch}", "bytes/s"))
    by_name = {r.name: r for r in rows}
    work = sphinx_mod.make_workload(args.packets)
    try:
        for name, sampler in sphinx_samplers(work, args.seconds, tmp).items():
            by_name[f"sphinx.{name}"].sampler = sampler
        by_name["sphinx.ctypes"].sampler = ctypes_sampler(work, args.seconds, args.ctypes_batch)
    except Unavailable as exc:
        for name in ("sphinx.c_raw", "sphinx.libqnet", "sphinx.ctypes"):
            if by_name[name].sampler is None:
                by_name[name].reason = str(exc)
    try:
        for name, sampler in cell_samplers(cells_mod, args.batch, args.seconds).items():
            by_name[name].sampler = sampler
    except Unavailable as exc:
        for op in OPS:
            for impl in ("c_raw", "libqnet"):
                if by_name[f"{op}.{impl}"].sampler is None:
                    by_name[f"{op}.{impl}"].reason = str(exc)
    for row in rows:
        if row.sampler is None and row.reason is None:
            row.reason = "baseline C loop could not be built"
    return rows, work


def report(rows: list[Row], args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    by = {r.name: r for r in rows}
    ratios: dict[str, float | None] = {
        "sphinx.libqnet/c_raw": ratio(by["sphinx.libqnet"], by["sphinx.c_raw"]),
        **{f"{op}.libqnet/c_raw": ratio(by[f"{op}.libqnet"], by[f"{op}.c_raw"]) for op in OPS},
        "sphinx.ctypes/libqnet": ratio(by["sphinx.ctypes"], by["sphinx.libqnet"]),
    }
    return {
        "benchmark": "libqnet",
        "config": {
            "sphinx_hops": 3,
            "sphinx_hop_measured": 0,
            "packets": args.packets,
            "cell_batch": args.batch,
            "ctypes_batch": args.ctypes_batch,
            "seconds_per_sample": args.seconds,
            "repeats": args.repeats,
            "statistic": "median of repeats",
            "libqnet_cflags": "bindings/c Makefile default (-O2)",
        },
        "machine": info,
        "rows": {r.name: r.as_json() for r in rows},
        "ratios": ratios,
        "targets": {k: v for k, v in TARGETS.items() if v is not None},
        "meets_targets": meets(ratios, TARGETS),
    }


def print_table(result: dict[str, Any]) -> None:
    cfg, machine = result["config"], result["machine"]
    print(
        f"libqnet vs raw libsodium: {cfg['packets']} Sphinx packets (hop 0 of 3), cell batch "
        f"{cfg['cell_batch']}, median of {cfg['repeats']} x {cfg['seconds_per_sample']} s"
    )
    print(
        f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, libsodium "
        f"{machine['libsodium']}, load {machine['loadavg_start']} -> {machine['loadavg_end']}"
    )
    print()
    print(f"{'row':<46}{'rate':>16} {'unit':<10} min .. max")
    for row in result["rows"].values():
        if not row["available"]:
            print(f"{row['label']:<46}{'unavailable':>16}   {row['reason']}")
            continue
        spread = f"{min(row['samples']):,.0f} .. {max(row['samples']):,.0f}"
        print(f"{row['label']:<46}{fmt_num(row['median']):>16} {row['unit']:<10} {spread}")
    print()
    for line in fmt_ratio_lines(result["ratios"], TARGETS, {}):
        print(line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--packets", type=int, default=512, help="distinct packets (default 512)")
    p.add_argument("--batch", type=int, default=64, help="cells per batch call (default 64)")
    p.add_argument("--ctypes-batch", type=int, default=64, help="packets per ctypes step")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per sample (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; median reported (default 5)")
    args = p.parse_args(argv)
    if args.packets < 1 or args.batch < 1 or args.repeats < 1 or args.seconds <= 0:
        p.error("--packets, --batch, --repeats must be >= 1 and --seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.json
    info = machine_info()
    if progress:
        print(f"building {args.packets} packets and the loops ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="qnet-bench-clib-") as tmp:
        rows, _ = build_rows(args, Path(tmp))
        run_rounds(rows, args.repeats, progress, drop_unavailable=True)
    info["loadavg_end"] = loadavg()
    result = report(rows, args, info)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
