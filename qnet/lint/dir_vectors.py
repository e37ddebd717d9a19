"""The ``directory-v1`` vector checker, as linter findings (the work is in ``qnet.dir.vectors``)."""

from __future__ import annotations

from typing import Any

from qnet.dir.vectors import check_directory as _check_directory
from qnet.lint.findings import Finding


def check_directory(doc: dict[str, Any]) -> list[Finding]:

    return [Finding(name, what) for name, what in _check_directory(doc)]
