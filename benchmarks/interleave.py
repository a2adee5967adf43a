"""Interleaved latency measurement for the gate: the baseline's and the candidate's copy of each artifact measured
by the agent in alternating fresh processes (A B, B A, A B, ...) within one job, so slow drift of the machine
(other tenants, thermal state, frequency) hits both alike and cancels in each round's ratio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.devices.local import AgentJob, run_local


@dataclass(frozen=True)
class Pair:
    """One artifact in both runs; ``options`` and ``eval_npz`` as the bench stage gave the agent."""

    name: str
    candidate: Path
    baseline: Path
    runtime: str | None = None
    options: tuple[str, ...] = ()
    eval_npz: Path | None = None


def interleave(pairs: list[Pair], rounds: int, threads: int, warmup: int, runs: int,
               runner: Callable[[AgentJob], dict[str, Any]] = run_local,
               progress: Callable[[], None] | None = None) -> dict[str, dict[str, list[list[float]]]]:
    """``rounds`` rounds per pair, each one baseline and one candidate process in alternating order; returns
    ``{name: {"candidate": [samples per round], "baseline": [...]}}``."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for p in pairs:
        got: dict[str, list[list[float]]] = {"candidate": [], "baseline": []}
        for r in range(rounds):
            order = ("baseline", "candidate") if r % 2 == 0 else ("candidate", "baseline")
            for side in order:
                path = p.candidate if side == "candidate" else p.baseline
                doc = runner(AgentJob(path, threads, p.eval_npz, p.runtime, warmup, runs, False, None, p.options))
                got[side].append(doc["samples_ms"])
                if progress is not None:
                    progress()
        out[p.name] = got
    return out
