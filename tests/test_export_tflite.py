"""TFLite export and the LiteRT adapter against the PyTorch student: real litert-torch conversions, real interpreter.

One briefly trained MobileNetV3 (channels-last, as the trainer trains) is converted once per variant; the digits test
split (360 images) is the parity set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from edgedistill.runtimes import open_session
from edgedistill.toolchain.vision.data import VisionData, load_vision_data
from edgedistill.toolchain.vision.distill.trainer import accuracy, train_supervised
from edgedistill.toolchain.vision.export import tflite
from edgedistill.toolchain.vision.export.parity import FP32_MAX_ABS_DIFF, TFLITE_INT8_MIN_TOP1_AGREEMENT, compare
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, TrainConfig

pytest.importorskip("litert_torch", reason="the TFLite tests need the tflite extra: pip install -e '.[tflite]'")

STUDENT = "mobilenetv3_small_050"


@dataclass
class Trained:
    model: nn.Module
    data: VisionData
    ref: np.ndarray  # (N, 10) PyTorch logits on the test split
    dir: Path

    def logits(self, path: Path) -> np.ndarray:
        return open_session("litert", path, threads=2).run_all(self.data.test_x.numpy())


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on this 2-core machine with anything else running, two OpenMP threads wait on each other
    at every small op (measured: a MobileNetV3 training step 5.3 s with 2 threads under load vs 0.057 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A MobileNetV3 trained on all digits labels for a few epochs (int8 agreement is meaningless on random weights).

    Its logits are then temperature-scaled (Guo et al. 2017: classifier divided by T; same argmax) to a largest
    magnitude of 16: trained this way the raw logits reach ~170, where float32 itself (PyTorch fp32 vs fp64) is
    1.1e-4 off, so an absolute 1e-4 bound would test float rounding rather than the conversion.
    """
    d = tmp_path_factory.mktemp("tflite")
    data = load_vision_data(DataConfig())
    torch.manual_seed(0)
    model = create(STUDENT, 10)
    train_supervised(model, data, TrainConfig(epochs=6, lr=5e-3, batch_size=64), torch.arange(len(data.train_x)),
                     d / "ckpt.pt", "t", 0)
    model.eval()
    assert accuracy(model, data.test_x, data.test_y) > 0.8, "the fixture model did not train"
    with torch.no_grad():
        t = float(model(data.train_x).abs().max()) / 16
        head = model.get_classifier()
        head.weight.div_(t)
        head.bias.div_(t)
        ref = model(data.test_x).numpy()
    return Trained(model, data, ref, d)


@pytest.fixture(scope="module")
def fp32(trained: Trained) -> Path:
    t0 = time.perf_counter()
    path = tflite.export_fp32(trained.model, trained.data.test_x[:1], trained.dir / "fp32.tflite", model_name=STUDENT)
    print(f"\nfp32 conversion {time.perf_counter() - t0:.1f} s")
    return path


@pytest.fixture(scope="module")
def int8_static(trained: Trained) -> Path:
    t0 = time.perf_counter()
    path = tflite.export_int8_static(trained.model, trained.data.test_x[:1], trained.dir / "int8_static.tflite",
                                     trained.data.train_x[:64].numpy(), model_name=STUDENT)
    print(f"\nint8_static (PT2E, 64 calibration images) {time.perf_counter() - t0:.1f} s")
    return path


def test_fp32_parity(trained: Trained, fp32: Path) -> None:
    p = compare(trained.ref, trained.logits(fp32), "fp32", "torch")
    print(f"\nfp32: max|Δ| {p.max_abs_diff:.2e}")
    assert p.max_abs_diff <= FP32_MAX_ABS_DIFF and p.ok
    assert p.top1_agreement == 1.0 and p.n == len(trained.data.test_x)
    desc = open_session("litert", fp32, threads=2).describe()
    assert desc["layout"] == "nchw" and desc["input_shape"] == [1, 3, 32, 32] and desc["threads"] == 2
    assert desc["input_quantization"] is None and desc["package"] == "ai-edge-litert"


def test_int8_static_is_full_integer_and_agrees(trained: Trained, int8_static: Path) -> None:
    sess = open_session("litert", int8_static)
    assert sess.describe()["input_quantization"]["dtype"] == "int8"
    assert sess.describe()["output_quantization"]["dtype"] == "int8"
    p = compare(trained.ref, trained.logits(int8_static), "int8", "torch", TFLITE_INT8_MIN_TOP1_AGREEMENT)
    print(f"\nint8_static: top-1 agreement {p.top1_agreement:.4f}, max|Δ| {p.max_abs_diff:.3f}")
    assert p.ok and p.top1_agreement >= TFLITE_INT8_MIN_TOP1_AGREEMENT, p


def test_int8_io_uses_the_models_scale_and_zero_point(trained: Trained, int8_static: Path) -> None:
    """The adapter's output equals a hand computation with the model's own scale/zero-point, and ignoring them
    (feeding raw floats as int8, reading int8 logits as floats) would destroy the agreement."""
    from ai_edge_litert.interpreter import Interpreter

    x = trained.data.test_x.numpy()
    it = Interpreter(model_path=str(int8_static), num_threads=2)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    (s_in,), (z_in,) = inp["quantization_parameters"]["scales"], inp["quantization_parameters"]["zero_points"]
    (s_out,), (z_out,) = out["quantization_parameters"]["scales"], out["quantization_parameters"]["zero_points"]
    assert abs(s_in - 1) > 0.5 and abs(s_out - 1) > 0.5, "trivial quantisation parameters prove nothing"

    def invoke(q: np.ndarray) -> np.ndarray:
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        return it.get_tensor(out["index"])[0]

    by_hand = np.stack([(invoke(np.clip(np.round(xi / s_in) + z_in, -128, 127).astype(np.int8)).astype(np.float64)
                         - z_out) * s_out for xi in x])
    ignored = np.stack([invoke(np.clip(np.round(xi), -128, 127).astype(np.int8)).astype(np.float32) for xi in x])
    adapter = trained.logits(int8_static)
    np.testing.assert_allclose(adapter, by_hand, rtol=0, atol=1e-5)
    good, bad = compare(trained.ref, adapter, "int8", "t"), compare(trained.ref, ignored, "int8", "t")
    print(f"\nscale/zp applied: agreement {good.top1_agreement:.3f}, mean|Δ| {good.mean_abs_diff:.3f}; ignored: "
          f"{bad.top1_agreement:.3f}, {bad.mean_abs_diff:.1f}")
    assert good.top1_agreement >= TFLITE_INT8_MIN_TOP1_AGREEMENT and bad.top1_agreement < 0.5
    assert good.mean_abs_diff < bad.mean_abs_diff / 10


