"""The CI gate: budgets from the recipe checked against a run's report, with intervals, optionally against a
baseline run, giving pass / fail / inconclusive.

A *check* is one metric of one artifact on one device against one limit. Latency limits use the raw samples the
agent returns (bootstrap intervals of the percentile, or of the candidate/baseline ratio); accuracy limits use
per-example scores (a paired bootstrap against the baseline on the same test examples). A check **fails only when
its interval clears the limit**, passes when the interval sits inside it, and is *inconclusive* in between or on
thin data; the CLI then measures again once and exits 3 if still unsure. Relative limits compare with a baseline
report; when both runs' artifacts are at hand the latencies come from interleaved rounds (baseline, candidate,
candidate, baseline, ...) measured in the same job, whose per-round ratios cancel slow drift of a noisy machine.

The gate fails closed: a budget whose ``artifacts`` or ``devices`` glob covers nothing, or that sets no limit, is a
*problem* (verdict ``bad input``, exit 2); relative limits without a baseline are checks with verdict ``not checked``
(or ``fail`` with ``require_baseline``); a waiver applies only until its ``expires`` date, and expired waivers and
waivers that match no check are listed. ``GateResult.judged`` counts what was judged: 0 means the gate checked nothing.

``evaluate(report, cfg, baseline, rounds)`` → :class:`GateResult`; ``check(report, budgets)`` is the simple
recommended-artifact check (``min_retention`` / ``max_p50_ms`` / ``min_speedup``) every report also records.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edgedistill.benchmarks import stats
from edgedistill.benchmarks.row import HOSTS, Row, rows_of

LOWER_BETTER = frozenset({"p50_ms", "p90_ms", "p99_ms", "peak_rss_mb", "size_kb", "kld"})
PERCENTILE = {"p50_ms": 50, "p90_ms": 90, "p99_ms": 99}
METRICS = ("p50_ms", "p90_ms", "p99_ms", "tokens_per_s", "peak_rss_mb", "size_kb", "accuracy", "retention", "kld",
           "same_top", "speedup", "distill_speedup", "runtime_speedup")
EXIT_CODES = {"pass": 0, "fail": 1, "bad input": 2, "inconclusive": 3}
NOT_CHECKED = "not checked"  # a relative limit without a baseline
_LEGACY = ("min_retention", "max_p50_ms", "min_speedup")


class Budgets(Protocol):
    min_retention: float | None
    max_p50_ms: float | None
    min_speedup: float | None


# -- the recommended artifact, point values (every report records this) -------------------------------------------
def check(report: dict[str, Any], budgets: Budgets, threads: int | None = None) -> list[str]:
    """One line per budget the recommended artifact misses (empty: the gate passes); one line, whatever the
    budgets, when ``export --auto`` chose nothing. ``threads`` defaults to the smallest thread count the report
    measured."""
    auto = report.get("auto")
    if auto and not auto.get("chosen"):  # export --auto found nothing to ship: a result for export, a failure here
        return [f"export --auto on {auto.get('device')} chose no artifact: {auto.get('reason')}"]
    if all(getattr(budgets, k) is None for k in _LEGACY):
        return []
    summary = report.get("summary", {})
    name = summary.get("recommended")
    t = threads if threads is not None else min(summary.get("threads") or [1])
    row = _host_row(rows_of(report), name, t) if name is not None else None
    if row is None:
        why = summary.get("recommended_reason") or "no artifact kept accuracy, or bench did not run"
        return [f"no recommended artifact in the report ({why})"]
    fails = []
    if budgets.min_retention is not None and (row.retention or 0) < budgets.min_retention:
        fails.append(f"{name}: retention {_f(row.retention)} < min_retention {budgets.min_retention}")
    if budgets.max_p50_ms is not None and (row.p50_ms if row.p50_ms is not None else math.inf) > budgets.max_p50_ms:
        fails.append(f"{name}: p50 {_f(row.p50_ms)} ms at {t} thread(s) > max_p50_ms {budgets.max_p50_ms}")
    if budgets.min_speedup is not None and (row.speedup or 0) < budgets.min_speedup:
        fails.append(f"{name}: speed-up {_f(row.speedup)} at {t} thread(s) < min_speedup {budgets.min_speedup}")
    return fails


def _host_row(rows: list[Row], artifact: str, threads: int) -> Row | None:
    """``artifact``'s host row at ``threads`` (else its untimed host row, or None: not in the report)."""
    mine = [r for r in rows if r.artifact == artifact and r.on_host]
    return next((r for r in mine if r.threads == threads), None) or next((r for r in mine if r.threads is None), None)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


