"""The measurement row: one model or artifact as measured on one device at one thread count, in one shape for every
pipeline kind. Each kind's report builds its rows (``report.json``'s ``rows``); the report tables, the HTML report,
the gate and the per-device recommendations read rows only, and never ask which kind made one.

A field that does not apply to a kind is None (a vision model has no tokens/s, an image classifier no KLD). ``score``
is the kind's own score (vision: test accuracy; LLM: task score), ``source_score`` that of the PyTorch model the
artifact was exported from, ``retention`` the score over the teacher's. ``parity_*`` is the artifact's check against
its source (``parity_metric`` names what was compared, ``parity_bar`` the floor it was held to, from
:data:`edgedistill.core.tolerances.PARITY_BARS`). ``sha256`` is the measured file's, when the bench recorded it.
:meth:`Row.from_dict` reads a row back and rejects bad input with one line naming the field.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from edgedistill.benchmarks import stats
from edgedistill.benchmarks.recommend import MIN_SAMPLES, latency

HOSTS = ("host", "local")
ROLES = ("teacher", "student", "artifact", "teacher-artifact")


class RowError(ValueError):
    """A row that cannot be read: the message is one line naming the field."""


@dataclass(frozen=True)
class Row:
    """One measurement (module docstring); latencies in ms (LLM: per generated token), sizes in bytes."""

    artifact: str
    kind: str
    role: str
    device: str
    source: str | None = None
    format: str | None = None
    precision: str | None = None
    label: str | None = None
    threads: int | None = None
    samples_ms: list[float] | None = None
    p50_ms: float | None = None
    p50_interval: list[float] | None = None
    p90_ms: float | None = None
    p90_interval: list[float] | None = None
    p99_ms: float | None = None
    p99_interval: list[float] | None = None
    tokens_per_s: float | None = None
    peak_rss_mb: float | None = None
    size_bytes: int | None = None
    score: float | None = None
    source_score: float | None = None
    retention: float | None = None
    per_example: list[float] | None = None
    keeps: bool | None = None
    parity_metric: str | None = None
    parity_value: float | None = None
    parity_bar: float | None = None
    parity_ok: bool | None = None
    kld: float | None = None
    same_top: float | None = None
    speedup: float | None = None
    distill_speedup: float | None = None
    runtime_speedup: float | None = None
    sha256: str | None = None
    error: str | None = None

    @property
    def on_host(self) -> bool:
        return self.device in HOSTS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "row") -> Row:
        """A row from its JSON form; a missing required field, an unknown one or a value of the wrong type raises
        :class:`RowError` naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise RowError(f"{where}: expected an object, got {type(data).__name__}")
        hints = _hints()
        if unknown := sorted(set(data) - set(hints)):
            raise RowError(f"{where}.{unknown[0]}: unknown field (a row's fields: edgedistill.benchmarks.row.Row)")
        for f in fields(cls):
            if f.name not in data:
                if f.default is MISSING:
                    raise RowError(f"{where}.{f.name}: missing")
                continue
            if not _fits(data[f.name], hints[f.name]):
                raise RowError(f"{where}.{f.name}: {data[f.name]!r} is not {_name(hints[f.name])}")
        if data["role"] not in ROLES:
            raise RowError(f"{where}.role: {data['role']!r} is not one of {', '.join(ROLES)}")
        return cls(**data)


@cache
def _hints() -> dict[str, Any]:
    return get_type_hints(Row)


def _fits(value: Any, hint: Any) -> bool:
    if get_origin(hint) in (Union, types.UnionType):
        return any(_fits(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _name(hint: Any) -> str:
    return " or ".join("null" if h is type(None) else h.__name__ if isinstance(h, type) else str(h)
                       for h in get_args(hint) or [hint])


def rows_of(report: dict[str, Any]) -> list[Row]:
    """The report's rows, read back (:class:`RowError` on a bad one; none: a report made before rows existed)."""
    return [Row.from_dict(r, f"rows.{i}") for i, r in enumerate(report.get("rows") or [])]


def percentiles(samples: Sequence[float] | None, p50: float | None = None, p90: float | None = None,
                p99: float | None = None) -> dict[str, Any]:
    """The row's latency fields from the raw samples: the percentiles (the agent's own, when given) with their
    intervals — the p50's as :func:`edgedistill.benchmarks.recommend.latency` judges noise, p90/p99 a bootstrap
    interval from :data:`~edgedistill.benchmarks.recommend.MIN_SAMPLES` samples on (fewer: None)."""
    s = [float(x) for x in samples or []]
    if p50 is None and s:
        p50 = float(np.median(s))
    out: dict[str, Any] = {"samples_ms": s or None, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}
    if p50 is not None:
        t = latency(p50, s)
        out["p50_interval"] = [t.low, t.high]
    for q in (90, 99):
        if len(s) >= MIN_SAMPLES:
            est, lo, hi = stats.percentile_interval(s, q)
            out[f"p{q}_ms"] = out[f"p{q}_ms"] if out[f"p{q}_ms"] is not None else est
            out[f"p{q}_interval"] = [lo, hi]
    return out


def device_rows(kind: str, devices: list[dict[str, Any]], artifacts: dict[str, Row], score: str) -> list[Row]:
    """Rows for the devices other than the host, from the report's device section
    (:func:`edgedistill.benchmarks.report.common.device_rows`); ``artifacts`` maps an artifact's name to its host
    row (source, format, precision, size and parity bar hold on every device); ``score``: the device row's key
    for the kind's score (``accuracy``, ``task_score``)."""
    out = []
    for d in devices:
        if d["device"] in HOSTS or d.get("model") is None:
            continue
        base = artifacts.get(d["model"])
        agreement = (d.get("parity_vs_source") or {}).get("top1_agreement")  # every kind's device parity has it
        out.append(Row(
            artifact=d["model"], kind=kind, role="artifact", device=d["device"], label=d.get("label"),
            source=base and base.source, format=base and base.format, precision=base and base.precision,
            threads=d.get("threads"), size_bytes=base and base.size_bytes, peak_rss_mb=d.get("peak_rss_mb"),
            score=d.get(score), parity_metric=None if agreement is None else "top1_agreement", parity_value=agreement,
            parity_bar=base and base.parity_bar,
            error=d.get("error"), **percentiles(d.get("samples_ms"), d.get("p50_ms"), d.get("p90_ms"),
                                                 d.get("p99_ms"))))
    return out
