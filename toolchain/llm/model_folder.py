"""A user's LLM folder, checked before anything loads or converts it: one home for what such a folder may be.

Every path that reads a local Hugging Face folder (``teacher.path``, ``student.path`` and LoRA bases,
``teacher.ensemble[i].path``, ``tokenizer.path``, ``export --hf``, ``export.teacher``, black-box serving of a local
teacher) goes through :func:`check_model_folder` or :func:`check_tokenizer_folder` first. A folder is data, never
code (:func:`edgedistill.core.no_code.refuse_code`: no ``.py`` file, no ``auto_map``), and on top of that:

* ``model_type`` is one of :data:`FAMILIES`, and ``architectures`` (top level and in ``text_config``) is that
  family's one class (:data:`ARCHITECTURES`): llama.cpp's converter picks its code by ``architectures[0]``, not by
  ``model_type``, and some of its classes load the tokenizer trusting remote code;
* ``tokenizer_class`` (``tokenizer_config.json``, else ``config.json``) is one the tokenizer kinds here use
  (:data:`TOKENIZER_CLASSES`), never a custom class;
* the tokenizer is of one kind (:data:`TOKENIZER_FILES`): a ``tokenizer.json`` (byte-level BPE; GPT-2's
  ``vocab.json`` + ``merges.txt`` too) or a SentencePiece ``tokenizer.model``; the converter is given only that
  kind's files, the config and the safetensors weights (:func:`converter_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.core.errors import UserError
from edgedistill.core.no_code import CodeInFolderError, code_problems, read_json_file, refusal

if TYPE_CHECKING:
    from edgedistill.toolchain.llm.recipe import LLMRecipe

#: model_type → the checkpoints it covers (the allow-list of teachers and students)
FAMILIES = {"llama": "Llama 2, Llama 3.x", "mistral": "Mistral", "qwen2": "Qwen2, Qwen2.5"}
#: model_type → the one ``architectures`` entry its checkpoints carry (what llama.cpp's converter dispatches on)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
#: tokenizer kind → ``tokenizer_class`` values of that kind (published Llama 2/3, Mistral, Qwen2.5, SmolLM2
#: checkpoints and the tokenizers trained here); a missing class means the family's default
TOKENIZER_CLASSES = {
    "sentencepiece": ("LlamaTokenizer", "LlamaTokenizerFast"),
    "tokenizer.json": ("PreTrainedTokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast", "GPT2Tokenizer",
                       "GPT2TokenizerFast", "Qwen2Tokenizer", "Qwen2TokenizerFast"),
}
_COMMON_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                           "chat_template.jinja", "chat_template.json")
#: tokenizer kind → the files of that kind (the converter gets those present, and nothing else of the tokenizer)
TOKENIZER_FILES = {
    "sentencepiece": ("tokenizer.model", "tokenizer.json", *_COMMON_TOKENIZER_FILES),
    "tokenizer.json": ("tokenizer.json", "vocab.json", "merges.txt", *_COMMON_TOKENIZER_FILES),
}
#: model files the converter gets besides the weights (``*.safetensors``, never a pickle)
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
#: sub-configs whose ``architectures`` llama.cpp's converter uses for the text model instead of the top level's
_TEXT_CONFIGS = ("text_config", "llm_config", "lm_config")


class ModelError(UserError, ValueError):
    """A model folder is refused or cannot be built or paired; the message names the file or field and the fix."""


@dataclass(frozen=True)
class ModelFolder:
    """What :func:`check_model_folder` found: the family and its architecture (``None`` when ``config.json`` names
    none)."""

    model_type: str
    architecture: str | None


def _config(folder: Path) -> dict[str, Any]:
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{folder}: not a Hugging Face model folder (no config.json); give a local checkpoint path")
    return read_json_file(cfg)


def _architecture_problems(cfg: dict[str, Any], mt: str) -> list[str]:
    """``architectures`` (top level, and in the sub-configs the converter takes as the text model's) naming anything
    but the family's one class."""
    want = ARCHITECTURES[mt]
    named = [("architectures", cfg.get("architectures"))]
    named += [(f"{sub}.architectures", cfg[sub].get("architectures")) for sub in _TEXT_CONFIGS
              if isinstance(cfg.get(sub), dict)]
    return [f"config.json: {key} {value!r} is not model_type {mt!r}'s [{want!r}] (llama.cpp's converter picks its "
            "code by architectures[0])" for key, value in named if value is not None and value != [want]]


def _tokenizer_class(folder: Path) -> tuple[str, str | None]:
    """The ``tokenizer_class`` transformers would use, and the file (name) that gives it."""
    for name in ("tokenizer_config.json", "config.json"):
        f = Path(folder) / name
        if f.is_file() and (cls := read_json_file(f).get("tokenizer_class")) is not None:
            return name, str(cls)
    return "tokenizer_config.json", None


def _tokenizer(folder: Path) -> tuple[str | None, list[str]]:
    """The kind of the tokenizer in ``folder`` (a key of :data:`TOKENIZER_FILES`; ``None``: no tokenizer files),
    and a problem when its ``tokenizer_class`` is not one of that kind's."""
    folder = Path(folder)
    cls_file, cls = _tokenizer_class(folder)
    has = {n for n in ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt") if (folder / n).is_file()}
    bpe = "tokenizer.json" in has or {"vocab.json", "merges.txt"} <= has
    if "tokenizer.model" in has and (cls in TOKENIZER_CLASSES["sentencepiece"] or (cls is None and not bpe)):
        kind: str | None = "sentencepiece"
    elif bpe:
        kind = "tokenizer.json"
    else:
        kind = "sentencepiece" if "tokenizer.model" in has else None
    allowed = TOKENIZER_CLASSES[kind] if kind else tuple(dict.fromkeys(sum(TOKENIZER_CLASSES.values(), ())))
    if cls is not None and cls not in allowed:
        return kind, [f"{cls_file}: tokenizer_class {cls!r} is not one edgedistill loads for a {kind or 'model'} "
                      f"tokenizer ({', '.join(allowed)})"]
    return kind, []


def _refuse(folder: Path, problems: list[str], label: str | None) -> None:
    if problems:
        raise ModelError(refusal(folder, problems, label))


def check_tokenizer_folder(folder: Path, label: str | None = None) -> str:
    """Refuse a tokenizer folder that holds or names code or a custom class, in one line naming every such file
    and key; returns its tokenizer kind. Reads only JSON."""
    folder = Path(folder)
    head = f"{label}: " if label else ""
    if not folder.is_dir():
        raise ModelError(f"{head}{folder}: no tokenizer folder")
    try:
        kind, problems = _tokenizer(folder)
        _refuse(folder, code_problems(folder) + problems, label)
    except CodeInFolderError as err:  # an unreadable JSON file
        raise ModelError(f"{head}{err}") from None
    if kind is None:
        raise ModelError(f"{head}{folder}: no tokenizer.json or tokenizer.model; give the tokenizer folder")
    return kind


def check_model_folder(folder: Path, label: str | None = None) -> ModelFolder:
    """Refuse a model folder that holds or names code, is of no supported family, names another architecture
    than its family's, or has a custom tokenizer class, in one line naming every such file and key. Reads only
    JSON (before any load or conversion)."""
    folder = Path(folder)
    head = f"{label}: " if label else ""
    try:
        problems = code_problems(folder)
        cfg = _config(folder)
        mt = str(cfg.get("model_type"))
        problems += _architecture_problems(cfg, mt) if mt in FAMILIES else []
        problems += _tokenizer(folder)[1]
    except UserError as err:  # no config.json, or an unreadable JSON file
        raise ModelError(f"{head}{err}") from None
    _refuse(folder, problems, label)
    if mt not in FAMILIES:
        raise ModelError(f"{head}{folder}: model_type {mt!r} is not supported; use one of "
                         f"{', '.join(f'{k} ({v})' for k, v in FAMILIES.items())}")
    return ModelFolder(mt, ARCHITECTURES[mt] if cfg.get("architectures") is not None else None)


def converter_files(model_dir: Path, tokenizer_dir: Path | None = None) -> list[Path]:
    """The files llama.cpp's converter is given: ``config.json``, the safetensors weights and their index from
    ``model_dir``, and the tokenizer files of the detected kind from ``tokenizer_dir`` (default: ``model_dir``).
    Checks both folders first; a folder whose ``config.json`` names no architecture is refused (the converter
    would guess)."""
    model_dir = Path(model_dir)
    tdir = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir
    found = check_model_folder(model_dir)
    if found.architecture is None:
        want = ARCHITECTURES[found.model_type]
        raise ModelError(f"{model_dir / 'config.json'}: architectures is missing; set it to [{want!r}] (llama.cpp's "
                         "converter picks its code by architectures[0])")
    kind = check_tokenizer_folder(tdir)
    files = [model_dir / n for n in MODEL_FILES if (model_dir / n).is_file()]
    files += sorted(f for f in model_dir.glob("*.safetensors") if f.is_file())
    return files + [tdir / n for n in TOKENIZER_FILES[kind] if (tdir / n).is_file()]


def check_vocab_fits(folder: Path, tok: Any, label: str | None = None) -> None:
    """Refuse a model whose embedding has fewer rows (``config.json``'s ``vocab_size``) than the tokenizer has
    tokens (added tokens included): its ids past the last row would index out of range."""
    head = f"{label}: " if label else ""
    rows = _config(folder).get("vocab_size")
    if not isinstance(rows, int):
        raise ModelError(f"{head}{folder / 'config.json'}: vocab_size is {rows!r}, not a number of embedding rows")
    n = max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)
    if rows < n:
        raise ModelError(f"{head}{folder}: the tokenizer has {n} tokens (added tokens "
                         f"included) but the model's embedding has {rows} rows (config.json vocab_size); give the "
                         "tokenizer this model was trained with")


def check_recipe_folders(recipe: LLMRecipe) -> None:
    """Every local folder an LLM recipe names (teacher, student or LoRA base, ensemble teachers, tokenizer),
    checked before the first stage reads any of them; the message starts with the recipe field."""
    folders = [("teacher.path", recipe.teacher.path), ("student.path", recipe.student.path)]
    folders += [(f"teacher.ensemble.{i}.path", m.path) for i, m in enumerate(recipe.teacher.ensemble)]
    for label, path in folders:
        if path is not None:
            check_model_folder(path, label)
    if recipe.tokenizer.kind == "local" and recipe.tokenizer.path is not None:
        check_tokenizer_folder(recipe.tokenizer.path, "tokenizer.path")
