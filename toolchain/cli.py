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
    from edgedistill.toolchain.recipe import RecipeError, load_recipe
    from edgedistill.toolchain.rundir import RunDir

    recipe = load_recipe(recipe_ref or DEFAULT_RECIPE)
    if getattr(recipe, "kind", "vision") != "vision":
        raise RecipeError(f"{recipe_ref}: kind: llm recipes run end to end with `edgedistill run`; the single-stage "
                          "commands are for vision recipes")
    run = RunDir(out or Path("runs") / recipe.name)
    return Context(recipe, run, err_console, force)


def _existing(out: Path, force: bool = False):  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.rundir import RunDir

    if not (out / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{out}: not a run directory (no recipe.yaml); create one with `edgedistill run`")
    return _context(str(RunDir(out).recipe_path), out, force)


def _print_rows(title: str, header: list[str], body: list[list[str]]) -> None:
    t = Table(title=title, show_lines=False)
    for h in header:
        t.add_column(h, overflow="fold")
    for row in body:
        t.add_row(*row)
    out_console.print(t)


def _print_table(report: dict) -> None:
    from edgedistill.benchmarks.report import table

    _print_rows(f"edgedistill — {report['recipe']}", *table(report))
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
        from edgedistill.toolchain.recipe import load_recipe

        if getattr(load_recipe(recipe or DEFAULT_RECIPE), "kind", "vision") == "llm":
            return _run_llm(recipe or DEFAULT_RECIPE, out, force)
        ctx = _context(recipe, out, force)
        err_console.print(f"recipe [bold]{ctx.recipe.name}[/bold] → run directory {ctx.run.root}")
        save_recipe(ctx.recipe, ctx.run)
        _print_table(run_stages(ctx))

    _guard(go)


def _run_llm(ref: str, out: Path | None, force: bool) -> None:
    """`run` for a `kind: llm` recipe: data → teacher → KD/SFT students → GGUF → bench → report."""
    from edgedistill.toolchain.llm.stages import LLMContext, run_llm_stages, save_recipe
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    r = load_recipe(ref)
    ctx = LLMContext(r, RunDir(out or Path("runs") / r.name), err_console, force)
    err_console.print(f"recipe [bold]{r.name}[/bold] (llm) → run directory {ctx.run.root}")
    save_recipe(r, ctx.run)
    report = run_llm_stages(ctx)
    assert report is not None
    _print_llm_report(report)


def _llm_existing(out: Path, force: bool):  # type: ignore[no-untyped-def]
    """The LLM context of an existing run directory; None when the run is a vision run."""
    from edgedistill.toolchain.llm.stages import LLMContext
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    run = RunDir(out)
    if not run.recipe_path.is_file():
        raise FileNotFoundError(f"{out}: not a run directory (no recipe.yaml); create one with `edgedistill run`")
    r = load_recipe(str(run.recipe_path))
    return LLMContext(r, run, err_console, force) if getattr(r, "kind", "vision") == "llm" else None


def _print_llm_report(report: dict) -> None:
    from edgedistill.toolchain.llm import report as llm_report

    _print_rows(f"edgedistill — {report['recipe']}", *llm_report.table(report))
    if report.get("devices"):
        from edgedistill.benchmarks.report import devices_markdown

        out_console.print("\n".join(devices_markdown(report["devices"], "p50 ms/token", "next-token acc.")),
                          highlight=False, markup=False)
    s = report["summary"]
    ret, up = s["best_gguf_retention"], s["best_gguf_tg_speedup"]
    out_console.print(f"best GGUF: [bold]{s['best_gguf']}[/bold] (retention {'–' if ret is None else f'{ret:.3f}'}, "
                      f"generation {'–' if up is None else f'{up:.1f}'}× the PyTorch teacher's tokens/s)")
    out_console.print(f"report: {Path(report['run_dir']) / 'report.md'}")


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


def _export_config(base, formats: str | None, variants: str | None, layout: str | None):  # type: ignore[no-untyped-def]
    """``base`` (an ExportConfig) with the command line's --formats / --variants / --layout applied and checked."""
    from typing import get_args

    from edgedistill.toolchain.recipe import OnnxVariant, TfliteVariant

    def split(text: str) -> list[str]:
        return [v.strip() for v in text.split(",") if v.strip()]

    cfg = base
    if formats is not None:
        if not split(formats) or any(f not in ("onnx", "tflite") for f in split(formats)):
            raise ValueError(f"--formats: expected a comma-separated list of onnx, tflite; got {formats!r}")
        cfg = cfg.model_copy(update={"formats": list(dict.fromkeys(split(formats)))})
    if variants is not None:
        known = {"onnx": get_args(OnnxVariant), "tflite": get_args(TfliteVariant)}
        names = split(variants)
        if unknown := [v for v in names if not any(v in k for k in known.values())] or ([] if names else [""]):
            raise ValueError(f"--variants: unknown {unknown}; onnx has {', '.join(known['onnx'])}; tflite has "
                             f"{', '.join(known['tflite'])}")
        for fmt in cfg.formats:
            keep = [v for v in names if v in known[fmt]]
            if not keep:
                raise ValueError(f"--variants: none of {names} is a {fmt} variant ({', '.join(known[fmt])})")
            cfg = cfg.model_copy(update={fmt: getattr(cfg, fmt).model_copy(update={"variants": keep})})
    if layout is not None:
        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"--layout: expected nchw or nhwc, got {layout!r}")
        cfg = cfg.model_copy(update={"tflite": cfg.tflite.model_copy(update={"layout": layout})})
    return cfg


