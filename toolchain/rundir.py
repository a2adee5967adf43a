"""The run directory: where every stage reads its inputs and writes its outputs, recorded in ``manifest.json``.

The manifest holds, per stage, the config hash it ran with and each output's path (relative), sha256 and size,
plus library versions. A stage whose config hash is unchanged and whose outputs are intact is skipped.
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import clear_dead_temps, read_json, sha256_file, write_json

MANIFEST_SCHEMA = 1
TRACKED_LIBRARIES = ("torch", "timm", "onnx", "onnxruntime", "numpy", "scikit-learn", "ai-edge-litert",
                     "litert-torch", "transformers", "llama-cpp-python", "gguf")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in TRACKED_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


class RunStateError(ValueError):
    """A run directory's files disagree with its manifest; the message names them and the command that fixes it."""


@dataclass
class RunDir:
    """A run directory rooted at ``root``. Paths inside the manifest are relative to it."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        clear_dead_temps(self.root)  # what a run killed mid-write left (a big half-written checkpoint, say)

    # -- layout: one place for every path --
    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    # -- manifest --
    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return read_json(self.manifest_path)
        return {"schema_version": MANIFEST_SCHEMA, "stages": {}}

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(name)

    def is_done(self, name: str, config_hash: str) -> bool:
        """True when ``name`` ran with ``config_hash`` and every output it recorded is unchanged on disk."""
        entry = self.stage(name)
        if entry is None or entry.get("config_hash") != config_hash:
            return False
        for out in entry["outputs"]:
            p = self.root / out["path"]
            if not p.is_file() or p.stat().st_size != out["bytes"] or sha256_file(p) != out["sha256"]:
                return False
        return True

    def changed_outputs(self, name: str) -> list[str]:
        """Outputs of stage ``name`` whose bytes no longer match what the manifest recorded (missing, resized,
        edited, corrupted)."""
        bad = []
        for out in (self.stage(name) or {"outputs": []})["outputs"]:
            p = self.root / out["path"]
            if not p.is_file():
                bad.append(f"{out['path']} (missing)")
            elif p.stat().st_size != out["bytes"] or sha256_file(p) != out["sha256"]:
                bad.append(f"{out['path']} (changed: sha256 differs from the manifest)")
        return bad

    def require_intact(self, name: str) -> None:
        """Raise :class:`RunStateError` when a stage's recorded outputs changed since it ran: a later stage must
        never measure or judge files the manifest does not vouch for."""
        if bad := self.changed_outputs(name):
            raise RunStateError(f"{self.root}: {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} since the {name} "
                                f"stage wrote it; re-run `edgedistill {name} --out {self.root} --force` (or `run`)")

    def record(self, name: str, config_hash: str, outputs: list[Path], info: dict[str, Any] | None = None) -> None:
        """Record a finished stage with its outputs (hashed now) and free-form ``info``."""
        manifest = self.manifest()
        manifest["stages"][name] = {
            "config_hash": config_hash,
            "completed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "outputs": [self._describe(p, name, config_hash) for p in outputs],
            "versions": library_versions(),
            "info": info or {},
        }
        write_json(self.manifest_path, manifest)

    def output_sha(self, name: str, rel_path: str) -> str:
        entry = self.stage(name) or {"outputs": []}
        for out in entry["outputs"]:
            if out["path"] == rel_path:
                return out["sha256"]
        raise KeyError(f"{self.manifest_path}: stage {name!r} recorded no output {rel_path!r}; run it first")

    def _describe(self, p: Path, stage: str, config_hash: str) -> dict[str, Any]:
        p = Path(p).resolve()
        return {"path": str(p.relative_to(self.root)), "sha256": sha256_file(p), "bytes": p.stat().st_size,
                "stage": stage, "config_hash": config_hash}
