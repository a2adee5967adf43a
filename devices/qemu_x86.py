"""The ``qemu-x86_64`` transport: this machine's own Python and agent on an *emulated x86 CPU model*, to see what
an artifact computes on another kind of x86 core (default profile ``x86-avx2``: AVX2/FMA and no VNNI, as on AMD
EPYC Zen 2 or Intel Haswell–Broadwell CI runners).

``qemu-x86_64-static -cpu Haswell`` runs the same x86-64 binaries under TCG, which implements AVX2 but no AVX-512
or VNNI, so runtimes that dispatch kernels by CPUID (onnxruntime's MLAS, XNNPACK) take their AVX2 paths. That is
where static int8 u8×s8 products saturate (:func:`edgedistill.devices.profile.int8_saturates`); the emulated rows
show it on any x86 host. No rootfs: the host's interpreter and site-packages are used as they are. Times are
labelled ``emulated`` (TCG is tens of times slower than the host): correct outputs, not a latency.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Any

from edgedistill.devices.local import AGENT_MODULE, AgentError, AgentJob, run_agent_process
from edgedistill.devices.transport import TRANSPORTS, Label, Transport

QEMU = "qemu-x86_64-static"


@TRANSPORTS.register("qemu-x86_64")
class QemuX86Transport(Transport):
    """x86-64 user-mode emulation of the profile's CPU model (``qemu_cpu``): ``emulated``."""

    label = Label.EMULATED
    max_runs = (1, 5)

    def threads(self, spec: list[int | str]) -> list[int]:
        return [1]  # emulated time is not a latency; one thread keeps it cheap and deterministic

    def prepare(self) -> None:
        import platform

        if platform.machine() not in ("x86_64", "AMD64"):
            raise AgentError(f"{self.device.spec}: emulates an x86 CPU model with this machine's own x86-64 Python; "
                             f"this machine is {platform.machine()}")
        if shutil.which(QEMU) is None:
            raise AgentError(f"{self.device.spec}: {QEMU} not found; install Debian's qemu-user-static")
        if not self.device.profile.qemu_cpu:
            raise AgentError(f"{self.device.spec}: profile {self.device.profile.name} names no qemu_cpu")

    def run(self, job: AgentJob, timeout_s: float = 1800) -> dict[str, Any]:
        self.prepare()
        job = dataclasses.replace(job, artifact=job.artifact.resolve(),
                                  eval_npz=job.eval_npz.resolve() if job.eval_npz else None,
                                  logits_out=job.logits_out.resolve() if job.logits_out else None)
        cpu = self.device.profile.qemu_cpu
        cmd = [QEMU, "-cpu", str(cpu), sys.executable, "-m", AGENT_MODULE, *job.argv()]
        env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
        doc = run_agent_process(cmd, job, timeout_s, env=env)
        return self.annotate(doc, emulator=f"{QEMU} (user mode, -cpu {cpu})",
                             note="emulated time is tens of times the host's: not a latency")
