"""Mutation tests of ``qnet-lint vectors --impl``: broken harnesses are caught by check id."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qnet.lint.cli import main

REPO = Path(__file__).resolve().parents[1]
PY_HARNESS = f"{sys.executable} -m qnet.lint.harness_py"

# A harness that wraps the real one and breaks exactly one thing, chosen by argv[1].
BROKEN = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from qnet.lint import harness_py

    MODE = sys.argv[1]

    def flip(hexstr):
        b = bytearray(bytes.fromhex(hexstr))
        b[len(b) // 2] ^= 0x01
        return b.hex()

    def handle(req):
        op = req.get("op")
        resp = harness_py.handle(req)
        if MODE == "wrong-byte" and op == "sphinx_unwrap" and resp.get("result") == "Relay":
            resp["packet"] = flip(resp["packet"])
        elif MODE == "wrong-reason" and op == "sphinx_unwrap" and "error" in resp:
            if resp["error"]["reason"] == "bad_mac":
                resp["error"]["reason"] = "bad_point"
        elif MODE == "accepts-bad" and op == "cell_relay_decode" and "error" in resp:
            resp = {{"command": "DATA", "stream_id": 0, "data": ""}}
        elif MODE == "wrong-frame-class" and op == "frame_open" and resp.get("refused"):
            resp["refused"]["class"] = "MalformedFrame"
        elif MODE == "crash" and op == "ticket_build":
            sys.stdout.flush()
            os._exit(3)
        elif MODE == "garbage" and op == "frame_keys":
            return "not json"
        elif MODE == "timeout" and op == "lioness_encrypt":
            time.sleep(30)
        elif MODE == "no-hello" and op == "hello":
            os._exit(1)
        elif MODE == "partial" and op.startswith("inner_"):
            resp = {{"unsupported": True}}
        return resp

    def serve():
        import json
        for line in sys.stdin:
            req = json.loads(line)
            resp = handle(req)
            if isinstance(resp, str):
                sys.stdout.write(resp + "\\n")
            else:
                sys.stdout.write(json.dumps({{"id": req["id"], **resp}}) + "\\n")
            sys.stdout.flush()

    serve()
    """
)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("harness") / "broken_harness.py"
    path.write_text(BROKEN.format(repo=str(REPO)))
    return path


