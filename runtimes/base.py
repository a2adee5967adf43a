"""The runtime interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.core.registry import Registry


class Session(ABC):
    """A loaded model. ``run`` maps a float32 batch ``(B, ...)`` to float32 outputs ``(B, K)``."""

    #: largest batch ``run`` accepts (None: any); fixed-shape formats such as TFLite say 1
    max_batch: int | None = None
    #: the artifact is a folder (a Hugging Face model), not one file
    folder: bool = False

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime name and version, threads, and anything that affects the numbers."""

    def run_all(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """Run a whole array in batches no larger than :attr:`max_batch`."""
        step = min(batch, self.max_batch or batch)
        return np.concatenate([self.run(x[i:i + step]) for i in range(0, len(x), step)])


class RuntimeError_(RuntimeError):
    """A runtime cannot open or run an artifact; the message names the file."""


#: name -> module that registers it (imported on first use so that only the needed runtime package is loaded)
RUNTIMES: Registry[type[Session]] = Registry("runtime", modules={
    "onnxruntime": "edgedistill.runtimes.ort", "torch": "edgedistill.runtimes.torch_ref",
    "litert": "edgedistill.runtimes.litert", "llama.cpp": "edgedistill.runtimes.llama_cpp",
    "onnxruntime-llm": "edgedistill.runtimes.ort_llm", "pytorch-llm": "edgedistill.runtimes.torch_lm"})
_SUFFIXES = {".onnx": "onnxruntime", ".safetensors": "torch", ".tflite": "litert", ".gguf": "llama.cpp"}


def runtime_for(path: str | Path) -> str:
    """The default runtime for an artifact, by file suffix (a folder with a ``config.json``: a HF causal LM)."""
    if Path(path).is_dir() and (Path(path) / "config.json").is_file():
        return "pytorch-llm"
    suffix = Path(path).suffix
    if suffix not in _SUFFIXES:
        raise RuntimeError_(f"{path}: no runtime for '{suffix}' files; known: {', '.join(_SUFFIXES)}")
    return _SUFFIXES[suffix]


def open_session(runtime: str, path: str | Path, threads: int = 1) -> Session:
    """Load ``path`` with the named runtime using ``threads`` intra-op threads."""
    try:
        cls = RUNTIMES.get(runtime)
    except ImportError as err:  # e.g. llama-cpp-python has no wheel for this device
        raise RuntimeError_(f"{path}: the {runtime} runtime is not installed here ({err})") from None
    path = Path(path)
    if not (path.is_dir() if cls.folder else path.is_file()):
        raise RuntimeError_(f"{path}: artifact not found")
    return cls(path, threads)  # type: ignore[call-arg]
