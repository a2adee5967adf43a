"""The layers: core < runtimes < devices < benchmarks < toolchain (README, "Layout"). A module imports only from its
own layer or a layer below it, so that the agent's layers (core, runtimes, devices) run on a board without the
toolchain; one pipeline kind never imports another (they share only the framework at toolchain's root), and the
framework (``toolchain/*.py``, ``benchmarks/``) imports no kind: it reaches a kind through the ``PIPELINES``
registry and the ``Kind`` protocol only. A kind's modules (its report included) live in its folder: no framework
module is named after a kind."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "runtimes", "devices", "benchmarks", "toolchain")
KINDS = ("vision", "llm")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``edgedistill.*`` module named by an import in ``path`` (top level or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("edgedistill.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgedistill."):
            out.append((node.lineno, node.module))
    return out


def _violations() -> list[str]:
    bad = []
    for layer in LAYERS:
        for f in sorted((ROOT / layer).rglob("*.py")):
            rel = f.relative_to(ROOT)
            kind = rel.parts[1] if layer == "toolchain" and len(rel.parts) > 2 and rel.parts[1] in KINDS else None
            framework = layer == "benchmarks" or (layer == "toolchain" and len(rel.parts) == 2)
            if framework and f.stem in KINDS:
                bad.append(f"{rel}: a {f.stem} module outside toolchain/{f.stem}/")
            for line, module in _imports(f):
                parts = module.split(".")
                target = parts[1]
                if target not in LAYERS:
                    bad.append(f"{rel}:{line}: imports {module}, which is in no layer")
                elif LAYERS.index(target) > LAYERS.index(layer):
                    bad.append(f"{rel}:{line}: {layer} imports {module} (a layer above)")
                elif kind and target == "toolchain" and len(parts) > 2 and parts[2] in KINDS and parts[2] != kind:
                    bad.append(f"{rel}:{line}: the {kind} pipeline imports the {parts[2]} pipeline ({module})")
                elif framework and target == "toolchain" and len(parts) > 2 and parts[2] in KINDS:
                    bad.append(f"{rel}:{line}: the framework imports the {parts[2]} pipeline ({module})")
    return bad


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert _violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The test above can fail: an upward import planted in a copy of the tree is reported."""
    import shutil

    for layer in LAYERS:
        shutil.copytree(ROOT / layer, tmp_path / layer)
    (tmp_path / "devices" / "planted.py").write_text("from edgedistill.toolchain.cli import main\n")
    (tmp_path / "toolchain" / "llm" / "planted.py").write_text("from edgedistill.toolchain.vision import stages\n")
    (tmp_path / "toolchain" / "planted.py").write_text("def f():\n    from edgedistill.toolchain.llm import plan\n")
    (tmp_path / "benchmarks" / "report" / "vision.py").write_text("from edgedistill.toolchain.vision import report\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations()
    assert any("devices/planted.py:1: devices imports edgedistill.toolchain.cli" in v for v in found)
    assert any("the llm pipeline imports the vision pipeline" in v for v in found)
    assert any("toolchain/planted.py:2: the framework imports the llm pipeline" in v for v in found)
    assert any("benchmarks/report/vision.py:1: benchmarks imports edgedistill.toolchain.vision" in v for v in found)
    assert any("benchmarks/report/vision.py: a vision module outside toolchain/vision/" in v for v in found)
