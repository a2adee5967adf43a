"""How often the CI gate cries wolf, and how often it catches a real regression (#26 item 4): at least 100 gates per
case, each one ``toolchain.gating.run_gate`` in same-runner mode (``edgedistill gate --out HEAD --base-out BASE``,
exactly what the shipped workflows run), with exact binomial (Clopper–Pearson) 95 % intervals on every rate.

    .venv/bin/python perf/gate_power.py [--trials 100] [--seed 0]      # ~45 min on the 2-core VM

The base is a real run of a small digits recipe (ViT teacher → MobileNetV3-S-050 student, fp32 ONNX), whose saved
recipe holds the budgets every gate applies at once: ``p50_ms: {max_regression: 10%}``, ``peak_rss_mb:
{max_regression: 5%}``, ``accuracy: {max_drop: 0.005}`` (half a point). Each case's head is a copy of the base run
whose exported student was replaced, as if its export had produced another file (manifest and report re-hashed, so
the gate's staleness checks pass):

- ``unchanged``: the same model (false alarms: any failed check is one);
- ``+10 % / +20 % time``: extra multiply-adds on a side branch that adds zero to the logits (tests/gate_fixtures.py),
  the width calibrated, and each copy's true slowdown measured over 30 interleaved rounds first;
- ``−1 / −2 points``: the classifier's class-0 bias raised until that many points of test accuracy are lost;
- ``+10 % RSS``: a lookup table read on a side branch (one row, times zero), sized so peak RSS grows 10 %.

What varies from gate to gate is what varies between two CI jobs: latency is re-measured by the gate itself (10
interleaved rounds, one confirming re-measurement when inconclusive); the test set is a fresh bootstrap draw of the
360 test images (the same draw for base and head: the paired comparison a CI job makes); peak RSS is one fresh
process's figure for each side, drawn from 30 fresh processes per model measured at the start (the gate takes
RSS from the reports, and a process's RSS does not depend on which gate it serves). Prints Markdown for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gate_fixtures: the injected slowdowns

from edgedistill.benchmarks import stats  # noqa: E402
from edgedistill.benchmarks.interleave import Pair, interleave  # noqa: E402
from edgedistill.core.fileio import read_json, sha256_path, write_json  # noqa: E402
from edgedistill.devices.local import AgentJob, run_local  # noqa: E402
from edgedistill.toolchain.gating import run_gate  # noqa: E402
from edgedistill.toolchain.pipeline import pipeline_of, stale_report  # noqa: E402
from edgedistill.toolchain.recipe import load_recipe  # noqa: E402
from edgedistill.toolchain.rundir import RunDir  # noqa: E402
from tests.gate_fixtures import slowed_copy  # noqa: E402

ARTIFACT = "student-fp32"
BUDGET = {"artifacts": ARTIFACT, "p50_ms": {"max_regression": 0.10}, "peak_rss_mb": {"max_regression": 0.05},
          "accuracy": {"max_drop": 0.005}}
RECIPE = {
    "name": "gate-power",
    "data": {"kind": "digits"},
    "teacher": {"name": "vit_tiny_patch16_224",
                "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
                "train": {"epochs": 6}},
    "student": {"name": "mobilenetv3_small_050"},
    "distill": {"train": {"epochs": 6}, "baseline": False},
    "export": {"formats": ["onnx"], "onnx": {"variants": ["fp32"]}, "teacher": False},
    "bench": {"warmup": 10, "runs": 150, "threads": [1]},
    "gate": {"budgets": [BUDGET]},
}
RSS_POOL = 30


def build_base(d: Path) -> Path:
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    base = d / "base"
    subprocess.run([str(Path(sys.executable).with_name("edgedistill")), "run", str(recipe), "--out", str(base)],
                   check=True, stdout=subprocess.DEVNULL)
    return base


def correct(path: Path, test_npz: Path, labels: np.ndarray, d: Path) -> np.ndarray:
    """1/0 per test image: does the ONNX file's top class match the label (the agent's own scoring run)."""
    logits = d / "logits.npy"
    run_local(AgentJob(path, 1, test_npz, None, 0, 1, True, logits))
    return (np.load(logits).argmax(1) == labels).astype(int)


def true_ratio(cand: Path, base: Path, test_npz: Path, rounds: int = 30, runs: int = 300) -> float:
    got = interleave([Pair("m", cand, base, eval_npz=test_npz)], rounds, 1, 10, runs)["m"]
    return stats.paired_ratio_interval(got["candidate"], got["baseline"], 50)[0]


def slowed(base: Path, d: Path, test_npz: Path, target: float, slope: list[float]) -> Path:
    """The side-branch width whose copy is ``target`` slower (extra time is linear in the width; the slope is a
    least-squares fit through three probe widths, measured once)."""
    if not slope:
        widths = np.array([64, 192, 512])
        extra = np.array([true_ratio(slowed_copy(base, d / f"probe-{w}.onnx", int(w)), base, test_npz, 10, 200) - 1
                          for w in widths])
        slope.append(float((widths * extra).sum() / (widths**2).sum()))
    return slowed_copy(base, d / f"slow-{target:.2f}.onnx", max(1, round(target / slope[0])))


def nudged(base: Path, out: Path, test_npz: Path, labels: np.ndarray, base_ok: np.ndarray, points: float,
           d: Path) -> Path:
    """``base`` with class 0's classifier bias raised by the smallest step that loses ``points`` of accuracy."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(base))
    bias = next(t for t in m.graph.initializer  # the classifier's bias: the graph's one 10-vector named so
                if numpy_helper.to_array(t).shape == (10,) and ("bias" in t.name or "classifier" in t.name))
    b = numpy_helper.to_array(bias).copy()
    for delta in np.arange(0.02, 8.0, 0.02):
        b2 = b.copy()
        b2[0] += delta
        bias.CopyFrom(numpy_helper.from_array(b2, bias.name))
        onnx.save(m, str(out))
        if (base_ok.mean() - correct(out, test_npz, labels, d).mean()) * 100 >= points - 1e-9:
            return out
    raise SystemExit(f"no class-0 bias up to +8 costs {points} points")


