"""One self-contained HTML page per run (``report.html``): the report's tables and plots in a single file.

The page opens offline: CSS is inline, every plot is a PNG drawn on matplotlib's Agg canvas (no pyplot, so no global
state) and embedded as a base64 data URI, and a Content-Security-Policy forbids it to fetch anything. All text is
escaped. Each section renders on its own: one that fails says why in the page instead of losing the whole report.
The plots and tables read the report's measurement rows (:mod:`edgedistill.benchmarks.row`) and the shared sections;
what differs by kind (title, what score and latency are, the summary table and facts) comes from the kind's report
module, passed in as a :class:`~edgedistill.benchmarks.report.common.KindReport`: this module knows no kind.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgedistill.benchmarks.report.common import KindReport, auto_headline, auto_table, fmt
from edgedistill.benchmarks.row import Row, rows_of
from edgedistill.core.fileio import write_text

VERDICT_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef8f00", "waived": "#757575",
                   "not-checked": "#8d6e63", "bad-input": "#ad1457"}
VERDICT_TINTS = {"pass": "#e8f5e9", "fail": "#ffebee", "inconclusive": "#fff3e0", "waived": "#f0f0f0",
                 "not-checked": "#efebe9", "bad-input": "#fce4ec"}
LABEL_NOTE = ("Each device figure says how it was obtained: <b>measured</b> (real hardware), <b>constrained</b> (this "
              "host capped to the profile's cores and RAM), <b>emulated</b> (qemu: correct outputs, time not a "
              "latency), <b>estimated</b> (roofline from the profile). Never compare across labels as if alike.")
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}img.plot{max-width:100%;display:block;margin:8px 0}
img.forest{display:block}div.scroll{overflow-x:auto}
.badge{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px;font-weight:600}
.note{color:#555;font-size:13px}.error{color:#c62828}dl.facts{display:grid;grid-template-columns:max-content auto;
gap:2px 14px}dl.facts dt{font-weight:600}dl.facts dd{margin:0}
""" + "".join(f".v-{v}{{background:{c}}}tr.g-{v} td{{background:{VERDICT_TINTS[v]}}}"
              f"tr.g-{v} td:first-child{{border-left:6px solid {c}}}" for v, c in VERDICT_COLOURS.items()) + """
.v-unknown{background:#455a64}tr.g-unknown td:first-child{border-left:6px solid #455a64}
.l-measured{background:#2e7d32}.l-constrained{background:#1565c0}
.l-emulated{background:#6a1b9a}.l-estimated{background:#757575}.l-unknown{background:#455a64}
"""


class Raw(str):
    """Markup built here, inserted into a table cell as it is (everything else is escaped)."""


def _esc(v: Any) -> str:
    return html.escape("–" if v is None else str(v))


def _num(v: Any) -> float | None:
    """``v`` as a finite float, else None (missing, NaN, text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _g(v: Any, spec: str = ".4g") -> str:
    n = _num(v)
    return "–" if n is None else format(n, spec)


def _mpl(text: Any) -> str:
    """Text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _table(header: list[str], rows: Iterable[list[Any]], row_classes: Iterable[str] | None = None,
           table_id: str = "") -> str:
    classes = iter(row_classes or ())
    body = []
    for row in rows:
        cls = next(classes, "")
        cells = "".join(f"<td>{c}</td>" if isinstance(c, Raw) else
                        f'<td class="num">{_esc(c)}</td>' if _num(c) is not None or c == "–" else f"<td>{_esc(c)}</td>"
                        for c in row)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    ident = f' id="{table_id}"' if table_id else ""
    rows_html = "".join(body)
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table></div>'


def _img(fig: Figure, alt: str, cls: str = "plot") -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, transparent=cls == "forest")  # forest plots sit on the row's tint
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _badge(kind: str, value: Any, known: Iterable[str]) -> Raw:
    css = str(value).replace(" ", "-")  # "not checked" -> class v-not-checked
    return Raw(f'<span class="badge {kind}-{css if css in known else "unknown"}">{_esc(value)}</span>')


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x = latency, higher y = score), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _host_rows(report: dict[str, Any]) -> list[Row]:
    """The rows measured on the host at the report's fewest thread count, one per model (or its untimed row)."""
    t = min((report.get("summary") or {}).get("threads") or [1])
    rows = [r for r in rows_of(report) if r.on_host]
    return [r for r in rows if r.threads == t or r.threads is None]


