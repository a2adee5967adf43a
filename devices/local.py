"""What every transport shares to start the agent: the job (:class:`AgentJob`), the child process that runs it
(:func:`run_agent_process`; :func:`run_local` in a fresh subprocess of this Python, so each memory figure is its own)
and the parsing of its one JSON document. The ``local`` transport itself is in :mod:`edgedistill.devices.constrained`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.core.procs import dies_with_us

#: the agent's module: every transport starts ``python -m AGENT_MODULE`` (from the bundle on remote devices)
AGENT_MODULE = "edgedistill.devices.agent"


class AgentError(RuntimeError):
    """The agent failed or printed no JSON; the message carries its reason."""


@dataclass(frozen=True)
class AgentJob:
    """One measurement: an artifact at a thread count, optionally scored on an eval set."""

    artifact: Path
    threads: int
    eval_npz: Path | None = None
    runtime: str | None = None
    warmup: int = 20
    runs: int = 200
    score: bool = False
    logits_out: Path | None = None
    #: further agent options that name no files (language models: --pp/--tg/--reps/--generate/...)
    options: tuple[str, ...] = ()
    #: seconds before the agent is killed and the job reported failed (None: the transport's default)
    timeout_s: float | None = None

    def argv(self) -> list[str]:
        a = ["--artifact", str(self.artifact), "--threads", str(self.threads),
             "--warmup", str(self.warmup), "--runs", str(self.runs)]
        if self.runtime:
            a += ["--runtime", self.runtime]
        if self.eval_npz:
            a += ["--eval", str(self.eval_npz)]
        if self.score:
            a.append("--score")
        if self.logits_out:
            a += ["--logits-out", str(self.logits_out)]
        return [*a, *self.options]


def parse_agent_output(stdout: str, stderr: str = "") -> dict[str, Any]:
    """The agent's JSON document is its last stdout line; anything else is an :class:`AgentError`."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise AgentError(f"agent printed no result: {tail}")
    doc = json.loads(lines[-1])
    if "error" in doc:
        raise AgentError(doc["error"])
    return doc


def run_agent_process(cmd: list[str], job: AgentJob, timeout_s: float = 600, env: dict[str, str] | None = None,
                      preexec_fn: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run an agent command line (no shell) and parse its document; timeouts become :class:`AgentError`. The
    agent dies with this process (a killed run leaves no agent running); a crash is one line naming the file."""
    from edgedistill.runtimes.child import exit_description, telling_line

    full_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", GGML_NO_BACKTRACE="1")
    try:
        proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, timeout=timeout_s, env=full_env,
                              check=False, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        raise AgentError(f"{job.artifact.name}: agent timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0 and not any(ln.startswith("{") for ln in proc.stdout.splitlines()):
        # a native crash (llama.cpp aborting on a bad file) or an interpreter that died before printing
        raise AgentError(f"{job.artifact}: the agent {exit_description(proc.returncode)} while measuring it: "
                         f"{telling_line(proc.stderr)}")
    return parse_agent_output(proc.stdout, proc.stderr)


def run_local(job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
    """Run the agent for ``job`` in a fresh process of the current interpreter."""
    return run_agent_process([sys.executable, "-m", AGENT_MODULE, *job.argv()], job, timeout_s)
