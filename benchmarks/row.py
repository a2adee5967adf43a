"""The measurement row: one model or artifact as measured on one device at one thread count, in one shape for every
pipeline kind. Each kind's report builds its rows (``report.json``'s ``rows``); the report tables, the HTML report,
the gate and the per-device recommendations read rows only, and never ask which kind made one.

A field that does not apply to a kind is None (a vision model has no tokens/s, an image classifier no KLD). ``score``
is the kind's own score (vision: test accuracy; LLM: task score), ``source_score`` that of the PyTorch model the
artifact was exported from, ``retention`` the score over the teacher's. ``parity_*`` is the artifact's check against
its source (``parity_metric`` names what was compared, ``parity_bar_name`` the bar in
:data:`edgedistill.core.tolerances.PARITY_BARS` it is held to on every device and ``parity_bar`` that bar's floor).
The device's own checks of the file, as the bench made them there (the host being one device among others):
``source_*``, its outputs against the source model's (top-1 agreement, max |Δ|, the fp32 bar); ``host_agreement``,
against the same file's on the host; ``tokens_*``, how many test prompts its tokenizer splits as the host's does.
``label`` says how the device's figures were obtained and ``profile`` names its device profile. ``sha256`` is the
measured file's, when the bench recorded it. :meth:`Row.from_dict` reads a row back and rejects bad input with one
line naming the field.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from edgedistill.benchmarks import stats
from edgedistill.benchmarks.recommend import MIN_SAMPLES, latency
from edgedistill.core.tolerances import PARITY_BARS

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
    profile: str | None = None
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
    parity_bar_name: str | None = None
    source_agreement: float | None = None
    source_max_abs_diff: float | None = None
    source_fp32_ok: bool | None = None
    host_agreement: float | None = None
    tokens_identical: int | None = None
    tokens_texts: int | None = None
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

    @property
    def fp32_bar(self) -> bool:
        """Whether its bar is the fp32 one (every logit within rounding) rather than an agreement floor."""
        return self.parity_bar_name is not None and PARITY_BARS[self.parity_bar_name].metric == "fp32"

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
        if data.get("parity_bar_name") not in (None, *PARITY_BARS):
            raise RowError(f"{where}.parity_bar_name: {data['parity_bar_name']!r} is not a bar in "
                           "edgedistill.core.tolerances.PARITY_BARS")
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


def device_checks(res: dict[str, Any]) -> dict[str, Any]:
    """The row fields of a device's own checks of one file (``res``: a result of
    :func:`edgedistill.benchmarks.harness.measure_devices`, or a device row of
    :func:`edgedistill.benchmarks.report.common.device_rows`): its outputs against the source model's and the
    host's, and its tokenizer against the host's (None where the bench made no such check)."""
    src, host, tok = (res.get(k) or {} for k in ("parity_vs_source", "parity_vs_host", "tokens_vs_host"))
    return {"source_agreement": src.get("top1_agreement"), "source_max_abs_diff": src.get("max_abs_diff"),
            "source_fp32_ok": src.get("fp32_ok"), "host_agreement": host.get("top1_agreement"),
            "tokens_identical": tok.get("identical"), "tokens_texts": tok.get("texts")}


def on_devices(kind: str, host: list[Row], devices: list[dict[str, Any]], score: str) -> list[Row]:
    """Every measurement row: the kind's ``host`` rows, each with what the bench's host device recorded of the same
    model at the same thread count (label, profile, :func:`device_checks`), then one row per model and thread count
    on every other device. ``devices``: the report's device section
    (:func:`edgedistill.benchmarks.report.common.device_rows`); ``score``: a device row's key for the kind's score."""
    found = {(d["model"], d["threads"]): d for d in devices
             if d["device"] in HOSTS and d.get("model") is not None and d.get("threads") is not None}
    out = []
    for r in host:
        d = found.get((r.artifact, r.threads))
        out.append(r if d is None else replace(r, label=d.get("label"), profile=d.get("profile"), **device_checks(d)))
    on_host = {r.artifact: r for r in host if r.role == "artifact"}
    return out + _device_rows(kind, devices, on_host, score)


def _device_rows(kind: str, devices: list[dict[str, Any]], artifacts: dict[str, Row], score: str) -> list[Row]:
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
            profile=d.get("profile"), source=base and base.source, format=base and base.format,
            precision=base and base.precision,
            threads=d.get("threads"), size_bytes=base and base.size_bytes, peak_rss_mb=d.get("peak_rss_mb"),
            score=d.get(score), parity_metric=None if agreement is None else "top1_agreement", parity_value=agreement,
            parity_bar=base and base.parity_bar, parity_bar_name=base and base.parity_bar_name, **device_checks(d),
            error=d.get("error"), **percentiles(d.get("samples_ms"), d.get("p50_ms"), d.get("p90_ms"),
                                                 d.get("p99_ms"))))
    return out
