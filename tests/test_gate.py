"""The gate's statistics and outputs: an unchanged model passes and a 50% slower copy fails when measured
interleaved on this machine; a 2-point accuracy drop is caught by the paired bootstrap; thin data and straddling
intervals are inconclusive; waivers, geometric means, JUnit/Markdown/JSON, and environment mismatches refused.
(The full false-alarm and detection-rate study is perf/gate_power.py, in benchmarks/RESULTS.md.)"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgedistill.benchmarks.gate import GateResult, environment_mismatch, evaluate
from edgedistill.benchmarks.gate_output import junit, markdown
from edgedistill.benchmarks.interleave import Pair, interleave
from tests.gate_fixtures import base_model, report_for, slowed_copy

CFG = {"confidence": 0.95, "min_samples": 30, "rounds": 5, "waivers": [],
       "budgets": [{"artifacts": "*", "devices": "host", "p50_ms": {"max_regression": 0.10}}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gate")
    base = base_model(d / "base.onnx")
    return {"base": base, "same": slowed_copy(base, d / "same.onnx", 0), "slow": slowed_copy(base, d / "slow.onnx",
                                                                                            600)}


def _gate(models: dict[str, Path], candidate: str, rounds: int = 5) -> GateResult:
    got = interleave([Pair("m", models[candidate], models["base"])], rounds, 1, 10, 150)["m"]
    flat = [x for r in got["candidate"] for x in r]
    base = [x for r in got["baseline"] for x in r]
    return evaluate(report_for("m", flat), CFG, report_for("m", base), {("m", "host"): got})


def test_unchanged_model_passes_interleaved(models: dict[str, Path]) -> None:
    r = _gate(models, "same")
    (c,) = r.checks
    assert r.verdict == "pass", c
    assert c.method.startswith("interleaved rounds (5)") and c.interval[0] <= c.ratio <= c.interval[1]


def test_a_much_slower_copy_fails_interleaved(models: dict[str, Path]) -> None:
    r = _gate(models, "slow")
    (c,) = r.checks
    assert r.verdict == "fail" and c.interval[0] > 1.10, c
    assert r.geomean["p50_ms"] == pytest.approx(c.ratio)


def test_accuracy_drop_of_two_points_is_caught() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random(360) < 0.95).astype(int)
    worse = base.copy()
    worse[np.flatnonzero(base)[:7]] = 0  # 7 of 360 test images turn wrong: -1.9 points
    cfg = {**CFG, "budgets": [{"artifacts": "*", "accuracy": {"max_drop": 0.005}}]}
    samples = list(rng.normal(1.0, 0.01, 100))
    r = evaluate(report_for("m", samples, worse.tolist()), cfg, report_for("m", samples, base.tolist()))
    (c,) = r.checks
    assert r.verdict == "fail" and c.interval[1] < -0.005 and c.ratio == pytest.approx(-7 / 360), c
    same = evaluate(report_for("m", samples, base.tolist()), cfg, report_for("m", samples, base.tolist()))
    assert same.verdict == "pass"


def test_absolute_limits_use_intervals_and_thin_data_is_inconclusive() -> None:
    rng = np.random.default_rng(1)
    s = list(rng.normal(10.0, 0.5, 200))
    cfg = {**CFG, "budgets": [{"p90_ms": {"max": 12.0}}]}
    assert evaluate(report_for("m", s), cfg).verdict == "pass"
    cfg = {**CFG, "budgets": [{"p90_ms": {"max": float(np.percentile(s, 90))}}]}  # the interval straddles it
    assert evaluate(report_for("m", s), cfg).verdict == "inconclusive"
    cfg = {**CFG, "budgets": [{"p90_ms": {"max": 9.0}}]}
    assert evaluate(report_for("m", s), cfg).verdict == "fail"
    r = evaluate(report_for("m", s[:10]), {**CFG, "budgets": [{"p90_ms": {"max": 99.0}}]})
    assert r.verdict == "inconclusive" and "min_samples" in r.checks[0].warning


def test_waivers_and_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    s = list(rng.normal(10.0, 0.2, 100))
    cfg = {**CFG, "budgets": [{"p50_ms": {"max": 5.0}, "size_kb": {"max": 1.0}}],
           "waivers": [{"artifacts": "m", "metric": "p50_ms", "devices": "*", "reason": "accepted in #123"}]}
    rep = report_for("m", s)
    rep["models"][0]["size_bytes"] = 4096
    r = evaluate(rep, cfg)
    by = {c.metric: c for c in r.checks}
    assert by["p50_ms"].verdict == "waived" and by["p50_ms"].waived == "accepted in #123"
    assert by["size_kb"].verdict == "fail" and r.verdict == "fail" and r.exit_code == 1
    xml = ET.fromstring(junit(r).split("?>", 1)[1])
    assert xml.get("tests") == "2" and xml.get("failures") == "1"
    assert [c.get("name") for c in xml.iter("testcase")] == [c.name for c in r.checks]
    md = markdown(r)
    assert "❌" in md and "waived: accepted in #123" in md
    assert json.loads(json.dumps(r.to_dict()))["verdict"] == "fail"


def test_environment_mismatch_is_refused() -> None:
    a = {"environment": {"cpu_model": "AMD EPYC", "cpu_features": ["avx2"], "runtimes": {"onnxruntime": "1.32"},
                         "threads": [1]}}
    b = {"environment": {**a["environment"], "cpu_features": ["avx2", "avx512_vnni"]}}
    assert environment_mismatch(a, a) == []
    assert environment_mismatch(a, b) and "cpu_features" in environment_mismatch(a, b)[0]
    assert environment_mismatch(a, {}) != []


def test_the_speed_up_split_is_gateable() -> None:
    """A team can require that distillation itself buys a speed-up (teacher vs student file, same runtime), apart
    from what the runtime and quantisation buy."""
    rep = report_for("m", list(np.random.default_rng(2).normal(1.0, 0.01, 100)))
    rep["models"][0].update(distill_speedup={"1": 1.05}, runtime_speedup={"1": 20.0})
    for budget, verdict in (({"distill_speedup": {"min": 2.0}}, "fail"), ({"distill_speedup": {"min": 1.0}}, "pass"),
                            ({"runtime_speedup": {"min": 10.0}}, "pass")):
        assert evaluate(rep, {**CFG, "budgets": [budget]}).verdict == verdict, budget
