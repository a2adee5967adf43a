"""Distillation strategies side by side on the demo data (digits, 20 labels per class, the built-in
vit-to-mobilenet set-up): CE-only, direct response KD, self-distillation with early exits (BYOT) without a teacher
and on top of KD, and the teacher-assistant chain against direct KD at equal total compute. Prints Markdown for
benchmarks/RESULTS.md.

    .venv/bin/python perf/strategies_chain.py [--seeds 0,1] [--epochs 30] [--assistants mobilenetv3_large_100]
                                              [--teacher-epochs 20] [--out /tmp/strategies-chain]

The teacher is the demo's (ViT-S/8 trained by the pipeline's teacher stage in ``--out/teacher-run``, reused by a
second call); every student is a MobileNetV3-Small trained by the toolchain's own functions with the demo's
distill settings (AdamW + one-cycle, batch 64, lr 0.005, T 4, α 0.9, best epoch on validation), one per seed.

**How compute is counted: training FLOPs**, the forward FLOPs of one image (``torch.utils.flop_counter`` at
32×32, batch 1) × 3 for forward + backward, × batch size × optimizer steps, summed over every model a strategy
trains, plus one forward pass over the training split for each model whose outputs are cached for another (the
teacher for KD, self-distillation on top of KD and the chain; an assistant for the next link). The teacher's own
training is the same for every strategy and is left out. Self-distillation counts its exit heads. Direct KD's
budget is S optimizer steps (``--epochs`` × steps per epoch). The chain gets the same total two ways:

- **equal optimizer steps**: S/2 steps for the assistant, S/2 for the student (what a step budget buys);
- **equal training FLOPs**: S/2 steps for the student, and the assistant gets what the other half of the student's
  FLOPs pays for, after its own cache pass: ``A = (S/2 · 3B · F_student - N · F_assistant) / (3B · F_assistant)``.

A third chain row gives each link the full S steps, as Mirzadeh et al. train it: 1 + F_assistant / F_student
times the compute, for reference. Wall times are printed too but depend on the machine's load.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from edgedistill.core.fileio import sha256_file
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.pipeline import pipeline_of, run_stages
from edgedistill.toolchain.recipe import load_recipe
from edgedistill.toolchain.rundir import RunDir
from edgedistill.toolchain.vision.data import VisionData
from edgedistill.toolchain.vision.distill.cache import run_teacher
from edgedistill.toolchain.vision.distill.self_distill import FINAL, MultiExit, train_self_distill
from edgedistill.toolchain.vision.distill.trainer import accuracy, freeze, train_student, train_supervised
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DistillConfig, SelfDistillConfig, VisionRecipe

STUDENT = "mobilenetv3_small_100"
EXITS = ["blocks.2", "blocks.4"]


def forward_flops(model: nn.Module, sample: torch.Tensor) -> float:
    """FLOPs of one forward pass on ``sample`` (batch 1), as torch's flop counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(sample)
    return float(fc.get_total_flops())


@dataclass
class Row:
    strategy: str
    val: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    tflops: float = 0.0
    steps: str = ""
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # per-exit or per-link accuracies

    def add(self, val: float, test: float, seconds: float, **extra: float) -> None:
        self.val.append(val)
        self.test.append(test)
        self.seconds.append(seconds)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)


