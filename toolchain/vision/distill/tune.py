"""Automatic KD tuning on the cached teacher (``distill.tune``): Optuna's TPE sampler proposes temperature, α,
learning rate and loss weights; each trial trains a student against the offline teacher cache (the teacher never
runs again) and reports its validation accuracy after every epoch, where a median pruner stops trials that fall
behind. The study is journaled to a file beside the run, so an interrupted search resumes with the trials it
already finished. Selection uses the validation split only; the test split is never read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgedistill.toolchain.progress import say
from edgedistill.toolchain.vision.data import VisionData
from edgedistill.toolchain.vision.distill.cache import TeacherOutputs
from edgedistill.toolchain.vision.distill.trainer import train_student
from edgedistill.toolchain.vision.recipe import DistillConfig, TuneConfig


@dataclass
class TuneResult:
    best_params: dict[str, float]
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def trial_config(base: DistillConfig, params: dict[str, float], epochs: int | None) -> DistillConfig:
    """``base`` with a trial's settings applied (the same mapping writes the chosen ones back)."""
    upd: dict[str, Any] = {}
    response = base.response.model_copy(update={k: params[k] for k in ("temperature", "alpha") if k in params})
    upd["response"] = response
    train: dict[str, Any] = {"lr": params["lr"]} if "lr" in params else {}
    if epochs is not None:
        train["epochs"] = epochs
    upd["train"] = base.train.model_copy(update=train)
    if "feature_weight" in params:
        upd["feature"] = base.feature.model_copy(update={"weight": params["feature_weight"]})
    if "attention_weight" in params:
        upd["attention"] = base.attention.model_copy(update={"weight": params["attention_weight"]})
    if "relation_weight" in params:
        upd["relation"] = base.relation.model_copy(update={"distance_weight": params["relation_weight"],
                                                           "angle_weight": 2 * params["relation_weight"]})
    return base.model_copy(update=upd)


def _suggest(trial: Any, cfg: TuneConfig) -> dict[str, float]:
    out = {}
    for name, log in (("temperature", True), ("alpha", False), ("lr", True), ("feature_weight", False),
                      ("attention_weight", False), ("relation_weight", False)):
        span = getattr(cfg, name)
        if span is not None:
            out[name] = trial.suggest_float(name, span[0], span[1], log=log and span[0] > 0)
    return out


def tune_kd(data: VisionData, cfg: DistillConfig, cached: TeacherOutputs, new_student: Callable[[], nn.Module],
            seed: int, workdir: Path, keep_best: Callable[[nn.Module, float, dict[str, float]], None]) -> TuneResult:
    """Run ``cfg.tune``'s budget of trials; ``keep_best(student, val_accuracy, params)`` is called whenever a
    trial beats every finished one (the caller saves it). ``data.test_x`` is never touched."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = cfg.tune
    workdir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(workdir / "study.journal")))
    study = optuna.create_study(study_name="kd", storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=t.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    done = [tr for tr in study.trials if tr.state.is_finished()]
    if done:
        say(f"  tuning: resuming the search after {len(done)} finished trial(s)")
    t0 = time.perf_counter()

    def objective(trial: Any) -> float:
        params = _suggest(trial, t)
        student = new_student()

        def on_eval(epoch: int, acc: float) -> None:
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned

        ckpt = workdir / f"trial-{trial.number}.pt"
        try:
            res = train_student(student, data, trial_config(cfg, params, t.epochs), ckpt, seed, cached=cached,
                                on_eval=on_eval, desc=f"tuning trial {trial.number + 1}/{t.trials}")
        finally:
            ckpt.unlink(missing_ok=True)
        best = max((tr.value for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE
                    and tr.value is not None), default=-1.0)
        if res.best > best:
            keep_best(student, res.best, params)
        return res.best

    remaining = max(0, t.trials - len(done))
    study.optimize(objective, n_trials=remaining, timeout=None if t.minutes is None else t.minutes * 60,
                   catch=(), gc_after_trial=True)
    trials = [{"number": tr.number, "state": tr.state.name.lower(), "value": tr.value, "params": tr.params,
               "epochs": len(tr.intermediate_values),
               "seconds": (tr.datetime_complete - tr.datetime_start).total_seconds()
               if tr.datetime_complete and tr.datetime_start else None} for tr in study.trials]
    completed = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"{workdir}: tuning finished no trial (budget too small?)")
    return TuneResult(study.best_params, float(study.best_value), trials, time.perf_counter() - t0)


def best_params_as_recipe(params: dict[str, float]) -> dict[str, float]:
    """The chosen settings, rounded for the recipe file."""
    return {k: float(f"{v:.4g}") for k, v in params.items()}

