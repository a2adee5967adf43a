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
