"""Sanity properties of the anonymity simulation (bench/anonymity.py), on tiny networks."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "anonymity.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_anonymity", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


anon = _load()
TINY = anon.Params(clients=40, width=2, mu=0.05, targets=60, measure_s=6.0, seed=3)
METHODS = ("global", "end_to_end")
Posterior = Callable[[object, int], dict[int, float]]


def _posterior(name: str) -> Posterior:
    method: Posterior = anon.posterior_global if name == "global" else anon.posterior_end_to_end
    return method


def _mean_entropy(params: object, name: str) -> float:
    trace = anon.simulate(params)
    method = _posterior(name)
    return statistics.fmean(anon.entropy_bits(method(trace, t)) for t in anon.pick_targets(trace))


@pytest.mark.parametrize("name", METHODS)
def test_posteriors_are_distributions_bounded_by_ideal(name: str) -> None:
    trace = anon.simulate(TINY)
    targets = anon.pick_targets(trace)
    assert len(targets) == TINY.targets
    method = _posterior(name)
    for t in targets:
        post = method(trace, t)
        assert math.isclose(sum(post.values()), 1.0, rel_tol=1e-9)
        assert all(0.0 <= q <= 1.0 for q in post.values())
        assert set(post) <= set(range(TINY.clients))
        assert post.get(trace.sender[t], 0.0) > 0.0  # the truth is never ruled out
        assert anon.entropy_bits(post) <= math.log2(TINY.clients) + 1e-9


@pytest.mark.parametrize("name", METHODS)
def test_entropy_grows_with_mu(name: str) -> None:
    low = _mean_entropy(replace(TINY, mu=0.005), name)
    high = _mean_entropy(replace(TINY, mu=0.2), name)
    assert high > low + 0.5


@pytest.mark.parametrize("name", METHODS)
def test_entropy_grows_with_clients(name: str) -> None:
    few = _mean_entropy(replace(TINY, clients=10), name)
    many = _mean_entropy(replace(TINY, clients=80), name)
    assert many > few + 0.5


@pytest.mark.parametrize("name", METHODS)
def test_no_delay_no_cover_links_every_packet(name: str) -> None:
    bare = replace(TINY, mu=0.0, loop_rate=0.0, drop_rate=0.0)
    assert _mean_entropy(bare, name) < 0.01


def test_global_observer_is_calibrated_and_no_weaker() -> None:
    # Mean mass on the true sender equals mean sum(p^2) for a calibrated posterior,
    # and seeing every hop cannot leave the observer less informed on average.
    r = anon.measure(replace(TINY, width=4, targets=120, measure_s=12.0))
    for name in METHODS:
        a = r["adversaries"][name]
        assert a["mean_true_sender_probability"] == pytest.approx(a["mean_sum_p_squared"], rel=0.35)
    g, e = r["adversaries"]["global"], r["adversaries"]["end_to_end"]
    assert g["entropy_bits"] <= e["entropy_bits"] + 0.05
    assert r["ideal_entropy_bits"] == pytest.approx(math.log2(TINY.clients), abs=1e-3)


def test_json_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert anon.main(["--json", "--clients", "20", "--targets", "20", "--measure-s", "2"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert out.strip().count("\n") == 0
    assert data["mode"] == "single" and data["params"]["clients"] == 20
    assert data["adversaries"]["global"]["effective_set"] <= 20
