"""``qnet-lint``: check an implementation against the spec.

    qnet-lint vectors [--backend NAME ...] [--vectors PATH ...]
    qnet-lint vectors --impl CMD [--vectors PATH ...] [--timeout S] [--format F]
    qnet-lint probe HOST:PORT [--ticket-key HEX --key-id N --link-key HEX --mlkem-key HEX]
    qnet-lint hello CAPTURE --template T [--format F]
    qnet-lint checks [--format F]

``vectors`` without ``--impl`` runs every vector file through each hot-path
backend built here (``python``, ``cython``). With ``--impl`` it starts ``CMD``
(split like a shell would) as a harness (spec/harness.md) and runs every vector
operation through it. ``probe`` checks a live HTX endpoint from outside.
``checks`` lists every check id with its spec section.

Output: human text by default; ``--format json|junit|sarif`` for CI, written to
stdout or ``--output FILE``. Exit 0: every check passed; 1: a check failed;
2: usage error (bad arguments, no vector files, a harness that cannot start).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from qnet.crypto import accel
from qnet.lint import report
from qnet.lint.vectors import DEFAULT_DIR, check_file, iter_vector_files


def run_vectors(directory: Path, backends: list[str], out: TextIO = sys.stdout) -> int:
    """Print one line per (file, backend) and every finding; return the number of findings."""
    total = 0
    files = list(iter_vector_files(directory))
    if not files:
        print(f"no vector files in {directory}", file=out)
        return 1
    previous = accel.BACKEND_NAME
    try:
        for name in backends:
            accel.select(name)
            for path, doc in files:
                findings = check_file(doc)
                total += len(findings)
                status = "ok" if not findings else f"{len(findings)} finding(s)"
                print(f"{path.name:<14} {name:<8} {status}", file=out)
                for f in findings:
                    print(f"  - {f}", file=out)
    finally:
        accel.select(previous)
    return total


class UsageError(Exception):
    """Bad arguments or unusable input: exit code 2."""


def load_vector_files(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` in each directory, and each file given directly, in order."""
    out: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        items: Iterator[Path] = iter(sorted(p.glob("*.json"))) if p.is_dir() else iter([p])
        for f in items:
            try:
                out.append((f, json.loads(f.read_text())))
            except OSError as exc:
                raise UsageError(f"cannot read {f}: {exc.strerror}") from exc
            except ValueError as exc:
                raise UsageError(f"{f} is not JSON: {exc}") from exc
    if not out:
        raise UsageError(f"no vector files in {', '.join(map(str, paths))}")
    return out