def lint(impl: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["vectors", "--impl", impl, "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


def failing(doc: dict) -> set[str]:
    return {r["check"] for r in doc["results"] if r["status"] == "fail"}


def test_python_harness_passes_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = lint(PY_HARNESS, capsys=capsys)
    # A vector format without harness operations yet is skipped, never failed.
    skipped = [r for r in doc["results"] if r["status"] == "skip"]
    assert all(r["check"] == "VEC-FILE-001" for r in skipped)
    assert failing(doc) == set(), [r for r in doc["results"] if r["status"] == "fail"]
    assert code == 0
    ran = {r["check"] for r in doc["results"] if r["status"] == "pass"}
    for cid in (
        "SPHINX-UNWRAP-001",
        "CELL-FWD-001",
        "HTX-FRAME-001",
        "INNER-INIT-001",
        "TICKET-BUILD-001",
        "DIR-DESC-002",
        "DIR-CONS-001",
    ):
        assert cid in ran


@pytest.mark.parametrize(
    ("mode", "check", "words"),
    [
        ("wrong-byte", "SPHINX-UNWRAP-001", "first difference at byte"),
        ("wrong-reason", "SPHINX-REJECT-001", "'bad_point', want 'bad_mac'"),
        ("accepts-bad", "CELL-REJECT-001", "accepted input that must be refused"),
        ("wrong-frame-class", "HTX-REJECT-001", "refused.class"),
        ("crash", "HARNESS-PROTO-003", "exit code 3"),
        ("garbage", "HARNESS-PROTO-001", "not JSON"),
        ("timeout", "HARNESS-PROTO-002", "no answer within"),
    ],
)
def test_broken_harness_is_caught(
    broken: Path, mode: str, check: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = lint(f"{sys.executable} {broken} {mode}", "--timeout", "2", capsys=capsys)
    assert code == 1
    bad = [r for r in doc["results"] if r["status"] == "fail"]
    assert {r["check"] for r in bad} <= {check, "HTX-OVERLAP-001"}  # overlap also opens frames
    hits = [r for r in bad if r["check"] == check]
    assert hits and all(words in r["reason"] for r in hits), hits
    # After a crash, garbage or timeout the harness is restarted: the rest still ran.
    assert sum(r["status"] == "pass" for r in doc["results"]) > 200


def test_unsupported_operations_are_skipped(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = lint(f"{sys.executable} {broken} partial", capsys=capsys)
    assert code == 0
    skipped = {r["check"] for r in doc["results"] if r["status"] == "skip"}
    assert {"INNER-INIT-001", "INNER-RESP-001", "INNER-REJECT-001"} <= skipped


def test_harness_that_cannot_start_is_a_usage_error(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vectors", "--impl", f"{sys.executable} {broken} no-hello"]) == 2
    assert main(["vectors", "--impl", "/nonexistent/harness"]) == 2
    assert "did not start" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path) -> None:
    assert main(["vectors", "--impl", PY_HARNESS, "--vectors", str(tmp_path)]) == 2
    assert main(["vectors", "--format", "yaml"]) == 2
    assert main(["nosuchcommand"]) == 2


def test_one_vector_file_and_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = str(REPO / "spec" / "vectors" / "htx_frames.json")
    for fmt in ("text", "junit", "sarif"):
        out = tmp_path / f"report.{fmt}"
        assert (
            main(
                [
                    "vectors",
                    "--impl",
                    PY_HARNESS,
                    "--vectors",
                    one,
                    "--format",
                    fmt,
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
    assert "HTX-FRAME-001" in (tmp_path / "report.text").read_text()
    suites = ET.parse(tmp_path / "report.junit").getroot()
    assert suites.get("failures") == "0" and suites.find("testsuite") is not None
    sarif = json.loads((tmp_path / "report.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    assert any(r["id"] == "HTX-REJECT-001" for r in sarif["runs"][0]["tool"]["driver"]["rules"])


def test_sarif_locates_failures_at_the_spec_section(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.sarif"
    code = main(
        [
            "vectors",
            "--impl",
            f"{sys.executable} {broken} wrong-reason",
            "--vectors",
            str(REPO / "spec" / "vectors" / "sphinx.json"),
            "--format",
            "sarif",
            "--output",
            str(out),
        ]
    )
    assert code == 1
    results = json.loads(out.read_text())["runs"][0]["results"]
    loc = results[0]["locations"][0]["physicalLocation"]
    assert results[0]["ruleId"] == "SPHINX-REJECT-001"
    assert loc["artifactLocation"]["uri"] == "spec/sphinx.md"
    line = (REPO / "spec" / "sphinx.md").read_text().splitlines()[loc["region"]["startLine"] - 1]
    assert line.startswith("## 11.")


def test_in_process_mode_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    one = str(REPO / "spec" / "vectors" / "cells.json")
    assert main(["vectors", "--vectors", one, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["check"] for r in doc["results"]} == {"INPROC-001"}


def test_harness_speaks_the_protocol_over_pipes() -> None:
    reqs = [
        {"id": 1, "op": "hello", "protocol": "qnet-harness-v1"},
        {"id": 2, "op": "x25519_public", "private": "00" * 31 + "01"},
        {"id": 3, "op": "no_such_op"},
        {"id": 4, "op": "cell_relay_decode", "plaintext": "ff" * 2024},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "qnet.lint.harness_py"],
        input="".join(json.dumps(r) + "\n" for r in reqs),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, 3, 4]
    assert answers[0]["protocol"] == "qnet-harness-v1" and "sphinx_unwrap" in answers[0]["ops"]
    assert len(answers[1]["public"]) == 64
    assert answers[2] == {"id": 3, "unsupported": True}
    assert answers[3]["error"]["reason"] == "bad_command"


# --- the libqnet harness ---------------------------------------------------------------

C_HARNESS = f"{sys.executable} -m qnet.lint.harness_libqnet"

# Wraps the libqnet harness and flips one byte of one answer, chosen by argv[1].
BROKEN_C = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from qnet.lint import harness_libqnet as H
    from qnet.lint.harness_py import serve

    MODE = sys.argv[1]
    real = H.make_handler(H.LibQnet(H.library_path()))

    def flip(hexstr):
        b = bytearray(bytes.fromhex(hexstr))
        b[len(b) // 2] ^= 0x01
        return b.hex()

    def handle(req):
        resp = real(req)
        op = req.get("op")
        if MODE == "cell-byte" and op == "cell_end_seal" and "body" in resp:
            resp["body"] = flip(resp["body"])
        elif MODE == "frame-byte" and op == "frame_seal" and "wire" in resp:
            resp["wire"] = flip(resp["wire"])
        return resp

    raise SystemExit(serve(handle))
    """
)


@pytest.fixture(scope="module")
def libqnet_built() -> None:
    """libqnet is there (the harness builds it when missing): skip, with why, when it cannot be."""
    import os
    import shutil

    from qnet.lint import harness_libqnet

    if os.environ.get(harness_libqnet.ENV_LIB):
        return
    if shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None:
        pytest.skip("libqnet cannot be built: no C compiler or make")
    try:
        harness_libqnet.library_path()
    except harness_libqnet.LibraryMissing as exc:
        pytest.skip(f"libqnet cannot be built: {exc}")


def test_libqnet_harness_passes_every_vector_it_supports(
    libqnet_built: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = lint(C_HARNESS, capsys=capsys)
    assert failing(doc) == set(), [r for r in doc["results"] if r["status"] == "fail"]
    assert code == 0
    ran = {r["check"] for r in doc["results"] if r["status"] == "pass"}
    for cid in (
        "SPHINX-UNWRAP-001",
        "SPHINX-REJECT-001",
        "SPHINX-REPLAY-001",
        "SPHINX-SURB-003",
        "CELL-FWD-001",
        "CELL-BWD-001",
        "CELL-REJECT-001",
        "LIONESS-001",
        "HTX-FRAME-001",
        "HTX-KEYUPDATE-001",
        "HTX-OVERLAP-001",
        "HTX-REJECT-001",
        "TICKET-BUILD-001",
    ):
        assert cid in ran
    # What libqnet does not cover is skipped, never failed.
    skipped = {r["check"] for r in doc["results"] if r["status"] == "skip"}
    assert {"INNER-INIT-001", "DIR-DESC-002", "SPHINX-BUILD-001"} <= skipped


@pytest.mark.parametrize(
    ("mode", "check"), [("cell-byte", "CELL-BWD-001"), ("frame-byte", "HTX-FRAME-001")]
)
def test_broken_libqnet_harness_is_caught(
    libqnet_built: None,
    tmp_path: Path,
    mode: str,
    check: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "broken_c_harness.py"
    path.write_text(BROKEN_C.format(repo=str(REPO)))
    code, doc = lint(f"{sys.executable} {path} {mode}", capsys=capsys)
    assert code == 1
    bad = [r for r in doc["results"] if r["status"] == "fail"]
    assert {r["check"] for r in bad} == {check}
    assert all("first difference at byte" in r["reason"] for r in bad), bad


def test_libqnet_harness_answers_unsupported(libqnet_built: None) -> None:
    reqs = [
        {"id": 1, "op": "hello", "protocol": "qnet-harness-v1"},
        {"id": 2, "op": "mlkem_public", "seed": "00" * 64},
        {"id": 3, "op": "cell_relay_decode", "plaintext": "ff" * 2024},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "qnet.lint.harness_libqnet"],
        input="".join(json.dumps(r) + "\n" for r in reqs),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert answers[0]["name"] == "libqnet" and "sphinx_unwrap" in answers[0]["ops"]
    assert answers[1] == {"id": 2, "unsupported": True}
    assert answers[2]["error"]["reason"] == "bad_command"
