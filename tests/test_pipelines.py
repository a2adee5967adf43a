"""One framework for both kinds: every CLI command on an LLM run, an LLM stage killed mid-training resumes from its
checkpoint to the same weights, and `distill.parallel: ddp` under `accelerate launch` matches one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgedistill.core.fileio import sha256_path
from edgedistill.toolchain.training import TRAIN_STATE
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)
from tests.test_cli import cli

#: two gloo ranks vs one process: same batches, globally normalised loss; differences are float reduction order
LOSS_MATCH_RTOL = 1e-4


def _llm_recipe(tiny: TinyLM, **distill: object) -> dict:
    """A KD-only LLM recipe on the shared tiny teacher folder and its tokenizer (a user's own checkpoint)."""
    arch = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "num_hidden_layers": 1}
    return {
        "kind": "llm", "name": "resume",
        "data": {"kind": "legal-briefs", "n_examples": 120, "val_fraction": 0.1, "test_fraction": 0.1,
                 "max_length": 160},
        "tokenizer": {"kind": "local", "path": str(tiny.dir)},
        "teacher": {"path": str(tiny.dir)},
        "student": {"arch": arch, "selection_samples": 2},
        "distill": {"top_k": 8, "losses": [{"name": "kd-fkl"}],
                    "train": {"steps": 24, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 2}, **distill},
        "blackbox": {"enabled": False},
        "export": {"gguf": ["f32"], "fidelity_samples": 2, "teacher": []},
        "bench": {"max_new_tokens": 8},
    }


def _new_run(root: Path, recipe: dict) -> Path:
    """A run directory holding only its recipe, as `edgedistill run` leaves it before the first stage."""
    root.mkdir(parents=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def _distill(run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgedistill.toolchain.cli", "distill", "--out", str(run), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_killed_llm_distill_resumes_to_the_same_student(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    recipe = _llm_recipe(tiny_lm)
    ref = _new_run(tmp_path / "ref", recipe)
    p = _distill(ref)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]

    run = _new_run(tmp_path / "killed", recipe)
    p = _distill(run)
    deadline = time.monotonic() + 600
    while not list((run / "students").glob(f"kd-fkl-{TRAIN_STATE}*.pt")):  # the first checkpoint: mid-training
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "students" / "kd-fkl.json").exists()  # it really died before finishing
    again = _distill(run)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resuming from step" in err, err[-2000:]
    meta = json.loads((run / "students" / "kd-fkl.json").read_text())
    assert meta["resumed_from"] > 0 and meta["steps"] == 24
    # same seed, same batches, optimiser and RNG state restored: bit-identical weights
    assert sha256_path(run / "students" / "kd-fkl") == sha256_path(ref / "students" / "kd-fkl")
    assert not list((run / "students").glob(f"*{TRAIN_STATE}*"))  # cleaned up once finished


@pytest.mark.slow
def test_ddp_distill_stage_matches_one_process(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """`distill.parallel: ddp, num_processes: 2` runs the recipe's distill stage under `accelerate launch` (two
    CPU ranks over gloo) through the same loop; the loss curve matches the one-process run."""
    histories = {}
    for name, extra in (("one", {}), ("two", {"parallel": "ddp", "num_processes": 2})):
        run = _new_run(tmp_path / name, _llm_recipe(tiny_lm, **extra) | {"name": name})
        p = _distill(run)
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        meta = json.loads((run / "students" / "kd-fkl.json").read_text())
        histories[name] = meta
    assert histories["one"]["processes"] == 1 and histories["two"]["processes"] == 2
    one = [h["loss"] for h in histories["one"]["history"]]
    two = [h["loss"] for h in histories["two"]["history"]]
    assert len(one) == len(two) > 2 and two == pytest.approx(one, rel=LOSS_MATCH_RTOL)


@pytest.mark.slow
def test_every_command_on_an_llm_run(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """run, distill, export, bench, report and gate take an LLM run directory like a vision one."""
    recipe = tmp_path / "r.yaml"
    r = _llm_recipe(tiny_lm)
    r["distill"]["train"]["steps"] = 4
    r["export"] = {"gguf": ["f32", "q8_0"], "fidelity_samples": 2}
    r["bench"] = {"pp_tokens": 8, "tg_tokens": 4, "repetitions": 1, "eval_samples": 2, "max_new_tokens": 6,
                  "warmup": 1, "runs": 3}
    r["gate"] = {"min_retention": 0.0001}
    recipe.write_text(yaml.safe_dump(r))
    out = tmp_path / "run"
    res = cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "recommended artifact" in res.stdout and "(llm)" in res.stdout
    # which artifact is recommended depends on timing (a loaded host may flip it); that both were built and
    # benched does not
    names = {m["name"] for m in json.loads((out / "report.json").read_text())["models"]}
    assert {"student-f32", "student-q8_0"} <= names, names
    res = cli("distill", "--out", str(out))
    assert res.returncode == 0 and "distill: unchanged, skipped" in res.stderr, res.stderr[-2000:]
    res = cli("report", "--out", str(out))
    assert res.returncode == 0 and "recommended artifact" in res.stdout, res.stdout[-2000:]
    assert cli("gate", "--out", str(out)).returncode in (0, 1)
    res = cli("gate", "--out", str(out), "--max-p50-ms", "0.000001")
    assert res.returncode == 1 and "gate failed" in res.stderr
    res = cli("export", "--out", str(out), "--formats", "tflite")
    assert res.returncode == 2 and "--formats: unknown ['tflite']; an LLM run exports gguf, onnx" in res.stderr
    res = cli("export", "--out", str(out), "--variants", "q8_0")
    assert res.returncode == 0, res.stderr[-2000:]
    listing = json.loads((out / "export" / "artifacts.json").read_text())
    assert [a["name"] for a in listing["artifacts"]] == ["student-q8_0"]
    res = cli("bench", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rep["models"]] == ["teacher", "baseline-student", "kd-fkl-student", "student-q8_0",
                                                  "teacher-f32"]  # the teacher's own file (export.teacher)
    res = cli("bench", "--out", str(out), "--force")
    assert res.returncode == 0 and "bench: unchanged" not in res.stderr
