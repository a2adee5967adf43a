"""``export --auto``'s decision on synthetic measurements: a variant that breaks the retention budget is never picked,
however fast; failed parity (at export or on the device) and a device where it did not run reject it with the
reason; ties within the measurement interval go to the smaller file; nothing qualifying is a clear outcome that the
gate (and only the gate) fails on. The CLI path on real runs is in test_cli.py (vision) and test_llm_pipeline.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedistill.benchmarks.row import Row
from edgedistill.benchmarks.select import Candidate, decide
from edgedistill.core.tolerances import PARITY_BARS, parity_bar_name

BUDGET = 0.99


def measured(name: str, p50: float, samples: list[float], bar: str, top1: float, max_abs_diff: float) -> Row:
    """The artifact's row on the device: its timing, its parity bar and its outputs' check against the source."""
    return Row(name, "vision", "artifact", "host", label="measured", p50_ms=p50, samples_ms=samples,
               parity_bar_name=bar, parity_bar=PARITY_BARS[bar].floor, source_agreement=top1,
               source_max_abs_diff=max_abs_diff, source_fp32_ok=top1 == 1.0)


def cand(name: str, p50: float, retention: float = 1.0, size: int = 1000, *, spread: float = 0.01,
         export_ok: bool = True, ran: bool = True, top1: float = 1.0, fp32: bool = False) -> Candidate:
    """A measured artifact: five runs around ``p50`` (± ``spread`` relative), its score ``retention`` × 0.9 against
    a source's 0.9, and its device outputs' top-1 agreement with the source (bar: fp32, else vision int8's 0.98)."""
    samples = [p50 * (1 + spread * k) for k in (-1, -0.5, 0, 0.5, 1)]
    row = measured(name, p50, samples, "fp32" if fp32 else "vision int8", top1, 0.0 if fp32 else 0.01)
    return Candidate(name, "onnx", name, size, export_ok, "" if export_ok else "top1_agreement >= 0.98",
                     row if ran else None, None if ran else "agent exited 1: Killed",
                     0.9 * retention if ran else None, 0.9)


def by_name(decision: dict) -> dict[str, dict]:
    return {c["name"]: c for c in decision["candidates"]}


def test_the_fastest_variant_that_breaks_the_budget_is_never_picked() -> None:
    d = decide([cand("fp32", 2.0, 1.0, 4000, fp32=True), cand("int8_static", 0.5, 0.972, 1000),
                cand("int8_dynamic", 1.2, 0.995, 1100)], "host", BUDGET)
    c = by_name(d)
    assert d["chosen"] == "int8_dynamic" and c["int8_dynamic"]["status"] == "chosen"
    assert c["int8_static"]["status"] == "rejected" and c["int8_static"]["reason"] == "retention 0.9720 < 0.99"
    assert c["fp32"]["status"] == "qualified" and c["fp32"]["reason"].startswith("meets the budget; slower: 2 ms")
    assert c["int8_static"]["retention"] == pytest.approx(0.972) and c["int8_static"]["p50_ms"] == 0.5


def test_a_retention_just_under_the_budget_never_prints_as_meeting_it() -> None:
    d = decide([cand("a", 1.0, 0.98996)], "host", BUDGET)
    assert d["chosen"] is None and by_name(d)["a"]["reason"] == "retention 0.9899 < 0.99"


def test_failed_parity_and_a_device_where_it_did_not_run_are_rejected_with_their_reason() -> None:
    d = decide([cand("export-fails", 0.1, export_ok=False), cand("wrong-here", 0.2, top1=0.90),
                cand("did-not-run", 0.3, ran=False), cand("fp32", 1.0, fp32=True)], "rpi4-constrained", BUDGET)
    c = by_name(d)
    assert d["chosen"] == "fp32"
    assert c["export-fails"]["reason"] == "failed parity at export (top1_agreement >= 0.98)"
    assert c["wrong-here"]["reason"].startswith("outputs on rpi4-constrained disagree with its PyTorch source: top-1 "
                                                "agreement 0.900")
    assert c["did-not-run"]["reason"] == "did not run on rpi4-constrained: agent exited 1: Killed"
    assert c["did-not-run"]["p50_ms"] is None and c["did-not-run"]["retention"] is None


def test_ties_within_the_measurement_interval_go_to_the_smaller_file() -> None:
    # 1.00 ms ± 5% and 1.03 ms ± 5%: the ranges overlap, so the 3% gap is noise and the smaller file wins
    d = decide([cand("fast-big", 1.00, size=4000, spread=0.05), cand("slow-small", 1.03, size=1000, spread=0.05),
                cand("far", 2.0, size=10)], "host", BUDGET)
    c = by_name(d)
    assert d["chosen"] == "slow-small" and "tied within noise" in d["reason"] and "fast-big" in d["reason"]
    assert c["fast-big"]["reason"] == "meets the budget; tied within noise with slow-small, larger file (4 KB vs 1 KB)"
    assert c["far"]["reason"].startswith("meets the budget; slower")  # the smallest file, but clearly slower
    # a gap wider than both ranges decides: the faster one, whatever its size
    assert decide([cand("fast-big", 1.0, size=4000), cand("slow-small", 1.5, size=1000)], "host", BUDGET)[
        "chosen"] == "fast-big"


def test_nothing_qualifying_is_a_clear_outcome() -> None:
    d = decide([cand("a", 1.0, 0.5), cand("b", 2.0, ran=False)], "qemu-arm64:rpi4", BUDGET)
    assert d["chosen"] is None and d["reason"].startswith("no artifact meets the budget on qemu-arm64:rpi4")
    assert all(c["status"] == "rejected" and c["reason"] for c in d["candidates"])
    assert decide([], "host", BUDGET)["chosen"] is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 10), st.floats(0.5, 1.2), st.integers(1, 10_000), st.booleans(),
                          st.booleans(), st.floats(0.8, 1.0)), min_size=1, max_size=6),
       st.floats(0.9, 1.0))
