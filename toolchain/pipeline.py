"""One pipeline framework for every kind of run: the context every stage gets, the runner, stage skipping, and the
``PIPELINES`` registry keyed by the recipe's ``kind``.

A kind is a folder (``toolchain/vision/``, ``toolchain/llm/``) whose ``__init__`` registers a :class:`Pipeline`:
its recipe class (light: pydantic only) and the module holding its stages (imported when a run needs them). That
module is a :class:`Kind`:

- ``Context``: a :class:`Context` subclass with the kind's lazily loaded data;
- ``STAGES``: :class:`Stage` entries in run order, each tagged with the command that runs it;
- ``REPORT``: the kind's report module, a :class:`~edgedistill.benchmarks.report.common.KindReport` (title, score
  and latency names, summary table and facts, report.json/report.md); its ``build`` writes the report's measurement
  rows (:mod:`edgedistill.benchmarks.row`), which the HTML page, the gate and the recommendations read;
- ``export_options(recipe, formats, variants, layout)``: the recipe with ``edgedistill export``'s options applied;
- ``gate_items(ctx)``: the exported artifacts as :class:`GateItem` (for interleaved re-measurement);
- ``auto_candidates(ctx, spec)``: the exported artifacts measured on a device, for ``export --auto``
  (:mod:`edgedistill.toolchain.auto_select`, whose ``select`` stage the kind lists after export).

Each stage computes a config hash from its recipe sections and the content hashes of its inputs; when the manifest
records the same hash with intact outputs, the stage is skipped. Adding a kind (detection, speech) costs its folder
(its report module included, as ``toolchain/vision/report.py``, ``toolchain/llm/report.py`` and the toy kind's in
``tests/toy_kind/``) and its line in :data:`_KINDS` or a :func:`register_kind` call, plus its subpackages in
``pyproject.toml``'s ``packages`` for the wheel; nothing downstream of the rows tells the kinds apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

import yaml
from rich.console import Console

from edgedistill.core.fileio import write_text
from edgedistill.core.registry import Registry
from edgedistill.toolchain.recipe import RecipeBase
from edgedistill.toolchain.rundir import RunDir

if TYPE_CHECKING:
    from edgedistill.benchmarks.report.common import KindReport
    from edgedistill.benchmarks.select import Candidate

#: kind -> the package whose import registers it (imported on first use, so a vision run never imports the LLM
#: stack); the one registry entry a new kind adds
_KINDS = {"vision": "edgedistill.toolchain.vision", "llm": "edgedistill.toolchain.llm"}


@dataclass(frozen=True)
class Stage:
    """One stage: its name (the manifest key), its body ``fn(ctx)``, and the command that runs it."""

    name: str
    fn: Callable[[Any], Any]
    command: str


@dataclass(frozen=True)
class GateItem:
    """An exported artifact as the gate re-measures it: the file, and the agent's runtime, options and eval file
    the bench stage used."""

    name: str
    candidate: Path
    runtime: str | None = None
    options: tuple[str, ...] = ()
    eval_npz: Path | None = None


@dataclass(frozen=True)
class Pipeline:
    kind: str
    recipe: type[RecipeBase]
    stages_module: str
    description: str = ""
    #: the kind's CLI hooks (``export_model``, ``export_hf``, ``plan``, ``collect``...: whichever it offers), so the
    #: CLI names no kind's modules; None: the kind adds nothing to the generic commands
    cli_module: str | None = None

    @property
    def impl(self) -> Kind:
        return cast("Kind", importlib.import_module(self.stages_module))

    @property
    def cli(self) -> ModuleType | None:
        return importlib.import_module(self.cli_module) if self.cli_module else None

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.impl.STAGES

    def stage_names(self, command: str) -> tuple[str, ...]:
        """Stages a command runs: ``run`` all; ``distill`` every stage before export; ``bench`` also reports."""
        if command == "run":
            return tuple(s.name for s in self.stages)
        wanted = {"bench": ("bench", "report")}.get(command, (command,))
        return tuple(s.name for s in self.stages if s.command in wanted)

    def context(self, recipe: RecipeBase, run: RunDir, console: Console, force: bool = False) -> Context:
        return self.impl.Context(recipe, run, console, force)


class Kind(Protocol):
    """What a kind's stages module provides (module docstring); the framework asks it for nothing else."""

    Context: type[Context]
    STAGES: tuple[Stage, ...]
    REPORT: KindReport

    def export_options(self, recipe: Any, formats: str | None, variants: str | None, layout: str | None) -> Any:
        """The recipe with ``edgedistill export``'s --formats / --variants / --layout applied and checked."""
        ...

    def gate_items(self, ctx: Any) -> list[GateItem]:
        """The exported artifacts, as the gate re-measures them."""
        ...

    def auto_candidates(self, ctx: Any, spec: str) -> tuple[list[Candidate], str | None, str]:
        """The exported artifacts measured on device ``spec``: (candidates, the device's label, the score's name)."""
        ...


