"""Circuit build timeouts learned from observed build times (spec/paths.md §5), pure.

    cbt = BuildTimeouts(TimeoutConfig.builder().build())
    with trio.move_on_after(cbt.timeout(now)) as scope: ...build...
    if scope.cancelled_caught: cbt.record_timeout(now)
    else: cbt.record_success(elapsed, now)

In the spirit of Tor's circuit build timeout (CBT), simplified: instead of
fitting a Pareto curve, the timeout is the ``quantile`` (0.8) of the last
``window`` build times, clamped to ``[floor, ceiling]``. Until ``min_samples``
builds have been seen it is ``initial``. A build given up on counts as a
sample equal to the timeout it was given (we never learn how long it would
have taken), so heavy loss holds the timeout up instead of pulling it down.

If most recent builds time out (``reset_timeouts`` of the last ``recent``),
the network has probably changed under us (a new uplink, a suspend): the
samples are thrown away and the timeout doubles (up to ``ceiling``) until
enough new samples arrive. Samples older than ``max_sample_age`` are forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from qnet.client.path import ConfigBuilder, _check_int


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"TimeoutConfig.{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"TimeoutConfig.{name} must be positive, got {value}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutConfig:
    """Build-timeout learning. Make one with ``TimeoutConfig.builder()...build()``.

    initial: the timeout before enough samples (10 s; also ``CircuitConfig``'s default).
    floor / ceiling: the learned timeout never leaves this range (0.5 s, 60 s).
    quantile: the share of builds expected to finish in time (0.8, as Tor).
    window: how many recent samples are kept (100).
    min_samples: samples needed before learning applies (20).
    max_sample_age: samples older than this are dropped (86,400 s).
    recent / reset_timeouts: if at least ``reset_timeouts`` of the last ``recent``
        outcomes were timeouts, start learning afresh from twice the timeout (20, 15).
    """

    initial: float = 10.0
    floor: float = 0.5
    ceiling: float = 60.0
    quantile: float = 0.8
    window: int = 100
    min_samples: int = 20
    max_sample_age: float = 86_400.0
    recent: int = 20
    reset_timeouts: int = 15

    def __post_init__(self) -> None:
        for name in ("initial", "floor", "ceiling", "max_sample_age"):
            _check_seconds(name, getattr(self, name))
        if not self.floor <= self.initial <= self.ceiling:
            raise ValueError("TimeoutConfig needs floor <= initial <= ceiling")
        q = self.quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"TimeoutConfig.quantile must be in (0, 1], got {q!r}")
        _check_int("TimeoutConfig", "window", self.window, 1)
        _check_int("TimeoutConfig", "min_samples", self.min_samples, 1, self.window)
        _check_int("TimeoutConfig", "recent", self.recent, 1)
        _check_int("TimeoutConfig", "reset_timeouts", self.reset_timeouts, 1, self.recent)

    @classmethod
    def builder(cls, **values: Any) -> ConfigBuilder[TimeoutConfig]:
        return ConfigBuilder(cls, **values)


class BuildTimeouts:
    """The learned circuit build timeout. Feed it every build's outcome."""

    def __init__(self, config: TimeoutConfig | None = None) -> None:
        self.config = config if config is not None else TimeoutConfig()
        self._samples: deque[tuple[float, float]] = deque(maxlen=self.config.window)
        self._recent: deque[bool] = deque(maxlen=self.config.recent)  # True = timed out
        self._fallback = self.config.initial
        self.resets = 0

    def _expire(self, now: float) -> None:
        while self._samples and now - self._samples[0][0] > self.config.max_sample_age:
            self._samples.popleft()

    def samples(self, now: float) -> list[float]:
        """The build times (seconds) that count at ``now``, oldest first."""
        self._expire(now)
        return [s for _, s in self._samples]

    def timeout(self, now: float) -> float:
        """Seconds to give the next build."""
        cfg = self.config
        values = self.samples(now)
        if len(values) < cfg.min_samples:
            return self._fallback
        ordered = sorted(values)
        rank = max(1, math.ceil(cfg.quantile * len(ordered)))  # nearest-rank quantile
        return min(cfg.ceiling, max(cfg.floor, ordered[rank - 1]))

    def record_success(self, seconds: float, now: float) -> None:
        """A build finished after ``seconds``."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("seconds must be a number")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a build time must be finite and non-negative, got {seconds}")
        self._samples.append((now, float(seconds)))
        self._recent.append(False)

    def record_timeout(self, now: float) -> None:
        """A build was given up on after ``timeout(now)`` seconds."""
        given = self.timeout(now)
        self._samples.append((now, given))
        self._recent.append(True)
        cfg = self.config
        if len(self._recent) == cfg.recent and sum(self._recent) >= cfg.reset_timeouts:
            self._fallback = min(cfg.ceiling, max(cfg.floor, 2 * given))
            self._samples.clear()
            self._recent.clear()
            self.resets += 1
