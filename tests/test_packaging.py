"""The wheel contains every subpackage and the package data (setuptools only ships listed packages)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for pkg, folder in cfg["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            assert name in listed, f"{name} ({init.parent}) is missing from [tool.setuptools] packages"


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("edgedistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("edgedistill/toolchain/cli.py", "edgedistill/toolchain/vision/distill/losses.py",
              "edgedistill/toolchain/llm/tasks/legal_briefs.py", "edgedistill/toolchain/recipes/tiny-llama.yaml",
              "edgedistill/toolchain/recipes/vit-to-mobilenet.yaml", "edgedistill/runtimes/ort.py",
              "edgedistill/devices/agent.py", "edgedistill/toolchain/llm/report.py", "edgedistill/core/registry.py"):
        assert f in names, f
