"""Early-exit models: a timm model cut after one of its blocks, with a small classifier head on that block.

Self-distillation (``distill.self_distill``, Zhang et al. 2019) trains auxiliary heads on intermediate blocks; a
recipe's ``export_exit`` deploys the network cut at one of them: the blocks up to the exit and its head, nothing
after. Such a model is saved as a reference artifact like any other (safetensors + metadata, no pickle, no code):
the metadata adds an ``exit`` entry (:meth:`EarlyExitModel.spec`) from which :func:`from_spec` rebuilds it.

An exit is named by module path, either a top-level module (``layer2`` in a ResNet) or an item of a top-level
``nn.Sequential`` (``blocks.2`` in MobileNetV3, EfficientNet or a ViT). Cutting keeps that item's container up to
it and replaces every top-level module the model runs after it with ``nn.Identity``; :func:`cut` then checks that
the cut model's ``forward_features`` returns exactly what the exit module returned in the whole model, and refuses
a model whose features do more after that point than the modules it owns.

Imported lazily by :mod:`edgedistill.runtimes.torch_ref` (needs torch; timm only to build the trunk).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import torch
from torch import nn

#: an exit's path: a top-level module, or an item of a top-level Sequential
EXIT_PATH = re.compile(r"^[A-Za-z_]\w*(\.\d+)?$")
HEAD_KINDS = ("bottleneck", "linear")
#: the largest channel count a head spec may name (a damaged or hostile file cannot ask for a huge allocation)
MAX_CHANNELS = 1 << 16


class ExitError(ValueError):
    """An exit cannot be used or rebuilt; the message says why in one line."""


def to_spatial(feat: torch.Tensor, prefix_tokens: int = 0) -> torch.Tensor:
    """A feature as a ``(B, C, H, W)`` map: maps pass through; ViT tokens ``(B, P + N, C)`` drop their ``P``
    prefix (class/register) tokens and are laid out on the ``sqrt(N) × sqrt(N)`` grid."""
    if feat.dim() == 4:
        return feat
    if feat.dim() != 3:
        raise ValueError(f"cannot use a feature of shape {tuple(feat.shape)}; expected (B,C,H,W) or (B,N,C)")
    tokens = feat[:, prefix_tokens:, :]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid")
    # contiguous: a convolution on the transposed view makes torch.export specialise a batch of 1 (no ONNX export)
    return tokens.transpose(1, 2).contiguous().reshape(feat.shape[0], feat.shape[2], side, side)


class AuxHead(nn.Module):
    """A small classifier on an intermediate feature ``(B, C, H, W)`` (or ViT tokens) → logits ``(B, K)``.

    ``linear``: global average pool + linear (``C·K`` weights). ``bottleneck``: 1×1 conv ``C → hidden`` + BN + ReLU,
    3×3 conv + BN + ReLU, global average pool, linear ``hidden → K`` (BYOT's conv bottleneck, made small).
    :meth:`embed` is the pooled vector the linear layer sees, ``(B, D)``: what self-distillation's feature loss
    adapts onto the final embedding.
    """

    def __init__(self, kind: str, in_channels: int, num_classes: int, hidden: int = 128,
                 prefix_tokens: int = 0) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ExitError(f"unknown exit head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
        self.kind, self.in_channels, self.num_classes = kind, in_channels, num_classes
        self.hidden, self.prefix_tokens = hidden, prefix_tokens
        if kind == "bottleneck":
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
            self.dim = hidden
        else:
            self.body = nn.Identity()
            self.dim = in_channels
        self.fc = nn.Linear(self.dim, num_classes)

    def embed(self, feat: torch.Tensor) -> torch.Tensor:
        return self.body(to_spatial(feat, self.prefix_tokens)).mean((2, 3))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(feat))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "in_channels": self.in_channels, "num_classes": self.num_classes,
                "hidden": self.hidden, "prefix_tokens": self.prefix_tokens}


class EarlyExitModel(nn.Module):
    """``head(trunk.forward_features(x))``: ``trunk`` is the timm model cut at ``at`` (see the module doc)."""

    def __init__(self, trunk: nn.Module, head: AuxHead, at: str, dropped: list[str]) -> None:
        super().__init__()
        self.trunk, self.head, self.at, self.dropped = trunk, head, at, list(dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.forward_features(x))

    def spec(self) -> dict[str, Any]:
        """What :func:`from_spec` needs besides the timm model (JSON data, stored in the reference metadata)."""
        return {"at": self.at, "dropped": self.dropped, "head": self.head.spec()}


def exit_module(model: nn.Module, at: str) -> tuple[str, int | None]:
    """``at``'s top-level module name and its index in that module (None for a top-level exit). Raises
    :class:`ExitError` naming what exists when ``at`` is not a usable exit of ``model``."""
    if not isinstance(at, str) or not EXIT_PATH.match(at):
        raise ExitError(f"{at!r}: an exit is a top-level module or an item of a top-level Sequential, e.g. blocks.2")
    top, _, index = at.partition(".")
    children = dict(model.named_children())
    if top not in children:
        raise ExitError(f"no module {top!r} in {type(model).__name__}; top-level modules: {list(children)}")
    if not index:
        return top, None
    seq = children[top]
    if not isinstance(seq, nn.Sequential):
        raise ExitError(f"{top!r} in {type(model).__name__} is a {type(seq).__name__}, not a Sequential: name an "
                        f"exit {top!r} itself or an item of a Sequential")
    if int(index) >= len(seq):
        raise ExitError(f"no module {at!r}: {top} has {len(seq)} items ({top}.0 … {top}.{len(seq) - 1})")
    return top, int(index)


def truncate(model: nn.Module, at: str, dropped: list[str]) -> nn.Module:
    """``model`` (modified in place) cut at ``at``: its Sequential ends at the exit, each of ``dropped`` (top-level
    modules that run after it) becomes ``nn.Identity``."""
    top, index = exit_module(model, at)
    children = dict(model.named_children())
    for name in dropped:
        if not isinstance(name, str) or name not in children or name == top:
            raise ExitError(f"cannot drop {name!r}: not a top-level module of {type(model).__name__} after {at!r}")
    if index is not None:
        setattr(model, top, children[top][:index + 1])
    for name in dropped:
        setattr(model, name, nn.Identity())
    return model


def modules_after(model: nn.Module, at: str, sample: torch.Tensor) -> list[str]:
    """The top-level modules ``model`` starts after the exit's top-level module in a forward pass on ``sample``."""
    top, _ = exit_module(model, at)
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n)) for n, m in model.named_children()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if top not in order:
        raise ExitError(f"{at!r}: {type(model).__name__}'s forward pass never runs {top!r}")
    first = order.index(top)
    return list(dict.fromkeys(n for n in order[first + 1:] if n != top))


