"""What a vector checker reports: findings, and the collector that gathers them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between an implementation and a vector."""

    vector: str
    what: str

    def __str__(self) -> str:
        return f"{self.vector}: {self.what}"


class Collector:
    """Compares values for one vector and keeps a finding per mismatch."""

    def __init__(self, vector: str) -> None:
        self.vector = vector
        self.findings: list[Finding] = []

    def same(self, what: str, got: object, want: object) -> bool:
        if got != want:
            self.findings.append(
                Finding(self.vector, f"{what}: got {_short(got)}, want {_short(want)}")
            )
            return False
        return True

    def fail(self, what: str) -> None:
        self.findings.append(Finding(self.vector, what))


def _short(v: object) -> str:
    s = v.hex() if isinstance(v, bytes) else str(v)
    return s if len(s) <= 40 else s[:37] + "..."
