"""Per-device truth: an int8 file that computes wrongly on one CPU only is blamed on that CPU (parity against the
source model, the host being one device among others), each device gets its own recommendation — never an
artifact that fails there — and two bench runs agree on every recommendation."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgedistill.benchmarks.row import Row
from edgedistill.core.procs import dies_with_us
from edgedistill.core.tolerances import PARITY_BARS
from tests.conftest import tiny_recipe
from tests.test_cli import cli

DEVICES = "host,qemu-x86_64,qemu-arm64:rpi4"


def artifact(name: str, size: int, bar: str = "fp32") -> Row:
    """An artifact as its kind lists it on the host (its size and parity bar), not timed there."""
    return Row(name, "vision", "artifact", "host", size_bytes=size, parity_bar_name=bar,
               parity_bar=PARITY_BARS[bar].floor)


def device_row(name: str, device: str, bar: str = "fp32", **timed: Any) -> Row:
    """The artifact timed on ``device`` at one thread, its outputs there equal to the source's."""
    fields = {"label": "emulated", "profile": "rpi4", "threads": 1, "source_agreement": 1.0,
              "source_max_abs_diff": 0.0, "source_fp32_ok": True, **timed}
    return Row(name, "vision", "artifact", device, parity_bar_name=bar, parity_bar=PARITY_BARS[bar].floor, **fields)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, qemu_rootfs: Path) -> Path:
    """A student trained enough to have margins (int8 agreement then measures the CPU, not borderline images),
    exported with 8-bit static U8S8 on purpose (reduce_range off): the saturating kind of file."""
    d = tmp_path_factory.mktemp("per-device")
    r = tiny_recipe(data={"kind": "digits", "labelled_per_class": None},
                    distill={"train": {"epochs": 20, "batch_size": 64, "lr": 0.005},
                             "response": {"alpha": 0.0}, "baseline": False},
                    export={"formats": ["onnx"], "teacher": False, "onnx": {"variants": ["fp32", "int8_static_u8s8"],
                                                          "reduce_range": False, "remedies": False}},
                    bench={"warmup": 2, "runs": 40, "threads": [1], "devices": DEVICES.split(","),
                           "processes": 3})  # best of 3 host processes: interference bursts (benchmarks/RESULTS.md)
    (d / "r.yaml").write_text(yaml.safe_dump(r))
    res = cli("run", str(d / "r.yaml"), "--out", str(d / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    return d / "run"


@pytest.mark.slow
def test_the_device_that_computes_wrongly_is_blamed(run: Path) -> None:
    from edgedistill.devices.profile import get_profile, int8_saturates

    rep = json.loads((run / "report.json").read_text())
    keeps = rep["per_device"]["keeps"]["student-int8_static_u8s8"]
    # qemu's Cortex-A72 has no int16 saturation and agrees with the PyTorch student; qemu's Haswell (AVX2, no
    # VNNI) saturates: whatever the host is, the emulated AVX2 core is blamed and the Arm core is not
    assert keeps["qemu-arm64:rpi4"]["ok"] is True, keeps
    assert keeps["qemu-x86_64"]["ok"] is False and "top-1 agreement" in keeps["qemu-x86_64"]["why"], keeps
    host_saturates = int8_saturates(get_profile("host"))
    assert keeps["host"]["ok"] is (not host_saturates), (keeps, "the host is judged by its own outputs")
    flags = " ".join(rep["per_device"]["flags"])
    assert "student-int8_static_u8s8 keeps accuracy on" in flags and "qemu-x86_64" in flags.split("but not on")[1]
    fp32 = rep["per_device"]["keeps"]["student-fp32"]
    assert all(k["ok"] for k in fp32.values()), fp32  # fp32 is right everywhere
    recs = rep["per_device"]["recommended"]
    assert set(recs) == set(DEVICES.split(","))
    assert recs["qemu-x86_64"]["artifact"] == "student-fp32"  # never the file that fails on that device
    for dev, rec in recs.items():
        assert rec["artifact"] is None or keeps_ok(rep, rec["artifact"], dev), (dev, rec)
    md = (run / "report.md").read_text()
    assert "## What to ship, per device" in md and "| qemu-x86_64 | student-fp32 |" in md


def keeps_ok(rep: dict, artifact: str, device: str) -> bool:
    return rep["per_device"]["keeps"][artifact][device]["ok"] is True


@contextlib.contextmanager
def competing_load() -> Iterator[None]:
    """A busy loop per core at the lowest priority while the block runs: the other tenants of a shared CI runner."""
    procs = [subprocess.Popen(dies_with_us([sys.executable, "-c", "while True: pass"]))
             for _ in range(os.cpu_count() or 1)]
    try:
        for p in procs:
            os.setpriority(os.PRIO_PROCESS, p.pid, 19)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_two_bench_runs_agree_on_every_recommendation(run: Path) -> None:
    """Measured again from scratch (fresh processes, few runs) while every core also runs a low-priority busy loop:
    the per-device choices do not flip on noise."""
    first = json.loads((run / "report.json").read_text())["per_device"]["recommended"]
    with competing_load():
        res = cli("bench", "--out", str(run), "--force")
    assert res.returncode == 0, res.stderr[-3000:]
    second = json.loads((run / "report.json").read_text())["per_device"]["recommended"]
    assert {d: r["artifact"] for d, r in first.items()} == {d: r["artifact"] for d, r in second.items()}


def test_few_emulated_runs_tie_by_their_range_and_the_smallest_file_wins() -> None:
    """Five emulated runs each: a 6% gap between medians whose run ranges overlap is a tie (the smaller file is
    recommended), while a gap wider than both ranges decides; one run alone is a point value."""
    from edgedistill.benchmarks.report.per_device import per_device

    def row(model: str, samples: list[float]) -> Row:
        return device_row(model, "qemu-arm64:rpi4", p50_ms=sorted(samples)[len(samples) // 2], samples_ms=samples)

    arts = [artifact("big", 4000), artifact("small", 1000), artifact("slow", 10)]
    rows = [row("big", [7.0, 7.1, 7.05, 8.0, 6.9]), row("small", [7.5, 7.4, 9.6, 7.3, 7.6]),
            row("slow", [20.0, 22.0, 21.0, 25.0, 19.0])]
    rec = per_device(arts + rows, 0.01)["recommended"]["qemu-arm64:rpi4"]
    assert rec["artifact"] == "small" and set(rec["tied"]) == {"big", "small"}
    assert "94% interval" in rec["reason"] and "tied within noise" in rec["reason"]
    rows[1] = replace(rows[1], samples_ms=[9.0, 9.1, 9.2, 9.3, 9.4], p50_ms=9.2)
    rec = per_device(arts + rows, 0.01)["recommended"]["qemu-arm64:rpi4"]
    assert rec["artifact"] == "big" and rec["tied"] == ["big"]
    rows[0] = replace(rows[0], samples_ms=[7.0])
    rec = per_device(arts + rows, 0.01)["recommended"]["qemu-arm64:rpi4"]
    assert rec["artifact"] == "big" and "point p50" in rec["reason"]


def test_p50s_closer_than_the_drift_between_runs_are_tied_whatever_their_intervals() -> None:
    """40 runs each, narrow intervals that do not overlap: a gap smaller than TIE_FLOOR (the p50 drift measured
    between bench runs) is a tie and the smaller file wins in both orders; a gap wider than it decides."""
    from edgedistill.benchmarks.recommend import TIE_FLOOR
    from edgedistill.benchmarks.report.per_device import per_device

    size = {"fp32": 4000, "int8": 1000}

    def row(model: str, p50: float) -> Row:  # the host row is the artifact's own (its size and bar) and timed
        samples = [p50 * (1 + 0.002 * (k % 5 - 2)) for k in range(40)]
        return replace(device_row(model, "host", label="measured", profile="host", p50_ms=p50, samples_ms=samples),
                       size_bytes=size[model])

    gap = 1 + TIE_FLOOR / 2
    for fast, slow in (("fp32", "int8"), ("int8", "fp32")):
        rec = per_device([row(fast, 1.0), row(slow, gap)], 0.01)["recommended"]["host"]
        assert rec["artifact"] == "int8" and set(rec["tied"]) == {"fp32", "int8"}, rec
    rec = per_device([row("fp32", 1.0), row("int8", 1 + 2 * TIE_FLOOR)], 0.01)["recommended"]
    assert rec["host"]["artifact"] == "fp32" and rec["host"]["tied"] == ["fp32"]


def test_fp32_rounding_passes_on_every_device_and_fewer_bits_are_blamed(tmp_path: Path) -> None:
    """The fp32 bar against the source's logits, as the bench computes it per device: rounding at the size measured
    between correct fp32 kernels (perf/fp32_spread.py: up to 9.6e-6 of a row's largest logit; here 2e-5, landing on
    logits near 0 in rows of large ones) passes; the same logits at a 10-bit mantissa (fp16/TF32-like) fail."""
    from edgedistill.benchmarks.harness import _parity
    from edgedistill.core.tolerances import FP32_RTOL

    g = np.random.default_rng(0)
    ref = (g.standard_normal((64, 10)) * 10).astype(np.float32)
    ref[:, 0] = 1e-3  # a logit near 0: a per-logit relative bar would allow it next to nothing
    scale = np.abs(ref).max(1, keepdims=True)
    logits = {"rounding": ref + (g.choice([-1, 1], ref.shape) * 2e-5 * scale).astype(np.float32),
              "fewer-bits": ref.astype(np.float16).astype(np.float32)}
    assert 2e-5 < FP32_RTOL < float((np.abs(logits["fewer-bits"] - ref) / scale).max())
    np.save(tmp_path / "source.npy", ref)
    checked = {}
    for name, x in logits.items():
        np.save(tmp_path / f"{name}.npy", x)
        checked[name] = _parity(tmp_path / "source.npy", tmp_path / f"{name}.npy", "source")
    assert checked["rounding"]["fp32_ok"] is True and checked["fewer-bits"]["fp32_ok"] is False, checked


def test_every_variant_a_recipe_can_ask_for_has_one_bar_and_its_criterion_is_what_export_writes() -> None:
    """The one parity-bar table (core/tolerances.py): each variant of each kind maps to a bar with its reason; the
    report, export --auto and the exporters read it; an unknown variant has no bar (fail closed)."""
    from typing import get_args

    from edgedistill.core.tolerances import (
        FP32_CRITERION,
        INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT,
        ONNX_INT8_MIN_SAME_TOP,
        PARITY_BARS,
        parity_bar,
    )
    from edgedistill.toolchain.llm.recipe import GGUFVariant, ONNXVariant
    from edgedistill.toolchain.vision.export.parity import compare
    from edgedistill.toolchain.vision.recipe import OnnxVariant, TfliteVariant

    variants = [("vision", "onnx", v) for v in get_args(OnnxVariant)] + [
        ("vision", "tflite", v) for v in get_args(TfliteVariant)] + [
        ("llm", "gguf", v) for v in get_args(GGUFVariant)] + [("llm", "onnx", v) for v in get_args(ONNXVariant)]
    for key in variants:
        bar = parity_bar(*key)
        assert bar.reason and (bar.metric == "fp32") == (key[2] in ("fp32", "f32")), (key, bar)
    assert parity_bar("llm", "onnx", "int8_dynamic").floor == ONNX_INT8_MIN_SAME_TOP != \
        parity_bar("vision", "onnx", "int8_dynamic").floor
    assert parity_bar("vision", "onnx", "int8_static_u8s8", True).floor == INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT
    assert parity_bar("vision", "onnx", "int8_dynamic", True) == parity_bar("vision", "onnx", "int8_dynamic")
    assert parity_bar("vision", "onnx", "fp32").criterion == FP32_CRITERION
    ref = np.eye(10, dtype=np.float32)[np.arange(50) % 10]
    bar = parity_bar("vision", "tflite", "int8_static")
    assert compare(ref, ref, "int8", "torch", bar.floor).criterion == bar.criterion  # the string export records
    with pytest.raises(KeyError, match="no parity bar for vision onnx int4"):
        parity_bar("vision", "onnx", "int4")
    assert PARITY_BARS["device vs host"].floor is not None


def test_a_quantised_file_unlike_its_host_outputs_on_a_device_is_flagged() -> None:
    """The table's device-vs-host bar is the product's: below it the report flags the device (fp32 files are
    judged by their own bar, not this one)."""
    from edgedistill.benchmarks.report.per_device import per_device
    from edgedistill.core.tolerances import PARITY_BARS

    floor = PARITY_BARS["device vs host"].floor
    assert floor is not None

    def row(model: str, device: str, vs_host: float) -> Row:
        bar = "vision int8" if model == "int8" else "fp32"
        return device_row(model, device, bar, p50_ms=1.0, host_agreement=vs_host)

    arts = [artifact("int8", 1, "vision int8"), artifact("fp32", 4)]
    rows = [row("int8", "qemu-arm64", floor - 0.01), row("int8", "ssh:pi", floor), row("fp32", "qemu-arm64", 0.5)]
    (flag,) = per_device(arts + rows, 0.01)["flags"]
    assert flag.startswith(f"int8 on qemu-arm64 agrees with the host's outputs on {floor - 0.01:.3f}"), flag