def _emit(results: list[report.Result], fmt: str, output: Path | None) -> int:
    text = report.render(results, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    return report.exit_code(results)


def _in_process_results(
    files: list[tuple[Path, dict[str, Any]]], backends: list[str]
) -> list[report.Result]:
    check = report.Check(
        "INPROC-001", "spec/harness.md §6", "the built-in backends agree with the vector file"
    )
    results = []
    previous = accel.BACKEND_NAME
    try:
        for name in backends:
            accel.select(name)
            for path, doc in files:
                findings = check_file(doc)
                subject = f"{path.name} ({name})"
                if findings:
                    reason = f"{len(findings)} finding(s); first: {findings[0]}"
                    results.append(report.failed(check, subject, reason))
                else:
                    results.append(report.passed(check, subject))
    finally:
        accel.select(previous)
    return results


def cmd_vectors(args: argparse.Namespace) -> int:
    paths: list[Path] = args.vectors or [DEFAULT_DIR]
    if args.impl is None:
        backends = args.backend or sorted(accel.available())
        missing = [b for b in backends if b not in accel.available()]
        if missing:
            raise UsageError(f"backend not built here: {', '.join(missing)}")
        if args.format == "text" and args.output is None and len(paths) == 1 and paths[0].is_dir():
            return 1 if run_vectors(paths[0], backends) else 0
        return _emit(
            _in_process_results(load_vector_files(paths), backends), args.format, args.output
        )
    if args.backend:
        raise UsageError("--backend is for the built-in backends; not with --impl")
    from qnet.lint.harness import Harness, HarnessFault
    from qnet.lint.impl_vectors import run

    files = load_vector_files(paths)
    argv = shlex.split(args.impl)
    if not argv:
        raise UsageError("--impl needs a command")
    try:
        harness = Harness(argv, timeout=args.timeout)
    except HarnessFault as exc:
        raise UsageError(f"harness {args.impl!r} did not start: {exc.detail}") from exc
    with harness:
        results = run(harness, files)
    return _emit(results, args.format, args.output)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise UsageError(f"HOST:PORT expected, got {text!r}")
    return host.strip("[]"), int(port)


def _hex(name: str, text: str | None, length: int) -> bytes | None:
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{name}: not hex") from None
    if len(raw) != length:
        raise UsageError(f"{name}: {len(raw)} bytes, want {length}")
    return raw


def cmd_probe(args: argparse.Namespace) -> int:
    from qnet.lint.probe import NodeKeys, ProbeOptions, probe

    host, port = _parse_hostport(args.target)
    given = [args.ticket_key, args.key_id, args.link_key, args.mlkem_key]
    keys = None
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise UsageError("--ticket-key, --key-id, --link-key and --mlkem-key go together")
        if not 0 <= args.key_id <= 255:
            raise UsageError("--key-id must be 0..255")
        keys = NodeKeys(
            ticket_public=_hex("--ticket-key", args.ticket_key, 32) or b"",
            key_id=args.key_id,
            link_public=_hex("--link-key", args.link_key, 32) or b"",
            mlkem_public=_hex("--mlkem-key", args.mlkem_key, 1184) or b"",
        )
    if args.observe < 0 or args.timeout <= 0:
        raise UsageError("--observe must be >= 0 and --timeout > 0")
    opts = ProbeOptions(
        host=host,
        port=port,
        server_name=args.server_name or host,
        keys=keys,
        observe=args.observe,
        timeout=args.timeout,
    )
    return _emit(probe(opts), args.format, args.output)


def cmd_hello(args: argparse.Namespace) -> int:
    from qnet.lint.hello import CaptureError, check_hello

    try:
        results = check_hello(args.capture, args.template)
    except OSError as exc:
        raise UsageError(f"cannot read: {exc}") from exc
    except (CaptureError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    return _emit(results, args.format, args.output)


def cmd_checks(args: argparse.Namespace) -> int:
    from qnet.lint.hello import CHECKS as HELLO_CHECKS
    from qnet.lint.impl_vectors import CHECKS as VECTOR_CHECKS
    from qnet.lint.probe import CHECKS as PROBE_CHECKS

    checks = [*VECTOR_CHECKS.values(), *PROBE_CHECKS.values(), *HELLO_CHECKS.values()]
    if args.format == "json":
        doc = [{"check": c.id, "spec": c.spec, "title": c.title} for c in checks]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for c in checks:
            print(f"{c.id:<22} {c.spec:<28} {c.title}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=report.FORMATS, default="text", help="output format")
    p.add_argument("--output", type=Path, help="write the report here instead of stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qnet-lint", description="Check an implementation against spec/."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    vec = sub.add_parser("vectors", help="run spec/vectors through a backend or a harness")
    vec.add_argument(
        "--vectors",
        type=Path,
        action="append",
        help="a vector file or a directory of *.json (repeatable; default spec/vectors)",
    )
    vec.add_argument(
        "--backend",
        action="append",
        choices=["python", "cython"],
        help="built-in backend(s) to check (default: every one built here)",
    )
    vec.add_argument("--impl", metavar="CMD", help="a harness command (spec/harness.md)")
    vec.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer (30)"
    )
    _common(vec)
    pr = sub.add_parser("probe", help="check a live HTX endpoint from outside")
    pr.add_argument("target", metavar="HOST:PORT")
    pr.add_argument("--server-name", help="SNI and Host to use (default: HOST)")
    pr.add_argument("--ticket-key", metavar="HEX", help="the node's ticket public key")
    pr.add_argument("--key-id", type=int, metavar="N", help="the ticket key id")
    pr.add_argument("--link-key", metavar="HEX", help="the node's link (Noise static) public key")
    pr.add_argument("--mlkem-key", metavar="HEX", help="the node's ML-KEM-768 public key")
    pr.add_argument(
        "--observe",
        type=float,
        default=30.0,
        help="seconds to watch an idle tunnel for padding and PING cadence (30)",
    )
    pr.add_argument("--timeout", type=float, default=10.0, help="per-step timeout (10)")
    _common(pr)
    he = sub.add_parser("hello", help="check a captured ClientHello against a browser template")
    he.add_argument("capture", type=Path, metavar="CAPTURE", help="hex, raw bytes or a pcap")
    he.add_argument("--template", type=Path, required=True, help="a spec/templates/*.json file")
    _common(he)
    ch = sub.add_parser("checks", help="list every check id and the spec section it enforces")
    ch.add_argument("--format", choices=["text", "json"], default="text")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for a usage error, 0 for --help
        return int(exc.code or 0)
    handlers = {
        "vectors": cmd_vectors,
        "probe": cmd_probe,
        "hello": cmd_hello,
        "checks": cmd_checks,
    }
    try:
        return handlers[args.cmd](args)
    except UsageError as exc:
        print(f"qnet-lint: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
