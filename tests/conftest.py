"""Shared fixtures: run hot-path tests against every backend built here.

``QNET_REQUIRE_EXT=1`` (set by .ci/run) turns a missing Cython accelerator into a
test failure instead of a skip, so CI cannot go green on the fallback alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qnet.crypto import accel

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"


@pytest.fixture(params=["python", "cython"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Select a hot-path backend for the duration of one test."""
    name: str = request.param
    if name not in accel.available():
        if os.environ.get("QNET_REQUIRE_EXT"):
            pytest.fail("the Cython accelerator is not built but QNET_REQUIRE_EXT is set")
        pytest.skip("Cython accelerator not built here (pure-Python path only)")
    previous = accel.BACKEND_NAME
    accel.select(name)
    try:
        yield name
    finally:
        accel.select(previous)


def load_vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())
