"""Tokenizer files that llama.cpp's converter reads correctly: repairs of byte-level BPE tokenizers that other tools
wrote in a shape that leads the converter astray.

transformers' GGUF loader (``from_pretrained(dir, gguf_file=...)``) rebuilds a byte-level BPE tokenizer (GGUF
``tokenizer.ggml.model = gpt2``) in the shape of a SentencePiece-style Llama tokenizer: ``model.byte_fallback =
true``, a ``Sequence[ByteFallback, Fuse, Replace(▁), ByteLevel]`` decoder, and ``save_pretrained`` copies the whole
GGUF file in as ``tokenizer.model``. llama.cpp's ``LlamaModel.set_vocab`` tries SentencePiece (``tokenizer.model``)
first and then ``LlamaHfVocab``, which takes any BPE ``tokenizer.json`` with ``byte_fallback`` and a ``Sequence``
decoder for a Llama-2-style vocabulary: it writes ``tokenizer.ggml.model = llama``, ``pre = default`` and every
added token as a normal token, and llama.cpp then aborts on any text (``std::out_of_range`` in ``byte_to_token``:
its SentencePiece path looks up ``<0xNN>`` byte tokens that a byte-level vocabulary does not have).

Two repairs, both writing new files (never through a link into the user's folder):

* :func:`repair_for_converter` (the export's staged copy): a byte-level BPE keeps its tokenisation exactly —
  ``byte_fallback`` off (every byte already has its own token), a plain ``ByteLevel`` decoder, an empty normalizer
  sequence dropped, and a ``tokenizer.model`` that is really a GGUF file removed — so the converter takes its BPE
  path and names the pre-tokenizer from the tokenizer's own split.
* :func:`repair_from_gguf` (a folder dequantised from a GGUF): the tokenizer the GGUF itself defines — its
  pre-tokenizer (``tokenizer.ggml.pre``; SmolLM2's ``smollm`` splits digits one by one), its control tokens as
  special added tokens, its BOS/EOS/pad ids and whether BOS is added.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgedistill.core.errors import UserError
from edgedistill.core.fileio import write_json

#: GGUF ``tokenizer.ggml.token_type`` values (llama.cpp's ``llama_token_type``)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
#: the decoder of every byte-level BPE (GPT-2's)
BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
#: GGUF ``tokenizer.ggml.pre`` → the ``tokenizer.json`` pre-tokenizer that splits the same way (as published in
#: those models' own tokenizer.json files); llama.cpp's ``smollm`` splits ``\p{N}`` one by one, then GPT-2's regex
PRE_TOKENIZER_JSON: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}
GGUF_MAGIC = b"GGUF"


class TokenizerRepairError(UserError, ValueError):
    """A tokenizer cannot be put in a shape the converter reads correctly; the message names the file."""


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _byte_level(tj: dict[str, Any]) -> bool:
    """Whether ``tokenizer.json`` is a BPE whose pre-tokenizer ends in ``ByteLevel`` (a byte-level vocabulary)."""
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    return (tj.get("model") or {}).get("type") == "BPE" and bool(steps) and steps[-1].get("type") == "ByteLevel"


def _replace(path: Path, write: Any) -> None:
    """Replace ``path`` (a link into the user's folder, or a file) with a new file: unlink, never write through."""
    if path.is_symlink() or path.exists():
        os.unlink(path)
    write(path)


def repair_for_converter(folder: Path) -> list[str]:
    """Repair the tokenizer files in ``folder`` (a staged copy) in place so llama.cpp's converter reads a byte-level
    BPE as one, keeping its tokenisation; returns what was changed (empty: nothing needed)."""
    folder = Path(folder)
    done: list[str] = []
    tpath, model_file = folder / "tokenizer.json", folder / "tokenizer.model"
    if model_file.is_file() and _is_gguf(model_file):
        os.unlink(model_file)
        done.append("removed tokenizer.model (a copy of a GGUF file, not a SentencePiece model)")
    if not tpath.is_file():
        return done
    tj = json.loads(tpath.read_text(encoding="utf-8"))
    if not _byte_level(tj):
        return done
    if model_file.is_file() or model_file.is_symlink():
        os.unlink(model_file)  # a byte-level BPE has no SentencePiece model; the converter would prefer it
        done.append("removed tokenizer.model (the tokenizer is a byte-level BPE)")
    n_removed, model = len(done), tj["model"]
    if model.get("byte_fallback"):
        model["byte_fallback"] = False  # every byte has a token of its own: the fallback never fires
        done.append("byte_fallback off")
    if (tj.get("decoder") or {}).get("type") != "ByteLevel":
        tj["decoder"] = dict(BYTE_LEVEL_DECODER)
        done.append("ByteLevel decoder")
    norm = tj.get("normalizer")
    if norm is not None and norm.get("type") == "Sequence" and not norm.get("normalizers"):
        tj["normalizer"] = None
        done.append("empty normalizer dropped")
    if len(done) > n_removed:
        _replace(tpath, lambda p: write_json(p, tj))
    return done


def _gguf_tokenizer(gguf_path: Path) -> dict[str, Any]:
    import gguf

    r = gguf.GGUFReader(str(gguf_path))

    def scalar(key: str) -> Any:
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode("utf-8") if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    f_tok, f_type = r.fields.get("tokenizer.ggml.tokens"), r.fields.get("tokenizer.ggml.token_type")
    if f_tok is None or f_type is None:
        raise TokenizerRepairError(f"{gguf_path}: no tokenizer.ggml.tokens / token_type in the GGUF")
    return {
        "model": scalar("tokenizer.ggml.model"), "pre": scalar("tokenizer.ggml.pre"),
        "tokens": [bytes(f_tok.parts[i]).decode("utf-8") for i in f_tok.data],
        "types": [int(f_type.parts[i][0]) for i in f_type.data],
        "bos": scalar("tokenizer.ggml.bos_token_id"), "eos": scalar("tokenizer.ggml.eos_token_id"),
        "pad": scalar("tokenizer.ggml.padding_token_id"), "unk": scalar("tokenizer.ggml.unknown_token_id"),
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token")),
    }


def repair_from_gguf(folder: Path, gguf_path: Path) -> dict[str, Any]:
    """Rewrite ``folder``'s tokenizer files (written by transformers from ``gguf_path``) as the GGUF defines the
    tokenizer: its pre-tokenizer, byte-level decoder, control tokens as special added tokens, BOS/EOS/pad and
    whether BOS is added. Returns a summary (pre-tokenizer, special tokens) for the folder's provenance."""
    folder, g = Path(folder), _gguf_tokenizer(Path(gguf_path))
    if g["model"] != "gpt2":
        raise TokenizerRepairError(f"{gguf_path}: tokenizer.ggml.model is {g['model']!r}; only byte-level BPE "
                                   "(gpt2) tokenizers are rebuilt")
    if g["pre"] not in PRE_TOKENIZER_JSON:
        raise TokenizerRepairError(f"{gguf_path}: tokenizer.ggml.pre {g['pre']!r} is not one edgedistill can "
                                   f"rebuild (known: {', '.join(sorted(PRE_TOKENIZER_JSON))})")
    tpath = folder / "tokenizer.json"
    tj = json.loads(tpath.read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    if len(vocab) != len(g["tokens"]) or any(vocab.get(t) != i for i, t in enumerate(g["tokens"])):
        raise TokenizerRepairError(f"{tpath}: its vocabulary is not the one in {gguf_path}")
    repair_for_converter(folder)
    tj = json.loads(tpath.read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = PRE_TOKENIZER_JSON[g["pre"]]
    tj["normalizer"] = None
    special = {i: tok for i, (tok, ty) in enumerate(zip(g["tokens"], g["types"], strict=True))
               if ty in (CONTROL, USER_DEFINED)}
    tj["added_tokens"] = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": g["types"][i] == CONTROL} for i, tok in special.items()]

    def name(i: int | None) -> str | None:
        return g["tokens"][i] if i is not None else None

    if g["add_bos"]:
        bos = str(name(g["bos"]))
        tj["post_processor"] = {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [g["bos"]], "tokens": [bos]}}}
    else:
        tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                                "use_regex": True}
    _replace(tpath, lambda p: write_json(p, tj))
    roles = {"bos_token": name(g["bos"]), "eos_token": name(g["eos"]), "unk_token": name(g["unk"]),
             "pad_token": name(g["pad"])}
    roles = {k: v for k, v in roles.items() if v is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": g["add_bos"], "add_eos_token": False,
              "clean_up_tokenization_spaces": False, **roles,
              "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                       for t in tj["added_tokens"]}}
    _replace(folder / "tokenizer_config.json", lambda p: write_json(p, config))
    _replace(folder / "special_tokens_map.json", lambda p: write_json(p, roles))
    return {"pre_tokenizer": g["pre"], "control_tokens": sum(t["special"] for t in tj["added_tokens"]), **roles}
