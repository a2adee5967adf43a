"""The ``chain`` candidate (``distill.chain``; teacher-assistant distillation): teacher → assistant 1 → … →
student, each link distilled from its predecessor's cached outputs (keyed by the predecessor's weights), each a
finished file that a re-run keeps; with ``chain.self_distill`` the student also has exit heads."""

from __future__ import annotations

from typing import Any

import torch

from edgedistill.core.fileio import read_json, sha256_file, sha256_json, write_json
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.training import drop_train_states, train_state
from edgedistill.toolchain.vision import models
from edgedistill.toolchain.vision.context import TEACHER, Context, data_hash, ensemble_doc, student_intact
from edgedistill.toolchain.vision.distill.cache import cache_key, cached_teacher_outputs, default_cache_dir
from edgedistill.toolchain.vision.distill.trainer import accuracy, freeze, train_student
from edgedistill.toolchain.vision.recipe import DistillConfig, ModelConfig
from edgedistill.toolchain.vision.strategies import Strategy, Teach, strategy_hash
from edgedistill.toolchain.vision.strategies.self_distill import exit_lines, exits_summary, train_exits
from edgedistill.toolchain.vision.strategies.self_distill import key as shared_key

NAME = "chain"


def train(teach: Teach) -> dict[str, Any]:
    """The student's metadata with ``links``: each link's accuracies and retention."""
    ctx = teach.ctx
    r, d, cfg = ctx.recipe, ctx.data, ctx.recipe.distill
    link_cfg = cfg.model_copy(update={"feature": cfg.feature.model_copy(update={"weight": 0.0}),
                                      "attention": cfg.attention.model_copy(update={"weight": 0.0}),
                                      "factor": cfg.factor.model_copy(update={"weight": 0.0})})
    kd = {"response": r.section("distill")["response"], "relation": r.section("distill")["relation"]}
    t = read_json(ctx.run.path("teacher", "metrics.json"))
    prev = {"role": "teacher", "model": r.teacher.name, "sha": ctx.run.output_sha("teacher", TEACHER),
            "val_accuracy": t["val_accuracy"], "test_accuracy": t["test_accuracy"]}
    teacher_test, outputs, links = t["test_accuracy"], teach.cached, []
    a_cfg = link_cfg if cfg.chain.train is None else link_cfg.model_copy(update={"train": cfg.chain.train})
    for i, a in enumerate(cfg.chain.assistants, 1):
        role = f"assistant-{i}"
        h = sha256_json({"from": prev["sha"], "model": a.model_dump(mode="json"), "kd": kd, "data": data_hash(ctx),
                         "train": a_cfg.train.model_dump(mode="json"), "seed": r.seed,
                         # the first link learns from the ensemble's target when there is one
                         **({"ensemble": ensemble_doc(ctx)} if i == 1 and r.ensemble.teachers else {})})
        files = (f"students/chain/{role}.safetensors", f"students/chain/{role}.json")
        info = _train_link(ctx, role, h, a, a_cfg, outputs, files,
                           f"distilling {role} ({a.name}) from the {prev['role']}")
        links.append(_link(prev, role, a.name, info, teacher_test, files))
        prev = {"role": role, "model": a.name, "sha": info["weights_sha256"], **{
            k: info[k] for k in ("val_accuracy", "test_accuracy")}}
        outputs, _, _ = cached_teacher_outputs(cache_key(prev["sha"], data_hash(ctx), None),
                                               cfg.cache_dir or default_cache_dir(), d.train_x, None,
                                               lambda w=files[0]: freeze(load_reference(ctx.run.path(w))))
    h = strategy_hash(teach.base, chain_from=prev["sha"], kd=kd,
                      self_distill=r.section("distill")["self_distill"] if cfg.chain.self_distill else None)
    desc = f"distilling the chain's student from {prev['role']}"
    if cfg.chain.self_distill:
        info = train_exits(ctx, NAME, h, link_cfg, outputs, None, desc + " (with exits)")
    else:
        info = _train_link(ctx, NAME, h, r.student, link_cfg, outputs, (STRATEGY.weights, STRATEGY.metrics), desc)
    links.append(_link(prev, "student", r.student.name, info, teacher_test, (STRATEGY.weights,)))
    info["links"] = links
    write_json(ctx.run.path(STRATEGY.metrics), info)  # same hash and weights: a re-run still finds it intact
    return info


def _link(prev: dict[str, Any], role: str, model: str, info: dict[str, Any], teacher_test: float,
          files: tuple[str, ...]) -> dict[str, Any]:
    """One link of the chain: who taught whom, both accuracies, and the retention (student / its teacher's test
    accuracy, and / the original teacher's)."""
    acc = info["test_accuracy"]
    return {"teacher": prev["role"], "teacher_model": prev["model"], "student": role, "student_model": model,
            "teacher_val_accuracy": prev["val_accuracy"], "teacher_test_accuracy": prev["test_accuracy"],
            "student_val_accuracy": info["val_accuracy"], "student_test_accuracy": acc,
            "retention": acc / prev["test_accuracy"] if prev["test_accuracy"] else None,
            "retention_vs_teacher": acc / teacher_test if teacher_test else None,
            "params": info["params"], "steps": info["steps"], "files": list(files)}


def _train_link(ctx: Context, role: str, h: str, model_cfg: ModelConfig, cfg: DistillConfig, cached: Any,
                files: tuple[str, str], desc: str) -> dict[str, Any]:
    """One link: distil ``model_cfg`` from ``cached`` (its predecessor's outputs) unless a finished one with hash
    ``h`` is on disk; resumable from its own training state."""
    r, d = ctx.recipe, ctx.data
    weights, metrics = ctx.run.path(files[0]), ctx.run.path(files[1])
    if not ctx.force and student_intact(weights, metrics, h):
        return read_json(metrics)
    torch.manual_seed(r.seed)
    model = models.build(model_cfg, d.num_classes)
    ckpt = train_state(weights.parent, h, f"{role}-", ctx.force)
    res = train_student(model, d, cfg, ckpt, r.seed, cached=cached, desc=desc)
    models.save_reference(model, model_cfg, d.num_classes, weights)
    info = {"config_hash": h, "weights_sha256": sha256_file(weights), "role": role, "model": model_cfg.name,
            "val_accuracy": res.best, "test_accuracy": accuracy(model, d.test_x, d.test_y),
            "steps": res.steps, "train_seconds": res.seconds, "samples_per_second": res.per_second,
            "params": sum(p.numel() for p in model.parameters()), "history": res.history}
    write_json(metrics, info)
    drop_train_states(ckpt.parent, f"{role}-")
    return info


def report(meta: dict[str, Any]) -> dict[str, Any]:
    return {"assistant_chain": {"links": meta["links"], **exits_summary(meta)}}


def lines(meta: dict[str, Any]) -> list[str]:
    return [*exit_lines(NAME, meta), *(
        f"  chain link {link['teacher']} → {link['student']}: test {link['teacher_test_accuracy']:.4f} → "
        f"{link['student_test_accuracy']:.4f}, retention {link['retention'] or 0:.3f} "
        f"({link['retention_vs_teacher'] or 0:.3f} of the teacher's)" for link in meta["links"])]


STRATEGY = Strategy(NAME, train, ship_rank=2, enabled=lambda r: bool(r.distill.chain.assistants), key=shared_key,
                    sections=("chain",), optional=True, report=report, lines=lines,
                    outputs=lambda meta: [a for link in meta["links"][:-1] for a in link["files"]])
