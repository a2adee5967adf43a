"""The vision pipeline's stages, in the order they run (the framework: :mod:`edgedistill.toolchain.pipeline`;
the distillation strategies, one module each: :mod:`edgedistill.toolchain.vision.strategies`).

Run-directory layout (relative to the run root)::

    recipe.yaml  manifest.json  report.json  report.md
    data/split.json  data/test.npz                       the split definition and the saved test split
    teacher/teacher.safetensors  teacher/metrics.json    reference artifact + training metrics
    teacher/ensemble-<i>.{safetensors,json}               extra teachers of ``ensemble.teachers`` (1-based)
    students/{baseline,kd,kd-tuned,mutual}.safetensors  students/*.json   CE-only and distilled students
    students/{self-distill,chain}.safetensors            self-distilled (early exits) and teacher-assistant chain
    students/chain/assistant-<i>.{safetensors,json}      the chain's assistants, one link each
    export/student-<variant>.onnx  export/student-tflite-<variant>.tflite  export/artifacts.json
                                                         every artifact, with its parity vs the KD student
    export/auto.json                                      export --auto's choice (toolchain/auto_select.py)
    bench/<name>-t<threads>.json  bench/results.json      one agent document per measurement
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from edgedistill.benchmarks.harness import BenchItem, measure_devices, plan_devices, resolve_threads
from edgedistill.core.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json
from edgedistill.core.tolerances import parity_bar
from edgedistill.devices.profile import int8_saturates
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain import auto_select
from edgedistill.toolchain.pipeline import GateItem, Stage, finish_report
from edgedistill.toolchain.progress import make_progress
from edgedistill.toolchain.rundir import RunDir
from edgedistill.toolchain.training import drop_train_states, train_state
from edgedistill.toolchain.vision import models
from edgedistill.toolchain.vision import report as report_mod
from edgedistill.toolchain.vision.context import (
    TEACHER,
    Context,
    data_hash,
    ensemble_member,
    student_intact,
)
from edgedistill.toolchain.vision.context import members as ensemble_members
from edgedistill.toolchain.vision.data import VisionData, load_vision_data
from edgedistill.toolchain.vision.distill.losses import ensemble_logits
from edgedistill.toolchain.vision.distill.trainer import accuracy, train_supervised
from edgedistill.toolchain.vision.export import onnx as onnx_export
from edgedistill.toolchain.vision.export.parity import compare
from edgedistill.toolchain.vision.recipe import (
    DataConfig,
    ExportConfig,
    OnnxExport,
    OnnxVariant,
    TeacherConfig,
    TfliteExport,
    TfliteVariant,
    VisionRecipe,
)
from edgedistill.toolchain.vision.strategies import Teach, best_student, distill_key, strategies, students

REPORT = report_mod
#: the PyTorch student's logits on the test split, saved by export: the source every device's parity is against
REFERENCE_LOGITS = "reference-logits.npy"
#: the teacher's own exports (fp32, per format): benched beside the student's artifacts, never shipped
TEACHER_ARTIFACTS = "teacher-artifacts.json"


def stage_data(ctx: Context) -> None:
    h = data_hash(ctx)
    if ctx.skip("data", h):
        return
    split, test = ctx.run.path("data", "split.json"), ctx.run.path("data", "test.npz")
    write_json(split, ctx.data.split)
    ctx.data.save_test(test)
    d = ctx.data
    ctx.run.record("data", h, [split, test], {
        "split_hash": d.split_hash, "classes": d.class_names, "n_train": len(d.train_x),
        "n_train_labelled": int(d.labelled.sum()), "n_val": len(d.val_x), "n_test": len(d.test_x)})
    ctx.console.print(f"  {len(d.train_x)} train ({int(d.labelled.sum())} labelled for students), "
                      f"{len(d.val_x)} val, {len(d.test_x)} test, {d.num_classes} classes")


def _teacher_hash(ctx: Context, cfg: TeacherConfig | None = None, seed: int | None = None) -> str:
    """The key of one teacher's weights (default: the main ``teacher``): data, section, checkpoint bytes, seed."""
    t = cfg or ctx.recipe.teacher
    ckpt = sha256_file(t.checkpoint) if t.checkpoint and t.checkpoint.is_file() else None
    return sha256_json({"data": data_hash(ctx), "teacher": t.model_dump(mode="json", exclude={"seed"}), "ckpt": ckpt,
                        "seed": ctx.recipe.seed if seed is None else seed})


