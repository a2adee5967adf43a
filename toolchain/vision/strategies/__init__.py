"""The vision distillation strategies: one module each, listed in :data:`MODULES` (the registry), in the order the
distill stage trains them.

Each module defines ``STRATEGY``, a :class:`Strategy`: the candidate it trains (``students/<name>.safetensors``
and ``students/<name>.json``), when it is on, what it adds to the distill stage's key, its fields in the stage's
record (which the report reads) and its rank when validation accuracies tie. The distill stage
(:func:`edgedistill.toolchain.vision.stages.stage_distill`) only walks this list; adding a strategy is its module
and its line in :data:`MODULES`.

Every candidate learns from one :class:`Teach`: the stage's keys and the teacher's signal (the cached teacher
outputs offline, the frozen teacher online, factor transfer's paraphraser), built on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.core.fileio import read_json, sha256_file, sha256_json, write_json
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.training import FitResult, drop_train_states, train_state
from edgedistill.toolchain.vision import models
from edgedistill.toolchain.vision.context import (
    TEACHER,
    Context,
    data_hash,
    ensemble_doc,
    ensemble_member,
    ensemble_shas,
    student_intact,
)
from edgedistill.toolchain.vision.distill.cache import cache_key, cached_teacher_outputs, default_cache_dir, run_teacher
from edgedistill.toolchain.vision.distill.trainer import accuracy, freeze
from edgedistill.toolchain.vision.recipe import VisionRecipe

#: the strategy modules of this package, in training order (the one registry entry a new strategy adds)
MODULES = ("baseline", "kd", "tuned", "mutual", "self_distill", "chain")


def _always(r: VisionRecipe) -> bool:
    return True


def _nothing(_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Strategy:
    """One distillation strategy and the candidate student it trains.

    ``train(teach)`` returns the candidate's metadata (``val_accuracy``, ``test_accuracy``, ...); ``key(recipe)``
    the recipe parts it adds to the distill stage's key (empty while off), ``sections`` the ``distill``
    sub-sections it owns (left out of the shared key); ``report(meta)`` its fields in the stage's record and
    ``lines(meta)`` what it prints; ``outputs(meta)`` its run-relative files beyond the candidate's own.
    ``optional``: an earlier run's candidate of the strategy now off is deleted and never competes. ``on_skip``
    runs when the stage is skipped."""

    name: str
    train: Callable[[Teach], dict[str, Any]]
    ship_rank: int  # ties on validation accuracy go to the lower rank (distillation's first)
    enabled: Callable[[VisionRecipe], bool] = _always
    key: Callable[[VisionRecipe], dict[str, Any]] = _nothing
    sections: tuple[str, ...] = ()
    optional: bool = False
    report: Callable[[dict[str, Any]], dict[str, Any]] = _nothing
    lines: Callable[[dict[str, Any]], list[str]] = lambda meta: []
    outputs: Callable[[dict[str, Any]], list[str]] = lambda meta: []
    on_skip: Callable[[Context], None] | None = None

    @property
    def weights(self) -> str:
        return f"students/{self.name}.safetensors"

    @property
    def metrics(self) -> str:
        return f"students/{self.name}.json"


def strategies() -> tuple[Strategy, ...]:
    """Every strategy, in training order."""
    return tuple(importlib.import_module(f"{__name__}.{m}").STRATEGY for m in MODULES)


def students() -> dict[str, str]:
    """Candidate name → its run-relative weights, in training order."""
    return {s.name: s.weights for s in strategies()}


def distill_key(ctx: Context, keyed: Iterable[Strategy] = (), ensemble: bool = True) -> str:
    """The key shared by the candidates (teacher, data, student, the ``distill`` settings no strategy owns, seed,
    and with ``ensemble`` the ensemble's target), plus what each of ``keyed`` adds: every strategy gives the distill
    stage's key. ``factor`` while off is left out (keys made before it existed still hold)."""
    r = ctx.recipe
    owned = {sec for s in strategies() for sec in s.sections}
    distill = {k: v for k, v in r.section("distill").items() if k != "cache_dir" and k not in owned}
    if not distill["factor"]["weight"]:
        del distill["factor"]
    for s in keyed:
        distill.update(s.key(r))
    doc = {"teacher": ctx.run.output_sha("teacher", TEACHER), "data": data_hash(ctx),
           "student": r.section("student"), "distill": distill, "seed": r.seed}
    if r.ensemble.teachers and ensemble:
        doc["ensemble"] = ensemble_doc(ctx)
    return sha256_json(doc)


def strategy_hash(base: str, **parts: Any) -> str:
    """A candidate's key: the shared key ``base`` and what its strategy adds."""
    return sha256_json({"base": base, **parts})


@dataclass
class Teach:
    """What the candidates learn from: the shared keys (``base``: with the ensemble; ``plain``: without, for the
    candidates that never see it) and the teacher's signal, each part built on first use; ``info`` records the
    teacher cache and the paraphraser for the stage's record."""

    ctx: Context
    base: str
    plain: str
    info: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def teacher(self) -> nn.Module | None:
        """Online: the frozen teacher (None offline)."""
        if self.ctx.recipe.distill.mode == "offline":
            return None
        return freeze(load_reference(self.ctx.run.path(TEACHER)))

    @cached_property
    def paraphraser(self) -> Any:
        """Online with factor transfer: the paraphraser of the teacher's maps (None otherwise)."""
        cfg = self.ctx.recipe.distill
        if cfg.mode == "offline" or cfg.factor.weight <= 0:
            return None
        return self._paraphraser(lambda: run_teacher(self.teacher, self.ctx.data.train_x, cfg.teacher_layer,
                                                     desc="teacher maps for the paraphraser").feature)

    @cached_property
    def cached(self) -> Any:
        """Offline: the cached teacher outputs for the train split (with factor transfer, the paraphraser's
        factors of the cached maps too); None online."""
        cfg = self.ctx.recipe.distill
        if cfg.mode != "offline":
            return None
        cached, self.info["cache"] = self._teacher_outputs()
        self.ctx.console.print(f"  teacher cache {'hit' if self.info['cache']['hit'] else 'written'}: "
                               f"{self.info['cache']['path']}")
        if cfg.factor.weight > 0:  # the paraphraser's factors of the cached maps: one more teacher output
            para = self._paraphraser(lambda: cached.feature)
            cached = replace(cached, factor=para.factors(cached.feature))
        return cached

    def _teacher_outputs(self) -> tuple[Any, dict[str, Any]]:
        """The cached teacher outputs (teachers built only on a miss); for an ensemble every teacher's logits too
        (the key covers them all) and the recipe's weights."""
        ctx = self.ctx
        r, cfg, d = ctx.recipe, ctx.recipe.distill, ctx.data
        layer = cfg.teacher_layer
        shas = ensemble_shas(ctx)
        weights = r.ensemble.normalised_weights() if shas else []
        key = cache_key(ctx.run.output_sha("teacher", TEACHER), data_hash(ctx), layer, shas)

        def loader(rel: str) -> Any:
            return lambda: freeze(load_reference(ctx.run.path(rel)))

        others = [loader(ensemble_member(i)) for i in range(1, len(shas))]
        out, path, hit = cached_teacher_outputs(key, cfg.cache_dir or default_cache_dir(), d.train_x, layer,
                                                loader(TEACHER), others, weights)
        return out, {"path": str(path), "hit": hit, "bytes": path.stat().st_size, "key": key,
                     **({"teachers": len(shas)} if shas else {})}

    def _paraphraser(self, features: Any) -> Any:
        """Factor transfer's paraphraser for the main teacher's ``distill.teacher_layer`` maps, from the cache
        beside the teacher cache or trained (resumably) on ``features()`` and cached."""
        from edgedistill.toolchain.vision.distill.factor import cached_paraphraser, paraphraser_key

        ctx = self.ctx
        r, cfg = ctx.recipe, ctx.recipe.distill
        teacher_key = cache_key(ctx.run.output_sha("teacher", TEACHER), data_hash(ctx), cfg.teacher_layer)
        key = paraphraser_key(teacher_key, cfg.factor, cfg.train.batch_size, cfg.train.max_steps, r.seed)
        ckpt = train_state(ctx.run.path("students"), key, "paraphraser-", ctx.force)
        model, info = cached_paraphraser(key, cfg.cache_dir or default_cache_dir(), features, cfg.factor,
                                         cfg.train.batch_size, ckpt, r.seed, cfg.train.max_steps)
        self.info["paraphraser"] = done = info.to_dict()
        ctx.console.print(f"  paraphraser {'cache hit' if info.hit else 'trained'} ({done['steps']} steps, "
                          f"reconstruction MSE {done['reconstruction_first']:.4g} → "
                          f"{done['reconstruction_last']:.4g})")
        return model


def train_candidate(ctx: Context, role: str, h: str,
                    fit: Callable[[nn.Module, Path], tuple[FitResult, dict[str, Any]]]) -> dict[str, Any]:
    """Train the candidate ``role`` from a fresh student with ``fit(student, checkpoint)`` (its result and extra
    metadata) unless a finished one with hash ``h`` is on disk; save it and its metadata."""
    r, d = ctx.recipe, ctx.data
    weights, metrics = ctx.run.path("students", f"{role}.safetensors"), ctx.run.path("students", f"{role}.json")
    if not ctx.force and student_intact(weights, metrics, h):
        return read_json(metrics)
    torch.manual_seed(r.seed)
    student = models.build(r.student, d.num_classes)
    ckpt = train_state(ctx.run.path("students"), h, f"{role}-", ctx.force)  # --force redoes the work
    res, extra = fit(student, ckpt)
    models.save_reference(student, r.student, d.num_classes, weights)
    info = {"config_hash": h, "weights_sha256": sha256_file(weights), "role": role, "val_accuracy": res.best,
            "test_accuracy": accuracy(student, d.test_x, d.test_y), "steps": res.steps,
            "train_seconds": res.seconds, "samples_per_second": res.per_second,
            "params": sum(p.numel() for p in student.parameters()), "history": res.history, **extra}
    write_json(metrics, info)
    drop_train_states(ckpt.parent, f"{role}-")
    return info


def best_student(ctx: Context) -> tuple[str, str]:
    """The candidate to ship: the highest **validation** accuracy among every trained candidate, ties to the lower
    ``ship_rank``; never chosen on the test split. With ``distill.self_distill.export_exit`` set, only the students
    cut at that exit compete (the recipe asked to deploy the cut model). Returns ``(name, reason)``."""
    r = ctx.recipe
    export_exit = r.distill.self_distill.export_exit
    order = sorted(strategies(), key=lambda s: s.ship_rank)
    scores, cut = {}, set()
    for s in order:
        meta = ctx.run.path(s.metrics)
        if (s.enabled(r) or not s.optional) and meta.is_file() and ctx.run.path(s.weights).is_file():
            m = read_json(meta)
            scores[s.name] = m["val_accuracy"]
            if m.get("deployed_exit") and m["deployed_exit"] == export_exit:
                cut.add(s.name)
    if not scores:
        raise FileNotFoundError(f"{ctx.run.root}: no trained student; run `edgedistill distill` first")
    rank = {s.name: s.ship_rank for s in order}
    pool = {n: v for n, v in scores.items() if n in cut} or scores
    best = max(pool, key=lambda n: (round(pool[n], 6), -rank[n]))
    others = ", ".join(f"{n} {v:.4f}" for n, v in scores.items() if n != best)
    why = f"highest validation accuracy: {best} {scores[best]:.4f}"
    if cut:
        why = (f"distill.self_distill.export_exit: {export_exit} deploys the cut model; "
               f"{'highest validation accuracy among cut students' if len(cut) > 1 else 'validation accuracy'}: "
               f"{best} {scores[best]:.4f}")
    return best, why + (f" (vs {others})" if others else "")
