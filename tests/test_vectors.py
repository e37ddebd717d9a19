"""spec/vectors reproduced byte for byte by every backend, via the linter's checkers."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_vectors

from qnet.lint import cli as lint_cli
from qnet.lint.vectors import check_cells, check_file, check_sphinx

SPHINX = load_vectors("sphinx.json")
CELLS = load_vectors("cells.json")
ROOT = Path(__file__).resolve().parent.parent


def test_sphinx_vectors(backend: str) -> None:
    assert check_sphinx(SPHINX) == []


def test_cells_vectors(backend: str) -> None:
    assert check_cells(CELLS) == []


def test_vectors_cover_what_the_spec_promises() -> None:
    assert [len(v["path"]) for v in SPHINX["forward"]] == [1, 3, 5]
    reasons = {v["error"] for v in SPHINX["negative"]}
    assert {"bad_mac", "bad_payload", "replay", "bad_length", "bad_point"} <= reasons
    assert {"bad_tag", "bad_length", "bad_header", "bad_command", "bad_padding"} <= {
        v["error"] for v in CELLS["negative"]
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["forward"][1].__setitem__("packet", "00" + d["forward"][1]["packet"][2:]),
        lambda d: d["forward"][2]["steps"][3].__setitem__("delay_us", 99),
        lambda d: d["surb"].__setitem__("opened_reply", "ff" * 1496),
        lambda d: d["negative"][0].__setitem__("error", "bad_point"),
        lambda d: d["negative"][4].__setitem__("packet", d["forward"][1]["packet"]),
    ],
)
def test_checker_notices_a_wrong_vector(mutate: object) -> None:
    doc = copy.deepcopy(SPHINX)
    mutate(doc)  # type: ignore[operator]
    assert check_sphinx(doc)


def test_checker_reports_unknown_or_broken_files() -> None:
    assert check_file({"format": "nope"})
    assert check_file({"format": "cells-v1"})


def test_lint_cli_on_bad_directory(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"format": "cells-v1", "hops": []}')
    assert lint_cli.main(["vectors", "--vectors", str(tmp_path), "--backend", "python"]) == 1
    assert lint_cli.main(["vectors", "--backend", "python"]) == 0


def test_generator_reproduces_the_checked_in_files() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.gen_vectors", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
