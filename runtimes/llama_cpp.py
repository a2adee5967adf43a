"""llama.cpp adapter (llama-cpp-python) for GGUF language models.

Besides the common :class:`Session` interface (``run``: a batch of token-id rows → last-position logits), it
exposes what LLM measurements need: all-position logits for a token sequence, greedy generation, and
llama-bench-style prompt-processing / generation timings.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_, Session

#: llama.cpp ``ggml_type`` ids for the KV cache: 0 = F32 (parity checks), 1 = F16 (llama.cpp's default)
KV_F32, KV_F16 = 0, 1


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence llama.cpp's C-level logging to fd 2 (it bypasses Python's sys.stderr)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


@RUNTIMES.register("llama.cpp")
class LlamaCppSession(Session):
    """A GGUF model loaded by llama.cpp with ``threads`` threads; ``kv_f32`` keeps the KV cache in F32."""

    def __init__(self, path: Path, threads: int = 1, n_ctx: int = 512, kv_f32: bool = False) -> None:
        import llama_cpp

        kv = KV_F32 if kv_f32 else KV_F16
        try:
            with quiet_stderr():
                self._llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                            n_threads_batch=threads, logits_all=True, type_k=kv, type_v=kv,
                                            verbose=False)
        except ValueError as err:
            raise RuntimeError_(f"{path}: llama.cpp cannot load it ({err})") from None
        self._path, self._threads, self._kv = Path(path), threads, "f32" if kv_f32 else "f16"
        self._version = llama_cpp.__version__

    @property
    def n_vocab(self) -> int:
        return self._llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids``: ``(len(ids), V)`` float32 (fresh context each call)."""
        self._llm.reset()
        self._llm.eval(list(ids))
        return np.array(self._llm.scores[:len(ids)], dtype=np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: ``(B, L)`` token ids → last-position logits ``(B, V)``."""
        return np.stack([self.logits([int(t) for t in row])[-1] for row in np.asarray(x)])

    def generate(self, ids: list[int], max_new_tokens: int, eos: int | None = None) -> tuple[list[int], float]:
        """Greedy continuation of ``ids``; returns ``(new ids, seconds to the first new token)``."""
        self._llm.reset()
        t0 = time.perf_counter()
        out: list[int] = []
        ttft = 0.0
        for tok in self._llm.generate(list(ids), top_k=1, temp=0.0, reset=True):
            if not out:
                ttft = time.perf_counter() - t0
            if eos is not None and tok == eos:
                break
            out.append(int(tok))
            if len(out) >= max_new_tokens:
                break
        return out, ttft

    def bench(self, pp: int, tg: int, reps: int) -> dict[str, Any]:
        """llama-bench's pp/tg: tokens/s to process ``pp`` prompt tokens, then to generate ``tg`` tokens one by one
        (fixed ids, no sampling), each ``reps`` times; mean ± sd."""
        rng = np.random.default_rng(0)
        ids = [int(t) for t in rng.integers(3, self.n_vocab, pp)]
        pps, tgs = [], []
        for _ in range(reps):
            self._llm.reset()
            t = time.perf_counter()
            self._llm.eval(ids)
            pps.append(pp / (time.perf_counter() - t))
            self._llm.reset()
            self._llm.eval(ids[:1])
            t = time.perf_counter()
            for i in range(tg):
                self._llm.eval([ids[(i + 1) % pp]])
            tgs.append(tg / (time.perf_counter() - t))
        return {"pp_tokens": pp, "tg_tokens": tg, "reps": reps,
                "pp_tps": float(np.mean(pps)), "pp_tps_sd": float(np.std(pps)),
                "tg_tps": float(np.mean(tgs)), "tg_tps_sd": float(np.std(tgs))}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.close()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "llama.cpp", "version": self._version, "threads": self._threads, "kv_cache": self._kv}
