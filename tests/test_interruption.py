"""Nothing lost when a job dies: `edgedistill run` is SIGKILLed inside each long stage (at a random moment once the
stage is under way), re-run each time with the same command, and finishes with final artifacts byte-identical
(sha256) to an uninterrupted run with the same seed; nothing the killed run started (teacher server, agents,
converter) is left running. And the pieces that make that hold: folders swapped in atomically, children that die
with their parent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from edgedistill.core.fileio import atomic_dir, atomic_path, sha256_path
from edgedistill.toolchain.rundir import RunDir
from edgedistill.toolchain.training import TRAIN_STATE
from tests.conftest import tiny_recipe
from tests.test_llm_pipeline import _small_llm_recipe

#: how long after a stage is seen under way the kill may land (seconds, uniform)
KILL_JITTER_S = 0.4
#: how long the children of a killed run may take to exit (SIGTERM from the kernel, then their own shutdown)
ORPHAN_GRACE_S = 30.0


def _run(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgedistill.toolchain.cli", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(p: subprocess.Popen, timeout: float = 900) -> str:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return err


def _kill_when(recipe: Path, out: Path, under_way: Callable[[], bool], rng: random.Random,
               seen: list[str] | None = None) -> bool:
    """Start the run, SIGKILL it at a random moment after ``under_way()`` turns true (``seen`` gets what ran under
    it then) and check that nothing it started outlives it; False when the run finished before the condition was
    seen (the stage was already done)."""
    p = _run(recipe, out)
    deadline = time.monotonic() + 600
    while not under_way():
        if p.poll() is not None:
            _finish(p)
            return False
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, KILL_JITTER_S))
    if seen is not None:
        seen += _left_running(str(out))
    p.send_signal(signal.SIGKILL)
    p.wait()
    _assert_nothing_left(out)
    return True


def _left_running(marker: str) -> list[str]:
    """Processes (other than this one) whose command line names ``marker``, e.g. the run directory."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["pid"] != os.getpid() and any(marker in part for part in cmd):
            found.append(f"{proc.info['pid']}: {' '.join(cmd)[:200]}")
    return found


