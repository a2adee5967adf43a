"""A third pipeline kind costs one folder and one registry entry: the toy ``identity`` kind (``tests/toy_kind/``)
runs through ``edgedistill run``, ``report`` and ``gate`` (the real CLI, in process), and its ★, report.html and
gate verdict come from its measurement rows alone: no framework module knows the kind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from edgedistill.benchmarks.row import Row
from edgedistill.core.fileio import sha256_path


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedistill.toolchain import pipeline

    monkeypatch.setattr(pipeline, "_KINDS", dict(pipeline._KINDS))  # the registration ends with the test
    pipeline.register_kind("identity", "tests.toy_kind")


def _cli(*args: str) -> subprocess.CompletedProcess:
    from typer.testing import CliRunner

    from edgedistill.toolchain.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


def test_a_toy_kind_runs_reports_and_gates_through_the_cli(identity: None, tmp_path: Path) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "identity", "name": "toy", "gate": {
        "min_retention": 0.9, "budgets": [{"artifacts": "identity-*", "p50_ms": {"max": 1000.0},
                                           "accuracy": {"min": 0.5}}]}}))
    out = tmp_path / "run"
    res = _cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    row = Row.from_dict(rep["rows"][0])
    assert (row.kind, row.score, row.retention, len(row.samples_ms or [])) == ("identity", 1.0, 1.0, 40)
    assert row.sha256 == sha256_path(out / "export" / "identity-fp32.npy")  # the framework stamped the file's hash
    assert rep["summary"]["recommended"] == "identity-fp32" and rep["gate"]["verdict"] == "pass"
    page = (out / "report.html").read_text()
    assert "edgedistill identity report — toy" in page and "could not render" not in page
    assert page.count('class="plot"') == 3  # score vs latency, latency samples, size vs retention: from the row

    res = _cli("report", "--out", str(out))
    assert res.returncode == 0 and "identity-fp32 ★" in res.stdout, res.stdout + res.stderr
    res = _cli("gate", "--out", str(out))
    assert res.returncode == 0 and "gate passed" in res.stdout, res.stdout + res.stderr
    # the gate reads the toy's rows: a latency limit it cannot meet fails it, naming the artifact
    res = _cli("gate", "--out", str(out), "--max-p50-ms", "1e-9")
    assert res.returncode == 1 and "identity-fp32: p50" in res.stderr, res.stdout + res.stderr


def test_an_unregistered_kind_is_one_line_listing_the_kinds(tmp_path: Path) -> None:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "identity", "name": "toy"}))
    res = _cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "unknown pipeline kind 'identity'; choose one of: vision, llm" in res.stderr
