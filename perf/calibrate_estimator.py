"""Calibrate the roofline estimator per operator class from measured host runs, and report its error on figures
kept out of the fit.

Every model below is built at random init (latency does not depend on the weights), exported to ONNX (fp32) and
quantised to static int8 (QDQ U8S8, with ``reduce_range`` where the host needs it), then timed on this host with
ONNX Runtime (batch 1, ``--threads`` intra-op threads, median of ``--runs`` after a warm-up). The estimator's
regressors are each graph's per-class roofline seconds on the detected ``host`` profile
(:func:`edgedistill.devices.estimate.roofline_by_class`) and its node count; a non-negative least-squares fit of

    measured = Σ_class roofline_class / efficiency_class + nodes · dispatch

on the FIT models gives each class's efficiency (the fraction of peak the runtime reaches) and the dispatch cost.
The error is then reported on HELD-OUT models (never in the fit) on the host, and on published Raspberry Pi 4
figures (PyTorch's "Real Time Inference on Raspberry Pi 4" tutorial, qnnpack int8, 4 threads) — kept out of the fit
too, so they test whether host-fitted efficiencies transfer to a board::

    .venv/bin/python perf/calibrate_estimator.py --write

``--write`` stores the fit in devices/profiles/estimator-calibration.json (what ``*-estimated`` devices then use).
Prints Markdown tables; paste them into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

#: (timm name, input sizes): the fit set mixes dense convs, depthwise convs and attention/matmul
FIT = [("resnet18", (96, 160, 224)), ("mobilenetv2_100", (96, 160, 224)), ("vit_tiny_patch16_224", (224,)),
       ("efficientnet_b0", (128, 224)), ("resnet10t", (160,)), ("vit_small_patch16_224", (224,))]
HELD_OUT = [("mobilenetv3_large_100", (224,)), ("mobilenetv3_small_100", (224,)), ("regnetx_002", (224,)),
            ("deit_tiny_patch16_224", (224,)), ("resnet26", (160,))]
#: published Pi 4 int8 latencies at 224×224, 4 threads (timm name → ms), never fitted
PUBLISHED_RPI4 = {"mobilenetv2_100": 26.4, "mobilenetv3_large_100": 30.7}


def _build(name: str, size: int, out: Path) -> dict[str, Path]:
    import timm

    from edgedistill.devices.profile import get_profile, int8_saturates
    from edgedistill.toolchain.vision.export.onnx import export_fp32, quantize

    torch.manual_seed(0)
    kwargs = {"img_size": size} if "patch16" in name else {}
    model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs).eval()
    fp32 = out / f"{name}-{size}-fp32.onnx"
    export_fp32(model, torch.zeros(1, 3, size, size), fp32)
    calib = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    int8 = quantize(fp32, "int8_static_u8s8", out / f"{name}-{size}-int8.onnx", calib,
                    reduce_range=int8_saturates(get_profile("host")))
    return {"fp32": fp32, "int8": int8}


def _time_ms(path: Path, size: int, threads: int, runs: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = {sess.get_inputs()[0].name: np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)}
    for _ in range(max(5, runs // 5)):
        sess.run(None, x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _rows(models: list[tuple[str, tuple[int, ...]]], work: Path, prof, threads: int, runs: int) -> list[dict]:  # type: ignore[no-untyped-def]
    from edgedistill.devices.estimate import graph_cost, roofline_by_class

    rows = []
    for name, sizes in models:
        for size in sizes:
            for prec, path in _build(name, size, work).items():
                cost = graph_cost(path)
                rows.append({"model": name, "size": size, "precision": prec, "path": str(path), "nodes": cost.nodes,
                             "by_class": roofline_by_class(cost, prof, threads),
                             "measured_ms": _time_ms(path, size, threads, runs)})
                print(f"{name} {size} {prec}: {rows[-1]['measured_ms']:.2f} ms", flush=True)
    return rows


def fit(rows: list[dict]) -> dict:
    """Non-negative least squares on relative error (each row weighted by 1/measured, so small and large models
    count alike): unknowns are 1/efficiency per class and the dispatch seconds per node."""
    from scipy.optimize import nnls

    classes = sorted({c for r in rows for c in r["by_class"]})
    a = np.array([[r["by_class"].get(c, 0.0) for c in classes] + [r["nodes"]] for r in rows])
    y = np.array([r["measured_ms"] / 1e3 for r in rows])
    w = 1.0 / y
    x, _ = nnls(a * w[:, None], y * w)
    eff = {c: (1.0 / v if v > 0 else 50.0) for c, v in zip(classes, x[:-1], strict=True)}
    # a class the fit left at 0 costs next to nothing measured (fused away): its efficiency is capped at 50
    return {"efficiency": {c: round(min(e, 50.0), 4) for c, e in eff.items()}, "dispatch_us": round(x[-1] * 1e6, 3)}


def main() -> None:
    from edgedistill.devices.estimate import estimate_ms, graph_cost
    from edgedistill.devices.profile import get_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--write", action="store_true", help="store the fit as the built-in calibration")
    args = p.parse_args()
    torch.set_num_threads(1)
    host = get_profile("host")
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        fit_rows = _rows(FIT, work, host, args.threads, args.runs)
        held = _rows(HELD_OUT, work, host, args.threads, args.runs)
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        calib = {**fit(fit_rows), "source": f"perf/calibrate_estimator.py on {cpu} ({host.isa}), onnxruntime, "
                 f"{args.threads} thread(s), {datetime.date.today()}",
                 "fit_models": sorted({r["model"] for r in fit_rows})}

        def err(rows: list[dict], c: dict | None, prof, threads: int) -> list[tuple[dict, float, float]]:  # type: ignore[no-untyped-def]
            out = []
            for r in rows:
                est = estimate_ms(graph_cost(Path(r["path"])), prof, threads, calibration=c or False)["ms"]
                out.append((r, est, (est - r["measured_ms"]) / r["measured_ms"]))
            return out

        print(f"\nfit on {len(fit_rows)} host runs: {json.dumps(calib['efficiency'])}, dispatch "
              f"{calib['dispatch_us']} µs/node\n")
        print(f"host profile: {host.peak_gflops_fp32:g} GFLOP/s fp32, {host.peak_gops_int8:g} GOP/s int8, "
              f"{host.mem_bandwidth_gbs:g} GB/s, {args.threads} thread(s)\n")
        print("| set | model | size | precision | measured ms | roofline ms (error) | calibrated ms (error) |")
        print("|---|---|---|---|---|---|---|")
        summary = {}
        for label, rows in (("fit", fit_rows), ("held-out", held)):
            raw, cal = err(rows, None, host, args.threads), err(rows, calib, host, args.threads)
            for (r, e0, x0), (_, e1, x1) in zip(raw, cal, strict=True):
                print(f"| {label} | {r['model']} | {r['size']} | {r['precision']} | {r['measured_ms']:.2f} | "
                      f"{e0:.2f} ({x0:+.0%}) | {e1:.2f} ({x1:+.0%}) |")
            summary[label] = (statistics.median(abs(x) for *_, x in raw), statistics.median(abs(x) for *_, x in cal))
        for label, (a, b) in summary.items():
            print(f"\nmedian |error| on {label}: roofline {a:.0%} → calibrated {b:.0%}")
        rpi4 = get_profile("rpi4")
        print("\n| published Pi 4 (never fitted) | published ms | roofline ms (error) | calibrated ms (error) |\n"
              "|---|---|---|---|")
        for name, pub in PUBLISHED_RPI4.items():
            cost = graph_cost(_build(name, 224, work)["int8"])
            e0 = estimate_ms(cost, rpi4, 4, calibration=False)["ms"]
            e1 = estimate_ms(cost, rpi4, 4, calibration=calib)["ms"]
            print(f"| {name} int8 224×224, 4 threads | {pub} | {e0:.1f} ({(e0 - pub) / pub:+.0%}) | "
                  f"{e1:.1f} ({(e1 - pub) / pub:+.0%}) |")
    if args.write:
        from edgedistill.core.fileio import write_json
        from edgedistill.devices.estimate import CALIBRATION_FILE

        write_json(CALIBRATION_FILE, calib)
        print(f"\nwrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
