"""Offline teacher cache: the frozen teacher runs once over the training images; later epochs and later runs
with the same teacher weights, data and layers read its outputs from disk without even building the teacher.

One safetensors file per key, tensors ``logits (N, K)``, ``embedding (N, D)`` and optionally ``feature
(N, C, H, W)`` stored as float16 (features are hints; halving them halves the cache). For an ensemble
(``ensemble.teachers``) it also holds ``members (N, M, K)``, every teacher's logits (the main teacher's first): the
target is mixed from them with the recipe's weights at the KD temperature when read
(:meth:`TeacherOutputs.target_logits`), so the one file serves any weights and any temperature the tuner tries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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
from edgedistill.toolchain.vision.distill.losses import ensemble_logits
from edgedistill.toolchain.vision.models import logits_and_embedding


def default_cache_dir() -> Path:
    return cache_root() / "teacher"


@dataclass
class TeacherOutputs:
    """The (main) teacher's ``logits (N, K)``, ``embedding (N, D)`` and tapped ``feature (N, C, H, W)``; for an
    ensemble, every teacher's logits ``members (N, M, K)`` and their ``weights (M,)``; with factor transfer, the
    paraphraser's ``factor (N, K', H, W)`` of ``feature``."""

    logits: torch.Tensor
    embedding: torch.Tensor
    feature: torch.Tensor | None = None
    members: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    factor: torch.Tensor | None = None

    def take(self, idx: torch.Tensor) -> TeacherOutputs:
        f = None if self.feature is None else self.feature[idx].float()
        return TeacherOutputs(self.logits[idx], self.embedding[idx], f,
                              None if self.members is None else self.members[idx], self.weights,
                              None if self.factor is None else self.factor[idx])

    def target_logits(self, temperature: float) -> torch.Tensor:
        """Logits ``(N, K)`` whose softmax at ``temperature`` is the soft target: the teacher's own, or the
        ensemble's weighted mean of the members' softened distributions (:func:`losses.ensemble_logits`)."""
        if self.members is None:
            return self.logits
        assert self.weights is not None
        return ensemble_logits(self.members, self.weights, temperature)


def cache_key(teacher_sha256: str, data_hash: str, feature_layer: str | None, members: Sequence[str] = ()) -> str:
    """The cache file's key: the teacher's weights, the data and the layer; for an ensemble also every teacher's
    weights file (sha256, the main teacher's first)."""
    doc = {"teacher": teacher_sha256, "data": data_hash, "feature_layer": feature_layer, "v": 1}
    if members:
        doc["members"] = list(members)
    return sha256_json(doc)


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


def _load_cached(path: Path, key: str, n: int, feature_layer: str | None, members: int) -> TeacherOutputs | None:
    """The cache file's outputs if it is whole and is what ``key`` asks for; else None (it is rebuilt)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    ok = (meta.get("key") == key and meta.get("sha256") == _digest(t) and t["logits"].shape[0] == n
          and t["embedding"].shape[0] == n and (("feature" in t) == (feature_layer is not None))
          and (t["members"].shape[:2] == (n, members) if members else "members" not in t))
    return TeacherOutputs(t["logits"], t["embedding"], t.get("feature"), t.get("members")) if ok else None


def cached_teacher_outputs(key: str, cache_dir: Path, x: torch.Tensor, feature_layer: str | None,
                           load_teacher: Callable[[], nn.Module], members: Sequence[Callable[[], nn.Module]] = (),
                           weights: Sequence[float] = ()) -> tuple[TeacherOutputs, Path, bool]:
    """Return the teacher's outputs for ``x``, from ``cache_dir`` when present and intact. ``load_teacher`` is
    called only on a miss. Returns ``(outputs, cache file, hit)``.

    An ensemble passes a loader per extra teacher in ``members`` (each runs once too; their logits are cached
    with the rest) and ``weights`` for all of them (the main teacher first, summing to 1; attached to the
    outputs, not cached).

    The file records its key and a sha256 of its tensors: a truncated, edited or foreign file is rebuilt, never
    used (the key covers the teacher's weights, the data's pixels and the feature layer)."""
    path = cache_dir / f"teacher-{key[:24]}.safetensors"
    n_members = len(members) + 1 if members else 0
    if members and len(weights) != n_members:
        raise ValueError(f"{n_members} ensemble teachers but {len(weights)} weights")
    w = torch.tensor(list(weights), dtype=torch.float32) if members else None
    if path.is_file() and (hit := _load_cached(path, key, len(x), feature_layer, n_members)) is not None:
        hit.weights = w
        return hit, path, True
    out = run_teacher(load_teacher(), x, feature_layer, desc="caching teacher outputs")
    tensors = {"logits": out.logits.contiguous(), "embedding": out.embedding.contiguous()}
    if out.feature is not None:
        tensors["feature"] = out.feature.contiguous()
    if members:
        extra = [run_teacher(load(), x, None, desc=f"caching ensemble teacher {i + 1}").logits
                 for i, load in enumerate(members)]
        out.members, out.weights = torch.stack([out.logits, *extra], dim=1).contiguous(), w
        tensors["members"] = out.members
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key, "sha256": _digest(tensors)})
    return out, path, False
