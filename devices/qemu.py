"""The ``qemu-arm64`` transport: the agent on real aarch64 code (numpy, onnxruntime, LiteRT wheels) under
qemu user-mode emulation, without any system-wide setting.

``edgedistill devices setup qemu-arm64`` builds the cached rootfs once (about 1-2 min, ~420 MB):

1. ``debootstrap --foreign --variant=minbase --include=python3`` downloads an arm64 Debian (host tools only);
2. every downloaded ``.deb`` is unpacked with ``dpkg-deb -x`` — no second stage, no chroot, no binfmt: Python
   only needs the files;
3. ``pip install --target rootfs/opt/edgedistill/site`` fetches the aarch64 wheels of numpy, onnxruntime and
   ai-edge-litert for the ``manylinux_2_17..36_aarch64`` platform tags.

GGUF files run on llama.cpp cross-built for the profile's core (:mod:`edgedistill.devices.llama_arm64`; PyPI has no
aarch64 llama-cpp-python), put on the agent's ``PYTHONPATH``; setup builds both Arm ISAs once per machine.

Runs call ``qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3 -m edgedistill.devices.agent`` directly. With
``-L``, qemu opens ``ROOTFS/<path>`` whenever that file exists and the host's path otherwise, so artifacts and the
agent bundle are read from the host, while ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` come from fake
Cortex files in the rootfs (onnxruntime segfaults at import after reading the host's x86 ones; shared/STACK.md).
Times are labelled ``emulated``: correct outputs, not a device latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgedistill.core import llama_source, locks
from edgedistill.core.fileio import write_json, write_text
from edgedistill.core.paths import qemu_root
from edgedistill.devices import llama_arm64
from edgedistill.devices.bundle import build_bundle
from edgedistill.devices.local import AGENT_MODULE, AgentError, AgentJob, run_agent_process
from edgedistill.devices.profile import DeviceProfile
from edgedistill.devices.transport import TRANSPORTS, Label, Transport

SUITE = "bookworm"
PYTHON = "/usr/bin/python3.11"  # bookworm's python3; the wheels are fetched for cp311
SITE = "/opt/edgedistill/site"
WHEELS = ["numpy>=2.0", "onnxruntime>=1.20", "ai-edge-litert>=2.3,<2.4"]
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "dpkg-deb": "dpkg"}


class QemuError(AgentError):
    """Emulation is unavailable or the rootfs cannot be built; the message says the fix."""


def rootfs_dir() -> Path:
    return qemu_root() / "rootfs"


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")


def missing_tools() -> list[str]:
    """Host tools that are absent, as ``tool (apt package)``; empty when emulation is possible."""
    return [f"{t} (apt-get install {pkg})" for t, pkg in TOOLS.items() if _which(t) is None]


def is_ready() -> bool:
    return (qemu_root() / "ready.json").is_file()


def _mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else deb.debian.org."""
    for f in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        with contextlib.suppress(OSError):
            m = re.search(r"(?:URIs:|^deb)\s+(?:\[[^]]*\]\s+)?(https?://\S+/debian)\s", f.read_text(), re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def _lock() -> contextlib.AbstractContextManager[None]:
    return locks.locked(qemu_root() / ".lock")


def _run(cmd: list[str], what: str, log: Any, **kw: Any) -> None:
    log(f"  {what}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise QemuError(f"qemu-arm64 setup: {what} failed (exit {proc.returncode}): {tail}")


def _platform_args() -> list[str]:
    tags = [f"manylinux_2_{n}_aarch64" for n in range(17, 37)] + ["manylinux2014_aarch64"]
    return [a for t in tags for a in ("--platform", t)]


def setup(log: Any = print, force: bool = False) -> dict[str, Any]:
    """Build the cached arm64 rootfs unless it is there already (idempotent; safe to call concurrently)."""
    if missing := missing_tools():
        raise QemuError(f"qemu-arm64: missing host tools: {', '.join(missing)}")
    info = _setup_rootfs(log, force)
    return {**info, "llama_cpp": _setup_llama(log)}


def _setup_llama(log: Any) -> dict[str, str]:
    """Cross-build llama.cpp for every Arm ISA the profiles use (once per machine); without the cross compiler,
    say so and go on: only GGUF rows need it, and they will name the fix."""
    out = {}
    for arch in llama_arm64.ARCHES:
        try:
            out[arch] = str(llama_arm64.ensure(arch, log))
        except llama_source.LlamaSourceError as err:
            log(f"  {err}")
            out[arch] = f"not built: {str(err).splitlines()[0]}"
    return out


def _setup_rootfs(log: Any, force: bool) -> dict[str, Any]:
    with _lock():
        ready = qemu_root() / "ready.json"
        if ready.is_file() and not force:
            return json.loads(ready.read_text())
        if os.geteuid() != 0:
            raise QemuError("qemu-arm64 setup: debootstrap needs root (run `sudo edgedistill devices setup "
                            "qemu-arm64`, or build the cache as root once per machine)")
        tmp = qemu_root() / "rootfs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        ready.unlink(missing_ok=True)
        mirror = _mirror()
        _run([_which("debootstrap") or "debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
              "--include=python3,libstdc++6", SUITE, str(tmp), mirror],
             f"debootstrap --foreign {SUITE} arm64 from {mirror}", log)
        debs = sorted((tmp / "var/cache/apt/archives").glob("*.deb"))
        log(f"  unpacking {len(debs)} packages with dpkg-deb -x")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}", lambda _m: None)
        for deb in debs:
            deb.unlink()
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
              "--target", str(tmp / SITE.lstrip("/")), "--only-binary=:all:", "--python-version", "3.11",
              "--implementation", "cp", *_platform_args(), *WHEELS], "pip install aarch64 wheels", log)
        shutil.rmtree(rootfs_dir(), ignore_errors=True)
        tmp.rename(rootfs_dir())
        write_fake_cpu(rootfs_dir(), None)
        info = _smoke()
        write_json(ready, info)
        log(f"  ready: {rootfs_dir()} ({info['python']}, onnxruntime {info['onnxruntime']})")
        return info


