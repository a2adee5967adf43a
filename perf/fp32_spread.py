"""How far apart do correct fp32 kernels land? The spread of fp32 logits between runtimes, kernel ISAs, thread
counts and graph optimisation levels, on one vision run's exported student (and teacher): the measurement behind
``FP32_ATOL`` / ``FP32_RTOL`` in :mod:`edgedistill.core.tolerances`.

Every *variant* computes the run's test-split logits in a fresh process:

- PyTorch (the reference side: the host's PyTorch student is the truth every device is compared with) at 1 and 2
  threads, with ATen's kernels pinned to AVX2 (``ATEN_CPU_CAPABILITY``) and oneDNN's to AVX2
  (``ONEDNN_MAX_CPU_ISA``), and on an emulated Haswell core (``qemu-x86_64-static -cpu Haswell``: AVX2, no AVX-512);
- ONNX Runtime (the device side) at 1 and 2 threads, with all graph optimisations (what the agent uses: NCHWc
  blocked convolutions) and with none, natively and on the emulated Haswell core (MLAS dispatches by CPUID; it has
  no switch to turn AVX-512 off, so emulation is the way to get its AVX2 kernels on an AVX-512 host).

For every (PyTorch variant, ONNX Runtime variant) pair it prints max |Δ| and the two forms a bar can take: the
per-logit relative term ``max (|Δ| - atol) / |x|`` (what ``numpy.allclose`` needs) and the per-row term
``max |Δ|_row / max |x|_row``. Float32 rounding in a sum is bounded by eps·Σ|terms|, i.e. by the size of the
*activations*, not of one output: a logit near 0 that is the difference of large partial sums carries the rounding of
the large ones, so the per-logit form has no bound; the per-row form has.

    .venv/bin/edgedistill run RECIPE --out RUN     # a vision run exporting onnx fp32 (tests' per-device recipe)
    .venv/bin/python perf/fp32_spread.py RUN [--no-qemu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QEMU = "qemu-x86_64-static"
ATOL = 1e-4
#: variants that are *not* fp32 (weights and inputs rounded to fewer bits): what the bar must still catch
LOWER = "wrong:"


def _worker(kind: str, artifact: Path, inputs: Path, out: Path, threads: int, opt: str) -> None:
    """Compute logits of ``inputs`` (the run's test split) with one runtime configuration; save them as .npy."""
    x = np.load(inputs, allow_pickle=False)["x"].astype(np.float32)
    if kind == "torch":
        import torch

        from edgedistill.runtimes.torch_ref import load_reference

        torch.set_num_threads(threads)
        model = load_reference(artifact).eval()
        if opt in ("fp16", "bf16"):  # a device with fewer bits: weights and inputs rounded, float32 arithmetic
            dt = torch.float16 if opt == "fp16" else torch.bfloat16
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(dt).float())
            x = torch.from_numpy(x).to(dt).float().numpy()
        with torch.no_grad():
            y = torch.cat([model(torch.from_numpy(x[i:i + 64])) for i in range(0, len(x), 64)]).numpy()
    else:
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        o.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if opt == "all"
                                      else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        sess = ort.InferenceSession(str(artifact), o, providers=["CPUExecutionProvider"])
        name, batch = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) else 64
        y = np.concatenate([sess.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])
    np.save(out, y.astype(np.float32))


