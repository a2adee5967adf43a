"""`edgedistill devices` and `edgedistill bench --devices`: one report, every figure labelled, failures isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgedistill.toolchain.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=900)


def test_devices_lists_builtin_and_user_profiles(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\ncores: 2\nclock_ghz: 1.2\nram_mb: 1024\nisa: armv8-a\n"
                                        "peak_gflops_fp32: 19.2\npeak_gops_int8: 38.4\nmem_bandwidth_gbs: 6.4\n")
    res = cli("devices", "--profile", str(tmp_path / "mine.yaml"))
    assert res.returncode == 0, res.stderr
    for name in ("host", "rpi4", "rpi5", "snapdragon8gen3", "mine"):
        assert name in res.stdout
    bad = cli("devices", "setup", "toaster")
    assert bad.returncode == 2 and "only qemu-arm64" in bad.stderr


@pytest.mark.slow
def test_bench_devices_matrix_report(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    r = tiny_recipe(bench={"warmup": 1, "runs": 3, "threads": [1], "include_pytorch": False})
    r["export"] = {**r["export"], "formats": ["onnx"]}  # ONNX is enough for every device kind here
    recipe.write_text(yaml.safe_dump(r))
    run = tmp_path / "run"
    res = cli("run", str(recipe), "--out", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("bench", "--out", str(run), "--devices", "host,rpi4-constrained,rpi4-estimated,nosuch-estimated")
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    labels = {(d["device"], d["label"]) for d in rep["devices"]}
    assert {("host", "measured"), ("rpi4-constrained", "constrained"), ("rpi4-estimated", "estimated")} <= labels
    failed = [d for d in rep["devices"] if d["device"] == "nosuch-estimated"]
    assert failed and "unknown device profile 'nosuch'" in failed[0]["error"]
    assert all(m["latency_ms"] for m in rep["models"] if m["role"] == "artifact")  # the host table still filled
    md = (run / "report.md").read_text()
    assert "## Devices" in md and "| rpi4-estimated | estimated |" in md and "FAILED" in md
