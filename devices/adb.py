"""The ``adb`` transport: an Android phone over adb (adbutils). UNTESTED on a real device.

Two ways to run, chosen by the spec's ``runner=`` option (``adb://SERIAL?profile=snapdragon8gen3&runner=agent``):

- ``agent`` (default): push the agent bundle, the ``.onnx``/``.tflite`` artifact and the eval set to
  ``/data/local/tmp/edgedistill`` and run ``PYTHONPATH=agent.zip PYTHON -m edgedistill.devices.agent``; needs a
  Python with numpy and the runtime on the phone (e.g. Termux: ``python=/data/data/com.termux/files/usr/bin/python``).
- ``benchmark_model``: LiteRT's prebuilt ``benchmark_model`` binary (pushed by the user to
  ``/data/local/tmp/benchmark_model``) on a ``.tflite`` artifact; no Python needed, latency only (mean/min/max —
  the tool prints no percentiles, so ``p50`` holds the mean and the document says so).

Only command construction and output parsing are unit-tested (captured formats); no phone was available.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import atomic_path
from edgedistill.devices.agent import SCHEMA
from edgedistill.devices.bundle import build_bundle
from edgedistill.devices.local import AGENT_MODULE, AgentError, AgentJob, parse_agent_output
from edgedistill.devices.transport import TRANSPORTS, Device, Label, Transport

REMOTE_DIR = "/data/local/tmp/edgedistill"


def parse_getprop(text: str) -> dict[str, str]:
    """``adb shell getprop`` output (``[key]: [value]`` lines) as a dict."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.M))


def benchmark_model_argv(binary: str, graph: str, threads: int, warmup: int, runs: int) -> list[str]:
    return [binary, f"--graph={graph}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            f"--num_runs={runs}", "--use_xnnpack=true"]


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Latency (ms) and memory from LiteRT ``benchmark_model`` output; raises :class:`AgentError` if absent."""
    counts = re.findall(r"count=(\d+) first=(\d+) curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) std=(\d+)", text)
    if not counts:
        tail = (text.strip().splitlines() or ["no output"])[-1]
        raise AgentError(f"benchmark_model printed no timings: {tail}")
    n, _first, _curr, mn, mx, avg, std = counts[-1]  # the last block is the timed run (the first is warm-up)
    doc: dict[str, Any] = {"runs": int(n), "latency_ms": {
        "p50": float(avg) / 1e3, "mean": float(avg) / 1e3, "min": float(mn) / 1e3, "max": float(mx) / 1e3,
        "p90": float(mx) / 1e3, "p99": float(mx) / 1e3, "std": float(std) / 1e3},
        "latency_note": "benchmark_model reports no percentiles: p50 is the mean, p90/p99 the max"}
    if m := re.search(r"Init: ([\d.]+)", text):
        doc["load_ms"] = float(m.group(1)) / 1e3
    if m := re.search(r"overall=([\d.]+)", text):
        doc["peak_rss_mb"] = float(m.group(1))
        doc["rss_definition"] = "benchmark_model's memory footprint delta from the tool's start (approximate)"
    return doc


@TRANSPORTS.register("adb")
class AdbTransport(Transport):
    """An Android phone over adb: ``measured``. Options: serial, python, runner, benchmark_model."""

    label = Label.MEASURED

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        o = device.options
        self.serial = o.get("serial") or None
        self.python = shlex.split(o.get("python", "python3"))
        self.runner = o.get("runner", "agent")
        self.binary = o.get("benchmark_model", "/data/local/tmp/benchmark_model")
        self._dev: Any = None

    def agent_command(self, job: AgentJob) -> str:
        """The ``adb shell`` line that runs the agent on already-pushed remote paths."""
        return shlex.join(["env", f"PYTHONPATH={REMOTE_DIR}/agent.zip", *self.python, "-m",
                           AGENT_MODULE, *job.argv()])

    def remote_job(self, job: AgentJob) -> AgentJob:
        r = Path(REMOTE_DIR)
        return dataclasses.replace(job, artifact=r / job.artifact.name,
                                   eval_npz=r / job.eval_npz.name if job.eval_npz else None,
                                   logits_out=r / "logits.npy" if job.logits_out else None)

    def prepare(self) -> None:
        try:
            import adbutils
        except ImportError:
            raise AgentError("adb: the adbutils package is missing (pip install adbutils)") from None
        try:
            self._dev = adbutils.adb.device(serial=self.serial)
            self._dev.shell(shlex.join(["mkdir", "-p", REMOTE_DIR]))
        except Exception as err:  # adbutils raises AdbError/connection errors of several types
            raise AgentError(f"adb {self.serial or '(default device)'}: {err}; check `adb devices`") from None
        if self.runner == "agent":
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                self._dev.sync.push(str(build_bundle(Path(d) / "agent.zip")), f"{REMOTE_DIR}/agent.zip")

    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        if self._dev is None:
            self.prepare()
        rj = self.remote_job(job)
        for local, remote in ((job.artifact, rj.artifact), (job.eval_npz, rj.eval_npz)):
            if local is not None:
                self._dev.sync.push(str(local), str(remote))
        if self.runner == "benchmark_model":
            if job.artifact.suffix != ".tflite":
                raise AgentError(f"{job.artifact.name}: benchmark_model runs .tflite only; use runner=agent")
            out = self._dev.shell(shlex.join(benchmark_model_argv(self.binary, str(rj.artifact), job.threads,
                                                                  job.warmup, job.runs)), timeout=timeout_s)
            doc = {"schema": SCHEMA, "artifact": job.artifact.name, "threads": job.threads,
                   "size_bytes": job.artifact.stat().st_size, **parse_benchmark_model(out)}
        else:
            doc = parse_agent_output(self._dev.shell(self.agent_command(rj), timeout=timeout_s))
            if job.logits_out:
                with atomic_path(job.logits_out) as tmp:
                    self._dev.sync.pull(str(rj.logits_out), str(tmp))
        props = parse_getprop(self._dev.shell("getprop"))
        return self.annotate(doc, serial=self.serial, model=props.get("ro.product.model"),
                             soc=props.get("ro.soc.model"), abi=props.get("ro.product.cpu.abi"))
