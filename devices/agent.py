"""The benchmark agent: one process measures one artifact and prints one JSON document.

Dependency-light on purpose (numpy + the runtime's own package): the same file runs in a fresh local process,
under emulation, over SSH on a board or over adb on a phone. It

1. loads the artifact with a runtime adapter at ``--threads`` threads,
2. times ``--warmup`` untimed then ``--runs`` timed batch-1 inferences (cycling through the eval images),
3. optionally scores the eval set shipped beside the artifact (``--eval test.npz`` with ``x``/``y``) and saves
   the logits (``--logits-out``) so the host can compute parity,
4. reports peak RSS: the process's high-water resident set (VmHWM; interpreter and runtime included),
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

SCHEMA = "edgedistill.agent/1"
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


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min())}


def measure(args: argparse.Namespace) -> dict:
    import numpy as np

    from edgedistill.runtimes import open_session, runtime_for

    runtime = args.runtime or runtime_for(args.artifact)
    ev = np.load(args.eval, allow_pickle=False) if args.eval else None
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
                 "latency_ms": _percentiles(times), "load_ms": load_ms,
                 "machine": {"platform": platform.platform(), "machine": platform.machine(),
                             "cpu_count": os.cpu_count(), "python": platform.python_version(),
                             "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else None}}
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
    p.add_argument("--artifact", required=True, help="model file (.onnx, .tflite, .safetensors reference)")
    p.add_argument("--runtime", default=None, help="runtime name (default: chosen by file suffix)")
    p.add_argument("--eval", default=None, help=".npz with x (N,...) float32 and y (N,) labels")
    p.add_argument("--shape", type=int, nargs="*", default=[3, 32, 32], help="input shape without --eval")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--score", action="store_true", help="score the whole eval set")
    p.add_argument("--logits-out", default=None, help="save eval logits (.npy) for parity checks")
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
