"""Run the agent over artifacts × thread counts, one fresh process each, resuming finished measurements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import read_json, sha256_file, sha256_json, sha256_path, write_json
from edgedistill.core.tolerances import fp32_ok
from edgedistill.devices.local import AgentError, AgentJob, run_local
from edgedistill.devices.transport import open_transport, parse_device


@dataclass(frozen=True)
class BenchItem:
    """A model to measure: ``name`` is its row in the report, ``path`` the file the agent loads."""

    name: str
    path: Path
    runtime: str | None = None


def resolve_threads(spec: list[int | str], cpu_count: int) -> list[int]:
    """``[1, "all"]`` → ``[1, cpu_count]`` without duplicates, in order."""
    out: list[int] = []
    for t in spec:
        n = cpu_count if t == "all" else int(t)
        if n not in out:
            out.append(n)
    return out


def measure(items: list[BenchItem], threads: list[int], eval_npz: Path, out_dir: Path, warmup: int, runs: int,
            progress: Any = None, runner: Callable[..., dict[str, Any]] = run_local,
            logits_dir: Path | None = None, key_extra: Any = None, options: tuple[str, ...] = (),
            timeout_s: float | None = None, force: bool = False, processes: int = 1) -> dict[str, dict[str, Any]]:
    """Measure every item at every thread count. Scores accuracy (and saves logits) at the first thread count.

    ``processes`` > 1 times each item in that many fresh processes, round-robin over the items (interference on a
    shared machine comes in bursts that slow a whole process 1.5-1.8x: benchmarks/RESULTS.md), and keeps the
    timing of the fastest process (``timeit``'s best-of-k); scores, logits and tokens come from the first.

    Each result is saved as ``out_dir/<name>-t<threads>.json`` under a key of the artifact's sha256 and the
    settings, so an interrupted bench resumes where it stopped. ``runner`` runs one job (default: a fresh local
    process; the device matrix passes a transport's ``run``); ``options`` go to the agent as they are (language
    models: ``--pp``, ``--generate``...); ``force`` re-measures what was measured. Returns ``{name: {"runs":
    {threads: doc}, "error": str | None}}``.
    """
    results: dict[str, dict[str, Any]] = {}
    fresh: list[tuple[dict[str, Any], int, AgentJob, Path, str]] = []
    (logits_dir or out_dir).mkdir(parents=True, exist_ok=True)
    for item in items:
        sha = sha256_path(item.path)
        entry: dict[str, Any] = {"runs": {}, "error": None}
        for i, t in enumerate(threads):
            score = i == 0
            job = AgentJob(item.path, t, eval_npz, item.runtime, warmup, runs, score,
                           (logits_dir or out_dir) / f"{item.name}-logits.npy" if score else None, options, timeout_s)
            key_obj: dict[str, Any] = {"sha": sha, "job": job.argv()[2:], "eval": sha256_file(eval_npz)}
            if key_extra is not None:
                key_obj["device"] = key_extra
            if processes > 1:
                key_obj["processes"] = processes
            key = sha256_json(key_obj)
            cached = out_dir / f"{item.name}-t{t}.json"
            if not force and cached.is_file() and _cached_key(cached) == key:
                entry["runs"][t] = read_json(cached)["result"]
            else:
                try:
                    doc = runner(job) if timeout_s is None else runner(job, timeout_s)
                except AgentError as err:
                    entry["error"] = f"{item.name} at {t} thread(s): {err}"
                    break
                write_json(cached, {"key": key, "result": doc})
                entry["runs"][t] = doc
                fresh.append((entry, t, job, cached, key))
            if progress is not None:
                progress()
        results[item.name] = entry
    for _ in range(processes - 1):
        for entry, t, job, cached, key in fresh:
            if entry["error"] is not None:
                continue
            again = replace(job, score=False, logits_out=None)
            try:
                other = runner(again) if timeout_s is None else runner(again, timeout_s)
            except AgentError as err:
                entry["error"] = f"{job.artifact.name} at {t} thread(s), repeat: {err}"
                continue
            entry["runs"][t] = _faster(entry["runs"][t], other)
            write_json(cached, {"key": key, "result": entry["runs"][t]})
    return results


#: what a repeat process replaces when it ran faster (everything else: scores, logits, tokens, the first's)
_TIMING = ("latency_ms", "samples_ms", "pp_tps", "tg_tps")


def _faster(doc: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    if other["latency_ms"]["p50"] >= doc["latency_ms"]["p50"]:
        return {**doc, "processes": doc.get("processes", 1) + 1}
    return {**doc, **{k: other[k] for k in _TIMING if k in other}, "processes": doc.get("processes", 1) + 1}


def _cached_key(path: Path) -> str | None:
    """The key a saved measurement was taken under; None for a torn or foreign file (it is re-measured)."""
    try:
        return read_json(path).get("key")
    except (ValueError, AttributeError):
        return None


def _load_reference(ref: Path) -> tuple[Any, Any]:
    """Logits from ``.npy``, or ``logits`` plus the ``rows`` to compare from ``.npz`` (an LLM's reference names its
    completion positions: the export's fidelity check scores those, so device and export figures are one measure)."""
    import numpy as np

    if ref.suffix != ".npz":
        return np.load(ref, allow_pickle=False), None
    with np.load(ref, allow_pickle=False) as z:
        return z["logits"], (z["rows"] if "rows" in z.files else None)


def _parity(ref: Path | None, other: Path, label: str = "host") -> dict[str, Any] | None:
    """Max |Δ|, KLD and top-1 agreement of a device's eval logits against ``ref`` (the host's, or the source
    model's; rows named by the reference only); None when either is missing."""
    import numpy as np

    if ref is None or not (ref.is_file() and other.is_file()):
        return None
    (a, rows), b = _load_reference(ref), np.load(other, allow_pickle=False)
    if a.ndim == b.ndim == 2 and a.shape[0] == b.shape[0] and a.shape[1] != b.shape[1]:
        v = min(a.shape[1], b.shape[1])  # a vocabulary padded in one file only: compare the shared rows
        a, b = a[:, :v], b[:, :v]
    if a.shape != b.shape:
        return {"reference": label, "error": f"logit shapes differ: {label} {a.shape}, device {b.shape}"}
    if rows is not None:
        a, b = a[rows], b[rows]
    la = a - np.logaddexp.reduce(a.astype(np.float64), axis=-1, keepdims=True)
    lb = b - np.logaddexp.reduce(b.astype(np.float64), axis=-1, keepdims=True)
    kld = float((np.exp(la) * (la - lb)).sum(-1).mean())
    diff = np.abs(a.astype(np.float64) - b)
    return {"reference": label, "max_abs_diff": float(diff.max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()), "kld": kld, "n": int(len(a)),
            "fp32_ok": fp32_ok(a, b)}


def _saved(out_dir: Path, name: str) -> dict[str, Any]:
    """The host's saved measurements of ``name`` (when this call did not measure the host itself)."""
    runs = {}
    for f in sorted(out_dir.glob(f"{name}-t*.json")):
        try:
            runs[f.stem.rsplit("-t", 1)[1]] = read_json(f)["result"]
        except (ValueError, KeyError, TypeError):
            continue
    return {"runs": runs}


def _tokenized(res: dict[str, Any] | None) -> list[list[int]] | None:
    return next((d["tokenized"] for d in (res or {}).get("runs", {}).values() if "tokenized" in d), None)


def _tokens_vs(host: dict[str, Any] | None, res: dict[str, Any]) -> dict[str, Any] | None:
    """How many test prompts a device's runtime tokenises exactly as the host's does (GGUF: llama.cpp's own
    tokenizer on each side); None when either side has no tokenizer of its own."""
    a, b = _tokenized(host), _tokenized(res)
    if a is None or b is None:
        return None
    same = sum(x == y for x, y in zip(a, b, strict=False))
    return {"reference": "host", "texts": len(a), "identical": same if len(a) == len(b) else 0}


def plan_devices(devices: list[str], threads: list[int | str], profile_paths: list[Path] | None = None
                 ) -> dict[str, list[int]]:
    """Thread counts each device will be measured at (an unusable spec plans none: it fails in the run)."""
    out: dict[str, list[int]] = {}
    for spec in devices:
        try:
            out[spec] = open_transport(parse_device(spec, profile_paths)).threads(threads)
        except Exception:  # reported with its reason by measure_devices
            out[spec] = []
    return out


def measure_devices(items: list[BenchItem], devices: list[str], threads: list[int | str], eval_npz: Path,
                    out_dir: Path, warmup: int, runs: int, profile_paths: list[Path] | None = None,
                    progress: Any = None, options: tuple[str, ...] = (), timeout_s: float | None = None,
                    force: bool = False, reference: Path | None = None, processes: int = 1
                    ) -> dict[str, dict[str, Any]]:
    """Artifacts × devices (``processes``: fresh processes per item on the host, see :func:`measure`). ``host``
    keeps the single-device layout (``out_dir/<name>-t<T>.json``); any other
    device writes under ``out_dir/devices/<slug>/``. A device that fails (unreachable, not set up, disconnected)
    is recorded with its reason and the others still run. With ``reference`` (the source model's eval logits, e.g.
    the PyTorch student's), every device's parity is also measured against it: the host is just another device,
    so a host whose int8 kernels misbehave is not taken as the truth. Returns ``{spec: {"spec", "transport", "label",
    "profile", "threads", "error", "results": {name: {"runs", "error", "parity_vs_host"}}}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    host_results: dict[str, Any] = {}
    for spec in sorted(devices, key=lambda d: d not in ("host", "local")):  # host first: parity needs its logits
        entry: dict[str, Any] = {"spec": spec, "transport": None, "label": None, "profile": None, "threads": [],
                                 "error": None, "results": {}}
        transport = None
        try:
            dev = parse_device(spec, profile_paths)
            transport = open_transport(dev)
            entry.update(transport.describe())
            entry["threads"] = transport.threads(threads)
            w, r = (warmup, runs) if transport.max_runs is None else (min(warmup, transport.max_runs[0]),
                                                                      min(runs, transport.max_runs[1]))
            transport.prepare()
            host_layout = dev.transport == "local"
            ddir = out_dir if host_layout else out_dir / "devices" / dev.slug
            extra = None if host_layout else {**transport.describe(), "profile": dev.profile.model_dump(
                mode="json", exclude={"source"})}
            entry["results"] = measure(items, entry["threads"], eval_npz, ddir, w, r, progress, runner=transport.run,
                                       key_extra=extra, options=options, timeout_s=timeout_s, force=force,
                                       processes=processes if host_layout else 1)
            if host_layout:
                host_results = entry["results"]
            for name, res in entry["results"].items():
                res["parity_vs_source"] = _parity(reference, ddir / f"{name}-logits.npy", "source")
                if not host_layout:
                    res["parity_vs_host"] = _parity(out_dir / f"{name}-logits.npy", ddir / f"{name}-logits.npy")
                    res["tokens_vs_host"] = _tokens_vs(host_results.get(name) or _saved(out_dir, name), res)
        except Exception as err:  # one device failing must not stop the others
            entry["error"] = f"{spec}: {type(err).__name__}: {err}" if not isinstance(err, AgentError) else str(err)
        finally:
            if transport is not None:
                transport.close()
        out[spec] = entry
    return out
