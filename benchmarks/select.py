"""``edgedistill export --auto``'s decision, as a pure function of measurements: which exported artifact to ship to
one device under a retention budget, and why every other one was not chosen.

A candidate is **rejected** when it did not run on the device (the reason is the device's or the agent's error),
when it failed its parity contract at export, when its outputs on the device disagree with its PyTorch source's
(the per-device parity rule of :mod:`edgedistill.benchmarks.report.per_device`), or when its **retention** — its
accuracy (vision) or task score (LLM) on the device ÷ its PyTorch source's on the same examples — is below the
budget. Among the rest the one rule of :func:`edgedistill.benchmarks.recommend.recommend` chooses (the report's ★
and the per-device recommendations use it too): the fastest by p50 latency, ties within noise to the smallest
file. When nothing
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

from edgedistill.benchmarks.recommend import Option, Timing, latency, recommend
from edgedistill.benchmarks.report.per_device import keeps_on_device
from edgedistill.benchmarks.row import Row

SCHEMA = "edgedistill.auto/1"


@dataclass(frozen=True)
class Candidate:
    """One exported artifact and what was measured of it on the device.

    ``row`` is its measurement row on the device (:class:`edgedistill.benchmarks.row.Row`: its p50 and samples,
    the parity bar its outputs are held to and the device's checks of them), None when it did not run (then
    ``error`` says why). ``score`` is its accuracy or task score on the device and ``source_score`` its PyTorch
    source's on the same examples.
    """

    name: str
    format: str
    variant: str
    size_bytes: int | None
    export_ok: bool
    export_why: str = ""
    row: Row | None = None
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
    if c.row is None or c.row.p50_ms is None:
        return f"did not run on {device}: {c.error or 'no measurement'}"
    if not c.export_ok:
        return f"failed parity at export ({c.export_why or 'see export/artifacts.json'})"
    ok, why = keeps_on_device(c.row)
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
    timing: dict[str, Timing] = {}
    chosen, reason = None, ""
    if qualified:
        rec = recommend([Option(c.name, c.row.p50_ms, c.row.samples_ms, c.size_bytes, True, c.score)  # type: ignore[union-attr]
                         for c in qualified], device, f"of {len(qualified)} that meet the budget")
        timing, chosen, reason = rec.timing, rec.name, rec.reason
        best = timing[chosen]  # type: ignore[index]
        for c in qualified:
            if c.name == chosen:
                continue
            t = timing[c.name]
            reasons[c.name] = (
                f"meets the budget; tied within noise with {chosen}, larger file "
                f"({_kb(c.size_bytes)} vs {_kb(by_name[chosen].size_bytes)})" if c.name in rec.tied else  # type: ignore[index]
                f"meets the budget; slower: {t.p50:.4g} ms [{t.low:.4g}, {t.high:.4g}] vs {chosen}'s {best.p50:.4g} "
                f"ms [{best.low:.4g}, {best.high:.4g}]")
    elif candidates:
        reason = (f"no artifact meets the budget on {device} (retention ≥ {min_retention:g} of its PyTorch source, "
                  "parity, runs there): each candidate's reason is listed")
    else:
        reason = "no exported artifact to choose from"
    rows_out = []
    for c in candidates:
        t = timing.get(c.name) or (None if c.row is None or c.row.p50_ms is None else
                                   latency(c.row.p50_ms, c.row.samples_ms))
        status = "chosen" if c.name == chosen else "qualified" if c in qualified else "rejected"
        rows_out.append({"name": c.name, "format": c.format, "variant": c.variant, "size_bytes": c.size_bytes,
                         "status": status, "reason": reason if status == "chosen" else reasons[c.name],
                         "p50_ms": None if t is None else t.p50, "interval": None if t is None else [t.low, t.high],
                         "how": None if t is None else t.how, "score": c.score, "source_score": c.source_score,
                         "retention": c.retention, **c.extra})
    return {"schema": SCHEMA, "device": device, "label": label, "min_retention": min_retention, "metric": metric,
            "chosen": chosen, "reason": reason, "candidates": rows_out}


def _kb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1024:.0f} KB"
