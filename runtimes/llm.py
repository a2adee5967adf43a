"""What every language-model runtime adapter shares: greedy generation with a KV cache, and llama-bench-style
prompt-processing / generation timings, written once on top of two primitives each adapter supplies."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np

from edgedistill.runtimes.base import Session


class LLMSession(Session):
    """A causal LM. Subclasses implement :meth:`prefill` (fresh context) and :meth:`decode` (one more token)."""

    @property
    @abstractmethod
    def n_vocab(self) -> int: ...

    @abstractmethod
    def prefill(self, ids: list[int]) -> np.ndarray:
        """Start a fresh context with ``ids``; return the logits at every position, ``(len(ids), V)``."""

    @abstractmethod
    def decode(self, tok: int) -> np.ndarray:
        """Append one token to the current context; return its next-token logits ``(V,)``."""

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids``: ``(len(ids), V)`` float32 (fresh context each call)."""
        return np.asarray(self.prefill(list(ids)), dtype=np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: ``(B, L)`` token ids → last-position logits ``(B, V)``."""
        return np.stack([self.logits([int(t) for t in row])[-1] for row in np.asarray(x)])

    def generate(self, ids: list[int], max_new_tokens: int, eos: int | None = None) -> tuple[list[int], float]:
        """Greedy continuation of ``ids``; returns ``(new ids, seconds to the first new token)``."""
        t0 = time.perf_counter()
        logits = self.prefill(list(ids))[-1]
        out: list[int] = []
        ttft = 0.0
        while True:
            tok = int(np.argmax(logits))
            if not out:
                ttft = time.perf_counter() - t0
            if eos is not None and tok == eos:
                break
            out.append(tok)
            if len(out) >= max_new_tokens:
                break
            logits = self.decode(tok)
        return out, ttft

    def bench(self, pp: int, tg: int, reps: int) -> dict[str, Any]:
        """llama-bench's pp/tg: tokens/s to process ``pp`` prompt tokens, then to generate ``tg`` tokens one by one
        (fixed ids, no sampling), each ``reps`` times; mean ± sd."""
        rng = np.random.default_rng(0)
        ids = [int(t) for t in rng.integers(3, self.n_vocab, pp)]
        pps, tgs = [], []
        for _ in range(reps):
            t = time.perf_counter()
            self.prefill(ids)
            pps.append(pp / (time.perf_counter() - t))
            self.prefill(ids[:1])
            t = time.perf_counter()
            for i in range(tg):
                self.decode(ids[(i + 1) % pp])
            tgs.append(tg / (time.perf_counter() - t))
        return {"pp_tokens": pp, "tg_tokens": tg, "reps": reps,
                "pp_tps": float(np.mean(pps)), "pp_tps_sd": float(np.std(pps)),
                "tg_tps": float(np.mean(tgs)), "tg_tps_sd": float(np.std(tgs))}

    def close(self) -> None:
        """Release the model (optional)."""
