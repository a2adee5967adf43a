"""How often the gate cries wolf and how often it catches a real slowdown, on this machine, with the same code
``edgedistill gate --baseline`` runs (interleaved rounds, bootstrap interval, one confirming re-measurement when
inconclusive, limit ``p50_ms: {max_regression: 10%}``); and whether a 2-point accuracy drop is caught.

    .venv/bin/python perf/gate_power.py [--trials 20] [--rounds 5] [--runs 150]

Slowdowns are injected as extra work on a side branch of the ONNX graph that adds zero to the logits
(tests/gate_fixtures.py: same outputs, more multiply-adds); each copy's true slowdown is measured first with many
interleaved rounds and printed beside the detection rate. Prints Markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gate_fixtures: the injected regressions

from edgedistill.benchmarks import stats  # noqa: E402
from edgedistill.benchmarks.gate import evaluate  # noqa: E402
from edgedistill.benchmarks.interleave import Pair, interleave  # noqa: E402
from tests.gate_fixtures import base_model, report_for, slowed_copy  # noqa: E402

LIMIT = 0.10


def gate_once(cand: Path, base: Path, rounds: int, runs: int) -> tuple[str, float, list[float]]:
    cfg = {"confidence": 0.95, "min_samples": 30, "waivers": [],
           "budgets": [{"artifacts": "*", "p50_ms": {"max_regression": LIMIT}}]}

    def measure() -> dict:
        return interleave([Pair("m", cand, base)], rounds, 1, 10, runs)["m"]

    got = measure()
    for attempt in range(2):
        flat = [x for r in got["candidate"] for x in r]
        res = evaluate(report_for("m", flat), cfg, report_for("m", [x for r in got["baseline"] for x in r]),
                       {("m", "host"): got})
        if res.verdict != "inconclusive" or attempt == 1:
            break
        more = measure()  # the CLI's one confirming re-measurement, pooled with the first
        got = {k: got[k] + more[k] for k in got}
    (c,) = res.checks
    return res.verdict, c.ratio, c.interval


def true_ratio(cand: Path, base: Path, rounds: int = 30, runs: int = 300) -> float:
    got = interleave([Pair("m", cand, base)], rounds, 1, 10, runs)["m"]
    return stats.paired_ratio_interval(got["candidate"], got["baseline"], 50)[0]


def calibrate(base: Path, d: Path, target: float, per_unit: list[float]) -> Path:
    """The side-branch width whose copy is ``target`` slower: extra time is linear in the width; its slope is a
    least-squares fit through probes at three widths (measured once, cached in ``per_unit``)."""
    if not per_unit:
        widths = np.array([64, 192, 512])
        slow = np.array([true_ratio(slowed_copy(base, d / f"probe-{w}.onnx", int(w)), base, 10, 200) - 1
                         for w in widths])
        per_unit.append(float((widths * slow).sum() / (widths**2).sum()))
    return slowed_copy(base, d / f"slow-{target:.2f}.onnx", max(1, round(target / per_unit[0])))


def accuracy_trial(d: Path) -> str:
    """A digits MobileNetV3 and a copy whose classifier bias is nudged to cost about 2 points: paired bootstrap on
    the 360 test images with ``accuracy: {max_drop: 0.01}``."""
    import onnx
    import torch
    from onnx import numpy_helper

    from edgedistill.devices.local import AgentJob, run_local
    from edgedistill.toolchain.vision.data import load_vision_data
    from edgedistill.toolchain.vision.distill.trainer import train_supervised
    from edgedistill.toolchain.vision.export.onnx import export_fp32
    from edgedistill.toolchain.vision.models import create
    from edgedistill.toolchain.vision.recipe import DataConfig, TrainConfig

    torch.set_num_threads(1)
    data = load_vision_data(DataConfig())
    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", 10)
    train_supervised(model, data, TrainConfig(epochs=6, lr=5e-3, batch_size=64), torch.arange(len(data.train_x)),
                     d / "ckpt.pt", "training", 0)
    base = export_fp32(model.eval(), data.test_x[:1], d / "digits.onnx")
    test = d / "test.npz"
    np.savez(test, x=data.test_x.numpy(), y=data.test_y.numpy())
    y = data.test_y.numpy()

    def correct(path: Path) -> list[int]:
        logits = d / "l.npy"
        run_local(AgentJob(path, 1, test, None, 0, 1, True, logits))
        return (np.load(logits).argmax(1) == y).astype(int).tolist()

    base_ok = correct(base)
    m = onnx.load(str(base))
    bias = next(t for t in m.graph.initializer  # the classifier's bias: the one 10-vector of the graph
                if numpy_helper.to_array(t).shape == (10,) and ("bias" in t.name or "classifier" in t.name))
    b = numpy_helper.to_array(bias).copy()
    for delta in np.linspace(0.1, 5.0, 50):  # nudge class 0 up until about 2 points are lost
        b2 = b.copy()
        b2[0] += delta
        bias.CopyFrom(numpy_helper.from_array(b2, bias.name))
        onnx.save(m, str(d / "worse.onnx"))
        worse_ok = correct(d / "worse.onnx")
        if np.mean(base_ok) - np.mean(worse_ok) >= 0.02:
            break
    cfg = {"confidence": 0.95, "min_samples": 30, "waivers": [],
           "budgets": [{"artifacts": "*", "accuracy": {"max_drop": 0.01}}]}
    res = evaluate(report_for("m", [1.0] * 50, worse_ok), cfg, report_for("m", [1.0] * 50, base_ok))
    (c,) = res.checks
    same = evaluate(report_for("m", [1.0] * 50, base_ok), cfg, report_for("m", [1.0] * 50, base_ok)).verdict
    return (f"| digits MobileNetV3, class-0 bias +{delta:.2f} | {np.mean(base_ok):.4f} | {np.mean(worse_ok):.4f} | "
            f"{c.ratio * 100:+.2f} | [{c.interval[0] * 100:+.2f}, {c.interval[1] * 100:+.2f}] | {res.verdict} "
            f"(unchanged: {same}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=150)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="gate-power-"))
    base = base_model(d / "base.onnx")
    copies = {"unchanged": slowed_copy(base, d / "same.onnx", 0)}
    slope: list[float] = []
    for target in (0.10, 0.20, 0.50):
        copies[f"+{target:.0%}"] = calibrate(base, d, target, slope)
    print(f"limit: p50_ms max_regression {LIMIT:.0%}; {a.rounds} interleaved rounds × {a.runs} runs per side; "
          f"{a.trials} gates per row\n")
    print("| candidate | true slowdown (30 rounds) | pass | fail | inconclusive | median ratio | seconds per gate |")
    print("|---|---|---|---|---|---|---|")
    for name, path in copies.items():
        truth = true_ratio(path, base)
        verdicts, ratios, t0 = [], [], time.perf_counter()
        for _ in range(a.trials):
            v, r, _ = gate_once(path, base, a.rounds, a.runs)
            verdicts.append(v)
            ratios.append(r)
        secs = (time.perf_counter() - t0) / a.trials
        print(f"| {name} | ×{truth:.3f} | {verdicts.count('pass')} | {verdicts.count('fail')} | "
              f"{verdicts.count('inconclusive')} | ×{np.median(ratios):.3f} | {secs:.1f} |", flush=True)
    print("\n| accuracy regression | baseline | candidate | Δ points | 95% interval | verdict |")
    print("|---|---|---|---|---|---|")
    print(accuracy_trial(d))


if __name__ == "__main__":
    main()
