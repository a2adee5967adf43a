"""The shipped GitHub Actions workflow (``examples/ci/github-actions.yml``) run as CI would: its own ``run:`` steps,
in order, through the shell the workflow names (``bash --noprofile --norc -eo pipefail``, GitHub's template for
``shell: bash``), with the workflow's env, on a throw-away git repository holding a tiny recipe. Its base commit is
``main``; one pull request changes nothing measurable (a docs file), the other swaps the student for a much larger
network, so the head's exported artifact really does more work. The gate must exit 0 on the first and 1 on the
second, and both jobs must leave the files they publish: the step summary, JUnit, JSON, report.html and (when
failed) ``::error::`` annotations.

What cannot run here, and how each is stood in for:

- ``actions/checkout@v4``: the test clones the throw-away repository over ``file://`` (so ``origin`` exists for
  the workflow's ``git fetch``) and checks out the pull request's head, detached, as the action does.
- ``actions/setup-python@v5``: this test's own interpreter is the one the venv was made with.
- ``actions/cache@v4`` for ``.venv`` and ``~/.cache/edgedistill``: the throw-away repository's ``make setup`` links
  ``.venv`` to this project's already-built venv (the real target creates it); the edgedistill cache is the test
  session's private ``$EDGEDISTILL_CACHE`` (conftest), shared by both jobs as a cache hit would be.
- ``actions/cache@v4`` for repository paths (``runs/base``, keyed on the base commit): saved after the first job
  and restored before the second, which has the same base commit, as a cache hit would.
- ``actions/upload-artifact@v4``: the test checks that every path it would upload exists.
- ``${{ ... }}`` expressions: replaced by the values the runner gives for a pull request into ``main``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "ci" / "github-actions.yml"
STOOD_IN = {"actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"}
GIT = {"GIT_AUTHOR_NAME": "ci test", "GIT_AUTHOR_EMAIL": "ci@example.invalid", "GIT_COMMITTER_NAME": "ci test",
       "GIT_COMMITTER_EMAIL": "ci@example.invalid"}


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT})
    assert res.returncode == 0, f"git {' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


def _recipe(student: str) -> dict:
    """The tiny vision recipe with a gate that only a same-runner comparison can judge (a relative limit)."""
    return tiny_recipe(student={"name": student},
                       export={"formats": ["onnx"], "onnx": {"variants": ["fp32"]}, "teacher": False},
                       bench={"warmup": 5, "runs": 40, "threads": [1]},
                       gate={"budgets": [{"artifacts": "student-fp32", "p50_ms": {"max_regression": "50%"}}],
                             "rounds": 10})


def _origin(root: Path) -> Path:
    """``main`` (the base) and two pull-request branches: ``pr-docs`` (nothing measurable) and ``pr-slow``."""
    repo = root / "origin"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "recipe.yaml").write_text(yaml.safe_dump(_recipe("mobilenetv3_small_050")))
    (repo / "Makefile").write_text(f"setup:\n\tln -sfn {sys.prefix} .venv\n")  # stands in for the real install
    (repo / ".gitignore").write_text(".venv\nruns/\ngate.*\n")
    (repo / "README.md").write_text("a model\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    _git(repo, "checkout", "-q", "-b", "pr-docs")
    (repo / "README.md").write_text("a model, now documented\n")
    _git(repo, "commit", "-q", "-am", "docs only")
    _git(repo, "checkout", "-q", "-b", "pr-slow", "main")
    (repo / "recipe.yaml").write_text(yaml.safe_dump(_recipe("resnet18")))  # ~20x the multiply-adds at 32x32
    _git(repo, "commit", "-q", "-am", "a larger student")
    _git(repo, "checkout", "-q", "main")
    return repo


def _expand(text: str, context: dict[str, str]) -> str:
    """``${{ expr }}`` as the runner would expand it; an expression the test does not stand in for fails."""
    def one(m: re.Match) -> str:
        assert m.group(1) in context, f"no stand-in for the expression ${{{{ {m.group(1)} }}}}"
        return context[m.group(1)]
    return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", one, text)


def _run_job(wf: dict, origin: Path, branch: str, root: Path, cache: dict[str, Path], timeout_s: float = 600
             ) -> dict:
    """One job of the workflow for a pull request from ``branch`` into ``main``: every step's exit code, output
    and wall time, the workspace, the step-summary file (also used by ``perf/ci_job_cost.py``)."""
    ws, temp, summary = root / "workspace", root / "runner-temp", root / "step-summary.md"
    temp.mkdir(parents=True)
    summary.write_text("")
    _git(root, "clone", "-q", f"file://{origin}", str(ws))  # actions/checkout
    _git(ws, "checkout", "-q", "--detach", f"origin/{branch}")
    context = {"github.base_ref": "main", "github.workspace": str(ws)}
    (job,) = wf["jobs"].values()
    env = {**os.environ, "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(ws),
           "RUNNER_TEMP": str(temp), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_BASE_REF": "main"}
    env |= {k: _expand(str(v), context) for k, v in {**wf.get("env", {}), **job.get("env", {})}.items()}
    steps, uploads = [], []
    for step in job["steps"]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            assert action in STOOD_IN, f"{step['uses']}: add a stand-in for it (and list it in the docstring)"
            paths = [p.strip() for p in str((step.get("with") or {}).get("path", "")).splitlines() if p.strip()]
            if action == "actions/cache":  # repository paths: restore what an earlier job saved under them
                for p in paths:
                    if not p.startswith(("~", ".venv")) and p in cache:
                        shutil.copytree(cache[p], ws / p)
            if action == "actions/upload-artifact":
                uploads += paths
            continue
        script = temp / f"step-{len(steps)}.sh"
        script.write_text(_expand(step["run"], context))
        t0 = time.perf_counter()
        res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=ws,
                             env={**env, **{k: _expand(str(v), context) for k, v in step.get("env", {}).items()}},
                             capture_output=True, text=True, timeout=timeout_s)
        steps.append({"name": step.get("name", step["run"][:40]), "rc": res.returncode,
                      "out": res.stdout, "err": res.stderr, "seconds": time.perf_counter() - t0})
        if res.returncode != 0:  # the job stops at the first failed step (the upload step runs: if: always())
            break
    for step in job["steps"]:  # actions/cache saves its repository paths after the job
        if step.get("uses", "").startswith("actions/cache@"):
            for p in str(step["with"]["path"]).split():
                if not p.startswith(("~", ".venv")) and (ws / p).exists():
                    cache[p] = root / "cache" / p
                    shutil.copytree(ws / p, cache[p])
    return {"steps": steps, "ws": ws, "summary": summary.read_text(), "uploads": uploads}


@pytest.mark.slow
def test_the_github_workflow_gates_a_slowdown_and_passes_an_unchanged_head(tmp_path: Path) -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert wf["defaults"]["run"]["shell"] == "bash"  # the shell the steps are run with here
    origin = _origin(tmp_path)
    cache: dict[str, Path] = {}
    jobs = {b: _run_job(wf, origin, b, tmp_path / b, cache) for b in ("pr-docs", "pr-slow")}
    for branch, want in (("pr-docs", 0), ("pr-slow", 1)):
        job = jobs[branch]
        *setup, gate = job["steps"]
        assert [s["rc"] for s in setup] == [0] * len(setup) and len(setup) == 3, [
            (s["name"], s["rc"], s["err"][-2000:]) for s in setup]
        assert gate["name"].startswith("Gate") and gate["rc"] == want, gate["out"][-3000:] + gate["err"][-3000:]
        ws = job["ws"]
        for p in job["uploads"]:  # what actions/upload-artifact would publish
            assert (ws / p).is_file(), p
        suite = ET.parse(ws / "gate.xml").getroot()
        assert suite.get("tests") == "1" and suite.get("failures") == str(want)
        verdict = "❌ fail" if want else "✅ pass"
        assert f"edgedistill gate — tiny: {verdict}" in job["summary"]
        assert "the base run's saved recipe (same-runner mode)" in job["summary"]
        assert re.search(r"interleaved rounds \((10|20)\)", job["summary"])  # 20: re-measured once
        errors = [ln for ln in gate["out"].splitlines() if ln.startswith("::error ")]
        assert len(errors) == want, gate["out"]
    assert "student-fp32 @ host: p50_ms max regression 0.5" in errors[0]  # the slowed job's annotation
    base, head = 1, 2  # step indices
    assert "distill: unchanged, skipped" not in jobs["pr-docs"]["steps"][base]["err"]  # built the base run
    assert "distill: unchanged, skipped" in jobs["pr-slow"]["steps"][base]["err"]  # reused the cached base run
    # the head starts from the base run: a docs-only PR re-measures only; a recipe change re-distills
    docs_head = jobs["pr-docs"]["steps"][head]["err"]
    assert "distill: unchanged, skipped" in docs_head and "bench: unchanged, skipped" in docs_head, docs_head[-2000:]
    assert "distill: unchanged, skipped" not in jobs["pr-slow"]["steps"][head]["err"]


def _edgedistill_commands(lines: list[str], workspace_var: str) -> list[str]:
    text = " ".join(" ".join(lines).replace(workspace_var, "$WS").split())
    return re.findall(r'edgedistill"? ((?:run|gate) [^)]*?)(?=$| \.venv| git | rm | \(|\))', text)


def test_the_gitlab_job_runs_the_same_commands() -> None:
    """``examples/ci/gitlab-ci.yml`` cannot run here (no GitLab runner); it gives edgedistill the same commands and
    publishes the same files as the GitHub workflow that the test above runs."""
    (job,) = yaml.safe_load((WORKFLOW.parent / "gitlab-ci.yml").read_text()).values()
    wf = yaml.safe_load(WORKFLOW.read_text())
    (gh,) = wf["jobs"].values()
    gh_cmds = _edgedistill_commands([s["run"] for s in gh["steps"] if "run" in s], "$GITHUB_WORKSPACE")
    assert len(gh_cmds) == 3 and gh_cmds[-1].startswith("gate --out runs/head --base-out runs/base"), gh_cmds
    assert gh_cmds[0].endswith("runs/base\"") and gh_cmds[1].endswith("runs/head"), gh_cmds  # base first: head seeds
    assert _edgedistill_commands(job["script"], "$CI_PROJECT_DIR") == gh_cmds
    assert job["variables"]["RECIPE"] == wf["env"]["RECIPE"]
    (upload,) = [s for s in gh["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert sorted(job["artifacts"]["paths"]) == sorted(upload["with"]["path"].split())
    assert job["artifacts"]["reports"]["junit"] == "gate.xml" and job["artifacts"]["when"] == "always"
    assert [c["paths"] for c in job["cache"]] == [[".venv", ".cache/edgedistill"], ["runs/base"]]