# --- sections: each returns HTML, or None to leave the section out ---------------------------------------------------

def _summary(report: dict[str, Any], view: KindReport) -> str:
    s = report.get("summary") or {}
    facts = [("recommended artifact (★)", s.get("recommended"), ""), ("why", s.get("recommended_reason"), ""),
             *view.summary_facts(report)]
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(fmt(v, spec) if spec and _num(v) is not None else v)}</dd>"
                 for k, v, spec in facts)
    header, body = view.table(report)
    return f'<dl class="facts">{dl}</dl>' + _table(header, body, table_id="summary-table")


def _gate(report: dict[str, Any]) -> str | None:
    g = report.get("gate")
    if not g:
        return None
    verdict = g.get("verdict") or ("fail" if g.get("failures") else "pass" if "failures" in g else None)
    out = f"<p>Gate verdict: {_badge('v', verdict, VERDICT_COLOURS)}</p>"
    checks = g.get("checks")
    if not checks:
        budgets = ", ".join(f"{k} {v}" for k, v in (g.get("budgets") or {}).items() if v is not None) or "none set"
        fails = "".join(f"<li>{_esc(f)}</li>" for f in g.get("failures") or [])
        return out + f"<p>Budgets: {_esc(budgets)}.</p>" + (f'<ul id="gate-failures">{fails}</ul>' if fails else
                                                            "<p>No budget missed.</p>")
    rows = [[_badge("v", c.get("verdict"), VERDICT_COLOURS), c.get("name"), c.get("artifact"), c.get("device"),
             c.get("metric"), c.get("kind"), _g(c.get("value")), _g(c.get("baseline")), _g(c.get("ratio")),
             _g(c.get("threshold")), c.get("samples"),
             "; ".join(x for x in (c.get("waived") and f"waived: {c['waived']}", c.get("warning")) if x) or "",
             Raw(_esc(_interval_text(c.get("interval"))) + _forest(c))] for c in checks]
    header = ["verdict", "check", "artifact", "device", "metric", "kind", "value", "baseline", "ratio", "threshold",
              "samples", "note", "interval vs threshold"]
    note = ('<p class="note">Bar: the interval (of the ratio to the baseline for relative checks, of the value for '
            "absolute ones); dot: the point estimate; dashed line: the threshold.</p>")
    css = [str(c.get("verdict")).replace(" ", "-") for c in checks]
    classes = [f"g-{v if v in VERDICT_COLOURS else 'unknown'}" for v in css]
    return out + _table(header, rows, classes, table_id="gate-table") + note


def _interval_text(iv: Any) -> str:
    return f"[{_g(iv[0])}, {_g(iv[1])}]" if isinstance(iv, list | tuple) and len(iv) == 2 else "–"