def test_the_chosen_one_always_meets_the_budget(specs: list, budget: float) -> None:
    cands = [cand(f"v{i}", p50, ret, size, export_ok=ok, ran=ran, top1=top1)
             for i, (p50, ret, size, ok, ran, top1) in enumerate(specs)]
    d = decide(cands, "host", budget)
    meets = {c.name for c in cands if c.row and c.export_ok and (c.row.source_agreement or 0) >= 0.98
             and c.retention is not None and c.retention >= budget}
    assert (d["chosen"] is None) == (not meets)
    if d["chosen"] is not None:
        assert d["chosen"] in meets
        fastest = min(meets, key=lambda n: next(c.row.p50_ms for c in cands if c.name == n and c.row))
        chosen = by_name(d)[d["chosen"]]
        assert chosen["interval"][0] <= by_name(d)[fastest]["interval"][1]  # the fastest, or tied with it
    for c in d["candidates"]:
        assert c["reason"] and (c["status"] == "rejected") == (c["name"] not in meets)


def test_the_report_ships_the_choice_and_the_gate_fails_when_there_is_none() -> None:
    from edgedistill.benchmarks.gate import check
    from edgedistill.toolchain.llm.report import ReportInputs, build, to_markdown
    from edgedistill.toolchain.recipe import GateConfig

    def doc(score: float, tg: float) -> dict:
        return {"runs": {"1": {"task": {"task_score": score}, "tg_tps": tg, "latency_ms": dict.fromkeys(
            ("p50", "p90", "p99", "mean", "min"), 1000 / tg)}}, "error": None}

    artifacts = [{"name": n, "format": "gguf", "variant": n, "source": "kd", "size_bytes": 1,
                  "fidelity": {"perplexity": 1.5, "kld_mean": 0.0, "kld_p99": 0.0, "same_top_token": 1.0,
                               "max_abs_diff": 0.0}} for n in ("q8_0", "q4_k_m")]
    res = {"teacher": doc(0.6, 500), "kd-student": doc(0.6, 600), "q8_0": doc(0.6, 3000), "q4_k_m": doc(0.59, 9000)}

    def report(auto: dict) -> dict:
        return build(ReportInputs("r", "d", {}, {"kd": {"role": "kd"}}, {"best_student": "kd", "artifacts": artifacts},
                                  {"devices": {"host": {"results": res}}}, {}, 1, 0.02, auto))

    auto = decide([cand("q8_0", 0.33, 1.0), cand("q4_k_m", 0.11, 0.98)], "host", BUDGET)
    rep = report(auto)  # without --auto the fastest within tolerance would be q4_k_m
    assert rep["summary"]["recommended"] == "q8_0" and rep["summary"]["recommended_reason"].startswith(
        "export --auto on host: fastest of 1")
    assert "q8_0 ★" in to_markdown(rep) and "## export --auto" in to_markdown(rep)
    assert check(rep, GateConfig()) == []
    rep = report(decide([cand("q8_0", 0.33, 0.9)], "host", BUDGET))
    assert rep["summary"]["recommended"] is None
    (line,) = check(rep, GateConfig())  # no budgets set: the gate still fails, saying why
    assert line.startswith("export --auto on host chose no artifact: no artifact meets the budget")