# -- per-artifact, per-device, per-metric checks with intervals ---------------------------------------------------
@dataclass
class Check:
    name: str
    artifact: str
    device: str
    metric: str
    kind: str  # absolute | relative
    threshold: float
    verdict: str  # pass | fail | inconclusive | waived | not checked
    value: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    interval: list[float] | None = None
    samples: int | None = None
    waived: str | None = None
    warning: str | None = None
    method: str = ""


@dataclass
class GateResult:
    """The verdict (pass | fail | inconclusive | bad input), every check, and what the gate could not use.

    ``problems``: budgets that cover nothing (bad input); ``judged``: limits judged (budget checks other than
    ``not checked``, recommended-artifact limits, an ``export --auto`` decision), 0 when the gate checked nothing;
    ``budgets_source``: where the budgets came from (set by the CLI: path, sha256, which kind of source)."""

    verdict: str
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # recommended-artifact budgets and freshness problems
    geomean: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    expired_waivers: list[str] = field(default_factory=list)
    unmatched_waivers: list[str] = field(default_factory=list)
    judged: int = 0
    budgets_source: dict[str, Any] | None = None

    @property
    def not_checked(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == NOT_CHECKED]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [asdict(c) for c in self.checks], "failures": self.failures,
                "geomean": self.geomean, "warnings": self.warnings, "problems": self.problems,
                "not_checked": [c.name for c in self.not_checked], "expired_waivers": self.expired_waivers,
                "unmatched_waivers": self.unmatched_waivers, "judged": self.judged,
                "budgets_source": self.budgets_source}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def _artifacts(report: dict[str, Any]) -> list[str]:
    """The names of the report's artifact rows (the teacher's own exports and PyTorch rows are not gated)."""
    return list(dict.fromkeys(r.artifact for r in rows_of(report) if r.role == "artifact"))


def _targets(report: dict[str, Any], artifact_glob: str, device_glob: str) -> list[tuple[str, str]]:
    """(artifact, device) pairs the budget covers: artifact rows of the report on the host, and on other devices."""
    arts = [a for a in _artifacts(report) if fnmatch.fnmatch(a, artifact_glob)]
    out = [(a, "host") for a in arts if fnmatch.fnmatch("host", device_glob)]
    for row in rows_of(report):
        if row.on_host or row.artifact not in arts or not fnmatch.fnmatch(row.device, device_glob):
            continue
        if (row.artifact, row.device) not in out:
            out.append((row.artifact, row.device))
    return out


def measurement(report: dict[str, Any], artifact: str, device: str) -> dict[str, Any] | None:
    """Every metric of ``artifact`` on ``device`` the report's rows hold: on the host at the fewest thread count
    measured, elsewhere its first timed row."""
    rows = rows_of(report)
    if device in HOSTS:
        row = _host_row(rows, artifact, min(report.get("summary", {}).get("threads") or [1]))
    else:
        row = next((r for r in rows if r.device == device and r.artifact == artifact and r.p50_ms is not None), None)
    if row is None:
        return None
    teacher = next((r for r in rows if r.role == "teacher" and r.on_host and r.per_example), None)
    return {"samples": row.samples_ms, "p50_ms": row.p50_ms, "p90_ms": row.p90_ms, "p99_ms": row.p99_ms,
            "peak_rss_mb": row.peak_rss_mb, "size_kb": None if row.size_bytes is None else row.size_bytes / 1024,
            "accuracy": row.score, "retention": row.retention, "kld": row.kld, "same_top": row.same_top,
            "tokens_per_s": row.tokens_per_s, "speedup": row.speedup, "distill_speedup": row.distill_speedup,
            "runtime_speedup": row.runtime_speedup, "per_example": row.per_example,
            "teacher_per_example": teacher.per_example if teacher and row.on_host else None}


def _verdict(lo: float, hi: float, limit: float, upper: bool) -> str:
    """Against an upper limit: fail when the whole interval is above it, pass when it is all at or below."""
    if upper:
        return "fail" if lo > limit else "pass" if hi <= limit else "inconclusive"
    return "fail" if hi < limit else "pass" if lo >= limit else "inconclusive"


