"""The LLM task score: key-field exact match and ROUGE-L, checked by hand."""

from __future__ import annotations

import pytest

from edgedistill.toolchain.llm.bench import rouge_l, score
from edgedistill.toolchain.llm.data import generate_legal_briefs


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

    from edgedistill.toolchain.llm.fidelity import fidelity

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


def test_best_gguf_is_the_fastest_that_keeps_the_bar() -> None:
    from edgedistill.toolchain.llm.report import build

    def bench(score: float, tg: float) -> dict:
        return {"error": None, "task_score": score, "tg_tps": tg}

    artifacts = [{"name": n, "format": "gguf", "variant": n, "source": "kd", "size_bytes": 1,
                  "fidelity": {"perplexity": 1.5, "kld_mean": 0.0, "kld_p99": 0.0, "same_top_token": 1.0,
                               "max_abs_diff": 0.0}} for n in ("q8_0", "q4_0", "q4_k_m")]
    b = {"teacher": bench(0.60, 500), "q8_0": bench(0.61, 3000), "q4_0": bench(0.60, 6000), "q4_k_m": bench(0.50, 9000)}
    rep = build("r", "d", {}, {}, {"best_student": "kd", "artifacts": artifacts}, b, {}, 1)
    assert rep["summary"]["best_gguf"] == "q4_0" and rep["summary"]["meets_bar"] is True  # q4_k_m keeps 0.83 only
    b = {**b, "q8_0": bench(0.3, 3000), "q4_0": bench(0.2, 6000)}
    rep = build("r", "d", {}, {}, {"best_student": "kd", "artifacts": artifacts}, b, {}, 1)
    assert rep["summary"]["best_gguf"] == "q4_k_m" and rep["summary"]["meets_bar"] is False  # none keeps it
