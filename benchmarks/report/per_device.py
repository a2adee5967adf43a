"""Per-device truth: whether each artifact keeps accuracy *on each device* (against the source model's outputs,
the host being just another device), and a recommendation per device that does not flip on noise.

An artifact keeps accuracy on a device when its outputs there match the source model (fp32: every logit within
``core.tolerances.FP32_CRITERION``; quantised: top-1 agreement at least the artifact's own bar) and, where the device
scored it, its accuracy is within the tolerance of the source's. For each device the recommendation is the fastest
artifact that keeps accuracy there (and, for a file that carries its own tokenizer, tokenises the test prompts
exactly as the host does), by the device's own latency with a bootstrap interval; artifacts whose
intervals overlap the fastest one's, or whose p50 is within :data:`TIE_FLOOR` of it, are *tied within noise*, and
among them the smallest file (then the most accurate) wins. An estimated device takes accuracy from the emulated
or measured device of the same profile (else the host), and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def keeps_on_device(row: dict[str, Any], artifact: dict[str, Any], source_accuracy: float | None,
                    tol: float) -> tuple[bool | None, str]:
    """Does ``artifact`` keep accuracy in device ``row``? ``(None, why)`` when the row cannot tell. With
    ``source_accuracy`` None only the outputs are judged (parity with the source, and the tokenizer)."""
    p = row.get("parity_vs_source")
    if not p or "top1_agreement" not in p:
        return None, "no parity against the source on this device"
    bar = artifact.get("min_top1")
    if artifact.get("fp32"):
        ok, why = p.get("fp32_ok", False), f"fp32 max |Δ| {p['max_abs_diff']:.1e} vs the source"
    else:
        ok = bar is None or p["top1_agreement"] >= bar
        why = f"top-1 agreement {p['top1_agreement']:.3f} with the source" + (f" (bar {bar})" if bar else "")
    tok = row.get("tokens_vs_host")
    if ok and tok and tok["identical"] < tok["texts"]:
        ok, why = False, f"tokenises {tok['texts'] - tok['identical']} of {tok['texts']} test prompts unlike the host"
    acc = row.get("accuracy")  # vision: the device's own test accuracy (LLM rows are judged by parity alone)
    if ok and source_accuracy is not None and acc is not None and acc < source_accuracy - tol:
        ok, why = False, f"accuracy {acc:.4f} on this device < the source's {source_accuracy:.4f} - {tol}"
    return ok, why


def latency(row: dict[str, Any]) -> tuple[float, float, float, str]:
    """``(p50, low, high, how)`` of a device row: a bootstrap interval, a few runs' range, or the point value."""
    s = row.get("samples_ms")
    if s and len(s) >= MIN_SAMPLES:
        est, lo, hi = stats.percentile_interval(s, 50)
        return est, lo, hi, f"p50 with a 95% bootstrap interval over {len(s)} runs"
    if s and len(s) >= 2:
        est, lo, hi, cover = stats.median_range_interval(s)
        return est, lo, hi, f"median of {len(s)} runs with their range (a {cover:.0%} interval)"
    return row["p50_ms"], row["p50_ms"], row["p50_ms"], "point p50 (no samples for an interval)"


