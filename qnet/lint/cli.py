"""``qnet-lint``: check an implementation against the spec.

    qnet-lint vectors [--backend NAME ...] [--vectors DIR]

``vectors`` runs every file in ``spec/vectors/`` (or ``--vectors DIR``) through
each hot-path backend built here (``python``, ``cython``) and exits non-zero on
any disagreement. Wire probing and the external-implementation harness come with
the linter issue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from qnet.crypto import accel
from qnet.lint.vectors import DEFAULT_DIR, check_file, iter_vector_files


def run_vectors(directory: Path, backends: list[str], out: TextIO = sys.stdout) -> int:
    """Print one line per (file, backend) and every finding; return the number of findings."""
    total = 0
    files = list(iter_vector_files(directory))
    if not files:
        print(f"no vector files in {directory}", file=out)
        return 1
    width = max(len(path.name) for path, _ in files)
    previous = accel.BACKEND_NAME
    try:
        for name in backends:
            accel.select(name)
            for path, doc in files:
                findings = check_file(doc)
                total += len(findings)
                status = "ok" if not findings else f"{len(findings)} finding(s)"
                print(f"{path.name:<{width}} {name:<8} {status}", file=out)
                for f in findings:
                    print(f"  - {f}", file=out)
    finally:
        accel.select(previous)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="qnet-lint", description="Check an implementation against spec/."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    vec = sub.add_parser("vectors", help="run spec/vectors through the built-in backends")
    vec.add_argument(
        "--vectors", type=Path, default=DEFAULT_DIR, help="directory of *.json vectors"
    )
    vec.add_argument(
        "--backend",
        action="append",
        choices=["python", "cython"],
        help="backend(s) to check (default: every one built here)",
    )
    args = ap.parse_args(argv)
    backends = args.backend or sorted(accel.available())
    missing = [b for b in backends if b not in accel.available()]
    if missing:
        print(f"qnet-lint: backend not built here: {', '.join(missing)}", file=sys.stderr)
        return 2
    return 1 if run_vectors(args.vectors, backends) else 0


if __name__ == "__main__":
    raise SystemExit(main())
