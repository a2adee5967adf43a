"""The benchmark agent: one process measures one artifact and prints one JSON document.

Dependency-light on purpose (numpy + the runtime's own package): the same file runs in a fresh local process,
under emulation, over SSH on a board or over adb on a phone. It

1. loads the artifact with a runtime adapter at ``--threads`` threads,
2. times ``--warmup`` untimed then ``--runs`` timed batch-1 inferences (cycling through the eval images),
3. optionally scores the eval set shipped beside the artifact (``--eval test.npz`` with ``x``/``y``) and saves
   the logits (``--logits-out``) so the host can compute parity,

   A language model (a GGUF, an ONNX decoder with ``--runtime onnxruntime-llm``, or a Hugging Face folder with
   ``pytorch-llm``) is measured per token instead: after a ``--pp``-token prompt, each of ``--runs`` greedy decode
   steps is one timed sample (so ``latency_ms`` is milliseconds per generated token), plus llama-bench-style
   pp/tg tokens/s over ``--reps`` repetitions. Its eval file holds token sequences (``ids`` ``(N, L)``,
   ``lengths`` ``(N,)``); the score is next-token top-1 accuracy and the saved logits are every position's,
   concatenated. With ``--generate N`` it also continues the first N prompts of the eval file (``prompt_ids``,
   ``prompt_lengths``, ``eos``) greedily for up to ``--max-new-tokens`` and returns the generated token ids with
   time-to-first-token: the host decodes and scores them with the task's scorer (the agent knows no task).
   When the eval file has the prompts' text (``texts``) and the runtime has its own tokenizer (GGUF), the ids it
   makes of them come back too (``tokenized``): the host checks that the device tokenises as it does.
4. returns every timed sample (``samples_ms``, in order) beside the percentiles, for statistics on the host;
5. reports peak RSS: the process's high-water resident set (VmHWM; interpreter and runtime included),
   and the RSS just before the model was loaded, so the model's own share can be read off.

Usage: ``python -m edgedistill.devices.agent --artifact m.onnx --eval test.npz --threads 1``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from typing import Any

SCHEMA = "edgedistill.agent/1"
#: runtimes whose sessions are language models (measured per generated token)
LLM_RUNTIMES = ("llama.cpp", "onnxruntime-llm", "pytorch-llm")
RSS_DEFINITION = ("peak resident set size of the agent process (Linux: VmHWM of /proc/self/status; elsewhere "
                  "getrusage ru_maxrss), Python interpreter and runtime library included")


def _rss_mb() -> float:
    """Current RSS from /proc (Linux/Android); falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    # Not ru_maxrss on Linux: it survives fork+exec, so a child of a 1 GB parent would report 1 GB.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def _size(path: str) -> int:
    """File size; an ONNX model with external data counts its data files too; a model folder its weights."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if f.endswith((".safetensors", ".bin", ".gguf", ".onnx", ".onnx_data")))
    size = os.path.getsize(path)
    data = path + "_data"
    return size + (os.path.getsize(data) if os.path.isfile(data) else 0)


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min())}


def _measure_llm(sess: Any, args: argparse.Namespace, ev: Any) -> dict:
    """Per-token decode latency, pp/tg tokens/s and (``--score``) next-token accuracy of a language model."""
    import numpy as np

    ids = [int(t) for t in np.random.default_rng(0).integers(3, sess.n_vocab, args.pp)]
    sess.prefill(ids)
    times, n = [], len(ids)
    for i in range(args.warmup + args.runs):
        if n >= args.ctx - 1:  # context full: start again from the prompt (not timed)
            sess.prefill(ids)
            n = len(ids)
        t = time.perf_counter()
        sess.decode(ids[i % len(ids)])
        n += 1
        if i >= args.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    doc: dict = {"unit": "ms per generated token", **sess.bench(args.pp, args.tg, args.reps)}
    doc["latency_ms"] = _percentiles(times)
    doc["samples_ms"] = [round(t, 5) for t in times]  # raw, in order: the gate's statistics need them
    if args.score and ev is not None:
        seqs = [list(map(int, row[:n])) for row, n in zip(ev["ids"], ev["lengths"], strict=True)]
        logits = [sess.logits(s) for s in seqs]
        hits = sum(int((lg[:-1].argmax(-1) == np.asarray(s[1:])).sum()) for lg, s in zip(logits, seqs, strict=True))
        doc["n_eval"] = sum(len(s) - 1 for s in seqs)
        doc["accuracy"] = hits / max(1, doc["n_eval"])
        doc["accuracy_definition"] = "next-token top-1 accuracy over the eval sequences"
        if args.logits_out:
            np.save(args.logits_out, np.concatenate(logits).astype(np.float32), allow_pickle=False)
    if args.score and ev is not None and "texts" in ev.files and hasattr(sess, "tokenize"):
        # the runtime's own tokenizer on the test prompts' text: the host compares devices' ids with its own
        doc["tokenized"] = [sess.tokenize(str(t)) for t in ev["texts"]]
    if args.generate and ev is not None:
        doc.update(_generate(sess, ev, args))
    return doc


def _generate(sess: Any, ev: Any, args: argparse.Namespace) -> dict:
    """Greedy continuations of the eval file's first ``--generate`` prompts: token ids and timings."""
    import numpy as np

    if "prompt_ids" not in ev:
        raise ValueError("--generate: the eval file has no prompt_ids/prompt_lengths")
    eos = int(ev["eos"]) if "eos" in ev and int(ev["eos"]) >= 0 else None
    out, ttfts, t0 = [], [], time.perf_counter()
    for row, n in list(zip(ev["prompt_ids"], ev["prompt_lengths"], strict=True))[:args.generate]:
        new, ttft = sess.generate([int(t) for t in row[:n]], args.max_new_tokens, eos)
        out.append([int(t) for t in new])
        ttfts.append(ttft * 1e3)
    secs = time.perf_counter() - t0
    return {"generated": out, "gen_seconds": secs, "gen_tokens": sum(map(len, out)),
            "ttft_ms": float(np.mean(ttfts)) if ttfts else None, "ttft_ms_sd": float(np.std(ttfts)) if ttfts else None}


