"""The ``directory-v1`` vector checker, as linter findings (the work is in ``qnet.dir.vectors``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qnet.dir.vectors import check_directory as _check_directory

if TYPE_CHECKING:  # qnet.lint.vectors imports this module to register the checker
    from qnet.lint.vectors import Finding


def check_directory(doc: dict[str, Any]) -> list[Finding]:
    from qnet.lint.vectors import Finding

    return [Finding(name, what) for name, what in _check_directory(doc)]
