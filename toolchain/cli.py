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

from edgedistill.core.quiet import quiet_libraries

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
    from edgedistill.core.errors import UserError
    from edgedistill.runtimes.base import RuntimeError_

    # recipe, data, checkpoint, run-state and collect errors are ValueErrors; registry misses are KeyErrors;
    # OSError: a path that is missing, a folder, or unreadable (its message names it)
    expected = (UserError, ValueError, KeyError, OSError, RuntimeError_)
    try:
        return fn()
    except expected as err:
        if _state["debug"]:
            raise
        _fail(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))  # KeyError quotes its text


def _context(recipe_ref: str | None, out: Path | None, force: bool):  # type: ignore[no-untyped-def]
    """The stage context for a recipe (any kind) and its run directory."""
    from edgedistill.toolchain.pipeline import pipeline_of
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    recipe = load_recipe(recipe_ref or DEFAULT_RECIPE)
    run = RunDir(out or Path("runs") / recipe.name)
    return pipeline_of(recipe).context(recipe, run, err_console, force)


def _existing(out: Path, force: bool = False):  # type: ignore[no-untyped-def]
    """The context of an existing run directory (its saved recipe decides the kind)."""
    if not (out / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{out}: not a run directory (no recipe.yaml); create one with `edgedistill run`")
    return _context(str(out / "recipe.yaml"), out, force)


def _print_rows(title: str, header: list[str], body: list[list[str]]) -> None:
    t = Table(title=title, show_lines=False)
    for h in header:
        t.add_column(h, overflow="fold")
    for row in body:
        t.add_row(*row)
    out_console.print(t)


def _print_report(report: dict, kind: str) -> None:
    """The kind's summary table, the device section when other devices ran, the summary and the gate."""
    from edgedistill.benchmarks.report.common import devices_markdown
    from edgedistill.toolchain.pipeline import get_pipeline

    rep = get_pipeline(kind).impl.REPORT
    _print_rows(f"edgedistill — {report['recipe']} ({kind})", *rep.table(report))
    if lines := devices_markdown(report.get("devices") or []):
        out_console.print("\n".join(lines), highlight=False, markup=False)
    if report.get("auto"):
        _print_auto(report["auto"], Path(report["run_dir"]))
    for line in rep.summary_lines(report):
        out_console.print(line)
    if gate := report.get("gate"):
        verdict = "[green]passed[/green]" if not gate["failures"] else "[red]failed[/red]: " + "; ".join(
            gate["failures"])
        if any(v is not None for v in gate["budgets"].values()):
            out_console.print(f"gate budgets: {verdict}")
    out_console.print(f"report: {Path(report['run_dir']) / 'report.md'}")


@app.command()
def run(
    recipe: Annotated[
        str | None, typer.Argument(help=f"recipe YAML or built-in name (default: {DEFAULT_RECIPE})")] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run every stage of a recipe (vision: data → teacher → distill → export → bench → report; LLM: also the
    black-box SFT student). Finished stages are skipped; interrupted training resumes from its checkpoint."""

    def go() -> None:
        from edgedistill.core.errors import UserError
        from edgedistill.toolchain.pipeline import run_stages, save_recipe, stage_errors

        ctx = _context(recipe, out, force)
        err_console.print(f"recipe [bold]{ctx.recipe.name}[/bold] ({ctx.recipe.kind}) → run directory {ctx.run.root}")
        save_recipe(ctx.recipe, ctx.run)
        report = run_stages(ctx)
        assert report is not None
        _print_report(report, ctx.recipe.kind)
        if errors := stage_errors(ctx):  # the rest of the run is done and kept
            raise UserError(errors)

    _guard(go)


def _stage_command(command: str, out: Path, force: bool, update=None) -> None:  # type: ignore[no-untyped-def]
    """Run one command's stages on an existing run directory, for any kind (``update`` edits the recipe first)."""

    def go() -> None:
        from edgedistill.core.errors import UserError
        from edgedistill.toolchain.pipeline import pipeline_of, run_stages, stage_errors

        ctx = _existing(out, force)
        if update is not None:
            ctx.recipe = update(ctx.recipe)
        report = run_stages(ctx, names := pipeline_of(ctx.recipe).stage_names(command))
        if report is not None:
            _print_report(report, ctx.recipe.kind)
        if errors := stage_errors(ctx, names):  # the stages' other work is done and kept
            raise UserError(errors)

    _guard(go)


@app.command()
def distill(out: RunDirOpt, force: ForceOpt = False) -> None:
    """Run every stage before export on a run directory: data, teacher, and the students (vision: CE-only
    baseline + KD student; LLM: one KD student per loss + the black-box SFT student). --force retrains them."""
    _stage_command("distill", out, force)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="an existing run directory (made by `run`); with "
                                      "--model, the folder to write the artifacts into")],
    force: ForceOpt = False,
    model: Annotated[str | None, typer.Option(
        help="export this timm model (with --checkpoint and --num-classes) instead of a run's student")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="--model's weights: a local .safetensors (or weights-only .pth) state dict")] = None,
    num_classes: Annotated[int | None, typer.Option(help="--model's number of classes")] = None,
    image_size: Annotated[int, typer.Option(help="--model's input size (square)")] = 32,
    data: Annotated[str, typer.Option(
        help="--model's calibration and parity images: 'digits' or an image folder (one sub-folder per class)")
    ] = "digits",
    formats: Annotated[str | None, typer.Option(
        help="comma-separated formats: vision onnx,tflite; LLM gguf,onnx (default: the recipe's export section)")
    ] = None,
    variants: Annotated[str | None, typer.Option(
        help="comma-separated variants of the chosen formats, e.g. fp32,int8_static or f32,q4_k_m "
             "(default: the recipe's)")] = None,
    layout: Annotated[str | None, typer.Option(
        help="vision: TFLite input layout, nchw or nhwc with the transpose inside the graph (default: the recipe's)")
    ] = None,
    repro: Annotated[Path | None, typer.Option(
        help="if a TFLite conversion fails, write the smallest failing submodule and a repro script here")] = None,
    hf: Annotated[Path | None, typer.Option(
        "--hf", help="export this local Hugging Face causal-LM folder (Llama 2/3.x, Mistral, Qwen2.5; its own "
        "tokenizer) instead of a run's student; --formats FORMAT[:VARIANT],... e.g. gguf:q4_k_m,onnx:fp32")] = None,
    auto: Annotated[bool, typer.Option(
        "--auto", help="measure every exported artifact on --device and ship the fastest (p50) that keeps "
        "--min-retention of its PyTorch source's accuracy (LLM: task score) and passed parity; each other one is "
        "listed with its reason (export/auto.json, the report's recommended artifact). Default: the recipe's "
        "export.auto")] = False,
    device: Annotated[str | None, typer.Option(
        help="--auto's device spec, e.g. host, rpi4-constrained, qemu-arm64:rpi4 (default: export.auto.device)")
    ] = None,
    min_retention: Annotated[float | None, typer.Option(
        help="--auto's budget: artifact score / its PyTorch source's, e.g. 0.99 (default: export.auto.min_retention)")
    ] = None,
) -> None:
    """Export a run's student (vision: ONNX + TFLite; LLM: the best student as GGUF + ONNX) and check every
    artifact against its PyTorch source.

    With --model, export any local timm model + checkpoint instead, e.g. `edgedistill export --model
    mobilenetv3_small_100 --checkpoint w.safetensors --num-classes 10 --formats tflite --out DIR`; with --hf, any
    local LLM folder, e.g. `edgedistill export --hf ./Llama-3.2-1B --formats gguf:f32,gguf:q4_k_m,onnx:fp32 --out
    DIR`: each file is checked against the folder (tokens on fixed texts, fp32 logits over 512 positions, KLD).

    With --auto (on a run directory), every exported artifact is measured on --device and the fastest that meets
    --min-retention is chosen, e.g. `edgedistill export --out runs/demo --auto --device rpi4-constrained
    --min-retention 0.99`. No artifact meeting the budget is a result, not an error: it is printed and recorded,
    the exit code is 0, and `edgedistill gate` fails on it.
    """

    def go() -> None:
        if (auto or device is not None or min_retention is not None) and (hf is not None or model is not None):
            raise ValueError("--auto/--device/--min-retention: they choose among a run's artifacts (its test split "
                             "and bench settings); not with --model or --hf")
        if hf is not None and model is not None:
            raise ValueError("--hf and --model: give one (an LLM folder or a timm model)")
        if hf is not None:
            _export_hf(hf, formats, out)
        elif model is not None:
            _export_model(out, model, checkpoint, num_classes, image_size, data, formats, variants, layout, repro)
        else:
            _export_run(out, force, formats, variants, layout, auto, device, min_retention)

    _guard(go)


