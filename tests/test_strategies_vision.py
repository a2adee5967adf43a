"""Vision distillation strategies users combine (#14): deep mutual learning, a multi-teacher ensemble and factor
transfer — each a typed recipe option with its one-line errors, each tested on a small case, and all three in one
`edgedistill run`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from edgedistill.toolchain.recipe import RecipeError, builtin_text, load_recipe
from edgedistill.toolchain.vision.data import VisionData, load_vision_data
from edgedistill.toolchain.vision.distill import losses
from edgedistill.toolchain.vision.distill.cache import cache_key, cached_teacher_outputs, run_teacher
from edgedistill.toolchain.vision.distill.trainer import KDObjective, freeze, train_mutual
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, DistillConfig, FactorKD, TrainConfig
from tests.conftest import tiny_recipe
from tests.test_cli import cli

TEACHER_KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def data() -> VisionData:
    return load_vision_data(DataConfig(labelled_per_class=5))


def _small(d: VisionData, n: int = 64) -> VisionData:
    """The first ``n`` train images (half of them labelled) and 32 validation images: a few steps per epoch."""
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[::2] = True
    return replace(d, train_x=d.train_x[:n], train_y=d.train_y[:n], labelled=labelled, val_x=d.val_x[:32],
                   val_y=d.val_y[:32])


def _vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("vit_tiny_patch16_224", 10, TEACHER_KW)


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("mobilenetv3_small_050", 10)


# -- the recipe ------------------------------------------------------------------------------------------------

def _write(tmp_path: Path, r: dict) -> Path:
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


@pytest.mark.parametrize(("distill", "top", "expected"), [
    ({"mode": "online"}, {"ensemble": {"teachers": [{"name": "vit_tiny_patch16_224", "kwargs": TEACHER_KW}]}},
     "my.yaml: ensemble.teachers: the ensemble target is cached offline; set distill.mode: offline"),
    ({}, {"ensemble": {"teachers": [{"name": "vit_tiny_patch16_224", "kwargs": TEACHER_KW}], "weights": [1.0]}},
     "my.yaml: ensemble.weights: expected 2 (the main teacher first, then each of ensemble.teachers), got 1"),
    ({}, {"ensemble": {"weights": [1.0]}}, "my.yaml: ensemble.weights: set ensemble.teachers first"),
    ({}, {"ensemble": {"teachers": [{"name": "vit_tiny_patch16_224", "kwargs": TEACHER_KW}], "weights": [1, 0]}},
     "my.yaml: ensemble.weights: every weight must be > 0, got [1.0, 0.0]"),
    ({"feature": {"weight": 1.0, "teacher_layer": "blocks.1"}, "factor": {"weight": 1.0, "teacher_layer": "blocks.0"}},
     {}, "my.yaml: distill.factor.teacher_layer: the teacher is read at one layer and hint/attention use "
         "feature.teacher_layer 'blocks.1'; use it or leave this unset"),
    ({"factor": {"weight": 1.0, "rate": 2}}, {}, "my.yaml: distill.factor.rate: Input should be less than or equal"),
    ({"mutual": {"enabled": True, "temperature": 0}}, {},
     "my.yaml: distill.mutual.temperature: Input should be greater than 0, got 0"),
    ({"mutual": {"enabled": True, "peer_rate": 0.1}}, {}, "my.yaml: distill.mutual.peer_rate: unknown key"),
])
def test_impossible_combinations_are_one_line_errors(tmp_path: Path, distill: dict, top: dict,
                                                     expected: str) -> None:
    r = tiny_recipe(**top)
    r["distill"].update(distill)
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, r))
    msg = str(err.value)
    assert msg.removeprefix(str(tmp_path) + "/").startswith(expected) and "\n" not in msg, msg


def test_the_new_sections_have_defaults_and_show_in_the_builtin_recipe() -> None:
    r = load_recipe("vit-to-mobilenet")
    assert not r.distill.mutual.enabled and r.distill.factor.weight == 0 and r.ensemble.teachers == []
    assert r.distill.teacher_layer is None  # no feature loss on: the cache holds no map
    text = builtin_text("vit-to-mobilenet")
    assert "mutual: {enabled: false" in text and "factor: {weight: 0.0" in text and "\nensemble:" in text
    # factor's layers default to the hint's; a factor-only recipe reads the teacher there
    cfg = DistillConfig(factor=FactorKD(weight=1.0))
    assert (cfg.teacher_layer, cfg.factor_student_layer) == ("blocks.3", "blocks.2")


# -- multi-teacher ensemble ----------------------------------------------------------------------------------

def test_cached_ensemble_target_is_the_weighted_mean_of_the_teachers_distributions(tmp_path: Path,
                                                                                    data: VisionData) -> None:
    """Three differently seeded teachers (one of another shape), weights 0.5/0.3/0.2, T = 4: the cached target's
    softmax at T equals sum_m w_m softmax(z_m / T) to 1e-6, from the file as from the first pass; the key covers
    every teacher."""
    x = data.train_x[:48]
    teachers = [_vit(0), _vit(1), freeze(_student(2))]
    for t in teachers:
        freeze(t)
    weights, temp = [0.5, 0.3, 0.2], 4.0
    calls: list[int] = []

    def loader(i: int):  # type: ignore[no-untyped-def]
        return lambda: calls.append(i) or teachers[i]

    key = cache_key("main-sha", "data", None, ["main-sha", "m1", "m2"])
    args = (key, tmp_path, x, None, loader(0), [loader(1), loader(2)], weights)
    first, path, hit = cached_teacher_outputs(*args)
    again, _, hit2 = cached_teacher_outputs(*args)
    assert (hit, hit2, sorted(calls)) == (False, True, [0, 1, 2])  # every teacher ran once, then the file served
    expected = sum(w * F.softmax(run_teacher(t, x, None, desc=None).logits / temp, dim=-1)
                   for w, t in zip(weights, teachers, strict=True))
    for out in (first, again):
        assert out.members is not None and out.members.shape == (48, 3, 10)
        got = F.softmax(out.target_logits(temp) / temp, dim=-1)
        assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
        assert torch.equal(out.logits, out.members[:, 0])  # the main teacher's own logits stay as they were
    assert torch.allclose(first.take(torch.arange(5)).target_logits(temp), first.target_logits(temp)[:5])
    # the teachers disagree, so the mixture is none of them
    assert not torch.allclose(expected, F.softmax(first.logits / temp, dim=-1), atol=1e-3)
    assert cache_key("main-sha", "data", None, ["main-sha", "m1", "other"]) != key
    assert cache_key("main-sha", "data", None) != key


# -- deep mutual learning ------------------------------------------------------------------------------------

def _dml_cfg(epochs: int, **train: object) -> DistillConfig:
    return DistillConfig(train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, weight_decay=0.0, **train),
                         mutual={"enabled": True, "weight": 1.0, "temperature": 2.0, "peer_lr": 1e-3})


def test_mutual_learning_updates_both_models_and_its_loss_decreases(tmp_path: Path, data: VisionData) -> None:
    small = _small(data)
    student, peer = _student(), _vit(0)
    s0 = [p.detach().clone() for p in student.parameters()]
    p0 = [p.detach().clone() for p in peer.parameters()]
    res = train_mutual(student, peer, small, _dml_cfg(epochs=20), tmp_path / "ckpt.pt", seed=0)
    assert res.steps == 40
    changed = lambda before, m: sum(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))  # noqa: E731
    assert changed(s0, student) > 0.9 * len(s0) and changed(p0, peer) > 0.9 * len(p0)

    def ratio(key: str) -> float:  # the last three logged losses over the first three (logged every 2 steps)
        v = [h[key] for h in res.history]
        return sum(v[-3:]) / sum(v[:3])

    assert ratio("loss") < 0.7 and ratio("student") < 0.6 and ratio("peer") < 0.95, res.history
    assert not peer.training  # handed back in eval mode


def test_mutual_pair_resumes_to_the_same_student_and_peer(tmp_path: Path, data: VisionData) -> None:
    """Both models, the one optimiser (two parameter groups) and the schedule come back from the loop's checkpoint:
    a pair interrupted in epoch 2 ends bit-identical to one that was not."""
    small, cfg = _small(data), _dml_cfg(epochs=2)
    ref_s, ref_p = _student(), _vit(0)
    train_mutual(ref_s, ref_p, small, cfg, tmp_path / "ref.pt", seed=0)

    student, peer = _student(), _vit(0)
    calls = []

    def die_on_third(_m: object, _i: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    hook = peer.register_forward_pre_hook(die_on_third)
    ckpt = tmp_path / "pair.pt"
    with pytest.raises(KeyboardInterrupt):
        train_mutual(student, peer, small, cfg, ckpt, seed=0)
    hook.remove()
    blob = torch.load(ckpt, weights_only=True)
    assert blob["step"] == 2 and any(k.startswith("peer.") for k in blob["extra"])
    assert len(blob["opt"]["param_groups"]) == 2 and blob["opt"]["param_groups"][1]["max_lr"] == 1e-3
    student, peer = _student(), _vit(0)  # a fresh process: both start over from their initial weights
    res = train_mutual(student, peer, small, cfg, ckpt, seed=0)
    assert res.steps == 4
    for a, b in ((student, ref_s), (peer, ref_p)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- factor transfer ------------------------------------------------------------------------------------------

def test_factor_transfer_paraphraser_learns_and_translator_follows(tmp_path: Path, data: VisionData) -> None:
    from edgedistill.toolchain.vision.distill.factor import cached_paraphraser, train_paraphraser

    teacher = freeze(_vit(0))
    cached = run_teacher(teacher, data.train_x[:128], "blocks.1", desc=None)
    assert cached.feature is not None and cached.feature.shape == (128, 64, 4, 4)
    cfg = FactorKD(weight=1.0, teacher_layer="blocks.1", student_layer="blocks.1", rate=0.5, paraphraser_epochs=6)
    para, history, steps = train_paraphraser(cached.feature, cfg, 32, tmp_path / "p.pt", seed=0)
    rec = [h["reconstruction"] for h in history]
    assert steps == 24 and rec[-1] < 0.7 * rec[0], rec  # the auto-encoder learns to reconstruct the teacher's map
    assert not para.training and all(not p.requires_grad for p in para.parameters())

    # cached: a second request for the same key never calls for the teacher's maps
    def no_features() -> torch.Tensor:
        raise AssertionError("the cached paraphraser was retrained")

    first, info = cached_paraphraser("k", tmp_path / "cache", lambda: cached.feature, cfg, 32, tmp_path / "c.pt", 0,
                                     max_steps=4)
    second, info2 = cached_paraphraser("k", tmp_path / "cache", no_features, cfg, 32, tmp_path / "c.pt", 0, 4)
    assert (info.hit, info2.hit, info2.steps) == (False, True, 4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))

    # the translator: gradients reach it, and the factor loss falls over a few steps on a fixed batch
    factors = para.factors(cached.feature)
    assert factors.shape == (128, 32, 4, 4)
    target = replace(cached, factor=factors).take(torch.arange(32))
    dcfg = DistillConfig(response={"alpha": 0.0}, factor=cfg)
    student = _student()
    objective = KDObjective(dcfg, student, None, data.train_x[:1], factor_channels=32)
    assert objective.translator is not None
    opt = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=3e-3)
    x, labels = data.train_x[:32], torch.full((32,), losses.IGNORE)  # no labels: the factor term alone
    factor_losses = []
    for i in range(10):
        student.train()
        loss, parts = objective(student, x, labels, target)
        opt.zero_grad()
        loss.backward()
        if i == 0:
            grads = [p.grad for p in objective.translator.parameters()]
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        opt.step()
        factor_losses.append(parts["factor"])
    objective.remove_taps()
    assert factor_losses[-1] < 0.8 * factor_losses[0], factor_losses


def test_factor_transfer_loss_is_the_normalised_l1() -> None:
    s, t = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    def unit(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1) / v.flatten(1).norm(dim=1, keepdim=True)

    us, ut = unit(s), unit(t)
    assert losses.factor_transfer(s, t).item() == pytest.approx((us - ut).abs().sum(1).mean().item(), rel=1e-6)
    assert losses.factor_transfer(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free


# -- all three in one run ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_with_every_vision_strategy(tmp_path: Path) -> None:
    """`edgedistill run` on a tiny recipe with every strategy at once: an extra teacher trained by the teacher
    stage, the KD student on the ensemble target plus factor transfer, the mutual candidate with its peer, a
    self-distilled student whose final head takes the same KD losses (factor included), and a chain whose first
    link learns from the ensemble; all in the report; a second run skips every stage."""
    r = tiny_recipe(
        ensemble={"teachers": [{"name": "vit_tiny_patch16_224", "kwargs": TEACHER_KW,
                                "train": {"epochs": 1, "max_steps": 2}}], "weights": [2, 1]},
        distill={"train": {"epochs": 1, "max_steps": 2}, "mutual": {"enabled": True},
                 "self_distill": {"enabled": True, "with_teacher": True, "exits": ["blocks.1"]},
                 "chain": {"assistants": [{"name": "mobilenetv3_small_050"}], "train": {"epochs": 1, "max_steps": 2}},
                 "factor": {"weight": 0.5, "teacher_layer": "blocks.1", "student_layer": "blocks.1",
                            "paraphraser_epochs": 1}},
        export={"formats": ["onnx"], "onnx": {"variants": ["fp32"]}, "teacher": False})
    recipe = _write(tmp_path, r)
    out = tmp_path / "run"
    res = cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "teacher" / "ensemble-1.safetensors").is_file()
    metrics = json.loads((out / "teacher" / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert [m["seed"] for m in ens["members"]] == [0, 1] and ens["weights"] == pytest.approx([2 / 3, 1 / 3])
    kd = json.loads((out / "students" / "kd.json").read_text())
    assert {"response", "factor"} <= set(kd["history"][-1])
    mutual = json.loads((out / "students" / "mutual.json").read_text())
    assert {"student", "peer"} <= set(mutual["history"][-1]) and 0 <= mutual["peer"]["test_accuracy"] <= 1
    sd = json.loads((out / "students" / "self-distill.json").read_text())
    assert {"response", "factor"} <= set(sd["history"][-1]) and set(sd["exits"]) == {"blocks.1", "final"}
    chain = json.loads((out / "students" / "chain.json").read_text())
    assert [lk["teacher"] for lk in chain["links"]] == ["teacher", "assistant-1"]
    rep = json.loads((out / "report.json").read_text())
    rows = {m["name"]: m for m in rep["models"]}
    assert {"baseline-student", "kd-student", "mutual-student", "self-distill-student", "chain-student"} <= set(rows)
    assert rows["mutual-student"]["peer_accuracy"] == mutual["peer"]["test_accuracy"]
    assert rep["summary"]["ensemble"]["test_accuracy"] == ens["test_accuracy"]
    assert rep["distill"]["paraphraser"]["steps"] == 2 and rep["distill"]["cache"]["teachers"] == 2
    assert "ensemble of 2 teachers" in (out / "report.md").read_text()
    again = cli("run", str(recipe), "--out", str(out))
    assert again.returncode == 0 and "distill: unchanged, skipped" in again.stderr
    assert "teacher: unchanged, skipped" in again.stderr
    # a different ensemble weighting is a different target: the chain's first link must not be reused
    from edgedistill.toolchain.pipeline import pipeline_of, run_stages
    from edgedistill.toolchain.recipe import parse_recipe
    from edgedistill.toolchain.rundir import RunDir

    r["ensemble"]["weights"] = [1, 2]
    a1 = out / "students" / "chain" / "assistant-1.json"
    before = json.loads(a1.read_text())["config_hash"]
    from rich.console import Console

    parsed = parse_recipe(r, "r.yaml")
    ctx = pipeline_of(parsed).context(parsed, RunDir(out), Console(quiet=True))
    run_stages(ctx, ["data", "teacher", "distill"])
    assert json.loads(a1.read_text())["config_hash"] != before
