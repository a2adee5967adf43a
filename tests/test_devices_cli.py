"""`edgedistill devices` and `edgedistill bench --devices`: one report, every figure labelled, failures isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgedistill.core.tolerances import DEVICE_INT8_MIN_TOP1, FP32_MAX_ABS_DIFF
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


#: fp32 artifacts on a constrained or emulated device vs the host run, largest absolute logit difference
FP32_DEVICE_PARITY = FP32_MAX_ABS_DIFF


@pytest.mark.slow
def test_bench_devices_matrix_report(tmp_path: Path, qemu_rootfs: Path) -> None:
    """The trained student's ONNX and TFLite files on host, a 1-core memory-capped host, qemu-arm64 (real aarch64
    wheels) and a roofline estimate, in one report; an unknown device fails alone."""
    recipe = tmp_path / "tiny.yaml"
    r = tiny_recipe(bench={"warmup": 1, "runs": 3, "threads": [1], "include_pytorch": False})
    r["export"] = {**r["export"], "formats": ["onnx", "tflite"], "tflite": {"variants": ["fp32", "int8_static"]}}
    recipe.write_text(yaml.safe_dump(r))
    run = tmp_path / "run"
    res = cli("run", str(recipe), "--out", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    constrained = "rpi4-constrained?cores=1&ram_mb=2048"
    res = cli("bench", "--out", str(run), "--devices",
              f"host,{constrained},rpi4-estimated,qemu-arm64,qemu-arm64:snapdragon8gen3,nosuch-estimated")
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((run / "report.json").read_text())
    rows = {(d["device"], d["model"]): d for d in rep["devices"]}
    labels = {(d["device"], d["label"]) for d in rep["devices"]}
    assert {("host", "measured"), (constrained, "constrained"), ("rpi4-estimated", "estimated"),
            ("qemu-arm64", "emulated")} <= labels
    for model in ("student-fp32", "student-tflite-fp32"):
        for device in (constrained, "qemu-arm64"):
            row = rows[(device, model)]
            assert row["error"] is None, row["error"]
            assert row["parity_vs_host"]["max_abs_diff"] <= FP32_DEVICE_PARITY, (device, model, row["parity_vs_host"])
            assert row["accuracy"] == rows[("host", model)]["accuracy"]
    # int8 was wrong under qemu's 'max' CPU; the Pi profile emulates a Cortex-A72, the phone profile a Cortex-A76
    # (dot product: the SDOT kernels a phone's cores pick), each reading its own core's cpuinfo
    for device in ("qemu-arm64", "qemu-arm64:snapdragon8gen3"):
        for model in ("student-int8_static_u8s8", "student-tflite-int8_static"):
            int8 = rows[(device, model)]
            assert int8["error"] is None, int8["error"]
            assert int8["parity_vs_host"]["top1_agreement"] >= DEVICE_INT8_MIN_TOP1, (device, model, int8)
    phone = next(d for d in rep["devices"] if d["device"] == "qemu-arm64:snapdragon8gen3")
    assert phone["label"] == "emulated" and phone["profile"] == "snapdragon8gen3"
    applied = rows[(constrained, "student-fp32")]["applied"]
    assert applied["cores_applied"] == 1 and applied["memory"]["limit_mb"] == 2048
    assert rows[("rpi4-estimated", "student-fp32")]["p50_ms"] > 0
    failed = [d for d in rep["devices"] if d["device"] == "nosuch-estimated"]
    assert failed and "unknown device profile 'nosuch'" in failed[0]["error"]
    assert all(m["latency_ms"] for m in rep["models"] if m["role"] == "artifact")  # the host table still filled
    md = (run / "report.md").read_text()
    assert "## Devices" in md and "| rpi4-estimated | estimated |" in md and "(emulated)" in md and "FAILED" in md