def _export_run(out: Path, force: bool, formats: str | None, variants: str | None, layout: str | None, auto: bool,
                device: str | None, min_retention: float | None) -> None:
    """``export`` on a run directory: the kind's export stages with the options applied, then --auto's choice."""
    from edgedistill.core.errors import UserError
    from edgedistill.toolchain import auto_select
    from edgedistill.toolchain.pipeline import pipeline_of, run_stages, stage_errors

    ctx = _existing(out, force)
    ctx.recipe = pipeline_of(ctx.recipe).impl.export_options(ctx.recipe, formats, variants, layout)
    ctx.recipe = auto_select.apply_options(ctx.recipe, auto, device, min_retention)
    run_stages(ctx, names := pipeline_of(ctx.recipe).stage_names("export"))  # export, then --auto's choice
    if ctx.recipe.export.auto.enabled and (decision := auto_select.fresh_decision(ctx.run)):
        _print_auto(decision, ctx.run.root, hint=True)
    if errors := stage_errors(ctx, names):  # the other artifacts are kept
        raise UserError(errors)


def _export_hf(folder: Path, formats: str | None, out: Path) -> None:
    """``export --hf``: a local LLM folder, through the kind that offers ``export_hf``."""
    hooks = _kind_hooks("export_hf", "--hf")
    records = hooks.export_hf(folder, formats, out, lambda m: err_console.print(m, highlight=False))
    _print_rows("exported artifacts", *hooks.artifact_rows(records))
    out_console.print(f"artifacts: {out / 'artifacts.json'}")
    if failed := hooks.failed_artifacts(records):
        raise ValueError(f"{folder}: {', '.join(failed)} failed the parity contract (see {out / 'artifacts.json'})")


