"""LiteRT (TFLite) adapter: ``ai_edge_litert``'s Interpreter, or ``tflite_runtime``'s on boards that only have it.

Imports numpy and one interpreter package, nothing else (the benchmark agent runs it on boards).

What the adapter takes care of, so that every caller can hand it a float32 NCHW batch ``(B, C, H, W)``:

- **fixed batch**: a ``.tflite`` file has a static input shape; :attr:`max_batch` is the model's batch and
  :meth:`run` splits (and zero-pads the last chunk of) larger batches.
- **layout**: a model exported with ``layout: nhwc`` takes ``(B, H, W, C)``; the adapter compares the input
  shape with the model's and transposes when (and only when) the NHWC view is the one that matches.
- **int8 I/O**: a full-integer model's input and output are int8 (or uint8) tensors. Inputs are quantised as
  ``q = clip(round(x / scale) + zero_point)`` and outputs dequantised as ``(q - zero_point) * scale``, with the
  scale and zero-point read from the model's tensor details — never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_, Session


def _interpreter_class() -> tuple[type, str, str]:
    """``(Interpreter, package name, version)``: ai-edge-litert first, tflite-runtime as the fallback."""
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError:
        raise RuntimeError_("no TFLite interpreter installed: pip install 'ai-edge-litert>=2.3' "
                            "(or tflite-runtime on boards where only it exists)") from None


@dataclass(frozen=True)
class QuantParams:
    """Affine quantisation of one tensor, as stored in the model: ``real = (q - zero_point) * scale``."""

    dtype: np.dtype
    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict[str, Any], where: str) -> QuantParams | None:
        """The tensor's parameters, or None for a float tensor; ``where`` names the tensor in errors."""
        dtype = np.dtype(detail["dtype"])
        if dtype.kind == "f":
            return None
        qp = detail.get("quantization_parameters") or {}
        scales, zps = np.asarray(qp.get("scales", [])), np.asarray(qp.get("zero_points", []))
        if scales.size == 0:  # older runtimes only fill the (scale, zero_point) tuple
            scale, zp = detail.get("quantization", (0.0, 0))
            scales, zps = np.asarray([scale]), np.asarray([zp])
        if scales.size != 1 or not float(scales[0]) > 0:
            raise RuntimeError_(f"{where}: {dtype} tensor without one positive per-tensor scale "
                                f"(scales {scales.tolist()}); re-export it with float or per-tensor int8 I/O")
        return cls(dtype, float(scales[0]), int(zps[0]) if zps.size else 0)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        q = np.round(x.astype(np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.float64) - self.zero_point) * self.scale).astype(np.float32)


@RUNTIMES.register("litert")
class LiteRtSession(Session):
    """One ``.tflite`` model: first input ``(N, C, H, W)`` or ``(N, H, W, C)``, first output ``(N, K)``."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        interpreter_cls, self._package, self._version = _interpreter_class()
        try:
            self._it = interpreter_cls(model_path=str(path), num_threads=threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError_(f"{path}: {self._package} cannot load it ({first})") from None
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self._in_q = QuantParams.of(self._in, f"{path}: input {self._in['name']!r}")
        self._out_q = QuantParams.of(self._out, f"{path}: output {self._out['name']!r}")
        self._shape = tuple(int(s) for s in self._in["shape"])
        self.max_batch = self._shape[0]
        self._path, self._threads = path, threads

    @property
    def layout(self) -> str:
        """``nhwc`` when the model's input has its (3 or 1) channels last, else ``nchw``."""
        s = self._shape
        return "nhwc" if len(s) == 4 and s[3] in (1, 3) and s[1] not in (1, 3) else "nchw"

    def _to_model_layout(self, x: np.ndarray) -> np.ndarray:
        want = self._shape[1:]
        if tuple(x.shape[1:]) == want:
            return x
        if x.ndim == 4 and (x.shape[2], x.shape[3], x.shape[1]) == want:
            return x.transpose(0, 2, 3, 1)
        raise RuntimeError_(f"{self._path}: input of shape {tuple(x.shape)} fits neither the model's input "
                            f"{self._shape} nor its NHWC view; resize the images to the exported size")

    def run(self, x: np.ndarray) -> np.ndarray:
        """Map float32 ``(B, C, H, W)`` to float32 logits ``(B, K)``, in chunks of the model's fixed batch."""
        x = self._to_model_layout(np.asarray(x, dtype=np.float32))
        n, step = len(x), self.max_batch
        if n == step:  # the timed case (batch 1): no chunk bookkeeping (it cost 9% on a 48 µs model)
            return self._invoke(x)
        outs = []
        for i in range(0, n, step):
            chunk = x[i:i + step]
            if len(chunk) < step:  # zero-pad the last chunk to the fixed batch
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            outs.append(self._invoke(chunk)[:min(step, n - i)])
        return np.concatenate(outs)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        feed = self._in_q.quantize(x) if self._in_q else x
        self._it.set_tensor(self._in["index"], np.ascontiguousarray(feed))
        self._it.invoke()
        out = self._it.get_tensor(self._out["index"])
        # get_tensor returns a copy already: convert only when the output is not float32
        return self._out_q.dequantize(out) if self._out_q else out.astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        def q(p: QuantParams | None) -> dict[str, Any] | None:
            return None if p is None else {"dtype": str(p.dtype), "scale": p.scale, "zero_point": p.zero_point}

        return {"runtime": "litert", "package": self._package, "version": self._version, "threads": self._threads,
                "input_shape": list(self._shape), "layout": self.layout, "input_quantization": q(self._in_q),
                "output_quantization": q(self._out_q)}
