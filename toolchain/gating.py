"""``edgedistill gate`` for any kind of run: where the budgets come from (``--budgets FILE`` outside the judged
run, else the base run's saved recipe in same-runner mode, else the run's own recipe, and the outputs say which),
freshness, baseline comparability, interleaved re-measurement when both runs' artifacts are at hand, one confirming
re-measurement when the verdict is inconclusive, and the CI outputs. It fails closed: a budget that covers nothing,
a gate that judged nothing, or a base run that is missing or does not match its own manifest, is bad input
(exit 2). The statistics live in :mod:`edgedistill.benchmarks.gate`.

Two ways to compare: ``--baseline`` (a stored run or report, measured elsewhere: its environment fingerprint must
match) and ``--base-out`` (same-runner mode: the base commit's run directory built in the same job; every
latency limit relative to it is re-measured interleaved here, so no CPU match is needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgedistill.benchmarks.gate import PERCENTILE, GateResult, environment_mismatch, evaluate
from edgedistill.benchmarks.gate_output import annotations, as_json, junit, markdown
from edgedistill.benchmarks.interleave import Pair, interleave
from edgedistill.benchmarks.row import RowError, rows_of
from edgedistill.core.errors import UserError
from edgedistill.core.fileio import read_json, sha256_path, write_text
from edgedistill.toolchain.pipeline import Context, pipeline_of, stale_report
from edgedistill.toolchain.recipe import load_gate, load_recipe
from edgedistill.toolchain.rundir import RunDir


class GateInputError(UserError, ValueError):
    """The gate cannot judge: no report, a baseline from another environment, an unreadable baseline, a budget
    that covers nothing, nothing to judge."""


def gate_config(ctx: Context, budgets: Path | None, overrides: dict[str, float],
                base_out: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gate section as data (``budgets`` file, else the base run's saved recipe, else the judged run's
    recipe, then the command-line overrides) and where it came from: path, sha256, kind of source, overrides."""
    if budgets is not None:
        cfg, path = load_gate(budgets).model_dump(mode="json"), budgets
        kind = "--budgets, outside the judged run"
    elif base_out is not None:
        path = base_out / "recipe.yaml"
        cfg, kind = load_gate(path).model_dump(mode="json"), "the base run's saved recipe (same-runner mode)"
    else:
        cfg, path = ctx.recipe.section("gate"), ctx.run.recipe_path
        kind = "the judged run's own recipe: a change under review can relax it; pass --budgets in CI"
    source = {"path": str(path), "sha256": sha256_path(path), "kind": kind, "overrides": overrides}
    return {**cfg, **overrides}, source


def _refuse_unjudgeable(result: GateResult, source: dict[str, Any], has_baseline: bool) -> None:
    """Bad input: a budget that covers nothing, or a gate that judged nothing (which would otherwise pass)."""
    if result.problems:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise GateInputError(f"{source['path']}: {result.problems[0]}{more}")
    if result.judged == 0:
        why = (f"its {len(result.not_checked)} limit(s) are all relative and no --baseline was given (add "
               "--base-out with the base run, or --baseline, or --require-baseline to fail them)"
               if result.not_checked and not has_baseline else
               "no budgets, no min_retention/max_p50_ms/min_speedup and no export --auto decision")
        raise GateInputError(f"{source['path']}: gate: the gate checks nothing: {why}")


def _load_baseline(ref: Path) -> tuple[dict[str, Any], Path | None]:
    """A baseline report and, when ``ref`` is a run directory, its root (its artifacts can be re-measured)."""
    path = ref / "report.json" if ref.is_dir() else ref
    if not path.is_file():
        raise GateInputError(f"{ref}: no report.json (give a run directory or its report.json)")
    try:
        return read_json(path), (ref if ref.is_dir() else None)
    except ValueError as err:
        raise GateInputError(f"{path}: not a JSON report ({err})") from None


def _base_run(base_out: Path, console: Any) -> tuple[dict[str, Any], Path]:
    """Same-runner mode: the base run's report, checked against the base run's own manifest (a missing or
    corrupt base run is bad input, one line)."""
    if not (base_out / "recipe.yaml").is_file() or not (base_out / "report.json").is_file():
        raise GateInputError(f"{base_out}: not a finished base run (needs recipe.yaml and report.json; build it "
                             "with `edgedistill run` in a worktree of the base commit)")
    base, _ = _load_baseline(base_out)
    recipe = load_recipe(str(base_out / "recipe.yaml"))
    base_ctx = pipeline_of(recipe).context(recipe, RunDir(base_out), console, False)
    if problems := stale_report(base_ctx, base):
        raise GateInputError(f"{base_out}: base run unusable: {problems[0]}")
    return base, base_out


def _relative_latency(cfg: dict[str, Any]) -> bool:
    return any((b.get(m) or {}).get("max_regression") is not None for b in cfg.get("budgets", [])
               for m in (*PERCENTILE, "tokens_per_s"))


