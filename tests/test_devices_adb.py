"""adb transport: command construction and output parsing only (no phone here; the transport is untested live)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from edgedistill.devices.adb import AdbTransport, benchmark_model_argv, parse_benchmark_model, parse_getprop
from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.transport import parse_device

# the log format LiteRT's benchmark_model prints (written from the tool's log lines, not captured live here)
BENCHMARK_MODEL_OUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/edgedistill/mobilenet_v2.tflite]
INFO: Loaded model /data/local/tmp/edgedistill/mobilenet_v2.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 3.57776
INFO: Initialized session in 2.581ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=57 first=10536 curr=8589 min=8485 max=10536 avg=8731.25 std=355

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=117 first=8611 curr=8534 min=8454 max=8757 avg=8548.27 std=49

INFO: Inference timings in us: Init: 2581, First inference: 10536, Warmup (avg): 8731.25, Inference (avg): 8548.27
INFO: Memory footprint delta from the start of the tool (MB): init=4.95703 overall=12.6875
"""

GETPROP_OUT = """\
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.model]: [SM-S928B]
[ro.soc.manufacturer]: [QTI]
[ro.soc.model]: [SM8650]
[ro.build.version.sdk]: [34]
"""


def test_parse_benchmark_model_takes_the_timed_block() -> None:
    doc = parse_benchmark_model(BENCHMARK_MODEL_OUT)
    assert doc["runs"] == 117 and doc["latency_ms"]["mean"] == pytest.approx(8.54827)
    assert doc["latency_ms"]["min"] == pytest.approx(8.454) and doc["load_ms"] == pytest.approx(2.581)
    assert doc["peak_rss_mb"] == pytest.approx(12.6875) and "no percentiles" in doc["latency_note"]
    with pytest.raises(AgentError, match="no timings: Aborted"):
        parse_benchmark_model("ERROR: Could not open model\nAborted\n")


def test_parse_getprop() -> None:
    props = parse_getprop(GETPROP_OUT)
    assert props["ro.soc.model"] == "SM8650" and props["ro.product.cpu.abi"] == "arm64-v8a"


def test_agent_command_runs_the_bundle_on_remote_paths(tmp_path: Path) -> None:
    dev = parse_device("adb://R5CX10ABC?python=/data/data/com.termux/files/usr/bin/python")
    tr = AdbTransport(dev)
    assert tr.serial == "R5CX10ABC" and dev.profile.name == "snapdragon8gen3"
    job = AgentJob(tmp_path / "m.tflite", 4, tmp_path / "test.npz", warmup=2, runs=10, score=True,
                   logits_out=tmp_path / "l.npy")
    rj = tr.remote_job(job)
    line = tr.agent_command(rj)
    assert shlex.split(line)[:4] == ["env", "PYTHONPATH=/data/local/tmp/edgedistill/agent.zip",
                                     "/data/data/com.termux/files/usr/bin/python", "-m"]
    assert "--artifact /data/local/tmp/edgedistill/m.tflite" in line and "--threads 4" in line
    assert "--logits-out /data/local/tmp/edgedistill/logits.npy" in line and str(tmp_path) not in line


def test_benchmark_model_argv() -> None:
    assert benchmark_model_argv("/data/local/tmp/benchmark_model", "/d/m.tflite", 4, 5, 50) == [
        "/data/local/tmp/benchmark_model", "--graph=/d/m.tflite", "--num_threads=4", "--warmup_runs=5",
        "--num_runs=50", "--use_xnnpack=true"]
