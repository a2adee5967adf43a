"""The ``kd-tuned`` candidate (``distill.tune``, offline only): a search over the KD settings on the cached
teacher; the best trial's student is the candidate and its settings are written back into the run's recipe.yaml
(``distill.tune.chosen``: an output, never part of a key)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgedistill.core.fileio import read_json, sha256_file, write_json, write_text
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.vision import models
from edgedistill.toolchain.vision.context import Context, student_intact
from edgedistill.toolchain.vision.distill.trainer import accuracy
from edgedistill.toolchain.vision.recipe import VisionRecipe
from edgedistill.toolchain.vision.strategies import Strategy, Teach, distill_key

NAME = "kd-tuned"


def write_back_chosen(ctx: Context, chosen: dict[str, float]) -> None:
    """Record the tuner's choice in the run's recipe.yaml (``distill.tune.chosen``; never part of a stage key)."""
    import yaml

    saved = yaml.safe_load(ctx.run.recipe_path.read_text(encoding="utf-8"))
    tune = saved.setdefault("distill", {}).setdefault("tune", {})
    if tune.get("chosen") != chosen:
        tune["chosen"] = chosen
        write_text(ctx.run.recipe_path, yaml.safe_dump(saved, sort_keys=False))


def train(teach: Teach) -> dict[str, Any]:
    """The tuner on the cached teacher; its own key is the shared one plus ``distill.tune``."""
    import shutil

    from edgedistill.toolchain.vision.distill.tune import best_params_as_recipe, tune_kd

    ctx = teach.ctx
    r, d = ctx.recipe, ctx.data
    h = distill_key(ctx, [STRATEGY])
    weights, metrics = ctx.run.path(STRATEGY.weights), ctx.run.path(STRATEGY.metrics)
    if not ctx.force and student_intact(weights, metrics, h):
        return read_json(metrics)
    workdir = ctx.run.path("students", f"tune-{h[:12]}", "x").parent
    if ctx.force:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)

    def new_student() -> nn.Module:
        torch.manual_seed(r.seed)
        return models.build(r.student, d.num_classes)

    def keep_best(student: nn.Module, val: float, params: dict[str, float]) -> None:
        models.save_reference(student, r.student, d.num_classes, weights)

    res = tune_kd(d, r.distill, teach.cached, new_student, r.seed, workdir, keep_best)
    chosen = best_params_as_recipe(res.best_params)
    tuned = load_reference(weights)
    info = {"config_hash": h, "weights_sha256": sha256_file(weights), "role": NAME, "tuned": chosen,
            "chosen": chosen, "val_accuracy": res.best_value, "test_accuracy": accuracy(tuned, d.test_x, d.test_y),
            "trials": res.trials, "tune_seconds": res.seconds,
            "params": sum(p.numel() for p in tuned.parameters())}
    write_json(metrics, info)
    write_back_chosen(ctx, chosen)
    shutil.rmtree(workdir, ignore_errors=True)
    ctx.console.print(f"  tuning: {sum(t['state'] == 'complete' for t in res.trials)} trials completed, "
                      f"{sum(t['state'] == 'pruned' for t in res.trials)} pruned in {res.seconds:.0f} s; chosen "
                      f"{chosen} (val accuracy {res.best_value:.4f})")
    return info


def key(r: VisionRecipe) -> dict[str, Any]:
    tune = {k: v for k, v in r.section("distill")["tune"].items() if k != "chosen"}
    return {"tune": tune} if tune["trials"] else {}


def keep_choice(ctx: Context) -> None:
    """A skipped stage: `run` rewrote recipe.yaml, so put the tuner's choice back in it."""
    tuned = ctx.run.path(STRATEGY.metrics)
    if ctx.recipe.distill.tune.trials and tuned.is_file():
        write_back_chosen(ctx, read_json(tuned)["chosen"])


def report(meta: dict[str, Any]) -> dict[str, Any]:
    return {"tuning": {k: meta[k] for k in ("trials", "chosen", "tune_seconds", "val_accuracy")}}


STRATEGY = Strategy(NAME, train, ship_rank=0,
                    enabled=lambda r: r.distill.mode == "offline" and bool(r.distill.tune.trials), key=key,
                    sections=("tune",), report=report, on_skip=keep_choice)
