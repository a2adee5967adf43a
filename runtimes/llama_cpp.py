"""llama.cpp adapter (llama-cpp-python) for GGUF language models.

An :class:`~edgedistill.runtimes.llm.LLMSession`: all-position logits, greedy generation and llama-bench-style
timings come from the base class on top of llama.cpp's ``eval``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtimes.base import RUNTIMES, RuntimeError_
from edgedistill.runtimes.llm import LLMSession

#: llama.cpp ``ggml_type`` ids for the KV cache: 0 = F32 (parity checks), 1 = F16 (llama.cpp's default)
KV_F32, KV_F16 = 0, 1
#: ``general.file_type`` of a GGUF whose tensors are all F32 (llama.cpp's ``LLAMA_FTYPE_ALL_F32``)
FTYPE_ALL_F32 = 0


def _file_type(llama_cpp: Any, path: Path) -> int | None:
    """The GGUF's ``general.file_type``, read by llama.cpp itself from a vocab-only load (no weights)."""
    try:
        with quiet_stderr():
            meta = llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata
        return int(meta["general.file_type"])
    except (ValueError, KeyError):
        return None


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
class LlamaCppSession(LLMSession):
    """A GGUF model loaded by llama.cpp with ``threads`` threads. ``kv_f32`` keeps the KV cache in F32; by default
    an all-F32 file gets an F32 cache (it is the full-precision reference, held to the fp32 bound against its
    source: with llama.cpp's F16 default its logits drift by ~4e-4) and every other file llama.cpp's F16."""

    def __init__(self, path: Path, threads: int = 1, n_ctx: int = 512, kv_f32: bool | None = None) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise RuntimeError_(f"{Path(path).name}: llama-cpp-python is not installed here (PyPI has only its "
                                "source, built per machine; install it on the device to run GGUF files)") from None

        if kv_f32 is None:
            kv_f32 = _file_type(llama_cpp, path) == FTYPE_ALL_F32
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

    def prefill(self, ids: list[int]) -> np.ndarray:
        self._llm.reset()
        self._llm.eval(list(ids))
        return np.array(self._llm.scores[:len(ids)], dtype=np.float32)

    def decode(self, tok: int) -> np.ndarray:
        self._llm.eval([tok])
        return np.array(self._llm.scores[self._llm.n_tokens - 1], dtype=np.float32)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.close()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "llama.cpp", "version": self._version, "threads": self._threads, "kv_cache": self._kv}


def probe(path: str, texts: list[str], seqs: list[list[int]], long_ids: list[int], kv_f32: bool | None = None,
          threads: int = 2) -> dict[str, Any]:
    """Everything a parity check asks of one GGUF, in one load: its tokenisation of ``texts`` (BOS as the file
    says), its logits on ``seqs`` (concatenated, ``(sum L_i, V)``) and on ``long_ids`` (``(L, V)``), and its
    runtime description. Meant to run in a child process (:func:`probe_in_child`): llama.cpp may abort on a bad
    file, and tokenisation comes first because a broken vocabulary aborts there."""
    from edgedistill.runtimes.child import step

    step("loading")
    sess = LlamaCppSession(Path(path), threads=threads, n_ctx=max(len(long_ids), max(map(len, seqs), default=1)),
                           kv_f32=kv_f32)
    try:
        step("tokenising the parity texts with")
        tokens = [sess.tokenize(t) for t in texts]
        step("computing logits with")
        logits = [sess.logits(s) for s in seqs]
        long = sess.logits(long_ids)
        return {"tokens": tokens, "logits": np.concatenate(logits) if logits else np.zeros((0, sess.n_vocab)),
                "lengths": [len(s) for s in seqs], "long_logits": long, "runtime": sess.describe()}
    finally:
        sess.close()


def probe_in_child(path: Path, texts: list[str], seqs: list[list[int]], long_ids: list[int],
                   kv_f32: bool | None = None, threads: int = 2) -> dict[str, Any]:
    """:func:`probe` in a child process: a llama.cpp abort on ``path`` becomes a
    :class:`~edgedistill.runtimes.child.ChildCrash` naming the file and the step. ``logits`` comes back split per
    sequence (a list of ``(L_i, V)`` arrays)."""
    from edgedistill.runtimes.child import call

    doc = call(__name__, "probe", {"path": str(path), "texts": list(texts), "seqs": [list(map(int, s)) for s in seqs],
                                   "long_ids": list(map(int, long_ids)), "kv_f32": kv_f32, "threads": threads},
               file=Path(path), what="checking")
    doc["logits"] = np.split(doc["logits"], np.cumsum(doc.pop("lengths"))[:-1]) if seqs else []
    return doc
