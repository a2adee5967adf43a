"""A model folder is data, never code: the rule every layer applies before it lets a library read a user's folder.

Hugging Face loaders import Python from a model folder when its ``config.json`` or ``tokenizer_config.json`` names
classes in ``auto_map`` (with ``trust_remote_code``, or after a "[y/N]" prompt on a terminal), and a third-party
tool given the folder may do the same. :func:`code_problems` lists what a folder holds or names of code: an
``auto_map`` key anywhere in those two files, and any ``.py`` file in it (at any depth); :func:`refuse_code` refuses
such a folder in one line naming each file and key. What else a kind requires of its folders (families,
architectures, tokenizer classes) is the kind's own check (for LLMs: :mod:`edgedistill.toolchain.llm.model_folder`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgedistill.core.errors import UserError

#: files Hugging Face loaders read class names from (``auto_map`` there makes them import the folder's code)
CODE_KEY_FILES = ("config.json", "tokenizer_config.json")
#: the key that names code to import
CODE_KEY = "auto_map"
#: file suffixes of code a loader could import from the folder
CODE_SUFFIXES = (".py",)
#: the end of every refusal: what the rule is
RULE = "a model folder is data: edgedistill never runs code from it"


class CodeInFolderError(UserError, ValueError):
    """A model folder holds code or names code to run; the message names each file and key."""


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; one line naming the file when it is unreadable or not an object."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CodeInFolderError(f"{path}: cannot read it as JSON ({err})") from None
    if not isinstance(doc, dict):
        raise CodeInFolderError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _key_path(doc: Any, key: str, where: str = "") -> str | None:
    """The dotted path of the first ``key`` in a JSON document (at any depth), or ``None``."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            here = f"{where}.{k}" if where else str(k)
            if k == key:
                return here
            if (found := _key_path(v, key, here)) is not None:
                return found
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            if (found := _key_path(v, key, f"{where}.{i}")) is not None:
                return found
    return None


def code_problems(folder: Path) -> list[str]:
    """What ``folder`` holds or names of code, one entry per file (``"config.json: auto_map names code to import"``,
    ``"sub/x.py: Python code"``); empty when none. Reads only JSON and file names; symlinked folders are not
    followed."""
    folder = Path(folder)
    found = []
    for name in CODE_KEY_FILES:
        f = folder / name
        if f.is_file() and (key := _key_path(read_json_file(f), CODE_KEY)) is not None:
            found.append(f"{name}: {key} names code to import")
    for root, _, files in os.walk(folder):
        found += [f"{(Path(root) / f).relative_to(folder)}: Python code" for f in sorted(files)
                  if f.endswith(CODE_SUFFIXES)]
    return found


def refusal(folder: Path, problems: list[str], label: str | None = None) -> str:
    """The one line that refuses ``folder`` for ``problems`` (``label``, e.g. ``teacher.path``, first)."""
    return f"{label + ': ' if label else ''}{folder}: refused ({'; '.join(problems)}); {RULE}"


def refuse_code(folder: Path, label: str | None = None) -> None:
    """Raise :class:`CodeInFolderError` when ``folder`` holds a ``.py`` file or names code in ``auto_map``."""
    if problems := code_problems(folder):
        raise CodeInFolderError(refusal(folder, problems, label))
