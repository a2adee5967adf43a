"""Static int8 ONNX on x86 with and without VNNI: top-1 agreement with PyTorch of each quantisation setting, on
this host and on an emulated AVX2-only core (qemu-x86_64 -cpu Haswell), side by side in one run.

    .venv/bin/python perf/int8_isa.py [--epochs 6]

Trains the test suite's digits MobileNetV3 (mobilenetv3_small_050, seed 0), exports fp32 ONNX, quantises U8S8 and
S8S8 with 8-bit or 7-bit (reduce_range) weights, with the stem convolution quantised or kept in float, and scores
every file with the benchmark agent on both CPUs. Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgedistill.devices.local import AgentJob, run_local
from edgedistill.devices.profile import get_profile
from edgedistill.devices.transport import open_transport, parse_device
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.trainer import train_supervised
from edgedistill.toolchain.vision.export import onnx as onnx_export
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = Path(tempfile.mkdtemp(prefix="int8-isa-"))
    data = load_vision_data(DataConfig())
    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", 10)
    train_supervised(model, data, TrainConfig(epochs=a.epochs, lr=5e-3, batch_size=64),
                     torch.arange(len(data.train_x)), d / "ckpt.pt", "training", 0)
    model.eval()
    with torch.no_grad():
        ref = model(data.test_x).numpy()
    fp32 = onnx_export.export_fp32(model, data.test_x[:1], d / "fp32.onnx")
    test = d / "test.npz"
    np.savez(test, x=data.test_x.numpy(), y=data.test_y.numpy())
    avx2 = open_transport(parse_device("qemu-x86_64"))
    host = get_profile("host")
    print(f"host: {host.isa} {' '.join(host.features)}; emulated: qemu-x86_64 -cpu Haswell (AVX2, no VNNI)\n")
    print("| variant | weights | stem | top-1 vs PyTorch, host | top-1 vs PyTorch, AVX2 | max abs Δ host vs AVX2 |")
    print("|---|---|---|---|---|---|")
    for variant in ("int8_static_u8s8", "int8_static_s8s8"):
        for rr in (False, True):
            for stem in (False, True):
                f = onnx_export.quantize(fp32, variant, d / f"{variant}-{rr}-{stem}.onnx", data.train_x[:128].numpy(),
                                         reduce_range=rr, fp32_stem=stem)
                out = {}
                for name, runner in (("host", run_local), ("avx2", avx2.run)):
                    logits = d / f"{name}.npy"
                    runner(AgentJob(f, 1, test, None, 0, 1, True, logits))
                    out[name] = np.load(logits)
                agree = {k: float((v.argmax(1) == ref.argmax(1)).mean()) for k, v in out.items()}
                print(f"| {variant} | {'7-bit (reduce_range)' if rr else '8-bit'} | {'float' if stem else 'int8'} | "
                      f"{agree['host']:.4f} | {agree['avx2']:.4f} | {np.abs(out['host'] - out['avx2']).max():.3g} |",
                      flush=True)


if __name__ == "__main__":
    main()