PIPELINES: Registry[Pipeline] = Registry("pipeline kind", modules=_KINDS)


def register_kind(kind: str, package: str) -> None:
    """Add a kind at run time: ``package``'s import registers its :class:`Pipeline` (a plugin, or a test's toy
    kind); the same as a line in :data:`_KINDS`."""
    if kind in _KINDS:
        raise ValueError(f"pipeline kind {kind!r} is registered twice")
    _KINDS[kind] = package
    importlib.import_module(package)
    PIPELINES.get(kind)  # the package registered it, or this says which kinds are registered


def kinds() -> list[str]:
    return list(_KINDS)


def get_pipeline(kind: str) -> Pipeline:
    return PIPELINES.get(kind)


def pipeline_of(recipe: RecipeBase) -> Pipeline:
    return get_pipeline(recipe.kind)


@dataclass
class Context:
    """What every stage gets: the recipe, the run directory, a console and ``force``; kinds add their data."""

    recipe: Any
    run: RunDir
    console: Console = field(default_factory=lambda: Console(stderr=True))
    force: bool = False

    def skip(self, stage: str, config_hash: str) -> bool:
        """True (and say so) when ``stage`` already ran with ``config_hash`` and its outputs are intact; else
        announce the stage. ``force`` redoes it."""
        if not self.force and self.run.is_done(stage, config_hash):
            self.console.print(f"[dim]{stage}: unchanged, skipped[/dim]")
            return True
        self.console.print(f"[bold cyan]{stage}[/bold cyan]")
        return False


def save_recipe(recipe: RecipeBase, run: RunDir) -> None:
    """Keep the recipe with the run, so single stages can run on the directory later."""
    write_text(run.recipe_path, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def finish_report(ctx: Context, report: dict[str, Any], report_mod: KindReport) -> None:
    """What every kind's report adds before it is written: the environment fingerprint, the sha256 of each file
    the bench measured, when it was made, and the recipe's gate evaluated on it (absolute limits; ``edgedistill gate
    --baseline`` adds the relative ones); then report.json, report.md and report.html."""
    import datetime as dt

    from edgedistill.benchmarks.gate import evaluate
    from edgedistill.benchmarks.report.common import environment

    bench = ctx.run.stage("bench") or {}
    report["environment"] = environment(report["summary"].get("threads") or [], list(ctx.recipe.bench.devices))
    report["measured"] = bench.get("info", {}).get("measured", {})
    for row in report.get("rows") or []:  # each measured file's hash on its rows
        row["sha256"] = (report["measured"].get(row["artifact"]) or {}).get("sha256")
    report["generated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    cfg = ctx.recipe.section("gate")
    report["gate"] = {"budgets": cfg, **evaluate(report, cfg).to_dict()}
    report_mod.write(report, ctx.run.path("report.json"), ctx.run.path("report.md"))
    try:
        from edgedistill.benchmarks.report.html import write_html
    except ImportError:  # the HTML writer is optional to a report
        return
    write_html(report, ctx.run.path("report.html"), report_mod)


def stale_report(ctx: Context, report: dict[str, Any]) -> list[str]:
    """Why ``report`` no longer describes the run (empty: it does): an artifact changed since the export stage or
    since it was measured, a stage ran after the report was made, or a measured file is not in the report."""
    from edgedistill.core.fileio import sha256_path

    problems = [f"{p} since the export stage wrote it" for p in ctx.run.changed_outputs("export")]
    for item in (report.get("measured") or {}).values():
        path = ctx.run.root / item["path"]
        if not path.exists() or sha256_path(path) != item["sha256"]:
            problems.append(f"{item['path']} changed since it was measured (re-run `edgedistill bench`)")
    made = report.get("generated_at") or ""
    for stage in ("export", "select", "bench"):  # select: export --auto's choice (toolchain/auto_select.py)
        done = (ctx.run.stage(stage) or {}).get("completed_at") or ""
        if made and done > made:
            problems.append(f"the {stage} stage ran after the report was made (re-run `edgedistill report`)")
    if not report.get("measured") and ctx.run.stage("bench"):
        problems.append("the report records no measured files (made before the bench stage finished?)")
    return problems


def stage_errors(ctx: Context, names: tuple[str, ...] | None = None) -> str | None:
    """One line for the errors the named stages (default: all) recorded in their info (``errors``): a stage that
    finished its other work but rejected something (an artifact that crashes its runtime). The CLI prints the
    report first, then exits 2 with this line; a re-run that skips the stage says it again."""
    errors = [e for stage in pipeline_of(ctx.recipe).stages if names is None or stage.name in names
              for e in ((ctx.run.stage(stage.name) or {}).get("info") or {}).get("errors", [])]
    return "; ".join(errors) if errors else None


def run_stages(ctx: Context, names: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """Run the named stages (default: all) in pipeline order; returns the report when the report stage ran."""
    report = None
    for stage in pipeline_of(ctx.recipe).stages:
        if names is None or stage.name in names:
            out = stage.fn(ctx)
            if stage.name == "report":
                report = out
    return report