def _qemu_cmd(args: list[str], cpu: str | None = None) -> list[str]:
    """The emulator command line. ``cpu`` picks qemu's CPU model: with its default 'max', qemu 7.2 gave wrong
    int8 results from XNNPACK and onnxruntime (top-1 0.1 on a model that scores 0.93; fp32 was exact); as
    ``cortex-a72`` the same file scored 0.93 — the kernels then take the paths a Pi 4 takes."""
    root = rootfs_dir()
    qemu = [_which("qemu-aarch64-static") or "qemu-aarch64-static", *(["-cpu", cpu] if cpu else [])]
    return [*qemu, "-L", str(root), str(root / PYTHON.lstrip("/")), *args]


def _env(bundle: Path | None, extra: Sequence[Path] = ()) -> dict[str, str]:
    path = ":".join([*([str(bundle)] if bundle else []), *map(str, extra), SITE])
    return {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": path,
            "PYTHONDONTWRITEBYTECODE": "1"}


def _smoke() -> dict[str, Any]:
    code = ("import json, platform, sys, numpy, onnxruntime, ai_edge_litert; print(json.dumps({'machine': "
            "platform.machine(), 'python': sys.version.split()[0], 'numpy': numpy.__version__, "
            "'onnxruntime': onnxruntime.__version__}))")
    proc = subprocess.run(_qemu_cmd(["-c", code]), capture_output=True, text=True, env=_env(None), check=False,
                          timeout=300)
    if proc.returncode != 0:
        raise QemuError(f"qemu-arm64: the rootfs's Python fails to import the runtimes: {proc.stderr[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CPUINFO = """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: {features}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: {part}
CPU revision\t: 3
"""


#: qemu CPU model → the MIDR part and /proc/cpuinfo features of the core it emulates. The fake cpuinfo describes
#: the emulated core, not the profile's (a phone profile's i8mm/SVE2 would send runtimes to kernels the emulated
#: Cortex-A76 cannot run)
QEMU_CORES = {
    "cortex-a72": ("0xd08", ["fp", "asimd", "evtstrm", "crc32", "cpuid"]),
    "cortex-a76": ("0xd0b", ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
                             "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"]),
}


def write_fake_cpu(root: Path, profile: DeviceProfile | None) -> None:
    """Fake Arm ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` inside the rootfs (read through ``-L``)."""
    cores = profile.cores if profile else 4
    part, feats_list = QEMU_CORES.get(profile.qemu_cpu if profile and profile.qemu_cpu else "", (None, None))
    part = part or (profile.cpu_part if profile else None) or "0xd08"  # Cortex-A72
    feats = " ".join(feats_list or (profile.features if profile else None) or QEMU_CORES["cortex-a72"][1])
    text = "\n".join(_CPUINFO.format(i=i, features=feats, part=part) for i in range(cores))
    if (root / "proc/cpuinfo").is_file() and (root / "proc/cpuinfo").read_text() == text:
        return
    with _lock():  # the rootfs is machine-wide: concurrent runs must not rewrite it under each other
        _write_cpu_files(root, text, cores, profile)


def _write_cpu_files(root: Path, text: str, cores: int, profile: DeviceProfile | None) -> None:
    write_text(root / "proc/cpuinfo", text)
    sysd = root / "sys/devices/system/cpu"
    shutil.rmtree(sysd, ignore_errors=True)
    for f in ("possible", "present", "online"):
        write_text(sysd / f, f"0-{cores - 1}\n")
    for i in range(cores):
        write_text(sysd / f"cpu{i}/topology/core_id", f"{i}\n")
        write_text(sysd / f"cpu{i}/topology/physical_package_id", "0\n")
        write_text(sysd / f"cpu{i}/topology/thread_siblings_list", f"{i}\n")
        write_text(sysd / f"cpu{i}/topology/core_siblings_list", f"0-{cores - 1}\n")
        khz = str(int((profile.clock_ghz if profile else 1.5) * 1e6))
        write_text(sysd / f"cpu{i}/cpufreq/cpuinfo_max_freq", khz + "\n")


@TRANSPORTS.register("qemu-arm64")
class QemuTransport(Transport):
    """aarch64 user-mode emulation of the profile's CPU (default rpi4): ``emulated``."""

    label = Label.EMULATED
    max_runs = (1, 5)

    def __init__(self, device: Any) -> None:
        super().__init__(device)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._bundle: Path | None = None

    def threads(self, spec: list[int | str]) -> list[int]:
        return [1]  # emulated time is not a latency; one thread keeps it cheap and deterministic

    def prepare(self) -> None:
        if missing := missing_tools():
            raise QemuError(f"qemu-arm64: missing host tools: {', '.join(missing)}")
        if not is_ready():
            raise QemuError(f"qemu-arm64: no rootfs at {rootfs_dir()}; run `edgedistill devices setup qemu-arm64`")
        write_fake_cpu(rootfs_dir(), self.device.profile)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgedistill-qemu-")
        self._bundle = build_bundle(Path(self._tmp.name) / "agent.zip")

    def run(self, job: AgentJob, timeout_s: float = 1800) -> dict[str, Any]:
        if self._bundle is None:
            self.prepare()
        # -L resolves an absolute path inside the rootfs first, so hand the agent absolute host paths
        job = dataclasses.replace(job, artifact=job.artifact.resolve(),
                                  eval_npz=job.eval_npz.resolve() if job.eval_npz else None,
                                  logits_out=job.logits_out.resolve() if job.logits_out else None)
        cpu = self.device.profile.qemu_cpu
        extra, llama = [], None
        if job.artifact.suffix == ".gguf":  # llama.cpp cross-built for the profile's core, from the host's sdist
            arch = llama_arm64.arch_for(self.device.profile) or "armv8-a"
            try:
                extra = [llama_arm64.ensure(arch, log=lambda m: print(m, file=sys.stderr))]
            except llama_source.LlamaSourceError as err:
                raise QemuError(str(err)) from None
            llama = llama_arm64.info(arch)
        doc = run_agent_process(_qemu_cmd(["-m", AGENT_MODULE, *job.argv()], cpu), job, timeout_s,
                                env=_env(self._bundle, extra))
        info = json.loads((qemu_root() / "ready.json").read_text())
        if llama:
            doc["llama_cpp_build"] = {k: llama[k] for k in ("llama_cpp_python", "arch", "march", "compiler")}
        return self.annotate(doc, emulator=f"qemu-aarch64-static (user mode, -cpu {cpu or 'max'})",
                             rootfs=str(rootfs_dir()),
                             rootfs_versions=info, instructions=None,
                             instructions_note="needs the dynamic qemu-user with an insn-count plugin "
                                               "(Debian ships none); not collected",
                             note="emulated time is hundreds of times the device's and noisy: not a latency")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._bundle = None, None
