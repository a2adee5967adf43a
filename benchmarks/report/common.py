"""What every kind's report shares: formatting, the device rows and their Markdown section, the gate section,
and writing report.json + report.md atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgedistill.benchmarks.recommend import TIE_FLOOR, Option, recommend
from edgedistill.benchmarks.row import HOSTS, Row
from edgedistill.core.fileio import write_json, write_text


class KindReport(Protocol):
    """What a kind's report module gives the shared report code (the HTML page, the CLI, the pipeline): its title,
    what its score and latency are, the summary table and facts, and how report.json and report.md are written.
    Everything else they show comes from the report's measurement rows (:mod:`edgedistill.benchmarks.row`)."""

    TITLE: str  # the page's heading ("edgedistill report")
    SCORE: str  # what Row.score is ("accuracy")
    LATENCY: str  # what a latency is per ("ms per run, batch 1")

    def table(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """The summary table: header and rows (the recommended artifact marked ★)."""
        ...

    def summary_facts(self, report: dict[str, Any]) -> list[tuple[str, Any, str]]:
        """The kind's headline figures: (label, value, format spec or "")."""
        ...

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        """What the CLI prints under the table (rich markup)."""
        ...

    def write(self, report: dict[str, Any], json_path: Path, md_path: Path) -> None:
        """Write report.json and report.md atomically."""
        ...


def device_rows(bench: dict[str, Any] | None, artifacts: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per device × model × thread count from bench/results.json's ``devices`` block (empty for old runs).

    Every row carries its ``label`` (measured, constrained, emulated, estimated); a failed device is one row with
    ``model`` None and its ``error``. Parity against the source (the shipped PyTorch student) is kept only for the
    ``artifacts`` made from it (when given): for the teacher or another student it would compare different models.
    """
    rows: list[dict[str, Any]] = []
    for spec, dev in ((bench or {}).get("devices") or {}).items():
        base = {"device": spec, "label": dev.get("label"), "profile": dev.get("profile")}
        if dev.get("error"):
            rows.append({**base, "model": None, "threads": None, "error": dev["error"]})
            continue
        for name, res in dev.get("results", {}).items():
            parity, source = res.get("parity_vs_host"), res.get("parity_vs_source")
            if artifacts is not None and name not in artifacts:
                source = None
            if res.get("error") and not res.get("runs"):
                rows.append({**base, "model": name, "threads": None, "error": res["error"]})
            for t, doc in res.get("runs", {}).items():
                rows.append({**base, "model": name, "threads": int(t), "p50_ms": doc["latency_ms"]["p50"],
                             "p90_ms": doc["latency_ms"].get("p90"), "p99_ms": doc["latency_ms"].get("p99"),
                             "samples_ms": doc.get("samples_ms"),
                             "peak_rss_mb": doc.get("peak_rss_mb"), "accuracy": doc.get("accuracy"),
                             "task_score": (doc.get("task") or {}).get("task_score"),
                             "parity_vs_host": parity, "parity_vs_source": source,
                             "tokens_vs_host": res.get("tokens_vs_host"),
                             "applied": doc.get("device", {}).get("applied"),
                             "error": res.get("error")})
    return rows


def recommended(rows: list[Row], truth: dict[str, Any]) -> tuple[str | None, str]:
    """The report's ★ without ``export --auto``: the host's own per-device recommendation (the same rule over the
    same measurements, so the two cannot differ); when no host row was measured (a bench without a devices block),
    the same rule over the artifacts' host rows (those the kind judged: ``keeps`` set) at the fewest threads, the
    score breaking a tie of sizes."""
    host = next((truth["recommended"][d] for d in HOSTS if d in truth["recommended"]), None)
    if host is not None:
        return host["artifact"], host["reason"]
    arts = [r for r in rows if r.on_host and r.keeps is not None and r.threads is not None]
    t = min((r.threads for r in arts), default=1)
    rec = recommend([Option(r.artifact, r.p50_ms, r.samples_ms, r.size_bytes, bool(r.keeps), r.score)
                     for r in arts if r.threads == t], "host")
    return rec.name, rec.reason


def devices_markdown(rows: list[dict[str, Any]], latency: str = "p50 ms", accuracy: str = "accuracy") -> list[str]:
    """The report's "Devices" section (nothing when only the host ran); column names for other kinds of model."""
    if not rows or all(r["device"] in ("host", "local") for r in rows):
        return []
    out = ["", "## Devices", "",
           "Each figure says how it was obtained: **measured** (real hardware), **constrained** (this host capped "
           "to the profile's cores and RAM), **emulated** (qemu: correct outputs, time not a latency), "
           "**estimated** (roofline from the profile). Never compare across labels as if alike.", "",
           f"| device | label | model | threads | {latency} | peak RSS MB | {accuracy} | task score | parity vs source "
           "| parity vs host | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("model") is None or r.get("threads") is None:
            out.append(f"| {r['device']} | {r['label'] or '–'} | {r.get('model') or '–'} | – | – | – | – | – | – | – "
                       f"| FAILED: {r['error']} |")
            continue
        p50 = fmt(r["p50_ms"], ".3f") + (" (emulated)" if r["label"] == "emulated" else "")
        out.append(f"| {r['device']} | {r['label']} | {r['model']} | {r['threads']} | {p50} | "
                   f"{fmt(r['peak_rss_mb'], '.0f')} | {fmt(r['accuracy'], '.4f')} | {fmt(r.get('task_score'), '.3f')} "
                   f"| {_parity_cell(r.get('parity_vs_source'))} | {_parity_cell(r.get('parity_vs_host'))}"
                   f"{_tokens_cell(r.get('tokens_vs_host'))} | {r['error'] or ''} |")
    return out


def _parity_cell(p: dict[str, Any] | None) -> str:
    if not p or "max_abs_diff" not in p:
        return "–" if not p else f"error: {p.get('error')}"
    return f"Δ{p['max_abs_diff']:.1e} top1 {p['top1_agreement']:.3f}"


def _tokens_cell(t: dict[str, Any] | None) -> str:
    return "" if not t else f", tokens {t['identical']}/{t['texts']}"


def fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def environment(threads: list[int], devices: list[str]) -> dict[str, Any]:
    """What a measurement depends on: the CPU (model and the flags that change kernels), the runtimes' versions, the
    thread counts and the devices. Two reports are comparable only when these match (the gate's baseline check)."""
    import platform
    from importlib import metadata

    from edgedistill.devices.profile import get_profile

    host = get_profile("host")
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(("model name", "Hardware"))), "")
    except OSError:
        pass
    versions = {}
    for lib in ("onnxruntime", "ai-edge-litert", "llama-cpp-python", "torch"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu_model": model or platform.processor() or platform.machine(), "cpu_features": host.features,
            "cores": host.cores, "runtimes": versions, "threads": sorted(threads), "devices": list(devices),
            "python": platform.python_version()}


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def per_device_markdown(truth: dict[str, Any] | None) -> list[str]:
    """What to ship to each device, why, and the artifacts that are right on one device and wrong on another."""
    if not truth or not truth.get("recommended"):
        return []
    out = ["", "## What to ship, per device", "",
           "Each device's own figures decide (parity against the source model; its latency with an interval). "
           f"Candidates whose intervals overlap, or whose p50s are within {TIE_FLOOR:.0%}, are tied within noise "
           "and the smallest file wins.", "",
           "| device | recommended | why |", "|---|---|---|"]
    for dev, rec in truth["recommended"].items():
        out.append(f"| {dev} | {rec.get('artifact') or '–'} | {rec['reason']} |")
    if truth.get("flags"):
        out += ["", "Artifacts that keep accuracy on some devices only:", "", *[f"- {f}" for f in truth["flags"]]]
    return out


def auto_table(decision: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``export --auto``'s candidates (header, rows), shared by report.md and the CLI: each with its figures on the
    device and why it was or was not chosen."""
    header = ["artifact", "status", "p50 ms [interval]", "retention", "size KB", "why"]
    body = []
    for c in decision.get("candidates") or []:
        lat = "–" if c.get("p50_ms") is None else (f"{c['p50_ms']:.4g} [{c['interval'][0]:.4g}, {c['interval'][1]:.4g}]"
                                                  if c.get("interval") else f"{c['p50_ms']:.4g}")
        kb = None if c.get("size_bytes") is None else c["size_bytes"] / 1024
        body.append([c["name"] + (" ★" if c["status"] == "chosen" else ""), c["status"], lat,
                     fmt(c.get("retention"), ".4f"), fmt(kb, ".0f"), c["reason"]])
    return header, body


def auto_headline(decision: dict[str, Any]) -> str:
    """One line: what ``export --auto`` chose for its device under its budget, and why."""
    what = f"**{decision['chosen']}**" if decision.get("chosen") else "nothing"
    return (f"export --auto on {decision['device']} (retention ≥ {decision['min_retention']:g} of the PyTorch source's"
            f"{', ' + decision['metric'] if decision.get('metric') else ''}): {what} — {decision['reason']}.")


def auto_markdown(decision: dict[str, Any] | None) -> list[str]:
    """The report's ``export --auto`` section (nothing when the recipe does not use it)."""
    if not decision:
        return []
    out = ["", "## export --auto", "", auto_headline(decision) + " The chosen artifact is the recommended one (★), "
           "which the gate checks.", ""]
    if decision.get("candidates"):
        out += md_table(*auto_table(decision))
    return out


def gate_markdown(report: dict[str, Any]) -> list[str]:
    """The report's gate section: the recipe's budgets and what the recommended artifact missed."""
    g = report.get("gate")
    if not g:
        return []
    budgets = ", ".join(f"{k} {v}" for k, v in g["budgets"].items() if v is not None) or "none set"
    verdict = "passed" if not g["failures"] else "FAILED: " + "; ".join(g["failures"])
    return ["", "## Gate", "", f"Budgets ({budgets}): {verdict}."]


def write_report(report: dict[str, Any], json_path: Path, md_path: Path,
                 to_markdown: Callable[[dict[str, Any]], str]) -> None:
    write_json(json_path, report)
    write_text(md_path, to_markdown(report))
