"""Roofline estimator error against published Raspberry Pi 4 latencies.

Reference: PyTorch tutorial "Real Time Inference on Raspberry Pi 4 (30 fps!)" (Tristan Rice,
https://pytorch.org/tutorials/intermediate/realtime_rpi.html): int8 (qnnpack) MobileNetV2 26.4 ms and
MobileNetV3-Large 30.7 ms per 224x224 frame on a Pi 4 Model B, 4 threads. Here the same timm architectures are
built at random init (latency does not depend on the weights), exported to ONNX, quantised to int8 (static QDQ
U8S8) and estimated with the ``rpi4`` profile::

    .venv/bin/python perf/estimator_error.py

Prints a Markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

#: (timm name, published Pi 4 int8 ms at 224x224, the tutorial's torchvision model)
PUBLISHED = [("mobilenetv2_100", 26.4, "mobilenet_v2 (quantized)"),
             ("mobilenetv3_large_100", 30.7, "mobilenet_v3_large (quantized)")]


def _artifacts(name: str, size: int, out: Path) -> dict[str, Path]:
    import timm

    from edgedistill.toolchain.vision.export.onnx import export_fp32, quantize

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    fp32 = out / f"{name}-fp32.onnx"
    export_fp32(model, torch.zeros(1, 3, size, size), fp32)
    calib = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    int8 = quantize(fp32, "int8_static_u8s8", out / f"{name}-int8.onnx", calib)
    return {"fp32": fp32, "int8": int8}


def main(argv: list[str] | None = None) -> int:
    from edgedistill.devices.estimate import estimate_ms, graph_cost
    from edgedistill.devices.profile import get_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="rpi4")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    prof = get_profile(args.profile)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, published, ref in PUBLISHED:
            arts = _artifacts(name, args.size, Path(d))
            for variant, path in arts.items():
                cost = graph_cost(path)
                est = estimate_ms(cost, prof, args.threads)
                pub = published if variant == "int8" else None
                err = "–" if pub is None else f"{(est['ms'] - pub) / pub * 100:+.0f}%"
                rows.append(f"| {name} | {variant} | {cost.flops / 1e9:.3f} | {cost.bytes / 2**20:.1f} | "
                            f"{est['compute_ms']:.2f} | {est['memory_ms']:.2f} | {est['ms']:.2f} | "
                            f"{'–' if pub is None else pub} | {err} | {ref if pub else ''} |")
    print(f"Roofline estimate vs published, profile `{prof.name}` ({prof.peak_gflops_fp32:g} GFLOP/s fp32, "
          f"{prof.peak_gops_int8:g} GOP/s int8, {prof.mem_bandwidth_gbs:g} GB/s), {args.threads} threads, "
          f"batch 1, {args.size}x{args.size}\n")
    print("| model | precision | GFLOP | MiB moved | compute ms | memory ms | estimate ms | published ms | error "
          "| published as |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