def per_device(report: dict[str, Any], artifacts: dict[str, dict[str, Any]], tol: float) -> dict[str, Any]:
    """``{"keeps": {artifact: {device: {"ok", "why"}}}, "recommended": {device: {...}}, "flags": [...]}``.

    ``artifacts`` maps each artifact name to ``{"fp32": bool, "min_top1": float | None, "size_bytes": int,
    "source_accuracy": float | None}`` (the kind's report knows these)."""
    rows = [r for r in report.get("devices", []) if r.get("model") in artifacts and r.get("p50_ms") is not None]
    devices = list(dict.fromkeys(r["device"] for r in rows))
    keeps: dict[str, dict[str, Any]] = {a: {} for a in artifacts}
    for r in rows:
        a = artifacts[r["model"]]
        ok, why = keeps_on_device(r, a, a.get("source_accuracy"), tol)
        keeps[r["model"]][r["device"]] = {"ok": ok, "why": why, "label": r.get("label")}
    for r in rows:  # estimated devices: accuracy from the same profile's emulated/measured row, else the host
        if r.get("label") != "estimated":
            continue
        donor = next((d for d in devices if d != r["device"] and _profile(report, d) == r.get("profile")
                      and keeps[r["model"]].get(d, {}).get("ok") is not None), None)
        donor = donor or ("host" if keeps[r["model"]].get("host", {}).get("ok") is not None else None)
        if donor:
            k = keeps[r["model"]][donor]
            keeps[r["model"]][r["device"]] = {**k, "why": f"{k['why']} (accuracy from {donor}: estimates compute "
                                                             "no outputs)", "from": donor}
    recommended = {d: _recommend(d, [r for r in rows if r["device"] == d], keeps, artifacts) for d in devices}
    flags = []
    for a, by in keeps.items():
        good = sorted(d for d, k in by.items() if k["ok"] is True and "from" not in k)
        bad = sorted(d for d, k in by.items() if k["ok"] is False and "from" not in k)
        if good and bad:
            flags.append(f"{a} keeps accuracy on {', '.join(good)} but not on {', '.join(bad)} "
                         f"({'; '.join(by[d]['why'] for d in bad)})")
    return {"keeps": keeps, "recommended": recommended, "flags": flags}


def _profile(report: dict[str, Any], device: str) -> str | None:
    return next((r.get("profile") for r in report.get("devices", []) if r.get("device") == device), None)


Timed = tuple[dict[str, Any], float, float, float, str]


def fastest_within_noise(rows: list[dict[str, Any]], size: Callable[[dict[str, Any]], int | None]
                         ) -> tuple[Timed, list[Timed]]:
    """The row to pick among ``rows`` (non-empty, each with ``p50_ms`` and maybe ``samples_ms``) by latency:
    ``(best, tied)``, each entry ``(row, p50, low, high, how)``. Rows whose interval reaches down to the fastest
    one's upper end, or whose p50 is within :data:`TIE_FLOOR` of the fastest one's, are tied within noise, and among
    them the smallest file (``size(row)``), then the most accurate, wins, so two bench runs agree."""
    timed = [(r, *latency(r)) for r in rows]
    fastest = min(timed, key=lambda x: x[1])
    tied = [x for x in timed if x[2] <= fastest[3] or x[1] <= fastest[1] * (1 + TIE_FLOOR)]
    best = min(tied, key=lambda x: (size(x[0]) or 0, -(x[0].get("accuracy") or 0)))
    return best, tied


def _recommend(device: str, rows: list[dict[str, Any]], keeps: dict[str, dict[str, Any]],
               artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t = min((r["threads"] for r in rows), default=1)
    cands = [r for r in rows if r["threads"] == t and keeps[r["model"]].get(device, {}).get("ok")]
    if not cands:
        return {"artifact": None, "reason": f"no artifact keeps accuracy on {device}"}
    best, tied = fastest_within_noise(cands, lambda r: artifacts[r["model"]].get("size_bytes"))
    r, est, lo, hi, how = best
    label = r.get("label")
    reason = (f"fastest that keeps accuracy on {device} ({label} time, {how}: {est:.4g} ms [{lo:.4g}, {hi:.4g}])"
              if len(tied) == 1 else
              f"tied within noise with {', '.join(x[0]['model'] for x in tied if x is not best)} on {device} "
              f"({label} time, {how}); the smallest file wins")
    return {"artifact": r["model"], "reason": reason, "threads": t, "p50_ms": est, "interval": [lo, hi],
            "tied": [x[0]["model"] for x in tied], "decided_by": f"{label} latency", "label": label}
