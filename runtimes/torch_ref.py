"""PyTorch reference runtime, and the reference artifact format it reads.

A reference artifact is a ``.safetensors`` state dict whose metadata names the timm model and its kwargs, so the
file alone rebuilds the model (no pickle, no code). Needs torch and timm on the target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_, Session

META_NAME = "edgedistill.model"
META_KWARGS = "edgedistill.kwargs"


def save_reference(model: Any, name: str, kwargs: dict[str, Any], path: Path) -> None:
    """Write ``model``'s weights with ``name``/``kwargs`` (including ``num_classes``) in the metadata, atomically."""
    from safetensors.torch import save_file

    from edgedistill.core.fileio import atomic_path

    meta = {META_NAME: name, META_KWARGS: json.dumps(kwargs, sort_keys=True)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_reference(path: Path) -> Any:
    """Rebuild the timm model saved by :func:`save_reference`, in eval mode."""
    import timm
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise RuntimeError_(f"{path}: unreadable or truncated safetensors file ({err})") from None
    if META_NAME not in meta:
        raise RuntimeError_(f"{path}: no '{META_NAME}' metadata; not a reference artifact saved by edgedistill")
    model = timm.create_model(meta[META_NAME], pretrained=False, **json.loads(meta[META_KWARGS]))
    model.load_state_dict(state)
    return model.eval()


@RUNTIMES.register("torch")
class TorchSession(Session):
    def __init__(self, path: Path, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(threads)
        self._torch = torch
        self._model = load_reference(path)
        self._threads = threads

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "version": self._torch.__version__, "threads": self._threads, "mode": "eager"}
