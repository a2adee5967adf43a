"""Factor transfer's first phase (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor
Transfer"): the paraphraser learns to reconstruct the teacher's feature maps, on the one training loop (so it
resumes), and is cached beside the teacher cache: later students, tuning trials and runs with the same teacher,
data, layer and settings load it instead of training it again. Its frozen encoder's factors are the target that
:class:`~edgedistill.toolchain.vision.distill.trainer.KDObjective`'s translator learns to match.

One safetensors file per key (``paraphraser-<key>.safetensors``): the state dict, with the key, the channel count,
the rate, a sha256 of the tensors and the training history in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edgedistill.core.fileio import atomic_path, sha256_json
from edgedistill.toolchain.vision.distill.cache import _digest
from edgedistill.toolchain.vision.distill.features import Paraphraser
from edgedistill.toolchain.vision.distill.trainer import fit_epochs, freeze
from edgedistill.toolchain.vision.recipe import FactorKD, TrainConfig

#: the paraphraser's optimiser: AdamW at this peak rate on a one-cycle schedule, no weight decay (an auto-encoder
#: of a fixed map; Kim et al. train it for a few epochs only)
PARAPHRASER_LR = 1e-3


@dataclass
class ParaphraserInfo:
    path: str
    hit: bool
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rec = [h["reconstruction"] for h in self.history if "reconstruction" in h]
        return {"path": self.path, "hit": self.hit, "steps": self.steps,
                "reconstruction_first": rec[0] if rec else None, "reconstruction_last": rec[-1] if rec else None}


def paraphraser_key(teacher_key: str, cfg: FactorKD, batch_size: int, max_steps: int | None, seed: int) -> str:
    """What the trained paraphraser depends on: the teacher outputs' key (teacher weights, data, layer) and how
    it is trained."""
    return sha256_json({"teacher": teacher_key, "rate": cfg.rate, "epochs": cfg.paraphraser_epochs,
                        "batch_size": batch_size, "max_steps": max_steps, "lr": PARAPHRASER_LR, "seed": seed, "v": 1})


@torch.no_grad()
def reconstruction_loss(model: Paraphraser, features: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared reconstruction error over ``(N, C, H, W)`` maps, eval mode."""
    model.eval()
    total = sum(float(F.mse_loss(model(features[i:i + batch_size]), features[i:i + batch_size], reduction="sum"))
                for i in range(0, len(features), batch_size))
    return total / features.numel()


def train_paraphraser(features: torch.Tensor, cfg: FactorKD, batch_size: int, checkpoint: Path, seed: int,
                      max_steps: int | None = None) -> tuple[Paraphraser, list[dict[str, float]], int]:
    """Train a :class:`Paraphraser` to reconstruct ``features`` ``(N, C, H, W)`` (MSE, Kim et al. eq. 1) for
    ``cfg.paraphraser_epochs`` epochs (at most ``max_steps``), resumable from ``checkpoint``; the weights with the
    lowest reconstruction error over all of ``features`` are kept. Returns ``(frozen paraphraser, history,
    steps)``."""
    feats = features.float()
    torch.manual_seed(seed)
    model = Paraphraser(feats.shape[1], cfg.rate)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x = feats[idx]
        loss = F.mse_loss(model(x), x)
        return loss, {"reconstruction": float(loss.detach()), "n": len(idx)}

    train = TrainConfig(epochs=cfg.paraphraser_epochs, batch_size=batch_size, lr=PARAPHRASER_LR, weight_decay=0.0,
                        max_steps=max_steps)
    res = fit_epochs(model, step, train, torch.arange(len(feats)), len(feats),
                     lambda: -reconstruction_loss(model, feats), checkpoint, "training paraphraser", seed)
    return freeze(model), res.history, res.steps  # type: ignore[return-value]


def cached_paraphraser(key: str, cache_dir: Path, features: Callable[[], torch.Tensor], cfg: FactorKD,
                       batch_size: int, checkpoint: Path, seed: int,
                       max_steps: int | None = None) -> tuple[Paraphraser, ParaphraserInfo]:
    """The trained, frozen paraphraser for ``key`` from ``cache_dir``, or trained on ``features()`` (called only
    on a miss) and cached. A file that is torn, edited or for another key is retrained, never used."""
    path = cache_dir / f"paraphraser-{key[:24]}.safetensors"
    if path.is_file() and (hit := _load(path, key)) is not None:
        model, meta = hit
        return model, ParaphraserInfo(str(path), True, int(meta["steps"]), json.loads(meta["history"]))
    model, history, steps = train_paraphraser(features(), cfg, batch_size, checkpoint, seed, max_steps)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"key": key, "sha256": _digest(state), "channels": str(model.channels), "rate": repr(cfg.rate),
            "steps": str(steps), "history": json.dumps(history)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    checkpoint.unlink(missing_ok=True)
    return model, ParaphraserInfo(str(path), False, steps, history)


def _load(path: Path, key: str) -> tuple[Paraphraser, dict[str, str]] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        if meta.get("key") != key or meta.get("sha256") != _digest(state):
            return None
        model = Paraphraser(int(meta["channels"]), float(meta["rate"]))
        model.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError):
        return None
    return freeze(model), meta  # type: ignore[return-value]
