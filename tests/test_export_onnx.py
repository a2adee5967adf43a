"""ONNX export parity against the PyTorch student, on a student trained briefly on the digits test split."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.core.tolerances import parity_bar
from edgedistill.runtimes import open_session
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.trainer import accuracy, train_supervised
from edgedistill.toolchain.vision.export import onnx as onnx_export
from edgedistill.toolchain.vision.export.parity import (
    FP32_CRITERION,
    INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT,
    compare,
)
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A MobileNetV3 trained on all digits labels for a few epochs (int8 parity is meaningless on random weights)."""
    d = tmp_path_factory.mktemp("onnx")
    data = load_vision_data(DataConfig())
    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", 10)
    # 15 epochs: a model with margins, so int8 agreement measures quantisation, not a few borderline images
    # (at 6 epochs, calibration subsets alone moved U8S8 agreement between 0.969 and 0.989)
    train_supervised(model, data, TrainConfig(epochs=15, lr=5e-3, batch_size=64), torch.arange(len(data.train_x)),
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
    """ONNX Runtime's fp32 kernels keep the fp32 bar against PyTorch, and a model computed with fewer bits (weights
    and inputs rounded to 10-bit mantissas, as TF32 math does) does not: the bar sits between the two."""
    model, data, ref, fp32, _ = trained
    out = _logits(fp32, data.test_x)
    p = compare(ref, out, "fp32", "torch")
    assert p.ok and p.criterion == FP32_CRITERION, p
    assert p.top1_agreement == 1.0 and p.n == len(data.test_x)
    lossy = copy.deepcopy(model)
    with torch.no_grad():
        for w in lossy.parameters():
            w.copy_(w.half().float())
        rounded = lossy(data.test_x.half().float()).numpy()
    worse = compare(ref, rounded, "fp32", "torch")
    assert not worse.ok and worse.top1_agreement > 0.9, worse  # right classes, not fp32: blamed


def _host_needs_reduce_range() -> bool:
    from edgedistill.devices.profile import get_profile, int8_saturates

    return int8_saturates(get_profile("host"))


@pytest.mark.parametrize("variant", ["int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"])
def test_int8_top1_agreement(trained, variant: str) -> None:  # type: ignore[no-untyped-def]
    """The export's own choice for this host (the ISA decides): 8-bit weights where the CPU has an int8 dot product
    (VNNI, Arm), 7-bit (reduce_range) for static int8 on x86 without VNNI, each held to its bar."""
    _, data, ref, fp32, d = trained
    rr = _host_needs_reduce_range() and variant.startswith("int8_static")
    out = onnx_export.quantize(fp32, variant, d / f"{variant}.onnx", data.train_x[:128].numpy(), reduce_range=rr,
                               fp32_stem=True)
    p = compare(ref, _logits(out, data.test_x), "int8", "torch")
    bar = parity_bar("vision", "onnx", variant, rr).floor  # the table the export reads
    assert p.top1_agreement >= bar, (p, "reduce_range" if rr else "8-bit weights", bar)
    assert p.max_abs_diff > 0  # it really is quantised
    assert out.stat().st_size < fp32.stat().st_size


def test_static_int8_on_an_avx2_core(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On an x86 core without VNNI (qemu-x86_64 -cpu Haswell: AVX2, no AVX-512), 8-bit static U8S8 saturates and
    loses agreement, while the reduce_range file that the export picks for such a target computes the same logits
    there as on this host and keeps its bar. Runs on any x86 host; the contrast needs a host with VNNI."""
    from edgedistill.devices.local import AgentJob
    from edgedistill.devices.profile import get_profile
    from edgedistill.devices.transport import open_transport, parse_device

    _, data, ref, fp32, d = trained
    dev = parse_device("qemu-x86_64")
    transport = open_transport(dev)
    transport.prepare()  # fails (not skips) where the emulator is missing: `make test` installs it
    test = tmp_path / "test.npz"
    np.savez(test, x=data.test_x.numpy(), y=data.test_y.numpy())
    got = {}
    for rr in (False, True):
        f = onnx_export.quantize(fp32, "int8_static_u8s8", tmp_path / f"u8s8-rr{int(rr)}.onnx",
                                 data.train_x[:128].numpy(), reduce_range=rr, fp32_stem=True)
        logits = tmp_path / f"rr{int(rr)}.npy"
        transport.run(AgentJob(f, 1, test, None, 0, 1, True, logits))
        got[rr] = (np.load(logits), _logits(f, data.test_x))
    emulated, host = got[True]
    assert compare(host, emulated, "int8", "host").top1_agreement == 1.0  # nothing saturates: same on both ISAs
    assert compare(ref, emulated, "int8", "torch").top1_agreement >= INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT
    emulated8, host8 = got[False]
    if not _host_needs_reduce_range() and "vnni" in " ".join(get_profile("host").features):
        # the failure reduce_range exists for: 8-bit products saturate on AVX2 and the logits move
        assert np.abs(emulated8 - host8).max() > 1.0, np.abs(emulated8 - host8).max()


def test_static_quantisation_needs_calibration(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, _, fp32, d = trained
    with pytest.raises(ValueError, match="needs calibration images"):
        onnx_export.quantize(fp32, "int8_static_u8s8", d / "x.onnx", None)
    assert not (d / "x.onnx").exists()  # nothing half-written


def test_int8_remedies_rescue_a_failing_calibration(trained, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration set that collapses min-max ranges (here: one blank image, standing in for an unlucky pick)
    fails parity; the exporter's remedies (more, stratified training images first) make it pass, and every
    attempt is recorded."""
    from safetensors.torch import save_file

    from edgedistill.toolchain.vision import stages
    from edgedistill.toolchain.vision.recipe import ExportConfig, OnnxExport
    from edgedistill.toolchain.vision.stages import export_local

    model, data, _, _, _ = trained
    drawn = stages._Export.calibration
    monkeypatch.setattr(stages._Export, "calibration", lambda self, n: np.zeros((1, 3, 32, 32), np.float32)
                        if n == 1 else drawn(self, n))
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    cfg = ExportConfig(formats=["onnx"], onnx=OnnxExport(variants=["int8_static_u8s8"], calibration_samples=1))
    (rec,) = export_local("mobilenetv3_small_050", ckpt, 10, cfg, DataConfig(), tmp_path / "out")
    attempts = rec["quantization"]["attempts"]
    assert attempts[0]["remedy"] == "as configured" and attempts[0]["calibration_images"] == 1
    assert not attempts[0]["ok"], attempts  # a blank image's ranges cover no digit
    assert attempts[-1]["ok"] and rec["parity"]["ok"] and rec["quantization"]["kept"] != "as configured", attempts
    assert attempts[1]["calibration_images"] >= 256
