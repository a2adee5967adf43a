"""The gate's verdict in the formats CI reads: JUnit XML (one test case per check), Markdown (for
``$GITHUB_STEP_SUMMARY`` or a pull-request comment) and JSON. Exit codes: 0 pass, 1 fail, 2 bad input,
3 inconclusive."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from edgedistill.benchmarks.gate import GateResult

EXIT_CODES = {"pass": 0, "fail": 1, "bad input": 2, "inconclusive": 3}
_ICON = {"pass": "✅", "fail": "❌", "inconclusive": "❔", "waived": "⚠️"}


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _interval(c: dict[str, Any]) -> str:
    return "–" if not c.get("interval") else f"[{_num(c['interval'][0])}, {_num(c['interval'][1])}]"


def junit(result: GateResult, suite: str = "edgedistill gate") -> str:
    d = result.to_dict()
    checks = d["checks"] + [{"name": f, "verdict": "fail", "metric": "budget"} for f in d["failures"]]
    fails = sum(c["verdict"] == "fail" for c in checks)
    skipped = sum(c["verdict"] == "inconclusive" for c in checks)
    root = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(fails), skipped=str(skipped))
    for c in checks:
        case = ET.SubElement(root, "testcase", classname=f"gate.{c.get('metric', 'check')}", name=c["name"])
        detail = (f"value {_num(c.get('value'))}, baseline {_num(c.get('baseline'))}, ratio {_num(c.get('ratio'))}, "
                  f"interval {_interval(c)}, threshold {_num(c.get('threshold'))}; {c.get('method') or ''}")
        if c["verdict"] == "fail":
            ET.SubElement(case, "failure", message=c["name"]).text = detail
        elif c["verdict"] == "inconclusive":
            why = c.get("warning") or "the interval straddles the limit"
            ET.SubElement(case, "skipped", message=f"inconclusive: {why}")
        elif c["verdict"] == "waived":
            ET.SubElement(case, "system-out").text = f"waived: {c.get('waived')}; {detail}"
        else:
            ET.SubElement(case, "system-out").text = detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def markdown(result: GateResult, title: str = "edgedistill gate") -> str:
    d = result.to_dict()
    lines = [f"### {title}: {_ICON.get(d['verdict'], '')} {d['verdict']}", ""]
    if d["failures"]:
        lines += [f"- ❌ {f}" for f in d["failures"]] + [""]
    if d["checks"]:
        lines += ["| | check | value | baseline | ratio / Δ | interval | note |", "|---|---|---|---|---|---|---|"]
        for c in d["checks"]:
            note = c.get("waived") and f"waived: {c['waived']}" or c.get("warning") or c.get("method") or ""
            lines.append(f"| {_ICON.get(c['verdict'], '')} | {c['name']} | {_num(c.get('value'))} | "
                         f"{_num(c.get('baseline'))} | {_num(c.get('ratio'))} | {_interval(c)} | {note} |")
    if d["geomean"]:
        lines += ["", "Geometric mean of candidate / baseline over artifacts: " + ", ".join(
            f"{k} ×{v:.3f}" for k, v in d["geomean"].items())]
    return "\n".join(lines) + "\n"


def as_json(result: GateResult, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({**result.to_dict(), **(extra or {})}, indent=2) + "\n"
