"""Per-device truth: whether each artifact keeps accuracy *on each device* (against the source model's outputs,
the host being just another device), and a recommendation per device that does not flip on noise.

An artifact keeps accuracy on a device when its outputs there match the source model (fp32: every logit within
``core.tolerances.FP32_CRITERION``; quantised: top-1 agreement at least the artifact's own bar) and, where the device
scored it, its accuracy is within the tolerance of the source's. For each device the recommendation is the fastest
artifact that keeps accuracy there (and, for a file that carries its own tokenizer, tokenises the test prompts
exactly as the host does; on the host also the report's own ``keeps_accuracy`` verdict, when given), by the one
rule of :func:`edgedistill.benchmarks.recommend.recommend` (ties within noise go to the smaller file). An estimated
device takes accuracy from the emulated or measured device of the same profile (else the host), and says so.
A quantised artifact whose outputs on a device agree with the same file's on the host less than the table's
``device vs host`` bar (:data:`edgedistill.core.tolerances.PARITY_BARS`) is flagged.
"""

from __future__ import annotations

from typing import Any

from edgedistill.benchmarks.recommend import Option, recommend
from edgedistill.core.tolerances import PARITY_BARS

HOSTS = ("host", "local")


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


def per_device(report: dict[str, Any], artifacts: dict[str, dict[str, Any]], tol: float) -> dict[str, Any]:
    """``{"keeps": {artifact: {device: {"ok", "why"}}}, "recommended": {device: {...}}, "flags": [...]}``.

    ``artifacts`` maps each artifact name to ``{"fp32": bool, "min_top1": float | None, "size_bytes": int,
    "source_accuracy": float | None, "keeps_accuracy": bool | None}`` (the kind's report knows these;
    ``keeps_accuracy``: its own verdict on the host's measurement, which the host's recommendation also needs)."""
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
    return {"keeps": keeps, "recommended": recommended, "flags": flags + _unlike_host(rows, artifacts)}


def _unlike_host(rows: list[dict[str, Any]], artifacts: dict[str, dict[str, Any]]) -> list[str]:
    """Quantised artifacts (those held to an agreement bar) whose outputs on another device agree with the same
    file's on the host less than the table's ``device vs host`` bar (int8 rounding differs by ISA)."""
    bar = PARITY_BARS["device vs host"].floor or 0.0
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        p, key = r.get("parity_vs_host") or {}, (r["model"], r["device"])
        if artifacts[r["model"]].get("min_top1") is None or "top1_agreement" not in p or key in seen:
            continue
        seen.add(key)
        if p["top1_agreement"] < bar:
            out.append(f"{r['model']} on {r['device']} agrees with the host's outputs on {p['top1_agreement']:.3f} "
                       f"of top-1 < {bar:g} (the device-vs-host bar: {PARITY_BARS['device vs host'].reason})")
    return out


def _profile(report: dict[str, Any], device: str) -> str | None:
    return next((r.get("profile") for r in report.get("devices", []) if r.get("device") == device), None)


def _recommend(device: str, rows: list[dict[str, Any]], keeps: dict[str, dict[str, Any]],
               artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t = min((r["threads"] for r in rows), default=1)
    cands = [r for r in rows if r["threads"] == t]
    label = next((r.get("label") for r in cands), None)

    def kept(name: str) -> bool:
        on_host = device not in HOSTS or artifacts[name].get("keeps_accuracy") is not False
        return bool(keeps[name].get(device, {}).get("ok")) and on_host

    rec = recommend([Option(r["model"], r["p50_ms"], r.get("samples_ms"), artifacts[r["model"]].get("size_bytes"),
                            kept(r["model"]), r.get("accuracy")) for r in cands],
                    device, basis=f"{label} time")
    if rec.name is None:
        return {"artifact": None, "reason": rec.reason}
    best = rec.timing[rec.name]
    return {"artifact": rec.name, "reason": rec.reason, "threads": t, "p50_ms": best.p50,
            "interval": [best.low, best.high], "tied": list(rec.tied), "decided_by": f"{label} latency",
            "label": label}