def test_recipe_and_options_refuse_what_cannot_be_measured(tmp_path: Path) -> None:
    from edgedistill.toolchain.auto_select import apply_options
    from edgedistill.toolchain.recipe import RecipeError, load_recipe

    r = load_recipe("vit-to-mobilenet")
    assert r.export.auto.enabled and r.export.auto.min_retention == 0.99  # the built-in recipes use it
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "teacher": {"name": "vit_tiny_patch16_224"},
                                 "student": {"name": "mobilenetv3_small_050"},
                                 "export": {"auto": {"enabled": True, "device": "rpi4-estimated"}}}))
    with pytest.raises(RecipeError, match=r"my.yaml: export.auto.device: rpi4-estimated is an estimate"):
        load_recipe(p)
    off = r.model_copy(update={"export": r.export.model_copy(update={"auto": r.export.auto.model_copy(
        update={"enabled": False})})})
    with pytest.raises(ValueError, match="--min-retention: Input should be less than or equal to 1, got 1.5"):
        apply_options(off, True, None, 1.5)
    with pytest.raises(ValueError, match="--device: nope: not a device spec"):
        apply_options(off, True, "nope", None)
    with pytest.raises(ValueError, match="export.auto is off in this run's recipe; add --auto"):
        apply_options(off, False, "host", None)
    on = apply_options(off, True, "rpi4-constrained?cores=1", 0.95).export.auto
    assert (on.enabled, on.device, on.min_retention) == (True, "rpi4-constrained?cores=1", 0.95)


