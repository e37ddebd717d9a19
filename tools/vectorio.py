"""The write-or-check step every vector generator shares.

python -m tools.gen_X            # write the file
python -m tools.gen_X --check    # exit 1 if the file differs from a fresh run
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def render(doc: Any) -> str:
    return json.dumps(doc, indent=1) + "\n"


def write_or_check(
    files: dict[Path, Callable[[], Any]], argv: list[str] | None, description: str
) -> int:
    """Generate each file's document; write it, or with ``--check`` compare it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    bad = 0
    for path, generate in files.items():
        text = render(generate())
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{path}: differs from a fresh generation", file=sys.stderr)
                bad = 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path} ({len(text)} bytes)")
    return bad
