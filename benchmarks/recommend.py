"""The one rule that recommends an artifact: the report's ★ (both kinds), each device's recommendation and
``export --auto``'s choice all call :func:`recommend`, so they cannot disagree on the same measurements.

The rule: among the options that keep their bar (the caller decides what that is — accuracy and parity for the
report and the per-device choices, the retention budget for ``export --auto``), the fastest by the device's p50
latency (per item, or per generated token) wins. Latency is judged with its noise: a bootstrap interval over
:data:`MIN_SAMPLES` runs or more, the runs' range over fewer, the point value for one. Options whose interval reaches
down to the fastest one's upper end, or whose p50 is within :data:`TIE_FLOOR` of the fastest one's, are **tied
within noise**, and among them the smallest file wins (then the highest score), so two bench runs agree. A
faster option wins only when it is faster by more than the noise.

Where the four rules this replaces disagreed, this one decides: the vision report took the lowest point p50 and
the LLM report the highest llama-bench tokens/s, neither with a tie; now both tie within noise and prefer the
smaller file, and the LLM report compares p50 ms per generated token (with its samples) like every other choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgedistill.benchmarks import stats

#: a bootstrap interval needs at least this many samples; from 2 to this many (emulated devices time a few runs),
#: the samples' range, which holds the median with a known probability; one sample: the point value, marked as such
MIN_SAMPLES = 10
#: p50s closer than this fraction of the fastest one's are tied whatever their intervals. An interval holds the
#: sampling noise of one measurement, not the drift between measurements: each artifact is timed in its own process,
#: one after another, and on a shared runner the load changes in between. Two bench runs of the same two files on a
#: 2-core AMD EPYC shared with other jobs (and with a nice-19 busy loop per core) moved one file's p50 by up to 10%
#: between runs while its 95% interval spanned 2-5%: files that close flipped between "tied" (the smaller wins) and
#: "faster" (issue #23)
TIE_FLOOR = 0.15


@dataclass(frozen=True)
class Option:
    """One artifact as measured on one device: its p50 (ms; None: not measured) and the raw samples behind it, its
    file size, whether it keeps its bar there, and its score (accuracy or task score; a tie-break after size)."""

    name: str
    p50_ms: float | None
    samples_ms: Sequence[float] | None
    size_bytes: int | None
    keeps: bool
    score: float | None = None


@dataclass(frozen=True)
class Timing:
    """A p50 with its interval and how the interval was obtained, in words."""

    p50: float
    low: float
    high: float
    how: str


@dataclass(frozen=True)
class Recommendation:
    """The chosen option's name (None: none keeps its bar and was measured), why, the options tied with it within
    noise (itself included) and the timing of every option that was considered."""

    name: str | None
    reason: str
    tied: tuple[str, ...] = ()
    timing: dict[str, Timing] = field(default_factory=dict)


def latency(p50_ms: float, samples_ms: Sequence[float] | None) -> Timing:
    """A p50 with a bootstrap interval, a few runs' range, or the point value (module docstring)."""
    s = list(samples_ms or [])
    if len(s) >= MIN_SAMPLES:
        est, lo, hi = stats.percentile_interval(s, 50)
        return Timing(est, lo, hi, f"p50 with a 95% bootstrap interval over {len(s)} runs")
    if len(s) >= 2:
        est, lo, hi, cover = stats.median_range_interval(s)
        return Timing(est, lo, hi, f"median of {len(s)} runs with their range (a {cover:.0%} interval)")
    return Timing(p50_ms, p50_ms, p50_ms, "point p50 (no samples for an interval)")


def recommend(options: Iterable[Option], where: str, keeping: str = "that keeps accuracy",
              basis: str = "") -> Recommendation:
    """The option to recommend on ``where`` (module docstring). ``keeping`` names the bar in the reason
    ("that keeps accuracy", "of 3 that meet the budget"); ``basis`` says whose time it is ("measured time")."""
    kept = [o for o in options if o.keeps and o.p50_ms is not None]
    timing = {o.name: latency(o.p50_ms, o.samples_ms) for o in kept}  # type: ignore[arg-type]
    if not timing:
        return Recommendation(None, f"no artifact {keeping.removeprefix('that ')} on {where}", (), {})
    by_name = {o.name: o for o in kept}
    fastest = min(timing.values(), key=lambda t: t.p50)
    tied = [n for n, t in timing.items() if t.low <= fastest.high or t.p50 <= fastest.p50 * (1 + TIE_FLOOR)]
    best = min(tied, key=lambda n: (by_name[n].size_bytes or 0, -(by_name[n].score or 0)))
    t = timing[best]
    prefix = f"{basis}, " if basis else ""
    others = [n for n in tied if n != best]
    reason = (f"fastest {keeping} on {where} ({prefix}{t.how}: {t.p50:.4g} ms [{t.low:.4g}, {t.high:.4g}])"
              if not others else
              f"tied within noise with {', '.join(others)} on {where} ({prefix}{t.how}); the smallest file wins")
    return Recommendation(best, reason, tuple(tied), timing)
