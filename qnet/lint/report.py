"""Check results and the four output formats of ``qnet-lint`` (text, json, junit, sarif).

Every check has a stable id (``SPHINX-UNWRAP-001``), the spec section it enforces
and a title; every result names the check, what was checked (a vector, an
endpoint), a status and, when it did not pass, a one-line reason. A run passes
when no result has the status ``fail``; ``skip`` (not applicable, or the
implementation does not offer the operation) never fails a run.

Exit codes, shared by all subcommands: 0 all checks passed, 1 a check failed,
2 usage error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, Literal
from xml.sax.saxutils import escape, quoteattr

Status = Literal["pass", "fail", "skip"]
FORMATS: Final = ("text", "json", "junit", "sarif")
SPEC_DIR: Final = Path(__file__).resolve().parents[2] / "spec"
TOOL_VERSION: Final = "0.1.0"


@dataclass(frozen=True, slots=True)
class Check:
    """One rule: ``spec`` is "file §section", e.g. ``spec/sphinx.md §7``."""

    id: str
    spec: str
    title: str


@dataclass(frozen=True, slots=True)
class Result:
    """One application of a check to one subject (a vector, an endpoint)."""

    check: Check
    subject: str
    status: Status
    reason: str = ""


def passed(check: Check, subject: str) -> Result:
    return Result(check, subject, "pass")


def failed(check: Check, subject: str, reason: str) -> Result:
    return Result(check, subject, "fail", _one_line(reason))


def skipped(check: Check, subject: str, reason: str) -> Result:
    return Result(check, subject, "skip", _one_line(reason))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def exit_code(results: Iterable[Result]) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0


def render(results: Sequence[Result], fmt: str, *, tool: str = "qnet-lint") -> str:
    """``results`` in ``fmt`` (one of ``FORMATS``); ``ValueError`` for another name."""
    if fmt == "text":
        return render_text(results)
    if fmt == "json":
        return render_json(results)
    if fmt == "junit":
        return render_junit(results, tool)
    if fmt == "sarif":
        return render_sarif(results, tool)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def _counts(results: Sequence[Result]) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "skip": 0}
    for r in results:
        out[r.status] += 1
    return out


def _by_check(results: Sequence[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.check.id, []).append(r)
    return groups


def render_text(results: Sequence[Result]) -> str:
    """One line per check id (with its counts), then each failure and skip indented."""
    lines = []
    for cid, group in _by_check(results).items():
        c = _counts(group)
        status = "FAIL" if c["fail"] else ("PASS" if c["pass"] else "SKIP")
        counts = ", ".join(f"{n} {k}" for k, n in c.items() if n)
        lines.append(f"{status:<4} {cid:<22} {group[0].check.spec:<28} {counts}")
        for r in group:
            if r.status != "pass":
                lines.append(f"       {r.status}: {r.subject}: {r.reason}")
    c = _counts(results)
    lines.append(f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped")
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result]) -> str:
    doc = {
        "tool": "qnet-lint",
        "version": TOOL_VERSION,
        "summary": _counts(results),
        "results": [
            {
                "check": r.check.id,
                "spec": r.check.spec,
                "title": r.check.title,
                "subject": r.subject,
                "status": r.status,
                "reason": r.reason,
            }
            for r in results
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def render_junit(results: Sequence[Result], tool: str) -> str:
    """One ``testsuite`` per check id, one ``testcase`` per result."""
    c = _counts(results)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name={quoteattr(tool)} tests="{len(results)}" '
        f'failures="{c["fail"]}" skipped="{c["skip"]}">',
    ]
    for cid, group in _by_check(results).items():
        g = _counts(group)
        out.append(
            f'  <testsuite name={quoteattr(cid)} tests="{len(group)}" '
            f'failures="{g["fail"]}" skipped="{g["skip"]}">'
        )
        for r in group:
            head = f"    <testcase classname={quoteattr(cid)} name={quoteattr(r.subject)}"
            if r.status == "pass":
                out.append(head + "/>")
                continue
            tag = "failure" if r.status == "fail" else "skipped"
            msg = quoteattr(f"{r.reason} ({r.check.spec})")
            out.append(head + ">")
            out.append(f"      <{tag} message={msg}>{escape(r.check.title)}</{tag}>")
            out.append("    </testcase>")
        out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"


_SECTION = re.compile(r"^(?P<file>spec/[\w./-]+\.md)(?:\s+§(?P<sec>[\w.]+))?")


@cache
def spec_line(spec: str) -> tuple[str, int]:
    """``("spec/sphinx.md", line)`` of the heading of ``spec``'s section (line 1 if unknown)."""
    m = _SECTION.match(spec)
    if m is None:
        return spec, 1
    path = m["file"]
    sec = m["sec"]
    try:
        text = (SPEC_DIR.parent / path).read_text().splitlines()
    except OSError:
        return path, 1
    if sec:
        for n, line in enumerate(text, 1):
            if re.match(rf"^#+\s+{re.escape(sec)}[.\s]", line + " "):
                return path, n
    return path, 1


def render_sarif(results: Sequence[Result], tool: str) -> str:
    """SARIF 2.1.0: every check is a rule; failures are ``error`` results, located at the
    spec section they enforce (so code scanning can link to the text); skips are ``note``."""
    checks: dict[str, Check] = {}
    for r in results:
        checks.setdefault(r.check.id, r.check)
    index = {cid: n for n, cid in enumerate(checks)}
    rules = [
        {
            "id": c.id,
            "name": c.id.replace("-", ""),
            "shortDescription": {"text": c.title},
            "fullDescription": {"text": f"{c.title} ({c.spec})"},
            "properties": {"spec": c.spec},
        }
        for c in checks.values()
    ]
    sarif_results = []
    for r in results:
        if r.status == "pass":
            continue
        uri, line = spec_line(r.check.spec)
        sarif_results.append(
            {
                "ruleId": r.check.id,
                "ruleIndex": index[r.check.id],
                "level": "error" if r.status == "fail" else "note",
                "message": {"text": f"{r.subject}: {r.reason}"},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": uri},
                            "region": {"startLine": line},
                        }
                    }
                ],
            }
        )
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": tool,
                        "version": TOOL_VERSION,
                        "rules": rules,
                    }
                },
                "results": sarif_results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
