"""Data loading (digits splits, a real image folder) and safe checkpoint reading."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgedistill.toolchain.vision.data import DataError, load_vision_data
from edgedistill.toolchain.vision.models import CheckpointError, build, create, read_state_dict
from edgedistill.toolchain.vision.recipe import DataConfig, ModelConfig


def test_digits_split_is_stratified_fixed_and_hashed() -> None:
    a = load_vision_data(DataConfig(labelled_per_class=20))
    b = load_vision_data(DataConfig(labelled_per_class=20))
    assert a.split_hash == b.split_hash
    assert (len(a.train_x), len(a.val_x), len(a.test_x)) == (1257, 180, 360)
    assert a.train_x.shape[1:] == (3, 32, 32) and a.train_x.dtype == torch.float32
    assert int(a.labelled.sum()) == 200
    assert torch.bincount(a.train_y[a.labelled]).tolist() == [20] * 10
    test_counts = torch.bincount(a.test_y).tolist()
    assert max(test_counts) - min(test_counts) <= 2  # stratified
    assert not set(a.split["train"]) & set(a.split["test"])
    assert load_vision_data(DataConfig(seed=1)).split_hash != a.split_hash


def _image_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(rng.normal(80 * c, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


def test_imagefolder_loads_resizes_and_splits(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    d = load_vision_data(DataConfig(kind="imagefolder", root=root, image_size=16, val_fraction=0.2,
                                    test_fraction=0.25))
    assert d.class_names == ["cat", "dog", "owl"]
    assert d.train_x.shape[1:] == (3, 16, 16)
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 36


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing: data.root is not a directory"):
        load_vision_data(DataConfig(kind="imagefolder", root=tmp_path / "missing"))
    root = _image_folder(tmp_path / "imgs", per_class=6)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken.png: cannot read image"):
        load_vision_data(DataConfig(kind="imagefolder", root=root))


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def test_checkpoints_load_safely(tmp_path: Path) -> None:
    model = create("mobilenetv3_small_050", 10)
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": model.state_dict()}, pth)  # a timm/Lightning-style wrapped state dict
    loaded = build(ModelConfig(name="mobilenetv3_small_050", checkpoint=pth), 10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(CheckpointError, match="evil.pth: refused to load"):
        read_state_dict(evil)
    with pytest.raises(CheckpointError, match="does not match the model"):
        build(ModelConfig(name="mobilenetv3_small_100", checkpoint=pth), 10)
    with pytest.raises(CheckpointError, match="nope.safetensors: checkpoint not found"):
        read_state_dict(tmp_path / "nope.safetensors")