def rss_copy(src: Path, out: Path, extra_mb: float) -> Path:
    """``src`` plus a float32 table of ``extra_mb`` MiB from which the graph gathers one row (index 0, computed at run
    time) and adds it, times zero, to the logits: the outputs and the work stay the same, the memory does not."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inp, outp = g.input[0].name, g.output[0].name
    width = 256
    rows = max(1, int(extra_mb * 2**20 / 4 / width))
    table = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
    g.initializer.extend([numpy_helper.from_array(table, "rss_table"),
                          numpy_helper.from_array(np.zeros((), dtype=np.float32), "rss_zero")])
    old = outp + "_orig"
    for node in g.node:
        node.output[:] = [old if o == outp else o for o in node.output]
    g.node.extend([
        helper.make_node("ReduceSum", [inp], ["rss_s"], keepdims=0),
        helper.make_node("Mul", ["rss_s", "rss_zero"], ["rss_z"]),
        helper.make_node("Cast", ["rss_z"], ["rss_i"], to=onnx.TensorProto.INT64),
        helper.make_node("Gather", ["rss_table", "rss_i"], ["rss_row"], axis=0),
        helper.make_node("ReduceSum", ["rss_row"], ["rss_sum"], keepdims=0),
        helper.make_node("Mul", ["rss_sum", "rss_zero"], ["rss_nil"]),
        helper.make_node("Add", [old, "rss_nil"], [outp]),
    ])
    del g.value_info[:]
    onnx.save(m, str(out))
    return out


def rss_mb(path: Path, n: int) -> list[float]:
    """Peak RSS of ``n`` fresh agent processes that load ``path`` and time 20 runs."""
    return [run_local(AgentJob(path, 1, None, None, 2, 20))["peak_rss_mb"] for _ in range(n)]


def head_run(base: Path, head: Path, model: Path) -> Path:
    """A copy of the base run whose exported student is ``model``, as if its export had written that file: the
    export stage's manifest entry and the report's measured hash follow the new bytes."""
    shutil.copytree(base, head, symlinks=True)
    rel = f"export/{ARTIFACT}.onnx"
    shutil.copyfile(model, head / rel)
    sha, size = sha256_path(head / rel), (head / rel).stat().st_size
    manifest = read_json(head / "manifest.json")
    for out in manifest["stages"]["export"]["outputs"]:
        if out["path"] == rel:
            out.update(sha256=sha, bytes=size)
    write_json(head / "manifest.json", manifest)
    report = read_json(head / "report.json")
    report["measured"][ARTIFACT]["sha256"] = sha
    write_json(head / "report.json", report)
    recipe = load_recipe(str(head / "recipe.yaml"))
    if problems := stale_report(pipeline_of(recipe).context(recipe, RunDir(head), Console(file=io.StringIO()),
                                                            False), report):
        raise SystemExit(f"{head}: the gate would call this head stale: {problems}")
    return head


def set_row(run: Path, per_example: np.ndarray, rss: float) -> None:
    """The student's host row in ``run``'s report gets this trial's test draw and this trial's peak RSS."""
    report = read_json(run / "report.json")
    for row in report["rows"]:
        if row["artifact"] == ARTIFACT and row["device"] in ("host", "local"):
            row.update(per_example=per_example.astype(float).tolist(), score=float(per_example.mean()),
                       peak_rss_mb=rss)
    write_json(run / "report.json", report)


def gate(head: Path, base: Path) -> tuple[str, dict[str, str], dict[str, float]]:
    recipe = load_recipe(str(head / "recipe.yaml"))
    console = Console(file=io.StringIO())
    ctx = pipeline_of(recipe).context(recipe, RunDir(head), console, False)
    result, _ = run_gate(ctx, None, None, {}, None, None, None, console, base_out=base)
    return (result.verdict, {c.metric: c.verdict for c in result.checks},
            {c.metric: c.ratio for c in result.checks if c.ratio is not None})


def rate(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} = {k / n:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", type=Path, help="reuse this finished base run (an earlier call's)")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    d = Path(tempfile.mkdtemp(prefix="gate-power-"))
    t0 = time.perf_counter()
    base = a.base.resolve() if a.base else build_base(d)
    print(f"base run built in {time.perf_counter() - t0:.0f} s: {base}", flush=True)
    model = base / f"export/{ARTIFACT}.onnx"
    test_npz = base / "data" / "test.npz"
    with np.load(test_npz) as z:
        labels = z["y"]
    base_ok = correct(model, test_npz, labels, d)
    base_rss = float(np.median(rss_mb(model, 5)))
    slope: list[float] = []
    models = {"unchanged": slowed_copy(model, d / "same.onnx", 0),
              "+10 % time": slowed(model, d, test_npz, 0.10, slope),
              "+20 % time": slowed(model, d, test_npz, 0.20, slope),
              "−1 point": nudged(model, d / "minus1.onnx", test_npz, labels, base_ok, 1.0, d),
              "−2 points": nudged(model, d / "minus2.onnx", test_npz, labels, base_ok, 2.0, d)}
    probe = float(np.median(rss_mb(rss_copy(model, d / "rss-probe.onnx", 8.0), 5))) - base_rss
    models["+10 % RSS"] = rss_copy(model, d / "rss.onnx", 8.0 * 0.10 * base_rss / max(probe, 0.1))
    print(f"models ready after {time.perf_counter() - t0:.0f} s", flush=True)
    pools = {"base": rss_mb(model, RSS_POOL)} | {name: rss_mb(p, RSS_POOL) for name, p in models.items()}
    oks = {name: correct(p, test_npz, labels, d) for name, p in models.items()}
    truth = {name: true_ratio(p, model, test_npz) for name, p in models.items()}
    n = len(labels)
    print(f"\nmachine: {_cpu()}; {a.trials} gates per case (seed {a.seed}); base: accuracy {base_ok.mean():.4f} on {n} "
          f"test images, peak RSS median {np.median(pools['base']):.1f} MB\n")
    print("| case | true change (full test set; 30 rounds; RSS medians) | pass | fail | inconclusive | "
          "fail rate [95 % CI] | fail or inconclusive [95 % CI] | median p50 ratio | s per gate |")
    print("|---|---|--:|--:|--:|---|---|--:|--:|")
    for name, path in models.items():
        head = head_run(base, d / f"head-{len(list(d.glob('head-*')))}", path)
        verdicts, ratios, started = [], [], time.perf_counter()
        for _ in range(a.trials):
            idx = rng.integers(0, n, n)
            set_row(base, base_ok[idx], float(rng.choice(pools["base"])))
            set_row(head, oks[name][idx], float(rng.choice(pools[name])))
            verdict, _, ratio = gate(head, base)
            verdicts.append(verdict)
            ratios.append(ratio.get("p50_ms", float("nan")))
        secs = (time.perf_counter() - started) / a.trials
        change = (f"p50 ×{truth[name]:.3f}, accuracy {(oks[name].mean() - base_ok.mean()) * 100:+.2f} pt, "
                  f"RSS ×{np.median(pools[name]) / np.median(pools['base']):.3f}")
        fails, inc = verdicts.count("fail"), verdicts.count("inconclusive")
        print(f"| {name} | {change} | {verdicts.count('pass')} | {fails} | {inc} | {rate(fails, a.trials)} | "
              f"{rate(fails + inc, a.trials)} | ×{np.nanmedian(ratios):.3f} | {secs:.1f} |", flush=True)
    print(f"\ntotal {(time.perf_counter() - t0) / 60:.1f} min; work folder {d}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
