"""The LLM task score: key-field exact match and ROUGE-L, checked by hand."""

from __future__ import annotations

import pytest

from edgedistill.toolchain.llm.tasks import score as task_score
from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs
from edgedistill.toolchain.llm.tasks.scorers import rouge_l


def score(preds: list[str], refs: list[str]) -> dict:
    return task_score(preds, refs, None, "legal-briefs")


def test_rouge_l_by_hand() -> None:
    assert rouge_l("a b c d", "a b c d") == 1.0
    assert rouge_l("", "a") == 0.0 and rouge_l("x y", "a b") == 0.0
    # LCS("a x b c", "a b c d") = 3: P = 3/4, R = 3/4
    assert rouge_l("a x b c", "a b c d") == pytest.approx(0.75)


def test_score_counts_key_fields() -> None:
    ref = generate_legal_briefs(1, 0)[0].output
    fields = ref.split(" | ")
    wrong_date = " | ".join([*fields[:4], "1999-01-01", fields[5]])
    s = score([ref, wrong_date, ""], [ref, ref, ref])
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["task_score"] == pytest.approx((6 + 5 + 0) / 18)
    assert s["field_accuracy"]["date"] == pytest.approx(1 / 3) and s["field_accuracy"]["court"] == pytest.approx(2 / 3)
    assert s["rouge_l"] > 1 / 3


def test_fidelity_by_hand() -> None:
    """Every figure over the positions predicting tokens from ``score_from`` on (the completion)."""
    import numpy as np

    from edgedistill.toolchain.llm.export.fidelity import fidelity

    ids = [[0, 1, 2]]
    ref = [np.zeros((3, 3), dtype=np.float32)]  # uniform
    art = [np.array([[0, 1, 0], [0, 0, 2], [5, 5, 5]], dtype=np.float32)]
    p01 = np.e / (2 + np.e)  # position 0 → token 1
    p12 = np.exp(2) / (2 + np.exp(2))  # position 1 → token 2
    kl1 = np.log(1 / 3) - np.mean(np.log([(1 - p12) / 2, (1 - p12) / 2, p12]))
    f = fidelity(ids, ref, art, score_from=[2])  # only token 2 (predicted at position 1) is scored
    assert f.perplexity == pytest.approx(1 / p12) and f.reference_perplexity == pytest.approx(3.0)
    assert f.kld_mean == pytest.approx(kl1) and f.n_tokens == 1 and f.same_top_token == 0.0
    assert f.max_abs_diff == pytest.approx(2.0)
    every = fidelity(ids, ref, art)
    assert every.perplexity == pytest.approx(np.exp(-(np.log(p01) + np.log(p12)) / 2)) and every.n_tokens == 2
    kl0 = np.log(1 / 3) - np.mean(np.log([(1 - p01) / 2, p01, (1 - p01) / 2]))
    assert every.kld_mean == pytest.approx((kl0 + kl1) / 2)


def test_recommended_is_the_fastest_that_keeps_its_students_score() -> None:
    from edgedistill.benchmarks.gate import check
    from edgedistill.toolchain.llm.report import ReportInputs, build
    from edgedistill.toolchain.recipe import GateConfig

    def doc(score: float, tg: float) -> dict:  # on the host, its outputs agree with its student's
        return {"runs": {"1": {"task": {"task_score": score}, "tg_tps": tg, "latency_ms": dict.fromkeys(
            ("p50", "p90", "p99", "mean", "min"), 1000 / tg)}}, "error": None,
            "parity_vs_source": {"top1_agreement": 1.0, "max_abs_diff": 0.0, "fp32_ok": True}}

    artifacts = [{"name": n, "format": "gguf", "variant": n, "source": "kd", "size_bytes": 1,
                  "fidelity": {"perplexity": 1.5, "kld_mean": 0.0, "kld_p99": 0.0, "same_top_token": 1.0,
                               "max_abs_diff": 0.0}} for n in ("q8_0", "q4_0", "q4_k_m")]
    res = {"teacher": doc(0.60, 500), "kd-student": doc(0.60, 600), "q8_0": doc(0.61, 3000),
           "q4_0": doc(0.59, 6000), "q4_k_m": doc(0.50, 9000)}

    def report(results: dict) -> dict:
        return build(ReportInputs("r", "d", {}, {"kd": {"role": "kd"}}, {"best_student": "kd", "artifacts": artifacts},
                                  {"devices": {"host": {"results": results}}}, {}, 1, 0.02))

    rep = report(res)  # q4_k_m is fastest but loses 0.10 of its student's score
    assert rep["summary"]["recommended"] == "q4_0" and rep["summary"]["recommended_speedup"] == pytest.approx(12)
    assert check(rep, GateConfig(min_retention=0.9, min_speedup=10)) == []
    assert check(rep, GateConfig(min_speedup=20)) and check(rep, GateConfig(max_p50_ms=0.1))
    rep = report({**res, "q8_0": doc(0.3, 3000), "q4_0": doc(0.2, 6000), "q4_k_m": doc(0.2, 9000)})
    assert rep["summary"]["recommended"] is None  # none keeps it
    assert check(rep, GateConfig(min_retention=0.9)) == [
        "no recommended artifact in the report (no artifact keeps accuracy on host)"]
