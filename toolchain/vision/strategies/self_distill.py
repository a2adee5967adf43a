"""The ``self-distill`` candidate (``distill.self_distill``): the student with early-exit heads that learn from its
own final head; with ``with_teacher`` the final head also learns from the teacher (cached offline, frozen online).
What ships is the whole student, or the student cut at ``export_exit``."""

from __future__ import annotations

from typing import Any

import torch

from edgedistill.core.fileio import read_json, sha256_file, write_json
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.training import drop_train_states, train_state
from edgedistill.toolchain.vision import models
from edgedistill.toolchain.vision.context import TEACHER, Context, student_intact
from edgedistill.toolchain.vision.distill.trainer import freeze
from edgedistill.toolchain.vision.recipe import DistillConfig, VisionRecipe
from edgedistill.toolchain.vision.strategies import Strategy, Teach, strategy_hash


def train(teach: Teach) -> dict[str, Any]:
    ctx = teach.ctx
    cfg = ctx.recipe.distill
    sd = cfg.self_distill
    h = strategy_hash(teach.base, self_distill=ctx.recipe.section("distill")["self_distill"])
    teacher = None
    if sd.with_teacher and cfg.mode == "online":
        teacher = freeze(load_reference(ctx.run.path(TEACHER)))
    return train_exits(ctx, "self-distill", h, cfg, teach.cached if sd.with_teacher else None, teacher,
                       "self-distilling student" + (" (and from the teacher)" if sd.with_teacher else " (no teacher)"))


def train_exits(ctx: Context, role: str, h: str, cfg: DistillConfig, cached: Any, teacher: Any,
                desc: str) -> dict[str, Any]:
    """Train the student with exit heads unless a finished one with hash ``h`` is on disk; save what ships (the
    whole student, or the student cut at ``export_exit``) and every head's validation and test accuracy."""
    from edgedistill.runtimes.early_exit import ExitError, cut
    from edgedistill.toolchain.vision.distill.self_distill import FINAL, train_self_distill

    r, d = ctx.recipe, ctx.data
    weights, metrics = ctx.run.path("students", f"{role}.safetensors"), ctx.run.path("students", f"{role}.json")
    if not ctx.force and student_intact(weights, metrics, h):
        return read_json(metrics)
    torch.manual_seed(r.seed)
    student = models.build(r.student, d.num_classes)
    ckpt = train_state(ctx.run.path("students"), h, f"{role}-", ctx.force)
    res = train_self_distill(student, d, cfg, ckpt, r.seed, cached=cached, teacher=teacher, desc=desc)
    val, test = res.net.head_accuracies(d.val_x, d.val_y), res.net.head_accuracies(d.test_x, d.test_y)
    sample, at = d.train_x[:2], cfg.self_distill.export_exit
    deployed = res.net.deployed(at, sample)
    n_params: dict[str, int | None] = {FINAL: sum(p.numel() for p in student.parameters())}
    for name, head in zip(res.net.exits, res.net.heads, strict=True):  # what each exit would ship
        try:
            n_params[name] = sum(p.numel() for p in cut(student, name, head, sample).parameters())
        except ExitError:  # an exit the model cannot be cut at still trains and is scored
            n_params[name] = None
    models.save_reference(deployed, r.student, d.num_classes, weights)
    info = {"config_hash": h, "weights_sha256": sha256_file(weights), "role": role,
            "val_accuracy": val[res.selected_on], "test_accuracy": test[res.selected_on], "deployed_exit": at,
            "selected_on": res.selected_on,
            "exits": {name: {"val_accuracy": val[name], "test_accuracy": test[name], "params": n_params[name]}
                      for name in [*res.net.exits, FINAL]},
            "steps": res.fit.steps, "train_seconds": res.fit.seconds,
            "samples_per_second": res.fit.per_second, "params": n_params[at or FINAL],
            "history": res.fit.history}
    write_json(metrics, info)
    drop_train_states(ckpt.parent, f"{role}-")
    return info


def exits_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Each head's accuracies and which one ships (empty for a student trained without exits)."""
    return {"deployed_exit": meta["deployed_exit"], "exits": meta["exits"]} if "exits" in meta else {}


def exit_lines(role: str, meta: dict[str, Any]) -> list[str]:
    """Each head's validation and test accuracy, as printed."""
    exits = meta.get("exits")
    return [f"  {role} heads (val → test): " + ", ".join(
        f"{n} {e['val_accuracy']:.4f} → {e['test_accuracy']:.4f}" for n, e in exits.items())] if exits else []


def key(r: VisionRecipe) -> dict[str, Any]:
    """With self-distillation or the chain on, both sections join the stage key (as they did before the
    strategies were split: keys made then still hold)."""
    sec = r.section("distill")
    on = r.distill.self_distill.enabled or bool(r.distill.chain.assistants)
    return {"self_distill": sec["self_distill"], "chain": sec["chain"]} if on else {}


def report(meta: dict[str, Any]) -> dict[str, Any]:
    return {"self_distill": summary} if (summary := exits_summary(meta)) else {}


STRATEGY = Strategy("self-distill", train, ship_rank=4, enabled=lambda r: r.distill.self_distill.enabled, key=key,
                    sections=("self_distill",), optional=True, report=report,
                    lines=lambda meta: exit_lines("self-distill", meta))
