"""The LLM distillation strategies: one module each, listed in :data:`MODULES` (the registry), in the order their
students are trained and reported.

Each module defines ``STRATEGY``, a :class:`Strategy`: the candidates it trains (``students/<name>/`` and
``students/<name>.json``), what it adds to the distill stage's key, and how it trains them in the distill stage
(``train``; None: a stage of its own trains them, as the black-box SFT student's). The distill stage
(:func:`edgedistill.toolchain.llm.stages.stage_distill`) and the ``accelerate launch`` ranks
(:mod:`edgedistill.toolchain.llm.launch`) only walk this list; adding a strategy is its module and its line in
:data:`MODULES`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistill.core.errors import UserError
from edgedistill.core.fileio import read_json, sha256_json
from edgedistill.core.procs import dies_with_us
from edgedistill.toolchain.llm.context import (
    STUDENT_META_VERSION,
    Context,
    Teachers,
    data_hash,
    student_section,
    teacher_sha,
)
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.training import drop_train_states

#: the strategy modules of this package, in training and report order (the one registry entry a new one adds)
MODULES = ("baseline", "kd", "self_distill", "sft")


def _nothing(_: Any) -> dict[str, Any]:
    return {}


@dataclass
class Round:
    """One distill stage's training, shared by its strategies: the shared key ``h``, the teachers (loaded on
    first use), the ``accelerate`` handle under ``accelerate launch`` (None: one process), and ``info``: every
    student's metadata (``students``) and the teacher cache's (``cache``)."""

    ctx: Context
    h: str
    teachers: Teachers
    accelerator: Any = None
    info: dict[str, Any] = field(default_factory=lambda: {"students": {}, "cache": None})

    @property
    def main(self) -> bool:
        """Whether this process writes files (the only one, or rank 0)."""
        return self.accelerator is None or self.accelerator.is_main_process

    def done(self, name: str) -> None:
        """Record student ``name``'s metadata as written (after every rank has finished it)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        self.info["students"][name] = read_json(self.ctx.run.path("students", f"{name}.json"))


@dataclass(frozen=True)
class Strategy:
    """One distillation strategy: ``candidates(recipe)`` the students it trains (empty while off), ``train(round)``
    trains them in the distill stage (None: its own stage does), ``key(recipe)`` what it adds to the distill
    stage's key (empty while off), ``sections`` the ``distill`` sub-sections it owns (left out of the shared key),
    and ``prepare(ctx, teachers)`` what is built once before ``accelerate launch`` (its info, e.g. the teacher
    cache's)."""

    name: str
    candidates: Callable[[LLMRecipe], list[str]]
    train: Callable[[Round], None] | None = None
    key: Callable[[LLMRecipe], dict[str, Any]] = _nothing
    sections: tuple[str, ...] = ()
    prepare: Callable[[Context, Teachers], dict[str, Any] | None] | None = None


def strategies() -> tuple[Strategy, ...]:
    """Every strategy, in training and report order."""
    return tuple(importlib.import_module(f"{__name__}.{m}").STRATEGY for m in MODULES)


def candidates(recipe: LLMRecipe, distill_only: bool = False) -> list[str]:
    """Every student the recipe trains, in report order (``distill_only``: those the distill stage trains)."""
    return [n for s in strategies() if s.train is not None or not distill_only for n in s.candidates(recipe)]


def distill_key(ctx: Context) -> str:
    """What every distilled student depends on: teacher(s), data, student, the ``distill`` settings no strategy
    owns, seed (each student adds its own part to it)."""
    r = ctx.recipe
    owned = {sec for s in strategies() for sec in s.sections}
    distill = {k: v for k, v in r.section("distill").items()
               if k not in ("cache_dir", "parallel", "num_processes", *owned)}
    parts = {"teacher": teacher_sha(ctx), "data": data_hash(ctx), "student": student_section(ctx),
             "distill": distill, "seed": r.seed, "meta": STUDENT_META_VERSION}
    if r.teacher.ensemble:  # absent without one, so runs made before ensembles keep their hash
        parts["ensemble"] = {"teachers": Teachers(ctx).shas()[1:], "weights": r.teacher.weights()}
    return sha256_json(parts)


def stage_key(ctx: Context, h: str) -> str:
    """The distill stage's key: the shared key ``h`` and what each strategy adds (``h`` itself when none does)."""
    adds = {k: v for s in strategies() for k, v in s.key(ctx.recipe).items()}
    return sha256_json({"students": h, **adds}) if adds else h


def train_students(ctx: Context, h: str, accelerator: Any = None) -> dict[str, Any]:
    """Train every strategy's students that are not already done (one process, or each rank under
    ``accelerator``); returns ``{"students": {name: meta}, "cache": info}``. Only the main process writes files."""
    rnd = Round(ctx, h, Teachers(ctx), accelerator)
    for s in strategies():
        if s.train is not None and s.candidates(ctx.recipe):
            s.train(rnd)
    return rnd.info


def launch(ctx: Context, h: str) -> dict[str, Any]:
    """``distill.parallel``: build what the ranks share here (once), then train the students under ``accelerate
    launch`` with ``num_processes`` ranks (:mod:`edgedistill.toolchain.llm.launch`); the ranks write them."""
    from edgedistill.toolchain.llm.distill.server import free_port

    cfg = ctx.recipe.distill
    cache_info = None
    for s in strategies():
        if s.prepare is not None and s.candidates(ctx.recipe):
            cache_info = s.prepare(ctx, Teachers(ctx)) or cache_info
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", str(cfg.num_processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += ["--use_fsdp"] if cfg.parallel == "fsdp" else ["--multi_gpu"]
    cmd += ["-m", "edgedistill.toolchain.llm.launch", "--out", str(ctx.run.root)]
    names = candidates(ctx.recipe, distill_only=True)
    if ctx.force:  # the ranks run without --force: redo the work by removing what they would reuse
        for name in names:
            ctx.run.path("students", f"{name}.json").unlink(missing_ok=True)
        drop_train_states(ctx.run.path("students"))
    ctx.console.print(f"  accelerate launch: {cfg.num_processes} processes ({cfg.parallel})")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(dies_with_us(cmd), env=env, check=False)
    if proc.returncode != 0:
        raise UserError(f"distill: `accelerate launch` exited {proc.returncode}; re-run to resume from the last "
                        "checkpoint")
    return {"students": {n: read_json(ctx.run.path("students", f"{n}.json")) for n in names}, "cache": cache_info}
