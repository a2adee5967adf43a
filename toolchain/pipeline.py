"""The vision pipeline: data → teacher → distill → export → bench → report, each stage reading from and writing
to the run directory.

Each stage computes a config hash from its recipe sections and the hashes of its inputs; when the manifest
records the same hash with intact outputs, the stage is skipped. Stage bodies live in small functions below,
in the order they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml
from pydantic import BaseModel
from rich.console import Console

from edgedistill.core.fileio import sha256_json, write_text
from edgedistill.toolchain.data.vision import VisionData, load_vision_data
from edgedistill.toolchain.recipe import Recipe
from edgedistill.toolchain.rundir import RunDir

STAGES = ("data", "teacher", "distill", "export", "bench", "report")


@dataclass
class Context:
    """What every stage gets: the recipe, the run directory, a console, and lazily the data."""

    recipe: Recipe
    run: RunDir
    console: Console = field(default_factory=lambda: Console(stderr=True))
    force: bool = False

    @cached_property
    def data(self) -> VisionData:
        return load_vision_data(self.recipe.data)

    def skip(self, stage: str, config_hash: str) -> bool:
        return skip_stage(self.run, self.console, self.force, stage, config_hash)


def skip_stage(run: RunDir, console: Console, force: bool, stage: str, config_hash: str) -> bool:
    """True (and say so) when ``stage`` already ran with ``config_hash``; else announce it. Shared by pipelines."""
    if not force and run.is_done(stage, config_hash):
        console.print(f"[dim]{stage}: unchanged, skipped[/dim]")
        return True
    console.print(f"[bold cyan]{stage}[/bold cyan]")
    return False


def save_recipe(recipe: BaseModel, run: RunDir) -> None:
    """Keep the recipe with the run, so single stages can run on the directory later."""
    write_text(run.recipe_path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def run_stages(ctx: Context, stages: tuple[str, ...] = STAGES) -> dict[str, Any] | None:
    """Run ``stages`` in pipeline order; returns the report when the report stage ran."""
    from edgedistill.toolchain import stages as st

    funcs = {"data": st.stage_data, "teacher": st.stage_teacher, "distill": st.stage_distill,
             "export": st.stage_export, "bench": st.stage_bench, "report": st.stage_report}
    report = None
    for name in STAGES:
        if name in stages:
            report = funcs[name](ctx)
    return report


def data_hash(ctx: Context) -> str:
    return sha256_json({"data": ctx.recipe.section("data"), "split": ctx.data.split_hash})

