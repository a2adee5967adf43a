"""report.html: one self-contained page per run, opened in a real headless Chromium (DOM and screenshot).

The reports are built by each kind's ``build`` from small synthetic stage outputs (no pipeline runs). Chromium is
Debian's package, installed by ``make test-setup``; without it these tests fail and say so.
"""

from __future__ import annotations

import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedistill.benchmarks.report.html import pareto_front, render, write_html

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # Debian's launcher means to add this when /dev/shm is small, but its test breaks where findmnt prints
         # two lines (as on this VM); a small /dev/shm (containers: 64 MB) then crashes the renderer.
         "--disable-dev-shm-usage"]


def _doc(rng: np.random.Generator, p50: float, n: int = 80, **extra: Any) -> dict[str, Any]:
    """One bench run as the agent writes it: percentiles and the raw samples they came from."""
    s = rng.lognormal(np.log(p50), 0.1, n)
    lat = {"p50": float(np.median(s)), "p90": float(np.percentile(s, 90)), "p99": float(np.percentile(s, 99)),
           "mean": float(s.mean()), "min": float(s.min())}
    return {"latency_ms": lat, "samples_ms": [round(float(x), 5) for x in s], **extra}


def _check(name: str, verdict: str, kind: str, value: float | None, interval: list[float] | None,
           threshold: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "artifact": "kd-int8", "device": "host", "metric": name.split()[0], "kind": kind,
            "value": value, "baseline": None, "ratio": None, "interval": interval, "threshold": threshold,
            "verdict": verdict, "waived": None, "samples": 80, "warning": None, **extra}


GATE = {"verdict": "fail", "budgets": {"max_p50_ms": 2.0}, "failures": ["kd-int8: p50 2.4 ms > 2.0"], "checks": [
    _check("speedup vs teacher", "pass", "relative", 4.1, [3.8, 4.4], 3.0, baseline=9.6, ratio=4.1),
    _check("p50 ms", "fail", "absolute", 2.4, [2.3, 2.55], 2.0),
    _check("p50 ms vs main", "inconclusive", "relative", 2.4, [0.97, 1.12], 1.05, baseline=2.3, ratio=1.04,
           warning="only 80 samples"),
    _check("retention", "waived", "absolute", 0.93, None, 0.95, waived="issue #40: accepted for this release"),
]}


def vision_report() -> dict[str, Any]:
    from edgedistill.toolchain.vision.report import ReportInputs, build

    rng = np.random.default_rng(0)
    parity = {"reference": "kd-student", "max_abs_diff": 2e-3, "mean_abs_diff": 1e-4, "top1_agreement": 0.995,
              "n": 1000, "criterion": "top1", "ok": True}
    arts = [{"name": n, "format": f, "precision": v[:4], "variant": v, "source": "kd", "file": f"export/{n}.{f}",
             "parity": parity} for n, f, v in (("kd-fp32", "onnx", "fp32"), ("kd-int8", "onnx", "int8_dynamic"),
                                                ("kd-int8-tfl", "tflite", "int8_static"))]
    spec = {"teacher": (9.6, 0.912, 44e6), "baseline-student": (1.9, 0.801, 1.1e6), "kd-student": (1.9, 0.861, 1.1e6),
            "kd-fp32": (0.9, 0.861, 1.1e6), "kd-int8": (0.45, 0.853, 0.3e6), "kd-int8-tfl": (0.5, 0.849, 0.3e6)}
    results = {n: {"error": None, "runs": {t: _doc(rng, p50 / k, accuracy=acc, size_bytes=int(size), peak_rss_mb=180.0)
                                           for t, k in (("1", 1.0), ("2", 1.7))}}
               for n, (p50, acc, size) in spec.items()}

    def device(label: str, scale: float) -> dict[str, Any]:
        return {"label": label, "profile": "rpi4", "error": None, "results": {
            n: {"error": None, "parity_vs_host": None, "parity_vs_source": None,
                "runs": {"4": _doc(rng, spec[n][0] * scale, accuracy=spec[n][1], size_bytes=1, peak_rss_mb=90.0)}}
            for n in ("kd-fp32", "kd-int8", "kd-int8-tfl")}}

    bench = {"threads": [1, 2], "results": results, "devices": {
        "host": {"label": "measured", "profile": None, "error": None, "results": results},
        "ssh:pi4": device("measured", 6.0), "qemu-arm64": device("emulated", 40.0),
        "rpi5": device("estimated", 3.0), "ssh:jetson": {"label": "measured", "error": "ssh: connection refused"}}}
    rep = build(ReportInputs(recipe="demo <script>alert(1)</script>", run_dir="runs/demo",
                             teacher={"test_accuracy": 0.912},
                             students={"baseline": {"test_accuracy": 0.801}, "kd": {"test_accuracy": 0.861}},
                             artifacts=arts, bench=bench, accuracy_tolerance=0.02))
    return rep | {"gate": GATE}


