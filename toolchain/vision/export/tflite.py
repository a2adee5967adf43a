"""TFLite (LiteRT) export through ``litert_torch``, without TensorFlow.

Variants (recipe ``export.tflite.variants``); every one has a fixed batch of 1:

- ``fp32``: ``litert_torch.convert`` of the model as is.
- ``int8_static``: full-integer PT2E static quantisation (``torch.export`` → ``prepare_pt2e`` with litert's
  symmetric per-channel quantizer → calibrate on training images → ``convert_pt2e`` → ``litert_torch.convert``).
  Input and output are int8 tensors; their scale/zero-point live in the model (the runtime adapter applies them).
- ``int8_dynamic``: ai-edge-quantizer ``dynamic_wi8_afp32`` on the fp32 file (int8 weights, activations quantised
  at run time).
- ``int8_weight_only``: ai-edge-quantizer ``weight_only_wi8_afp32`` (int8 weights dequantised to fp32 compute).

Layout: ``nchw`` keeps PyTorch's ``(1, C, H, W)`` input. ``nhwc`` wraps the model so that the graph takes
``(1, H, W, C)`` and transposes inside (``litert_torch.to_channel_last_io``), which is what camera/mobile
pipelines hand over; litert's layout pass then usually removes the transpose altogether.

Conversion failures raise :class:`ConversionError`, which names the model, the operator and the module (from the
error's source location); :meth:`ConversionError.write_repro` then bisects over child modules for the smallest
one that fails alone (see :mod:`edgedistill.toolchain.vision.export.tflite_repro`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedistill.core.fileio import atomic_path

LAYOUTS = ("nchw", "nhwc")
#: ai-edge-quantizer recipe (a function in ``ai_edge_quantizer.recipe``) per post-conversion variant
AEQ_RECIPES = {"int8_dynamic": "dynamic_wi8_afp32", "int8_weight_only": "weight_only_wi8_afp32"}


def require() -> None:
    """Fail early, with the fix, when the TFLite tool chain (the ``tflite`` extra) is not installed."""
    try:
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as err:
        raise ValueError(f"TFLite export needs litert-torch and ai-edge-quantizer ({err}): pip install -e "
                         "'.[tflite]', or leave tflite out of export.formats") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence litert-torch's progress log, torch.export's warnings and graph dumps (stdout) for the duration."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def with_layout(model: nn.Module, layout: str) -> nn.Module:
    """``model`` for ``nchw``; for ``nhwc`` a wrapper taking ``(N, H, W, C)`` that transposes inside the graph."""
    if layout == "nchw":
        return model
    if layout == "nhwc":
        import litert_torch

        return litert_torch.to_channel_last_io(model, args=[0]).eval()
    raise ValueError(f"unknown TFLite layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """NCHW images ``(N, C, H, W)`` in ``layout`` (``(N, H, W, C)`` for nhwc), contiguous."""
    return (x.permute(0, 2, 3, 1) if layout == "nhwc" else x).contiguous()


# -- failures you can act on -------------------------------------------------------------------------------------


@dataclass
class Diagnosis:
    """What failed in a conversion: the operator, its kind, and where in the model (all best effort)."""

    kind: str
    op: str | None
    module: str | None
    module_type: str | None
    source: str | None
    detail: str


class ConversionError(ValueError):
    """litert-torch could not convert a model; the message names the model, the operator and the module.

    Holds the model and its sample input so that :meth:`write_repro` can search for the smallest failing
    submodule afterwards (only when asked: it converts submodules one by one).
    """

    def __init__(self, model_name: str, diagnosis: Diagnosis, model: nn.Module, sample: torch.Tensor) -> None:
        self.model_name, self.diagnosis = model_name, diagnosis
        self.model, self.sample = model, sample
        super().__init__(self._message())

    def _message(self) -> str:
        d = self.diagnosis
        what = {"no_lowering": f"operator {d.op} has no TFLite lowering",
                "lowering_failed": f"operator {d.op} failed to lower",
                "data_dependent": "a data-dependent shape or control flow"
                                  + (f" (operator {d.op})" if d.op else ""),
                "export_failed": "torch.export cannot capture the model"}.get(d.kind, "conversion failed")
        where = f" in module '{d.module or '(root)'}' ({d.module_type})" if d.module_type else ""
        src = f" at {d.source}" if d.source else ""
        return (f"{self.model_name}: litert-torch cannot convert it to TFLite: {what}{where}{src} "
                f"[{d.detail}]. Fix: rewrite or replace that module with supported ops (static shapes), or drop "
                "tflite from export.formats; `edgedistill export ... --repro DIR` writes the smallest failing "
                "submodule")

    def write_repro(self, out_dir: Path) -> Path:
        """Bisect for the smallest failing submodule and write a repro into ``out_dir``; returns repro.json."""
        from edgedistill.toolchain.vision.export.tflite_repro import write_repro

        return write_repro(self, Path(out_dir))


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _classify(err: BaseException) -> tuple[str, str | None]:
    """``(kind, operator)`` from a litert-torch / torch.export exception."""
    msg, name = str(err), type(err).__name__
    op = None
    if m := re.search(r"Lowering not found: ([\w.]+)", msg):
        return "no_lowering", m.group(1)
    if m := re.search(r"target=torch\.ops\.([\w.]+)", msg):
        op = m.group(1)
    if ("DataDependent" in name or "data-dependent" in msg or "NonConcrete" in name or "must be concrete" in msg
            or "Dynamic" in name and "shape" in msg.lower()):
        return "data_dependent", op
    if op:
        return "lowering_failed", op
    if "torch.export" in msg or "export" in name.lower():
        return "export_failed", None
    return "other", None


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def _module_at(model: nn.Module, sample: torch.Tensor, frame: tuple[str, int]) -> tuple[str | None, str | None]:
    """The module (path, type) whose code is at ``frame``: from torch.export's node metadata when the model
    exports, else the first module whose class's ``forward`` spans that line."""
    file, line = frame
    needle = f'File "{file}", line {line}'
    with contextlib.suppress(Exception), _quiet():
        ep = torch.export.export(model, (sample,))
        for node in ep.graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            if needle in (node.meta.get("stack_trace") or "") and stack:
                path, typ = list(stack.values())[-1]
                return str(path), typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))
    import inspect

    for path, mod in model.named_modules():
        fwd = type(mod).forward
        with contextlib.suppress(OSError, TypeError):
            lines, start = inspect.getsourcelines(fwd)
            if os.path.samefile(inspect.getsourcefile(fwd) or "", file) and start <= line < start + len(lines):
                return path, f"{type(mod).__module__}.{type(mod).__qualname__}"
    return None, None


