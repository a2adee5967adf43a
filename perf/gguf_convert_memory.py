"""Peak memory of llama.cpp's HF → GGUF converter (as ``edgedistill export`` runs it) at two model sizes.

Builds two random Llama-3-shaped checkpoints (GQA, llama3 rope scaling, tied embeddings, bf16 safetensors in
shards with an index, a byte-level BPE tokenizer), converts each to F32 GGUF lazily (the default) and, with
``--eager``, also with ``--no-lazy``. Two figures per run: the kernel's own peak resident set of the converter
process (``ru_maxrss`` from ``os.wait4``; it includes pages of the safetensors files the converter maps, which the
kernel can drop), and the peak anonymous resident memory (``RssAnon`` in ``/proc/PID/status``, sampled every 20 ms:
what must stay in RAM)::

    .venv/bin/python perf/gguf_convert_memory.py --sizes 512x4,1024x8 --eager

Prints a Markdown table; paste it into benchmarks/RESULTS.md. Lazy conversion should grow with the largest tensor
(embedding or an MLP matrix in F32), not with the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Measurement:
    name: str
    params: int
    checkpoint_mb: float  # bf16 safetensors on disk
    gguf_mb: float  # the F32 GGUF written
    largest_tensor_f32_mb: float
    lazy: bool
    peak_rss_mb: float
    peak_anon_mb: float
    seconds: float


def build(out: Path, hidden: int, layers: int, vocab_texts: list[str], seed: int = 0) -> tuple[int, float]:
    """A Llama-3-shaped random checkpoint (head_dim 64, 4 q-heads per kv-head, MLP 4x) with a trained tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgedistill.toolchain.llm.tokenizer import train_bpe

    out.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(vocab_texts, 2000, out)
    heads = hidden // 64
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), head_dim=64,
                      max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tie_weights()
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="200MB")
    largest = max(p.numel() for p in model.parameters()) * 4 / 2**20
    n = sum(p.numel() for p in model.parameters())
    del model
    return n, largest


def _rss_anon_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def measure(src: Path | None, out: Path, lazy: bool) -> tuple[float, float, float]:
    """Run the converter as :func:`~edgedistill.toolchain.llm.export.gguf.convert` does: its peak RSS (MB), peak
    anonymous RSS (MB) and wall seconds. ``src=None``: it only imports its modules and lists its models (the floor).
    """
    from edgedistill.toolchain.llm.export.gguf import converter_command, identify_pre_tokenizer

    if src is None:
        cmd, env = converter_command(Path("."), out, "f32", None)
        cmd = [*cmd[:cmd.index("--") + 1], "--print-supported-models"]
    else:
        cmd, env = converter_command(src, out, "f32", identify_pre_tokenizer(src / "tokenizer.json"), lazy)
    t = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        anon = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            anon = max(anon, _rss_anon_mb(proc.pid))
            time.sleep(0.02)
        log.seek(0)
        err = log.read()
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"converter failed on {src}: {err.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, anon, seconds  # Linux: ru_maxrss in kilobytes


def run(sizes: list[tuple[int, int]], eager: bool, workdir: Path, floor: bool = True) -> list[Measurement]:
    from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs

    texts = [e.prompt + e.completion for e in generate_legal_briefs(300, 0)]
    rows = []
    if floor:
        peak, anon, seconds = measure(None, workdir / "none.gguf", True)
        rows.append(Measurement("(imports only)", 0, 0.0, 0.0, 0.0, True, peak, anon, seconds))
    for hidden, layers in sizes:
        name = f"h{hidden}-l{layers}"
        src = workdir / name
        params, largest = build(src, hidden, layers, texts)
        ckpt = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**20
        for lazy in (True, False) if eager else (True,):
            gguf = workdir / f"{name}-{'lazy' if lazy else 'eager'}.gguf"
            peak, anon, seconds = measure(src, gguf, lazy)
            rows.append(Measurement(name, params, ckpt, gguf.stat().st_size / 2**20, largest, lazy, peak, anon,
                                    seconds))
            gguf.unlink()
    return rows


def table(rows: list[Measurement]) -> str:
    out = ["| checkpoint | params | bf16 on disk | F32 GGUF | largest tensor (F32) | mode | peak RSS (ru_maxrss) "
           "| peak anonymous RSS | time |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.name} | {r.params / 1e6:.1f}M | {r.checkpoint_mb:.0f} MB | {r.gguf_mb:.0f} MB | "
                   f"{r.largest_tensor_f32_mb:.0f} MB | {'lazy' if r.lazy else '--no-lazy'} | "
                   f"{r.peak_rss_mb:.0f} MB | {r.peak_anon_mb:.0f} MB | {r.seconds:.1f} s |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512x4,1024x8", help="comma-separated HIDDENxLAYERS checkpoints")
    p.add_argument("--eager", action="store_true", help="also convert with --no-lazy, for contrast")
    p.add_argument("--workdir", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="gguf-mem-", dir=args.workdir) as d:
        rows = run(sizes, args.eager, Path(d))  # type: ignore[arg-type]
    print(table(rows))


if __name__ == "__main__":
    main()