def _teacher_stage_hash(ctx: Context) -> str:
    """The main teacher's key; with an ensemble, every teacher's key and the mixing weights too."""
    h = _teacher_hash(ctx)
    if not ctx.recipe.ensemble.teachers:
        return h
    return sha256_json({"teacher": h, "ensemble": [_teacher_hash(ctx, t, s) for t, s in ensemble_members(ctx)],
                        "weights": ctx.recipe.ensemble.normalised_weights()})


def stage_teacher(ctx: Context) -> None:
    h = _teacher_stage_hash(ctx)
    if ctx.skip("teacher", h):
        return
    metrics = ctx.run.path("teacher", "metrics.json")
    model, info = _one_teacher(ctx, ctx.recipe.teacher, ctx.recipe.seed, TEACHER, metrics, "training teacher")
    outputs = [ctx.run.path(TEACHER), metrics]
    info.pop("ensemble", None)
    if ctx.recipe.ensemble.teachers:
        info["ensemble"] = _ensemble(ctx, model, info)
        outputs += [ctx.run.path(m["file"]) for m in info["ensemble"]["members"][1:]]
        outputs += [ctx.run.path(m["file"]).with_suffix(".json") for m in info["ensemble"]["members"][1:]]
    write_json(metrics, info)
    ens = info.get("ensemble")
    ctx.run.record("teacher", h, outputs, {"test_accuracy": info["test_accuracy"],
                                           **({"ensemble_test_accuracy": ens["test_accuracy"]} if ens else {})})
    drop_train_states(ctx.run.path("teacher"))
    ctx.console.print(f"  teacher test accuracy {info['test_accuracy']:.4f}")
    if ens:
        accs = ", ".join(f"{m['test_accuracy']:.4f}" for m in ens["members"])
        ctx.console.print(f"  ensemble of {len(ens['members'])} teachers: test accuracy {ens['test_accuracy']:.4f} "
                          f"(each: {accs})")


def _one_teacher(ctx: Context, cfg: TeacherConfig, seed: int, rel: str, metrics: Path,
                 desc: str) -> tuple[nn.Module, dict[str, Any]]:
    """Train one teacher with ``seed`` (or load its ``checkpoint``) and save it at ``rel`` with ``metrics``; a
    finished one with the same key is loaded instead (adding an ensemble teacher never retrains the others)."""
    d, h = ctx.data, _teacher_hash(ctx, cfg, seed)
    out = ctx.run.path(rel)
    if not ctx.force and student_intact(out, metrics, h):
        return load_reference(out), read_json(metrics)
    torch.manual_seed(seed)
    model = models.build(cfg, d.num_classes)
    info: dict[str, Any] = {"model": cfg.name, "params": sum(p.numel() for p in model.parameters()), "seed": seed}
    if cfg.checkpoint is None:
        ckpt = train_state(ctx.run.path("teacher"), h, fresh=ctx.force)  # keyed: a changed recipe never resumes it
        res = train_supervised(model, d, cfg.train, torch.arange(len(d.train_x)), ckpt, desc, seed)
        info.update(trained_here=True, val_accuracy=res.best, train_seconds=res.seconds,
                    steps=res.steps, history=res.history)
    else:
        info.update(trained_here=False, checkpoint=str(cfg.checkpoint), val_accuracy=accuracy(model, d.val_x, d.val_y))
    info["test_accuracy"] = accuracy(model, d.test_x, d.test_y)
    models.save_reference(model, cfg, d.num_classes, out)
    info.update(config_hash=h, weights_sha256=sha256_file(out))
    write_json(metrics, info)
    return model, info


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _ensemble(ctx: Context, main: nn.Module, main_info: dict[str, Any]) -> dict[str, Any]:
    """Train (or load) every extra teacher; the ensemble's own accuracy is the argmax of the weighted mean of the
    teachers' probabilities (T = 1) on validation and test. Stale files of a longer earlier ensemble go."""
    d, r = ctx.data, ctx.recipe
    w = r.ensemble.normalised_weights()
    members = [{"name": r.teacher.name, "seed": r.seed, "file": TEACHER, "weight": w[0],
                "val_accuracy": main_info["val_accuracy"], "test_accuracy": main_info["test_accuracy"]}]
    val, test = [_logits(main, d.val_x)], [_logits(main, d.test_x)]
    n = len(r.ensemble.teachers)
    for i, (cfg, seed) in enumerate(ensemble_members(ctx), 1):
        rel = ensemble_member(i)
        model, info = _one_teacher(ctx, cfg, seed, rel, ctx.run.path(rel).with_suffix(".json"),
                                   f"training ensemble teacher {i}/{n}")
        members.append({"name": cfg.name, "seed": seed, "file": rel, "weight": w[i],
                        "val_accuracy": info["val_accuracy"], "test_accuracy": info["test_accuracy"]})
        val.append(_logits(model, d.val_x))
        test.append(_logits(model, d.test_x))
    for stale in ctx.run.path("teacher").glob("ensemble-*.*"):
        if stale.stem.removeprefix("ensemble-").isdigit() and int(stale.stem.removeprefix("ensemble-")) > n:
            stale.unlink()
    wt = torch.tensor(w)

    def acc(logits: list[torch.Tensor], y: torch.Tensor) -> float:
        return int((ensemble_logits(torch.stack(logits, 1), wt, 1.0).argmax(1) == y).sum()) / len(y)

    return {"weights": w, "members": members, "val_accuracy": acc(val, d.val_y), "test_accuracy": acc(test, d.test_y)}


