"""``edgedistill export --auto`` for every kind: the ``select`` stage, which runs right after export (with the
``export`` command and with ``run``) when ``export.auto.enabled``.

It measures every exported artifact on ``export.auto.device`` with the bench machinery (the one agent, in a fresh
process, through the device's transport; the measurements land where the bench stage keeps its own, under the
same keys, so bench reuses them instead of measuring twice), hands the figures to the pure decision
(:func:`edgedistill.benchmarks.select.decide`) and writes ``export/auto.json``. The chosen artifact becomes the
report's recommended one (``summary.recommended``), which ``edgedistill gate`` checks; when none meets the budget the
decision says so and the gate fails on it — ``export`` itself exits 0, since that is a result, not bad input.

A kind's stages module provides ``auto_candidates(ctx, spec) -> (candidates, label, metric)``: its artifacts
measured on the device (:class:`edgedistill.benchmarks.select.Candidate`, with their scores and their PyTorch
source's on the same examples), the device's label and the latency the decision compares, in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgedistill.benchmarks.row import Row, device_checks
from edgedistill.benchmarks.select import Candidate, decide
from edgedistill.core.fileio import read_json, sha256_json, sha256_path, write_json, write_text
from edgedistill.core.tolerances import PARITY_BARS
from edgedistill.toolchain.pipeline import Context, pipeline_of
from edgedistill.toolchain.recipe import RecipeBase
from edgedistill.toolchain.rundir import RunDir

STAGE = "select"
#: the decision, relative to the run directory
AUTO_JSON = ("export", "auto.json")


def apply_options(recipe: RecipeBase, auto: bool, device: str | None, min_retention: float | None) -> RecipeBase:
    """The recipe with ``export --auto [--device SPEC] [--min-retention X]`` applied (validated like the recipe)."""
    from edgedistill.toolchain.recipe import AutoExport

    cfg = recipe.export.auto  # type: ignore[attr-defined]
    if not (auto or cfg.enabled) and (device is not None or min_retention is not None):
        raise ValueError("--device/--min-retention: export.auto is off in this run's recipe; add --auto")
    if not (auto or device is not None or min_retention is not None):
        return recipe
    data = {**cfg.model_dump(), "enabled": True, **({"device": device} if device is not None else {}),
            **({"min_retention": min_retention} if min_retention is not None else {})}
    try:
        new = AutoExport.model_validate(data)
    except ValidationError as err:  # one line naming the option
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            field, msg = str(first["loc"][0]), f"{msg}, got {data.get(str(first['loc'][0]))!r}"
        else:  # the model's own check names its field
            field, _, msg = msg.partition(": ")
        opt = {"device": "--device", "min_retention": "--min-retention"}.get(field, "--auto")
        raise ValueError(f"{opt}: {msg}") from None
    if device is not None:
        check_device(device, list(recipe.bench.profiles), "--device")  # type: ignore[attr-defined]
    return recipe.model_copy(update={"export": recipe.export.model_copy(update={"auto": new})})  # type: ignore[attr-defined]


def export_section(recipe: RecipeBase) -> dict[str, Any]:
    """The export section as the export stage hashes it: without ``auto``, which chooses among the files but never
    changes them (so turning it on never re-exports)."""
    return {k: v for k, v in recipe.section("export").items() if k != "auto"}


def auto_threads(spec: list[int | str]) -> list[int | str]:
    """The one thread count the decision is made at: the fewest the bench measures (as the per-device
    recommendation uses), ``"all"`` only when nothing else is asked for."""
    ints = [t for t in spec if isinstance(t, int)]
    return [min(ints)] if ints else ["all"]


def check_device(spec: str, profiles: list[Path], field: str = "export.auto.device") -> None:
    """Refuse a spec that does not parse (an unknown form or profile): one line naming ``field``. (An estimate,
    which computes no outputs, is refused by the recipe section itself.)"""
    from edgedistill.devices.transport import parse_device

    try:
        parse_device(spec, profiles)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{field}: {err.args[0] if err.args else err}") from None


@dataclass(frozen=True)
class Listed:
    """An exported artifact as the kind's export listing describes it (what the decision needs of it)."""

    name: str
    file: str  # relative to the run directory
    format: str
    variant: str
    export_ok: bool
    export_why: str
    bar: str  # its parity bar's name in edgedistill.core.tolerances.PARITY_BARS
    size_bytes: int | None = None  # the export listing's (a folder's total for ONNX decoders); else measured


Score = Callable[[str, dict[str, Any]], tuple[float | None, float | None]]


