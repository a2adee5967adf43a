"""``export --auto`` for LLM runs (the framework: :mod:`edgedistill.toolchain.auto_select`): every exported GGUF and
ONNX decoder of the best student measured on the device by the bench machinery (ms per generated token, and the
task score of its own greedy outputs), against the PyTorch student's task score on the same test prompts."""

from __future__ import annotations

from typing import Any

from edgedistill.benchmarks.harness import BenchItem, measure_devices
from edgedistill.benchmarks.select import Candidate
from edgedistill.core.fileio import read_json
from edgedistill.core.tolerances import parity_bar_name
from edgedistill.toolchain.auto_select import Listed, device_candidates


def auto_candidates(ctx: Any, spec: str) -> tuple[list[Candidate], str | None, str]:
    """The best student's artifacts on ``spec`` and that student (PyTorch) on the host, with the options, eval
    file and result folders the bench stage uses (so it reuses these measurements)."""
    from edgedistill.toolchain.llm.stages import (
        HOST_TIMEOUT_S,
        _agent_options,
        _reference_logits,
        _score_runs,
        _write_eval,
        bench_items,
    )

    run, b = ctx.run, ctx.recipe.bench
    listing = read_json(run.path("export", "artifacts.json"))
    source = BenchItem(f"{listing['best_student']}-student", run.path("students", listing["best_student"]),
                       "pytorch-llm")
    arts = bench_items(ctx, artifacts_only=True)
    eval_npz, out_dir = _write_eval(ctx), run.path("bench", "x").parent
    reference = _reference_logits(ctx, eval_npz)
    host = spec in ("host", "local")
    ctx.console.print(f"  export --auto: measuring {len(arts)} artifact(s) on {spec} and {source.name} on the host",
                      highlight=False)
    common = {"warmup": b.warmup, "runs": b.runs, "profile_paths": b.profiles, "force": ctx.force,
              "reference": reference}
    matrix = measure_devices([source, *(arts if host else [])], [spec if host else "host"], [b.threads], eval_npz,
                             out_dir, options=_agent_options(ctx, b.eval_samples), timeout_s=HOST_TIMEOUT_S, **common)
    if not host:
        matrix |= measure_devices(arts, [spec], [b.threads], eval_npz, out_dir,
                                  options=_agent_options(ctx, b.device_eval_samples), **common)
    _score_runs(ctx, matrix)
    src_runs = matrix[spec if host else "host"]["results"].get(source.name, {}).get("runs") or {}
    src_doc = next(iter(src_runs.values()), None)
    src_per = ((src_doc or {}).get("task") or {}).get("per_example") or []

    def score(name: str, doc: dict[str, Any]) -> tuple[float | None, float | None]:
        """The artifact's task score and its source's over the same (first n) test prompts."""
        per = (doc.get("task") or {}).get("per_example") or []
        n = min(len(per), len(src_per))
        if not n:
            return (doc.get("task") or {}).get("task_score"), None
        return sum(per[:n]) / n, sum(src_per[:n]) / n

    listed = [Listed(a["name"], a["file"], a["format"], a["variant"], bool(a["fidelity"]["ok"]),
                     str(a["fidelity"].get("criterion", "")), parity_bar_name("llm", a["format"], a["variant"]),
                     a.get("size_bytes")) for a in listing["artifacts"]]
    entry = matrix[spec]
    return (device_candidates(run, "llm", entry, listed, score), entry.get("label"),
            f"p50 latency per generated token at {b.threads} thread(s)")
