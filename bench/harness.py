"""The small harness both benchmarks share: timing, rounds, the C baselines, reports.

Rows are timed for a fixed duration; every round runs every row once in a rotated
order so that noise from other work on this shared machine falls on all rows alike,
and the median of the rounds is reported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # run from a checkout without installing

from qnet.crypto import accel  # noqa: E402

C_DIR = BENCH_DIR / "c"
C_BUILD_DIR = C_DIR / "build"
C_FLAGS = ["-O3", "-march=native", "-Wall", "-Wextra"]


@dataclass(frozen=True)
class Sample:
    """One timed measurement: a rate, and the CPUs this process kept busy meanwhile.

    ``cpus`` is process CPU time over wall time (about 1.0 for one busy thread, 2.0
    for two); it falls when other work on the machine takes the cores. ``None`` for
    the C loops, which run in a child process.
    """

    rate: float
    cpus: float | None = None


Sampler = Callable[[], Sample]


class Unavailable(Exception):
    """A backend cannot be measured; the message says why."""


@dataclass
class Row:
    """One line of the report: a backend/operation and its samples."""

    name: str
    label: str
    unit: str
    sampler: Sampler | None = None
    reason: str | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.sampler is not None

    @property
    def rates(self) -> list[float]:
        return [s.rate for s in self.samples]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.samples else None

    @property
    def cpus(self) -> float | None:
        """Median CPUs busy during this row's samples (see ``Sample``)."""
        values = [s.cpus for s in self.samples if s.cpus is not None]
        return round(statistics.median(values), 2) if values else None

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "available": self.available,
            "reason": self.reason,
            "median": self.median,
            "samples": [round(r, 1) for r in self.rates],
            "cpus_busy": self.cpus,
            "cpus_busy_samples": [
                None if s.cpus is None else round(s.cpus, 2) for s in self.samples
            ],
        }


def load_fast() -> tuple[ModuleType | None, str | None]:
    """Import the Cython module ``qnet._fast``; ``(None, why)`` when it is missing."""
    try:
        module = importlib.import_module("qnet._fast")
    except ImportError as exc:
        return None, f"qnet._fast not importable ({exc}); build: setup.py build_ext --inplace"
    return module, None


def build_c(name: str) -> tuple[Path | None, str | None]:
    """Compile ``bench/c/<name>.c`` into ``bench/c/build/`` (when stale).

    Returns ``(binary, None)``, or ``(None, why)`` when there is no compiler or
    libsodium. Compiler warnings are echoed to stderr.
    """
    source = C_DIR / f"{name}.c"
    binary = C_BUILD_DIR / name
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary, None
    compiler = os.environ.get("CC", "cc")
    C_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, *C_FLAGS, "-o", str(binary), str(source), "-lsodium"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"C compiler `{compiler}` not usable: {exc}"
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
        return None, f"compiling {source.name} failed (C compiler or libsodium missing?): {first}"
    if proc.stderr.strip():
        print(f"warning: {source.name} compiled with warnings:\n{proc.stderr}", file=sys.stderr)
    return binary, None


def run_c(cmd: Sequence[str]) -> dict[str, Any]:
    """Run a C loop and parse its one JSON line; raises ``Unavailable`` on failure."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"running {cmd[0]} failed: {exc}") from exc
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise Unavailable(
            f"{Path(cmd[0]).name} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
        ) from exc
    if proc.returncode != 0:
        raise Unavailable(f"{Path(cmd[0]).name} exited {proc.returncode}: {result}")
    return result


def rate_for(step: Callable[[], int], seconds: float) -> Sample:
    """Call ``step`` (returns units done) until ``seconds`` pass; units per second."""
    done = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += step()
        now = time.perf_counter()
        if now >= deadline:
            return Sample(done / (now - start), (time.process_time() - cpu0) / (now - start))


def rate_threads(steps: Sequence[Callable[[], int]], seconds: float) -> Sample:
    """Run each step in its own thread for ``seconds``; total units per second."""
    counts = [0] * len(steps)
    ends = [0.0] * len(steps)
    barrier = threading.Barrier(len(steps) + 1)

    def worker(i: int) -> None:
        barrier.wait()
        deadline = time.perf_counter() + seconds
        while True:
            counts[i] += steps[i]()
            now = time.perf_counter()
            if now >= deadline:
                ends[i] = now
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    barrier.wait()
    cpu0 = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(ends) - start
    return Sample(sum(counts) / wall, (time.process_time() - cpu0) / wall)


def run_rounds(
    rows: Sequence[Row], repeats: int, progress: bool, *, drop_unavailable: bool = False
) -> None:
    """Sample every available row ``repeats`` times, rotating the order each round.

    With ``drop_unavailable``, a sampler that raises ``Unavailable`` takes its row
    out of the run (no sampler, the message as the reason, its samples discarded)
    instead of ending it.
    """
    live = [r for r in rows if r.sampler is not None]
    for rnd in range(repeats):
        shift = rnd % len(live) if live else 0
        for row in live[shift:] + live[:shift]:
            if row.sampler is None:
                continue  # dropped earlier in this round
            try:
                row.samples.append(row.sampler())
            except Unavailable as exc:
                if not drop_unavailable:
                    raise
                row.sampler, row.reason = None, str(exc)
                row.samples.clear()
                print(f"warning: {row.name} dropped: {exc}", file=sys.stderr)
        if progress:
            print(f"  round {rnd + 1}/{repeats} done", file=sys.stderr)


def ratio(num: Row, den: Row | float) -> float | None:
    """``num.median / den`` (a row's median or a constant); ``None`` if either is missing."""
    top = num.median
    bottom = den.median if isinstance(den, Row) else den
    if top is None or not bottom:
        return None
    return top / bottom


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, core count, library versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "libsodium": _libsodium_version(),
        "openssl_via_cryptography": _openssl_version(),
        "qnet_accel_backend": accel.BACKEND_NAME,
        "loadavg_start": loadavg(),
    }
    return info


def _libsodium_version() -> str | None:
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.sodium_version_string.restype = ctypes.c_char_p
        return str(lib.sodium_version_string().decode())
    except (OSError, AttributeError):
        return None


def _openssl_version() -> str | None:
    try:
        from cryptography.hazmat.backends.openssl import backend

        return str(backend.openssl_version_text())
    except Exception:  # noqa: BLE001 - informational only
        return None


def rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB (``VmRSS``), ``None`` if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fmt_num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio_lines(
    ratios: dict[str, float | None], targets: dict[str, float | None], notes: dict[str, str]
) -> Iterator[str]:
    """Readable lines for the ratio table."""
    yield f"{'ratio':<34}{'value':>8}  {'target':>8}  met"
    for key, value in ratios.items():
        target = targets.get(key)
        shown = "-" if value is None else f"{value:.2f}"
        tgt = "-" if target is None else f">= {target:g}"
        met = "-" if target is None or value is None else ("yes" if value >= target else "NO")
        note = f"   {notes[key]}" if key in notes else ""
        yield f"{key:<34}{shown:>8}  {tgt:>8}  {met}{note}"


def meets(
    ratios: dict[str, float | None], targets: dict[str, float | None]
) -> dict[str, bool | None]:
    """For every ratio with a target: met (bool), or ``None`` when not measurable."""
    out: dict[str, bool | None] = {}
    for key, target in targets.items():
        value = ratios.get(key)
        if target is not None:
            out[key] = None if value is None else value >= target
    return out
