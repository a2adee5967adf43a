"""ONNX Runtime adapter for decoder LMs exported by optimum (``text-generation-with-past``).

The KV cache is driven here with numpy (``past_key_values.N.key/value`` in, ``present.N.key/value`` out) rather
than through optimum's ``ORTModelForCausalLM``: that class needs torch and transformers, and the measuring agent
must run on a device with only numpy and onnxruntime installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_
from edgedistill.runtimes.llm import LLMSession
from edgedistill.runtimes.ort import cpu_session


@RUNTIMES.register("onnxruntime-llm")
class OrtLLMSession(LLMSession):
    """A ``model.onnx`` decoder with KV-cache inputs, run greedily on the CPU execution provider."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self._sess = cpu_session(path, threads)
        ins = {i.name: i for i in self._sess.get_inputs()}
        self._past = sorted((n for n in ins if n.startswith("past_key_values.")),
                            key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        if "input_ids" not in ins or not self._past:
            raise RuntimeError_(f"{path}: not a decoder with a KV cache (export it with text-generation-with-past)")
        shape = ins[self._past[0]].shape  # (batch, kv_heads, past_len, head_dim)
        self._kv_shape = (1, int(shape[1]), 0, int(shape[3]))
        outs = [o.name for o in self._sess.get_outputs()]
        self._outputs = ["logits", *(n.replace("past_key_values.", "present.") for n in self._past)]
        if any(n not in outs for n in self._outputs):
            raise RuntimeError_(f"{path}: outputs {outs[:3]}… do not match optimum's logits/present.N.key|value")
        self._position_ids = "position_ids" in ins
        self._vocab = int(self._sess.get_outputs()[0].shape[-1])
        self._threads, self._version, self._path = threads, ort.__version__, Path(path)
        self._cache: list[np.ndarray] = []
        self._len = 0

    @property
    def n_vocab(self) -> int:
        return self._vocab

    def _step(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, self._len + n), dtype=np.int64)}
        if self._position_ids:
            feed["position_ids"] = np.arange(self._len, self._len + n, dtype=np.int64)[None]
        feed.update(zip(self._past, self._cache, strict=True))
        out = self._sess.run(self._outputs, feed)
        self._cache, self._len = out[1:], self._len + n
        return out[0][0]

    def prefill(self, ids: list[int]) -> np.ndarray:
        self._cache = [np.zeros(self._kv_shape, dtype=np.float32) for _ in self._past]
        self._len = 0
        return self._step(list(ids))

    def decode(self, tok: int) -> np.ndarray:
        return self._step([tok])[-1]

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self._version, "threads": self._threads,
                "provider": "CPUExecutionProvider", "kv_cache": "f32"}
