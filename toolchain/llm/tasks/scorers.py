"""Standard scorers for your own data (``data.score.name``): exact match, ROUGE-L, JSON-field match and a final
answer extracted by a regular expression (GSM8K style). Each returns ``task_score`` in [0, 1], averaged."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from edgedistill.toolchain.llm.tasks import SCORERS


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 as the ``rouge-score`` package computes it (lower-cased alphanumeric tokens, no stemming)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match(preds: list[str], refs: list[str]) -> float:
    return _mean([float(p.strip() == r.strip()) for p, r in zip(preds, refs, strict=True)])


def rouge_l_mean(preds: list[str], refs: list[str]) -> float:
    return _mean([rouge_l(p, r) for p, r in zip(preds, refs, strict=True)])


@SCORERS.register("exact-match")
def exact_match_scorer(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """The whole output, stripped of surrounding whitespace, equals the reference."""
    return {"task_score": exact_match(preds, refs)}


@SCORERS.register("rouge-l")
def rouge_l_scorer(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """Mean ROUGE-L F1 against the reference."""
    return {"task_score": rouge_l_mean(preds, refs)}


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (models often add words around it), else None."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


@SCORERS.register("json-fields")
def json_fields_scorer(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """Fraction of the reference object's fields (or ``cfg.fields``) the output's first JSON object matches; an
    output with no JSON object scores 0."""
    scores, valid = [], 0
    for p, r in zip(preds, refs, strict=True):
        ref = _json_object(r)
        if ref is None:
            raise ValueError(f"json-fields: a reference is not a JSON object: {r[:80]!r}")
        keys = list(getattr(cfg, "fields", None) or ref)
        got = _json_object(p)
        valid += got is not None
        scores.append(_mean([float(got is not None and got.get(k) == ref.get(k)) for k in keys]))
    return {"task_score": _mean(scores), "valid_json": valid / max(1, len(refs))}


def extract_answer(text: str, pattern: str) -> str | None:
    """The last match of ``pattern`` in ``text``: its group 1 if it has one, else the whole match."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    m = matches[-1]
    return (m.group(1) if m.re.groups else m.group(0)).strip()


#: GSM8K's convention: the answer follows "####"; else the last number in the text
DEFAULT_ANSWER_PATTERN = r"####\s*(-?[\d,.]+)|(-?\d[\d,]*(?:\.\d+)?)"


@SCORERS.register("regex")
def regex_scorer(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """The final answer extracted by ``cfg.pattern`` (default: GSM8K's ``#### N``, else the last number) is the
    same in the output and the reference (commas in numbers ignored)."""
    pattern = getattr(cfg, "pattern", None) or DEFAULT_ANSWER_PATTERN

    def answer(text: str) -> str | None:
        if pattern is DEFAULT_ANSWER_PATTERN:
            ms = list(re.finditer(pattern, text))
            if not ms:
                return None
            hashes = [m for m in ms if m.group(1)]
            a = (hashes[-1].group(1) if hashes else ms[-1].group(2)) or ""
        else:
            a = extract_answer(text, pattern) or ""
        return a.replace(",", "").rstrip(".") or None

    hits = []
    for p, r in zip(preds, refs, strict=True):
        want = answer(r)
        if want is None:
            raise ValueError(f"regex: no answer matching {pattern!r} in a reference: {r[:80]!r}")
        hits.append(float(answer(p) == want))
    return {"task_score": _mean(hits)}