def llm_report() -> dict[str, Any]:
    from edgedistill.toolchain.llm.report import ReportInputs, build

    rng = np.random.default_rng(1)
    quants = {"kd-q8_0": ("gguf", "q8_0", 0.002, 0.985, 170e6, 210.0, 0.59),
              "kd-q4_k_m": ("gguf", "q4_k_m", 0.031, 0.93, 100e6, 320.0, 0.58),
              "kd-q4_0": ("gguf", "q4_0", 0.21, 0.74, 60e6, 400.0, 0.41),
              "kd-onnx-fp32": ("onnx", "fp32", 1e-6, 1.0, 620e6, 95.0, 0.60)}
    artifacts = [{"name": n, "format": f, "variant": v, "source": "kd", "size_bytes": int(size),
                  "fidelity": {"perplexity": 6.0 + kld, "kld_mean": kld, "kld_p99": 5 * kld, "same_top_token": same,
                               "max_abs_diff": kld}} for n, (f, v, kld, same, size, _, _) in quants.items()]
    artifacts.append({**artifacts[0], "name": "kd-f16", "variant": "f16"})  # its bench failed: no runs

    def run(tg: float, score: float, size: float) -> dict[str, Any]:
        return _doc(rng, 1000 / tg, n=64, task={"task_score": score, "exact_match": score - 0.1, "rouge_l": score},
                    tg_tps=tg, pp_tps=tg * 9, ttft_ms=40.0, peak_rss_mb=size / 1e6 + 150, size_bytes=int(size),
                    accuracy=0.5)

    host = {"teacher": run(40.0, 0.64, 990e6), "kd-student": run(120.0, 0.60, 620e6),
            "sft-student": run(120.0, 0.55, 620e6),
            **{n: run(tg, score, size) for n, (_, _, _, _, size, tg, score) in quants.items()}}
    results = {n: {"error": None, "runs": {"2": d}} for n, d in host.items()}
    results["kd-f16"] = {"error": "llama.cpp: failed to load model", "runs": {}}
    pi5 = {n: {"error": None, "runs": {"2": run(tg / 5, score, size)}}
           for n, (_, _, _, _, size, tg, score) in quants.items()}
    export = {"best_student": "kd", "artifacts": artifacts, "pytorch": {
        "teacher": {"perplexity": 5.1}, "kd": {"perplexity": 6.0, "kld_vs_teacher": 0.12, "same_top_vs_teacher": 0.81},
        "sft": {"perplexity": 6.4, "kld_vs_teacher": 0.2, "same_top_vs_teacher": 0.75}}}
    bench = {"devices": {"host": {"label": "measured", "results": results},
                         "pi5": {"label": "constrained", "profile": "rpi5", "results": pi5}}}
    rep = build(ReportInputs(recipe="llm-demo", run_dir="runs/llm", teacher={"params": 360e6},
                             students={"kd": {"role": "kd"}, "sft": {"role": "sft"}}, export=export, bench=bench,
                             manifest={"stages": {}}, threads=2, accuracy_tolerance=0.02))
    return rep | {"gate": {**GATE, "checks": GATE["checks"][:3]}}