def stage_distill(ctx: Context) -> None:
    """Every strategy's candidate (:mod:`edgedistill.toolchain.vision.strategies`), in the registry's order; an
    optional strategy now off loses its earlier candidate."""
    r, every = ctx.recipe, strategies()
    h = distill_key(ctx, every)
    if ctx.skip("distill", h):
        for s in every:
            if s.on_skip is not None:
                s.on_skip(ctx)
        return
    teach = Teach(ctx, distill_key(ctx), distill_key(ctx, ensemble=False))
    for s in every:
        if s.optional and not s.enabled(r):  # an earlier recipe's candidate must never be shipped or reported
            ctx.run.path(s.weights).unlink(missing_ok=True)
            ctx.run.path(s.metrics).unlink(missing_ok=True)
    done = {s: s.train(teach) for s in every if s.enabled(r)}
    outputs = [ctx.run.path(p) for s, meta in done.items() for p in (s.weights, s.metrics, *s.outputs(meta))]
    fields: dict[str, Any] = {"mode": r.distill.mode, "cache": teach.info.get("cache"), "tuning": None}
    if "paraphraser" in teach.info:
        fields["paraphraser"] = teach.info["paraphraser"]
    for s, meta in done.items():
        fields.update(s.report(meta))
    fields.update({s.name: {"val_accuracy": m["val_accuracy"], "test_accuracy": m["test_accuracy"]}
                   for s, m in done.items()})
    ctx.run.record("distill", h, outputs, fields)
    for s, meta in done.items():
        ctx.console.print(f"  {s.name} student: val accuracy {meta['val_accuracy']:.4f}, test "
                          f"{meta['test_accuracy']:.4f}")
    for s, meta in done.items():
        for line in s.lines(meta):
            ctx.console.print(line)


def stage_export(ctx: Context) -> None:
    r = ctx.recipe
    best, why = best_student(ctx)
    weights = students()[best]
    targets = _targets(r.bench.devices, r.bench.profiles)
    rr = r.export.onnx.reduce_range
    int8 = any(int8_saturates(p) for p in targets) if rr == "auto" else rr
    h = sha256_json({"student": ctx.run.output_sha("distill", weights), "best": best,
                     "export": auto_select.export_section(r), "data": data_hash(ctx), "reduce_range": int8,
                     "teacher": ctx.run.output_sha("teacher", TEACHER) if r.export.teacher else None})
    if ctx.skip("export", h):
        return
    ctx.console.print(f"  shipping the {best} student: {why}")
    student = load_reference(ctx.run.path(weights))
    job = _Export(student, ctx.data, ctx.run, "student", best, f"PyTorch {best} student", r.seed,
                  f"{r.student.name} ({best} student, {weights})", targets=targets)
    teacher = _export_teacher(ctx) if r.export.teacher else None
    _run_export(job, r.export, h, {"shipped": best, "shipped_reason": why}, teacher)
    for name, reason in job.failures.items():
        ctx.console.print(f"  [yellow]{name} not written, every attempt failed:[/yellow] {escape(reason)}")
    _print_parity(ctx.console, job.records + (teacher.records if teacher else []))


