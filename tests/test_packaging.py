"""Installation never fails for want of a compiler: the fallback is one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _copy_tree(dst: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "cext", dst / "cext", ignore=shutil.ignore_patterns("*.c"))
    shutil.copytree(
        ROOT / "qnet", dst / "qnet", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )


def test_build_without_a_compiler_falls_back(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"}
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    notices = [
        ln for ln in proc.stderr.splitlines() if ln.startswith("qnet: Cython accelerator not built")
    ]
    assert len(notices) == 1, proc.stderr
    assert not list((tmp_path / "qnet").glob("_fast*.so"))
    # The package still works there, on the pure-Python path, and says so once.
    env = {k: v for k, v in os.environ.items() if k != "QNET_PURE"}
    env["PYTHONPATH"] = str(tmp_path)
    # Drop the editable-install finder so that ``qnet`` (and ``qnet._fast``) come from the copy.
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
        "from qnet.crypto import accel; print(accel.BACKEND_NAME)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.strip() == "python"
    assert run.stderr.count("using the pure-Python path") == 1


def test_forced_pure_path_says_so() -> None:
    env = {**os.environ, "QNET_PURE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "qnet.cli", "version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "hot path: python" in run.stdout
    assert "QNET_PURE is set" in run.stderr
