"""The identity kind's report module (a :class:`~edgedistill.benchmarks.report.common.KindReport`): everything it
shows comes from the report's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.benchmarks.report.common import fmt, gate_markdown, md_table, write_report
from edgedistill.benchmarks.row import rows_of

TITLE = "edgedistill identity report"
SCORE = "share of inputs mapped to themselves"
LATENCY = "ms per batch of 64"


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rec = report["summary"]["recommended"]
    return (["artifact", "device", "p50 ms", "score", "size B"],
            [[r.artifact + (" ★" if r.artifact == rec else ""), r.device, fmt(r.p50_ms, ".4f"), fmt(r.score, ".3f"),
              fmt(r.size_bytes, "d")] for r in rows_of(report)])


def summary_facts(report: dict[str, Any]) -> list[tuple[str, Any, str]]:
    return [("artifacts", len(rows_of(report)), "d")]


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    return [f"recommended: [bold]{s['recommended']}[/bold] ({s['recommended_reason']})"]


def to_markdown(report: dict[str, Any]) -> str:
    return "\n".join([f"# {TITLE} — {report['recipe']}", "", *md_table(*table(report)), *gate_markdown(report)]) + "\n"


def write(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    write_report(report, json_path, md_path, to_markdown)