def _export_model(out: Path, model: str, checkpoint: Path | None, num_classes: int | None, image_size: int,
                  data: str, formats: str | None, variants: str | None, layout: str | None,
                  repro: Path | None) -> None:
    """``export --model``: a local model + checkpoint, through the kind that offers ``export_model``."""
    hooks = _kind_hooks("export_model", "--model")
    records = hooks.export_model(out, model, checkpoint, num_classes, image_size, data, formats, variants, layout,
                                 repro, err_console.print)
    _print_rows("exported artifacts", *hooks.artifact_rows(records))
    out_console.print(f"artifacts: {out / 'artifacts.json'}")


def _kind_hooks(name: str, flag: str):  # type: ignore[no-untyped-def]
    """The CLI hooks module of the kind that offers ``name`` (``flag`` names it in the error)."""
    from edgedistill.toolchain.pipeline import get_pipeline, kinds

    for kind in kinds():
        if (hooks := get_pipeline(kind).cli) is not None and hasattr(hooks, name):
            return hooks
    raise ValueError(f"{flag}: no kind of pipeline offers it")


def _print_auto(decision: dict, root: Path, hint: bool = False) -> None:
    """export --auto's candidates, the chosen one starred, each other one with its reason."""
    from edgedistill.benchmarks.report.common import auto_headline, auto_table
    from edgedistill.toolchain.auto_select import AUTO_JSON

    _print_rows(f"export --auto on {decision['device']} ({decision.get('label') or '?'})", *auto_table(decision))
    out_console.print(auto_headline(decision).replace("**", ""), highlight=False, markup=False)
    if hint:
        out_console.print(f"decision: {root.joinpath(*AUTO_JSON)} (after `bench` or `report`, the chosen artifact is "
                          "the report's recommended one; `gate` fails when none was chosen)", highlight=False)


DevicesOpt = Annotated[str | None, typer.Option(
    "--devices", help="comma-separated device specs, e.g. host,rpi4-constrained,qemu-arm64,rpi4-estimated "
    "(see `edgedistill devices`); overrides the recipe's bench.devices and rebuilds the report")]
ProfileOpt = Annotated[list[Path] | None, typer.Option(
    "--profile", help="an extra device profile YAML file or folder (repeatable)")]


