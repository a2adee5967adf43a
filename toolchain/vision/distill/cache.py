"""Offline teacher cache: the frozen teacher runs once over the training images; later epochs and later runs
with the same teacher weights, data and layers read its outputs from disk without even building the teacher.

One safetensors file per key, tensors ``logits (N, K)``, ``embedding (N, D)`` and optionally ``feature
(N, C, H, W)`` stored as float16 (features are hints; halving them halves the cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from edgedistill.core.fileio import atomic_path, sha256_json
from edgedistill.core.paths import cache_root
from edgedistill.toolchain.progress import progress_bar
from edgedistill.toolchain.vision.distill.features import FeatureTap
from edgedistill.toolchain.vision.models import logits_and_embedding


def default_cache_dir() -> Path:
    return cache_root() / "teacher"


@dataclass
class TeacherOutputs:
    logits: torch.Tensor
    embedding: torch.Tensor
    feature: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> TeacherOutputs:
        f = None if self.feature is None else self.feature[idx].float()
        return TeacherOutputs(self.logits[idx], self.embedding[idx], f)


def cache_key(teacher_sha256: str, data_hash: str, feature_layer: str | None) -> str:
    return sha256_json({"teacher": teacher_sha256, "data": data_hash, "feature_layer": feature_layer, "v": 1})


@torch.no_grad()
def run_teacher(teacher: nn.Module, x: torch.Tensor, feature_layer: str | None, batch_size: int = 128,
                desc: str | None = "teacher forward") -> TeacherOutputs:
    """Run a frozen teacher over ``x`` ``(N, 3, S, S)`` in eval mode, in batches (progress bar if ``desc``)."""
    teacher.eval()
    tap = FeatureTap(teacher, feature_layer) if feature_layer else None
    logits, embs, feats = [], [], []
    try:
        starts = range(0, len(x), batch_size)
        for start in progress_bar(starts, desc) if desc else starts:
            lg, emb = logits_and_embedding(teacher, x[start:start + batch_size])
            logits.append(lg)
            embs.append(emb)
            if tap is not None:
                feats.append(tap.value.half())
    finally:
        if tap is not None:
            tap.remove()
    return TeacherOutputs(torch.cat(logits), torch.cat(embs), torch.cat(feats) if feats else None)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_cached(path: Path, key: str, n: int, feature_layer: str | None) -> TeacherOutputs | None:
    """The cache file's outputs if it is whole and is what ``key`` asks for; else None (it is rebuilt)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    ok = (meta.get("key") == key and meta.get("sha256") == _digest(t) and t["logits"].shape[0] == n
          and t["embedding"].shape[0] == n and (("feature" in t) == (feature_layer is not None)))
    return TeacherOutputs(t["logits"], t["embedding"], t.get("feature")) if ok else None


def cached_teacher_outputs(key: str, cache_dir: Path, x: torch.Tensor, feature_layer: str | None,
                           load_teacher: Callable[[], nn.Module]) -> tuple[TeacherOutputs, Path, bool]:
    """Return the teacher's outputs for ``x``, from ``cache_dir`` when present and intact. ``load_teacher`` is
    called only on a miss. Returns ``(outputs, cache file, hit)``.

    The file records its key and a sha256 of its tensors: a truncated, edited or foreign file is rebuilt, never
    used (the key covers the teacher's weights, the data's pixels and the feature layer)."""
    path = cache_dir / f"teacher-{key[:24]}.safetensors"
    if path.is_file() and (hit := _load_cached(path, key, len(x), feature_layer)) is not None:
        return hit, path, True
    out = run_teacher(load_teacher(), x, feature_layer, desc="caching teacher outputs")
    tensors = {"logits": out.logits.contiguous(), "embedding": out.embedding.contiguous()}
    if out.feature is not None:
        tensors["feature"] = out.feature.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key, "sha256": _digest(tensors)})
    return out, path, False
