"""Find the smallest submodule that litert-torch fails to convert, and write a repro for it.

The search: one forward pass with pre-hooks records the inputs every submodule receives; then, starting at the root,
each called child is converted on its own with its recorded inputs, and the search descends into the first child
that fails the same way (same operator when one is known) until no child fails alone. The child on the module path
named by the original error is tried first, so on a lowering failure the descent converts few submodules.
On the submodule found, litert-torch's own culprit finder (``litert_torch.debug.find_culprits``, an FX minifier)
isolates the failing ops as self-contained code when the submodule is ``torch.export``-able.

Files written to the repro directory:

- ``repro.json``: model, submodule path and type, operator, error, input shapes, conversions tried.
- ``submodule.safetensors``: the submodule's weights (``state.*``) and the inputs it received (``input.*``).
- ``repro.py``: litert's culprit code (random inputs, runnable as is) when found; otherwise the submodule's source
  and a loader for its weights and inputs, to complete by hand.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.core.fileio import atomic_path, write_json, write_text
from edgedistill.toolchain.vision.export.tflite import ConversionError, Diagnosis, _classify, _first_line, _quiet


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple | list):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def capture_inputs(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """``{module path: (args, kwargs)}`` of each submodule's first call during ``model(sample)``."""
    captured: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for path, mod in model.named_modules():
        def hook(_m: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            captured.setdefault(path, (_detach(args), _detach(kwargs)))
        hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _called_children(path: str, captured: dict[str, Any]) -> list[str]:
    """Called descendants of ``path`` with no called module between (skips ModuleList/ModuleDict levels)."""
    def below(p: str, anc: str) -> bool:
        return p != anc and (anc == "" or p.startswith(anc + "."))

    desc = [p for p in captured if below(p, path)]
    return [p for p in desc if not any(below(p, q) for q in desc)]


def _on_path(p: str, hint: str | None) -> bool:
    return hint is not None and (hint == p or hint.startswith(p + "."))


@dataclass
class Culprit:
    """The smallest submodule found failing on its own (``path`` "" is the whole model)."""

    path: str
    module: nn.Module
    args: tuple
    kwargs: dict
    error: BaseException | None
    tried: list[str] = field(default_factory=list)


def _fails_alike(module: nn.Module, args: tuple, kwargs: dict, like: Diagnosis) -> BaseException | None:
    """The exception converting ``module`` raises, if it is the same kind of failure as ``like``."""
    import litert_torch

    try:
        with _quiet(), torch.no_grad():
            litert_torch.convert(module.eval(), args, kwargs or None)
    except Exception as err:  # any conversion failure; compared with the original below
        kind, op = _classify(err)
        return err if (op == like.op if like.op else kind == like.kind) else None
    return None


def smallest_failing(model: nn.Module, sample: torch.Tensor, like: Diagnosis) -> Culprit:
    """Descend from the root into the first child that fails alone, until none does."""
    captured = capture_inputs(model, sample)
    path, error, tried = "", None, []
    while True:
        kids = sorted(_called_children(path, captured), key=lambda p: not _on_path(p, like.module))
        for kid in kids:
            tried.append(kid)
            err = _fails_alike(model.get_submodule(kid), *captured[kid], like)
            if err is not None:
                path, error = kid, err
                break
        else:
            args, kwargs = captured.get(path, ((sample,), {}))
            return Culprit(path, model.get_submodule(path), args, kwargs, error, tried)


def _litert_culprit_code(c: Culprit) -> tuple[str | None, str]:
    """litert-torch's minimal failing graph as code, or None and why not."""
    try:
        from litert_torch.debug import find_culprits

        with _quiet():
            found = next(iter(find_culprits(c.module.eval(), c.args)), None)
    except Exception as err:  # not torch.export-able, or the minifier found nothing
        return None, f"litert_torch.debug.find_culprits: {_first_line(err)}"
    if found is None:
        return None, "litert_torch.debug.find_culprits: no culprit"
    return found.print_code(print_output=False), "litert_torch.debug.find_culprits"


def _fallback_code(c: Culprit, n_inputs: int) -> str:
    cls = type(c.module)
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        source = f"from {cls.__module__} import {cls.__qualname__}\n"
    return (f"import pathlib\n\nimport litert_torch\nimport torch\nfrom safetensors.torch import load_file\nfrom torch "
            f"import nn\n\n{source}\n\n"
            "t = load_file(pathlib.Path(__file__).with_name('submodule.safetensors'))\n"
            f"args = tuple(t[f'input.{{i}}'] for i in range({n_inputs}))\n"
            f"module = ...  # TODO: construct {cls.__qualname__} as the model does, then:\n"
            "# module.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith('state.')})\n"
            "litert_torch.convert(module.eval(), args)\n")


def write_repro(err: ConversionError, out_dir: Path) -> Path:
    """Search for the smallest failing submodule of ``err.model`` and write the repro files; returns repro.json."""
    from safetensors.torch import save_file

    c = smallest_failing(err.model, err.sample, err.diagnosis)
    inputs = [a for a in c.args if isinstance(a, torch.Tensor)]
    tensors = {f"input.{i}": a.contiguous() for i, a in enumerate(inputs)}
    tensors.update({f"state.{k}": v.detach().contiguous().clone() for k, v in c.module.state_dict().items()})
    typ = f"{type(c.module).__module__}.{type(c.module).__qualname__}"
    error = _first_line(c.error) if c.error is not None else err.diagnosis.detail
    meta = {"model": err.model_name, "submodule": c.path or "(root)", "type": typ}
    with atomic_path(out_dir / "submodule.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    code, how = _litert_culprit_code(c)
    header = "".join(f"# {line}\n" for line in [
        f"litert-torch cannot convert {err.model_name}: submodule '{c.path or '(root)'}' ({typ}) fails alone:",
        f"  {error}", f"Found by converting submodules one by one ({len(c.tried)} tried).",
        f"Below: {how}'s minimal failing graph (random inputs)." if code else
        f"Below: the module's source and its recorded weights/inputs ({how}).",
        "Module:", *("  " + ln for ln in repr(c.module).splitlines()[:40])])
    write_text(out_dir / "repro.py", header + "\n" + (code or _fallback_code(c, len(inputs))))
    info = {**meta, "operator": err.diagnosis.op, "kind": err.diagnosis.kind, "error": error,
            "original_error": err.diagnosis.detail, "source": err.diagnosis.source,
            "input_shapes": [list(a.shape) for a in inputs], "tried": c.tried, "culprit_code": code is not None,
            "culprit_finder": how, "files": ["repro.py", "submodule.safetensors"]}
    write_json(out_dir / "repro.json", json.loads(json.dumps(info, default=str)))
    return out_dir / "repro.json"
