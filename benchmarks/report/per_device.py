"""Per-device truth: whether each artifact keeps accuracy *on each device* (against the source model's outputs,
the host being just another device), and a recommendation per device that does not flip on noise. It reads the
report's measurement rows only (:class:`edgedistill.benchmarks.row.Row`).

An artifact is a host row of role ``artifact``: its bar (``parity_bar_name``, ``parity_bar``), file size, source
score and the kind's own verdict on the host (``keeps``) hold on every device. It keeps accuracy on a device when
its outputs there match the source model (an fp32 bar: every logit within ``core.tolerances.FP32_CRITERION``;
quantised: top-1 agreement at least the artifact's own bar) and, where the device scored it and the kind judges
scores per device, its score is within the tolerance of the source's. For each device the recommendation is the
fastest artifact that keeps accuracy there (and, for a file that carries its own tokenizer, tokenises the test
prompts exactly as the host does; on the host also the kind's ``keeps`` verdict, when given), by the one rule of
:func:`edgedistill.benchmarks.recommend.recommend` (ties within noise go to the smaller file). An estimated
device takes accuracy from the emulated or measured device of the same profile (else the host), and says so.
A quantised artifact whose outputs on a device agree with the same file's on the host less than the table's
``device vs host`` bar (:data:`edgedistill.core.tolerances.PARITY_BARS`) is flagged.
"""

from __future__ import annotations

from typing import Any

from edgedistill.benchmarks.recommend import Option, recommend
from edgedistill.benchmarks.row import HOSTS, Row
from edgedistill.core.tolerances import PARITY_BARS


def keeps_on_device(row: Row, source_score: float | None = None, tol: float = 0.0) -> tuple[bool | None, str]:
    """Does the file measured in ``row`` keep accuracy on its device, by the row's own bar and checks?
    ``(None, why)`` when the row cannot tell. With ``source_score`` None only the outputs are judged (parity with
    the source, and the tokenizer); else also the device's score against it, within ``tol``."""
    if row.source_agreement is None:
        return None, "no parity against the source on this device"
    bar = row.parity_bar
    if row.fp32_bar:
        ok, why = bool(row.source_fp32_ok), f"fp32 max |Δ| {row.source_max_abs_diff:.1e} vs the source"
    else:
        ok = bar is None or row.source_agreement >= bar
        why = f"top-1 agreement {row.source_agreement:.3f} with the source" + (f" (bar {bar})" if bar else "")
    texts, same = row.tokens_texts, row.tokens_identical
    if ok and texts is not None and same is not None and same < texts:
        ok, why = False, f"tokenises {texts - same} of {texts} test prompts unlike the host"
    if ok and source_score is not None and row.score is not None and row.score < source_score - tol:
        ok, why = False, f"accuracy {row.score:.4f} on this device < the source's {source_score:.4f} - {tol}"
    return ok, why


def per_device(rows: list[Row], tol: float | None) -> dict[str, Any]:
    """``{"keeps": {artifact: {device: {"ok", "why", "label"}}}, "recommended": {device: {...}}, "flags": [...]}``
    from the report's measurement rows. ``tol``: how far below its source's score an artifact's score on a device
    may fall; None: the kind judges its artifacts on a device by their outputs alone (an LLM's few device prompts
    make no score to hold it to)."""
    arts = {r.artifact: r for r in rows if r.on_host and r.role == "artifact"}
    measured = [r for r in rows if r.artifact in arts and r.p50_ms is not None]
    devices = list(dict.fromkeys(r.device for r in measured))
    profile = {d: next(r.profile for r in measured if r.device == d) for d in devices}
    keeps: dict[str, dict[str, Any]] = {a: {} for a in arts}
    for r in measured:
        ok, why = keeps_on_device(r, None if tol is None else arts[r.artifact].source_score, tol or 0.0)
        keeps[r.artifact][r.device] = {"ok": ok, "why": why, "label": r.label}
    for r in measured:  # estimated devices: accuracy from the same profile's emulated/measured row, else the host
        if r.label != "estimated":
            continue
        by = keeps[r.artifact]
        donor = next((d for d in devices if d != r.device and profile[d] == r.profile
                      and by.get(d, {}).get("ok") is not None), None)
        donor = donor or ("host" if by.get("host", {}).get("ok") is not None else None)
        if donor:
            k = by[donor]
            by[r.device] = {**k, "why": f"{k['why']} (accuracy from {donor}: estimates compute no outputs)",
                            "from": donor}
    recommended = {d: _recommend(d, [r for r in measured if r.device == d], keeps, arts) for d in devices}
    flags = []
    for a, by in keeps.items():
        good = sorted(d for d, k in by.items() if k["ok"] is True and "from" not in k)
        bad = sorted(d for d, k in by.items() if k["ok"] is False and "from" not in k)
        if good and bad:
            flags.append(f"{a} keeps accuracy on {', '.join(good)} but not on {', '.join(bad)} "
                         f"({'; '.join(by[d]['why'] for d in bad)})")
    return {"keeps": keeps, "recommended": recommended, "flags": flags + _unlike_host(measured, arts)}


def _unlike_host(rows: list[Row], arts: dict[str, Row]) -> list[str]:
    """Quantised artifacts (those held to an agreement bar) whose outputs on another device agree with the same
    file's on the host less than the table's ``device vs host`` bar (int8 rounding differs by ISA)."""
    bar = PARITY_BARS["device vs host"].floor or 0.0
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:
        key = (r.artifact, r.device)
        if arts[r.artifact].parity_bar is None or r.host_agreement is None or key in seen:
            continue
        seen.add(key)
        if r.host_agreement < bar:
            out.append(f"{r.artifact} on {r.device} agrees with the host's outputs on {r.host_agreement:.3f} "
                       f"of top-1 < {bar:g} (the device-vs-host bar: {PARITY_BARS['device vs host'].reason})")
    return out


def _recommend(device: str, rows: list[Row], keeps: dict[str, dict[str, Any]], arts: dict[str, Row]
               ) -> dict[str, Any]:
    t = min((r.threads for r in rows if r.threads is not None), default=1)
    cands = [r for r in rows if r.threads == t]
    label = next((r.label for r in cands), None)

    def kept(name: str) -> bool:
        on_host = device not in HOSTS or arts[name].keeps is not False
        return bool(keeps[name].get(device, {}).get("ok")) and on_host

    rec = recommend([Option(r.artifact, r.p50_ms, r.samples_ms, arts[r.artifact].size_bytes, kept(r.artifact),
                            r.score) for r in cands],
                    device, basis=f"{label} time")
    if rec.name is None:
        return {"artifact": None, "reason": rec.reason}
    best = rec.timing[rec.name]
    return {"artifact": rec.name, "reason": rec.reason, "threads": t, "p50_ms": best.p50,
            "interval": [best.low, best.high], "tied": list(rec.tied), "decided_by": f"{label} latency",
            "label": label}