def _export_teacher(ctx: Context) -> _Export:
    """The teacher in fp32, in each of the recipe's formats it converts to: the same-runtime, same-precision
    baseline that the student's speed-up from distillation is measured against. A format the teacher does not
    convert to is recorded with its reason (the student's export goes on)."""
    r = ctx.recipe
    job = _Export(load_reference(ctx.run.path(TEACHER)), ctx.data, ctx.run, "teacher", "teacher", "PyTorch teacher",
                  r.seed, f"{r.teacher.name} (teacher, {TEACHER})")
    for fmt in r.export.formats:
        cfg = r.export.onnx.model_copy(update={"variants": ["fp32"]}) if fmt == "onnx" else \
            r.export.tflite.model_copy(update={"variants": ["fp32"]})
        try:
            (_export_onnx if fmt == "onnx" else _export_tflite)(job, cfg)  # type: ignore[operator]
        except Exception as err:  # noqa: BLE001  a teacher that does not convert must not stop the student's export
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            job.failures[fmt] = first
            ctx.console.print(f"  [yellow]teacher → {fmt} fp32 failed:[/yellow] {first}")
    return job


def export_local(name: str, checkpoint: Path, num_classes: int, cfg: ExportConfig, data_cfg: DataConfig,
                 out: Path, kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``edgedistill export --model``: export a timm model + local checkpoint into ``out`` (no run needed).

    Parity is checked on ``data_cfg``'s test split and int8 is calibrated on its train split, exactly as in a run;
    ``out`` gets the artifacts, ``artifacts.json`` and a ``manifest.json`` recording each file.
    """
    model = models.create(name, num_classes, kwargs)
    models.load_weights(model, checkpoint)
    data = load_vision_data(data_cfg)
    run = RunDir(out)
    h = sha256_json({"model": name, "kwargs": kwargs or {}, "checkpoint": sha256_file(checkpoint),
                     "export": cfg.model_dump(mode="json"), "data": data.split_hash})
    job = _Export(model.eval(), data, run, name, "checkpoint", f"PyTorch {name} ({checkpoint.name})", 0,
                  f"{name} ({checkpoint})", subdir="", targets=_targets([], []))
    _run_export(job, cfg, h)
    return job.records


@dataclass
class _Export:
    """One export: the model and data every format needs, and the artifacts written so far."""

    model: nn.Module
    data: VisionData
    run: RunDir
    prefix: str  # artifact file names: <prefix>-<variant>.onnx, <prefix>-tflite-<variant>.tflite
    source: str  # the records' "source": "kd" in a run
    reference: str  # what parity compares against, in words
    seed: int
    model_name: str  # names the model in conversion errors
    subdir: str = "export"
    #: where the artifacts will run: the host and the bench devices' profiles (int8 settings follow them)
    targets: list[Any] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # format or artifact → why it did not convert

    @cached_property
    def ref(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(self.data.test_x).numpy()

    def path(self, name: str) -> Path:
        return self.run.path(self.subdir, name) if self.subdir else self.run.path(name)

    def calibration(self, n: int) -> np.ndarray:
        """``n`` training images ``(n, C, H, W)`` (never validation or test), stratified by class: a fixed random
        pick of about ``n / classes`` from each class, so no class's activation range is left out."""
        g = torch.Generator().manual_seed(self.seed)
        y = self.data.train_y
        classes = sorted(set(y.tolist()))
        per = -(-n // len(classes))
        picks = [idx[torch.randperm(len(idx), generator=g)[:per]]
                 for idx in (torch.nonzero(y == c).flatten() for c in classes)]
        order = torch.cat(picks)[torch.randperm(sum(map(len, picks)), generator=g)][:n]
        return self.data.train_x[order].numpy()

    def reduce_range(self, cfg: OnnxExport) -> bool:
        """7-bit static weights: asked for, or (auto) when a target is x86 without VNNI."""
        return bool(cfg.reduce_range) if cfg.reduce_range != "auto" else any(int8_saturates(p) for p in self.targets)

    def reduce_range_reason(self, cfg: OnnxExport) -> str:
        if cfg.reduce_range != "auto":
            return f"export.onnx.reduce_range: {cfg.reduce_range}"
        bad = [p.name for p in self.targets if int8_saturates(p)]
        return (f"auto: {', '.join(bad)} is x86 without VNNI (8-bit u8×s8 saturates there)" if bad else
                f"auto: every target ({', '.join(p.name for p in self.targets)}) has an int8 dot product or is Arm")

    def parity(self, path: Path, variant: str, min_top1: float | None) -> Any:
        """``path``'s parity with the PyTorch source on the test split, scored by its own runtime."""
        from edgedistill.runtimes import open_session, runtime_for

        logits = open_session(runtime_for(path), path, threads=os.cpu_count() or 1).run_all(self.data.test_x.numpy())
        return compare(self.ref, logits, "fp32" if variant == "fp32" else "int8", self.reference, min_top1)

    def add(self, path: Path, fmt: str, variant: str, min_top1: float | None, **extra: Any) -> None:
        """Score ``path`` on the test split with its runtime and record it with its parity."""
        precision = "fp32" if variant == "fp32" else "int8"
        self.records.append({
            "name": path.stem, "file": str(path.relative_to(self.run.root)), "format": fmt, "variant": variant,
            "precision": precision, "source": self.source, "checked_on": _host_isa(), **extra,
            "parity": self.parity(path, variant, min_top1).to_dict()})
        self.outputs.append(path)


def _host_isa() -> dict[str, Any]:
    """The CPU the parity was checked on (its int8 behaviour depends on it)."""
    from edgedistill.devices.profile import get_profile

    p = get_profile("host")
    return {"isa": p.isa, "features": p.features, "int8_saturates": int8_saturates(p)}


def _targets(devices: list[str], profiles: list[Path]) -> list[Any]:
    """The profiles of the host and of every bench device (a spec that does not parse is left to bench)."""
    from edgedistill.devices.profile import get_profile
    from edgedistill.devices.transport import parse_device

    out = [get_profile("host")]
    for spec in devices:
        try:
            prof = parse_device(spec, profiles).profile
        except Exception:  # reported by the bench stage with its reason
            continue
        if prof.name not in [p.name for p in out]:
            out.append(prof)
    return out


def _run_export(job: _Export, cfg: ExportConfig, config_hash: str, info: dict[str, Any] | None = None,
                teacher: _Export | None = None) -> None:
    """Every format in ``cfg.formats``, then artifacts.json (the candidates to ship), the teacher's exports
    (``teacher-artifacts.json``: benched beside them, never shipped) and the manifest entry."""
    if "onnx" in cfg.formats:
        _export_onnx(job, cfg.onnx)
    if "tflite" in cfg.formats:
        _export_tflite(job, cfg.tflite)
    listing, reference = job.path("artifacts.json"), job.path(REFERENCE_LOGITS)
    write_json(listing, job.records)
    extra: list[Path] = []
    if teacher is not None:
        extra = [*teacher.outputs, job.path(TEACHER_ARTIFACTS)]
        write_json(extra[-1], {"artifacts": teacher.records, "failed": teacher.failures})
    with atomic_path(reference) as tmp, open(tmp, "wb") as f:  # what every device's outputs are compared with
        np.save(f, job.ref.astype(np.float32), allow_pickle=False)
    job.run.record("export", config_hash, [*job.outputs, listing, reference, *extra],
                   {"artifacts": [a["name"] for a in job.records], "export_seconds": job.seconds,
                    "failed": job.failures,
                    **({"teacher_artifacts": [a["name"] for a in teacher.records],
                        "teacher_failed": teacher.failures} if teacher else {}), **(info or {})})


#: what the exporter tries, in order, when an int8 file fails parity: each step keeps the previous ones (more and
#: stratified calibration images, then a calibration that ignores outliers or minimises KL, then the first and
#: last layers in float); weights are always per channel. The first that passes is kept; every attempt is recorded,
#: and an attempt that raises (in onnxruntime, onnx, numpy...) is recorded with its reason while the ladder goes on.
#: the fewest calibration images a remedy uses (the default configuration's count)
REMEDY_MIN_CALIBRATION = 256
INT8_REMEDIES = (
    ("as configured", {}),
    ("4x (at least 256) calibration images, stratified by class", {"calib_scale": 4}),
    ("percentile calibration (99.99)", {"calib_scale": 4, "method": "percentile"}),
    ("entropy calibration", {"calib_scale": 4, "method": "entropy"}),
    ("first and last layers in float", {"calib_scale": 4, "method": "percentile", "fp32_head": True}),
)


def _calibration_size(train: int, configured: int, scale: int) -> int:
    """The configured count, or for a remedy ``scale`` times it and at least :data:`REMEDY_MIN_CALIBRATION`."""
    return min(train, configured if scale == 1 else max(scale * configured, REMEDY_MIN_CALIBRATION))


def _raised_in_our_code(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is edgedistill's own code (a bug or a broken contract of
    ours, which must stop the run) rather than a library's (a quantiser that cannot handle this model or data)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("edgedistill.")


def _quantize_until_parity(job: _Export, cfg: OnnxExport, fp32: Path, variant: str, path: Path,
                           bar: float | None) -> dict[str, Any]:
    """Quantise ``variant`` and, while it fails parity ``bar``, try :data:`INT8_REMEDIES` (static variants: all of
    them; dynamic: only the float head). Returns the ``quantization`` record with every attempt; ``kept`` names the
    attempt whose file is at ``path``: the first that passes, else the best-scoring one that produced a file (None:
    none did, and ``path`` is not written).

    Each attempt writes beside ``path`` and replaces it only once scored. An attempt that raises in a library is a
    failed attempt (``error``: its type and first line) and the ladder goes on; one raised in our own code is not
    caught."""
    rr = job.reduce_range(cfg) and variant.startswith("int8_static")
    static = variant.startswith("int8_static")
    ladder = INT8_REMEDIES if static else (INT8_REMEDIES[0], INT8_REMEDIES[-1])
    trial = path.with_name(f"{path.stem}.attempt{path.suffix}")
    attempts: list[dict[str, Any]] = []
    kept, best = None, -1.0
    for name, opts in ladder:
        n = _calibration_size(len(job.data.train_x), cfg.calibration_samples, opts.get("calib_scale", 1))
        attempt: dict[str, Any] = {"remedy": name, "calibration_images": n if static else None}
        attempts.append(attempt)
        try:
            onnx_export.quantize(fp32, variant, trial, job.calibration(n) if static else None, reduce_range=rr,
                                 fp32_stem=cfg.fp32_stem, fp32_head=opts.get("fp32_head", False),
                                 method=opts.get("method", "minmax"))
            p = job.parity(trial, variant, bar)
        except Exception as err:
            if _raised_in_our_code(err):
                raise
            first = (str(err).strip().splitlines() or [""])[0][:300]
            attempt.update(ok=False, top1_agreement=None, error=f"{type(err).__name__}: {first}")
            trial.unlink(missing_ok=True)
            if not cfg.remedies:
                break
            continue
        attempt.update(top1_agreement=p.top1_agreement, ok=p.ok)
        if p.ok or kept is None or p.top1_agreement > best:  # none passes: keep the closest, not the last
            os.replace(trial, path)
            kept, best = name, p.top1_agreement
        else:
            trial.unlink(missing_ok=True)
        if p.ok or not cfg.remedies:
            break
    return {"reduce_range": rr, "fp32_stem": cfg.fp32_stem, "why": job.reduce_range_reason(cfg),
            "per_channel": static, "attempts": attempts, "kept": kept}


def _export_onnx(job: _Export, cfg: OnnxExport) -> None:
    """The fp32 graph and each int8 variant; a variant for which no attempt produced a file is left out and its
    attempts go to ``job.failures``."""
    fp32 = job.path(f"{job.prefix}-fp32.onnx")
    with make_progress() as prog:
        task = prog.add_task("exporting ONNX", total=len(cfg.variants), status="")
        onnx_export.export_fp32(job.model, job.data.test_x[:1], fp32, cfg.opset, cfg.exporter)
        for variant in cfg.variants:
            prog.update(task, status=variant)
            path = fp32 if variant == "fp32" else job.path(f"{job.prefix}-{variant}.onnx")
            quant: dict[str, Any] = {}
            rr = variant.startswith("int8_static") and job.reduce_range(cfg)
            bar = parity_bar("vision", "onnx", variant, bool(rr)).floor
            if variant != "fp32":
                quant = _quantize_until_parity(job, cfg, fp32, variant, path, bar)
            if quant and quant["kept"] is None:
                job.failures[path.stem] = "; ".join(f"{a['remedy']}: {a['error']}" for a in quant["attempts"])
            else:
                job.add(path, "onnx", variant, bar, **({"quantization": quant} if quant else {}))
            prog.advance(task)
    if "fp32" not in cfg.variants:
        fp32.unlink()


def _export_tflite(job: _Export, cfg: TfliteExport) -> None:
    """litert-torch variants; fp32 first when a post-conversion (ai-edge-quantizer) variant needs it."""
    from edgedistill.toolchain.vision.export import tflite

    tflite.require()
    calib = job.calibration(cfg.calibration_samples) if "int8_static" in cfg.variants else None
    fp32 = job.path(f"{job.prefix}-tflite-fp32.tflite")
    order = sorted(cfg.variants, key=lambda v: v != "fp32")
    if any(v in tflite.AEQ_RECIPES for v in order) and "fp32" not in order:
        order.insert(0, "fp32")
    with make_progress() as prog:
        task = prog.add_task("exporting TFLite", total=len(order), status="")
        for variant in order:
            prog.update(task, status=variant)
            path = job.path(f"{job.prefix}-tflite-{variant}.tflite")
            t0 = time.perf_counter()
            tflite.export_variant(job.model, job.data.test_x[:1], variant, path, fp32, calib, cfg.layout,
                                  job.model_name)
            extra: dict[str, Any] = {"layout": cfg.layout}
            bar = parity_bar("vision", "tflite", variant).floor
            if variant == "int8_static":  # PT2E full-integer: more, stratified calibration when parity fails
                p = job.parity(path, variant, bar)
                attempts = [{"remedy": "as configured", "calibration_images": len(calib), "ok": p.ok,
                             "top1_agreement": p.top1_agreement}]
                if not p.ok and cfg.remedies:
                    n = _calibration_size(len(job.data.train_x), cfg.calibration_samples, 4)
                    tflite.export_variant(job.model, job.data.test_x[:1], variant, path, fp32, job.calibration(n),
                                          cfg.layout, job.model_name)
                    p = job.parity(path, variant, bar)
                    attempts.append({"remedy": "4x (at least 256) calibration images, stratified by class", "ok": p.ok,
                                     "calibration_images": n, "top1_agreement": p.top1_agreement})
                extra["quantization"] = {"attempts": attempts, "kept": attempts[-1]["remedy"]}
            job.seconds[path.stem] = round(time.perf_counter() - t0, 2)
            if variant in cfg.variants:
                job.add(path, "tflite", variant, bar, **extra)
            prog.advance(task)
    if "fp32" not in cfg.variants:
        fp32.unlink(missing_ok=True)


def _print_parity(console: Any, records: list[dict[str, Any]]) -> None:
    for a in records:
        p = a["parity"]
        console.print(f"  {a['name']}: max|Δ| {p['max_abs_diff']:.2e}, top-1 agreement "
                      f"{p['top1_agreement']:.4f} ({'ok' if p['ok'] else 'FAILS ' + p['criterion']})")


def _bench_items(ctx: Context) -> list[BenchItem]:
    items = []
    if ctx.recipe.bench.include_pytorch:
        items.append(BenchItem("teacher", ctx.run.path(TEACHER)))
        for role, rel in students().items():
            if ctx.run.path(rel).is_file():
                items.append(BenchItem(f"{role}-student", ctx.run.path(rel)))
    for a in read_json(ctx.run.path("export", "artifacts.json")):
        items.append(BenchItem(a["name"], ctx.run.root / a["file"]))
    for a in teacher_artifacts(ctx.run):
        items.append(BenchItem(a["name"], ctx.run.root / a["file"]))
    return items


def teacher_artifacts(run: RunDir) -> list[dict[str, Any]]:
    """The teacher's exported files (empty when the recipe did not export it, or for older runs)."""
    listing = run.path("export", TEACHER_ARTIFACTS)
    return read_json(listing)["artifacts"] if listing.is_file() else []


def _rel(path: Path, root: Path) -> str:
    """A path as the report records it: relative to the run when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def stage_bench(ctx: Context) -> None:
    cfg = ctx.recipe.bench
    ctx.run.require_intact("export")
    items = _bench_items(ctx)
    threads = resolve_threads(cfg.threads, os.cpu_count() or 1)
    measured = {i.name: {"path": _rel(i.path, ctx.run.root), "sha256": sha256_file(i.path)} for i in items}
    h = sha256_json({"items": {n: m["sha256"] for n, m in measured.items()}, "bench": ctx.recipe.section("bench"),
                     "threads": threads})
    if ctx.skip("bench", h):
        return
    test = ctx.run.path("data", "test.npz")
    plan = plan_devices(cfg.devices, cfg.threads, cfg.profiles)
    with make_progress() as prog:
        task = prog.add_task("benchmarking", total=len(items) * max(1, sum(map(len, plan.values()))), status="")
        devices = measure_devices(items, cfg.devices, cfg.threads, test, ctx.run.path("bench", "x").parent,
                                  cfg.warmup, cfg.runs, cfg.profiles, progress=lambda: prog.advance(task),
                                  force=ctx.force, reference=ctx.run.path("export", REFERENCE_LOGITS),
                                  processes=cfg.processes)
    host = devices.get("host") or devices.get("local") or {}
    results, threads = host.get("results", {}), host.get("threads", threads)
    out = ctx.run.path("bench", "results.json")
    write_json(out, {"threads": threads, "results": results, "devices": devices})
    failed_devices = {d: e["error"] for d, e in devices.items() if e["error"]}
    for d, err in failed_devices.items():
        ctx.console.print(f"  [yellow]device {d} failed:[/yellow] {err}")
    ctx.run.record("bench", h, [out], {"threads": threads, "devices": list(devices), "measured": measured,
                                       "failed": [n for n, r in results.items() if r["error"]],
                                       "failed_devices": failed_devices})


def _per_example(run: RunDir) -> dict[str, list[int]]:
    """Per model the bench scored, per test image, 1 when right: the gate's paired bootstrap needs them."""
    if not run.stage("data"):
        return {}
    labels = np.load(run.path("data", "test.npz"), allow_pickle=False)["y"]
    return {p.name.removesuffix("-logits.npy"): (np.load(p, allow_pickle=False).argmax(1) == labels).astype(int)
            .tolist() for p in sorted(run.path("bench").glob("*-logits.npy"))}


def stage_report(ctx: Context) -> dict[str, Any]:
    """Assemble report.json and report.md from the stages' files (always re-run: it is cheap)."""
    run = ctx.run
    inputs = report_mod.ReportInputs(
        recipe=ctx.recipe.name,
        run_dir=str(run.root),
        teacher=read_json(run.path("teacher", "metrics.json")),
        students={role: read_json(run.path("students", f"{role}.json"))
                  for role in students() if run.path("students", f"{role}.json").is_file()},
        artifacts=read_json(run.path("export", "artifacts.json")) if run.stage("export") else [],
        teacher_artifacts=teacher_artifacts(run) if run.stage("export") else [],
        bench=read_json(run.path("bench", "results.json")) if run.stage("bench") else None,
        accuracy_tolerance=ctx.recipe.bench.accuracy_tolerance,
        files={o["path"]: o for s in run.manifest()["stages"].values() for o in s["outputs"]},
        data=(run.stage("data") or {}).get("info", {}),
        distill=(run.stage("distill") or {}).get("info", {}),
        export=(run.stage("export") or {}).get("info", {}),
        auto=auto_select.report_decision(ctx),
        per_example=_per_example(run),
    )
    report = report_mod.build(inputs)
    finish_report(ctx, report, report_mod)
    return report


def export_options(recipe: VisionRecipe, formats: str | None, variants: str | None,
                   layout: str | None) -> VisionRecipe:
    """The recipe with ``edgedistill export``'s --formats / --variants / --layout applied and checked."""
    return recipe.model_copy(update={"export": export_config(recipe.export, formats, variants, layout)})


def export_config(base: ExportConfig, formats: str | None, variants: str | None, layout: str | None) -> ExportConfig:
    from typing import get_args

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


def gate_items(ctx: Context) -> list[GateItem]:
    listing = ctx.run.path("export", "artifacts.json")
    if not listing.is_file():
        return []
    return [GateItem(a["name"], ctx.run.root / a["file"], None, (), ctx.run.path("data", "test.npz"))
            for a in read_json(listing)]


def auto_candidates(ctx: Context, spec: str) -> Any:
    """``export --auto``: the exported artifacts measured on ``spec`` (:mod:`edgedistill.toolchain.vision.auto`)."""
    from edgedistill.toolchain.vision.auto import auto_candidates as measure

    return measure(ctx, spec)


STAGES = (Stage("data", stage_data, "distill"), Stage("teacher", stage_teacher, "distill"),
          Stage("distill", stage_distill, "distill"), Stage("export", stage_export, "export"),
          Stage(auto_select.STAGE, auto_select.stage_select, "export"),
          Stage("bench", stage_bench, "bench"), Stage("report", stage_report, "report"))
