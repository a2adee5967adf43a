"""The int8 remedy ladder on real photographs: every rung runs on calibration sets of any size, and a rung that
raises is recorded as a failed attempt while the ladder goes on (issue #23: percentile calibration crashed a run on
a 480-photo ImageFolder whose 335 training images left a last calibration batch of 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.toolchain.ort_quant import equal_batch
from edgedistill.toolchain.rundir import RunDir
from edgedistill.toolchain.vision import stages
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.trainer import train_supervised
from edgedistill.toolchain.vision.export import onnx as onnx_export
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, OnnxExport, TrainConfig
from tests.photo_fixtures import make_photo_folder

#: a bar no file can reach (top-1 agreement is at most 1): every rung of the ladder runs
UNREACHABLE = 1.01
STATIC_RUNGS = [name for name, _ in stages.INT8_REMEDIES]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """4 classes of 64×64 photo crops (31 each: 86 training images, not a multiple of 8), a MobileNetV3 trained
    on them for a few epochs, and its fp32 graph."""
    d = tmp_path_factory.mktemp("photos")
    data = load_vision_data(DataConfig(kind="imagefolder", root=make_photo_folder(d / "imgs", per_class=31),
                                       image_size=64))
    assert len(data.train_x) % 8 != 0, len(data.train_x)
    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", data.num_classes)
    train_supervised(model, data, TrainConfig(epochs=3, lr=5e-3, batch_size=32), torch.arange(len(data.train_x)),
                     d / "ckpt.pt", "t", 0)
    model.eval()
    fp32 = onnx_export.export_fp32(model, data.test_x[:1], d / "student-fp32.onnx")
    return model, data, fp32


def _job(model: torch.nn.Module, data, root: Path) -> stages._Export:  # type: ignore[no-untyped-def]
    return stages._Export(model, data, RunDir(root), "student", "kd", "PyTorch student", 0, "mobilenetv3 (test)")


def test_equal_batch_divides_every_count() -> None:
    for n in range(1, 1100):
        b = equal_batch(n)
        assert 1 <= b <= 8 and n % b == 0, (n, b)
    assert equal_batch(335) == 5 and equal_batch(256) == 8 and equal_batch(13) == 1


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_takes_counts_that_are_not_whole_batches(photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       method: str) -> None:
    """The cause of the crash, at the quantiser: 17 photos are not a whole number of batches of 8."""
    _, data, fp32 = photos
    out = onnx_export.quantize(fp32, "int8_static_u8s8", tmp_path / "q.onnx", data.train_x[:17].numpy(),
                               method=method)
    assert out.stat().st_size < fp32.stat().st_size


@pytest.mark.parametrize("configured", [13, 64])
def test_every_rung_runs_on_photographs(photos, tmp_path: Path, configured: int) -> None:  # type: ignore[no-untyped-def]
    """Forced past every rung (a bar no file reaches): each remedy produces a file and a parity score, none
    raises, with 13 or 64 configured calibration images and the remedies' 86 (all the training images)."""
    model, data, fp32 = photos
    job = _job(model, data, tmp_path)
    path = tmp_path / "student-int8_static_u8s8.onnx"
    cfg = OnnxExport(calibration_samples=configured, reduce_range=False)
    q = stages._quantize_until_parity(job, cfg, fp32, "int8_static_u8s8", path, UNREACHABLE)
    attempts = q["attempts"]
    assert [a["remedy"] for a in attempts] == STATIC_RUNGS, attempts
    assert [a["calibration_images"] for a in attempts] == [configured] + [len(data.train_x)] * 4, attempts
    for a in attempts:
        assert "error" not in a and 0 < a["top1_agreement"] <= 1 and not a["ok"], a
    best = max(attempts, key=lambda a: a["top1_agreement"])  # the first of equals: a later tie does not replace it
    assert q["kept"] == best["remedy"] and path.is_file() and not path.with_name(f"{path.stem}.attempt.onnx").exists()


def test_a_rung_that_raises_is_recorded_and_the_ladder_goes_on(photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The remedies' calibration images are 32×32 for a 64×64 graph, so onnxruntime rejects them inside its
    calibrator: each remedy is a failed attempt with onnxruntime's reason, the ladder tries the next one, and the
    file kept is the configured attempt's."""
    model, data, fp32 = photos
    drawn = stages._Export.calibration
    monkeypatch.setattr(stages._Export, "calibration", lambda self, n: drawn(self, n) if n == 16 else
                        np.zeros((n, 3, 32, 32), np.float32))
    job = _job(model, data, tmp_path)
    path = tmp_path / "student-int8_static_u8s8.onnx"
    cfg = OnnxExport(calibration_samples=16, reduce_range=False)
    q = stages._quantize_until_parity(job, cfg, fp32, "int8_static_u8s8", path, UNREACHABLE)
    assert [a["remedy"] for a in q["attempts"]] == STATIC_RUNGS
    first, *remedies = q["attempts"]
    assert "error" not in first and first["top1_agreement"] is not None, first
    for a in remedies:
        assert not a["ok"] and a["top1_agreement"] is None and "Got invalid dimensions" in a["error"], a
    assert q["kept"] == "as configured"
    assert job.parity(path, "int8_static_u8s8", UNREACHABLE).top1_agreement == first["top1_agreement"]


def test_a_variant_no_attempt_could_write_is_left_out_with_its_reasons(photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt raised (here the only one: remedies off): the variant is not listed, its reason is."""
    model, data, _ = photos
    monkeypatch.setattr(stages._Export, "calibration", lambda self, n: np.zeros((n, 3, 32, 32), np.float32))
    job = _job(model, data, tmp_path)
    stages._export_onnx(job, OnnxExport(variants=["fp32", "int8_static_u8s8"], calibration_samples=16,
                                        reduce_range=False, remedies=False, exporter="torchscript"))
    assert [r["variant"] for r in job.records] == ["fp32"]
    assert list(job.failures) == ["student-int8_static_u8s8"]
    assert job.failures["student-int8_static_u8s8"].startswith("as configured: InvalidArgument"), job.failures
    assert not (tmp_path / "export" / "student-int8_static_u8s8.onnx").exists()


def test_an_error_in_our_own_code_is_not_swallowed(photos, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken contract of ours (no calibration images for a static variant) stops the export, not recorded."""
    model, data, fp32 = photos
    monkeypatch.setattr(stages._Export, "calibration", lambda self, n: None)
    with pytest.raises(ValueError, match="needs calibration images"):
        stages._quantize_until_parity(_job(model, data, tmp_path), OnnxExport(reduce_range=False), fp32,
                                      "int8_static_u8s8", tmp_path / "x.onnx", UNREACHABLE)
