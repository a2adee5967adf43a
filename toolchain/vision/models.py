"""Build timm models from a recipe, load local checkpoints safely, and save reference weights.

Checkpoints are read without unpickling arbitrary objects: ``.safetensors`` through safetensors, and timm/PyTorch
``.pth``/``.bin`` state dicts through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from edgedistill.runtimes import torch_ref
from edgedistill.toolchain.vision.recipe import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and what is wrong."""


def create(name: str, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """A timm model with random weights: the name must be timm's, the kwargs in its builder's allow-list
    (:func:`edgedistill.runtimes.torch_ref.check_timm_model`: nothing that loads a file or fetches weights)."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {', '.join(close) or '(none)'}")
    torch_ref.check_timm_model(name, dict(kwargs or {}), name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or {}))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a weights-only torch file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing anything
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({_first_line(err)})") from None
    except Exception as err:  # weights_only refuses pickled objects (UnpicklingError) and torn pickles
        raise CheckpointError(f"{path}: refused to load (only tensors are allowed; this file holds other pickled "
                              f"data or is damaged: {_first_line(err, last=True)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(err: Exception, last: bool = False) -> str:
    """A library error's gist in one line (torch's unpickler errors run to a page of advice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if last:  # torch puts the actual reason ("Unsupported global: ...") after its advice, which we don't repeat
        lines = [ln for ln in lines if "WeightsUnpickler error" in ln or ln.startswith("Unsupported")] or lines
        return lines[-1].split("WeightsUnpickler error:")[-1].strip().split(". ")[0] or type(err).__name__
    return lines[0] if lines else type(err).__name__


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Create the model named in ``cfg``; load ``cfg.checkpoint`` if given (strict: every key must match)."""
    model = create(cfg.name, num_classes, cfg.kwargs)
    if cfg.checkpoint is not None:
        load_weights(model, cfg.checkpoint)
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err))
        raise CheckpointError(f"{path}: does not match the model ({first}); check the model name and kwargs") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not match the model (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}); check the model name and kwargs")


def save_reference(model: nn.Module, cfg: ModelConfig, num_classes: int, path: Path) -> None:
    """Save ``model`` as a reference artifact (safetensors + timm name/kwargs; see runtimes.torch_ref)."""
    torch_ref.save_reference(model, cfg.name, dict(cfg.kwargs, num_classes=num_classes), path)


def logits_and_embedding(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass returning logits ``(B, K)`` and the penultimate embedding ``(B, D)`` of a timm model."""
    feats = model.forward_features(x)
    emb = model.forward_head(feats, pre_logits=True)
    return model.get_classifier()(emb), emb