def _absolute(metric: str, m: dict[str, Any], limit: float, upper: bool, cfg: dict[str, Any]) -> dict[str, Any]:
    conf, samples = cfg["confidence"], m.get("samples")
    if metric in PERCENTILE and samples:
        if len(samples) < cfg["min_samples"]:
            return {"value": m[metric], "verdict": "inconclusive", "samples": len(samples),
                    "warning": f"{len(samples)} samples < min_samples {cfg['min_samples']}"}
        est, lo, hi = stats.percentile_interval(samples, PERCENTILE[metric], conf)
        return {"value": est, "interval": [lo, hi], "samples": len(samples), "verdict": _verdict(lo, hi, limit, upper),
                "method": f"bootstrap interval of the p{PERCENTILE[metric]}"}
    if metric == "tokens_per_s" and samples and len(samples) >= cfg["min_samples"]:
        _, lo_ms, hi_ms = stats.percentile_interval(samples, 50, conf)
        est = m["tokens_per_s"] if m["tokens_per_s"] is not None else 1000 / stats.percentile_interval(samples, 50)[0]
        return {"value": est, "interval": [1000 / hi_ms, 1000 / lo_ms], "samples": len(samples),
                "verdict": _verdict(1000 / hi_ms, 1000 / lo_ms, limit, upper),
                "method": "bootstrap interval of 1000 / median ms per token"}
    if metric in ("accuracy", "retention") and m.get("per_example"):
        ref = m.get("teacher_per_example") if metric == "retention" else None
        if metric == "retention" and not ref:
            return _point(metric, m, limit, upper)
        est, lo, hi = stats.mean_interval(m["per_example"], conf, ref)
        return {"value": est, "interval": [lo, hi], "samples": len(m["per_example"]),
                "verdict": _verdict(lo, hi, limit, upper), "method": "bootstrap over test examples"}
    return _point(metric, m, limit, upper)


def _point(metric: str, m: dict[str, Any], limit: float, upper: bool) -> dict[str, Any]:
    v = m.get(metric)
    if v is None:
        return {"value": None, "verdict": "inconclusive", "warning": f"no {metric} in the report"}
    return {"value": v, "verdict": "fail" if (v > limit if upper else v < limit) else "pass",
            "method": "point value (no samples for an interval)"}


def _unresolvable(n: int, half_width: float, share: float) -> str | None:
    """A warning when ``n`` test examples give an interval too wide to tell a change within ``max_drop`` from no
    change (the half-width shrinks as 1/sqrt(n), so about ``n·(half_width/share)²`` examples would)."""
    if share <= 0 or half_width <= share:
        return None
    return (f"{n} test examples cannot resolve max_drop {share:g}: the interval's half-width is {half_width:.3g}; "
            f"about {math.ceil(n * (half_width / share) ** 2)} examples would (or a larger max_drop)")


def _relative(metric: str, m: dict[str, Any], b: dict[str, Any], share: float, cfg: dict[str, Any],
              rounds: dict[str, Any] | None) -> dict[str, Any]:
    """Candidate vs baseline: ``max_regression`` (ratio metrics) or ``max_drop`` (accuracy, retention)."""
    conf = cfg["confidence"]
    if metric in ("accuracy", "retention"):
        pc, pb = m.get("per_example"), b.get("per_example")
        if pc and pb and len(pc) == len(pb):
            d, lo, hi = stats.paired_difference_interval(pc, pb, conf)
            scale = 1.0
            if metric == "retention" and m.get("teacher_per_example"):
                scale = 1 / max(sum(m["teacher_per_example"]) / len(m["teacher_per_example"]), 1e-12)
            return {"value": m.get(metric), "baseline": b.get(metric), "ratio": d * scale,
                    "interval": [lo * scale, hi * scale], "samples": len(pc),
                    "verdict": _verdict(lo * scale, hi * scale, -share, upper=False),
                    "method": "paired bootstrap of the difference over the same test examples",
                    "warning": _unresolvable(len(pc), (hi - lo) * scale / 2, share)}
        if m.get(metric) is None or b.get(metric) is None:
            return {"verdict": "inconclusive", "warning": f"no {metric} in one of the reports"}
        d = m[metric] - b[metric]
        return {"value": m[metric], "baseline": b[metric], "ratio": d, "verdict": "fail" if d < -share else "pass",
                "warning": "no per-example scores: point difference", "method": "point difference"}
    upper = metric in LOWER_BETTER or metric in PERCENTILE
    limit = 1 + share if upper else 1 - share
    if metric in PERCENTILE or metric == "tokens_per_s":
        q = PERCENTILE.get(metric, 50)
        if rounds and rounds.get("candidate") and len(rounds["candidate"]) >= 3:
            r, lo, hi = stats.paired_ratio_interval(rounds["candidate"], rounds["baseline"], q, conf)
            method, n = f"interleaved rounds ({len(rounds['candidate'])}), bootstrap over rounds", sum(
                map(len, rounds["candidate"]))
            warning = None
        elif m.get("samples") and b.get("samples"):
            r, lo, hi = stats.ratio_interval(m["samples"], b["samples"], q, conf)
            method, n = "independent bootstrap of the ratio", len(m["samples"])
            warning = "baseline and candidate measured in different jobs: drift between them counts as change"
            if min(len(m["samples"]), len(b["samples"])) < cfg["min_samples"]:
                return {"ratio": r, "interval": [lo, hi], "samples": n, "verdict": "inconclusive",
                        "warning": f"fewer than min_samples {cfg['min_samples']} samples"}
        else:
            return {"verdict": "inconclusive", "warning": "no latency samples in one of the reports"}
        if metric == "tokens_per_s":  # throughput is the inverse of per-token latency
            r, lo, hi = 1 / r, 1 / hi, 1 / lo
        return {"value": m.get(metric), "baseline": b.get(metric), "ratio": r, "interval": [lo, hi], "samples": n,
                "verdict": _verdict(lo, hi, limit, upper), "method": method, "warning": warning}
    if m.get(metric) is None or not b.get(metric):
        return {"verdict": "inconclusive", "warning": f"no {metric} in one of the reports"}
    r = m[metric] / b[metric]
    return {"value": m[metric], "baseline": b[metric], "ratio": r,
            "verdict": "fail" if (r > limit if upper else r < limit) else "pass", "method": "point ratio"}


