"""Capture intermediate features by module path (as torchdistill does) and align them with learned adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.runtimes.early_exit import to_spatial  # one home: the deployed exit heads use it too


class FeatureTap:
    """Forward hook on ``model.get_submodule(path)``; ``.value`` holds the last output as ``(B, C, H, W)``.

    ViT token sequences ``(B, P + N, C)`` drop their ``P`` prefix (class/register) tokens and are reshaped to a
    ``sqrt(N) × sqrt(N)`` grid, so ViT and CNN features compare as spatial maps.
    """

    def __init__(self, model: nn.Module, path: str) -> None:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"no module {path!r} in {type(model).__name__}; top-level modules: {names}") from None
        self.path = path
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.value = to_spatial(output, self.prefix)

    def remove(self) -> None:
        self._handle.remove()


class HintAdapter(nn.Module):
    """The FitNets regressor G mapping a student feature ``(B, Cs, Hs, Ws)`` onto the teacher's ``(B, Ct, Ht, Wt)``.

    ``conv1x1``: a 1×1 convolution, then bilinear resize to ``Ht×Wt``. ``linear``: global-average-pool both and
    map ``Cs → Ct`` with a linear layer (the target is then pooled too, see :meth:`target`).
    """

    def __init__(self, kind: str, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv1x1":
            self.proj: nn.Module = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        elif kind == "linear":
            self.proj = nn.Linear(student_channels, teacher_channels)
        else:
            raise ValueError(f"unknown adapter {kind!r}; choose conv1x1 or linear")

    def forward(self, student: torch.Tensor, teacher_hw: tuple[int, int]) -> torch.Tensor:
        if self.kind == "linear":
            return self.proj(student.mean((2, 3)))
        out = self.proj(student)
        if out.shape[-2:] != teacher_hw:
            out = F.interpolate(out, size=teacher_hw, mode="bilinear", align_corners=False)
        return out

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        return teacher.mean((2, 3)) if self.kind == "linear" else teacher
