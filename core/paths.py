"""One home for where the toolchain keeps machine-wide state: the cache root (teacher caches, the qemu rootfs)."""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable that moves every machine-wide cache (tests point it at a private folder)
CACHE_ENV = "EDGEDISTILL_CACHE"


def cache_root() -> Path:
    """``$EDGEDISTILL_CACHE``, else ``~/.cache/edgedistill``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgedistill")