def _print_artifacts(records: list[dict]) -> None:
    t = Table(title="exported artifacts")
    for h in ("artifact", "format", "variant", "max |Δ|", "top-1 agreement", "parity"):
        t.add_column(h, overflow="fold")
    for a in records:
        p = a["parity"]
        t.add_row(a["file"], a["format"], a["variant"], f"{p['max_abs_diff']:.2e}", f"{p['top1_agreement']:.4f}",
                  "ok" if p["ok"] else f"[red]fails {p['criterion']}[/red]")
    out_console.print(t)


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
        help="comma-separated: onnx,tflite (default: the recipe's export.formats; both with --model)")] = None,
    variants: Annotated[str | None, typer.Option(
        help="comma-separated variants for the chosen formats, e.g. fp32,int8_static (default: the recipe's)")
    ] = None,
    layout: Annotated[str | None, typer.Option(
        help="TFLite input layout: nchw, or nhwc with the transpose inside the graph (default: the recipe's)")
    ] = None,
    repro: Annotated[Path | None, typer.Option(
        help="if a TFLite conversion fails, write the smallest failing submodule and a repro script here")] = None,
) -> None:
    """Export the distilled student (ONNX and TFLite, fp32 + int8 variants) and check each artifact's parity.

    With --model, export any local timm model + checkpoint instead, e.g. `edgedistill export --model
    mobilenetv3_small_100 --checkpoint w.safetensors --num-classes 10 --formats tflite --out DIR`.
    """

    def go() -> None:
        from edgedistill.toolchain import stages
        from edgedistill.toolchain.export.tflite import ConversionError
        from edgedistill.toolchain.pipeline import run_stages
        from edgedistill.toolchain.recipe import DataConfig, ExportConfig

        try:
            if model is None:
                ctx = _existing(out, force)
                cfg = _export_config(ctx.recipe.export, formats, variants, layout)
                ctx.recipe = ctx.recipe.model_copy(update={"export": cfg})
                run_stages(ctx, ("export",))
                return
            if checkpoint is None or num_classes is None:
                raise ValueError("--model needs --checkpoint FILE and --num-classes N")
            data_cfg = (DataConfig(image_size=image_size) if data == "digits"
                        else DataConfig(kind="imagefolder", root=Path(data), image_size=image_size))
            cfg = _export_config(ExportConfig(), formats, variants, layout)
            records = stages.export_local(model, checkpoint, num_classes, cfg, data_cfg, out)
            _print_artifacts(records)
            out_console.print(f"artifacts: {out / 'artifacts.json'}")
        except ConversionError as err:
            if repro is None:
                raise
            err_console.print(f"conversion failed; searching for the smallest failing submodule → {repro}")
            written = err.write_repro(repro)
            raise ValueError(f"{err}\nrepro: {written.with_name('repro.py')} (details in {written})") from err

    _guard(go)


DevicesOpt = Annotated[str | None, typer.Option(
    "--devices", help="comma-separated device specs, e.g. host,rpi4-constrained,qemu-arm64,rpi4-estimated "
    "(see `edgedistill devices`); overrides the recipe's bench.devices and rebuilds the report")]