def spread(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ({min(xs):.3f}–{max(xs):.3f})"


def teacher_run(out: Path, epochs: int) -> tuple[VisionRecipe, VisionData, Path]:
    """The demo's data split and teacher, trained once by the pipeline into ``out`` (skipped when done)."""
    base = load_recipe("vit-to-mobilenet")
    teacher = base.teacher.model_copy(update={"train": base.teacher.train.model_copy(update={"epochs": epochs})})
    recipe = base.model_copy(update={"teacher": teacher})
    ctx = pipeline_of(recipe).context(recipe, RunDir(out), Console(stderr=True))
    run_stages(ctx, ("data", "teacher"))
    return recipe, ctx.data, out / "teacher" / "teacher.safetensors"


def with_steps(cfg: DistillConfig, steps: int, spe: int) -> DistillConfig:
    """``cfg`` trained for exactly ``steps`` optimizer steps (its one-cycle schedule spans them)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"epochs": max(1, math.ceil(steps / spe)), "max_steps": steps})})


def main() -> None:  # noqa: C901  (one linear script: set-up, the strategies, the tables)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=30, help="direct KD's budget in epochs (the demo's: 30)")
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--assistants", default="mobilenetv3_large_100", help="comma-separated timm names")
    ap.add_argument("--out", type=Path, default=Path("/tmp/strategies-chain"))
    a = ap.parse_args()
    recipe, data, teacher_path = teacher_run(a.out / "teacher-run", a.teacher_epochs)
    teacher = freeze(load_reference(teacher_path))
    t_test, t_val = accuracy(teacher, data.test_x, data.test_y), accuracy(teacher, data.val_x, data.val_y)
    cached = run_teacher(teacher, data.train_x, None, desc=None)
    cfg = recipe.distill
    b, n = cfg.train.batch_size, len(data.train_x)
    spe = math.ceil(n / b)
    s_steps = spe * a.epochs
    sample = data.train_x[:1]
    f_t = forward_flops(teacher, sample)
    f_s = forward_flops(create(STUDENT, data.num_classes), sample)
    sd_cfg = SelfDistillConfig(enabled=True, exits=EXITS)
    f_sd = forward_flops(_Logits(MultiExit(create(STUDENT, data.num_classes), sd_cfg, data.num_classes,
                                           data.train_x[:2])), sample)
    tf = 1e-12

    def train_cost(steps: int, f: float) -> float:
        return steps * b * 3 * f * tf

    ckpts = a.out / "ckpt"  # training states, named by model and steps: an interrupted call resumes
    ckpts.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Row] = {}

    def row(name: str, tflops: float, steps: str) -> Row:
        return rows.setdefault(name, Row(name, tflops=tflops, steps=steps))

    def new(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return create(name, data.num_classes)

    def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        return out, time.perf_counter() - t0

    kd_cfg = with_steps(cfg, s_steps, spe)
    teacher_pass = n * f_t * tf
    seeds = [int(x) for x in a.seeds.split(",")]
    f_assts = {x: forward_flops(create(x, data.num_classes), sample) for x in a.assistants.split(",")}
    for seed in seeds:
        tag = f"s{seed}"
        # CE only: the labelled subset, the same step budget
        m = new(STUDENT, seed)
        res, secs = timed(train_supervised, m, data, kd_cfg.train.model_copy(update={"augment": False}),
                          torch.nonzero(data.labelled).flatten(), ckpts / f"ce-{s_steps}-{tag}.pt", "CE-only", seed)
        row("CE only (200 labels)", train_cost(s_steps, f_s), f"{s_steps}").add(
            res.best, accuracy(m, data.test_x, data.test_y), secs)
        # direct response KD from the cached teacher
        m = new(STUDENT, seed)
        res, secs = timed(train_student, m, data, kd_cfg, ckpts / f"kd-{s_steps}-{tag}.pt", seed, cached=cached,
                          desc="direct KD")
        row("direct KD (teacher → student)", train_cost(s_steps, f_s) + teacher_pass, f"{s_steps}").add(
            res.best, accuracy(m, data.test_x, data.test_y), secs)
        # self-distillation: no teacher, and on top of KD
        for i, (name, c) in enumerate((("self-distillation, no teacher", None), ("self-distillation + KD", cached))):
            m = new(STUDENT, seed)
            sd, secs = timed(train_self_distill, m, data, kd_cfg.model_copy(update={"self_distill": sd_cfg}),
                             ckpts / f"sd{i}-{s_steps}-{tag}.pt", seed, cached=c, desc=name)
            test = sd.net.head_accuracies(data.test_x, data.test_y)
            val = sd.net.head_accuracies(data.val_x, data.val_y)
            row(name, train_cost(s_steps, f_sd) + (teacher_pass if c is not None else 0), f"{s_steps}").add(
                val[FINAL], test[FINAL], secs, **{f"exit {e} test": test[e] for e in EXITS},
                **{f"exit {e} val": val[e] for e in EXITS})
        # the teacher-assistant chain against direct KD
        for asst in f_assts:
            f_a = f_assts[asst]
            half = s_steps // 2
            # at least 20 steps: a one-cycle schedule needs a few (the table shows the steps each row got)
            a_flops = max(20, math.floor((half * 3 * b * f_s - n * f_a) / (3 * b * f_a)))
            for v, (label, a_steps, st_steps) in enumerate((("equal optimizer steps", half, half),
                                                            ("equal training FLOPs", a_flops, half),
                                                            ("each link the full budget", s_steps, s_steps))):
                asst_m = new(asst, seed)
                _, a_secs = timed(train_student, asst_m, data, with_steps(cfg, a_steps, spe),
                                  ckpts / f"a{v}-{asst}-{a_steps}-{tag}.pt", seed, cached=cached,
                                  desc=f"assistant {asst} ({a_steps} steps)")
                a_out = run_teacher(freeze(asst_m), data.train_x, None, desc=None)
                m = new(STUDENT, seed)
                res, secs = timed(train_student, m, data, with_steps(cfg, st_steps, spe),
                                  ckpts / f"c{v}-{asst}-{a_steps}-{st_steps}-{tag}.pt", seed, cached=a_out,
                                  desc=f"student from {asst}")
                a_test, a_val = accuracy(asst_m, data.test_x, data.test_y), accuracy(asst_m, data.val_x, data.val_y)
                s_test = accuracy(m, data.test_x, data.test_y)
                cost = train_cost(a_steps, f_a) + n * f_a * tf + train_cost(st_steps, f_s) + teacher_pass
                row(f"chain via {asst}, {label}", cost, f"{a_steps} + {st_steps}").add(
                    res.best, s_test, secs + a_secs, **{
                        "assistant test": a_test, "assistant val": a_val,
                        "assistant / teacher": a_test / t_test, "student / assistant": s_test / a_test,
                        "student / teacher": s_test / t_test})
        for p in ckpts.glob(f"*-{tag}.pt"):
            p.unlink()
        print(f"\n<!-- after seed {seed} -->", flush=True)
        tables(rows, f"Teacher ViT-S/8 ({sha256_file(teacher_path)[:12]}): val {t_val:.4f}, test {t_test:.4f}. "
               f"Forward FLOPs per 32×32 image: teacher {f_t / 1e6:.1f} M, student {f_s / 1e6:.2f} M, student with "
               f"exit heads {f_sd / 1e6:.2f} M" + "".join(f", {x} {f / 1e6:.1f} M" for x, f in f_assts.items())
               + f". S = {s_steps} steps ({a.epochs} epochs × {spe}), batch {b}, {n} train images; seeds so far: "
               f"{', '.join(str(x) for x in seeds[:seeds.index(seed) + 1])}.")


def tables(rows: dict[str, Row], head: str) -> None:
    """The three Markdown tables: every strategy; the exits of the self-distilled students; the chain's links."""
    print(head + "\n")
    print("| strategy | optimizer steps | training TFLOPs | val accuracy | test accuracy | wall s (mean) |")
    print("|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r.strategy} | {r.steps} | {r.tflops:.2f} | {spread(r.val)} | {spread(r.test)} | "
              f"{statistics.mean(r.seconds):.0f} |")
    print("\n| strategy | " + " | ".join(f"exit {e} val / test" for e in EXITS) + " |")
    print("|---|" + "---|" * len(EXITS))
    for r in rows.values():
        if "exit" in " ".join(r.extra):
            print(f"| {r.strategy} | " + " | ".join(
                f"{spread(r.extra[f'exit {e} val'])} / {spread(r.extra[f'exit {e} test'])}" for e in EXITS) + " |")
    print("\n| chain | assistant val / test | assistant / teacher | student / assistant | student / teacher |")
    print("|---|---|---|---|---|")
    for r in rows.values():
        if "assistant test" in r.extra:
            x = r.extra
            print(f"| {r.strategy} | {spread(x['assistant val'])} / {spread(x['assistant test'])} | "
                  f"{spread(x['assistant / teacher'])} | {spread(x['student / assistant'])} | "
                  f"{spread(x['student / teacher'])} |")


class _Logits(nn.Module):
    """A :class:`MultiExit` as a plain module for the flop counter (all heads run)."""

    def __init__(self, net: MultiExit) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _, exits, _ = self.net(x)
        return torch.stack([logits, *exits]).sum(0)


if __name__ == "__main__":
    main()
