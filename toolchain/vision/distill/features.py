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


def _conv_bn_act(c_in: int, c_out: int) -> list[nn.Module]:
    """3×3 same-size convolution, batch norm, LeakyReLU(0.1): the block of Kim et al.'s paraphraser/translator."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


def factor_channels(teacher_channels: int, rate: float) -> int:
    return max(1, round(teacher_channels * rate))


class Paraphraser(nn.Module):
    """Factor transfer's paraphraser (Kim et al. 2018, sec. 3.1): a convolutional auto-encoder on a teacher map.

    ``encoder``: ``(B, C, H, W)`` → factors ``(B, round(rate*C), H, W)`` (three conv-BN-LeakyReLU blocks);
    ``decoder``: factors → ``(B, C, H, W)`` (two blocks and a plain 3×3 convolution, so any value can be
    reconstructed). Trained on reconstruction alone, then frozen: its factors are the student's target.
    """

    def __init__(self, channels: int, rate: float) -> None:
        super().__init__()
        k = factor_channels(channels, rate)
        self.channels, self.factor_channels = channels, k
        self.encoder = nn.Sequential(*_conv_bn_act(channels, channels), *_conv_bn_act(channels, k),
                                     *_conv_bn_act(k, k))
        self.decoder = nn.Sequential(*_conv_bn_act(k, k), *_conv_bn_act(k, channels),
                                     nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(feature))

    @torch.no_grad()
    def factors(self, feature: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The (frozen, eval-mode) encoder's factors of ``(N, C, H, W)`` teacher maps, in batches."""
        self.eval()
        return torch.cat([self.encoder(feature[i:i + batch_size].float())
                          for i in range(0, len(feature), batch_size)])


class Translator(nn.Module):
    """Factor transfer's translator (Kim et al. 2018, sec. 3.2): student map ``(B, Cs, Hs, Ws)`` → factors
    ``(B, K, Ht, Wt)`` (three conv-BN-LeakyReLU blocks, then bilinear resize to the teacher factor's size).
    Trained with the student; not part of the exported model."""

    def __init__(self, student_channels: int, factor_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*_conv_bn_act(student_channels, student_channels),
                                 *_conv_bn_act(student_channels, factor_channels),
                                 *_conv_bn_act(factor_channels, factor_channels))

    def forward(self, student: torch.Tensor, teacher_hw: tuple[int, int]) -> torch.Tensor:
        out = self.net(student)
        if out.shape[-2:] != teacher_hw:
            out = F.interpolate(out, size=teacher_hw, mode="bilinear", align_corners=False)
        return out
