"""The CI gate: compare a report's recommended artifact against budgets; non-empty failures mean exit 1.

The same check serves every kind: each report's rows carry ``retention``, ``latency_ms`` and ``speedup`` keyed by
thread count (vision: batch-1 latency, LLM: ms per generated token and generation tokens/s; see
:class:`edgedistill.toolchain.recipe.GateConfig`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Budgets(Protocol):
    min_retention: float | None
    max_p50_ms: float | None
    min_speedup: float | None


def check(report: dict[str, Any], budgets: Budgets, threads: int | None = None) -> list[str]:
    """One line per budget the recommended artifact misses (empty: the gate passes). ``threads`` defaults to the
    smallest thread count the report measured."""
    if all(getattr(budgets, k) is None for k in ("min_retention", "max_p50_ms", "min_speedup")):
        return []
    summary = report.get("summary", {})
    name = summary.get("recommended")
    rows = {m["name"]: m for m in report.get("models", [])}
    if name is None or name not in rows:
        return ["no recommended artifact in the report (no artifact kept accuracy, or bench did not run)"]
    t = str(threads if threads is not None else min(summary.get("threads") or [1]))
    row = rows[name]
    lat = row.get("latency_ms", {}).get(t, {})
    speedup = row.get("speedup", {}).get(t)
    fails = []
    if budgets.min_retention is not None and (row.get("retention") or 0) < budgets.min_retention:
        fails.append(f"{name}: retention {_f(row.get('retention'))} < min_retention {budgets.min_retention}")
    if budgets.max_p50_ms is not None and lat.get("p50", float("inf")) > budgets.max_p50_ms:
        fails.append(f"{name}: p50 {_f(lat.get('p50'))} ms at {t} thread(s) > max_p50_ms {budgets.max_p50_ms}")
    if budgets.min_speedup is not None and (speedup or 0) < budgets.min_speedup:
        fails.append(f"{name}: speed-up {_f(speedup)} at {t} thread(s) < min_speedup {budgets.min_speedup}")
    return fails


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
