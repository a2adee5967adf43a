"""KD training throughput: offline (cached teacher) and online KD vs CE-only training of the same student.

Same student, same data, same batch size and step count, measured side by side in one process::

    .venv/bin/python perf/kd_throughput.py --steps 60 --threads 1

Prints a Markdown table (samples/s and the ratio to CE-only); paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from edgedistill.toolchain.recipe import load_recipe
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.cache import cached_teacher_outputs
from edgedistill.toolchain.vision.distill.trainer import freeze, train_student, train_supervised
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, DistillConfig, TrainConfig


def _timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    res = fn()
    return time.perf_counter() - t, res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared host)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")
    recipe = load_recipe("vit-to-mobilenet")
    data = load_vision_data(DataConfig(labelled_per_class=20))
    train = TrainConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size, lr=1e-3)
    torch.manual_seed(0)
    teacher = freeze(create(recipe.teacher.name, 10, recipe.teacher.kwargs))
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        secs, _ = _timed(lambda: train_supervised(create(recipe.student.name, 10), data, train,
                                                  torch.arange(len(data.train_x)), tmp / "ce.pt", "ce", 0))
        rows.append(("CE only", secs))
        cache_s, (cached, _, _) = _timed(lambda: cached_teacher_outputs(
            "bench", tmp, data.train_x, None, lambda: teacher))
        for name, mode, kwargs in [("KD offline (cached teacher)", "offline", {"cached": cached}),
                                   ("KD online (teacher every step)", "online", {"teacher": teacher})]:
            cfg = DistillConfig(mode=mode, train=train)
            ckpt = tmp / f"{mode}.pt"
            secs, _ = _timed(lambda cfg=cfg, kwargs=kwargs, ckpt=ckpt: train_student(
                create(recipe.student.name, 10), data, cfg, ckpt, 0, **kwargs))
            rows.append((name, secs))
    samples = args.steps * args.batch_size
    base = samples / rows[0][1]
    print(f"student {recipe.student.name}, teacher {recipe.teacher.name} {recipe.teacher.kwargs}, "
          f"{args.steps} steps × batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"one-off teacher cache build: {cache_s:.1f} s for {len(data.train_x)} images\n")
    print("| training | wall s | samples/s | ratio to CE-only |\n|---|---|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.1f} | {samples / secs:.0f} | {samples / secs / base:.2f} |")


if __name__ == "__main__":
    main()
