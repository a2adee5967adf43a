"""Image classification data as preprocessed tensors, split train/val/test with a fixed seed.

Both sources end up as float32 tensors of shape ``(N, 3, S, S)`` (normalised with the recipe's mean/std) and int64
labels ``(N,)``. The split is stratified and defined by sample indices; its definition and hash go into the run's
manifest, and the test split is saved with the run (``data/test.npz``) so any artifact can be re-scored later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from edgedistill.core.fileio import sha256_file, sha256_json
from edgedistill.toolchain.vision.recipe import DataConfig


class DataError(ValueError):
    """A dataset cannot be read; the message names the path and the fix."""


@dataclass
class VisionData:
    """Preprocessed splits. ``labelled`` marks train samples whose label a student may use."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    labelled: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    split: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def split_hash(self) -> str:
        return sha256_json(self.split)

    def save_test(self, path: Path) -> None:
        """Write the test split as ``x`` (N,3,S,S float32) and ``y`` (N, int64) in a pickle-free .npz."""
        from edgedistill.core.fileio import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=self.test_x.numpy(), y=self.test_y.numpy())


def _digits() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    return x, torch.from_numpy(d.target.astype(np.int64)), [str(c) for c in d.target_names]


def _imagefolder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise DataError(f"{root}: data.root is not a directory (expected one sub-folder per class)")
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{root}: {err}") from None
    xs, ys, files = [], [], {}
    for i in range(len(ds)):
        path = ds.samples[i][0]
        files[str(Path(path).relative_to(root))] = sha256_file(path)  # the bytes, not just the names
        try:
            x, y = ds[i]
        except Exception as err:  # PIL raises many types for a broken image
            raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
        xs.append(x[:3] if x.shape[0] >= 3 else x.expand(3, -1, -1))
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), list(ds.classes), sha256_json(files)


def _preprocess(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    if x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _labelled_mask(y: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    mask = np.zeros(len(y), dtype=bool)
    if per_class is None:
        mask[:] = True
        return mask
    rng = np.random.default_rng(seed)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        mask[rng.permutation(idx)[:per_class]] = True
    return mask


def load_vision_data(cfg: DataConfig) -> VisionData:
    """Load, preprocess and split the dataset named by ``cfg`` (deterministic for a given config)."""
    if cfg.kind == "digits":
        x, y, names = _digits()
        source = "sklearn.datasets.load_digits"
        content = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    else:
        assert cfg.root is not None
        x, y, names, content = _imagefolder(cfg.root, cfg.image_size)
        source = str(cfg.root)
    if len(names) < 2:
        raise DataError(f"{source}: need at least 2 classes, found {len(names)}")
    idx = np.arange(len(y))
    y_np = y.numpy()
    holdout = cfg.val_fraction + cfg.test_fraction
    try:
        train_idx, rest = train_test_split(idx, test_size=holdout, stratify=y_np, random_state=cfg.seed)
        val_idx, test_idx = train_test_split(
            rest, test_size=cfg.test_fraction / holdout, stratify=y_np[rest], random_state=cfg.seed)
    except ValueError as err:
        raise DataError(f"{source}: cannot split stratified ({err}); add images or lower the fractions") from None
    train_idx, val_idx, test_idx = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
    labelled = _labelled_mask(y_np[train_idx], cfg.labelled_per_class, cfg.seed)
    x = _preprocess(x, cfg)
    split = {
        "source": source,
        "content_sha256": content,  # every stage's key covers the pixels: replace an image and they re-run
        "classes": names,
        "preprocess": cfg.model_dump(mode="json", include={"image_size", "mean", "std"}),
        "seed": cfg.seed,
        "train": train_idx.tolist(),
        "val": val_idx.tolist(),
        "test": test_idx.tolist(),
        "train_labelled": np.flatnonzero(labelled).tolist(),
    }
    t = torch.from_numpy
    return VisionData(
        train_x=x[t(train_idx)], train_y=y[t(train_idx)], labelled=t(labelled),
        val_x=x[t(val_idx)], val_y=y[t(val_idx)], test_x=x[t(test_idx)], test_y=y[t(test_idx)],
        class_names=names, split=split,
    )
