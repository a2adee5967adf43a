"""The LLM run report: one row per model (teacher, KD students, SFT student) and per artifact (GGUF, ONNX), with task
score and retention vs the teacher, fidelity vs the PyTorch student it came from, and the fresh-process bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.benchmarks.report import device_rows, devices_markdown
from edgedistill.core.fileio import write_json, write_text

SCHEMA = "edgedistill.llm-report/1"
#: the issue's bar for the best student GGUF: task-score retention and generation speed-up vs the PyTorch teacher
MIN_RETENTION, MIN_TG_SPEEDUP = 0.90, 10.0


def _row(name: str, kind: str, fmt: str, b: dict[str, Any] | None, teacher_b: dict[str, Any] | None) -> dict:
    ok = b is not None and not b.get("error")
    t_ok = teacher_b is not None and not teacher_b.get("error")
    g = (lambda k: b.get(k) if ok else None)  # noqa: E731
    score = g("task_score")
    return {
        "name": name, "kind": kind, "format": fmt,
        "task_score": score, "exact_match": g("exact_match"), "rouge_l": g("rouge_l"),
        "field_accuracy": g("field_accuracy"),
        "retention": score / teacher_b["task_score"] if ok and t_ok and teacher_b["task_score"] else None,
        "perplexity": None, "kld": None, "same_top_token": None,
        "pp_tps": g("pp_tps"), "pp_tps_sd": g("pp_tps_sd"), "tg_tps": g("tg_tps"), "tg_tps_sd": g("tg_tps_sd"),
        "tg_speedup": g("tg_tps") / teacher_b["tg_tps"] if ok and t_ok else None,
        "ttft_ms": g("ttft_ms"), "peak_rss_mb": g("peak_rss_mb"), "size_bytes": g("size_bytes"),
        "runtime": g("runtime"), "bench_error": None if b is None else b.get("error"),
    }


def build(recipe: str, run_dir: str, teacher: dict[str, Any], students: dict[str, dict[str, Any]],
          export: dict[str, Any] | None, bench: dict[str, dict[str, Any]], manifest: dict[str, Any],
          threads: int, devices: dict[str, Any] | None = None) -> dict[str, Any]:
    tb = bench.get("teacher")
    pt = (export or {}).get("pytorch", {})
    rows = [_row("teacher", "teacher", "pytorch", tb, tb) | {"params": teacher.get("params"),
                                                             "val_nll": teacher.get("val_nll")}]
    rows[0]["perplexity"] = pt.get("teacher", {}).get("perplexity")
    for n, s in students.items():
        r = _row(f"{n}-student", s.get("role", "kd"), "pytorch", bench.get(f"{n}-student"), tb)
        f = pt.get(n, {})
        r.update(params=s.get("params"), val_nll=s.get("val_nll"), perplexity=f.get("perplexity"),
                 kld=f.get("kld_vs_teacher"), same_top_token=f.get("same_top_vs_teacher"),
                 train_seconds=s.get("train_seconds"))
        if s.get("role") == "kd":
            r["loss"] = s.get("loss")
        rows.append(r)
    for a in (export or {}).get("artifacts", []):
        f = a["fidelity"]
        r = _row(a["name"], "artifact", f"{a.get('format', 'gguf')} {a['variant']}", bench.get(a["name"]), tb)
        r.update(source=a["source"], perplexity=f["perplexity"], kld=f["kld_mean"], kld_p99=f["kld_p99"],
                 same_top_token=f["same_top_token"], max_abs_diff=f["max_abs_diff"], tensor_types=a.get("tensor_types"))
        r["size_bytes"] = r["size_bytes"] or a["size_bytes"]
        rows.append(r)
    ggufs = [r for r in rows if r["format"].startswith("gguf ") and r["task_score"] is not None]
    # the GGUF to ship: the fastest generator among those keeping the retention bar, else the best scorer
    keeping = [r for r in ggufs if r["retention"] is not None and r["retention"] >= MIN_RETENTION]
    best = (max(keeping, key=lambda r: r["tg_tps"] or 0.0) if keeping
            else max(ggufs, key=lambda r: (round(r["task_score"], 4), r["tg_tps"] or 0), default=None))
    summary: dict[str, Any] = {
        "teacher_task_score": rows[0]["task_score"], "best_student": (export or {}).get("best_student"),
        "best_gguf": best["name"] if best else None,
        "best_gguf_retention": best["retention"] if best else None,
        "best_gguf_tg_speedup": best["tg_speedup"] if best else None,
        "threads": threads,
    }
    if best and best["retention"] is not None and best["tg_speedup"] is not None:
        summary["meets_bar"] = best["retention"] >= MIN_RETENTION and best["tg_speedup"] >= MIN_TG_SPEEDUP
    else:
        summary["meets_bar"] = None
    files = {o["path"]: o for s in manifest.get("stages", {}).values() for o in s.get("outputs", [])}
    stages = manifest.get("stages", {})
    return {"schema": SCHEMA, "recipe": recipe, "run_dir": run_dir, "models": rows, "summary": summary,
            "devices": device_rows({"devices": devices}) if devices else [],
            "distill": stages.get("distill", {}).get("info"), "blackbox": stages.get("blackbox", {}).get("info"),
            "bar": {"min_retention": MIN_RETENTION, "min_tg_speedup_vs_pytorch_teacher": MIN_TG_SPEEDUP},
            "files": files}


def _f(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "format", "task", "exact", "ROUGE-L", "retention", "ppl", "KLD", "same-top", "pp tok/s",
              "tg tok/s", "tg ×teacher", "TTFT ms", "peak RSS MB", "size KB"]
    body = []
    best = report["summary"].get("best_gguf")
    for r in report["models"]:
        body.append([r["name"] + (" ★" if r["name"] == best else ""), r["format"], _f(r["task_score"], ".3f"),
                     _f(r["exact_match"], ".3f"), _f(r["rouge_l"], ".3f"), _f(r["retention"], ".3f"),
                     _f(r["perplexity"], ".3f"), _f(r["kld"], ".2e"), _f(r["same_top_token"], ".3f"),
                     _f(r["pp_tps"], ".0f"), _f(r["tg_tps"], ".0f"), _f(r["tg_speedup"], ".1f"),
                     _f(r["ttft_ms"], ".1f"), _f(r["peak_rss_mb"], ".0f"),
                     _f(None if r["size_bytes"] is None else r["size_bytes"] / 1024, ".0f")])
    return header, body


def to_markdown(report: dict[str, Any]) -> str:
    header, body = table(report)
    s = report["summary"]
    bar = report["bar"]
    lines = [f"# edgedistill LLM report — {report['recipe']}", "",
             f"Teacher task score {_f(s['teacher_task_score'], '.3f')} (exact match of the summary's key fields, "
             f"averaged over fields). Best student (highest validation task score): **{s['best_student']}**; "
             f"best GGUF (★, the fastest generator keeping retention ≥ {bar['min_retention']}): "
             f"**{s['best_gguf']}**, retention {_f(s['best_gguf_retention'], '.3f')}, generation "
             f"{_f(s['best_gguf_tg_speedup'], '.1f')}× the PyTorch teacher's tokens/s at {s['threads']} thread(s). "
             f"Bar: retention ≥ {bar['min_retention']} and ≥ {bar['min_tg_speedup_vs_pytorch_teacher']}× → "
             f"{'met' if s['meets_bar'] else ('not met' if s['meets_bar'] is False else 'n/a')}.", "",
             "ppl: perplexity on the test summaries; KLD and same-top (as llama.cpp's perplexity --kl-divergence "
             "computes them, over the summary positions): each student vs the teacher, each artifact (GGUF or ONNX) vs "
             "the PyTorch student it came from;"
             " pp/tg: llama-bench style, fresh process per row.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    errs = [(r["name"], r["bench_error"]) for r in report["models"] if r.get("bench_error")]
    if errs:
        lines += ["", "Bench failures:", *[f"- {n}: {e}" for n, e in errs]]
    lines += devices_markdown(report.get("devices") or [], latency="p50 ms/token", accuracy="next-token acc.")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], json_path: Path, md_path: Path) -> None:
    write_json(json_path, report)
    write_text(md_path, to_markdown(report))
