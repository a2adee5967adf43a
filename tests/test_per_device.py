"""Per-device truth: an int8 file that computes wrongly on one CPU only is blamed on that CPU (parity against the
source model, the host being one device among others), each device gets its own recommendation — never an
artifact that fails there — and two bench runs agree on every recommendation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.test_cli import cli

DEVICES = "host,qemu-x86_64,qemu-arm64:rpi4"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, qemu_rootfs: Path) -> Path:
    """A student trained enough to have margins (int8 agreement then measures the CPU, not borderline images),
    exported with 8-bit static U8S8 on purpose (reduce_range off): the saturating kind of file."""
    d = tmp_path_factory.mktemp("per-device")
    r = tiny_recipe(data={"kind": "digits", "labelled_per_class": None},
                    distill={"train": {"epochs": 20, "batch_size": 64, "lr": 0.005},
                             "response": {"alpha": 0.0}, "baseline": False},
                    export={"formats": ["onnx"], "onnx": {"variants": ["fp32", "int8_static_u8s8"],
                                                          "reduce_range": False, "remedies": False}},
                    bench={"warmup": 2, "runs": 40, "threads": [1], "devices": DEVICES.split(",")})
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


@pytest.mark.slow
def test_two_bench_runs_agree_on_every_recommendation(run: Path) -> None:
    """Measured again from scratch (fresh processes, few runs): the per-device choices do not flip on noise."""
    first = json.loads((run / "report.json").read_text())["per_device"]["recommended"]
    res = cli("bench", "--out", str(run), "--force")
    assert res.returncode == 0, res.stderr[-3000:]
    second = json.loads((run / "report.json").read_text())["per_device"]["recommended"]
    assert {d: r["artifact"] for d, r in first.items()} == {d: r["artifact"] for d, r in second.items()}
