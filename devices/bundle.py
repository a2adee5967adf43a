"""The agent bundle: the agent plus the runtime adapters it imports, as one zip to put on ``PYTHONPATH``.

A board needs only Python, numpy and one runtime package: ``PYTHONPATH=agent.zip python3 -m
edgedistill.devices.agent ...``. The zip keeps the ``edgedistill.*`` import paths (it carries its own
``edgedistill/__init__.py``, so it never mixes with an installed copy on the target).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgedistill.core.fileio import atomic_path

#: what the agent imports: the runtimes, and from core the registry, the no-code check of the PyTorch runtime and
#: the child-process guard of ``runtimes/child.py``
_PACKAGES = {"core": ["__init__.py", "registry.py", "errors.py", "no_code.py", "procs.py"],
             "devices": ["__init__.py", "agent.py"], "runtimes": ["*.py"]}
_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds core/, devices/, runtimes/


def bundle_files() -> dict[str, Path]:
    """Archive name → source file for everything the agent imports."""
    files: dict[str, Path] = {}
    for pkg, patterns in _PACKAGES.items():
        for pattern in patterns:
            for f in sorted((_ROOT / pkg).glob(pattern)):
                files[f"edgedistill/{pkg}/{f.name}"] = f
    return files


def build_bundle(out: Path) -> Path:
    """Write the zip to ``out`` (atomically, fixed timestamps so equal sources give equal bytes)."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("edgedistill/__init__.py", (2020, 1, 1, 0, 0, 0)), "")
        for name, src in bundle_files().items():
            z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), src.read_bytes())
    return out
