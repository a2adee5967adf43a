"""One home for where the toolchain keeps machine-wide state: the cache root (teacher caches, the qemu rootfs)."""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable that moves every machine-wide cache (tests point it at a private folder)
CACHE_ENV = "EDGEDISTILL_CACHE"
#: environment variable that moves only the qemu rootfs (:func:`qemu_root`)
QEMU_ENV = "EDGEDISTILL_QEMU_DIR"


def cache_root() -> Path:
    """``$EDGEDISTILL_CACHE``, else ``~/.cache/edgedistill``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgedistill")


def qemu_root() -> Path:
    """The qemu-arm64 rootfs and its state: ``$EDGEDISTILL_QEMU_DIR`` if set (tests share one built rootfs across
    private caches), else ``cache_root() / "qemu-arm64"``."""
    if own := os.environ.get(QEMU_ENV):
        return Path(own)
    return cache_root() / "qemu-arm64"


def tools_root() -> Path:
    """``~/.cache/edgedistill``: pinned, machine-wide tools built or fetched once (the llama-cpp-python wheel,
    llama.cpp's converter, the aarch64 llama.cpp). Not moved by ``$EDGEDISTILL_CACHE``: they are not run state,
    and tests that point the cache at a private folder must not rebuild them."""
    return Path.home() / ".cache" / "edgedistill"
