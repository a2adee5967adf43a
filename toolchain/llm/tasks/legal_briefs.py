"""The built-in legal-brief task: a seeded generator and its field-by-field scorer.

A generator renders structured cases (parties, court, claim, statute, holding, date, amount) into varied
multi-sentence briefs; the reference summary lists the key fields in a fixed order, so a generated summary is
scored field by field (:func:`key_fields`): the task score is the mean exact match over fields and examples.
"""

from __future__ import annotations

import calendar
import random
from typing import Any

from edgedistill.toolchain.llm.data import Example
from edgedistill.toolchain.llm.tasks import GENERATORS, SCORERS

#: how a brief is shown to every model (and to the black-box endpoint); the summary follows it
PROMPT_TEMPLATE = "Brief: {input}\nSummary:"
FIELDS = ("parties", "court", "claim", "holding", "date", "amount")
SEP = " | "

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


@GENERATORS.register("legal-briefs")
def generate_legal_briefs(n: int, seed: int) -> list[Example]:
    """``n`` seeded cases rendered into briefs with their reference summaries."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        case = make_case(rng)
        out.append(Example(f"case-{i:06d}", render_brief(case, rng), render_summary(case), PROMPT_TEMPLATE))
    return out


@SCORERS.register("legal-briefs")
def score_key_fields(preds: list[str], refs: list[str], cfg: Any = None) -> dict[str, Any]:
    """Field accuracy (the task score): the mean over examples and :data:`FIELDS` of exact field matches."""
    per_field = {f: 0.0 for f in FIELDS}
    for p, r in zip(preds, refs, strict=True):
        kp, kr = key_fields(p), key_fields(r)
        for f in FIELDS:
            per_field[f] += float(kp[f] == kr[f])
    n = max(1, len(refs))
    return {"task_score": sum(per_field.values()) / (n * len(FIELDS)),
            "field_accuracy": {f: v / n for f, v in per_field.items()}}
