"""Nothing lost when a job dies: `edgedistill run` is SIGKILLed inside each long stage (at a random moment once the
stage is under way), re-run each time with the same command, and finishes with final artifacts byte-identical
(sha256) to an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from edgedistill.core.fileio import sha256_path
from tests.conftest import tiny_recipe
from tests.test_llm_pipeline import _small_llm_recipe

#: how long after a stage is seen under way the kill may land (seconds, uniform)
KILL_JITTER_S = 0.4


def _run(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgedistill.toolchain.cli", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(p: subprocess.Popen, timeout: float = 900) -> str:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return err


def _kill_when(recipe: Path, out: Path, under_way: Callable[[], bool], rng: random.Random) -> bool:
    """Start the run, SIGKILL it at a random moment after ``under_way()`` turns true; False when the run finished
    before the condition was seen (the stage was already done)."""
    p = _run(recipe, out)
    deadline = time.monotonic() + 600
    while not under_way():
        if p.poll() is not None:
            _finish(p)
            return False
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, KILL_JITTER_S))
    p.send_signal(signal.SIGKILL)
    p.wait()
    return True


def _glob(root: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(root.glob(pattern))


def _same_artifacts(a: Path, b: Path, patterns: list[str]) -> None:
    for pattern in patterns:
        files = sorted(p.relative_to(a) for p in a.glob(pattern))
        assert files, f"{pattern}: nothing in {a}"
        for rel in files:
            assert sha256_path(a / rel) == sha256_path(b / rel), f"{rel} differs after the interrupted run"


@pytest.mark.slow
def test_vision_run_killed_in_every_long_stage(tmp_path: Path) -> None:
    r = tiny_recipe(distill={"train": {"epochs": 3, "batch_size": 128}, "baseline": False},
                    bench={"warmup": 2, "runs": 20, "threads": [1]})
    r["teacher"]["train"] = {"epochs": 3, "batch_size": 128, "augment": True}  # augmentation RNG resumes too
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    ref, run = tmp_path / "ref", tmp_path / "killed"
    _finish(_run(recipe, ref))
    rng = random.Random(0)
    stages = {"teacher training": _glob(run, "teacher/train-state-*.pt"),
              "KD training": _glob(run, "students/kd-train-state-*.pt"),
              "export": _glob(run, "export/*.onnx"),
              "bench": _glob(run, "bench/*-t1.json")}
    killed = [name for name, cond in stages.items() if _kill_when(recipe, run, cond, rng)]
    assert killed == list(stages), killed  # each kill landed inside its stage
    _finish(_run(recipe, run))
    _same_artifacts(ref, run, ["teacher/teacher.safetensors", "students/kd.safetensors", "export/*.onnx",
                               "export/reference-logits.npy"])
    assert (run / "report.json").is_file() and not list(run.rglob("*train-state*"))


@pytest.mark.slow
def test_llm_run_killed_in_every_long_stage(tmp_path: Path) -> None:
    r = _small_llm_recipe()
    r["teacher"]["train"].update(steps=40, checkpoint_every=5)
    r["distill"]["train"].update(steps=12, checkpoint_every=2)
    r["blackbox"]["max_prompts"] = 24
    r["blackbox"]["train"].update(steps=8, checkpoint_every=2)
    r["export"] = {"gguf": ["f32", "q8_0"], "fidelity_samples": 2}
    recipe = tmp_path / "llm.yaml"
    recipe.write_text(yaml.safe_dump(r))
    ref, run = tmp_path / "ref", tmp_path / "killed"
    _finish(_run(recipe, ref))
    rng = random.Random(1)

    def collected() -> bool:
        j = run / "blackbox" / "collected.jsonl"
        return j.is_file() and j.read_bytes().count(b"\n") >= 3

    stages = {"teacher training": _glob(run, "teacher/train-state-*.pt"),
              "KD training": _glob(run, "students/kd-fkl-train-state-*.pt"),
              "black-box collection": collected,
              "SFT": _glob(run, "blackbox/train-state-*.pt"),
              "export": _glob(run, "export/*.gguf"),
              "bench": _glob(run, "bench/*-t1.json")}
    killed = [name for name, cond in stages.items() if _kill_when(recipe, run, cond, rng)]
    assert killed == list(stages), killed
    _finish(_run(recipe, run))
    _same_artifacts(ref, run, ["teacher/model/*.safetensors", "students/kd-fkl/*.safetensors",
                               "students/sft/*.safetensors", "export/*.gguf"])
    assert (run / "report.json").is_file() and not list(run.rglob("*train-state*"))
