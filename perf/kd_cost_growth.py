"""How LLM KD cost grows with vocabulary, sequence length, batch and k: edgedistill's chunked top-k loss vs a
full-logit KD as TRL's GKD computes it, measured side by side in one run.

One KD training step of a small Llama student (hidden 512, 2 layers, the vocabulary under test) on random token ids:

- ``topk``: edgedistill's offline loss: the student's final hidden states go through the head ``chunk`` positions at a
  time with activation checkpointing (:func:`edgedistill.toolchain.llm.distill.losses.chunked_kd_loss`), against
  cached top-k teacher log-probs (the cache rows are synthetic: the cost does not depend on their values);
- ``full``: the student's full ``(B, L, V)`` logits and a same-shape teacher's, both log-softmaxed and compared with
  ``F.kl_div`` over the whole vocabulary, as ``GKDTrainer.generalized_jsd_loss`` does (beta = 0: forward KL). The
  teacher is a second copy of the student shape (no grad), so the row isolates the loss's cost, not a big teacher's.

Each point runs in its own process (peak RSS is its own) under an address-space limit (``--mem-gb``, default 20 of
this machine's 24 GiB): an allocation failure is reported as OOM, not allowed to take the machine down. Also:
the cache bytes/token of each k and of storing full fp16 logits instead, and (``--kld``) the student KL(teacher ‖
student) after training with each k on the tiny-llama job of perf/vs_trl.py. Writes a Markdown table and a PNG::

    .venv/bin/python perf/kd_cost_growth.py --plot benchmarks/kd_cost_growth.png --kld
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, LAYERS = 512, 2
VOCABS = [32_000, 128_256, 151_936]
SEQS = [512, 1024, 2048, 4096]
KS = [8, 32, 128]


def points() -> list[dict]:
    """The measured grid: each axis varied with the others at a middle value."""
    pts = []
    for method in ("topk", "full"):
        for v in VOCABS:
            pts.append({"axis": "vocab", "method": method, "vocab": v, "seq": 1024, "batch": 1, "k": 32})
        for s in SEQS:
            pts.append({"axis": "seq", "method": method, "vocab": 128_256, "seq": s, "batch": 1, "k": 32})
        for b in (2, 4):
            pts.append({"axis": "batch", "method": method, "vocab": 151_936, "seq": 4096, "batch": b, "k": 32})
    for k in KS:
        pts.append({"axis": "k", "method": "topk", "vocab": 128_256, "seq": 2048, "batch": 1, "k": k})
    return pts


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(pt: dict, steps: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgedistill.toolchain.llm.distill.losses import TeacherSlice, chunked_kd_loss

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=pt["vocab"], hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                      num_hidden_layers=LAYERS, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=4096)
    student = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    b, L, V, k = pt["batch"], pt["seq"], pt["vocab"], pt["k"]
    ids = torch.randint(0, V, (b, L))
    n = b * (L - 1)
    if pt["method"] == "topk":
        t_logp = torch.log_softmax(torch.randn(n, k), -1).half()  # cached rows: fp16 log-probs + ids
        t_idx = torch.randint(0, V, (n, k), dtype=torch.int32)
    else:
        teacher = LlamaForCausalLM(cfg).eval().requires_grad_(False)

    def step() -> None:
        if pt["method"] == "topk":
            out = student.model(input_ids=ids)
            h = out.last_hidden_state[:, :-1].reshape(n, HIDDEN)
            labels = ids[:, 1:].reshape(n)
            loss = chunked_kd_loss(h, student.lm_head, labels,
                                   lambda s, e: TeacherSlice(None, t_logp[s:e].float(), t_idx[s:e].long()),
                                   "forward_kl", 0.5, 1.0, 1.0, chunk)
        else:
            s_logits = student(input_ids=ids).logits[:, :-1]
            with torch.no_grad():
                t_logits = teacher(input_ids=ids).logits[:, :-1]
            s_lp, t_lp = F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1)
            loss = F.kl_div(s_lp, t_lp, reduction="none", log_target=True).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, AdamW state)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times), "peak_rss_mb": _peak_rss_mb()}


def cache_bytes_per_token(k: int, vocab: int) -> float:
    """edgedistill's cache row: k fp16 log-probs + k ids (uint16 when the vocabulary fits, else int32)."""
    return k * (2 + (2 if vocab <= 65536 else 4))


def run_point(pt: dict, steps: int, chunk: int, mem_gb: float, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(pt), "--steps", str(steps), "--chunk",
                           str(chunk), "--mem-gb", str(mem_gb), "--threads", str(threads)],
                          capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and last.startswith("{"):
        return {**pt, **json.loads(last)}
    oom = "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr or proc.returncode in (-9, 137)
    err = next((ln for ln in reversed(proc.stderr.splitlines()) if "Error" in ln), f"exit {proc.returncode}")
    return {**pt, "oom": oom, "error": err[:200]}


