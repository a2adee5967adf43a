"""Text data for the LLM pipeline: the built-in legal-brief task and a JSONL loader, both split reproducibly.

The generated task mirrors the seed's example: a seeded generator renders structured cases (parties, court,
claim, statute, holding, date, amount) into varied multi-sentence briefs, and the reference summary lists the
key fields in a fixed order so a generated summary can be scored field by field (:func:`key_fields`).
"""

from __future__ import annotations

import calendar
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedistill.core.fileio import atomic_path, sha256_json

#: how a prompt is shown to every model (and to the black-box endpoint); the completion follows it
PROMPT_TEMPLATE = "Brief: {input}\nSummary:"
FIELDS = ("parties", "court", "claim", "holding", "date", "amount")
SEP = " | "


class DataError(ValueError):
    """Bad user data; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One training pair. Plain language-modelling text has ``input == ""``."""

    id: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(input=self.input) if self.input else ""

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


# -- the generated legal-brief task ----------------------------------------------------------------------------
_FIRST = ["Maria", "James", "Aiko", "Tomas", "Grace", "Omar", "Lena", "Victor", "Nadia", "Samuel", "Ruth", "Diego"]
_LAST = ["Alvarez", "Brennan", "Okafor", "Lindqvist", "Moreau", "Patel", "Kowalski", "Nakamura", "Fischer",
         "Reyes", "Osei", "Whitfield"]
_FIRMS = ["Harlow Freight", "Bluestone Mining", "Cedar Health", "Northgate Bank", "Pioneer Foods", "Atlas Roofing",
          "Keystone Media", "Redwood Logistics", "Summit Pharma", "Vantage Motors"]
_SUFFIX = ["Inc.", "LLC", "Corp.", "Ltd."]
_COURTS = ["Ninth Circuit", "Second Circuit", "Fifth Circuit", "Delaware Chancery", "Texas Supreme Court",
           "California Court of Appeal", "New York Supreme Court", "District of Columbia Circuit"]
_CLAIMS = [("breach of contract", "UCC 2-207"), ("negligence", "Restatement 2d Torts 282"),
           ("wrongful termination", "Title VII"), ("patent infringement", "35 USC 271"),
           ("unpaid wages", "FLSA 207"), ("defamation", "Restatement 2d Torts 558"),
           ("securities fraud", "Rule 10b-5"), ("trademark dilution", "15 USC 1125")]
_HOLDINGS = ["affirmed", "reversed", "remanded", "dismissed"]
_OPEN = ["In this matter, {p} brought suit against {d}.", "{p} sued {d}.", "This case pits {p} against {d}.",
         "The plaintiff, {p}, filed a complaint against {d}."]
_COURT = ["The case was heard by the {c}.", "It came before the {c}.", "The {c} took up the appeal."]
_CLAIM = ["{p} alleged {cl} under {st}.", "The complaint asserted {cl}, citing {st}.",
          "At issue was a claim of {cl} under {st}."]
_AMOUNT = ["Damages of {a} were sought.", "The plaintiff asked for {a}.", "The amount in dispute was {a}."]
_DATE = ["The decision issued on {dt}.", "On {dt}, the court ruled.", "Judgment was entered {dt}."]
_HOLD = ["The court {h} the judgment below.", "In the end the ruling was {h}.", "The appeal was {h}."]
_FILLER = ["Counsel for both sides filed extensive briefs.", "Several witnesses testified at trial.",
           "The record on appeal was lengthy.", "Neither party sought a jury.", "Amicus briefs were received."]


def _party(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    return f"{rng.choice(_FIRMS)} {rng.choice(_SUFFIX)}"


def make_case(rng: random.Random) -> dict[str, str]:
    """One structured case with every field as it appears in the reference summary."""
    p, d = _party(rng), _party(rng)
    while d == p:
        d = _party(rng)
    claim, statute = rng.choice(_CLAIMS)
    y, m, day = rng.randint(2001, 2024), rng.randint(1, 12), rng.randint(1, 28)
    amount = f"${rng.randint(1, 990) * 500:,}"
    return {"plaintiff": p, "defendant": d, "court": rng.choice(_COURTS), "claim": claim, "statute": statute,
            "holding": rng.choice(_HOLDINGS), "date": f"{y:04d}-{m:02d}-{day:02d}", "amount": amount}


def render_brief(case: dict[str, str], rng: random.Random) -> str:
    """A multi-sentence brief: sentence templates and order vary; dates are written out in words."""
    y, m, day = (int(v) for v in case["date"].split("-"))
    dt = rng.choice([f"{calendar.month_name[m]} {day}, {y}", f"{day} {calendar.month_name[m]} {y}"])
    f = {"p": case["plaintiff"], "d": case["defendant"], "c": case["court"], "cl": case["claim"],
         "st": case["statute"], "a": case["amount"], "h": case["holding"], "dt": dt}
    middle = [rng.choice(t).format(**f) for t in (_COURT, _CLAIM, _AMOUNT, _DATE)]
    rng.shuffle(middle)
    if rng.random() < 0.5:
        middle.insert(rng.randint(0, len(middle)), rng.choice(_FILLER))
    return " ".join([rng.choice(_OPEN).format(**f), *middle, rng.choice(_HOLD).format(**f)])


def render_summary(case: dict[str, str]) -> str:
    parts = {"parties": f"{case['plaintiff']} v. {case['defendant']}", "court": case["court"],
             "claim": f"{case['claim']} ({case['statute']})", "holding": case["holding"], "date": case["date"],
             "amount": case["amount"]}
    return SEP.join(parts[k] for k in FIELDS)


def key_fields(summary: str) -> dict[str, str]:
    """Parse a summary back into its fields (missing ones are empty strings)."""
    parts = [s.strip() for s in summary.strip().split("|")]
    return {k: (parts[i] if i < len(parts) else "") for i, k in enumerate(FIELDS)}


def generate_legal_briefs(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        case = make_case(rng)
        out.append(Example(f"case-{i:06d}", render_brief(case, rng), render_summary(case)))
    return out


# -- user data -------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[Example]:
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
                out.append(Example(ident, row["input"], row["output"]))
            elif isinstance(row.get("text"), str):
                out.append(Example(ident, "", row["text"]))
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
                seed: int) -> Splits:
    """The recipe's data: generated, one JSONL file split here, or a folder with train/val/test.jsonl."""
    if kind == "legal-briefs":
        return split(generate_legal_briefs(n_examples, seed), val_fraction, test_fraction, seed)
    assert path is not None
    if path.is_dir():
        missing = [n for n in ("train", "val", "test") if not (path / f"{n}.jsonl").is_file()]
        if missing:
            raise DataError(f"{path}: missing {', '.join(m + '.jsonl' for m in missing)} (or give one .jsonl file)")
        return Splits(*(read_jsonl(path / f"{n}.jsonl") for n in ("train", "val", "test")))
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file or folder")
    return split(read_jsonl(path), val_fraction, test_fraction, seed)
