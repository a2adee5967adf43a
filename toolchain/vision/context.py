"""What every vision stage and strategy shares: the stage context, the teacher's file, the data key, the ensemble's
files and keys, and the check that a finished student is intact."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import read_json, sha256_file, sha256_json
from edgedistill.toolchain import pipeline
from edgedistill.toolchain.vision.data import VisionData, load_vision_data
from edgedistill.toolchain.vision.recipe import TeacherConfig, VisionRecipe

TEACHER = "teacher/teacher.safetensors"


@dataclass
class Context(pipeline.Context):
    """A vision stage's context: the framework's, plus the data split (loaded on first use)."""

    recipe: VisionRecipe

    @cached_property
    def data(self) -> VisionData:
        return load_vision_data(self.recipe.data)


def data_hash(ctx: Context) -> str:
    """The data stage's key: the data section and the split."""
    return sha256_json({"data": ctx.recipe.section("data"), "split": ctx.data.split_hash})


def ensemble_member(i: int) -> str:
    """The run-relative weights of extra teacher ``i`` of ``ensemble.teachers`` (1-based)."""
    return f"teacher/ensemble-{i}.safetensors"


def members(ctx: Context) -> list[tuple[TeacherConfig, int]]:
    """``ensemble.teachers`` with their seeds (default: the recipe's seed + the 1-based position)."""
    r = ctx.recipe
    return [(t, r.seed + i if t.seed is None else t.seed) for i, t in enumerate(r.ensemble.teachers, 1)]


def ensemble_doc(ctx: Context) -> dict[str, Any]:
    """What defines the ensemble target: every teacher's weights file and the recipe's weights."""
    return {"teachers": ensemble_shas(ctx), "weights": ctx.recipe.ensemble.normalised_weights()}


def ensemble_shas(ctx: Context) -> list[str]:
    """The sha256 of every teacher of the ensemble, the main teacher first (empty for a single teacher)."""
    n = len(ctx.recipe.ensemble.teachers)
    return [ctx.run.output_sha("teacher", p) for p in (TEACHER, *map(ensemble_member, range(1, n + 1)))] if n else []


def student_intact(weights: Path, metrics: Path, h: str) -> bool:
    """A finished student: its metadata has this stage hash and names the weights' own sha256 (weights written
    beside stale metadata by a killed run, or edited since, are retrained)."""
    if not (weights.is_file() and metrics.is_file()):
        return False
    try:
        meta = read_json(metrics)
    except ValueError:
        return False
    return meta.get("config_hash") == h and meta.get("weights_sha256") == sha256_file(weights)