@app.command()
def bench(out: RunDirOpt, force: ForceOpt = False, devices: DevicesOpt = None, profile: ProfileOpt = None) -> None:
    """Measure every model and artifact with the benchmark agent, each in a fresh process (latency, peak RSS,
    size, accuracy or task score); with --devices, every artifact on every device too (LLM runs: per generated
    token, and the task score from the device's own outputs). --force re-measures everything."""

    def update(recipe):  # type: ignore[no-untyped-def]
        changes: dict = {"profiles": [*recipe.bench.profiles, *(profile or [])]}
        if devices is not None:
            changes["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
        return recipe.model_copy(update={"bench": recipe.bench.model_copy(update=changes)})

    _stage_command("bench", out, force, update)


devices_app = typer.Typer(help="Device profiles and transports: list them, set up emulation.",
                          invoke_without_command=True, no_args_is_help=False)
app.add_typer(devices_app, name="devices")


@devices_app.callback()
def devices_list(ctx: typer.Context, profile: ProfileOpt = None) -> None:
    """List the device profiles (built-in and --profile files) and the device specs bench accepts."""
    if ctx.invoked_subcommand is not None:
        return

    def go() -> None:
        from edgedistill.devices.profile import load_profiles

        t = Table(title="device profiles")
        for h in ("name", "kind", "cores", "GHz", "RAM MB", "ISA", "GFLOP/s fp32", "GOP/s int8", "GB/s", "source"):
            t.add_column(h, overflow="fold")
        for p in load_profiles(profile or []).values():
            t.add_row(p.name, p.kind, str(p.cores), f"{p.clock_ghz:g}", str(p.ram_mb), p.isa,
                      f"{p.peak_gflops_fp32:g}", f"{p.peak_gops_int8:g}", f"{p.mem_bandwidth_gbs:g}", p.source)
        out_console.print(t)
        out_console.print("device specs: host | PROFILE-constrained | PROFILE-estimated | qemu-arm64[:PROFILE] | "
                          "ssh://user@host[:port]?profile=PROFILE&key=FILE | adb[://SERIAL]?profile=PROFILE",
                          highlight=False)

    _guard(go)


@devices_app.command("setup")
def devices_setup(
    transport: Annotated[str, typer.Argument(help="the transport to set up: qemu-arm64")],
    force: Annotated[bool, typer.Option("--force", help="rebuild even when the cache is ready")] = False,
) -> None:
    """Build what a transport needs once per machine (qemu-arm64: the cached arm64 rootfs, and llama.cpp
    cross-built for Armv8.0-A and Armv8.2-A + dot product so GGUF files run there and on SSH boards; idempotent)."""

    def go() -> None:
        if transport != "qemu-arm64":
            raise ValueError(f"{transport}: nothing to set up; only qemu-arm64 needs a set-up step")
        from edgedistill.devices import qemu

        try:
            info = qemu.setup(log=lambda m: err_console.print(m, highlight=False), force=force)
        except qemu.QemuError as err:
            _fail(str(err))
        out_console.print(f"qemu-arm64 ready: {qemu.rootfs_dir()} {info}", highlight=False)

    _guard(go)


@app.command()
def report(out: RunDirOpt) -> None:
    """Rebuild report.json and report.md from the run directory and print the summary table."""
    _stage_command("report", out, False)


@app.command()
def gate(
    out: RunDirOpt,
    baseline: Annotated[Path | None, typer.Option(
        help="a baseline run directory (e.g. main's stored run) or its report.json: adds the budgets' relative "
             "limits; with a run directory whose artifacts exist, latencies are re-measured interleaved")] = None,
    base_out: Annotated[Path | None, typer.Option(
        help="same-runner mode: the base commit's run directory, built in this job (e.g. `edgedistill run` in a "
             "git worktree of the target branch); base and head artifacts are re-measured interleaved here, so no "
             "stored baseline and no matching CPU is needed; budgets default to this run's saved recipe")] = None,
    junit: Annotated[Path | None, typer.Option(help="write JUnit XML here (one test case per check)")] = None,
    markdown: Annotated[Path | None, typer.Option(
        help="write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the verdict and every check as JSON")] = None,
    rounds: Annotated[int | None, typer.Option(help="interleaved rounds (default: the recipe's gate.rounds)")] = None,
    min_retention: Annotated[float | None, typer.Option(help="override the recipe's gate.min_retention")] = None,
    max_p50_ms: Annotated[float | None, typer.Option(
        help="override gate.max_p50_ms (vision: batch-1 latency; LLM: ms per generated token)")] = None,
    min_speedup: Annotated[float | None, typer.Option(
        help="override gate.min_speedup (vision: teacher p50 / p50; LLM: tokens/s / the teacher's)")] = None,
    budgets: Annotated[Path | None, typer.Option(
        help="read budgets and waivers from this YAML file, not from the judged run's recipe (in CI: the base "
             "branch's copy of the recipe, or a file with only the gate section), so a change cannot relax its "
             "own gate; the outputs name the file and its sha256")] = None,
    require_baseline: Annotated[bool, typer.Option(
        "--require-baseline", help="fail (exit 1) the relative limits when no --baseline is given, instead of "
        "listing them as not checked: a limit the run was not shown to meet counts as missed")] = False,
) -> None:
    """Check a run against gate budgets (vision and LLM runs), optionally against a baseline run.

    Budgets come from --budgets FILE, else from --base-out's recipe.yaml, else from the run's own recipe.yaml (the
    outputs say which, with its sha256).
    Exit codes: 0 pass, 1 a budget or regression failed (or a stale report; with --require-baseline, a relative
    limit without a baseline), 2 bad input (a baseline from another environment, a missing or corrupt --base-out
    run, a budget whose artifacts or devices glob matches nothing, a waiver without reason or expires, a gate that
    checks nothing), 3 inconclusive (the intervals straddle a limit even after one confirming re-measurement).
    """

    def go() -> int:
        from edgedistill.benchmarks.gate_output import notes
        from edgedistill.toolchain.gating import run_gate

        ctx = _existing(out)
        overrides = {k: v for k, v in {"min_retention": min_retention, "max_p50_ms": max_p50_ms,
                                       "min_speedup": min_speedup}.items() if v is not None}
        result, text = run_gate(ctx, baseline, rounds, overrides, junit, markdown, json_out, err_console,
                                budgets, require_baseline, base_out)
        out_console.print(text, highlight=False, markup=False)
        for f in result.failures:
            err_console.print(f"[red]gate failed:[/red] {f}", highlight=False)
        for c in result.checks:
            if c.verdict == "fail":
                err_console.print(f"[red]gate failed:[/red] {c.name}", highlight=False)
        for note in notes(result):
            err_console.print(f"gate {note}", style="yellow", highlight=False, markup=False, soft_wrap=True)
        left = f" ({len(result.not_checked)} relative limit(s) not checked)" if result.not_checked else ""
        out_console.print(f"gate {'passed' if result.verdict == 'pass' else result.verdict}{left}")
        return result.exit_code

    code = _guard(go)
    if code:
        raise typer.Exit(code)


@app.command()
def recipes(show: Annotated[str | None, typer.Option(help="print this built-in recipe's YAML")] = None) -> None:
    """List the built-in recipes (or print one with --show NAME)."""

    def go() -> None:
        from edgedistill.toolchain.recipe import builtin_names, builtin_text, load_recipe

        if show:
            out_console.print(builtin_text(show), highlight=False, markup=False)
            return
        for name in builtin_names():
            r = load_recipe(name)
            out_console.print(f"[bold]{name}[/bold] ({r.kind})  {r.description}")

    _guard(go)


# -- commands a kind adds (its CLI hooks: ``Pipeline.cli``) ---------------------------------------------------------
def _recipe_hooks(ref: str, name: str):  # type: ignore[no-untyped-def]
    """The recipe ``ref`` and its kind's CLI hook ``name`` (a recipe of a kind without it: one line, exit 2)."""
    from edgedistill.toolchain.pipeline import get_pipeline, kinds, pipeline_of
    from edgedistill.toolchain.recipe import RecipeError, load_recipe

    recipe = load_recipe(ref)
    if (hooks := pipeline_of(recipe).cli) is None or not hasattr(hooks, name):
        offer = [k for k in kinds() if hasattr(get_pipeline(k).cli, name)]
        raise RecipeError(f"{ref}: kind: this command needs a recipe of kind {' or '.join(offer)}, got {recipe.kind}")
    return recipe, getattr(hooks, name)


@app.command()
def plan(recipe: Annotated[str, typer.Argument(help="LLM recipe YAML or built-in name")]) -> None:
    """Print the resource estimate of an LLM recipe: parameters, bytes per dtype, GPUs, teacher-cache size, and
    GPU-hours for the teacher pass and the student's training (FLOPs at plan.gpu_tflops × plan.mfu)."""

    def go() -> None:
        r, make_plan = _recipe_hooks(recipe, "plan")
        out_console.print(make_plan(r, recipe), highlight=False)

    _guard(go)


@app.command()
def collect(
    recipe: Annotated[str, typer.Argument(help="LLM recipe YAML or built-in name (its blackbox.endpoint)")],
    prompts: Annotated[Path, typer.Option(help='JSONL of {"id", "input"} prompts')],
    out: Annotated[Path, typer.Option("--out", "-o", help="append-only JSONL journal (re-run to resume)")],
    base_url: Annotated[str | None, typer.Option(help="override blackbox.endpoint.base_url")] = None,
) -> None:
    """Send prompts to an OpenAI-compatible endpoint; resumable, retried, failures recorded but never targets.
    Exit 2 (one line naming the endpoint and the reasons) when any prompt stays unanswered."""

    def go() -> None:
        r, run_collect = _recipe_hooks(recipe, "collect")
        run_collect(r, prompts, out, base_url, out_console.print)

    _guard(go)


def main() -> None:
    quiet_libraries()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
