"""llama.cpp for aarch64 boards: cross-built once per machine from the same llama-cpp-python sdist the host runtime
was built from, so a GGUF file runs under ``qemu-arm64`` and on SSH boards with the host's llama.cpp version.

One build per Arm ISA the profiles name (:data:`ARCHES`): Armv8.0-A for the Pi 4's Cortex-A72, and Armv8.2-A with
the dot product for the Pi 5's Cortex-A76 and the phone class (their int8/Q4 kernels use SDOT). Each build is a
folder to put on ``PYTHONPATH`` on the target: the sdist's pure-Python ``llama_cpp`` package with the cross-built
shared libraries in ``llama_cpp/lib`` (where the package looks for them), plus the aarch64 wheels it imports
(diskcache, jinja2, markupsafe, typing-extensions). The board then needs only Python 3 and numpy.

Built with Debian's ``aarch64-linux-gnu-gcc`` and CMake, targets ``llama`` only (no tools, tests or server),
``GGML_NATIVE=OFF`` (the host's CPU says nothing about the board's), ``GGML_OPENMP=OFF`` (ggml's own threads: the
board needs no libgomp), stripped. About 100 s per ISA on 2 cores; ~6 MB per build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from edgedistill.core import llama_source, locks
from edgedistill.core.fileio import write_json
from edgedistill.core.paths import tools_root
from edgedistill.devices.profile import DeviceProfile

#: build name → ``GGML_CPU_ARM_ARCH`` (gcc's ``-march``)
ARCHES = {"armv8-a": "armv8-a", "armv8.2-a+dotprod": "armv8.2-a+dotprod"}
#: pure-Python (or aarch64) packages ``llama_cpp`` imports
DEPS = ["diskcache", "jinja2", "markupsafe", "typing-extensions"]
TOOLS = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
         "cmake": "cmake"}
_DONE = "build.json"


class LlamaArm64Error(llama_source.LlamaSourceError):
    """The cross-build cannot run or failed; the message names the fix."""


def arch_for(profile: DeviceProfile) -> str | None:
    """The build a profile's core runs: dot product when its features list ``asimddp``; None for a non-Arm profile."""
    if not profile.isa.lower().startswith("armv"):
        return None
    return "armv8.2-a+dotprod" if "asimddp" in (profile.features or []) else "armv8-a"


def build_dir(arch: str, version: str | None = None) -> Path:
    """``~/.cache/edgedistill/llama.cpp-aarch64-<version>-<arch>``: a pinned tool like the host wheel."""
    return tools_root() / f"llama.cpp-aarch64-{version or llama_source.installed_version()}-{arch}"


def info(arch: str) -> dict[str, Any]:
    """What was built: version, ISA flags, compiler, seconds and bytes."""
    return json.loads((build_dir(arch) / _DONE).read_text())


def missing_tools() -> list[str]:
    return [f"{t} (apt-get install {pkg})" for t, pkg in TOOLS.items() if shutil.which(t) is None]


def _run(cmd: list[str], what: str, log_to: Path, **kw: Any) -> None:
    with open(log_to, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join(log_to.read_text(errors="replace").strip().splitlines()[-8:])
        raise LlamaArm64Error(f"aarch64 llama.cpp: {what} failed (exit {proc.returncode}); log {log_to}:\n{tail}")


def ensure(arch: str, log: Any = print) -> Path:
    """The build folder for ``arch``, cross-building it first if this machine has none (idempotent; one builder at
    a time per machine)."""
    if arch not in ARCHES:
        raise LlamaArm64Error(f"{arch}: no such aarch64 llama.cpp build (choose from {', '.join(ARCHES)})")
    version = llama_source.installed_version()
    dest = build_dir(arch, version)
    if (dest / _DONE).is_file():
        return dest
    if missing := missing_tools():
        raise LlamaArm64Error(f"aarch64 llama.cpp ({arch}): missing host tools: {', '.join(missing)}; `make "
                              "test-setup` installs them")
    with locks.locked(dest.with_name(f".{dest.name}.lock")):
        if (dest / _DONE).is_file():
            return dest
        log(f"  cross-building llama.cpp {version} for aarch64 {arch} (once per machine, ~2 min)")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".llama-aarch64-", dir=dest.parent) as tmp:
            staging = _build(Path(tmp), version, arch)
            seconds = time.monotonic() - t0
            size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file() and not f.is_symlink())
            write_json(staging / _DONE, {
                "llama_cpp_python": version, "arch": arch, "march": ARCHES[arch], "seconds": round(seconds, 1),
                "bytes": size, "compiler": _compiler_version(), "targets": ["llama"],
                "libs": sorted(p.name for p in (staging / "llama_cpp" / "lib").iterdir())})
            shutil.rmtree(dest, ignore_errors=True)  # a partial folder from an interrupted build
            staging.rename(dest)
        log(f"  built {dest} in {seconds:.0f} s ({size / 1e6:.1f} MB)")
    return dest


def _build(tmp: Path, version: str, arch: str) -> Path:
    """Extract, configure, compile and stage one build under ``tmp``; returns the staged folder."""
    sdist = llama_source.download_sdist(version, tmp, hint="the aarch64 build needs the llama-cpp-python sdist "
                                                            "from PyPI once per machine")
    src, staging, log = tmp / "src", tmp / "staging", tmp / "build.log"
    llama_source.extract(sdist, src, lambda rel: rel.parts[:1] not in (("models",), ("docs",), ("media",)))
    n = llama_source.extract(sdist, staging / "llama_cpp", lambda rel: rel.suffix in (".py", ".typed"),
                             base="llama_cpp/")
    if not n:
        raise LlamaArm64Error(f"{sdist.name}: no llama_cpp/ package in the sdist")
    build = tmp / "build"
    cfg = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_SYSTEM_NAME=Linux",
           "-DCMAKE_SYSTEM_PROCESSOR=aarch64", "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc",
           "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF",
           f"-DGGML_CPU_ARM_ARCH={ARCHES[arch]}", "-DGGML_OPENMP=OFF", "-DLLAMA_BUILD_TESTS=OFF",
           "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
           "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
           "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN"]
    _run(cfg, "cmake configure", log)
    _run(["cmake", "--build", str(build), "--target", "llama", "-j", str(os.cpu_count() or 2)], "compile", log)
    lib = staging / "llama_cpp" / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for so in sorted((build / "bin").glob("lib*.so*")):
        if so.is_symlink():
            (lib / so.name).symlink_to(os.readlink(so))
        else:
            shutil.copy2(so, lib / so.name)
            _run(["aarch64-linux-gnu-strip", "--strip-unneeded", str(lib / so.name)], f"strip {so.name}", log)
    if not (lib / "libllama.so").exists():
        raise LlamaArm64Error(f"aarch64 llama.cpp: the build made no libllama.so (log {log})")
    tags = [f"manylinux_2_{n}_aarch64" for n in range(17, 37)] + ["manylinux2014_aarch64", "any"]
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", "--no-deps",
          "--target", str(staging), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
          *[a for t in tags for a in ("--platform", t)], *DEPS], "pip install the aarch64 dependencies", log)
    return staging


def _compiler_version() -> str:
    proc = subprocess.run(["aarch64-linux-gnu-gcc", "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout.splitlines() or ["?"])[0]


def relative_files(root: Path) -> list[PurePosixPath]:
    """Every file and link of a build, relative to it (what a push must copy)."""
    return sorted(PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*")
                  if p.is_file() or p.is_symlink())
