"""Device profiles: what a target can do (cores, clock, RAM, ISA, peaks), validated by pydantic.

Built-ins live in ``devices/profiles/*.yaml`` (each figure with its public source in a comment); users add their
own with a YAML file or a folder of them (``edgedistill devices --profile my.yaml``). ``host`` is detected at run
time.
"""

from __future__ import annotations

import os
import platform
import re
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_PACKAGE = "edgedistill.devices.profiles"


class ProfileError(ValueError):
    """A profile file is missing or invalid; the message names the file and the field."""


class DeviceProfile(BaseModel):
    """One device's capabilities. Peaks are for all cores together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    kind: Literal["host", "board", "phone", "other"] = "other"
    detect: bool = Field(False, description="fill the figures from this machine at run time (host only)")
    cores: int = Field(ge=1)
    clock_ghz: float = Field(gt=0)
    ram_mb: int = Field(ge=16)
    isa: str
    features: list[str] = Field(default_factory=list)
    cpu_part: str | None = Field(None, description="MIDR part number (Arm), used for the emulated /proc/cpuinfo")
    qemu_cpu: str | None = Field(None, description="CPU model qemu-user emulates for this profile "
                                 "(`qemu-aarch64-static -cpu help`); None: qemu's 'max'")
    peak_gflops_fp32: float = Field(gt=0)
    peak_gops_int8: float = Field(gt=0)
    mem_bandwidth_gbs: float = Field(gt=0)
    source: str = Field("", description="the file it was loaded from (set by the loader)")


def _parse(path_label: str, text: str) -> DeviceProfile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProfileError(f"{path_label}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path_label}: expected a mapping of profile fields")
    try:
        prof = DeviceProfile.model_validate({**data, "source": path_label})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ProfileError(f"{path_label}: {field}: {first['msg']}") from None
    return detect_host(prof) if prof.detect else prof


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    if path.is_file():
        return [path]
    raise ProfileError(f"{path}: no such profile file or folder")


def load_profiles(extra: list[Path] | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles plus those in ``extra`` files/folders (a user profile replaces a built-in of its name)."""
    out: dict[str, DeviceProfile] = {}
    for f in sorted(resources.files(BUILTIN_PACKAGE).iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            p = _parse(f"{f.name} (built-in)", f.read_text(encoding="utf-8"))
            out[p.name] = p
    for path in extra or []:
        for f in _files(Path(path)):
            p = _parse(str(f), f.read_text(encoding="utf-8"))
            out[p.name] = p
    return out


def get_profile(name: str, extra: list[Path] | None = None) -> DeviceProfile:
    profiles = load_profiles(extra)
    if name not in profiles:
        raise ProfileError(f"unknown device profile {name!r}; known: {', '.join(sorted(profiles))} "
                           "(add one with --profile FILE.yaml)")
    return profiles[name]


#: x86 instruction sets with an int8 dot product (VNNI); without one, ONNX Runtime's u8×s8 kernels accumulate
#: pairs in int16 (vpmaddubsw) and saturate
X86_INT8_DOT = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"})


def is_x86(profile: DeviceProfile) -> bool:
    return profile.isa.lower() in ("x86_64", "amd64", "x86", "i686") or profile.isa.lower().startswith("x86")


def int8_saturates(profile: DeviceProfile) -> bool:
    """True for an x86 CPU without VNNI: static int8 (u8 activations × s8 weights) saturates there unless the
    weights use 7 bits (onnxruntime's ``reduce_range``). Measured: a MobileNetV3 whose U8S8 file kept 0.969 top-1
    agreement on an AVX-512 VNNI host kept 0.919 under AVX2 (qemu -cpu Haswell); with reduce_range both gave
    the same 0.956 (benchmarks/RESULTS.md, "int8 on x86 without VNNI")."""
    return is_x86(profile) and not (set(profile.features) & X86_INT8_DOT)


# ---- host detection -------------------------------------------------------------------------------------------

def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _clock_ghz(cpuinfo: str) -> float:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
        return float(m.group(1)) / 1e3 if m else 2.0


def _ram_mb() -> int:
    try:
        m = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) // 1024 if m else 1024
    except OSError:
        return 1024


def _flops_per_cycle(features: set[str]) -> tuple[int, int]:
    """(fp32, int8) ops per cycle per core for the widest vector unit the flags show (two FMA pipes assumed)."""
    if {"avx512f"} <= features or {"avx2", "fma"} <= features:
        fp32 = 32  # 2 x 256-bit FMA (AVX-512 on Zen 4 is double-pumped 256-bit: the same 32)
    elif "asimd" in features:
        fp32 = 16
    else:
        fp32 = 8
    dot = features & {"avx512_vnni", "avx_vnni", "avx512vnni", "asimddp", "amx_int8"}
    return fp32, fp32 * (4 if dot else 2)


@lru_cache(maxsize=1)
def _copy_bandwidth_gbs(mib: int = 64) -> float:
    import numpy as np

    a = np.ones(mib * 2**18, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9  # read + write


def detect_host(template: DeviceProfile) -> DeviceProfile:
    """Fill a ``detect: true`` profile from this machine."""
    info = _cpuinfo()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", info, re.M)
    feats = set(m.group(1).split()) if m else set()
    keep = sorted(feats & {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni",
                           "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16"})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    clock = _clock_ghz(info)
    fp32, int8 = _flops_per_cycle(feats)
    return template.model_copy(update={
        "cores": cores, "clock_ghz": round(clock, 3), "ram_mb": _ram_mb(), "isa": platform.machine(),
        "features": keep, "peak_gflops_fp32": round(cores * clock * fp32, 1),
        "peak_gops_int8": round(cores * clock * int8, 1), "mem_bandwidth_gbs": round(_copy_bandwidth_gbs(), 1)})
