"""ONNX export: fp32 through ``torch.onnx.export``, int8 through ``onnxruntime.quantization``.

Variants (recipe ``export.onnx.variants``):

- ``fp32``: the graph as exported, dynamic batch axis.
- ``int8_static_u8s8`` / ``int8_static_s8s8``: static QDQ, activations uint8 / int8, weights int8 per channel,
  calibrated (MinMax) on training images. U8S8 usually fuses every conv on x86; S8S8 can leave DequantizeLinear
  nodes behind and run slower (shared/STACK.md) — which is why every variant is measured, not assumed.
- ``int8_dynamic``: weights int8, activations quantised at run time (best for MatMul-heavy graphs).

Quantisation itself is shared with the LLM exporter: :mod:`edgedistill.toolchain.ort_quant`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedistill.core.fileio import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_fp32(model: nn.Module, sample: torch.Tensor, path: Path, opset: int = 18,
                exporter: str = "dynamo") -> Path:
    """Export ``model`` (eval mode) for inputs shaped like ``sample`` ``(1, 3, S, S)``, batch axis dynamic.

    ``dynamo`` is torch.export-based (PyTorch's default since 2.9), saved as one self-contained file;
    ``torchscript`` is the legacy tracer, kept for models torch.export cannot capture.
    """
    model.eval().to(memory_format=torch.contiguous_format)  # channels-last weights make torch.export guard on batch
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, (sample,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            program.save(str(tmp), external_data=False)
        elif exporter == "torchscript":
            torch.onnx.export(
                model, (sample,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        else:
            raise ValueError(f"unknown ONNX exporter {exporter!r}; choose dynamo or torchscript")
    return path


def quantize(fp32_path: Path, variant: str, path: Path, calibration: np.ndarray | None = None,
             reduce_range: bool = False, fp32_stem: bool = False, fp32_head: bool = False,
             method: str = "minmax") -> Path:
    """Quantise the exported graph (input :data:`INPUT_NAME`) into ``path`` as ``variant``; ``fp32_stem`` keeps
    the first convolution of static int8 files in float (see :class:`~edgedistill.toolchain.vision.recipe.OnnxExport`;
    for dynamic int8 it measured worse: 0.972 vs 0.981 top-1 agreement)."""
    from edgedistill.toolchain.ort_quant import first_conv, last_linear
    from edgedistill.toolchain.ort_quant import quantize as ort_quantize

    keep = []
    if fp32_stem and variant.startswith("int8_static") and (stem := first_conv(fp32_path)):
        keep.append(stem)
    if fp32_head and (head := last_linear(fp32_path)):
        keep.append(head)
    return ort_quantize(fp32_path, variant, path, calibration, INPUT_NAME, reduce_range, tuple(keep), method)