def kld_by_k(work: Path, steps: int) -> dict[int, dict]:
    """Train the tiny-llama student with each k (offline top-k KD) and measure KL(teacher ‖ student)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import vs_trl

    if not (work / "teacher").is_dir():
        vs_trl.prepare(work, 600)
    res = {}
    for k in KS:
        out = subprocess.run([sys.executable, vs_trl.__file__, "--one", "ed-offline", "--work", str(work),
                              "--steps", str(steps), "--top-k", str(k)], capture_output=True, text=True, check=True)
        res[k] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, axis, xlabel in ((axes[0], "vocab", "vocabulary"), (axes[1], "seq", "sequence length (batch 1)")):
        for method, style in (("topk", "o-"), ("full", "s--")):
            pts = [r for r in rows if r["axis"] == axis and r["method"] == method and "step_s" in r]
            ax.plot([r[axis] for r in pts], [r["step_s"] for r in pts], style,
                    label=f"{'edgedistill top-k (chunked)' if method == 'topk' else 'full-logit KD (TRL-style)'}")
            oom = [r for r in rows if r["axis"] == axis and r["method"] == method and r.get("oom")]
            for r in oom:
                ax.axvline(r[axis], color="red", alpha=0.3)
                ax.text(r[axis], ax.get_ylim()[1] * 0.9, " OOM", color="red")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("KD step, s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for method, style in (("topk", "o-"), ("full", "s--")):
        pts = [r for r in rows if r["axis"] == "seq" and r["method"] == method and "peak_rss_mb" in r]
        ax.plot([r["seq"] for r in pts], [r["peak_rss_mb"] / 1024 for r in pts], style,
                label="edgedistill top-k (chunked)" if method == "topk" else "full-logit KD (TRL-style)")
    ax.axhline(24, color="red", alpha=0.4, linestyle=":")
    ax.text(512, 24.3, "this machine's RAM (24 GiB)", color="red", fontsize=8)
    ax.set_xlabel("sequence length (vocabulary 128,256, batch 1)")
    ax.set_ylabel("peak RSS, GiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"KD step cost: Llama student hidden {HIDDEN}, {LAYERS} layers, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per point (after one warm-up step)")
    p.add_argument("--chunk", type=int, default=2048, help="edgedistill's chunk_tokens")
    p.add_argument("--mem-gb", type=float, default=20.0, help="address-space limit per point (OOM above it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", type=Path, help="write the PNG here")
    p.add_argument("--kld", action="store_true", help="also train the tiny student with each k (KL vs teacher)")
    p.add_argument("--kld-steps", type=int, default=200)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgedistill-vs-trl"), help="perf/vs_trl.py's job")
    p.add_argument("--axes", default="vocab,seq,batch,k")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.one:
        # RLIMIT_AS counts address space, not resident memory: the import-time mappings are added on top
        limit = int(args.mem_gb * 2**30)
        import torch

        torch.set_num_threads(args.threads)
        base = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (base + limit, base + limit))
        print(json.dumps(measure(json.loads(args.one), args.steps, args.chunk)))
        return
    rows = []
    for pt in points():
        if pt["axis"] not in args.axes.split(","):
            continue
        r = run_point(pt, args.steps, args.chunk, args.mem_gb, args.threads)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)
    kld = kld_by_k(args.work, args.kld_steps) if args.kld else {}
    print(f"one KD step (median of {args.steps} after a warm-up), student Llama hidden {HIDDEN} × {LAYERS} layers, "
          f"torch threads {args.threads}, chunk {args.chunk}, address-space limit {args.mem_gb:g} GiB per point\n")
    print("| axis | method | vocab | seq | batch | k | step s | peak RSS GiB | cache B/token |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cache = cache_bytes_per_token(r["k"], r["vocab"]) if r["method"] == "topk" else 2 * r["vocab"]
        figs = (f"{r['step_s']:.2f} | {r['peak_rss_mb'] / 1024:.1f}" if "step_s" in r
                else ("OOM | OOM" if r.get("oom") else f"failed: {r['error']} |"))
        name = "edgedistill top-k (chunked)" if r["method"] == "topk" else "full-logit (TRL-style; fp16 logits)"
        print(f"| {r['axis']} | {name} | {r['vocab']:,} | {r['seq']} | {r['batch']} | "
              f"{r['k'] if r['method'] == 'topk' else 'all'} | {figs} | {cache:,} |")
    if kld:
        print("\n| k | cache B/token (vocab 1,024) | student KL(teacher‖student) | val NLL |\n|---|---|---|---|")
        for k, r in kld.items():
            print(f"| {k} | {cache_bytes_per_token(k, 1024)} | {r['kld']:.4f} | {r['val_nll']:.3f} |")
    if args.plot:
        plot(rows, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
