"""The ``edgedistill`` command line (typer + rich).

``edgedistill run`` executes the whole pipeline on a recipe; ``distill``, ``export``, ``bench``, ``report`` and
``gate`` run one stage on an existing run directory. Errors in user input print one line and exit 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub: everything is local

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_show_locals=False,
    help="Distill a large model into a small one, export it, benchmark it on a device, gate CI on the result.",
)
err_console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 200)  # logs and CI: don't squash the table
_state = {"debug": False}

DEFAULT_RECIPE = "vit-to-mobilenet"
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default: runs/<recipe name>)")]
RunDirOpt = Annotated[Path, typer.Option("--out", "-o", help="an existing run directory (made by `run`)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="re-run stages even when their inputs are unchanged")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks on errors")] = False) -> None:
    _state["debug"] = debug


def _fail(msg: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/bold red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn):  # type: ignore[no-untyped-def]
    """Turn expected user-input errors into one line and exit code 2 (unless --debug)."""
    from edgedistill.core.registry import UnknownNameError
    from edgedistill.runtimes.base import RuntimeError_
    from edgedistill.toolchain.data.vision import DataError
    from edgedistill.toolchain.models.vision import CheckpointError
    from edgedistill.toolchain.recipe import RecipeError

    expected = (RecipeError, DataError, CheckpointError, RuntimeError_, UnknownNameError, FileNotFoundError,
                KeyError, ValueError)
    try:
        return fn()
    except expected as err:
        if _state["debug"]:
            raise
        _fail(str(err).strip("'\""))


def _context(recipe_ref: str | None, out: Path | None, force: bool):  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.pipeline import Context
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    recipe = load_recipe(recipe_ref or DEFAULT_RECIPE)
    run = RunDir(out or Path("runs") / recipe.name)
    return Context(recipe, run, err_console, force)


def _existing(out: Path, force: bool = False):  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.rundir import RunDir

    if not (out / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{out}: not a run directory (no recipe.yaml); create one with `edgedistill run`")
    return _context(str(RunDir(out).recipe_path), out, force)


def _print_table(report: dict) -> None:
    from edgedistill.benchmarks.report import table

    header, body = table(report)
    t = Table(title=f"edgedistill — {report['recipe']}", show_lines=False)
    for h in header:
        t.add_column(h, overflow="fold")
    for row in body:
        t.add_row(*row)
    out_console.print(t)
    s = report["summary"]
    out_console.print(f"recommended: [bold]{s['recommended']}[/bold] ({s['recommended_reason']})")
    if s["kd_helped"] is False:
        out_console.print("[yellow]distillation did not beat the CE-only baseline on this run[/yellow]")
    out_console.print(f"report: {Path(report['run_dir']) / 'report.md'}")


@app.command()
def run(
    recipe: Annotated[
        str | None, typer.Argument(help=f"recipe YAML or built-in name (default: {DEFAULT_RECIPE})")] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run every stage: data → teacher → distill → export → bench → report. Finished stages are skipped."""

    def go() -> None:
        from edgedistill.toolchain.pipeline import run_stages, save_recipe

        ctx = _context(recipe, out, force)
        err_console.print(f"recipe [bold]{ctx.recipe.name}[/bold] → run directory {ctx.run.root}")
        save_recipe(ctx.recipe, ctx.run)
        _print_table(run_stages(ctx))

    _guard(go)


def _stage_command(stages: tuple[str, ...], out: Path, force: bool) -> None:
    def go() -> None:
        from edgedistill.toolchain.pipeline import run_stages

        report = run_stages(_existing(out, force), stages)
        if report is not None:
            _print_table(report)

    _guard(go)


@app.command()
def distill(out: RunDirOpt, force: ForceOpt = False) -> None:
    """Train the teacher if needed, then the CE-only baseline and the distilled student."""
    _stage_command(("data", "teacher", "distill"), out, force)


@app.command()
def export(out: RunDirOpt, force: ForceOpt = False) -> None:
    """Export the distilled student (ONNX fp32 + int8 variants) and check each artifact's parity."""
    _stage_command(("export",), out, force)


@app.command()
def bench(out: RunDirOpt, force: ForceOpt = False) -> None:
    """Measure every model and artifact in fresh processes (latency, peak RSS, size, accuracy)."""
    _stage_command(("bench",), out, force)


@app.command()
def report(out: RunDirOpt) -> None:
    """Rebuild report.json and report.md from the run directory and print the summary table."""
    _stage_command(("report",), out, False)


@app.command()
def gate(
    out: RunDirOpt,
    min_retention: Annotated[float | None, typer.Option(help="override the recipe's gate.min_retention")] = None,
    max_p50_ms: Annotated[float | None, typer.Option(help="override gate.max_p50_ms (1 thread)")] = None,
    min_speedup: Annotated[float | None, typer.Option(help="override gate.min_speedup (1 thread)")] = None,
) -> None:
    """Check the recommended artifact against the budgets; exit 1 when one is missed (for CI)."""

    def go() -> None:
        from edgedistill.benchmarks.gate import check
        from edgedistill.core.fileio import read_json

        ctx = _existing(out)
        g = ctx.recipe.gate
        rep = ctx.run.root / "report.json"
        if not rep.is_file():
            raise FileNotFoundError(f"{rep}: no report yet; run `edgedistill report --out {out}`")
        fails = check(read_json(rep), min_retention if min_retention is not None else g.min_retention,
                      max_p50_ms if max_p50_ms is not None else g.max_p50_ms,
                      min_speedup if min_speedup is not None else g.min_speedup)
        for f in fails:
            err_console.print(f"[red]gate failed:[/red] {f}")
        if fails:
            raise typer.Exit(1)
        out_console.print("gate passed")

    _guard(go)


@app.command()
def recipes(show: Annotated[str | None, typer.Option(help="print this built-in recipe's YAML")] = None) -> None:
    """List the built-in recipes (or print one with --show NAME)."""

    def go() -> None:
        from edgedistill.toolchain.recipe import builtin_names, builtin_text, load_recipe

        if show:
            out_console.print(builtin_text(show), highlight=False, markup=False)
            return
        for name in builtin_names():
            out_console.print(f"[bold]{name}[/bold]  {load_recipe(name).description}")

    _guard(go)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