def cut(model: nn.Module, at: str, head: AuxHead, sample: torch.Tensor, atol: float = 1e-5) -> EarlyExitModel:
    """A deployable copy of ``model`` cut at ``at`` with ``head`` (a copy too); ``model`` is left as it was.

    Checks on ``sample`` that the cut trunk's ``forward_features`` is the exit module's output in the whole model
    (within ``atol``): a model that transforms its features after that point with code rather than modules cannot
    be cut this way, and says so."""
    top, index = exit_module(model, at)
    target = model.get_submodule(at)
    seen: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        dropped = modules_after(model, at, sample)
    finally:
        handle.remove()
    trunk = truncate(copy.deepcopy(model), at, dropped).eval()
    exit_model = EarlyExitModel(trunk, copy.deepcopy(head), at, dropped).eval()
    with torch.no_grad():
        got = trunk.forward_features(sample)
    want = seen[-1] if seen else None
    if want is None or got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=0):
        diff = "a different shape" if want is None or got.shape != want.shape else \
            f"max |Δ| {float((got - want).abs().max()):.2e}"
        raise ExitError(f"cannot cut {type(model).__name__} at {at!r}: its forward_features does more after that "
                        f"module than the modules it owns ({diff}); choose another exit or export_exit: null")
    return exit_model


def _int(spec: dict[str, Any], key: str, low: int = 0) -> int:
    v = spec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_CHANNELS:
        raise ExitError(f"exit.head.{key}: expected an integer in [{low}, {MAX_CHANNELS}], got {v!r}")
    return v


def from_spec(model: nn.Module, spec: Any) -> EarlyExitModel:
    """Rebuild the :class:`EarlyExitModel` described by ``spec`` (from :meth:`EarlyExitModel.spec`) around the
    freshly created timm ``model``; every value is checked (the spec comes from a file)."""
    if not isinstance(spec, dict) or set(spec) != {"at", "dropped", "head"} or not isinstance(spec["head"], dict) \
            or not isinstance(spec["dropped"], list):
        raise ExitError("exit: expected {at, dropped, head}")
    h = spec["head"]
    if h.get("kind") not in HEAD_KINDS:
        raise ExitError(f"exit.head.kind: expected one of {', '.join(HEAD_KINDS)}, got {h.get('kind')!r}")
    head = AuxHead(h["kind"], _int(h, "in_channels", 1), _int(h, "num_classes", 1), _int(h, "hidden", 1),
                   _int(h, "prefix_tokens"))
    return EarlyExitModel(truncate(model, spec["at"], spec["dropped"]), head, spec["at"], spec["dropped"])