def test_the_reports_star_and_export_autos_pick_agree_on_the_same_measurements() -> None:
    """One rule decides (benchmarks/recommend.py): on the same host measurements the report's ★ (export --auto off),
    the host's per-device recommendation and export --auto's choice name the same artifact, for both kinds. The
    faster file is faster by less than TIE_FLOOR, so the smaller one wins, where the old report rules (lowest p50,
    highest tokens/s) took the faster. The per-device truth is a function of the report's measurement rows alone:
    rows read back from report.json give the same."""
    from edgedistill.benchmarks.recommend import TIE_FLOOR
    from edgedistill.benchmarks.report.per_device import per_device
    from edgedistill.benchmarks.row import rows_of
    from edgedistill.toolchain.llm import report as llm
    from edgedistill.toolchain.vision import report as vision

    def samples(p50: float) -> list[float]:
        return [p50 * (1 + 0.002 * (k % 5 - 2)) for k in range(40)]

    def run(p50: float, size: int, **extra: object) -> dict:
        return {"latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean", "min"), p50), "samples_ms": samples(p50),
                "peak_rss_mb": 1.0, "size_bytes": size, **extra}

    parity = {"top1_agreement": 0.99, "max_abs_diff": 0.01, "fp32_ok": True}
    slower = 1 + TIE_FLOOR / 2

    def candidate(name: str, doc: dict, score: float, source: float, bar: str) -> Candidate:
        row = measured(name, doc["latency_ms"]["p50"], doc["samples_ms"], bar, parity["top1_agreement"],
                       parity["max_abs_diff"])
        return Candidate(name, "x", name, doc["size_bytes"], True, "", replace(row, source_fp32_ok=True), None,
                         score, source)

    # vision: fp32 (big, fastest) and int8 (small, within the floor), both within tolerance of their student
    docs = {"fp32": run(1.0, 4000, accuracy=0.90), "int8_dynamic": run(slower, 1000, accuracy=0.895)}
    arts = [{"name": n, "format": "onnx", "precision": n[:4], "variant": n, "source": "kd", "file": f"export/{n}.onnx",
             "parity": {"ok": True, "max_abs_diff": 0.01, "top1_agreement": 0.99,
                        "criterion": "top1_agreement >= 0.98" if n != "fp32" else "fp32"}} for n in docs]
    results = {n: {"runs": {"1": d}, "error": None, "parity_vs_source": parity} for n, d in docs.items()}
    rep = vision.build(vision.ReportInputs(
        "r", "d", {"test_accuracy": 0.95}, {"kd": {"test_accuracy": 0.90}}, arts,
        {"results": results, "devices": {"host": {"label": "measured", "results": results}}}, 0.01))
    auto = decide([candidate(n, d, d["accuracy"], 0.90, parity_bar_name("vision", "onnx", n)) for n, d in docs.items()],
                  "host", BUDGET)
    assert rep["summary"]["recommended"] == rep["per_device"]["recommended"]["host"]["artifact"] == auto["chosen"] \
        == "int8_dynamic", (rep["summary"], auto["reason"])
    assert per_device(rows_of(rep), 0.01) == rep["per_device"]

    # LLM: q8_0 generates the most tokens/s, q4_0 is within the floor and smaller, q4_k_m loses task score
    docs = {"q8_0": run(1.0, 4000, tg_tps=1000.0, task={"task_score": 0.6}),
            "q4_0": run(slower, 2000, tg_tps=900.0, task={"task_score": 0.6}),
            "q4_k_m": run(0.5, 1000, tg_tps=2000.0, task={"task_score": 0.4})}
    results = {n: {"runs": {"1": d}, "error": None, "parity_vs_source": parity} for n, d in docs.items()}
    results["kd-student"] = {"runs": {"1": run(5.0, 9000, tg_tps=200.0, task={"task_score": 0.6})}, "error": None}
    arts = [{"name": n, "format": "gguf", "variant": n, "source": "kd", "size_bytes": d["size_bytes"],
             "fidelity": {"perplexity": 1.5, "kld_mean": 0.0, "kld_p99": 0.0, "same_top_token": 1.0,
                          "max_abs_diff": 0.0}} for n, d in docs.items()]
    rep = llm.build(llm.ReportInputs("r", "d", {}, {"kd": {"role": "kd"}}, {"best_student": "kd", "artifacts": arts},
                                     {"devices": {"host": {"label": "measured", "results": results}}}, {}, 1, 0.02))
    auto = decide([candidate(n, d, d["task"]["task_score"], 0.6, parity_bar_name("llm", "gguf", n))
                   for n, d in docs.items()], "host", BUDGET)
    assert rep["summary"]["recommended"] == rep["per_device"]["recommended"]["host"]["artifact"] == auto["chosen"] \
        == "q4_0", (rep["summary"], auto["reason"])
    assert per_device(rows_of(rep), None) == rep["per_device"]
    assert "q4_0 ★" in llm.to_markdown(rep)