def diagnose(err: BaseException, model: nn.Module, sample: torch.Tensor) -> Diagnosis:
    """Turn a conversion exception into a :class:`Diagnosis` (operator, module path and type, source line)."""
    kind, op = _classify(err)
    frames = [(f, int(n)) for f, n in _FRAME.findall(str(err)) if os.path.exists(f)]
    module = module_type = source = None
    if frames:
        module, module_type = _module_at(model, sample, frames[-1])
        source = f"{frames[-1][0]}:{frames[-1][1]}"
    return Diagnosis(kind, op, module, module_type, source, _first_line(err))


def convert(module: nn.Module, sample: torch.Tensor, model_name: str, quant_config: object | None = None,
            diagnose_as: tuple[nn.Module, torch.Tensor] | None = None) -> object:
    """``litert_torch.convert(module, (sample,))``; any failure becomes a :class:`ConversionError`.

    ``diagnose_as`` is the (model, NCHW sample) to name modules in and bisect over (default: ``module``).
    """
    import litert_torch

    if not isinstance(module, torch.fx.GraphModule):  # exported (PT2E) graphs refuse .eval()
        module.eval()
    try:
        with _quiet(), torch.no_grad():
            return litert_torch.convert(module, (sample,), quant_config=quant_config)
    except Exception as err:  # litert-torch raises RuntimeError, AssertionError, jax and torch.export errors
        model, nchw = diagnose_as or (module, sample)
        raise ConversionError(model_name, diagnose(err, model, nchw), model, nchw) from err


