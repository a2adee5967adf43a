"""The CI gate: compare a report's recommended artifact against budgets; non-empty failures mean exit 1."""

from __future__ import annotations

from typing import Any


def check(report: dict[str, Any], min_retention: float | None = None, max_p50_ms: float | None = None,
          min_speedup: float | None = None, threads: int = 1) -> list[str]:
    """Return one line per budget the recommended artifact misses (empty: the gate passes)."""
    name = report.get("summary", {}).get("recommended")
    rows = {m["name"]: m for m in report["models"]}
    if name is None or name not in rows:
        return ["no recommended artifact in the report (no artifact kept accuracy, or bench did not run)"]
    row = rows[name]
    lat = row.get("latency_ms", {}).get(str(threads), {})
    fails = []
    if min_retention is not None and (row.get("retention") or 0) < min_retention:
        fails.append(f"{name}: retention {row.get('retention', 0):.4f} < min_retention {min_retention}")
    if max_p50_ms is not None and lat.get("p50", float("inf")) > max_p50_ms:
        fails.append(f"{name}: p50 {lat.get('p50', float('nan')):.3f} ms at {threads} thread(s) > {max_p50_ms} ms")
    speedup = row.get("speedup", {}).get(str(threads))
    if min_speedup is not None and (speedup or 0) < min_speedup:
        fails.append(f"{name}: speed-up {speedup} at {threads} thread(s) < min_speedup {min_speedup}")
    return fails