@pytest.mark.parametrize("variant", ["int8_dynamic", "int8_weight_only"])
def test_ai_edge_quantizer_variants(trained: Trained, fp32: Path, variant: str) -> None:
    out = tflite.quantize(fp32, variant, trained.dir / f"{variant}.tflite")
    p = compare(trained.ref, trained.logits(out), "int8", "torch", TFLITE_INT8_MIN_TOP1_AGREEMENT)
    print(f"\n{variant}: top-1 agreement {p.top1_agreement:.4f}, max|Δ| {p.max_abs_diff:.2e}")
    assert p.top1_agreement >= TFLITE_INT8_MIN_TOP1_AGREEMENT, p
    assert p.max_abs_diff > 0  # it really is quantised
    assert out.stat().st_size < fp32.stat().st_size


def test_export_local_model_from_the_cli_nhwc(trained: Trained, tmp_path: Path) -> None:
    """`edgedistill export --model NAME --checkpoint W.safetensors ...`: NHWC graph, records like a run's."""
    from edgedistill.toolchain.cli import app

    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(ckpt))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", "--model", STUDENT, "--checkpoint", str(ckpt), "--num-classes", "10",
                                   "--formats", "tflite", "--variants", "fp32,int8_dynamic", "--layout", "nhwc",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    records = json.loads((out / "artifacts.json").read_text())
    assert [(r["name"], r["format"], r["layout"]) for r in records] == [
        (f"{STUDENT}-tflite-fp32", "tflite", "nhwc"), (f"{STUDENT}-tflite-int8_dynamic", "tflite", "nhwc")]
    assert all(r["parity"]["ok"] for r in records), records
    assert records[0]["parity"]["max_abs_diff"] <= FP32_MAX_ABS_DIFF
    manifest = json.loads((out / "manifest.json").read_text())
    assert {o["path"] for o in manifest["stages"]["export"]["outputs"]} == {r["file"] for r in records} | {
        "artifacts.json", "reference-logits.npy"}  # the PyTorch logits every device's parity is measured against
    sess = open_session("litert", out / records[0]["file"])
    assert sess.describe()["input_shape"] == [1, 32, 32, 3] and sess.layout == "nhwc"


class NoLowering(nn.Module):
    """``erfinv`` has no TFLite lowering in litert-torch 0.10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.tanh(x) * 0.5)


class DataDependent(nn.Module):
    """Control flow on a tensor's value: torch.export cannot capture it with static shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def _net(inner: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Conv2d(8, 8, 1), inner),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.mark.parametrize(("inner", "says", "op"), [
    (NoLowering(), "operator aten.erfinv.default has no TFLite lowering", "aten.erfinv.default"),
    (DataDependent(), "a data-dependent shape or control flow", None),
])
def test_failing_conversion_names_model_op_module_and_writes_repro(
        tmp_path: Path, inner: nn.Module, says: str, op: str | None) -> None:
    torch.manual_seed(0)
    with pytest.raises(tflite.ConversionError) as info:
        tflite.export_fp32(_net(inner), torch.randn(1, 3, 16, 16), tmp_path / "x.tflite", model_name="toy-net")
    msg = str(info.value)
    kind = type(inner).__name__
    assert msg.startswith("toy-net: litert-torch cannot convert it to TFLite: " + says), msg
    assert f"in module '1.1' (tests.test_export_tflite.{kind})" in msg and "--repro" in msg
    assert "test_export_tflite.py:" in msg  # the source line
    assert not (tmp_path / "x.tflite").exists()

    t0 = time.perf_counter()
    facts = json.loads(info.value.write_repro(tmp_path / "repro").read_text())
    print(f"\n{kind}: repro in {time.perf_counter() - t0:.1f} s, tried {facts['tried']}")
    assert facts["submodule"] == "1.1" and facts["type"].endswith(kind) and facts["operator"] == op
    assert facts["input_shapes"] == [[1, 8, 16, 16]]
    code = (tmp_path / "repro" / "repro.py").read_text()
    compile(code, "repro.py", "exec")
    assert ("aten.erfinv.default" in code) if op else ("class DataDependent" in code)
    assert facts["culprit_code"] is (op is not None)  # litert's culprit finder needs a torch.export-able module
    assert (tmp_path / "repro" / "submodule.safetensors").is_file()


def test_the_same_net_without_the_bad_module_converts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, x = _net(nn.Hardswish()), torch.randn(4, 3, 16, 16)
    path = tflite.export_fp32(net, x[:1], tmp_path / "ok.tflite", model_name="toy-net")
    with torch.no_grad():
        ref = net(x).numpy()
    got = open_session("litert", path).run(x.numpy())  # batch 4 through a batch-1 model: chunked by the adapter
    assert got.shape == (4, 10) and np.abs(got - ref).max() <= FP32_MAX_ABS_DIFF