def _variants(qemu: bool) -> list[tuple[str, str, int, str, dict[str, str], bool]]:
    """``(name, kind, threads, opt, env, emulated)`` of every configuration measured."""
    v = [("torch t1", "torch", 1, "", {}, False), ("torch t2", "torch", 2, "", {}, False),
         ("torch aten=avx2", "torch", 1, "", {"ATEN_CPU_CAPABILITY": "avx2"}, False),
         ("torch aten=default onednn=avx2", "torch", 1, "",
          {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}, False),
         ("ort all t1", "ort", 1, "all", {}, False), ("ort all t2", "ort", 2, "all", {}, False),
         ("ort none t1", "ort", 1, "none", {}, False), ("ort none t2", "ort", 2, "none", {}, False),
         (f"{LOWER} fp16", "torch", 1, "fp16", {}, False), (f"{LOWER} bf16", "torch", 1, "bf16", {}, False)]
    if qemu:
        v += [("torch Haswell", "torch", 1, "", {}, True), ("ort all Haswell", "ort", 1, "all", {}, True),
              ("ort none Haswell", "ort", 1, "none", {}, True)]
    return v


def _measure(run: Path, label: str, torch_file: Path, onnx_file: Path, inputs: Path, qemu: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fp32-spread-"))
    out: dict[str, np.ndarray] = {}
    for name, kind, threads, opt, env, emulated in _variants(qemu):
        f = tmp / f"{len(out)}.npy"
        art = torch_file if kind == "torch" else onnx_file
        cmd = [sys.executable, __file__, "--worker", kind, str(art), str(inputs), str(f), str(threads), opt or "-"]
        if emulated:
            cmd = [QEMU, "-cpu", "Haswell", *cmd]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads), **env})
        out[name] = np.load(f)
    shutil.rmtree(tmp)
    refs = [n for n in out if n.startswith("torch")]  # the fp32 references (the rounded variants are others)
    rows = []
    for r in refs:
        for d in out:
            if d == r or (d.startswith("torch") and refs.index(d) < refs.index(r)):
                continue
            a, b = out[r].astype(np.float64), out[d].astype(np.float64)
            diff = np.abs(a - b)
            per_logit = float(((diff - ATOL).clip(0) / np.abs(a)).max())
            per_row = float((diff.max(1) / np.abs(a).max(1)).max())
            rows.append({"reference": r, "other": d, "max_abs_diff": float(diff.max()),
                         "rtol_per_logit": per_logit, "rtol_per_row": per_row})
    top = float(np.abs(out[refs[0]]).max())
    print(f"\n## {label} ({len(out[refs[0]])} test images, max |logit| {top:.1f})")
    print("| reference | other | max abs diff | rtol needed per logit (atol 1e-4) | max abs diff / row's max |logit| |")
    print("|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['reference']} | {x['other']} | {x['max_abs_diff']:.2e} | {x['rtol_per_logit']:.2e} | "
              f"{x['rtol_per_row']:.2e} |")
    return {"label": label, "max_abs_logit": top, "pairs": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--no-qemu", action="store_true", help="skip the emulated Haswell (AVX2) variants")
    p.add_argument("--json", type=Path, help="also write the pairs here")
    a = p.parse_args()
    qemu = not a.no_qemu and shutil.which(QEMU) is not None
    exp, docs = a.run / "export", []
    for who in ("student", "teacher"):
        onnx_file = exp / f"{who}-fp32.onnx"
        torch_file = next(iter(sorted(exp.glob(f"{who}-reference*"))), None)
        if onnx_file.is_file() and torch_file is not None:
            docs.append(_measure(a.run, who, torch_file, onnx_file, a.run / "data" / "test.npz", qemu))
    fp32 = [x for d in docs for x in d["pairs"] if not x["other"].startswith(LOWER)]
    summary = {k: max(x[k] for x in fp32) for k in ("max_abs_diff", "rtol_per_row")}
    print(f"\nworst over every fp32 pair: {json.dumps(summary)}")
    wrong = [x for d in docs for x in d["pairs"] if x["other"].startswith(LOWER)]
    print(f"least over the rounded variants: {min(x['rtol_per_row'] for x in wrong):.2e} of the row's max |logit|")
    if a.json:
        a.json.write_text(json.dumps(docs, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, art, inp, out, threads, opt = sys.argv[2:8]
        _worker(kind, Path(art), Path(inp), Path(out), int(threads), opt)
    else:
        main()