def device_candidates(run: RunDir, kind: str, entry: dict[str, Any], listed: list[Listed],
                      score: Score) -> list[Candidate]:
    """Candidates from one device's entry of :func:`edgedistill.benchmarks.harness.measure_devices`: each listed
    artifact with its measurement row (``kind``'s) at the (one) thread count measured, or the error that kept it
    from running, and ``score(name, agent_doc) -> (score, source's score)``. Each records its file and sha256 (the
    decision is current only while they match)."""
    out = []
    for a in listed:
        res = (entry.get("results") or {}).get(a.name) or {}
        runs = res.get("runs") or {}
        t = min(runs, key=int) if runs else None
        doc = None if t is None else runs[t]
        path = run.root / a.file
        s, src = score(a.name, doc) if doc is not None else (None, None)
        size = a.size_bytes or (doc or {}).get("size_bytes") or (path.stat().st_size if path.is_file() else None)
        row = None if doc is None else Row(
            artifact=a.name, kind=kind, role="artifact", device=entry["spec"], format=a.format, precision=a.variant,
            label=entry.get("label"), profile=entry.get("profile"), threads=int(t),  # type: ignore[arg-type]
            p50_ms=doc["latency_ms"]["p50"], samples_ms=doc.get("samples_ms"), size_bytes=size, score=s,
            source_score=src, parity_bar=PARITY_BARS[a.bar].floor, parity_bar_name=a.bar, **device_checks(res))
        out.append(Candidate(
            a.name, a.format, a.variant, size, a.export_ok, a.export_why, row,
            entry.get("error") or res.get("error") or (None if doc else "not measured"), s, src,
            {"file": a.file, "sha256": sha256_path(path) if path.exists() else None}))
    return out


def _path(run: RunDir) -> Path:
    return run.path(*AUTO_JSON)


def stage_select(ctx: Context) -> None:
    """Measure the exported artifacts on ``export.auto.device`` and write the decision (``export/auto.json``)."""
    auto = ctx.recipe.export.auto
    if not auto.enabled:
        return
    ctx.run.require_intact("export")
    export = ctx.run.stage("export")
    if export is None:
        raise FileNotFoundError(f"{ctx.run.root}: nothing exported yet; run `edgedistill export --out {ctx.run.root}`")
    check_device(auto.device, list(ctx.recipe.bench.profiles))
    h = sha256_json({"export": export["config_hash"], "files": {o["path"]: o["sha256"] for o in export["outputs"]},
                     "bench": ctx.recipe.section("bench"), "auto": auto.model_dump(mode="json")})
    _record_in_recipe(ctx)
    if ctx.skip(STAGE, h):
        return
    candidates, label, metric = pipeline_of(ctx.recipe).impl.auto_candidates(ctx, auto.device)
    decision = decide(candidates, auto.device, auto.min_retention, label, metric)
    out = _path(ctx.run)
    write_json(out, decision)
    ctx.run.record(STAGE, h, [out], {"device": auto.device, "min_retention": auto.min_retention,
                                     "chosen": decision["chosen"]})
    ctx.console.print(f"  export --auto on {auto.device}: " + (
        f"[bold]{decision['chosen']}[/bold] — {decision['reason']}" if decision["chosen"] else
        f"[yellow]nothing chosen[/yellow] — {decision['reason']}"), highlight=False)


def _record_in_recipe(ctx: Context) -> None:
    """Keep ``export.auto`` as this run used it in the run's recipe.yaml (``export --auto`` turns it on for the
    run), so ``report`` and ``gate`` on the directory judge the same shipped artifact."""
    path = ctx.run.recipe_path
    if not path.is_file():
        return
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    want = ctx.recipe.export.auto.model_dump(mode="json")
    if saved.get("export", {}).get("auto") != want:
        saved.setdefault("export", {})["auto"] = want
        write_text(path, yaml.safe_dump(saved, sort_keys=False))


def fresh_decision(run: RunDir) -> dict[str, Any] | None:
    """The recorded decision when it still describes the exported files (None: missing, edited, or made for files
    that have since been re-exported)."""
    if run.stage(STAGE) is None or run.changed_outputs(STAGE) or run.changed_outputs("export") or \
            not _path(run).is_file():
        return None
    doc = read_json(_path(run))
    for c in doc.get("candidates", []):
        path = run.root / str(c.get("file"))
        if not path.exists() or sha256_path(path) != c.get("sha256"):
            return None
    return doc


def report_decision(ctx: Context) -> dict[str, Any] | None:
    """What the report should ship by: None when ``export.auto`` is off; else the current decision for the recipe's
    device and budget, or one that chooses nothing and says how to make it (missing or stale)."""
    auto = ctx.recipe.export.auto
    if not auto.enabled:
        return None
    doc = fresh_decision(ctx.run)
    if doc is not None and doc["device"] == auto.device and doc["min_retention"] == auto.min_retention:
        return doc
    return {"device": auto.device, "min_retention": auto.min_retention, "chosen": None, "candidates": [],
            "reason": f"no current export --auto decision for {auto.device} at min_retention {auto.min_retention:g} "
                      f"(run `edgedistill export --out {ctx.run.root}`)"}
