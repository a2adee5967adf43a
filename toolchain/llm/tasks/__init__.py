"""Tasks: how examples are made (a generator, for built-in tasks) and how a generated output is scored.

Both are registered by name, in the manner of timm's registry: ``GENERATORS`` (``data.kind`` values other than
``jsonl``), ``SCORERS`` (``data.score.name``), ``BASELINES`` (a task's trivial answer, scored beside the teacher) and
``SOURCES`` (where a built-in task's data came from). A scorer maps ``(predictions, references, cfg)`` to a dict with
at least ``task_score`` in [0, 1]; :func:`score` adds exact match and ROUGE-L for the report's columns. A user's
own scorer is named explicitly in the recipe as ``package.module:function`` — never by the data.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from edgedistill.core.registry import Registry, UnknownNameError
from edgedistill.toolchain.llm.data import Example

Scorer = Callable[[list[str], list[str], Any], dict[str, Any]]
Generator = Callable[[int, int], list[Example]]
#: a task's trivial baseline: examples → (what it does, one prediction per example)
Baseline = Callable[[list[Example]], tuple[str, list[str]]]

SCORERS: Registry[Scorer] = Registry("scorer")
GENERATORS: Registry[Generator] = Registry("data generator")
BASELINES: Registry[Baseline] = Registry("baseline")
#: a built-in task whose data comes from a registry package: where it came from (package, version, hash, licence)
SOURCES: Registry[Callable[[], dict[str, Any]]] = Registry("data source")
#: a user scorer reference: ``package.module:function``
USER_SCORER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: the scorer a data kind uses when ``data.score.name`` is null
DEFAULT_SCORER = {"legal-briefs": "legal-briefs", "wordnet": "wordnet", "jsonl": "rouge-l"}


def load_tasks() -> None:
    from edgedistill.toolchain.llm.tasks import legal_briefs, scorers, wordnet  # noqa: F401  (they register themselves)


def get_generator(kind: str) -> Generator:
    load_tasks()
    return GENERATORS.get(kind)


def get_baseline(kind: str) -> Baseline | None:
    """The data kind's trivial baseline, if it has one."""
    load_tasks()
    return BASELINES.get(kind) if kind in BASELINES else None


def get_scorer(name: str | None, data_kind: str) -> Scorer:
    """A registered scorer, the data kind's default, or a user's ``module:function`` (imported here)."""
    load_tasks()
    name = name or DEFAULT_SCORER.get(data_kind, "rouge-l")
    if name in SCORERS:
        return SCORERS.get(name)
    if not USER_SCORER.match(name):
        raise UnknownNameError(f"data.score.name: unknown scorer {name!r}; choose one of: "
                               f"{', '.join(SCORERS.names())}, or give your own as package.module:function")
    module, func = name.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"data.score.name: cannot import {name} ({err})") from None
    return lambda preds, refs, _cfg: fn(preds, refs)


def score(preds: list[str], refs: list[str], name: str | None, data_kind: str, cfg: Any = None) -> dict[str, Any]:
    """The task score by the chosen scorer, plus whole-output exact match and ROUGE-L, averaged over examples."""
    from edgedistill.toolchain.llm.tasks.scorers import exact_match, rouge_l_mean

    out = dict(get_scorer(name, data_kind)(preds, refs, cfg))
    if not isinstance(out.get("task_score"), int | float) or not 0 <= out["task_score"] <= 1:
        raise ValueError(f"scorer {name or DEFAULT_SCORER.get(data_kind)}: task_score must be a number in [0, 1], "
                         f"got {out.get('task_score')!r}")
    out.setdefault("exact_match", exact_match(preds, refs))
    out.setdefault("rouge_l", rouge_l_mean(preds, refs))
    out["n"] = len(refs)
    return out
