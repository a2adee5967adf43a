"""The llama.cpp source the installed llama-cpp-python was built from: one home for fetching it and extracting
parts of it safely. Its converter (GGUF export) and its C++ tree (the aarch64 build for emulated and SSH boards)
both come from this one sdist, so every tool and library the project uses is the same llama.cpp version.

The sdist is fetched with ``pip download --no-deps --no-binary :all: llama-cpp-python==<version>`` (no code from
it runs here) and extracted member by member: no absolute paths, no ``..``, regular files only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from edgedistill.core.errors import UserError


class LlamaSourceError(UserError, RuntimeError):
    """The sdist cannot be fetched or is malformed; the message names it and the fix."""


def installed_version() -> str:
    """The installed llama-cpp-python's version: the one place the llama.cpp version comes from."""
    try:
        import llama_cpp
    except ImportError:
        raise LlamaSourceError("llama-cpp-python is not installed (`make setup` builds it); GGUF needs it") from None
    return str(llama_cpp.__version__)


def download_sdist(version: str, into: Path, hint: str = "") -> Path:
    """``llama_cpp_python-<version>.tar.gz`` fetched into ``into``; ``hint`` says what to do without PyPI."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
           "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", str(into)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise LlamaSourceError(f"cannot fetch the llama.cpp source: `{' '.join(cmd[2:])}` failed (exit "
                               f"{proc.returncode}): {proc.stderr.strip()[-800:]}" + (f"\n{hint}" if hint else ""))
    return found[0]


def extract(sdist: Path, dest: Path, keep: Callable[[PurePosixPath], bool], base: str = "vendor/llama.cpp/") -> int:
    """Copy the members under the sdist's ``base`` (relative to its top folder) for which ``keep(relative path)``
    holds into ``dest``; refuse absolute paths, ``..``, links and devices. Returns the number of files written."""
    n = 0
    with tarfile.open(sdist, "r:gz") as tf:
        members = tf.getmembers()
        tops = {m.name.split("/", 1)[0] for m in members}
        if len(tops) != 1:
            raise LlamaSourceError(f"{sdist.name}: not one top folder in the sdist ({len(tops)})")
        root = f"{tops.pop()}/{base}"
        for m in members:
            if not m.name.startswith(root):
                continue
            rel = PurePosixPath(m.name[len(root):])
            if not keep(rel):
                continue
            if rel.is_absolute() or ".." in rel.parts or PurePosixPath(m.name).is_absolute():
                raise LlamaSourceError(f"{sdist.name}: unsafe path {m.name!r} in the sdist")
            if m.isdir():
                continue
            if not m.isfile():
                raise LlamaSourceError(f"{sdist.name}: {m.name!r} is not a regular file (link or device); "
                                       "refusing it")
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    return n
