"""llama.cpp's own command-line tools for the host, built once per machine from the same llama-cpp-python sdist the
installed runtime was built from (:mod:`edgedistill.core.llama_source`): an independent second opinion with the
same kernels. Today one tool, ``llama-perplexity``, whose ``--kl-divergence`` cross-checks the project's own KLD
and same-top-token figures (``perf/kld_real.py``, ``tests/test_kld_crosscheck.py``).

Built with the host's ``cmake`` and C++ compiler into ``~/.cache/edgedistill/llama.cpp-tools-<version>/bin``
(:func:`~edgedistill.core.paths.tools_root`: a pinned tool like the wheel, not run state), target
``llama-perplexity`` only, static llama/ggml libraries, ``GGML_NATIVE=ON`` with AMX off (:data:`C_FLAGS`), the
flags ``make setup`` gives the llama-cpp-python wheel, so both run the same kernels on this CPU. ``info.json``
records the version, flags, compiler and seconds. One builder at a time per machine (a lock).

The tool reads only the GGUF and text files named on its command line; it runs as a child that dies with this
process (:func:`~edgedistill.core.procs.dies_with_us`), without a shell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgedistill.core import llama_source, locks
from edgedistill.core.fileio import write_json
from edgedistill.core.paths import tools_root
from edgedistill.core.procs import dies_with_us

#: the wheel's flags (Makefile ``NOAMX``): this VM family advertises AMX but its kernel does not enable tile data
C_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
               f"-DCMAKE_C_FLAGS={C_FLAGS}", f"-DCMAKE_CXX_FLAGS={C_FLAGS}")
TARGET = "llama-perplexity"
_DONE = "info.json"


class LlamaToolsError(llama_source.LlamaSourceError):
    """The host build cannot run, failed, or the tool's run failed; the message names the fix or the file."""


def tools_dir(version: str | None = None) -> Path:
    """``~/.cache/edgedistill/llama.cpp-tools-<version>``."""
    return tools_root() / f"llama.cpp-tools-{version or llama_source.installed_version()}"


def info() -> dict[str, Any]:
    """What was built: version, flags, compiler, seconds."""
    return json.loads((tools_dir() / _DONE).read_text())


def _run(cmd: list[str], what: str, log_to: Path) -> None:
    with open(log_to, "a") as log:
        proc = subprocess.run(dies_with_us(cmd), stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log_to.read_text(errors="replace").strip().splitlines()[-8:])
        raise LlamaToolsError(f"host llama.cpp tools: {what} failed (exit {proc.returncode}); log {log_to}:\n{tail}")


def ensure_perplexity(log: Callable[[str], None] = print) -> Path:
    """The ``llama-perplexity`` binary for the installed llama-cpp-python, built on first use (idempotent; one
    builder at a time per machine)."""
    version = llama_source.installed_version()
    dest = tools_dir(version)
    if (dest / _DONE).is_file():
        return dest / "bin" / TARGET
    if missing := [t for t in ("cmake", "c++") if shutil.which(t) is None]:
        raise LlamaToolsError(f"host llama.cpp tools: missing {', '.join(missing)} (apt-get install cmake g++)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locks.locked(dest.with_name(f".{dest.name}.lock")):
        if (dest / _DONE).is_file():
            return dest / "bin" / TARGET
        log(f"  building llama.cpp {version}'s {TARGET} for this host (once per machine, a few minutes)")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".llama-tools-", dir=dest.parent) as tmp:
            staging = _build(Path(tmp), version)
            seconds = time.monotonic() - t0
            write_json(staging / _DONE, {
                "llama_cpp_python": version, "targets": [TARGET], "cmake_flags": list(CMAKE_FLAGS),
                "compiler": _compiler_version(), "seconds": round(seconds, 1), "cpus": os.cpu_count()})
            shutil.rmtree(dest, ignore_errors=True)  # a partial folder from an interrupted build
            staging.rename(dest)
        log(f"  built {dest / 'bin' / TARGET} in {seconds:.0f} s")
    return dest / "bin" / TARGET


