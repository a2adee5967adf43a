"""The gate's verdict in the formats CI reads: JUnit XML (one test case per check), Markdown (for
``$GITHUB_STEP_SUMMARY`` or a pull-request comment), GitHub Actions ``::error`` annotations and JSON. Exit codes:
0 pass, 1 fail, 2 bad input, 3 inconclusive. Each output says where the budgets came from and lists the relative
limits not checked (JUnit: skipped), expired waivers and waivers that match no check."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from edgedistill.benchmarks.gate import NOT_CHECKED, GateResult

_ICON = {"pass": "✅", "fail": "❌", "inconclusive": "❔", "waived": "⚠️", NOT_CHECKED: "➖", "bad input": "⛔"}


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _interval(c: dict[str, Any]) -> str:
    return "–" if not c.get("interval") else f"[{_num(c['interval'][0])}, {_num(c['interval'][1])}]"


def source_line(result: GateResult) -> str:
    """Where the budgets came from, in one line (empty when the caller did not say)."""
    src = result.budgets_source
    if not src:
        return ""
    line = f"budgets from {src['path']} (sha256 {src['sha256'][:16]}…, {src['kind']})"
    return line + (f"; overridden on the command line: {src['overrides']}" if src.get("overrides") else "")


def notes(result: GateResult) -> list[str]:
    """The lines every output lists beside the checks: relative limits not checked, expired and unmatched
    waivers."""
    return ([f"not checked: {c.name} ({c.warning})" for c in result.not_checked]
            + [f"expired waiver: {w}" for w in result.expired_waivers]
            + [f"unmatched waiver: {w}" for w in result.unmatched_waivers])


def junit(result: GateResult, suite: str = "edgedistill gate") -> str:
    d = result.to_dict()
    checks = d["checks"] + [{"name": f, "verdict": "fail", "metric": "budget"} for f in d["failures"]]
    fails = sum(c["verdict"] == "fail" for c in checks)
    skipped = sum(c["verdict"] in ("inconclusive", NOT_CHECKED) for c in checks)
    root = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(fails), skipped=str(skipped))
    if src := result.budgets_source:
        props = ET.SubElement(root, "properties")
        for key in ("path", "sha256", "kind"):
            ET.SubElement(props, "property", name=f"budgets_{key}", value=str(src[key]))
    for c in checks:
        case = ET.SubElement(root, "testcase", classname=f"gate.{c.get('metric', 'check')}", name=c["name"])
        detail = (f"value {_num(c.get('value'))}, baseline {_num(c.get('baseline'))}, ratio {_num(c.get('ratio'))}, "
                  f"interval {_interval(c)}, threshold {_num(c.get('threshold'))}; {c.get('method') or ''}")
        if c["verdict"] == "fail":
            ET.SubElement(case, "failure", message=c["name"]).text = detail
        elif c["verdict"] == "inconclusive":
            why = c.get("warning") or "the interval straddles the limit"
            ET.SubElement(case, "skipped", message=f"inconclusive: {why}")
        elif c["verdict"] == NOT_CHECKED:
            ET.SubElement(case, "skipped", message=f"not checked: {c.get('warning')}")
        elif c["verdict"] == "waived":
            ET.SubElement(case, "system-out").text = f"waived: {c.get('waived')}; {detail}"
        else:
            ET.SubElement(case, "system-out").text = detail
    if lines := [x for x in (source_line(result), *notes(result)) if x]:
        ET.SubElement(root, "system-out").text = "\n".join(lines)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def markdown(result: GateResult, title: str = "edgedistill gate") -> str:
    d = result.to_dict()
    lines = [f"### {title}: {_ICON.get(d['verdict'], '')} {d['verdict']}", ""]
    if src := source_line(result):
        lines += [src[0].upper() + src[1:] + ".", ""]
    if d["problems"]:
        lines += [f"- ⛔ {p}" for p in d["problems"]] + [""]
    if d["failures"]:
        lines += [f"- ❌ {f}" for f in d["failures"]] + [""]
    if d["checks"]:
        lines += ["| | check | value | baseline | ratio / Δ | interval | note |", "|---|---|---|---|---|---|---|"]
        for c in d["checks"]:
            note = c.get("waived") and f"waived: {c['waived']}" or c.get("warning") or c.get("method") or ""
            lines.append(f"| {_ICON.get(c['verdict'], '')} | {c['name']} | {_num(c.get('value'))} | "
                         f"{_num(c.get('baseline'))} | {_num(c.get('ratio'))} | {_interval(c)} | {note} |")
    if extra := [n for n in notes(result) if not n.startswith("not checked: ")]:  # not-checked rows are above
        lines += [""] + [f"- ⚠️ {n}" for n in extra]
    if result.not_checked:
        lines += ["", f"➖ {len(result.not_checked)} relative limit(s) not checked: no --baseline given."]
    if d["geomean"]:
        lines += ["", "Geometric mean of candidate / baseline over artifacts: " + ", ".join(
            f"{k} ×{v:.3f}" for k, v in d["geomean"].items())]
    return "\n".join(lines) + "\n"


def _command_data(text: str) -> str:
    """Escape a workflow command's message as the GitHub Actions runner reads it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def annotations(result: GateResult, title: str = "edgedistill gate") -> list[str]:
    """GitHub Actions ``::error`` workflow commands, one per failed check or failure (a red annotation on the
    run and the pull request); empty when nothing failed."""
    d = result.to_dict()
    lines = [f"{c['name']}: ratio {_num(c.get('ratio'))}, value {_num(c.get('value'))}, interval {_interval(c)}"
             for c in d["checks"] if c["verdict"] == "fail"] + list(d["failures"])
    return [f"::error title={_command_data(title).replace(',', '%2C').replace(':', '%3A')}::{_command_data(x)}"
            for x in lines]


def as_json(result: GateResult, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({**result.to_dict(), **(extra or {})}, indent=2) + "\n"