def _pairs(ctx: Context, base: dict[str, Any], base_root: Path) -> list[Pair]:
    """Artifacts present in both runs, with the agent options this kind's bench used."""
    out = []
    for item in pipeline_of(ctx.recipe).impl.gate_items(ctx):
        b = (base.get("measured") or {}).get(item.name)
        if b is None:
            continue
        bpath = base_root / b["path"]
        if bpath.exists():
            out.append(Pair(item.name, item.candidate, bpath, item.runtime, item.options, item.eval_npz))
    return out


def _pool(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    return {name: {side: a[name][side] + b[name][side] for side in ("candidate", "baseline")} for name in b}


def run_gate(ctx: Context, baseline: Path | None, rounds: int | None, overrides: dict[str, float],
             junit_path: Path | None, md_path: Path | None, json_path: Path | None,
             console: Any, budgets: Path | None = None, require_baseline: bool = False,
             base_out: Path | None = None) -> tuple[GateResult, str]:
    """Judge the run against a stored ``baseline`` or, in same-runner mode, the base run ``base_out`` (at most
    one of them); write the requested outputs. Raises :class:`GateInputError` (exit 2) on bad input."""
    if baseline is not None and base_out is not None:
        raise GateInputError("--baseline and --base-out: give one (a stored baseline, or the base run built in "
                             "this job)")
    report_path = ctx.run.root / "report.json"
    if not report_path.is_file():
        raise GateInputError(f"{report_path}: no report yet; run `edgedistill report --out {ctx.run.root}`")
    report = read_json(report_path)
    try:
        rows_of(report)  # a bad measurement row is bad input, named with its file
    except RowError as err:
        raise GateInputError(f"{report_path}: {err}") from None
    notes_: list[str] = []
    if base_out is not None:
        base, base_root = _base_run(Path(base_out), console)
        if mismatch := environment_mismatch(report, base):
            notes_.append(f"same-runner mode: the base report was made in another environment ({'; '.join(mismatch)}"
                          "); latencies are re-measured here, other metrics come from the reports")
    else:
        base, base_root = _load_baseline(Path(baseline)) if baseline is not None else (None, None)
        if base is not None and (mismatch := environment_mismatch(report, base)):
            raise GateInputError(f"{baseline}: measured in another environment, so its numbers are not comparable "
                                 f"({'; '.join(mismatch)}); keep one baseline per runner kind")
    cfg, source = gate_config(ctx, budgets, overrides, base_out)
    measured = None
    pairs = _pairs(ctx, base, base_root) if base is not None and base_root is not None and _relative_latency(
        cfg) else []
    b = ctx.recipe.bench
    threads = min(report["summary"].get("threads") or [1])

    def measure() -> dict[str, Any]:
        console.print(f"gate: interleaving baseline and candidate, {len(pairs)} artifact(s) × {cfg['rounds']} rounds",
                      highlight=False)
        got = interleave(pairs, rounds or cfg["rounds"], threads, b.warmup, b.runs)
        return {(name, "host"): v for name, v in got.items()}

    result = evaluate(report, cfg, base, require_baseline=require_baseline)  # refuse bad input before measuring
    _refuse_unjudgeable(result, source, base is not None)
    if pairs:
        measured = measure()
        result = evaluate(report, cfg, base, measured, require_baseline)
    if pairs and any(c.verdict == "inconclusive" and c.metric in (*PERCENTILE, "tokens_per_s")  # re-measurable
                     for c in result.checks):  # one confirming re-measurement, pooled with the first
        measured = _pool(measured, measure())
        result = evaluate(report, cfg, base, measured, require_baseline)
        result.warnings.append("inconclusive at first: confirmed with a second set of interleaved rounds")
    result.budgets_source = source
    result.warnings += notes_
    if problems := stale_report(ctx, report):
        result.failures += [f"stale report: {p}" for p in problems]
        result.verdict = "fail"
    text = markdown(result, f"edgedistill gate — {ctx.recipe.name}")
    if junit_path is not None:
        write_text(junit_path, junit(result, f"edgedistill gate — {ctx.recipe.name}"))
    if md_path is not None:
        write_text(md_path, text)
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a", encoding="utf-8") as f:
            f.write(text)
    if os.environ.get("GITHUB_ACTIONS") == "true":  # one error annotation per failed check on the workflow run
        for line in annotations(result, f"edgedistill gate — {ctx.recipe.name}"):
            print(line, flush=True)
    if json_path is not None:
        ref = base_out if base_out is not None else baseline
        write_text(json_path, as_json(result, {"run": str(ctx.run.root), "baseline": str(ref) if ref else None,
                                               "mode": "same-runner" if base_out is not None else
                                               "stored baseline" if baseline is not None else "no baseline",
                                               "environment": report.get("environment")}))
    return result, text
