"""Text data for the LLM pipeline: examples, reproducible splits, and a JSONL loader for your own data.

Built-in generated tasks (the legal briefs) live in :mod:`edgedistill.toolchain.llm.tasks`, registered by name.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedistill.core.fileio import atomic_path, sha256_json

#: how a JSONL example's input is shown to every model (and to the black-box endpoint) unless the recipe says
DEFAULT_TEMPLATE = "{input}"


class DataError(ValueError):
    """Bad user data; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One training pair. Plain language-modelling text has ``input == ""``; ``template`` shows the input to a
    model (it must contain ``{input}``); the completion follows it."""

    id: str
    input: str
    output: str
    template: str = DEFAULT_TEMPLATE

    @property
    def prompt(self) -> str:
        return self.template.replace("{input}", self.input) if self.input else ""

    @property
    def completion(self) -> str:
        return f" {self.output}" if self.input else self.output


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    @property
    def split_hash(self) -> str:
        return sha256_json({k: [asdict(e) for e in getattr(self, k)] for k in ("train", "val", "test")})

    def save(self, folder: Path) -> list[Path]:
        """Write ``train/val/test.jsonl`` atomically; returns the paths."""
        paths = []
        for name in ("train", "val", "test"):
            p = Path(folder) / f"{name}.jsonl"
            write_jsonl(p, [asdict(e) for e in getattr(self, name)])
            paths.append(p)
        return paths


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# -- user data -------------------------------------------------------------------------------------------------
def read_jsonl(path: Path, template: str = DEFAULT_TEMPLATE) -> list[Example]:
    """Read ``{"input": ..., "output": ...}`` or ``{"text": ...}`` lines (an optional ``"id"`` is kept)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected an object, got {type(row).__name__}")
            ident = str(row.get("id", f"{Path(path).stem}-{n:06d}"))
            if isinstance(row.get("input"), str) and isinstance(row.get("output"), str):
                out.append(Example(ident, row["input"], row["output"], template))
            elif isinstance(row.get("text"), str):
                out.append(Example(ident, "", row["text"], template))
            else:
                raise DataError(f'{path}: line {n}: expected string fields "input" and "output", or "text"')
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def split(examples: list[Example], val_fraction: float, test_fraction: float, seed: int) -> Splits:
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    n_val, n_test = max(1, round(len(idx) * val_fraction)), max(1, round(len(idx) * test_fraction))
    pick = [examples[i] for i in idx]
    return Splits(pick[n_val + n_test:], pick[:n_val], pick[n_val:n_val + n_test])


def load_splits(kind: str, path: Path | None, n_examples: int, val_fraction: float, test_fraction: float,
                seed: int, template: str = DEFAULT_TEMPLATE) -> Splits:
    """The recipe's data: a registered generator (``legal-briefs``), one JSONL file split here, or a folder with
    train/val/test.jsonl."""
    if kind != "jsonl":
        from edgedistill.toolchain.llm.tasks import get_generator

        return split(get_generator(kind)(n_examples, seed), val_fraction, test_fraction, seed)
    assert path is not None
    if path.is_dir():
        missing = [n for n in ("train", "val", "test") if not (path / f"{n}.jsonl").is_file()]
        if missing:
            raise DataError(f"{path}: missing {', '.join(m + '.jsonl' for m in missing)} (or give one .jsonl file)")
        return Splits(*(read_jsonl(path / f"{n}.jsonl", template) for n in ("train", "val", "test")))
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file or folder")
    return split(read_jsonl(path, template), val_fraction, test_fraction, seed)
