"""Run native code that reads an exported or user file in a child Python process, so that its crash is one line.

llama.cpp throws C++ exceptions through ``abort()`` on some malformed files (a vocabulary whose byte tokens are
missing aborts in ``llama_vocab::byte_to_token`` on any text), and such an abort ends the whole process that
loaded it. :func:`call` runs ``module.function(**kwargs)`` in a fresh interpreter (``python -m
edgedistill.runtimes.child``: fork + exec, safe beside torch's threads) and returns its result; a child that dies
becomes a :class:`ChildCrash` naming the file, the step it was in and its most telling stderr line. The child
dies with the calling process (:func:`edgedistill.core.procs.dies_with_us`).

Protocol: the request (module, function, JSON-able kwargs) goes in as JSON on stdin; the child writes the
function's result into a private folder: numpy arrays to ``result.npz`` (no pickle), everything else to
``result.json``. The function may call :func:`step` to say what it is doing, so a crash names the step.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.core.procs import dies_with_us
from edgedistill.runtimes.base import RuntimeError_

#: only functions of this package run in the child
_PACKAGE = "edgedistill."
_STEP = "edgedistill-step: "
_CHILD_ENV = "EDGEDISTILL_CHILD"
#: stderr lines that say why native code died (C++ exceptions, ggml/llama asserts); the last one is taken
_TELLING = re.compile(r"terminate called|what\(\):|GGML_ASSERT|error|exception|Segmentation", re.IGNORECASE)


class ChildCrash(RuntimeError_):
    """The child died (a signal or abort) or its function raised; the message is one line naming the file."""

    def __init__(self, message: str, file: Path, step: str) -> None:
        super().__init__(message)
        self.file, self.step = file, step


def step(what: str) -> None:
    """In the child: record what it does next (``"tokenising the parity texts"``), for a crash's message
    (nothing when the function runs in the calling process)."""
    if os.environ.get(_CHILD_ENV):
        os.write(2, f"\n{_STEP}{what}\n".encode())


def exit_description(rc: int) -> str:
    """``rc`` as words: ``killed by SIGABRT`` for a signal (negative code), ``exit code 3`` otherwise."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return "aborted (exit code 134)" if rc == 134 else f"exit code {rc}"


def telling_line(stderr: str) -> str:
    """The line of a dead process's stderr that says most about why (a C++ exception with its ``what()``, an
    assert), else its last line; step markers and backtrace frames skipped."""
    lines = [" ".join(ln.split()) for ln in stderr.splitlines()
             if ln.strip() and not ln.startswith(_STEP) and not ln.lstrip().startswith("#")]
    telling = [ln for ln in lines if _TELLING.search(ln)]
    line = (telling or lines or ["no output"])[-1]
    if any(ln.startswith("terminate called") for ln in telling):  # the exception's type, then its what()
        i = next(i for i, ln in enumerate(lines) if ln.startswith("terminate called"))
        line = " ".join(lines[i:i + 2]) if i + 1 < len(lines) and "what()" in lines[i + 1] else lines[i]
    return line[:400]


def call(module: str, function: str, kwargs: dict[str, Any], *, file: Path, what: str, native: str = "llama.cpp",
         timeout_s: float = 3600) -> dict[str, Any]:
    """``module.function(**kwargs)`` in a child process; its result dict (arrays from ``result.npz``).

    ``file`` and ``what`` name the work in error messages (the child's last :func:`step` overrides ``what``);
    ``native`` names the library whose crash it would be. Raises :class:`ChildCrash`.
    """
    if not module.startswith(_PACKAGE):
        raise ValueError(f"child.call: {module} is not a module of edgedistill")
    with tempfile.TemporaryDirectory(prefix="edgedistill-child-") as tmp:
        request = json.dumps({"module": module, "function": function, "kwargs": kwargs, "out": tmp})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GGML_NO_BACKTRACE": "1", _CHILD_ENV: "1",
               "PYTHONSAFEPATH": "1"}  # never import a module from the working directory  # no gdb on abort
        try:
            proc = subprocess.run(dies_with_us([sys.executable, "-m", __name__]), input=request, capture_output=True,
                                  text=True, env=env, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ChildCrash(f"{native} ran past {timeout_s:.0f} s while {what} {file}", Path(file), what) from None
        steps = [ln[len(_STEP):].strip() for ln in proc.stderr.splitlines() if ln.startswith(_STEP)]
        doing = steps[-1] if steps else what
        result = Path(tmp) / "result.json"
        if proc.returncode != 0 or not result.is_file():
            raise ChildCrash(f"{native} {exit_description(proc.returncode)} while {doing} {file}: "
                             f"{telling_line(proc.stderr)}", Path(file), doing)
        doc = json.loads(result.read_text())
        if "error" in doc:
            raise ChildCrash(f"{doc['error']} (while {doing} {file})", Path(file), doing)
        arrays = Path(tmp) / "result.npz"
        if arrays.is_file():
            with np.load(arrays, allow_pickle=False) as z:
                doc.update({k: z[k] for k in z.files})
        return doc


def _main() -> int:
    req = json.loads(sys.stdin.read())
    out = Path(req["out"])
    if not req["module"].startswith(_PACKAGE):
        raise SystemExit(f"child: {req['module']} is not a module of edgedistill")
    try:
        result = getattr(importlib.import_module(req["module"]), req["function"])(**req["kwargs"])
    except Exception as err:  # noqa: BLE001  (any Python error goes back to the parent as its one line)
        (out / "result.json").write_text(json.dumps({"error": " ".join(str(err).split()) or type(err).__name__}))
        return 0
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    if arrays:
        with open(out / "result.npz", "wb") as f:
            np.savez(f, **arrays)
    (out / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k not in arrays}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
