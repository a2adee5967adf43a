"""``export --auto`` for vision runs (the framework: :mod:`edgedistill.toolchain.auto_select`): every exported
student artifact measured on the device by the bench machinery, scored on the saved test split, against its
PyTorch student's test accuracy."""

from __future__ import annotations

from typing import Any

from edgedistill.benchmarks.harness import BenchItem, measure_devices
from edgedistill.benchmarks.select import Candidate
from edgedistill.core.fileio import read_json
from edgedistill.toolchain.auto_select import Listed, auto_threads, device_candidates
from edgedistill.toolchain.vision.report import artifact_bar


def auto_candidates(ctx: Any, spec: str) -> tuple[list[Candidate], str | None, str]:
    """The student's artifacts on ``spec`` at the fewest threads the bench measures, with the settings and the
    result folder the bench stage uses (so it reuses these measurements)."""
    from edgedistill.toolchain.vision.stages import REFERENCE_LOGITS

    run, cfg = ctx.run, ctx.recipe.bench
    arts = read_json(run.path("export", "artifacts.json"))
    threads = auto_threads(list(cfg.threads))
    items = [BenchItem(a["name"], run.root / a["file"]) for a in arts]
    ctx.console.print(f"  export --auto: measuring {len(items)} artifact(s) on {spec}", highlight=False)
    matrix = measure_devices(items, [spec], threads, run.path("data", "test.npz"), run.path("bench", "x").parent,
                             cfg.warmup, cfg.runs, cfg.profiles, force=ctx.force,
                             reference=run.path("export", REFERENCE_LOGITS), processes=cfg.processes)
    source = {role: read_json(run.path("students", f"{role}.json"))["test_accuracy"]
              for role in {a["source"] for a in arts}}
    by_name = {a["name"]: a for a in arts}

    def score(name: str, doc: dict[str, Any]) -> tuple[float | None, float | None]:
        return doc.get("accuracy"), source.get(by_name[name]["source"])

    listed = [Listed(a["name"], a["file"], a["format"], a["variant"], bool(a["parity"]["ok"]),
                     str(a["parity"].get("criterion", "")), artifact_bar(a)) for a in arts]
    entry = matrix[spec]
    t = entry.get("threads") or threads
    return (device_candidates(run, "vision", entry, listed, score), entry.get("label"),
            f"p50 latency, batch 1, at {t[0]} thread(s)")