def _build(tmp: Path, version: str) -> Path:
    sdist = llama_source.download_sdist(version, tmp, hint="the host llama.cpp tools need the llama-cpp-python sdist "
                                                            "from PyPI once per machine")
    src, build, staging, log = tmp / "src", tmp / "build", tmp / "staging", tmp / "build.log"
    skip = ("models",), ("docs",), ("media",)
    llama_source.extract(sdist, src, lambda rel: PurePosixPath(rel).parts[:1] not in skip)
    _run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], "cmake configure", log)
    _run(["cmake", "--build", str(build), "--target", TARGET, "-j", str(os.cpu_count() or 2)], "compile", log)
    binary = build / "bin" / TARGET
    if not binary.is_file():
        raise LlamaToolsError(f"host llama.cpp tools: the build made no {TARGET} (log {log})")
    (staging / "bin").mkdir(parents=True)
    shutil.copy2(binary, staging / "bin" / TARGET)
    _run(["strip", "--strip-unneeded", str(staging / "bin" / TARGET)], f"strip {TARGET}", log)
    return staging


def _compiler_version() -> str:
    proc = subprocess.run(["c++", "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.splitlines() or ["?"])[0]


# -- llama-perplexity --kl-divergence ------------------------------------------------------------------------------
@dataclass
class ToolKLD:
    """What ``llama-perplexity --kl-divergence`` prints for one model against a saved base."""

    kld_mean: float
    kld_p99: float
    same_top_token: float
    perplexity: float
    n_tokens: int  # scored tokens: chunks × (n_ctx − n_ctx/2 − 1)
    chunks: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: the tool prints ``Mean    KLD:   0.012345 ±   0.000123`` (6 decimals: a mean KLD is known to ±5e-7),
#: ``99.0%   KLD:   0.1``, ``Same top p:  98.765 ±  0.123 %`` and ``Mean PPL(Q)   :   12.345678 ± ...``
KLD_RESOLUTION = 5e-7
_MEAN_KLD = re.compile(r"^Mean\s+KLD:\s+(-?[0-9.eE+-]+)", re.MULTILINE)
_P99_KLD = re.compile(r"^99\.0%\s+KLD:\s+(-?[0-9.eE+-]+)", re.MULTILINE)
_SAME_TOP = re.compile(r"^Same top p:\s+([0-9.eE+-]+)\s*±", re.MULTILINE)
_PPL = re.compile(r"^Mean PPL\(Q\)\s+:\s+([0-9.eE+-]+)", re.MULTILINE)
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks")
_COMPUTING = re.compile(r"computing over (\d+) chunks")


def _perplexity(model: Path, args: list[str], threads: int, kv_f32: bool, timeout_s: float) -> str:
    """Run the tool on ``model`` with llama-cpp-python's defaults (flash attention off; KV cache F16, or F32 when
    ``kv_f32``, as :class:`~edgedistill.runtimes.llama_cpp.LlamaCppSession` gives an all-F32 file)."""
    binary = ensure_perplexity()
    kv = ["-ctk", "f32", "-ctv", "f32"] if kv_f32 else []
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads), "--no-warmup", "-fa", "off",
           *kv, *args]
    try:
        proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise LlamaToolsError(f"{TARGET} ran past {timeout_s:.0f} s on {model}") from None
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise LlamaToolsError(f"{TARGET} failed on {model} (exit {proc.returncode}): {tail[-400:]}")
    return out


def kld_base(model: Path, text: Path, base: Path, n_ctx: int = 512, chunks: int | None = None, threads: int = 2,
             kv_f32: bool = False, timeout_s: float = 3600) -> int:
    """Save ``model``'s log-probabilities over ``text`` to ``base`` (``--kl-divergence-base``: the tokens, then
    per chunk the second half's log-probabilities as uint16); returns the chunk count."""
    args = ["-f", str(text), "-c", str(n_ctx), "-b", str(n_ctx), "--kl-divergence-base", str(base)]
    out = _perplexity(model, args + (["--chunks", str(chunks)] if chunks else []), threads, kv_f32, timeout_s)
    if not base.is_file() or not (m := _CHUNKS.search(out)):
        raise LlamaToolsError(f"{TARGET} wrote no logits base for {model} (output ends: {out.strip()[-300:]})")
    return int(m.group(1))


