"""Shared test set-up: offline hub, a private teacher cache, no progress bars, small recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edgedistill.core.paths import QEMU_ENV

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["EDGEDISTILL_PROGRESS"] = "0"
# The arm64 rootfs is machine-wide (built once by `make test`'s set-up), unlike the per-session teacher cache.
os.environ.setdefault(QEMU_ENV, str(Path.home() / ".cache" / "edgedistill" / "qemu-arm64"))
# One intra-op thread in the test process: with two, torch's OpenMP workers spin against any other load on a
# 2-core machine and a training step went from 0.06 s to 5 s. Benchmarks and the CLI runs set their own threads.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "edgedistill-cache"
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(cache))
    return cache


def tiny_recipe(**overrides: object) -> dict:
    """A recipe small enough to run every stage in seconds (models barely trained)."""
    r: dict = {
        "name": "tiny",
        "data": {"kind": "digits", "labelled_per_class": 5},
        "teacher": {"name": "vit_tiny_patch16_224",
                    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
                    "train": {"epochs": 1, "max_steps": 2}},
        "student": {"name": "mobilenetv3_small_050"},
        "distill": {"train": {"epochs": 1, "max_steps": 2}},
        "export": {"formats": ["onnx"], "onnx": {"variants": ["fp32", "int8_static_u8s8"], "calibration_samples": 16},
                   "teacher": False},  # the teacher's own export is tested in test_cli's run
        "bench": {"warmup": 1, "runs": 3, "threads": [1]},
    }
    for key, value in overrides.items():
        r[key] = value
    return r


@pytest.fixture(scope="session")
def qemu_rootfs() -> Path:
    """The cached arm64 rootfs (built here if absent); skips, saying why, only where emulation is impossible."""
    from edgedistill.devices import qemu

    if missing := qemu.missing_tools():
        pytest.skip(f"aarch64 emulation impossible here: missing {', '.join(missing)}")
    try:
        qemu.setup(log=print)
    except qemu.QemuError as err:
        if "needs root" in str(err):
            pytest.skip(str(err))
        raise
    return qemu.rootfs_dir()