def _forest(c: dict[str, Any]) -> str:
    """A one-row forest plot of a check: its interval, point estimate and threshold; empty without an interval."""
    iv = c.get("interval")
    lo, hi = (_num(iv[0]), _num(iv[1])) if isinstance(iv, list | tuple) and len(iv) == 2 else (None, None)
    if lo is None or hi is None:
        return ""
    point = _num(c.get("ratio") if c.get("kind") == "relative" else c.get("value"))
    thr = _num(c.get("threshold"))
    xs = [x for x in (lo, hi, point, thr) if x is not None]
    pad = (max(xs) - min(xs)) * 0.15 or abs(max(xs)) * 0.05 or 1.0
    fig = Figure(figsize=(2.4, 0.55), layout="constrained")
    ax = fig.add_subplot()
    ax.hlines(0, lo, hi, color=VERDICT_COLOURS.get(c.get("verdict"), "#455a64"), lw=6)
    if point is not None:
        ax.plot([point], [0], "o", color="black", ms=5)
    if thr is not None:
        ax.axvline(thr, color="#333", ls="--", lw=1.2)
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_yticks([])
    ax.tick_params(labelsize=7, length=2, pad=1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    return _img(fig, f"{c.get('name')}: interval vs threshold", "forest")


def _score_latency(report: dict[str, Any], view: KindReport) -> str | None:
    measured = rows_of(report)
    host_label = next((r.label for r in measured if r.on_host and r.label), None)
    panels: dict[tuple[str, Any], list[tuple[Any, Any, float | None, float | None]]] = {}
    for r in sorted(measured, key=lambda r: not r.on_host):  # the host's panel first
        if r.role == "artifact" or r.on_host:
            key = ("host", host_label) if r.on_host else (r.device, r.label)
            panels.setdefault(key, []).append((r.artifact, r.threads, r.p50_ms, r.score))
    panels = {k: [p for p in v if _num(p[2]) is not None and _num(p[3]) is not None] for k, v in panels.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.2 * cols, 4.4 * rows), layout="constrained")
    xlabel, ylabel = f"p50 {view.LATENCY} (lower is better)", f"{view.SCORE} (higher is better)"
    for i, ((device, label), points) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for t in sorted({p[1] for p in points}, key=lambda t: _num(t) or 0):
            pts = [(float(p[2]), float(p[3]), p[0]) for p in points if p[1] == t]
            sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, label=f"{t} thread(s)", zorder=3)
            front = pareto_front((x, y) for x, y, _ in pts)
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color=sc.get_facecolor()[0], lw=1.2, zorder=2)
            for x, y, name in pts:
                ax.annotate(_mpl(name), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
        xs = [float(p[2]) for p in points]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        emulated = ": time is not a latency" if label == "emulated" else ""
        ax.set_title(_mpl(f"{device} ({label or 'label unknown'}{emulated})"), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="dashed: Pareto front", title_fontsize=8)
    return (_img(fig, "score vs latency with the Pareto front, per device") +
            '<p class="note">Upper left is better. The dashed line joins the Pareto front: the models that no other '
            "model beats on both latency and score at that thread count. One panel per device; panels with different "
            "labels are not comparable.</p>")


def _latency_distributions(report: dict[str, Any], view: KindReport) -> str | None:
    data = [(f"{r.artifact} @{r.threads}T", [x for x in map(_num, r.samples_ms or []) if x is not None])
            for r in rows_of(report) if r.on_host]
    data = [(k, v) for k, v in data if v]
    if not data:
        return None
    fig = Figure(figsize=(max(6.0, 0.8 * len(data) + 2), 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.boxplot([v for _, v in data], widths=0.6, flierprops={"markersize": 3, "alpha": 0.5})
    ax.set_xticks(range(1, len(data) + 1), [_mpl(k) for k, _ in data], rotation=30, ha="right", fontsize=8)
    lo, hi = min(min(v) for _, v in data), max(max(v) for _, v in data)
    if lo > 0 and hi / lo > 20:
        ax.set_yscale("log")
    ax.set_ylabel(f"{view.LATENCY} (lower is better)")
    ax.set_title("Host latency samples per artifact and thread count", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return (_img(fig, "latency distribution per artifact") +
            '<p class="note">Box: quartiles and median; whiskers: 1.5 × IQR; dots: the samples outside them.</p>')


def _size_retention(report: dict[str, Any]) -> str | None:
    pts = [(r.format or "?", r.artifact, _num(r.size_bytes), _num(r.retention)) for r in _host_rows(report)]
    pts = [(f, n, s / 1e6, ret) for f, n, s, ret in pts if s is not None and ret is not None]
    if not pts:
        return None
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for f, marker in zip(sorted({p[0] for p in pts}), "osD^vP*X" * 4, strict=False):
        ax.scatter([p[2] for p in pts if p[0] == f], [p[3] for p in pts if p[0] == f], s=40, marker=marker,
                   label=_mpl(f), zorder=3, alpha=0.85)
    for _, name, size, ret in pts:
        ax.annotate(_mpl(name), (size, ret), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, color="#888", ls=":", lw=1)
    sizes = [p[2] for p in pts]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("size, MB (smaller is better)")
    ax.set_ylabel("retention: score / the teacher's (higher is better)")
    ax.set_title("Size vs retention (dotted: the teacher's score)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="format", title_fontsize=8)
    return _img(fig, "size vs retention")


def _quant_fidelity(report: dict[str, Any]) -> str | None:
    """Each artifact's KLD and same-top-token against its PyTorch source, where the kind measures them."""
    rows = [r for r in _host_rows(report) if r.role == "artifact" and (r.kld is not None or r.same_top is not None)]
    if not rows:
        return None
    variants = [f"{r.format} {r.precision}" for r in rows]
    labels = [_mpl(v if r.artifact in v else f"{v} ({r.artifact})") for v, r in zip(variants, rows, strict=True)]
    fig = Figure(figsize=(11, 0.45 * len(rows) + 1.6), layout="constrained")
    for i, (key, xlabel, spec) in enumerate((("kld", "mean KLD vs its PyTorch source (lower is better)", ".2e"),
                                             ("same_top", "same top token as its PyTorch source "
                                                                "(higher is better)", ".3f"))):
        ax = fig.add_subplot(1, 2, i + 1)
        vals = [_num(getattr(r, key)) for r in rows]
        ax.barh(range(len(rows)), [v or 0 for v in vals], color="#1565c0" if i == 0 else "#2e7d32")
        for y, v in enumerate(vals):
            ax.annotate("n/a" if v is None else format(v, spec), (v or 0, y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), labels if i == 0 else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.margins(x=0.25)
        if key == "same_top":
            ax.set_xlim(0, 1.15)
        ax.grid(axis="x", alpha=0.3)
    return _img(fig, "quantisation type vs KLD and same-top-token")


def _devices(report: dict[str, Any], view: KindReport) -> str | None:
    devices = report.get("devices") or []
    if not devices:
        return None
    header = ["device", "label", "model", "threads", f"p50 {view.LATENCY}", "peak RSS MB", "accuracy", "task score",
              "note"]
    labels = ("measured", "constrained", "emulated", "estimated")
    rows = []
    for d in devices:
        emulated = " (emulated: not a latency)" if d.get("label") == "emulated" and d.get("p50_ms") is not None else ""
        failed = "FAILED: " if d.get("model") is None or d.get("threads") is None else ""
        note = failed + str(d["error"]) if d.get("error") else ""
        rows.append([d.get("device"), _badge("l", d.get("label"), labels), d.get("model"), d.get("threads"),
                     _g(d.get("p50_ms"), ".3f") + emulated, _g(d.get("peak_rss_mb"), ".0f"),
                     _g(d.get("accuracy"), ".4f"), _g(d.get("task_score"), ".3f"), note])
    return f'<p class="note">{LABEL_NOTE}</p>' + _table(header, rows, table_id="devices-table")


def _per_device(report: dict[str, Any]) -> str | None:
    """What to ship to each device (its own figures decide), and artifacts right on one device but not another."""
    truth = report.get("per_device") or {}
    recs = truth.get("recommended") or {}
    if not recs:
        return None
    body = _table(["device", "recommended", "why"], ([d, r.get("artifact") or "–", r.get("reason")]
                                                       for d, r in recs.items()), table_id="per-device-table")
    flags = truth.get("flags") or []
    if flags:
        body += "<ul>" + "".join(f"<li>{_esc(f)}</li>" for f in flags) + "</ul>"
    return body


def _auto(report: dict[str, Any]) -> str | None:
    """``export --auto``: the chosen artifact for its device, and why each other one was not chosen."""
    decision = report.get("auto")
    if not decision:
        return None
    header, rows = auto_table(decision)
    return (f"<p>{_esc(auto_headline(decision).replace('**', ''))}</p>"
            + (_table(header, rows, table_id="auto-table") if rows else ""))


def _tuning(report: dict[str, Any]) -> str | None:
    """distill.tune's trials: a table and validation accuracy per trial."""
    t = (report.get("summary") or {}).get("tuning") or {}
    trials = t.get("trials") or []
    if not trials:
        return None
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    for state, marker in (("complete", "o"), ("pruned", "x")):
        pts = [(tr["number"], tr["value"]) for tr in trials if tr["state"] == state and tr.get("value") is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=state)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (higher is better)")
    ax.legend()
    rows = [[tr["number"], tr["state"], _g(tr.get("value"), ".4f"),
             ", ".join(f"{k} {_g(v)}" for k, v in (tr.get("params") or {}).items()), tr.get("epochs")]
            for tr in trials]
    return (f"<p>chosen: {_esc(t.get('chosen'))}, in {_g(t.get('tune_seconds'), '.0f')} s</p>"
            + _img(fig, "validation accuracy per tuning trial")
            + _table(["trial", "state", "validation accuracy", "settings", "epochs"], rows, table_id="tuning-table"))


def _strategies(report: dict[str, Any]) -> str | None:
    """Self-distillation's heads (each exit's accuracy, which one ships) and the teacher-assistant chain's links."""
    distill = report.get("distill") or {}
    body = ""
    for role, key in (("self-distill", "self_distill"), ("chain", "assistant_chain")):
        sd = distill.get(key) or {}
        if sd.get("exits"):
            shipped = sd.get("deployed_exit") or "final"
            body += f"<p>{_esc(role)} student: heads, the deployed one marked</p>" + _table(
                ["head", "params", "val accuracy", "test accuracy"],
                ([name + (" (deployed)" if name == shipped else ""), _g(e.get("params"), ",.0f"),
                  _g(e.get("val_accuracy"), ".4f"), _g(e.get("test_accuracy"), ".4f")]
                 for name, e in sd["exits"].items()), table_id=f"exits-{role}")
    links = (distill.get("assistant_chain") or {}).get("links") or []
    if links:
        body += "<p>teacher-assistant chain: retention = the link's student / its teacher (test accuracy)</p>" + _table(
            ["link", "models", "teacher test", "student test", "retention", "of the teacher's"],
            ([f"{lk['teacher']} → {lk['student']}", f"{lk['teacher_model']} → {lk['student_model']}",
              _g(lk.get("teacher_test_accuracy"), ".4f"), _g(lk.get("student_test_accuracy"), ".4f"),
              _g(lk.get("retention"), ".3f"), _g(lk.get("retention_vs_teacher"), ".3f")] for lk in links),
            table_id="chain-table")
    return body or None


def _failures(report: dict[str, Any]) -> str | None:
    errs = list(dict.fromkeys((r.artifact, r.error) for r in rows_of(report) if r.on_host and r.error))
    return "<ul>" + "".join(f"<li><b>{_esc(n)}</b>: {_esc(e)}</li>" for n, e in errs) + "</ul>" if errs else None


def _definitions(report: dict[str, Any]) -> str | None:
    defs = report.get("definitions") or {}
    return ('<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in defs.items()) + "</dl>"
            if defs else None)


def _plain(fn: Callable[[dict[str, Any]], str | None]) -> Section:
    return lambda report, _view: fn(report)


Section = Callable[[dict[str, Any], KindReport], str | None]
SECTIONS: list[tuple[str, str, Section]] = [
    ("summary", "Summary", _summary), ("gate", "Gate", _plain(_gate)),
    ("score-latency", "Score vs latency", _score_latency),
    ("latency", "Latency distributions", _latency_distributions),
    ("size-retention", "Size vs retention", _plain(_size_retention)),
    ("quantisation", "Quantisation vs fidelity", _plain(_quant_fidelity)),
    ("devices", "Devices", _devices), ("per-device", "What to ship, per device", _plain(_per_device)),
    ("auto", "export --auto", _plain(_auto)),
    ("tuning", "KD tuning", _plain(_tuning)),
    ("strategies", "Early exits and the teacher-assistant chain", _plain(_strategies)),
    ("bench-failures", "Benchmark failures", _plain(_failures)),
    ("definitions", "Definitions", _plain(_definitions)),
]


def render(report: dict[str, Any], view: KindReport) -> str:
    """The report as one self-contained HTML page; ``view``: the report module of the kind that made it."""
    parts = []
    for ident, title, fn in SECTIONS:
        try:
            body = fn(report, view)
        except Exception as e:  # one broken section must not cost the rest of the page
            body = f'<p class="error">could not render this section: {_esc(type(e).__name__)}: {_esc(e)}</p>'
        if body:
            parts.append(f'<section id="{ident}"><h2>{_esc(title)}</h2>{body}</section>')
    title = f"{view.TITLE} — {report.get('recipe')}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f"<p class=\"note\">run {_esc(report.get('run_dir'))} · schema {_esc(report.get('schema'))}</p>"
            + "".join(parts) + "</body></html>\n")


def write_html(report: dict[str, Any], path: Path, view: KindReport) -> None:
    """Write :func:`render`'s page to ``path`` atomically."""
    write_text(path, render(report, view))