def measure(args: argparse.Namespace) -> dict:
    import numpy as np

    from edgedistill.runtimes import open_session, runtime_for
    from edgedistill.runtimes.llm import LLMSession

    runtime = args.runtime or runtime_for(args.artifact)
    ev = np.load(args.eval, allow_pickle=False) if args.eval else None
    if runtime in LLM_RUNTIMES:
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        sess = open_session(runtime, args.artifact, threads=args.threads)
        load_ms = (time.perf_counter() - t0) * 1e3
        assert isinstance(sess, LLMSession)
        doc = {"schema": SCHEMA, "artifact": os.path.basename(args.artifact), "size_bytes": _size(args.artifact),
               "session": sess.describe(), "threads": args.threads, "batch": 1, "warmup": args.warmup,
               "runs": args.runs, "load_ms": load_ms, "machine": _machine(), **_measure_llm(sess, args, ev)}
        sess.close()
        return doc | {"rss_before_load_mb": rss_before, "peak_rss_mb": peak_rss_mb(), "rss_definition": RSS_DEFINITION}
    x = ev["x"].astype(np.float32) if ev is not None else np.zeros([1, *args.shape], dtype=np.float32)
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    sess = open_session(runtime, args.artifact, threads=args.threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    samples = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(len(x), 64))]
    for i in range(args.warmup):
        sess.run(samples[i % len(samples)])
    times = []
    for i in range(args.runs):
        s = samples[i % len(samples)]
        t = time.perf_counter()
        sess.run(s)
        times.append((time.perf_counter() - t) * 1e3)
    doc: dict = {"schema": SCHEMA, "artifact": os.path.basename(args.artifact),
                 "size_bytes": os.path.getsize(args.artifact), "session": sess.describe(),
                 "threads": args.threads, "batch": 1, "warmup": args.warmup, "runs": args.runs,
                 "latency_ms": _percentiles(times), "samples_ms": [round(t, 5) for t in times], "load_ms": load_ms,
                 "machine": _machine()}
    if args.score and ev is not None:
        logits = sess.run_all(x)
        doc["accuracy"] = float((logits.argmax(1) == ev["y"]).mean())
        doc["n_eval"] = len(x)
        if args.logits_out:
            np.save(args.logits_out, logits.astype(np.float32), allow_pickle=False)
    doc["rss_before_load_mb"] = rss_before
    doc["peak_rss_mb"] = peak_rss_mb()
    doc["rss_definition"] = RSS_DEFINITION
    return doc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Measure one model artifact and print one JSON document.")
    p.add_argument("--artifact", required=True, help="model file (.onnx, .tflite, .gguf, .safetensors reference)")
    p.add_argument("--runtime", default=None, help="runtime name (default: chosen by file suffix)")
    p.add_argument("--eval", default=None, help=".npz with x (N,...) float32 and y (N,) labels")
    p.add_argument("--shape", type=int, nargs="*", default=[3, 32, 32], help="input shape without --eval")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--score", action="store_true", help="score the whole eval set")
    p.add_argument("--logits-out", default=None, help="save eval logits (.npy) for parity checks")
    p.add_argument("--pp", type=int, default=64, help="language models: prompt tokens before timed decoding")
    p.add_argument("--tg", type=int, default=32, help="language models: tokens generated for tg tokens/s")
    p.add_argument("--ctx", type=int, default=512, help="language models: context length (restart when full)")
    p.add_argument("--reps", type=int, default=1, help="language models: pp/tg repetitions")
    p.add_argument("--generate", type=int, default=0, help="language models: continue this many eval prompts")
    p.add_argument("--max-new-tokens", type=int, default=64, help="language models: --generate's length limit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread caps must be in the environment before a runtime (OpenMP, MKL) initialises.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    try:
        doc = measure(args)
    except Exception as err:  # report, don't crash: the host records the failure with its reason
        print(json.dumps({"schema": SCHEMA, "error": f"{type(err).__name__}: {err}"}))
        return 1
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