def base_tokens(base: Path) -> tuple[int, int, list[list[int]]]:
    """``(n_ctx, n_vocab, chunks of token ids)`` from a ``--kl-divergence-base`` file (the tool's own
    tokenisation: what its figures cover)."""
    import numpy as np

    with open(base, "rb") as f:
        head = f.read(20)
        if len(head) < 20 or head[:8] != b"_logits_":
            raise LlamaToolsError(f"{base}: not a llama-perplexity logits base")
        n_ctx, n_vocab, n_chunk = np.frombuffer(head[8:], dtype="<i4").tolist()
        toks = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype="<i4")
    if toks.size != n_ctx * n_chunk:
        raise LlamaToolsError(f"{base}: truncated ({toks.size} of {n_ctx * n_chunk} tokens)")
    return n_ctx, n_vocab, toks.reshape(n_chunk, n_ctx).tolist()


def kld(model: Path, base: Path, n_ctx: int = 512, threads: int = 2, kv_f32: bool = False,
        timeout_s: float = 3600) -> ToolKLD:
    """``model`` against the saved ``base`` (``--kl-divergence``): its Mean KLD, 99th-percentile KLD and Same top p
    (the base holds the tokens and the chunk count)."""
    out = _perplexity(model, ["-c", str(n_ctx), "-b", str(n_ctx), "--kl-divergence-base", str(base),
                              "--kl-divergence"], threads, kv_f32, timeout_s)
    found = [r.search(out) for r in (_MEAN_KLD, _P99_KLD, _SAME_TOP, _PPL, _COMPUTING)]
    if not all(found):
        raise LlamaToolsError(f"{TARGET} printed no KLD summary for {model} (output ends: {out.strip()[-300:]})")
    mean, p99, same, ppl, chunks = (m.group(1) for m in found if m is not None)
    return ToolKLD(float(mean), float(p99), float(same) / 100, float(ppl), int(chunks) * (n_ctx - n_ctx // 2 - 1),
                   int(chunks))


# -- the project's side: the same chunks through llama-cpp-python -------------------------------------------------
def tokenize_text(path: str, text: str) -> dict[str, Any]:
    """``text`` tokenised by ``path``'s vocabulary as llama-perplexity does (BOS only when the file adds one, special
    tokens not parsed), and the BOS it adds (``[]`` or ``[id]``). Meant for a child (:func:`in_child`)."""
    from edgedistill.runtimes.child import step
    from edgedistill.runtimes.llama_cpp import LlamaCppSession

    step("loading")
    sess = LlamaCppSession(Path(path), threads=1, n_ctx=8)
    try:
        step("tokenising with")
        return {"tokens": sess.tokenize(text), "bos": sess.tokenize("")}
    finally:
        sess.close()


def scored_logits(path: str, chunks: list[list[int]], first: int, out: str, kv_f32: bool | None = None,
                  threads: int = 2) -> dict[str, Any]:
    """Logits of ``path`` at positions ``first … n_ctx−2`` of every chunk (fresh context per chunk), written to the
    ``.npy`` file ``out`` as float32 ``(chunks × (n_ctx−1−first), V)`` (too large to pass back in memory).
    Meant for a child (:func:`in_child`)."""
    import numpy as np

    from edgedistill.runtimes.child import step
    from edgedistill.runtimes.llama_cpp import LlamaCppSession

    step("loading")
    n_ctx = max(map(len, chunks))
    sess = LlamaCppSession(Path(path), threads=threads, n_ctx=n_ctx, kv_f32=kv_f32)
    try:
        step("computing logits with")
        per = n_ctx - 1 - first
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(chunks) * per, sess.n_vocab))
        for i, c in enumerate(chunks):
            arr[i * per:(i + 1) * per] = sess.logits(c)[first:n_ctx - 1]
        arr.flush()
        return {"rows": len(chunks) * per, "runtime": sess.describe()}
    finally:
        sess.close()


def in_child(function: str, path: Path, what: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`tokenize_text` or :func:`scored_logits` on ``path`` in a child process (a llama.cpp abort names the
    file)."""
    from edgedistill.runtimes.child import call

    return call(__name__, function, {"path": str(path), **kwargs}, file=path, what=what)


if __name__ == "__main__":  # `make test-setup`: build llama-perplexity once per machine
    print(ensure_perplexity())