class _Dom(HTMLParser):
    """What the tests look at in Chromium's DOM: images, links, tables (rows and their classes), text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.refs: list[str] = []
        self.tags: list[str] = []
        self.tables: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append(a.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the HTML report is checked in a real headless Chromium. Install it with "
                    "`make test-setup` or `apt-get install chromium` (Debian package).")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp)
    proc = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path]]:
    out = tmp_path_factory.mktemp("html")
    from edgedistill.toolchain.llm import report as llm
    from edgedistill.toolchain.vision import report as vision

    reports = {"vision": vision_report(), "llm": llm_report()}
    for kind, rep in reports.items():
        write_html(rep, out / f"{kind}.html", {"vision": vision, "llm": llm}[kind])
    return {kind: (rep, out / f"{kind}.html") for kind, rep in reports.items()}


@pytest.mark.parametrize("kind", ["vision", "llm"])
def test_chromium_renders_the_tables_and_plots(kind: str, pages: dict, tmp_path: Path) -> None:
    rep, page = pages[kind]
    text = page.read_text(encoding="utf-8")
    assert "could not render" not in text
    assert "http://" not in text and "https://" not in text  # offline: nothing to fetch
    dom = _Dom(_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert all(r.startswith("data:image/png;base64,") for r in dom.refs), dom.refs
    assert "script" not in dom.tags  # the recipe name's <script> is escaped: shown, never run
    checks = rep["gate"]["checks"]
    # one plot each: score vs latency, latency distributions, size vs retention (+ quantisation vs fidelity for
    # LLMs), and one forest plot per gate check that has an interval
    plots = [i for i in dom.imgs if i.get("class") == "plot"]
    forests = [i for i in dom.imgs if i.get("class") == "forest"]
    assert len(plots) == (4 if kind == "llm" else 3), [i.get("alt") for i in plots]
    assert len(forests) == sum(c["interval"] is not None for c in checks)
    assert len(dom.imgs) == len(plots) + len(forests)
    assert len(dom.tables["summary-table"]) == 1 + len(rep["models"])  # header row + one per model
    assert dom.tables["gate-table"][1:] == [f"g-{c['verdict']}" for c in checks]
    assert len(dom.tables["devices-table"]) == 1 + len(rep["devices"])
    body = " ".join(dom.text)
    for word in ("kd-int8" if kind == "vision" else "kd-q4_k_m", "Pareto front", "Upper left is better", "emulated"
                 if kind == "vision" else "constrained", "inconclusive", "FAILED: "):
        assert word in body, word
    if kind == "vision":
        assert "demo <script>alert(1)</script>" in body
    else:
        assert "llama.cpp: failed to load model" in body  # the artifact whose bench failed


@pytest.mark.parametrize("kind", ["vision", "llm"])
def test_chromium_screenshot_is_not_blank(kind: str, pages: dict, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", pages[kind][1].as_uri())
    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert img.shape == (2000, 1280, 3)
    gray = img.mean(axis=2)
    # these pages measure std ~31, ~4% dark and ~0.3% coloured pixels; a page of two lines of text: 5.7, 0.07%, 0
    assert gray.std() > 15, f"screenshot nearly uniform (std {gray.std():.1f})"
    assert (gray < 200).mean() > 0.01, "screenshot is (almost) all white"
    assert (np.ptp(img, axis=2) > 80).mean() > 0.001, "no coloured pixels: plots or verdict badges missing"


def test_minimal_and_partial_reports_render() -> None:
    from edgedistill.toolchain.llm import report as llm
    from edgedistill.toolchain.vision import report as vision

    bare = [vision.build(vision.ReportInputs("r", "d", {"test_accuracy": 0.9}, {}, [], None, 0.02)),
            llm.build(llm.ReportInputs("r", "d", {}, {}, None, None, {}, 1, 0.02))]
    old_gate = {"budgets": {"min_retention": 0.9, "max_p50_ms": None}, "failures": ["no recommended artifact"]}
    none_check = dict.fromkeys(GATE["checks"][0], None)
    broken_device = {"device": "ssh:pi", "label": None, "model": "m", "threads": 1, "p50_ms": None, "accuracy": None}
    for rep, view in [(bare[0], vision), (bare[1], llm), (bare[0] | {"gate": old_gate}, vision),
                      (bare[1] | {"gate": {"checks": [none_check]}}, llm),
                      (bare[0] | {"devices": [broken_device]}, vision)]:
        text = render(rep, view)
        assert "could not render" not in text, text
        assert "<img" not in text  # no data: no plots, and no empty ones
    assert "no recommended artifact" in render(bare[0] | {"gate": old_gate}, vision)
    # not a report at all: the summary table cannot be built, and the page says so instead of raising
    assert "could not render this section: KeyError" in render({}, vision)
    # a bad measurement row is one line naming the field, in the sections that read rows
    bad = {"artifact": "a", "kind": "vision", "role": "artifact", "device": "host", "p50_ms": "fast"}
    assert "rows.0.p50_ms: &#x27;fast&#x27; is not float or null" in render(bare[0] | {"rows": [bad]}, vision)


def test_pareto_front() -> None:
    pts = [(1.0, 0.80), (2.0, 0.90), (2.0, 0.85), (3.0, 0.88), (0.5, 0.70), (4.0, 0.95)]
    assert pareto_front(pts) == [(0.5, 0.70), (1.0, 0.80), (2.0, 0.90), (4.0, 0.95)]
    assert pareto_front([]) == []
