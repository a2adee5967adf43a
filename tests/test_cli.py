"""The CLI end to end on a tiny recipe: every stage, a valid report, stage skipping, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgedistill.core.tolerances import FP32_MAX_ABS_DIFF
from edgedistill.toolchain.vision.report import SCHEMA
from tests.conftest import tiny_recipe


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgedistill.toolchain.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process, for a test that calls it many times on measurements already taken (no interpreter
    and torch start-up: ~10 s a call); the same result shape as :func:`cli`."""
    from typer.testing import CliRunner

    from edgedistill.toolchain.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    recipe = d / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        distill={"train": {"epochs": 1, "max_steps": 2}, "feature": {"weight": 0.5, "student_layer": "blocks.1",
                                                                     "teacher_layer": "blocks.1"}},
        export={"formats": ["onnx", "tflite"], "tflite": {"variants": ["fp32"]},
                "onnx": {"variants": ["fp32", "int8_static_u8s8"], "calibration_samples": 16}})))
    res = cli("run", str(recipe), "--out", str(d / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    return d / "run"


@pytest.mark.slow
def test_run_writes_a_valid_report(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    assert report["schema"] == SCHEMA
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "baseline-student", "kd-student", "student-fp32", "student-int8_static_u8s8",
                     "student-tflite-fp32", "teacher-fp32", "teacher-tflite-fp32"]
    for m in report["models"]:
        assert m["bench_error"] is None
        lat = m["latency_ms"]["1"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert 0 <= m["accuracy"] <= 1 and m["size_bytes"] > 0 and m["peak_rss_mb"]["1"] > 0
        assert m["retention"] == pytest.approx(m["accuracy"] / report["summary"]["teacher_accuracy"])
    for fp32 in (report["models"][3], report["models"][5]):  # ONNX and TFLite fp32
        assert fp32["parity"]["ok"] and fp32["parity"]["max_abs_diff"] <= FP32_MAX_ABS_DIFF
    assert report["models"][0]["speedup"]["1"] == pytest.approx(1.0)
    # the honest split: distillation's share is the teacher's fp32 file vs the student's in the same runtime; the
    # runtime's and quantisation's is the PyTorch student vs the artifact
    rows = {m["name"]: m for m in report["models"]}
    p50 = {n: m["latency_ms"]["1"]["p50"] for n, m in rows.items()}
    for art, teacher_file, student_fp32 in (("student-int8_static_u8s8", "teacher-fp32", "student-fp32"),
                                            ("student-tflite-fp32", "teacher-tflite-fp32", "student-tflite-fp32")):
        assert rows[art]["distill_speedup"]["1"] == pytest.approx(p50[teacher_file] / p50[student_fp32])
        assert rows[art]["runtime_speedup"]["1"] == pytest.approx(p50[f"{rows[art]['source']}-student"] / p50[art])
    for t in ("teacher-fp32", "teacher-tflite-fp32"):  # benched beside the student, never a candidate to ship
        assert rows[t]["role"] == "teacher-artifact" and rows[t]["parity"]["ok"]
        assert t not in report["per_device"]["keeps"] and report["summary"]["recommended"] != t
    assert "of which distillation" in (run_dir / "report.md").read_text()
    s = report["summary"]
    assert s["kd_gain"] == pytest.approx(s["kd_accuracy"] - s["baseline_accuracy"])
    assert "| teacher |" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_the_runs_html_report_renders_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    """The report.html a real run writes (the same code as `make demo`'s) opens offline in headless Chromium with
    its tables and plots."""
    from tests.test_report_html import _chromium, _Dom

    page = run_dir / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "could not render" not in text and "http://" not in text and "https://" not in text
    dom = _Dom(_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert len([i for i in dom.imgs if i.get("class") == "plot"]) >= 3
    report = json.loads((run_dir / "report.json").read_text())
    assert len(dom.tables["summary-table"]) == 1 + len(report["models"])
    assert oct(page.stat().st_mode & 0o777) != "0o600"  # readable by a CI artifact uploader or a web server


@pytest.mark.slow
def test_manifest_records_every_output(run_dir: Path) -> None:
    from edgedistill.core.fileio import sha256_file

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"data", "teacher", "distill", "export", "bench"}
    for stage in manifest["stages"].values():
        assert stage["versions"]["torch"] and stage["config_hash"]
        for out in stage["outputs"]:
            assert sha256_file(run_dir / out["path"]) == out["sha256"]
    assert (run_dir / "data" / "test.npz").is_file() and manifest["stages"]["data"]["info"]["split_hash"]


@pytest.mark.slow
def test_rerun_skips_finished_stages(run_dir: Path) -> None:
    before = (run_dir / "manifest.json").read_text()
    res = cli("run", str(run_dir / "recipe.yaml"), "--out", str(run_dir))
    assert res.returncode == 0, res.stderr[-2000:]
    for stage in ("data", "teacher", "distill", "export", "bench"):
        assert f"{stage}: unchanged, skipped" in res.stderr
    assert (run_dir / "manifest.json").read_text() == before
    for command, stage in (("distill", "distill"), ("export", "export"), ("bench", "bench")):
        res = cli(command, "--out", str(run_dir))
        assert res.returncode == 0 and f"{stage}: unchanged, skipped" in res.stderr, res.stderr[-2000:]
    res = cli("report", "--out", str(run_dir))
    assert res.returncode == 0 and "recommended:" in res.stdout and "(vision)" in res.stdout


@pytest.mark.slow
def test_gate_exit_codes(run_dir: Path) -> None:
    assert cli("gate", "--out", str(run_dir), "--min-retention", "0.0001").returncode == 0
    res = cli("gate", "--out", str(run_dir), "--max-p50-ms", "0.000001")
    assert res.returncode == 1 and "gate failed" in res.stderr


@pytest.mark.slow
def test_gate_against_a_baseline_run(run_dir: Path, tmp_path: Path) -> None:
    """Budgets from the recipe, a baseline run (here a copy: nothing changed, so it passes, measured interleaved),
    the CI outputs, then the refusals: a baseline from another environment (exit 2), a stale report (exit 1)."""
    import shutil

    cand, base = tmp_path / "cand", tmp_path / "base"
    shutil.copytree(run_dir, cand)
    shutil.copytree(run_dir, base)
    recipe = yaml.safe_load((cand / "recipe.yaml").read_text())
    recipe["gate"] = {"budgets": [{"artifacts": "student-*", "p50_ms": {"max_regression": "50%"},
                                   "accuracy": {"max_drop": 0.05}, "size_kb": {"max": 100000}}]}  # default rounds
    (cand / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    outs = [tmp_path / n for n in ("gate.xml", "gate.md", "gate.json")]
    res = cli("gate", "--out", str(cand), "--baseline", str(base), "--junit", str(outs[0]), "--markdown",
              str(outs[1]), "--json", str(outs[2]))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    verdict = json.loads(outs[2].read_text())
    methods = {c["metric"]: c["method"] for c in verdict["checks"]}
    # 10 rounds, or 20 when an interference burst made the first set inconclusive and the gate re-measured
    assert verdict["verdict"] == "pass" and methods["p50_ms"].startswith(("interleaved rounds (10)",
                                                                           "interleaved rounds (20)"))
    assert methods["accuracy"].startswith("paired bootstrap")
    assert "<testsuite" in outs[0].read_text() and "✅" in outs[1].read_text()
    rep = json.loads((base / "report.json").read_text())
    rep["environment"]["cpu_model"] = "some other CPU"
    (base / "report.json").write_text(json.dumps(rep))
    res = cli("gate", "--out", str(cand), "--baseline", str(base))
    assert res.returncode == 2 and "measured in another environment" in res.stderr and "cpu_model" in res.stderr
    rep = json.loads((cand / "report.json").read_text())
    rep["generated_at"] = "2000-01-01T00:00:00+00:00"  # made before its own bench stage ran
    (cand / "report.json").write_text(json.dumps(rep))
    res = cli("gate", "--out", str(cand))
    assert res.returncode == 1 and "stale report: the export stage ran after the report was made" in res.stdout


def test_bad_recipe_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_recipe(distill={"response": {"temperature": -1}})))
    res = cli("run", str(bad), "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, res.stderr
    assert "bad.yaml: distill.response.temperature: Input should be greater than 0, got -1" in lines[0]
    assert "Traceback" not in res.stderr


def test_missing_run_dir_and_checkpoint(tmp_path: Path) -> None:
    res = cli("export", "--out", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "not a run directory" in res.stderr
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    recipe = tmp_path / "r.yaml"
    r = tiny_recipe()
    r["teacher"]["checkpoint"] = "t.safetensors"
    recipe.write_text(yaml.safe_dump(r))
    res = cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "t.safetensors: unreadable or truncated checkpoint" in res.stderr


def test_help_and_recipes() -> None:
    res = cli("--help")
    assert res.returncode == 0 and "distill" in res.stdout and "bench" in res.stdout
    res = cli("recipes")
    assert res.returncode == 0 and "vit-to-mobilenet" in res.stdout


@pytest.mark.slow
def test_export_auto_on_the_run(run_dir: Path) -> None:  # ~20 s: the CLI in-process, on bench's measurements
    """`export --auto` on the module's run (last: it turns auto on in the run's recipe.yaml): nothing re-exported,
    the host measurements are the bench stage's own (reused, not taken again), the chosen artifact becomes the
    report's recommended one; a device where nothing runs is a result (exit 0, every reason written) that only the
    gate fails on."""
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "bench").glob("student-*-t1.json")}
    res = cli_here("export", "--out", str(run_dir), "--auto", "--min-retention", "0.99")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "bench").glob("student-*-t1.json")} == before
    assert "export: unchanged, skipped" in res.stderr and "export --auto on host" in res.stdout
    decision = json.loads((run_dir / "export" / "auto.json").read_text())
    arts = {a["name"] for a in json.loads((run_dir / "export" / "artifacts.json").read_text())}
    assert {c["name"] for c in decision["candidates"]} == arts and decision["chosen"] in arts
    for c in decision["candidates"]:
        assert c["reason"] and (c["status"] == "rejected") == (c["retention"] is None or c["retention"] < 0.99)
        bench = json.loads((run_dir / "bench" / f"{c['name']}-t1.json").read_text())["result"]
        assert c["p50_ms"] == pytest.approx(bench["latency_ms"]["p50"], rel=1e-3)  # the bench stage's, reused
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["export"]["auto"]["enabled"] is True
    res = cli_here("report", "--out", str(run_dir))
    report = json.loads((run_dir / "report.json").read_text())
    assert res.returncode == 0 and report["summary"]["recommended"] == decision["chosen"]
    assert "## export --auto" in (run_dir / "report.md").read_text()
    assert cli_here("gate", "--out", str(run_dir)).returncode == 0

    nowhere = "ssh://nobody@127.0.0.1:1?profile=rpi4"  # nothing listens on port 1: no artifact runs there
    res = cli_here("export", "--out", str(run_dir), "--device", nowhere)
    assert res.returncode == 0, res.stderr[-3000:]
    decision = json.loads((run_dir / "export" / "auto.json").read_text())
    assert decision["chosen"] is None and decision["reason"].startswith("no artifact meets the budget on ssh:")
    assert "did not run on" in res.stdout  # the table, with each reason
    assert all(c["reason"].startswith(f"did not run on {nowhere}: ") for c in decision["candidates"])
    assert cli_here("report", "--out", str(run_dir)).returncode == 0
    res = cli_here("gate", "--out", str(run_dir), "--json", str(run_dir / "gate.json"))
    failures = json.loads((run_dir / "gate.json").read_text())["failures"]
    assert res.returncode == 1 and failures[0].startswith(f"export --auto on {nowhere} chose no artifact: "), failures
