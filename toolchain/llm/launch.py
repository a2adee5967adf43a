"""The LLM distill stage under ``accelerate launch`` (DDP on CPU with gloo, or DDP/FSDP on GPUs).

The pipeline starts this itself when the recipe sets ``distill.parallel: ddp`` (or ``fsdp``) with
``distill.num_processes: N``; by hand, on an existing run directory whose earlier stages ran::

    accelerate launch --multi_gpu --num_processes 2 -m edgedistill.toolchain.llm.launch --out RUN_DIR

Every rank loads the run's recipe and trains each KD student through the one training loop: rank ``r`` takes its
slice of each global batch and the loss is normalised by the global token count, so N processes reproduce the
one-process run; checkpoints are written by rank 0 and an interrupted launch resumes from them. Rank 0 writes the
students; the parent pipeline records the stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from accelerate import Accelerator
    from rich.console import Console

    from edgedistill.core.quiet import quiet_libraries
    from edgedistill.toolchain.llm.context import Context
    from edgedistill.toolchain.llm.strategies import distill_key, train_students
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the run directory (its recipe.yaml is read)")
    a = p.parse_args(argv)
    quiet_libraries()
    run = RunDir(a.out)
    if not run.recipe_path.is_file():
        raise SystemExit(f"{a.out}: not a run directory (no recipe.yaml)")
    recipe = load_recipe(run.recipe_path)
    if recipe.kind != "llm":
        raise SystemExit(f"{run.recipe_path}: kind: {recipe.kind}; the launcher runs LLM distillation")
    acc = Accelerator(cpu=not torch.cuda.is_available())
    ctx = Context(recipe, run, Console(stderr=True, quiet=not acc.is_main_process))
    train_students(ctx, distill_key(ctx), accelerator=acc)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
