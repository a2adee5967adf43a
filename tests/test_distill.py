"""Teacher cache reuse, the frozen teacher, composed KD losses, and resumable training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill.cache import cached_teacher_outputs
from edgedistill.toolchain.vision.distill.trainer import fit_epochs, freeze, train_student
from edgedistill.toolchain.vision.models import create
from edgedistill.toolchain.vision.recipe import DataConfig, DistillConfig, TrainConfig

TEACHER_KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return load_vision_data(DataConfig(labelled_per_class=5))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return freeze(create("vit_tiny_patch16_224", 10, TEACHER_KW))


def test_offline_cache_is_reused_without_building_the_teacher(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def load() -> torch.nn.Module:
        calls.append(1)
        return _teacher()

    x = data.train_x[:40]
    first, path, hit1 = cached_teacher_outputs("k1", tmp_path, x, "blocks.1", load)
    second, path2, hit2 = cached_teacher_outputs("k1", tmp_path, x, "blocks.1", load)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert path == path2 and path.is_file()
    assert torch.equal(first.logits, second.logits)
    assert second.feature is not None and second.feature.shape == (40, 64, 4, 4)  # ViT tokens as a 4×4 map
    _, _, hit3 = cached_teacher_outputs("other-key", tmp_path, x, "blocks.1", load)
    assert not hit3 and len(calls) == 2  # a different teacher/data key is a miss


def _all_losses(mode: str) -> DistillConfig:
    return DistillConfig(
        mode=mode, train=TrainConfig(epochs=1, max_steps=2, batch_size=16),
        feature={"weight": 1.0, "student_layer": "blocks.1", "teacher_layer": "blocks.1"},
        attention={"weight": 1.0}, relation={"distance_weight": 1.0, "angle_weight": 1.0})


def test_online_teacher_gets_no_gradient_and_student_learns(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = create("mobilenetv3_small_050", 10)
    s_before = [p.clone() for p in student.parameters()]
    res = train_student(student, data, _all_losses("online"), tmp_path / "ckpt.pt", seed=0, teacher=teacher)
    assert res.steps == 2
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters(), strict=True))
    parts = res.history[-1]
    assert {"response", "hint", "attention", "rkd_distance", "rkd_angle"} <= set(parts)


def test_offline_student_trains_on_cached_outputs(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.vision.distill.cache import run_teacher

    cached = run_teacher(_teacher(), data.train_x, "blocks.1", desc=None)
    student = create("mobilenetv3_small_050", 10)
    res = train_student(student, data, _all_losses("offline"), tmp_path / "ckpt.pt", seed=0, cached=cached)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(v)) for v in res.history[-1].values())


def test_fit_resumes_after_interruption(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    seen: list[int] = []
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.01)

    def step(idx: torch.Tensor, stop_at: int | None = None):  # type: ignore[no-untyped-def]
        seen.append(len(seen))
        if stop_at is not None and len(seen) == stop_at:
            raise KeyboardInterrupt
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        return loss, {"ce": float(loss)}

    ckpt = tmp_path / "state.pt"
    args = (cfg, torch.arange(32), 32, lambda: 0.5, ckpt, "t")
    with pytest.raises(KeyboardInterrupt):
        fit_epochs(model, lambda i: step(i, stop_at=7), *args)  # dies in epoch 2 (4 steps per epoch)
    assert ckpt.is_file()
    seen.clear()
    res = fit_epochs(model, step, *args)
    assert res.steps == 12 and len(seen) == 8  # epoch 1 was kept; epochs 2 and 3 ran again

