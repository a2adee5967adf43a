"""The identity kind's stages: export (the matrix), bench (host timings and score), report (the rows)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgedistill.benchmarks.recommend import Option, recommend
from edgedistill.benchmarks.row import Row, percentiles
from edgedistill.core.fileio import read_json, sha256_json, sha256_path, write_json
from edgedistill.toolchain import pipeline
from edgedistill.toolchain.pipeline import GateItem, Stage, finish_report
from tests.toy_kind import report as REPORT  # noqa: N812 (the name the framework asks for)

ARTIFACT = "identity-fp32"


class Context(pipeline.Context):
    """The framework's context; the identity kind loads nothing else."""


def stage_export(ctx: Context) -> None:
    h = sha256_json({"size": ctx.recipe.size})
    if ctx.skip("export", h):
        return
    out = ctx.run.path("export", f"{ARTIFACT}.npy")
    np.save(out, np.eye(ctx.recipe.size, dtype=np.float32))
    ctx.run.record("export", h, [out], {"artifacts": [ARTIFACT]})


def stage_bench(ctx: Context) -> None:
    ctx.run.require_intact("export")
    path = ctx.run.path("export", f"{ARTIFACT}.npy")
    h = sha256_json({"bench": ctx.recipe.section("bench"), "artifact": sha256_path(path)})
    if ctx.skip("bench", h):
        return
    w = np.load(path)
    x = np.random.default_rng(ctx.recipe.seed).normal(size=(64, w.shape[0])).astype(np.float32)
    samples = []
    for _ in range(ctx.recipe.bench.runs):
        t0 = time.perf_counter()
        y = x @ w
        samples.append((time.perf_counter() - t0) * 1000)
    per_example = np.all(np.isclose(y, x), axis=1).astype(float).tolist()
    out = ctx.run.path("bench", "results.json")
    write_json(out, {"samples_ms": samples, "per_example": per_example, "size_bytes": path.stat().st_size})
    measured = {ARTIFACT: {"path": str(path.relative_to(ctx.run.root)), "sha256": sha256_path(path)}}
    ctx.run.record("bench", h, [out], {"threads": [1], "measured": measured})


def stage_report(ctx: Context) -> dict[str, Any]:
    res = read_json(ctx.run.path("bench", "results.json"))
    score = float(np.mean(res["per_example"]))
    row = Row(ARTIFACT, "identity", "artifact", "host", format="npy", precision="fp32", threads=1,
              size_bytes=res["size_bytes"], score=score, source_score=1.0, retention=score, keeps=score == 1.0,
              per_example=res["per_example"], **percentiles(res["samples_ms"]))
    rec = recommend([Option(row.artifact, row.p50_ms, row.samples_ms, row.size_bytes, bool(row.keeps), score)], "host")
    report = {"schema": "edgedistill.identity-report/1", "recipe": ctx.recipe.name, "run_dir": str(ctx.run.root),
              "rows": [row.to_dict()], "devices": [],
              "summary": {"recommended": rec.name, "recommended_reason": rec.reason, "threads": [1]}}
    finish_report(ctx, report, REPORT)
    return report


def export_options(recipe: Any, formats: str | None, variants: str | None, layout: str | None) -> Any:
    """The identity has one format and one variant: the options change nothing."""
    return recipe


def gate_items(ctx: Context) -> list[GateItem]:
    """None: the agent runs no ``.npy``, so the gate re-measures nothing (relative latency limits stay unjudged)."""
    return []


def auto_candidates(ctx: Context, spec: str) -> tuple[list[Any], str | None, str]:
    """No candidates: the identity kind has no ``export --auto``."""
    return [], None, "score"


STAGES = (Stage("export", stage_export, "export"), Stage("bench", stage_bench, "bench"),
          Stage("report", stage_report, "report"))
