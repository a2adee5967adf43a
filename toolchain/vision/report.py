"""The run report: ``report.json`` (versioned schema, documented in the README) and ``report.md`` (tables).

Schema ``edgedistill.report/1``::

    {"schema": "edgedistill.report/1", "recipe": str, "run_dir": str,
     "definitions": {"peak_rss_mb": str, "retention": str, "speedup": str, "kd_gain": str, "keeps_accuracy": str},
     "data": {...split sizes...}, "distill": {"mode": ..., "cache": {...}, "tuning": {...}, "paraphraser",
                                              "self_distill": {"deployed_exit", "exits": {head: {...}}},
                                              "assistant_chain": {"links": [{"teacher", "student", ..., "retention",
                                                                   "retention_vs_teacher"}], "exits"?}},
     "models": [{"name", "role": teacher|student|artifact|teacher-artifact, "format": pytorch|onnx|tflite,
                 "precision",
                 "variant", "source", "file", "size_bytes", "accuracy", "retention", "kd_gain",
                 "latency_ms": {"<threads>": {"p50", "p90", "p99", "mean", "min"}},
                 "peak_rss_mb": {"<threads>": float}, "speedup": {"<threads>": float},
                 "distill_speedup": {"<threads>": float}, "runtime_speedup": {"<threads>": float},
                 "parity": {"reference", "max_abs_diff", "mean_abs_diff", "top1_agreement", "n", "criterion", "ok"},
                 "keeps_accuracy": bool, "bench_error": str | null}],
     "devices": [{"device", "label": measured|constrained|emulated|estimated, "profile", "model", "threads",
                  "p50_ms", "peak_rss_mb", "accuracy", "parity_vs_host", "applied", "error"}],
     "rows": [{...}: the same models as measurement rows, per device and thread count (edgedistill.benchmarks.row)],
     "per_device": {...}, "auto": {...export/auto.json: export --auto's decision, or null when it is off},
     "summary": {"teacher_accuracy", "baseline_accuracy", "kd_accuracy", "kd_gain", "kd_helped",
                 "recommended" (export --auto's choice when it is on), "recommended_reason", "threads",
                 "ensemble": null | {"test_accuracy", "val_accuracy", "weights", "members": [{"name", "seed",
                                     "file", "weight", "val_accuracy", "test_accuracy"}]}}}

A ``mutual`` student row (``distill.mutual``) also has ``peer_accuracy``: its co-trained peer's test accuracy.
``summary.ensemble`` (``ensemble.teachers``) is the teachers' own ensemble: the argmax of their weighted mean
probabilities (T = 1), beside the main teacher's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistill.benchmarks.report.common import (
    auto_markdown,
    device_rows,
    devices_markdown,
    fmt,
    gate_markdown,
    md_table,
    per_device_markdown,
    recommended,
    write_report,
)
from edgedistill.benchmarks.report.per_device import per_device
from edgedistill.benchmarks.row import Row, on_devices, percentiles
from edgedistill.core.tolerances import PARITY_BARS, parity_bar_name

SCHEMA = "edgedistill.report/1"
TITLE = "edgedistill report"
SCORE = "accuracy"
LATENCY = "ms per run, batch 1"
DEFINITIONS = {
    "peak_rss_mb": "peak resident set size of the fresh benchmark process (VmHWM), including the "
                   "Python interpreter and the runtime library; rss_before_load_mb in bench/*.json gives the baseline",
    "retention": "model accuracy / teacher accuracy on the test split",
    "speedup": "teacher PyTorch p50 / model p50, batch 1, same thread count, same run",
    "distill_speedup": "the teacher's fp32 file / the student's fp32 file in the artifact's format (same runtime, "
                       "same precision): p50, batch 1, same thread count, same run — what distillation buys",
    "runtime_speedup": "the PyTorch student it came from / the artifact: p50, batch 1, same thread count, same run "
                       "— what the runtime and quantisation buy (speedup ≈ PyTorch teacher/student × this)",
    "kd_gain": "KD student accuracy - CE-only baseline accuracy (same architecture and step budget)",
    "keeps_accuracy": "artifact accuracy >= its PyTorch source's accuracy - accuracy_tolerance",
}


@dataclass
class ReportInputs:
    recipe: str
    run_dir: str
    teacher: dict[str, Any]
    students: dict[str, dict[str, Any]]
    artifacts: list[dict[str, Any]]
    bench: dict[str, Any] | None
    accuracy_tolerance: float
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # the export stage's info: which student shipped, why
    teacher_artifacts: list[dict[str, Any]] = field(default_factory=list)  # the teacher's own fp32 exports
    auto: dict[str, Any] | None = None  # export --auto's decision (edgedistill.benchmarks.select): what ships
    per_example: dict[str, list[int]] = field(default_factory=dict)  # per model, per test image: 1 when right


def _rows(inp: ReportInputs) -> list[dict[str, Any]]:
    rows = [{"name": "teacher", "role": "teacher", "format": "pytorch", "precision": "fp32",
             "file": "teacher/teacher.safetensors", "accuracy": inp.teacher["test_accuracy"]}]
    for role, m in inp.students.items():
        rows.append({"name": f"{role}-student", "role": "student", "format": "pytorch", "precision": "fp32",
                     "variant": role, "file": f"students/{role}.safetensors", "accuracy": m["test_accuracy"],
                     "val_accuracy": m.get("val_accuracy"), "tuned": m.get("tuned"),
                     **({"peer_accuracy": m["peer"]["test_accuracy"]} if "peer" in m else {}),
                     **({"deployed_exit": m["deployed_exit"]} if m.get("deployed_exit") else {})})
    for role, listing in (("artifact", inp.artifacts), ("teacher-artifact", inp.teacher_artifacts)):
        for a in listing:
            rows.append({"role": role, **{k: a[k] for k in ("name", "format", "precision", "variant", "source",
                                                            "file", "parity")}, "accuracy": None})
    return rows


def _same_runtime_speedups(rows: list[dict[str, Any]], by_name: dict[str, dict[str, Any]]) -> None:
    """Split each artifact's speed-up (in place): distillation's share (the teacher's fp32 file vs the student's
    fp32 file, same format) and the runtime's and quantisation's (its PyTorch student vs the artifact)."""
    teacher_files = {r["format"]: r for r in rows if r["role"] == "teacher-artifact" and r["precision"] == "fp32"}
    student_fp32 = {r["format"]: r for r in rows if r["role"] == "artifact" and r["variant"] == "fp32"}

    def ratio(num: dict[str, Any] | None, den: dict[str, Any]) -> dict[str, float]:
        if not num:
            return {}
        return {t: num["latency_ms"][t]["p50"] / lat["p50"] for t, lat in den["latency_ms"].items()
                if t in num["latency_ms"] and lat["p50"] > 0}

    for row in rows:
        if row["role"] != "artifact":
            continue
        s32 = student_fp32.get(row["format"])
        row["distill_speedup"] = ratio(teacher_files.get(row["format"]), s32) if s32 else {}
        row["runtime_speedup"] = ratio(by_name.get(f"{row['source']}-student"), row)


def _attach_bench(row: dict[str, Any], bench: dict[str, Any] | None) -> None:
    entry = (bench or {}).get("results", {}).get(row["name"])
    row.update(latency_ms={}, latency_samples_ms={}, peak_rss_mb={}, bench_error=None)
    if entry is None:
        return
    row["bench_error"] = entry["error"]
    for t, doc in entry["runs"].items():
        lat = doc["latency_ms"]
        row["latency_ms"][str(t)] = {k: lat[k] for k in ("p50", "p90", "p99", "mean", "min")}
        row["latency_samples_ms"][str(t)] = doc.get("samples_ms")
        row["peak_rss_mb"][str(t)] = doc["peak_rss_mb"]
        row["size_bytes"] = doc["size_bytes"]
        if "accuracy" in doc:
            row["accuracy"] = doc["accuracy"]  # scored by the agent on the saved test split


def build(inp: ReportInputs) -> dict[str, Any]:
    rows = _rows(inp)
    for row in rows:
        _attach_bench(row, inp.bench)
        row.setdefault("size_bytes", inp.files.get(row["file"], {}).get("bytes"))
        if row["name"] in inp.per_example:  # the gate's paired bootstrap needs them
            row["per_example"] = inp.per_example[row["name"]]
    by_name = {r["name"]: r for r in rows}
    teacher = by_name["teacher"]
    base = by_name.get("baseline-student", {}).get("accuracy")
    kd = by_name.get("kd-student", {}).get("accuracy")
    kd_gain = None if base is None or kd is None else kd - base
    for row in rows:
        acc = row["accuracy"]
        row["retention"] = None if acc is None else acc / teacher["accuracy"]
        row["speedup"] = {t: teacher["latency_ms"][t]["p50"] / lat["p50"]
                          for t, lat in row["latency_ms"].items() if t in teacher["latency_ms"]}
        row["kd_gain"] = kd_gain if row["name"] == "kd-student" else None
        if row["role"] == "artifact":
            src = by_name.get(f"{row['source']}-student", {}).get("accuracy")
            row["keeps_accuracy"] = (acc is not None and src is not None
                                     and acc >= src - inp.accuracy_tolerance and row["parity"]["ok"])
    _same_runtime_speedups(rows, by_name)
    devices = device_rows(inp.bench, {r["name"] for r in rows if r["role"] == "artifact"})
    src = {r["variant"]: r["accuracy"] for r in rows if r["role"] == "student"}
    host = _host_rows(rows, src, {a["name"]: artifact_bar(a) for a in inp.artifacts})
    measured = on_devices("vision", host, devices, "accuracy")
    # a bench from before the device section (its results only) judged no device: the ★ falls back to the host rows
    truth = per_device(measured if devices else [], inp.accuracy_tolerance)
    rec, reason = recommended(host, truth)
    if inp.auto is not None:  # export --auto chose for its device under its retention budget: that ships
        rec, reason = inp.auto["chosen"], f"export --auto on {inp.auto['device']}: {inp.auto['reason']}"
    threads = sorted({int(t) for r in rows for t in r["latency_ms"]})
    return {"schema": SCHEMA, "recipe": inp.recipe, "run_dir": inp.run_dir, "definitions": DEFINITIONS,
            "data": inp.data, "rows": [r.to_dict() for r in measured],
            "distill": {k: v for k, v in inp.distill.items()
                        if k in ("mode", "cache", "tuning", "paraphraser", "self_distill", "assistant_chain")},
            "models": rows, "devices": devices, "per_device": truth, "auto": inp.auto,
            "summary": {"teacher_accuracy": teacher["accuracy"], "baseline_accuracy": base, "kd_accuracy": kd,
                        "kd_gain": kd_gain, "kd_helped": None if kd_gain is None else kd_gain > 0,
                        "recommended": rec, "recommended_reason": reason, "threads": threads,
                        "shipped_student": inp.export.get("shipped"),
                        "shipped_reason": inp.export.get("shipped_reason"), "tuning": inp.distill.get("tuning"),
                        "ensemble": inp.teacher.get("ensemble")}}


def _host_rows(models: list[dict[str, Any]], source: dict[str, float | None], bars: dict[str, str]) -> list[Row]:
    """The measurement rows of the report's models on the host: one per thread count (one without figures for a
    model the bench did not time); ``bars``: each artifact's bar, by its name in the table."""
    out = []
    for m in models:
        name, par = bars.get(m["name"]), m.get("parity") or {}
        bar = None if name is None else PARITY_BARS[name]
        metric = None if bar is None else "max_abs_diff" if bar.metric == "fp32" else "top1_agreement"
        fixed = {"artifact": m["name"], "kind": "vision", "role": m["role"], "device": "host",
                 "source": m.get("source"), "format": m["format"], "precision": m["precision"],
                 "size_bytes": m.get("size_bytes"), "score": m["accuracy"], "retention": m["retention"],
                 "source_score": source.get(m["source"]) if m.get("source") else None,
                 "keeps": m.get("keeps_accuracy"), "parity_metric": metric,
                 "parity_value": par.get(metric) if metric else None, "parity_bar": bar and bar.floor,
                 "parity_bar_name": name, "parity_ok": par.get("ok"), "per_example": m.get("per_example"),
                 "error": m.get("bench_error")}
        if not m["latency_ms"]:
            out.append(Row(**fixed))
        for t, lat in m["latency_ms"].items():
            out.append(Row(**fixed, threads=int(t), peak_rss_mb=m["peak_rss_mb"].get(t),
                               speedup=m["speedup"].get(t),
                               distill_speedup=(m.get("distill_speedup") or {}).get(t),
                               runtime_speedup=(m.get("runtime_speedup") or {}).get(t),
                               **percentiles((m.get("latency_samples_ms") or {}).get(t), lat["p50"], lat["p90"],
                                                 lat["p99"])))
    return out


