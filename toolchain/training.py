"""The one training loop: vision teachers and students, LLM teachers, KD and SFT students, in one process or under
``accelerate launch`` (DDP/FSDP).

:func:`fit` runs ``cfg.total_steps`` optimiser steps of ``step_fn(indices)``. Batches come from a deterministic
``sampler(step)``, so a resumed run sees exactly the batches an uninterrupted one would. Every ``cfg.save_every``
steps it checkpoints the model, optimiser, schedule, extra trainable parts (KD adapters), random generators and
history, atomically; a re-run given the same checkpoint path resumes from there. With ``evaluate`` it scores the
model every ``cfg.eval_every`` steps and, with ``cfg.keep_best``, hands back the best weights on that score.

Checkpoints hold tensors and plain data only and are read with ``weights_only=True`` (no code from files).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.core.fileio import atomic_path
from edgedistill.toolchain.progress import make_progress, note, say

#: label of a position or sample that trains no cross-entropy (prompt tokens, padding, unlabelled images);
#: the value torch's ``cross_entropy`` ignores by default
IGNORE_INDEX = -100

#: what every resumable training checkpoint's file name carries: ``[PREFIX]train-state-KEY.pt``
TRAIN_STATE = "train-state-"

#: one step: the batch's sample indices → (loss, named scalars for the history; ``"n"`` = samples or tokens seen)
StepFn = Callable[[Sequence[int]], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    save_every: int
    eval_every: int = 0  # 0: never evaluate
    keep_best: bool = False
    clip_grad_norm: float | None = None
    log_every: int = 10


@dataclass
class FitResult:
    steps: int
    seconds: float
    per_second: float  # samples (vision) or tokens (LLM) per second of this process's training
    best: float | None  # best evaluation score (None without ``evaluate``)
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def train_state(folder: Path, key: str, prefix: str = "", fresh: bool = False) -> Path:
    """The resumable checkpoint ``folder/[prefix]train-state-KEY.pt`` (``KEY``: the first 12 characters of the
    stage's config hash, so a changed recipe never resumes a stale one); ``fresh`` (``--force``) removes it so the
    work is redone. ``folder`` is created."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}{TRAIN_STATE}{key[:12]}.pt"
    if fresh:
        path.unlink(missing_ok=True)
    return path


def drop_train_states(folder: Path, prefix: str = "") -> None:
    """Remove ``folder``'s training checkpoints named with ``prefix`` (and any set aside as ``*.corrupt``) once
    their stage finished: they hold optimiser moments, so they are large. (A save that a kill interrupted leaves a
    hidden temporary file: :class:`~edgedistill.toolchain.rundir.RunDir` clears those when the run is opened.)"""
    for p in folder.glob(f"{prefix}{TRAIN_STATE}*.pt*"):
        p.unlink()


class EpochSampler:
    """Batches of ``batch_size`` indices from ``pool``, a fresh permutation per epoch (seeded by epoch), drawn so
    that one epoch is ``epoch_size`` samples (the pool cycles when smaller). ``sampler(step)`` is deterministic."""

    def __init__(self, pool: torch.Tensor, batch_size: int, epoch_size: int, seed: int) -> None:
        self.pool, self.batch_size, self.seed = pool, batch_size, seed
        self.steps_per_epoch = math.ceil(epoch_size / batch_size)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _order_for(self, epoch: int) -> torch.Tensor:
        n = self.steps_per_epoch * self.batch_size
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        reps = math.ceil(n / len(self.pool))
        return torch.cat([self.pool[torch.randperm(len(self.pool), generator=g)] for _ in range(reps)])[:n]

    def __call__(self, step: int) -> torch.Tensor:
        epoch, s = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self._order_for(epoch)
        return self._order[s * self.batch_size:(s + 1) * self.batch_size]


class ShuffleSampler:
    """Full batches of ``batch_size`` indices over ``range(n)``: one ``random.Random(seed)`` reshuffles the order
    every epoch (a trailing partial batch is dropped). ``sampler(step)`` replays the shuffles, so it is
    deterministic and cheap to resume."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._rng, self._epoch, self._order = random.Random(seed), -1, list(range(n))

    def __call__(self, step: int) -> list[int]:
        epoch, s = divmod(step, self.per_epoch)
        if epoch < self._epoch:
            self._rng, self._epoch = random.Random(self.seed), -1
        while self._epoch < epoch:
            self._order = list(range(self.n))
            self._rng.shuffle(self._order)
            self._epoch += 1
        return self._order[s * self.batch_size:(s + 1) * self.batch_size]


def fit(model: nn.Module, step_fn: StepFn, sampler: Callable[[int], Sequence[int]], opt: torch.optim.Optimizer,
        sched: Any, cfg: LoopConfig, checkpoint: Path, desc: str, evaluate: Callable[[], float] | None = None,
        extra: nn.Module | None = None, generators: Sequence[torch.Generator] = (),
        accelerator: Any = None) -> FitResult:
    """Train ``model`` (and ``extra``) in place; see the module docstring. ``generators`` are random generators
    the step uses (augmentation): checkpointed with the rest so a resumed run draws the same numbers.

    Under ``accelerator``, ``model`` and ``opt`` come already prepared (``accelerator.prepare``) and ``step_fn``
    calls the prepared model; only the main process writes checkpoints, every rank resumes from them.
    """
    state = _resume(checkpoint, _unwrap(model, accelerator), opt, sched, extra, generators)
    done, start, best, history = state["step"], state["step"], state["best"], state["history"]
    best_state = state["best_state"]
    if start:
        say(f"  {desc}: resuming from step {start}/{cfg.total_steps} ({checkpoint.name})")
    main = accelerator is None or accelerator.is_main_process
    params = [p for p in model.parameters()] + (list(extra.parameters()) if extra is not None else [])
    t0, seen = time.perf_counter(), 0.0
    with make_progress() as prog:
        task = prog.add_task(desc, total=cfg.total_steps, completed=done, status="resumed" if start else "")
        while done < cfg.total_steps:
            model.train()
            loss, parts = step_fn(sampler(done))
            opt.zero_grad(set_to_none=True)
            loss.backward() if accelerator is None else accelerator.backward(loss)
            if cfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            opt.step()
            sched.step()
            done += 1
            seen += parts.pop("n", 0.0)
            value = float(loss.detach()) if accelerator is None else float(
                accelerator.reduce(loss.detach(), reduction="mean"))
            prog.update(task, advance=1, status=f"loss {value:.3f}")
            entry: dict[str, float] | None = None
            if done % cfg.log_every == 0 or done == 1 or done == cfg.total_steps:
                entry = {"step": done, "loss": round(value, 5), **{k: round(v, 5) for k, v in parts.items()}}
            if evaluate is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.total_steps):
                score = evaluate()
                entry = {**(entry or {"step": done, "loss": round(value, 5)}), "val": score}
                if cfg.keep_best and (best is None or score >= best):
                    best, best_state = score, _clone(_unwrap(model, accelerator))
                prog.update(task, status=f"val {score:.3f} (best {best if best is not None else score:.3f})")
                note(f"  {desc}: step {done}/{cfg.total_steps}, loss {value:.4f}, val {score:.4f}")
            if entry is not None:
                history.append(entry)
            if main and (done % cfg.save_every == 0 or done == cfg.total_steps):
                _save(checkpoint, _unwrap(model, accelerator), opt, sched, done, best, best_state, history, extra,
                      generators)
    model = _unwrap(model, accelerator)
    if cfg.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    secs = time.perf_counter() - t0
    return FitResult(done, secs, seen / secs if secs > 0 else 0.0, best, start, history)


def _unwrap(model: nn.Module, accelerator: Any) -> nn.Module:
    return accelerator.unwrap_model(model) if accelerator is not None else model


def _clone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, step: int, best: float | None,
          best_state: dict | None, history: list, extra: nn.Module | None,
          generators: Sequence[torch.Generator]) -> None:
    blob = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
            "best": best, "best_state": best_state, "history": history,
            "extra": extra.state_dict() if extra is not None else {},
            "torch_rng": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, extra: nn.Module | None,
            generators: Sequence[torch.Generator]) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`_save`. An unreadable one (truncated by a crash of the disk, or from
    another model) is renamed ``*.corrupt`` and training starts over rather than failing every later run."""
    fresh = {"step": 0, "best": None, "best_state": None, "history": []}
    if not path.is_file():
        return fresh
    before = _clone(model)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        if extra is not None:
            extra.load_state_dict(blob["extra"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        torch.set_rng_state(blob["torch_rng"])
        for g, s in zip(generators, blob["generators"], strict=True):
            g.set_state(s)
    except Exception as err:  # a torn or foreign file: never reuse it, never crash on it again
        model.load_state_dict(before)
        bad = path.with_suffix(path.suffix + ".corrupt")
        path.replace(bad)
        say(f"  {path.name}: unreadable training checkpoint ({type(err).__name__}); moved to {bad.name}, "
             "starting over")
        return fresh
    return blob