def evaluate(report: dict[str, Any], cfg: dict[str, Any], baseline: dict[str, Any] | None = None,
             rounds: dict[tuple[str, str], dict[str, Any]] | None = None, require_baseline: bool = False,
             today: dt.date | None = None) -> GateResult:
    """Every budget of ``cfg`` (the recipe's ``gate`` section as data) on ``report``; relative limits against
    ``baseline`` (without one: ``not checked``, or failed when ``require_baseline``); ``rounds[(artifact, device)]``
    holds interleaved latency samples when they were measured; waivers apply up to and including their
    ``expires`` date, compared with ``today`` (default: today in UTC)."""
    checks: list[Check] = []
    result = GateResult("pass", failures=check(report, _Legacy(cfg)), problems=coverage_problems(report, cfg))
    for budget in cfg.get("budgets", []):
        for artifact, device in _targets(report, budget.get("artifacts", "*"), budget.get("devices", "host")):
            m = measurement(report, artifact, device)
            b = measurement(baseline, artifact, device) if baseline is not None else None
            for metric in METRICS:
                bound = budget.get(metric)
                if not bound:
                    continue
                checks += _checks_for(artifact, device, metric, bound, m, b, cfg, (rounds or {}).get(
                    (artifact, device)), baseline is not None, require_baseline)
    result.expired_waivers, result.unmatched_waivers = _waive(checks, cfg.get("waivers", []),
                                                              today or dt.datetime.now(dt.UTC).date())
    result.checks = checks
    result.geomean = _geomean(checks)
    result.warnings = sorted({c.warning for c in checks if c.warning})
    result.judged = (sum(c.verdict != NOT_CHECKED for c in checks) + sum(cfg.get(k) is not None for k in _LEGACY)
                     + bool(report.get("auto")))
    verdicts = {c.verdict for c in checks}
    result.verdict = ("bad input" if result.problems else "fail" if "fail" in verdicts or result.failures else
                      "inconclusive" if "inconclusive" in verdicts else "pass")
    return result