# -- the variants ------------------------------------------------------------------------------------------------


def export_fp32(model: nn.Module, sample: torch.Tensor, path: Path, layout: str = "nchw",
                model_name: str = "model") -> Path:
    """Convert ``model`` (eval mode) for NCHW inputs shaped like ``sample`` ``(1, C, H, W)`` into ``path``."""
    require()
    model.eval()
    edge = convert(with_layout(model, layout), to_layout(sample, layout), model_name, diagnose_as=(model, sample))
    with atomic_path(path) as tmp, _quiet():
        edge.export(str(tmp))  # type: ignore[attr-defined]
    return path


def _prepared_pt2e(module: nn.Module, calib: torch.Tensor, sample: torch.Tensor, batch: int) -> tuple:
    """Export ``module`` with a dynamic batch when it allows (faster calibration), observe ``calib``, convert."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    try:
        gm = torch.export.export(module, (calib[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    except Exception:  # a model that specialises its batch: calibrate one image at a time
        gm, batch = torch.export.export(module, (sample,)).module(), 1
    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    prepared = move_exported_model_to_eval(prepare_pt2e(gm, quantizer))
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            prepared(calib[i:i + batch])
    quantized = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    quantized.training = False  # exported graphs refuse .eval(); litert-torch checks the flag
    return quantized, quantizer


def export_int8_static(model: nn.Module, sample: torch.Tensor, path: Path, calibration: np.ndarray,
                       layout: str = "nchw", model_name: str = "model", batch: int = 32) -> Path:
    """Full-integer PT2E quantisation calibrated on ``calibration`` ``(N, C, H, W)``; int8 input and output."""
    from litert_torch.quantize.quant_config import QuantConfig

    if calibration is None or len(calibration) == 0:
        raise ValueError("int8_static: static quantisation needs calibration images")
    require()
    model.eval()
    module = with_layout(model, layout)
    calib = to_layout(torch.as_tensor(np.asarray(calibration, dtype=np.float32)), layout)
    x = to_layout(sample, layout)
    try:
        with _quiet():
            quantized, quantizer = _prepared_pt2e(module, calib, x, batch)
    except Exception as err:  # torch.export of the whole model failed: same diagnosis as a conversion failure
        raise ConversionError(model_name, diagnose(err, model, sample), model, sample) from err
    edge = convert(quantized, x, model_name, QuantConfig(pt2e_quantizer=quantizer), diagnose_as=(model, sample))
    with atomic_path(path) as tmp, _quiet():
        edge.export(str(tmp))  # type: ignore[attr-defined]
    return path


def quantize(fp32_path: Path, variant: str, path: Path) -> Path:
    """``int8_dynamic`` / ``int8_weight_only``: apply the ai-edge-quantizer recipe to the fp32 ``.tflite``."""
    require()
    from ai_edge_quantizer import quantizer, recipe

    if variant not in AEQ_RECIPES:
        raise ValueError(f"unknown TFLite post-conversion variant {variant!r}; choose one of "
                         f"{', '.join(AEQ_RECIPES)} (int8_static is exported from PyTorch)")
    q = quantizer.Quantizer(str(fp32_path), getattr(recipe, AEQ_RECIPES[variant])())
    result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    return path


def export_variant(model: nn.Module, sample: torch.Tensor, variant: str, path: Path, fp32_path: Path,
                   calibration: np.ndarray | None, layout: str = "nchw", model_name: str = "model") -> Path:
    """Write one variant into ``path``; the AEQ variants quantise ``fp32_path``, which must exist already."""
    if variant == "fp32":
        return export_fp32(model, sample, path, layout, model_name)
    if variant == "int8_static":
        return export_int8_static(model, sample, path, calibration, layout, model_name)  # type: ignore[arg-type]
    return quantize(fp32_path, variant, path)
