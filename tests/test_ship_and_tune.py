"""Ship the best student, never a worse one: the CE-only student wins on validation here, so it is exported and
recommended; and KD tuning runs on the cached teacher without ever reading the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_recipe
from tests.test_cli import cli


@pytest.mark.slow
def test_a_better_ce_only_student_is_the_one_shipped(tmp_path: Path) -> None:
    """The teacher gets 1 step (a near-random teacher) and the KD loss is pure KD (alpha 1): the KD student learns
    noise, the CE-only student learns the labels, and validation says so."""
    r = tiny_recipe(data={"kind": "digits", "labelled_per_class": None},
                    distill={"train": {"epochs": 2, "batch_size": 64}, "response": {"alpha": 1.0, "temperature": 4.0}},
                    export={"formats": ["onnx"], "onnx": {"variants": ["fp32"]}})
    r["teacher"]["train"] = {"epochs": 1, "max_steps": 1}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    res = cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {m["name"]: m for m in rep["models"]}
    base, kd = rows["baseline-student"], rows["kd-student"]
    assert base["val_accuracy"] > kd["val_accuracy"], (base, kd)
    s = rep["summary"]
    assert s["shipped_student"] == "baseline" and "highest validation accuracy: baseline" in s["shipped_reason"]
    assert rows["student-fp32"]["source"] == "baseline" and s["recommended"] == "student-fp32"
    assert "shipping the baseline student: highest validation accuracy" in res.stderr
    assert "Shipped student: **baseline**" in (tmp_path / "run" / "report.md").read_text()


class _Poison:
    """Stands in for the test split: any use raises."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self) -> int:
        raise AssertionError("the test split was read (len)")

    def __getitem__(self, key: object):  # type: ignore[no-untyped-def]
        raise AssertionError("the test split was read (indexing)")


def test_tuning_never_reads_the_test_split(tmp_path: Path) -> None:
    from edgedistill.toolchain.vision.data import load_vision_data
    from edgedistill.toolchain.vision.distill.cache import run_teacher
    from edgedistill.toolchain.vision.distill.tune import tune_kd
    from edgedistill.toolchain.vision.models import create
    from edgedistill.toolchain.vision.recipe import DataConfig, DistillConfig, TrainConfig, TuneConfig

    data = load_vision_data(DataConfig(labelled_per_class=5))
    data.test_x, data.test_y = _Poison(), _Poison()  # type: ignore[assignment]
    torch.manual_seed(0)
    teacher = create("mobilenetv3_small_050", 10).eval()
    cached = run_teacher(teacher, data.train_x, None, desc=None)
    cfg = DistillConfig(train=TrainConfig(epochs=2, batch_size=128, max_steps=4),
                        tune=TuneConfig(trials=3, temperature=(1.0, 6.0), alpha=(0.3, 0.95), lr=(1e-3, 1e-2)))
    kept = []
    res = tune_kd(data, cfg, cached, lambda: create("mobilenetv3_small_050", 10), 0, tmp_path / "study",
                  lambda s, v, p: kept.append((v, p)))
    assert len([t for t in res.trials if t["state"] == "complete"]) == 3
    assert set(res.best_params) == {"temperature", "alpha", "lr"} and 1.0 <= res.best_params["temperature"] <= 6.0
    assert kept and kept[-1][0] == res.best_value  # the best trial's student was handed back to be saved
    # an interrupted search resumes: a second call with a larger budget runs only the extra trials
    cfg2 = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": 4})})
    res2 = tune_kd(data, cfg2, cached, lambda: create("mobilenetv3_small_050", 10), 0, tmp_path / "study",
                   lambda s, v, p: None)
    assert len(res2.trials) == 4


@pytest.mark.slow
def test_tuned_student_in_a_run(tmp_path: Path) -> None:
    """distill.tune in a run: a kd-tuned candidate, the trial table in the report, the choice written back into
    the run's recipe.yaml; a re-run skips the stage and keeps the choice there."""
    r = tiny_recipe(distill={"train": {"epochs": 1, "max_steps": 3}, "tune": {"trials": 2}},
                    export={"formats": ["onnx"], "onnx": {"variants": ["fp32"]}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    out = tmp_path / "run"
    res = cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert "kd-tuned-student" in {m["name"] for m in rep["models"]}
    tuning = rep["summary"]["tuning"]
    assert len(tuning["trials"]) == 2 and set(tuning["chosen"]) == {"temperature", "alpha"}
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["distill"]["tune"]["chosen"] == tuning["chosen"]
    again = cli("run", str(recipe), "--out", str(out))
    assert again.returncode == 0 and "distill: unchanged, skipped" in again.stderr
    assert yaml.safe_load((out / "recipe.yaml").read_text())["distill"]["tune"]["chosen"] == tuning["chosen"]