def _assert_nothing_left(out: Path) -> None:
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while (left := _left_running(str(out))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running after the run was killed: {left}"


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
    stages = {"teacher training": _glob(run, f"teacher/{TRAIN_STATE}*.pt"),
              "KD training": _glob(run, f"students/kd-{TRAIN_STATE}*.pt"),
              "export": _glob(run, "export/*.onnx"),
              "bench": _glob(run, "bench/*-t1.json")}
    killed = [name for name, cond in stages.items() if _kill_when(recipe, run, cond, rng)]
    assert killed == list(stages), killed  # each kill landed inside its stage
    _finish(_run(recipe, run))
    _same_artifacts(ref, run, ["teacher/teacher.safetensors", "students/kd.safetensors", "export/*.onnx",
                               "export/reference-logits.npy"])
    assert (run / "report.json").is_file() and not list(run.rglob(f"*{TRAIN_STATE}*"))


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

    stages = {"teacher training": _glob(run, f"teacher/{TRAIN_STATE}*.pt"),
              "KD training": _glob(run, f"students/kd-fkl-{TRAIN_STATE}*.pt"),
              "black-box collection": collected,
              "SFT": _glob(run, f"blackbox/{TRAIN_STATE}*.pt"),
              "export": _glob(run, "export/*.gguf"),
              "bench": _glob(run, "bench/*-t1.json")}
    seen: dict[str, list[str]] = {}
    killed = [name for name, cond in stages.items() if _kill_when(recipe, run, cond, rng, seen.setdefault(name, []))]
    assert killed == list(stages), killed
    # the orphan check is not vacuous: the teacher server was serving when the collection was killed
    assert any("llama_cpp.server" in cmd for cmd in seen["black-box collection"]), seen["black-box collection"]
    _finish(_run(recipe, run))
    _same_artifacts(ref, run, ["teacher/model/*.safetensors", "students/kd-fkl/*.safetensors",
                               "students/sft/*.safetensors", "export/*.gguf"])
    assert (run / "report.json").is_file() and not list(run.rglob(f"*{TRAIN_STATE}*"))


_PARENT = """
import subprocess, sys
from edgedistill.core.procs import dies_with_us
cmd = [sys.executable, "-c", "import time; time.sleep(120)", sys.argv[2]]
child = subprocess.Popen(dies_with_us(cmd) if sys.argv[1] == "guarded" else cmd)
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_a_child_dies_with_its_killed_parent(tmp_path: Path, guarded: bool) -> None:
    """SIGKILL the parent: a child started through ``dies_with_us`` goes too; one started plainly is orphaned
    (the control: this test can fail)."""
    marker = str(tmp_path / "marker")
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, "guarded" if guarded else "plain", marker],
                              stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    try:
        child.wait(timeout=10)
        gone = True
    except psutil.TimeoutExpired:
        gone = False
    finally:
        for pid in _left_running(marker):
            psutil.Process(int(pid.partition(":")[0])).kill()
    assert gone == guarded


def test_atomic_dir_swaps_without_the_folder_ever_missing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"0")
    missing, stop = [], False

    def watch() -> None:
        while not stop:
            if not (target / "w.bin").is_file():
                missing.append(time.monotonic())

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(1, 60):
            with atomic_dir(target) as tmp:
                (tmp / "w.bin").write_bytes(str(i).encode())
                (tmp / "sub").mkdir()
                (tmp / "sub" / "x").write_text("x")
    finally:
        stop = True
        t.join()
    assert not missing, f"{target} was missing {len(missing)} times during the swaps"
    assert (target / "w.bin").read_bytes() == b"59"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .old-*/.tmp-* left behind


def test_atomic_dir_clears_a_crashed_writers_leftovers(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    target = tmp_path / "model"
    old = tmp_path / f".model.old-{dead.pid}"  # killed between "rename aside" and "rename in"
    old.mkdir()
    (old / "w.bin").write_text("old")
    (tmp_path / f".model.tmp-{dead.pid}").mkdir()
    with pytest.raises(ZeroDivisionError), atomic_dir(target):
        1 / 0  # noqa: B018 - a writer that fails: the folder it replaces must be the old one, put back
    assert (target / "w.bin").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_opening_a_run_clears_what_a_killed_atomic_write_left(tmp_path: Path) -> None:
    """A kill during ``torch.save`` or an ONNX save leaves ``atomic_path``'s hidden temp file (CI once found a
    teacher checkpoint's in a run killed mid-training); opening the run removes a dead writer's, not a live one's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with atomic_path(tmp_path / "run" / "teacher" / "train-state-abc.pt") as live:
        live.write_bytes(b"half")
        assert live.name.startswith(f".train-state-abc.{os.getpid()}-") and live.name.endswith(".tmp.pt")
        killed = [tmp_path / "run" / "teacher" / live.name.replace(str(os.getpid()), str(dead.pid)),
                  tmp_path / "run" / "export" / f".student-fp32.{dead.pid}-k3y.tmp.onnx"]
        for p in killed:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"half")
        keep = tmp_path / "run" / "export" / ".notes.tmp.txt"  # not an atomic_path name: not ours to remove
        keep.write_text("x")
        RunDir(tmp_path / "run")
        assert live.is_file() and keep.is_file() and not any(p.exists() for p in killed)
    assert not live.exists() and (tmp_path / "run" / "teacher" / "train-state-abc.pt").read_bytes() == b"half"


def test_atomic_dir_fsyncs_every_file_and_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("a")
        (tmp / "d").mkdir()
        (tmp / "d" / "b").write_text("b")
    names = {Path(p).name for p in synced}
    assert {"a", "b", "d"} <= names and str(tmp_path) in synced, synced
