"""ONNX export parity against the PyTorch student, on a student trained briefly on the digits test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.runtimes import open_session
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.trainer import accuracy, train_supervised
from edgedistill.toolchain.vision.export import onnx as onnx_export
from edgedistill.toolchain.vision.export.parity import FP32_ATOL, FP32_RTOL, INT8_MIN_TOP1_AGREEMENT, compare
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A MobileNetV3 trained on all digits labels for a few epochs (int8 parity is meaningless on random weights)."""
    d = tmp_path_factory.mktemp("onnx")
    data = load_vision_data(DataConfig())
    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", 10)
    train_supervised(model, data, TrainConfig(epochs=6, lr=5e-3, batch_size=64), torch.arange(len(data.train_x)),
                     d / "ckpt.pt", "t", 0)
    model.eval()
    assert accuracy(model, data.test_x, data.test_y) > 0.8, "the fixture model did not train"
    with torch.no_grad():
        ref = model(data.test_x).numpy()
    fp32 = onnx_export.export_fp32(model, data.test_x[:1], d / "fp32.onnx")
    return model, data, ref, fp32, d


def _logits(path: Path, x: torch.Tensor) -> np.ndarray:
    return open_session("onnxruntime", path, threads=2).run_all(x.numpy())


def test_fp32_parity(trained) -> None:  # type: ignore[no-untyped-def]
    _, data, ref, fp32, _ = trained
    out = _logits(fp32, data.test_x)
    p = compare(ref, out, "fp32", "torch")
    assert p.ok, p
    np.testing.assert_allclose(out, ref, atol=FP32_ATOL, rtol=FP32_RTOL)
    assert p.top1_agreement == 1.0 and p.n == len(data.test_x)


@pytest.mark.parametrize("variant", ["int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"])
def test_int8_top1_agreement(trained, variant: str) -> None:  # type: ignore[no-untyped-def]
    _, data, ref, fp32, d = trained
    out = onnx_export.quantize(fp32, variant, d / f"{variant}.onnx", data.train_x[:128].numpy())
    p = compare(ref, _logits(out, data.test_x), "int8", "torch")
    assert p.top1_agreement >= INT8_MIN_TOP1_AGREEMENT, p
    assert p.max_abs_diff > 0  # it really is quantised
    assert out.stat().st_size < fp32.stat().st_size


def test_static_quantisation_needs_calibration(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, _, fp32, d = trained
    with pytest.raises(ValueError, match="needs calibration images"):
        onnx_export.quantize(fp32, "int8_static_u8s8", d / "x.onnx", None)
    assert not (d / "x.onnx").exists()  # nothing half-written
