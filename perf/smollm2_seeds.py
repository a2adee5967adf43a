"""KD vs CE-only on the real-model recipe (``smollm2-wordnet``) over training seeds, through the pipeline's own
stages: for each seed, the CE-only student and the top-k KD student (same cut of the teacher, same steps, batch and
data split; only the training seed — batch order — differs), then every student and the teacher scored greedily
on the whole test split (384 WordNet definitions) with the recipe's scorer::

    .venv/bin/python perf/smollm2_seeds.py --out /tmp/seeds --seeds 0 1 2
    .venv/bin/python perf/smollm2_seeds.py --out /tmp/seeds --seeds 0 --steps 100   # a quicker look

The teacher's top-k cache is built once (shared by every seed). Prints a Markdown table (per seed, mean ± sd over
seeds, and the KD − CE gain per seed, paired on the same test definitions with a 95 % interval) for
benchmarks/RESULTS.md. Re-running reuses every finished stage.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")

RECIPE = Path(__file__).resolve().parents[1] / "toolchain" / "recipes" / "smollm2-wordnet.yaml"


def _recipe(seed: int, args: argparse.Namespace, out: Path) -> Any:
    from edgedistill.toolchain.recipe import parse_recipe

    doc = yaml.safe_load(RECIPE.read_text())
    doc.update(name=f"smollm2-wordnet-seed{seed}", seed=seed)
    doc["blackbox"] = {"enabled": False}
    doc["distill"]["cache_dir"] = str(out / "teacher-cache")
    if args.steps:
        doc["distill"]["train"]["steps"] = args.steps
    return parse_recipe(doc, f"smollm2-wordnet (seed {seed})")


def _run(recipe: Any, root: Path) -> Any:
    from rich.console import Console

    from edgedistill.toolchain.llm import stages
    from edgedistill.toolchain.pipeline import save_recipe
    from edgedistill.toolchain.rundir import RunDir

    run = RunDir(root)
    save_recipe(recipe, run)
    ctx = stages.Context(recipe, run, Console(stderr=True))
    for fn in (stages.stage_data, stages.stage_teacher, stages.stage_distill):
        fn(ctx)
    return ctx


def _test_hits(ctx: Any, folder: Path) -> list[float]:
    """Per-example task score (0/1) of greedy outputs on the whole test split."""
    from edgedistill.toolchain.llm import context

    test = ctx.splits.test
    preds = context.generate(ctx, folder, test)
    return [float(ctx.score([p], [e.output])["task_score"]) for p, e in zip(preds, test, strict=True)]


def _paired(a: list[float], b: list[float]) -> str:
    """Mean of a − b with a normal 95 % interval over the paired examples."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, sd = statistics.fmean(d), statistics.stdev(d)
    h = 1.96 * sd / math.sqrt(len(d))
    return f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="student steps (default: the recipe's)")
    args = ap.parse_args()
    rows, teacher_hits = [], None
    for seed in args.seeds:
        t0 = time.perf_counter()
        ctx = _run(_recipe(seed, args, args.out), args.out / f"seed{seed}")
        if teacher_hits is None:  # the same teacher and test split for every seed
            teacher_hits = _test_hits(ctx, ctx.teacher_dir)
        ce = _test_hits(ctx, ctx.run.path("students", "baseline"))
        kd = _test_hits(ctx, ctx.run.path("students", ctx.recipe.distill.losses[0].name))
        rows.append((seed, ce, kd, time.perf_counter() - t0))
        print(f"seed {seed}: CE {statistics.fmean(ce):.3f}  KD {statistics.fmean(kd):.3f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    assert teacher_hits is not None
    t = statistics.fmean(teacher_hits)
    print(f"\nteacher (PyTorch, fp32): {t:.3f} on {len(teacher_hits)} test definitions\n")
    print("| seed | CE-only | KD (top-32) | KD − CE, paired [95 % CI] | retention CE / KD | wall s |")
    print("|---|---|---|---|---|---|")
    for seed, ce, kd, s in rows:
        c, k = statistics.fmean(ce), statistics.fmean(kd)
        print(f"| {seed} | {c:.3f} | {k:.3f} | {_paired(kd, ce)} | {c / t:.2f} / {k / t:.2f} | {s:.0f} |")
    if len(rows) > 1:
        cs, ks = [statistics.fmean(r[1]) for r in rows], [statistics.fmean(r[2]) for r in rows]
        gains = [k - c for c, k in zip(cs, ks, strict=True)]
        print(f"| mean ± sd | {statistics.fmean(cs):.3f} ± {statistics.stdev(cs):.3f} | "
              f"{statistics.fmean(ks):.3f} ± {statistics.stdev(ks):.3f} | "
              f"{statistics.fmean(gains):+.3f} ± {statistics.stdev(gains):.3f} (over seeds) | | |")


if __name__ == "__main__":
    main()