ProfileOpt = Annotated[list[Path] | None, typer.Option(
    "--profile", help="an extra device profile YAML file or folder (repeatable)")]


@app.command()
def bench(out: RunDirOpt, force: ForceOpt = False, devices: DevicesOpt = None, profile: ProfileOpt = None) -> None:
    """Measure every model and artifact in fresh processes (latency, peak RSS, size, accuracy); with --devices,
    every artifact on every device too (LLM runs: their exported GGUF/ONNX files, per generated token)."""

    def go() -> None:
        from edgedistill.toolchain.llm.stages import run_llm_stages
        from edgedistill.toolchain.pipeline import run_stages

        llm = _llm_existing(out, force)
        ctx = llm if llm is not None else _existing(out, force)
        update: dict = {"profiles": [*ctx.recipe.bench.profiles, *(profile or [])]}
        if devices is not None:
            update["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
        ctx.recipe = ctx.recipe.model_copy(update={"bench": ctx.recipe.bench.model_copy(update=update)})
        if llm is not None:
            _print_llm_report(run_llm_stages(llm, ("bench", "report")))
            return
        report = run_stages(ctx, ("bench", "report"))
        if report is not None:
            _print_table(report)

    _guard(go)


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
    """Build what a transport needs once per machine (qemu-arm64: the cached arm64 rootfs; idempotent)."""

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


# -- LLM pipeline commands (recipes with `kind: llm`) ----------------------------------------------------------
def _llm_recipe(ref: str):  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.llm.recipe import LLMRecipe
    from edgedistill.toolchain.recipe import RecipeError, load_recipe

    recipe = load_recipe(ref)
    if not isinstance(recipe, LLMRecipe):
        raise RecipeError(f"{ref}: kind: this command needs an LLM recipe (kind: llm)")
    return recipe


@app.command()
def plan(recipe: Annotated[str, typer.Argument(help="LLM recipe YAML or built-in name")]) -> None:
    """Print the resource estimate of an LLM recipe: parameters, bytes per dtype, GPUs, teacher-cache size."""

    def go() -> None:
        from edgedistill.toolchain.llm.plan import Shape, format_plan
        from edgedistill.toolchain.llm.plan import plan as make_plan

        r = _llm_recipe(recipe)
        if r.teacher.path is None:
            raise ValueError(f"{recipe}: teacher.path: plan needs a local teacher checkpoint (its config.json)")
        t = Shape.from_dir(r.teacher.path)
        if r.student.path is not None:
            s = Shape.from_dir(r.student.path)
        else:
            a = r.student.arch
            s = Shape(t.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers, a.num_attention_heads,
                      a.num_key_value_heads, a.tie_word_embeddings)
        p = make_plan(t, s, r.plan.gpu_memory_gb, r.plan.teacher_dtype, r.plan.cache_tokens, r.distill.top_k or 0)
        out_console.print(format_plan(p), highlight=False)

    _guard(go)


@app.command()
def collect(
    recipe: Annotated[str, typer.Argument(help="LLM recipe YAML or built-in name (its blackbox.endpoint)")],
    prompts: Annotated[Path, typer.Option(help='JSONL of {"id", "input"} prompts')],
    out: Annotated[Path, typer.Option("--out", "-o", help="append-only JSONL journal (re-run to resume)")],
    base_url: Annotated[str | None, typer.Option(help="override blackbox.endpoint.base_url")] = None,
) -> None:
    """Send prompts to an OpenAI-compatible endpoint; resumable, retried, failures recorded but never targets."""

    def go() -> None:
        from edgedistill.toolchain.llm.collect import Prompt
        from edgedistill.toolchain.llm.collect import collect as run_collect
        from edgedistill.toolchain.llm.data import read_jsonl

        r = _llm_recipe(recipe)
        items = [Prompt(e.id, e.prompt or e.completion) for e in read_jsonl(prompts)]
        st = run_collect(items, out, r.blackbox.endpoint, base_url)
        out_console.print(f"{st.ok} collected, {st.failed} failed, {st.skipped} already done, {st.retries} retries "
                          f"in {st.seconds:.1f} s → {out}")
        if st.failed:
            raise typer.Exit(1)

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
