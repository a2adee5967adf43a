"""Run llama.cpp's ``convert_hf_to_gguf.py`` with two changes: when its pre-tokenizer check does not know the
tokenizer's hash, use the pre-tokenizer named by ``--pre`` (which edgedistill identified from ``tokenizer.json``);
and no code from the model folder ever runs (:func:`_refuse_remote_code`), although several of its model classes
load the tokenizer with remote code trusted (``trust_remote_code`` set to true).

A known hash always wins (llama.cpp's own answer); without ``--pre`` an unknown hash fails as it does upstream.
Runs in a subprocess of the project's Python (:func:`edgedistill.toolchain.llm.export.gguf.convert`)::

    python -m edgedistill.toolchain.llm.export.hf_to_gguf --converter DIR [--pre NAME] -- MODEL_DIR --outtype f32 ...
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("edgedistill.hf_to_gguf")
#: the transformers loaders the converter calls; each is made to pass ``trust_remote_code=False``
_AUTO_CLASSES = ("AutoConfig", "AutoTokenizer", "AutoProcessor")


def _load_converter(folder: Path) -> Any:
    """Import ``convert_hf_to_gguf.py`` as a module (it puts its own ``gguf-py`` first on ``sys.path``)."""
    script = folder / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise SystemExit(f"{folder}: no convert_hf_to_gguf.py")
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("convert_hf_to_gguf", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = mod
    spec.loader.exec_module(mod)
    return mod


def _refuse_remote_code() -> None:
    """Every ``Auto*.from_pretrained`` of :data:`_AUTO_CLASSES` loads with ``trust_remote_code=False`` whatever the
    converter passes, and transformers' one function that imports a module of a model folder raises instead. (The
    folder was checked and only its data files staged: this holds even if a check missed something.)"""
    import transformers
    from transformers import dynamic_module_utils

    def refuse(class_name: str, module_path: Any, **_: Any) -> type:
        raise ValueError(f"edgedistill: refused to import {class_name} from {module_path}: no code from a model "
                         "folder runs")

    dynamic_module_utils.get_class_in_module = refuse
    for name in _AUTO_CLASSES:
        cls = getattr(transformers, name)
        cls.from_pretrained = _without_remote_code(cls.from_pretrained)


def _without_remote_code(load: Any) -> Any:
    @functools.wraps(load)
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        return load(*args, **{**kwargs, "trust_remote_code": False})

    return staticmethod(from_pretrained)


def _hook_pre_tokenizer(pre: str) -> None:
    """Wrap ``TextModel.get_vocab_base_pre``: its answer when it knows the hash, ``pre`` when it raises
    ``NotImplementedError`` (the hash is unknown)."""
    from conversion.base import TextModel  # the converter's package (on sys.path after _load_converter)

    original = TextModel.get_vocab_base_pre

    @functools.wraps(original)
    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            res = original(self, tokenizer)
        except NotImplementedError:
            log.warning("edgedistill: pre-tokenizer hash unknown to llama.cpp; using %r, identified from "
                        "tokenizer.json", pre)
            return pre
        log.info("edgedistill: llama.cpp recognised the pre-tokenizer as %r", res)
        return res

    TextModel.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--converter", type=Path, required=True, help="folder holding convert_hf_to_gguf.py")
    p.add_argument("--pre", default=None, help="llama.cpp pre-tokenizer name to use when the hash is unknown")
    args = p.parse_args(own)
    _refuse_remote_code()
    mod = _load_converter(args.converter)
    if args.pre:
        _hook_pre_tokenizer(args.pre)
    sys.argv = ["convert_hf_to_gguf.py", *rest]
    mod.main()


if __name__ == "__main__":
    main()
