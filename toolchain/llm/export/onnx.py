"""Hugging Face Llama → ONNX with a KV cache through optimum's exporter (``text-generation-with-past``), then
ONNX Runtime's dynamic int8 quantiser (int8 MatMul weights, activations quantised per call) for the int8 file.

The exported folder holds ``model.onnx`` (+ ``config.json``); :class:`edgedistill.runtimes.ort_llm.OrtLLMSession`
runs it with numpy only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from edgedistill.core.errors import UserError

MODEL_FILE = "model.onnx"


class ONNXExportError(UserError, RuntimeError):
    """The optimum exporter is missing or failed; the message names the model folder."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns about every traced branch and dtype; keep the user's terminal readable."""
    names = ("transformers", "optimum", "torch.onnx", "torch._dynamo", "onnxruntime")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


def export_onnx(hf_dir: Path, out_dir: Path, opset: int = 18) -> Path:
    """Export the HF causal LM in ``hf_dir`` into ``out_dir/model.onnx`` (atomically: the folder appears whole)."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as err:
        raise ONNXExportError(f"{hf_dir}: ONNX export needs optimum-onnx (pip install 'edgedistill[llm]'): {err}") \
            from None
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with _quiet():
            main_export(str(hf_dir), output=str(tmp), task="text-generation-with-past", device="cpu", opset=opset,
                        do_validation=False, no_post_process=False, trust_remote_code=False)
        if not (tmp / MODEL_FILE).is_file():
            raise ONNXExportError(f"{hf_dir}: optimum wrote no {MODEL_FILE} (files: {sorted(os.listdir(tmp))})")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except ONNXExportError:
        raise
    except Exception as err:  # optimum raises ValueError/RuntimeError/KeyError for unsupported configs
        raise ONNXExportError(f"{hf_dir}: optimum's ONNX export failed: {str(err).splitlines()[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MODEL_FILE


def quantize_onnx(fp32_model: Path, out_dir: Path) -> Path:
    """Dynamic int8 (weights int8 per tensor, activations quantised at run time) into ``out_dir/model.onnx``."""
    from edgedistill.toolchain.ort_quant import quantize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in Path(fp32_model).parent.glob("*.json"):
        shutil.copy2(f, out_dir / f.name)
    with _quiet():
        return quantize(Path(fp32_model), "int8_dynamic", out_dir / MODEL_FILE)
