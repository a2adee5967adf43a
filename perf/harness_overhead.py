"""Harness overhead: edgedistill's measured p50 vs a bare timing loop around the same runtime session.

For each artifact (ONNX and TFLite of a MobileNetV3 at the demo's 32 px and at 224 px, and a Llama-3-shaped GGUF
decoding one token at a time), each round runs, one after the other in fresh processes:

- the benchmark agent (``edgedistill.devices.agent``, as ``bench`` runs it: the runtime adapter, JSON out), and
- a bare loop written against the runtime's own Python API with the same settings (threads, session options,
  batch 1, the same inputs, warm-up and run counts),

and the ratio of their p50s is taken per round (interleaved, so slow drift of the machine cancels), with a 95%
bootstrap interval over rounds. Goal: overhead ≤ 3%::

    .venv/bin/python perf/harness_overhead.py --rounds 7 --runs 300

Prints a Markdown table; paste it into benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgedistill.benchmarks import stats
from edgedistill.devices.local import AgentJob, run_local

#: the bare loops: the runtime's own API, the agent's settings, p50 of ``runs`` timed calls printed as JSON
BARE = {
    "onnx": """
import json, sys, time, numpy as np, onnxruntime as ort
path, threads, warmup, runs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"]); name = s.get_inputs()[0].name
xs = [np.random.default_rng(i).standard_normal((1, 3, size, size)).astype(np.float32) for i in range(64)]
for i in range(warmup): s.run(None, {name: xs[i % 64]})
t = []
for i in range(runs):
    a = time.perf_counter(); s.run(None, {name: xs[i % 64]}); t.append((time.perf_counter() - a) * 1e3)
print(json.dumps({"p50": float(np.percentile(t, 50))}))
""",
    "tflite": """
import json, sys, time, numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, warmup, runs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
it = Interpreter(model_path=path, num_threads=threads); it.allocate_tensors()
i_, o_ = it.get_input_details()[0], it.get_output_details()[0]
xs = [np.random.default_rng(i).standard_normal(i_["shape"]).astype(np.float32) for i in range(64)]
def run(x):
    it.set_tensor(i_["index"], x); it.invoke(); return it.get_tensor(o_["index"])
for i in range(warmup): run(xs[i % 64])
t = []
for i in range(runs):
    a = time.perf_counter(); run(xs[i % 64]); t.append((time.perf_counter() - a) * 1e3)
print(json.dumps({"p50": float(np.percentile(t, 50))}))
""",
    "gguf": """
import json, sys, time, numpy as np, llama_cpp
path, threads, warmup, runs, pp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                      logits_all=True, type_k=1, type_v=1, verbose=False)
ids = [int(t) for t in np.random.default_rng(0).integers(3, llm.n_vocab(), pp)]
llm.reset(); llm.eval(ids)
t = []
for i in range(warmup + runs):
    a = time.perf_counter(); llm.eval([ids[i % pp]]); llm.scores[llm.n_tokens - 1].argmax()
    if i >= warmup: t.append((time.perf_counter() - a) * 1e3)
print(json.dumps({"p50": float(np.percentile(t, 50))}))
""",
}


def _vision(tmp: Path, name: str, size: int) -> tuple[Path, Path, Path]:
    """A randomly initialised timm student exported to ONNX and TFLite fp32, and an eval file of its inputs."""
    import torch

    from edgedistill.toolchain.vision.export import onnx as onnx_export
    from edgedistill.toolchain.vision.export import tflite
    from edgedistill.toolchain.vision.models import create

    torch.manual_seed(0)
    model = create(name, 10).eval()
    sample = torch.zeros(1, 3, size, size)
    onnx_path, tfl = tmp / f"{name}-{size}.onnx", tmp / f"{name}-{size}.tflite"
    onnx_export.export_fp32(model, sample, onnx_path)
    tflite.export_fp32(model, sample, tfl)
    x = np.stack([np.random.default_rng(i).standard_normal((3, size, size)).astype(np.float32) for i in range(64)])
    np.savez(tmp / f"eval-{size}.npz", x=x, y=np.zeros(64, dtype=np.int64))
    return onnx_path, tfl, tmp / f"eval-{size}.npz"


def _gguf(tmp: Path) -> Path:
    """A random-weight Llama-3-shaped checkpoint (tests/llm_families.py) converted by llama.cpp's converter."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgedistill.toolchain.llm.export.gguf import convert, quantize
    from tests.llm_families import build_checkpoint

    build_checkpoint("llama3", tmp / "hf")
    return quantize(convert(tmp / "hf", tmp / "m-f32.gguf", "f32"), tmp / "m-q4_k_m.gguf", "q4_k_m")


def _bare(kind: str, path: Path, threads: int, warmup: int, runs: int, extra: int) -> float:
    out = subprocess.run([sys.executable, "-c", BARE[kind], str(path), str(threads), str(warmup), str(runs),
                          str(extra)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["p50"]


def _agent(path: Path, threads: int, warmup: int, runs: int, eval_npz: Path | None, pp: int) -> float:
    opts = ("--pp", str(pp), "--tg", "4", "--reps", "1") if path.suffix == ".gguf" else ()
    doc = run_local(AgentJob(path, threads, eval_npz, warmup=warmup, runs=runs, options=opts))
    return doc["latency_ms"]["p50"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cases = []
        for name, size in (("mobilenetv3_small_050", 32), ("mobilenetv3_small_100", 224)):
            onnx_path, tfl, ev = _vision(tmp, name, size)
            cases += [(f"ONNX fp32 {name} {size}px", "onnx", onnx_path, ev, size),
                      (f"TFLite fp32 {name} {size}px", "tflite", tfl, ev, size)]
        cases.append(("GGUF Q4_K_M Llama-3 shape, ms/token", "gguf", _gguf(tmp), None, 64))
        print(f"{args.rounds} interleaved rounds × {args.runs} runs, {args.threads} thread(s)\n")
        print("| artifact | agent p50 ms | bare loop p50 ms | agent / bare (95% CI over rounds) |\n|---|---|---|---|")
        for label, kind, path, ev, extra in cases:
            agent, bare = [], []
            for r in range(args.rounds):  # alternate which goes first
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        agent.append(_agent(path, args.threads, args.warmup, args.runs, ev, extra))
                    else:
                        bare.append(_bare(kind, path, args.threads, args.warmup, args.runs, extra))
            ratio, lo, hi = stats.paired_ratio_interval([[a] for a in agent], [[b] for b in bare], 50)
            print(f"| {label} | {np.median(agent):.4f} | {np.median(bare):.4f} | {ratio:.3f} [{lo:.3f}, {hi:.3f}] |",
                  flush=True)


if __name__ == "__main__":
    main()
