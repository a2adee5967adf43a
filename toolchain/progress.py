"""Progress bars for long loops (rich), quiet when not attached to a terminal unless asked."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def _enabled() -> bool:
    flag = os.environ.get("EDGEDISTILL_PROGRESS")
    return flag == "1" if flag in ("0", "1") else sys.stderr.isatty()


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not _enabled(), transient=False,
    )


def progress_bar(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar labelled ``desc``."""
    seq = list(items) if total is None and not hasattr(items, "__len__") else items
    n = total if total is not None else len(seq)  # type: ignore[arg-type]
    with make_progress() as prog:
        task = prog.add_task(desc, total=n, status="")
        for item in seq:
            yield item
            prog.advance(task)


def note(msg: str) -> None:
    """A plain progress line for logs (CI, pipes) where bars are off; silent when bars show the same thing."""
    if not _enabled() and os.environ.get("EDGEDISTILL_PROGRESS") != "0":
        print(msg, file=sys.stderr, flush=True)


def say(msg: str) -> None:
    """A line the user must see whatever the progress settings (e.g. that a stage resumed from a checkpoint)."""
    print(msg, file=sys.stderr, flush=True)