def artifact_bar(artifact: dict[str, Any]) -> str:
    """The name of the parity bar an exported artifact (its ``export/artifacts.json`` record) is held to, in the one
    table (:data:`edgedistill.core.tolerances.PARITY_BARS`)."""
    rr = bool((artifact.get("quantization") or {}).get("reduce_range"))
    return parity_bar_name("vision", artifact["format"], artifact["variant"], rr)


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table (header, rows) shared by report.md and the CLI."""
    threads = [str(t) for t in report["summary"]["threads"]]
    t1 = threads[0] if threads else "1"
    header = ["model", "format", "precision", "accuracy", "retention", "KD gain",
              *[f"p50 ms @{t}T" for t in threads], f"speed-up @{t1}T", "of which distillation",
              "runtime + quantisation", f"peak RSS MB @{t1}T", "size KB", "parity"]
    body = []
    for r in report["models"]:
        par = r.get("parity")
        par_s = "–" if not par else (f"{'ok' if par['ok'] else 'FAIL'} Δ{par['max_abs_diff']:.1e} "
                                     f"top1 {par['top1_agreement']:.3f}")
        name = r["name"] + (" ★" if r["name"] == report["summary"]["recommended"] else "")
        body.append([name, r["format"], r["precision"], fmt(r["accuracy"], ".4f"), fmt(r["retention"], ".3f"),
                     fmt(r["kd_gain"], "+.4f"),
                     *[fmt(r["latency_ms"].get(t, {}).get("p50"), ".3f") for t in threads],
                     fmt(r["speedup"].get(t1), ".1f"), fmt((r.get("distill_speedup") or {}).get(t1), ".1f"),
                     fmt((r.get("runtime_speedup") or {}).get(t1), ".1f"), fmt(r["peak_rss_mb"].get(t1), ".0f"),
                     fmt(None if r.get("size_bytes") is None else r["size_bytes"] / 1024, ".0f"), par_s])
    return header, body


def to_markdown(report: dict[str, Any]) -> str:
    header, body = table(report)
    s = report["summary"]
    students = ", ".join(f"{r['variant']} {fmt(r.get('val_accuracy'), '.4f')} → {fmt(r['accuracy'], '.4f')}"
                         for r in report["models"] if r["role"] == "student")
    ens = s.get("ensemble")
    ens_text = "" if not ens else (f" (ensemble of {len(ens['members'])} teachers: "
                                   f"{fmt(ens['test_accuracy'], '.4f')}; each "
                                   + ", ".join(fmt(m["test_accuracy"], ".4f") for m in ens["members"]) + ")")
    peers = "".join(f" The mutual student's co-trained peer: {fmt(r['peer_accuracy'], '.4f')}."
                    for r in report["models"] if r.get("peer_accuracy") is not None)
    lines = [f"# edgedistill report — {report['recipe']}", "",
             f"Teacher accuracy {fmt(s['teacher_accuracy'], '.4f')}{ens_text}; CE-only student "
             f"{fmt(s['baseline_accuracy'], '.4f')}; KD student {fmt(s['kd_accuracy'], '.4f')} "
             f"(KD gain {fmt(s['kd_gain'], '+.4f')}"
             + ("" if s["kd_helped"] is None else ("" if s["kd_helped"] else ": distillation did not help")) + ")."
             + peers,
             "", f"Shipped student: **{s.get('shipped_student')}** — {s.get('shipped_reason')}. Students, "
             f"validation → test accuracy (selection never looks at test): {students}.",
             "", f"Recommended artifact (★): **{s['recommended']}** — {s['recommended_reason']}.", "",
             *md_table(header, body)]
    lines += strategies_markdown(report.get("distill") or {})
    lines += devices_markdown(report.get("devices") or [])
    lines += per_device_markdown(report.get("per_device"))
    lines += auto_markdown(report.get("auto"))
    lines += gate_markdown(report)
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    errors = [f"- {r['name']}: {r['bench_error']}" for r in report["models"] if r.get("bench_error")]
    if errors:
        lines += ["", "## Benchmark failures", "", *errors]
    return "\n".join(lines) + "\n"


def strategies_markdown(distill: dict[str, Any]) -> list[str]:
    """Each early-exit head's accuracy (self-distillation), and each teacher-assistant link's retention."""
    lines: list[str] = []
    for role, key in (("self-distill", "self_distill"), ("chain", "assistant_chain")):
        sd = distill.get(key) or {}
        if not sd.get("exits"):
            continue
        lines += ["", f"## Early exits of the {role} student", "",
                  f"Each head's accuracy; the deployed model is **{sd.get('deployed_exit') or 'final'}** "
                  "(an exit: the blocks up to it and its head, nothing after).", ""]
        lines += md_table(["head", "params", "val accuracy", "test accuracy"], [
            [name + (" (deployed)" if name == (sd.get("deployed_exit") or "final") else ""), fmt(e["params"], ","),
             fmt(e["val_accuracy"], ".4f"), fmt(e["test_accuracy"], ".4f")] for name, e in sd["exits"].items()])
    links = (distill.get("assistant_chain") or {}).get("links") or []
    if links:
        lines += ["", "## Teacher-assistant chain", "",
                  "Retention = the link's student test accuracy / its teacher's; the last column / the teacher's.", ""]
        lines += md_table(["link", "models", "params", "teacher test", "student test", "retention", "of the teacher's"],
                          [[f"{lk['teacher']} → {lk['student']}", f"{lk['teacher_model']} → {lk['student_model']}",
                            fmt(lk["params"], ","), fmt(lk["teacher_test_accuracy"], ".4f"),
                            fmt(lk["student_test_accuracy"], ".4f"), fmt(lk["retention"], ".3f"),
                            fmt(lk["retention_vs_teacher"], ".3f")] for lk in links])
    return lines


def summary_facts(report: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The headline figures: the teacher's, the CE-only and the KD student's accuracy, and KD's gain."""
    s = report.get("summary") or {}
    return [("teacher accuracy", s.get("teacher_accuracy"), ".4f"),
            ("CE-only student", s.get("baseline_accuracy"), ".4f"), ("KD student", s.get("kd_accuracy"), ".4f"),
            ("KD gain", s.get("kd_gain"), "+.4f")]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the CLI prints under the table."""
    s = report["summary"]
    out = [f"shipped student: [bold]{s.get('shipped_student')}[/bold] ({s.get('shipped_reason')})",
           f"recommended: [bold]{s['recommended']}[/bold] ({s['recommended_reason']})"]
    if s["kd_helped"] is False:
        out.append("[yellow]distillation did not beat the CE-only baseline on this run[/yellow]")
    for dev, rec in (report.get("per_device") or {}).get("recommended", {}).items():
        if dev not in ("host", "local"):
            out.append(f"  on {dev}: [bold]{rec.get('artifact')}[/bold] ({rec['reason']})")
    for flag in (report.get("per_device") or {}).get("flags", []):
        out.append(f"[yellow]{flag}[/yellow]")
    return out


def write(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    write_report(report, json_path, md_path, to_markdown)
