"""Measure one LLM artifact in a fresh process and print one JSON document (the LLM counterpart of
:mod:`edgedistill.devices.agent`).

An artifact is a GGUF file (llama.cpp), an ONNX decoder with a KV cache (ONNX Runtime) or a Hugging Face Llama
folder (PyTorch). The agent

1. times llama-bench-style prompt processing (``--pp`` tokens) and generation (``--tg`` tokens one by one), each
   ``--reps`` times (mean ± sd tokens/s);
2. generates greedy summaries for the first ``--eval-samples`` test examples and scores them: exact match of each
   key field of the summary, the whole summary, and ROUGE-L (``rouge-score``); time to first token;
3. reports peak RSS (VmHWM: interpreter and runtime included) and the file size.

Usage: ``python -m edgedistill.toolchain.llm.bench --artifact m.gguf --tokenizer TOKDIR --test test.jsonl``
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedistill.core.quiet import quiet_libraries
from edgedistill.devices.agent import peak_rss_mb  # one definition of peak RSS (VmHWM) for every agent
from edgedistill.runtimes.llm import LLMSession

SCHEMA = "edgedistill.llm-agent/1"


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 as the ``rouge-score`` package computes it (lower-cased alphanumeric tokens, no stemming)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def score(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """Field accuracy (the task score), whole-summary exact match and ROUGE-L, averaged over examples."""
    from edgedistill.toolchain.llm.data import FIELDS, key_fields

    per_field = {f: 0.0 for f in FIELDS}
    exact, rl = 0, 0.0
    for p, r in zip(preds, refs, strict=True):
        kp, kr = key_fields(p), key_fields(r)
        for f in FIELDS:
            per_field[f] += float(kp[f] == kr[f])
        exact += int(p.strip() == r.strip())
        rl += rouge_l(p, r)
    n = max(1, len(refs))
    return {"task_score": sum(per_field.values()) / (n * len(FIELDS)), "exact_match": exact / n,
            "rouge_l": rl / n, "field_accuracy": {f: v / n for f, v in per_field.items()}, "n": len(refs)}


def generate_and_score(sess: LLMSession, examples: list[Any], enc: Callable[[str], list[int]],
                       dec: Callable[[list[int]], str], max_new_tokens: int, eos: int | None) -> dict[str, Any]:
    """Greedy summaries of ``examples`` scored against their references (:func:`score`), with timings."""
    preds, ttfts, n_new, gen_s = [], [], 0, 0.0
    for e in examples:
        t = time.perf_counter()
        new, ttft = sess.generate(enc(e.prompt), max_new_tokens, eos)
        gen_s += time.perf_counter() - t
        n_new += len(new)
        ttfts.append(ttft)
        preds.append(dec(new).strip())
    return {"score": score(preds, [e.output for e in examples]), "ttfts": ttfts, "new_tokens": n_new,
            "seconds": gen_s, "samples": [{"id": e.id, "prediction": p, "reference": e.output}
                                          for e, p in list(zip(examples, preds, strict=True))[:5]]}


def _plain_tokenizer(folder: Path, max_length: int
                     ) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str], int | None]:
    """Encode/decode with the ``tokenizers`` library alone (what a device ships), like :func:`..tokenizer.encode`:
    ``[BOS] prompt`` cut to ``max_length``; decoding skips special tokens."""
    import json

    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

    def special(key: str) -> int | None:
        tok = cfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        return tk.token_to_id(tok) if tok else None

    bos, eos = special("bos_token"), special("eos_token")

    def enc(prompt: str) -> list[int]:
        head = [bos] if bos is not None else []
        return (head + tk.encode(prompt, add_special_tokens=False).ids)[:max_length]

    def dec(ids: list[int]) -> str:
        return tk.decode(ids, skip_special_tokens=True)

    return enc, dec, eos


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return path.stat().st_size


def measure(artifact: Path, tokenizer: Path, test: Path, threads: int, pp: int, tg: int, reps: int,
            eval_samples: int, max_new_tokens: int, max_length: int) -> dict[str, Any]:
    from edgedistill.toolchain.llm.data import read_jsonl

    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    if artifact.suffix == ".gguf":  # llama.cpp tokenises like the HF tokenizer (tested): no torch/transformers here
        from edgedistill.runtimes.llama_cpp import LlamaCppSession

        cpp = LlamaCppSession(artifact, threads=threads, n_ctx=max(512, max_length + max_new_tokens))
        sess: LLMSession = cpp
        llm = cpp._llm
        eos = llm.token_eos()

        def enc(prompt: str) -> list[int]:
            return cpp.tokenize(prompt, add_bos=True)[:max_length]

        def dec(ids: list[int]) -> str:
            return llm.detokenize(ids).decode("utf-8", errors="replace")
    elif artifact.suffix == ".onnx":  # numpy + onnxruntime + tokenizers only, as on a device (no torch)
        from edgedistill.runtimes.ort_llm import OrtLLMSession

        sess = OrtLLMSession(artifact, threads)
        enc, dec, eos = _plain_tokenizer(tokenizer, max_length)
    else:
        from edgedistill.runtimes.torch_lm import TorchLMSession
        from edgedistill.toolchain.llm.tokenizer import encode, load_tokenizer

        tok = load_tokenizer(tokenizer)
        sess = TorchLMSession(artifact, threads)
        eos = tok.eos_token_id

        def enc(prompt: str) -> list[int]:
            return encode(tok, prompt, None, max_length).input_ids

        def dec(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)
    load_s, runtime = time.perf_counter() - t0, sess.describe()
    speed = sess.bench(pp, tg, reps)
    examples = read_jsonl(test)[:eval_samples]
    gen = generate_and_score(sess, examples, enc, dec, max_new_tokens, eos)
    import numpy as np

    return {"schema": SCHEMA, "artifact": str(artifact), "runtime": runtime, "load_seconds": load_s, **speed,
            "ttft_ms": float(np.mean(gen["ttfts"]) * 1000) if gen["ttfts"] else None,
            "ttft_ms_sd": float(np.std(gen["ttfts"]) * 1000) if gen["ttfts"] else None,
            "eval_generated_tokens": gen["new_tokens"], "eval_seconds": gen["seconds"], **gen["score"],
            "samples": gen["samples"], "peak_rss_mb": peak_rss_mb(), "rss_before_load_mb": rss_before,
            "size_bytes": _size(artifact)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pp", type=int, default=64)
    ap.add_argument("--tg", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eval-samples", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-length", type=int, default=320)
    a = ap.parse_args(argv)
    quiet_libraries()
    doc = measure(a.artifact, a.tokenizer, a.test, a.threads, a.pp, a.tg, a.reps, a.eval_samples,
                  a.max_new_tokens, a.max_length)
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
