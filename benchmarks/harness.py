"""Run the agent over artifacts × thread counts, one fresh process each, resuming finished measurements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import read_json, sha256_file, sha256_json, write_json
from edgedistill.devices.local import AgentError, AgentJob, run_local


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
            progress: Any = None) -> dict[str, dict[str, Any]]:
    """Measure every item at every thread count. Scores accuracy (and saves logits) at the first thread count.

    Each result is saved as ``out_dir/<name>-t<threads>.json`` under a key of the artifact's sha256 and the
    settings, so an interrupted bench resumes where it stopped. Returns ``{name: {"runs": {threads: doc},
    "error": str | None}}``.
    """
    results: dict[str, dict[str, Any]] = {}
    for item in items:
        sha = sha256_file(item.path)
        entry: dict[str, Any] = {"runs": {}, "error": None}
        for i, t in enumerate(threads):
            score = i == 0
            job = AgentJob(item.path, t, eval_npz, item.runtime, warmup, runs, score,
                           out_dir / f"{item.name}-logits.npy" if score else None)
            key = sha256_json({"sha": sha, "job": job.argv()[2:], "eval": sha256_file(eval_npz)})
            cached = out_dir / f"{item.name}-t{t}.json"
            if cached.is_file() and read_json(cached).get("key") == key:
                entry["runs"][t] = read_json(cached)["result"]
            else:
                try:
                    doc = run_local(job)
                except AgentError as err:
                    entry["error"] = f"{item.name} at {t} thread(s): {err}"
                    break
                write_json(cached, {"key": key, "result": doc})
                entry["runs"][t] = doc
            if progress is not None:
                progress()
        results[item.name] = entry
    return results
