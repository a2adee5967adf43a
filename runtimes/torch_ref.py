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

#: the metadata key holding ``{"model": timm name, "kwargs": {...}}`` as one JSON string: one key, because
#: safetensors writes a metadata map in hash order, so two keys made equal weights give different file bytes
META = "edgedistill.reference"
#: the two keys files written before META (read, never written)
META_NAME = "edgedistill.model"
META_KWARGS = "edgedistill.kwargs"
#: constructor arguments that would make timm load files or fetch weights: never taken from a recipe or a file
DENIED_KWARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
                 "cache_dir", "device")


def allowed_timm_kwargs(name: str) -> set[str]:
    """The constructor arguments ``name``'s timm builder accepts: the ``__init__`` parameters of the model classes
    in the module that defines it (e.g. ``img_size``, ``depth``, ``embed_dim`` for ViTs), minus
    :data:`DENIED_KWARGS`."""
    import importlib
    import inspect

    import timm
    from torch import nn

    module = importlib.import_module(timm.models.model_entrypoint(name).__module__)
    params: set[str] = {"num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate"}
    for obj in vars(module).values():
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            params |= set(inspect.signature(obj.__init__).parameters) - {"self", "args", "kwargs"}
    return {p for p in params if not p.startswith(DENIED_KWARGS)}


def check_timm_model(name: str, kwargs: dict[str, Any], where: str) -> None:
    """Refuse a model name timm does not know and constructor kwargs outside its builder's allow-list (no file
    loading, no downloads); values must be plain data. Raises ``ValueError`` naming ``where``."""
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"{where}: unknown timm model {name!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: kwargs must be a mapping, got {type(kwargs).__name__}")
    allowed = allowed_timm_kwargs(name)
    for key, value in kwargs.items():
        if key not in allowed:
            why = "it would load a file or fetch weights" if str(key).startswith(DENIED_KWARGS) else \
                f"not an argument of {name}'s builder"
            raise ValueError(f"{where}: kwargs.{key}: refused ({why})")
        if not _plain(value):
            raise ValueError(f"{where}: kwargs.{key}: only numbers, strings, booleans and lists of them")


def _plain(v: Any) -> bool:
    if isinstance(v, list | tuple):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, bool | int | float | str)


def save_reference(model: Any, name: str, kwargs: dict[str, Any], path: Path) -> None:
    """Write ``model``'s weights with ``name``/``kwargs`` (including ``num_classes``) in the metadata, atomically.

    An early-exit model (:class:`edgedistill.runtimes.early_exit.EarlyExitModel`: the timm model cut at a block,
    with that block's head) adds its ``exit`` spec; ``name``/``kwargs`` then describe the uncut model."""
    from safetensors.torch import save_file

    from edgedistill.core.fileio import atomic_path
    from edgedistill.runtimes.early_exit import EarlyExitModel

    ref: dict[str, Any] = {"model": name, "kwargs": kwargs}
    if isinstance(model, EarlyExitModel):
        ref["exit"] = model.spec()
    meta = {META: json.dumps(ref, sort_keys=True)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_reference(path: Path) -> Any:
    """Rebuild the timm model saved by :func:`save_reference` (cut at its exit when it has one), in eval mode."""
    import timm
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise RuntimeError_(f"{path}: unreadable or truncated safetensors file ({err})") from None
    if META not in meta and META_NAME not in meta:
        raise RuntimeError_(f"{path}: no '{META}' metadata; not a reference artifact saved by edgedistill")
    try:
        ref = json.loads(meta[META]) if META in meta else {"model": meta[META_NAME],
                                                           "kwargs": json.loads(meta.get(META_KWARGS, "{}"))}
        name, kwargs = ref["model"], ref["kwargs"]
        check_timm_model(name, kwargs, f"{path}: metadata")
    except (ValueError, TypeError, KeyError) as err:
        raise RuntimeError_(str(err) if str(err).startswith(str(path)) else f"{path}: metadata: {err}") from None
    model = timm.create_model(name, pretrained=False, **kwargs)
    if "exit" in ref:
        from edgedistill.runtimes.early_exit import ExitError, from_spec

        try:
            model = from_spec(model, ref["exit"])
        except ExitError as err:
            raise RuntimeError_(f"{path}: metadata: {err}") from None
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