def coverage_problems(report: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """One line per budget that can check nothing: no limit set, an ``artifacts`` glob that matches no artifact of
    the report, or a ``devices`` glob that matches no device those artifacts were measured on."""
    arts = _artifacts(report)
    out = []
    for i, budget in enumerate(cfg.get("budgets", [])):
        where, glob, dglob = f"gate.budgets.{i}", budget.get("artifacts", "*"), budget.get("devices", "host")
        if all(limit is None for m in METRICS for limit in (budget.get(m) or {}).values()):
            out.append(f"{where}: sets no limit (give a metric with max, min, max_regression or max_drop)")
        elif not any(fnmatch.fnmatch(a, glob) for a in arts):
            out.append(f"{where}.artifacts: {glob!r} matches no artifact of the run (its artifacts: "
                       f"{', '.join(arts) or 'none'})")
        elif not _targets(report, glob, dglob):
            ran = sorted({"host"} | {r.device for r in rows_of(report) if fnmatch.fnmatch(r.artifact, glob)})
            out.append(f"{where}.devices: {dglob!r} matches no device that {glob!r} was measured on "
                       f"({', '.join(ran)})")
    return out


def _waive(checks: list[Check], waivers: list[dict[str, Any]], today: dt.date) -> tuple[list[str], list[str]]:
    """Mark failed checks that a live waiver covers as waived; return the expired waivers (not applied) and those
    that match no check. A waiver without an ``expires`` date is treated as expired."""
    expired, unmatched = [], []
    for w in waivers:
        devices, expires = w.get("devices", "*"), w.get("expires")
        label = f"{w['artifacts']} @ {devices}: {w['metric']} ({w.get('reason')}; expires {expires})"
        covered = [c for c in checks if c.metric == w["metric"] and fnmatch.fnmatch(c.artifact, w["artifacts"])
                   and fnmatch.fnmatch(c.device, devices)]
        if not covered:
            unmatched.append(f"{label}: matches no check")
        elif expires is None or dt.date.fromisoformat(str(expires)) < today:
            expired.append(f"{label}: expired, not applied")
        else:
            for c in covered:
                if c.verdict == "fail":
                    c.verdict, c.waived = "waived", f"{w['reason']} (until {expires})"
    return expired, unmatched


@dataclass
class _Legacy:
    min_retention: float | None
    max_p50_ms: float | None
    min_speedup: float | None

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.min_retention, self.max_p50_ms, self.min_speedup = (cfg.get(k) for k in _LEGACY)


def _checks_for(artifact: str, device: str, metric: str, bound: dict[str, Any], m: dict[str, Any] | None,
                b: dict[str, Any] | None, cfg: dict[str, Any], rounds: dict[str, Any] | None,
                has_baseline: bool, require_baseline: bool) -> list[Check]:
    out = []
    where = f"{artifact} @ {device}"
    for key, limit in (("max", bound.get("max")), ("min", bound.get("min"))):
        if limit is None:
            continue
        name = f"{where}: {metric} {'<=' if key == 'max' else '>='} {limit:g}"
        if m is None:
            out.append(Check(name, artifact, device, metric, "absolute", limit, "inconclusive",
                             warning=f"no measurement of {artifact} on {device}"))
            continue
        out.append(Check(name, artifact, device, metric, "absolute", limit, **_absolute(metric, m, limit,
                                                                                         key == "max", cfg)))
    for key in ("max_regression", "max_drop"):
        share = bound.get(key)
        if share is None:
            continue
        name = f"{where}: {metric} {key.replace('_', ' ')} {share:.3g}" + (" (share)" if key == "max_regression"
                                                                             else " (points)")
        if not has_baseline:  # relative limits need --baseline: listed, never silently passed
            why = ("no --baseline given: failed, as --require-baseline asks" if require_baseline else
                   "no --baseline given: relative limit not checked")
            out.append(Check(name, artifact, device, metric, "relative", share, "fail" if require_baseline else
                             NOT_CHECKED, warning=why))
            continue
        if m is None or b is None:
            out.append(Check(name, artifact, device, metric, "relative", share, "inconclusive",
                             warning=f"{artifact} on {device} is missing from {'the baseline' if m else 'this run'}"))
            continue
        out.append(Check(name, artifact, device, metric, "relative", share, **_relative(metric, m, b, share, cfg,
                                                                                         rounds)))
    return out


def _geomean(checks: list[Check]) -> dict[str, float]:
    """Per metric, the geometric mean over artifacts of the candidate/baseline ratio (relative ratio checks)."""
    by: dict[str, list[float]] = {}
    for c in checks:
        if c.kind == "relative" and c.ratio and c.ratio > 0 and c.metric not in ("accuracy", "retention"):
            by.setdefault(c.metric, []).append(c.ratio)
    return {k: math.exp(sum(map(math.log, v)) / len(v)) for k, v in by.items()}


# -- freshness and comparability ----------------------------------------------------------------------------------
#: environment keys that must match for a baseline comparison to mean anything
FINGERPRINT_KEYS = ("cpu_model", "cpu_features", "runtimes", "threads")


def environment_mismatch(candidate: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """What differs between two reports' environment fingerprints (empty: comparable)."""
    a, b = candidate.get("environment") or {}, baseline.get("environment") or {}
    if not a or not b:
        return ["a report has no environment fingerprint (made before this version): re-run bench and report"]
    return [f"{k}: {b.get(k)!r} (baseline) vs {a.get(k)!r} (this run)"
            for k in FINGERPRINT_KEYS if a.get(k) != b.get(k)]
