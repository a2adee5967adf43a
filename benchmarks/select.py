"""``edgedistill export --auto``'s decision, as a pure function of measurements: which exported artifact to ship to
one device under a retention budget, and why every other one was not chosen.

A candidate is **rejected** when it did not run on the device (the reason is the device's or the agent's error),
when it failed its parity contract at export, when its outputs on the device disagree with its PyTorch source's
(the per-device parity rule of :mod:`edgedistill.benchmarks.report.per_device`), or when its **retention** — its
accuracy (vision) or task score (LLM) on the device ÷ its PyTorch source's on the same examples — is below the
budget. Among the rest the fastest by p50 latency wins; candidates whose intervals overlap the fastest one's (or
whose p50 is within ``TIE_FLOOR`` of it) are tied within noise and the smallest file wins (the same rule as the
per-device recommendation: :func:`~edgedistill.benchmarks.report.per_device.fastest_within_noise`). When nothing
qualifies, ``chosen`` is None and the decision says so: a result, not an error (``edgedistill gate`` fails on it).

``decide(candidates, device, min_retention)`` → the document written to ``export/auto.json``::

    {"schema": "edgedistill.auto/1", "device", "label", "min_retention", "metric", "chosen", "reason",
     "candidates": [{"name", "format", "variant", "size_bytes", "status": chosen|qualified|rejected, "reason",
                     "p50_ms", "interval", "how", "score", "source_score", "retention"}]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edgedistill.benchmarks.report.per_device import fastest_within_noise, keeps_on_device, latency

SCHEMA = "edgedistill.auto/1"


@dataclass(frozen=True)
class Candidate:
    """One exported artifact and what was measured of it on the device.

    ``row`` is its device row (``p50_ms``, ``samples_ms``, ``parity_vs_source``, ``tokens_vs_host``, ``label``:
    the shape of :func:`edgedistill.benchmarks.report.common.device_rows`), None when it did not run (then
    ``error`` says why). ``score`` is its accuracy or task score on the device and ``source_score`` its PyTorch
    source's on the same examples; ``fp32`` and ``min_top1`` are the parity bar its device outputs are held to.
    """

    name: str
    format: str
    variant: str
    size_bytes: int | None
    export_ok: bool
    export_why: str = ""
    fp32: bool = False
    min_top1: float | None = None
    row: dict[str, Any] | None = None
    error: str | None = None
    score: float | None = None
    source_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as it is (e.g. the file's sha256)

    @property
    def retention(self) -> float | None:
        if self.score is None or not self.source_score:
            return None
        return self.score / self.source_score


def _floor4(x: float) -> str:
    """Four decimals rounded down: a retention just under the budget never prints as equal to it."""
    return f"{math.floor(x * 1e4) / 1e4:.4f}"


def rejection(c: Candidate, device: str, min_retention: float) -> str | None:
    """Why ``c`` cannot be shipped to ``device`` (None: it qualifies)."""
    if c.row is None or c.row.get("p50_ms") is None:
        return f"did not run on {device}: {c.error or 'no measurement'}"
    if not c.export_ok:
        return f"failed parity at export ({c.export_why or 'see export/artifacts.json'})"
    ok, why = keeps_on_device(c.row, {"fp32": c.fp32, "min_top1": c.min_top1}, None, 0.0)
    if ok is False:
        return f"outputs on {device} disagree with its PyTorch source: {why}"
    if ok is None:
        return f"no outputs on {device} to check against its PyTorch source ({why})"
    r = c.retention
    if r is None and c.score is not None and c.source_score == 0:
        return "its PyTorch source scores 0 on the same examples: no retention to judge"
    if r is None:
        return f"no accuracy measured on {device} (score {c.score}, its source's {c.source_score})"
    if r < min_retention:
        return f"retention {_floor4(r)} < {min_retention:g}"
    return None


def decide(candidates: list[Candidate], device: str, min_retention: float, label: str | None = None,
           metric: str = "p50 latency") -> dict[str, Any]:
    """The decision document (module docstring): the fastest candidate that meets the budget, every other one with
    its reason."""
    reasons = {c.name: rejection(c, device, min_retention) for c in candidates}
    qualified = [c for c in candidates if reasons[c.name] is None]
    by_name = {c.name: c for c in candidates}
    timing: dict[str, tuple[float, float, float, str]] = {}
    chosen, reason = None, ""
    if qualified:
        rows = [{**by_name[c.name].row, "model": c.name, "accuracy": c.score} for c in qualified]  # type: ignore[dict-item]
        best, tied = fastest_within_noise(rows, lambda r: by_name[r["model"]].size_bytes)
        for r, est, lo, hi, how in tied:
            timing[r["model"]] = (est, lo, hi, how)
        for c in qualified:
            timing.setdefault(c.name, latency(c.row))  # type: ignore[arg-type]
        chosen = best[0]["model"]
        est, lo, hi, how = timing[chosen]
        others = [x[0]["model"] for x in tied if x[0]["model"] != chosen]
        reason = (f"fastest of {len(qualified)} that meet the budget on {device} ({how}: {est:.4g} ms "
                  f"[{lo:.4g}, {hi:.4g}])" if not others else
                  f"tied within noise on {device} with {', '.join(others)} ({how}); the smallest file wins")
        for c in qualified:
            if c.name == chosen:
                continue
            e, lo_c, hi_c, _ = timing[c.name]
            reasons[c.name] = (
                f"meets the budget; tied within noise with {chosen}, larger file "
                f"({_kb(c.size_bytes)} vs {_kb(by_name[chosen].size_bytes)})" if c.name in others else
                f"meets the budget; slower: {e:.4g} ms [{lo_c:.4g}, {hi_c:.4g}] vs {chosen}'s {est:.4g} ms "
                f"[{lo:.4g}, {hi:.4g}]")
    elif candidates:
        reason = (f"no artifact meets the budget on {device} (retention ≥ {min_retention:g} of its PyTorch source, "
                  "parity, runs there): each candidate's reason is listed")
    else:
        reason = "no exported artifact to choose from"
    rows_out = []
    for c in candidates:
        t = timing.get(c.name) or (None if c.row is None or c.row.get("p50_ms") is None else latency(c.row))
        status = "chosen" if c.name == chosen else "qualified" if c in qualified else "rejected"
        rows_out.append({"name": c.name, "format": c.format, "variant": c.variant, "size_bytes": c.size_bytes,
                         "status": status, "reason": reason if status == "chosen" else reasons[c.name],
                         "p50_ms": None if t is None else t[0], "interval": None if t is None else [t[1], t[2]],
                         "how": None if t is None else t[3], "score": c.score, "source_score": c.source_score,
                         "retention": c.retention, **c.extra})
    return {"schema": SCHEMA, "device": device, "label": label, "min_retention": min_retention, "metric": metric,
            "chosen": chosen, "reason": reason, "candidates": rows_out}


def _kb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1024:.0f} KB"
