"""LLM distillation strategies side by side on the built-in tiny-llama demo, through the pipeline's own stages:
CE-only, top-k KD from one teacher, KD from a 2-teacher ensemble (the second teacher: same shape, another seed),
self-distillation with an exit combined with that KD (the full model, and the model cut at the exit), and
self-distillation alone (no teacher) — all students at equal steps, batch and initialisation::

    .venv/bin/python perf/strategies_llm.py --out runs/perf-strategies-llm            # the recipe's budgets
    .venv/bin/python perf/strategies_llm.py --out /tmp/s --teacher-steps 300 --steps 150 --n-examples 800

Three run directories under ``--out`` share one main teacher (run ``single`` trains it; the others load its folder
and tokenizer): ``single`` (CE-only, KD, self-distill + KD and its cut), ``ensemble`` (a second teacher trained
there, KD from both) and ``self`` (self-distillation without a teacher). Scores: validation task score on
``student.selection_samples`` briefs (greedy, the recipe's scorer — how the pipeline picks its best student) and
validation NLL; retention is task score / the main teacher's; gain is vs CE-only; "train s" is each student's
own training loop. On a shared host those loops ran minutes apart under different load, so the wall-time ratio to
plain KD is measured apart too: every training step kind (CE, offline KD from each cache, online KD from one and
two teachers, self-distillation with and without KD) run ``--timing-steps`` steps per round, interleaved over
``--timing-rounds`` rounds in one process, median seconds per step ÷ offline KD's. One-off costs (the second
teacher, each top-k cache) are listed apart. Prints Markdown tables; paste them into benchmarks/RESULTS.md.
Re-running reuses every finished stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")


def _recipe(base: dict[str, Any], args: argparse.Namespace, out: Path, variant: str) -> Any:
    from edgedistill.toolchain.recipe import parse_recipe

    doc = yaml.safe_load(yaml.safe_dump(base))
    doc["name"] = f"strategies-{variant}"
    doc["data"]["n_examples"] = args.n_examples or doc["data"]["n_examples"]
    if args.teacher_steps:
        doc["teacher"]["train"]["steps"] = args.teacher_steps
    if args.steps:
        doc["distill"]["train"]["steps"] = args.steps
    kd = {"name": "kd", "divergence": "forward_kl", "temperature": 1.0, "alpha": 0.5}
    doc["distill"].update(losses=[kd], cache_dir=str(out / "teacher-cache"))
    doc["blackbox"] = {"enabled": False}
    sd = {"enabled": True, "exits": [args.exit], "weight": 1.0, "temperature": 1.0, "export_exit": args.exit}
    if variant == "single":
        doc["distill"]["self_distill"] = {**sd, "name": "self-distill-kd", "kd_loss": "kd"}
    else:  # the main teacher and tokenizer of run `single`
        doc["teacher"]["path"] = str(out / "single" / "teacher" / "model")
        doc["tokenizer"] = {"kind": "local", "path": str(out / "single" / "data" / "tokenizer")}
    if variant == "ensemble":
        doc["teacher"]["ensemble"] = [{"seed": doc.get("seed", 0) + 1, "arch": base["teacher"]["arch"],
                                       "train": doc["teacher"]["train"]}]
        doc["distill"]["baseline"] = False
    if variant == "self":
        doc["distill"].update(baseline=False, losses=[], self_distill={**sd, "name": "self-distill"})
    return parse_recipe(doc, f"tiny-llama ({variant})")


def _run(recipe: Any, root: Path, timings: dict[str, float]) -> Any:
    """Data → teacher → ensemble → (top-k cache, timed) → distill in ``root``; returns the context."""
    from rich.console import Console

    from edgedistill.toolchain.llm import context, stages
    from edgedistill.toolchain.pipeline import save_recipe
    from edgedistill.toolchain.rundir import RunDir

    run = RunDir(root)
    save_recipe(recipe, run)
    ctx = stages.Context(recipe, run, Console(stderr=True))
    for name, fn in (("data", stages.stage_data), ("teacher", stages.stage_teacher),
                     ("ensemble", stages.stage_ensemble)):
        t0 = time.perf_counter()
        fn(ctx)
        timings[f"{root.name}/{name}"] = time.perf_counter() - t0
    kd = next((loss for loss in recipe.distill.losses), None)
    if kd is not None:  # build (or hit) the top-k cache apart, so its one-off cost is measured on its own
        t0 = time.perf_counter()
        _, info = context.teacher_cache(ctx, kd, context.Teachers(ctx))
        timings[f"{root.name}/cache ({info['teachers']} teacher{'s' if info['teachers'] > 1 else ''}"
                f"{', hit' if info['hit'] else ''})"] = time.perf_counter() - t0
    stages.stage_distill(ctx)
    return ctx


def _step_times(single: Any, ensemble: Any, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per training step of each kind, interleaved over rounds (same data, batch and student)."""
    from edgedistill.toolchain.llm import context
    from edgedistill.toolchain.llm.distill.kd import train_kd, train_self_distill
    from edgedistill.toolchain.llm.models import EarlyExitLM
    from edgedistill.toolchain.llm.train import train_lm

    r, tok = single.recipe, single.tok
    train = r.distill.train.model_copy(update={"steps": args.timing_steps, "checkpoint_every": 10**6})
    kd = r.distill.losses[0]
    sd = r.distill.self_distill
    data, chunk, pad = single.encoded("train"), r.distill.chunk_tokens, tok.pad_token_id
    one, two = context.Teachers(single), context.Teachers(ensemble)
    cache1, _ = context.teacher_cache(single, kd, one)
    cache2, _ = context.teacher_cache(ensemble, kd, two)

    def student() -> Any:
        return context.new_student(single, one.main())[0]

    kinds = {
        "CE only": lambda ck: train_lm(student(), data, train, 0, pad, ck),
        "KD offline, 1 teacher": lambda ck: train_kd(student(), data, kd, train, 0, pad, chunk, ck, cache=cache1),
        "KD offline, 2-teacher ensemble": lambda ck: train_kd(student(), data, kd, train, 0, pad, chunk, ck,
                                                              cache=cache2, weights=two.weights),
        "KD online, 1 teacher": lambda ck: train_kd(student(), data, kd, train, 0, pad, chunk, ck,
                                                    teacher=one.target()),
        "KD online, 2-teacher ensemble": lambda ck: train_kd(student(), data, kd, train, 0, pad, chunk, ck,
                                                             teacher=two.target(), weights=two.weights),
        "self-distill + KD offline": lambda ck: train_self_distill(
            EarlyExitLM(student(), sd.exits), data, sd, train, 0, pad, chunk, ck, kd=kd, cache=cache1),
        "self-distill alone": lambda ck: train_self_distill(EarlyExitLM(student(), sd.exits), data, sd, train, 0,
                                                            pad, chunk, ck),
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as td:
        warm = train.model_copy(update={"steps": 1})
        train_lm(student(), data, warm, 0, pad, Path(td) / "warm-ce.pt")  # first-call costs outside the timing
        train_self_distill(EarlyExitLM(student(), sd.exits), data, sd, warm, 0, pad, chunk, Path(td) / "warm-sd.pt",
                           kd=kd, cache=cache1)
        for rnd in range(args.timing_rounds):
            for name, fn in kinds.items():
                res = fn(Path(td) / f"{rnd}-{len(samples[name])}-{name.replace(' ', '_')}.pt")
                samples[name].append(res.seconds / res.steps)
    return {k: statistics.median(v) for k, v in samples.items()}


def _ratio(a: float, b: float, spec: str = ".3f") -> str:
    return format(a / b, spec) if b else "–"


def main() -> None:
    from importlib import resources

    from edgedistill.core.fileio import read_json
    from edgedistill.toolchain.llm import context, stages

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/perf-strategies-llm"))
    p.add_argument("--teacher-steps", type=int, default=None, help="default: the recipe's teacher.train.steps")
    p.add_argument("--steps", type=int, default=None, help="every student's steps (default: the recipe's)")
    p.add_argument("--n-examples", type=int, default=None, help="generated briefs (default: the recipe's)")
    p.add_argument("--exit", type=int, default=1, help="the self-distillation exit (layers kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-steps", type=int, default=10, help="steps per kind per round of the timing (0: skip)")
    p.add_argument("--timing-rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = yaml.safe_load(resources.files("edgedistill.toolchain.recipes").joinpath("tiny-llama.yaml").read_text())
    out = args.out.resolve()
    timings: dict[str, float] = {}
    students: dict[str, tuple[str, dict[str, Any]]] = {}
    teacher_score, teacher_nll, n_val = 0.0, 0.0, 0
    ctxs = {}
    for variant in ("single", "ensemble", "self"):
        recipe = _recipe(base, args, out, variant)
        ctx = ctxs[variant] = _run(recipe, out / variant, timings)
        if variant == "single":
            n_val = min(len(ctx.splits.val), recipe.student.selection_samples)
            teacher_score = context.val_task_score(ctx, ctx.teacher_dir)
            teacher_nll = read_json(ctx.run.path("teacher", "metrics.json"))["val_nll"]
        for name in stages.student_names(ctx):
            students[f"{variant}/{name}"] = (variant, read_json(ctx.run.path("students", f"{name}.json")))
    rows = {
        "CE only": "single/baseline", "KD, 1 teacher (top-k)": "single/kd", "KD, 2-teacher ensemble": "ensemble/kd",
        "self-distill + KD (full)": "single/self-distill-kd",
        f"self-distill + KD (cut at exit {args.exit})": f"single/self-distill-kd-exit{args.exit}",
        "self-distill alone (full)": "self/self-distill",
        f"self-distill alone (cut at exit {args.exit})": f"self/self-distill-exit{args.exit}"}
    ce, kd = students["single/baseline"][1], students["single/kd"][1]
    r = _recipe(base, args, out, "single")
    print(f"tiny-llama: {r.data.n_examples} briefs, teacher {r.teacher.train.steps} steps (val task "
          f"{teacher_score:.3f}, val NLL {teacher_nll:.4f}), every student {r.distill.train.steps} steps × batch "
          f"{r.distill.train.batch_size}, torch threads {torch.get_num_threads()}; val task on "
          f"{n_val} briefs\n")
    print("| student | layers | params | val task | retention | gain vs CE (task) | val NLL | gain vs CE (NLL) | "
          "train s | ÷ plain KD |\n|---|---|---|---|---|---|---|---|---|---|")
    for label, key in rows.items():
        if key not in students:
            continue
        m = students[key][1]
        layers = m.get("layers") or r.student.arch.num_hidden_layers
        print(f"| {label} | {layers} | {m['params']:,} | {m['val_task_score']:.3f} | "
              f"{_ratio(m['val_task_score'], teacher_score)} | {m['val_task_score'] - ce['val_task_score']:+.3f} | "
              f"{m['val_nll']:.4f} | {ce['val_nll'] - m['val_nll']:+.4f} | {m['train_seconds']:.1f} | "
              f"{_ratio(m['train_seconds'], kd['train_seconds'], '.2f')} |")
    sd = students.get("single/self-distill-kd", (None, {}))[1]
    if sd.get("exit_val_nll"):
        print("\nself-distill + KD, val NLL per exit: " + ", ".join(f"exit {k} {v:.4f}"
                                                                   for k, v in sd["exit_val_nll"].items()))
    print("\none-off costs (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if v >= 1))

    if args.timing_steps:
        per_step = _step_times(ctxs["single"], ctxs["ensemble"], args)
        base_s = per_step["KD offline, 1 teacher"]
        print(f"\nstep time, {args.timing_steps} steps × {args.timing_rounds} interleaved rounds (median):\n")
        print("| training step | s/step | ÷ offline KD (1 teacher) |\n|---|---|---|")
        for name, sec in per_step.items():
            print(f"| {name} | {sec:.3f} | {_ratio(sec, base_s, '.2f')} |")


if __name__ == "__main__":
    main()
