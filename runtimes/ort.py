"""ONNX Runtime adapter (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_, Session


def cpu_session(path: Path, threads: int) -> Any:
    """An ``InferenceSession`` on the CPU EP: ``threads`` intra-op threads, sequential, all graph optimisations,
    warnings off; a file ORT cannot load is a :class:`RuntimeError_` naming it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
        raise RuntimeError_(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None


@RUNTIMES.register("onnxruntime")
class OrtSession(Session):
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self._sess = cpu_session(path, threads)
        self._input = self._sess.get_inputs()[0].name
        batch = self._sess.get_inputs()[0].shape[0]
        self.max_batch = batch if isinstance(batch, int) else None
        self._threads = threads
        self._version = ort.__version__

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self._version, "threads": self._threads,
                "provider": "CPUExecutionProvider"}
