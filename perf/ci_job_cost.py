"""What a pull request's gate job costs on this machine (#26 item 3), for the demo recipe (``vit-to-mobilenet``):
the shipped GitHub workflow's own ``run:`` steps, run in order as ``tests/test_ci_workflow.py`` runs them (the
same stand-ins for hosted actions), on a throw-away repository whose base commit holds the demo recipe, with the
machine's warm ``~/.cache/edgedistill`` (the venv and caches restored, as the workflow's cache step would):

1. ``pr-docs`` first: the base run is not cached yet, so the job builds it; the head starts from it;
2. ``pr-docs`` again, base run cached: the head and base stages are all skipped; only the gate measures;
3. ``pr-recipe``, base run cached: the pull request changes the students' learning rate, so its head re-runs
   distill, export and bench.

    .venv/bin/python perf/ci_job_cost.py      # ~40 min on the 2-core VM; prints a Markdown table
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the workflow runner of tests/test_ci_workflow.py

from edgedistill.toolchain.recipe import builtin_text  # noqa: E402
from tests.test_ci_workflow import WORKFLOW, _git, _run_job  # noqa: E402


def origin_repo(root: Path) -> Path:
    repo = root / "origin"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    recipe = yaml.safe_load(builtin_text("vit-to-mobilenet"))
    (repo / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (repo / "Makefile").write_text(f"setup:\n\tln -sfn {sys.prefix} .venv\n")
    (repo / ".gitignore").write_text(".venv\nruns/\ngate.*\n")
    (repo / "README.md").write_text("a model\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    _git(repo, "checkout", "-q", "-b", "pr-docs")
    (repo / "README.md").write_text("a model, now documented\n")
    _git(repo, "commit", "-q", "-am", "docs only")
    _git(repo, "checkout", "-q", "-b", "pr-recipe", "main")
    recipe["distill"]["train"]["lr"] = recipe["distill"]["train"]["lr"] * 0.8
    (repo / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    _git(repo, "commit", "-q", "-am", "students: lower learning rate")
    _git(repo, "checkout", "-q", "main")
    return repo


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="ci-cost-"))
    wf = yaml.safe_load(WORKFLOW.read_text())
    origin, cache = origin_repo(root), {}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    print(f"machine: {model}, {os.cpu_count()} cores; workflow {WORKFLOW.name}; recipe vit-to-mobilenet\n")
    print("| job | set-up | base run | head run | gate | total | gate exit | head stages skipped |")
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for label, branch in (("docs-only PR, base not cached", "pr-docs"), ("docs-only PR, base cached", "pr-docs"),
                          ("recipe PR (students' lr), base cached", "pr-recipe")):
        t0 = time.perf_counter()
        job = _run_job(wf, origin, branch, root / f"job-{len(cache)}-{branch}-{time.time_ns()}", cache,
                       timeout_s=7200)
        total = time.perf_counter() - t0
        steps = job["steps"]
        secs = [f"{s['seconds']:.0f} s" for s in steps] + ["–"] * (4 - len(steps))
        skipped = sorted({ln.split(":")[0].strip() for ln in steps[2]["err"].splitlines()
                          if "unchanged, skipped" in ln}) if len(steps) > 2 else []
        print(f"| {label} | {' | '.join(secs)} | {total:.0f} s | {steps[-1]['rc']} | {', '.join(skipped) or '–'} |",
              flush=True)
        if steps[-1]["rc"] not in (0, 1):
            print(steps[-1]["err"][-3000:], file=sys.stderr)


if __name__ == "__main__":
    main()
