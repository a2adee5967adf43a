"""The ``local`` and ``constrained`` transports: the agent in a fresh process on this machine.

``constrained`` caps the process to a profile's core count (CPU affinity to the first N allowed CPUs, and the
agent's thread settings) and RAM (a cgroup v1 memory limit where this process may create one, else
``RLIMIT_AS`` set between fork and exec). Clock speed, ISA and memory bandwidth are *not* emulated: the figures
are labelled ``constrained`` and the result's ``device.applied`` block says exactly which caps took effect.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any, Literal

from edgedistill.devices.local import AGENT_MODULE, AgentError, AgentJob, run_agent_process
from edgedistill.devices.transport import TRANSPORTS, Label, Transport

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
#: run as ``python -c _TRAMPOLINE CGROUP_PROCS CPUS LIMIT AGENT_ARGV...``: caps itself, then becomes the agent
_TRAMPOLINE = (
    "import os, resource, sys\n"
    "procs, cpus, limit = sys.argv[1:4]\n"
    "os.sched_setaffinity(0, [int(c) for c in cpus.split(',')])\n"
    "if procs:\n"
    "    open(procs, 'w').write(str(os.getpid()))\n"
    "else:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))\n"
    "os.execv(sys.argv[4], sys.argv[4:])\n")
_counter = itertools.count()


def _agent_cmd(job: AgentJob) -> list[str]:
    return [sys.executable, "-m", AGENT_MODULE, *job.argv()]


@TRANSPORTS.register("local")
class LocalTransport(Transport):
    """This machine, uncapped: ``measured``."""

    label = Label.MEASURED

    def threads(self, spec: list[int | str]) -> list[int]:
        return super().threads([len(os.sched_getaffinity(0)) if t == "all" else t for t in spec])

    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        return self.annotate(run_agent_process(_agent_cmd(job), job, timeout_s))


def _cgroup_v1_usable(root: Path = CGROUP_V1_MEMORY) -> bool:
    return (root / "memory.limit_in_bytes").is_file() and os.access(root, os.W_OK)


@TRANSPORTS.register("constrained")
class ConstrainedTransport(Transport):
    """This machine with the profile's core count and RAM as hard caps: ``constrained``."""

    label = Label.CONSTRAINED
    #: "auto": a cgroup v1 memory limit where permitted, else RLIMIT_AS
    memory_method: Literal["auto", "cgroup-v1", "rlimit-as"] = "auto"

    def _cpus(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))[:self.device.profile.cores]

    def threads(self, spec: list[int | str]) -> list[int]:
        n = len(self._cpus())
        return super().threads([min(n, n if t == "all" else int(t)) for t in spec])

    def _method(self) -> str:
        if self.memory_method != "auto":
            return self.memory_method
        return "cgroup-v1" if _cgroup_v1_usable() else "rlimit-as"

    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        prof = self.device.profile
        cpus, limit = self._cpus(), prof.ram_mb * 2**20
        method = self._method()
        cgroup = None
        if method == "cgroup-v1":
            cgroup = CGROUP_V1_MEMORY / f"edgedistill-{os.getpid()}-{next(_counter)}"
            try:
                cgroup.mkdir()
                (cgroup / "memory.limit_in_bytes").write_text(str(limit))
            except OSError as err:
                raise AgentError(f"{cgroup}: cannot create a cgroup v1 memory limit ({err}); "
                                 "run as root or set memory_method='rlimit-as'") from None

        # the caps are applied by a fresh, single-threaded interpreter that then execs the agent: a preexec_fn
        # would run between fork and exec in this (multi-threaded: torch, JAX) process, where that can deadlock
        procs = str(cgroup / "cgroup.procs") if cgroup is not None else ""
        cmd = [sys.executable, "-c", _TRAMPOLINE, procs, ",".join(map(str, cpus)), str(limit), *_agent_cmd(job)]
        try:
            doc = run_agent_process(cmd, job, timeout_s)
        finally:
            if cgroup is not None:
                cgroup.rmdir()
        applied = {"cpus": cpus, "cores_requested": prof.cores, "cores_applied": len(cpus),
                   "threads": job.threads,
                   "memory": {"method": method, "limit_mb": prof.ram_mb},
                   "not_emulated": ["clock speed", "ISA and vector width", "cache sizes", "memory bandwidth"]}
        if len(cpus) < prof.cores:
            applied["note"] = f"this machine allows only {len(cpus)} CPU(s); the profile has {prof.cores}"
        return self.annotate(doc, applied=applied)
