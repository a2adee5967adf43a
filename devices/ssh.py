"""The ``ssh`` transport: a real board (Raspberry Pi, Jetson, any Linux box) over OpenSSH.

It pushes the agent bundle once and each artifact and eval set once (named by content hash) into a private
``mktemp -d`` folder, runs ``PYTHONPATH=agent.zip python3 -m edgedistill.devices.agent ...`` there, reads the JSON
from stdout, pulls the eval logits, and removes the folder on close. The board needs Python 3, numpy and one
runtime package (onnxruntime or ai-edge-litert) — not edgedistill. For a GGUF on an Arm board (the spec's
``profile=``), llama.cpp cross-built for that core (:mod:`edgedistill.devices.llama_arm64`) is pushed with it and
put on ``PYTHONPATH``; ``llama=none`` uses the board's own llama-cpp-python instead.

Authentication is key-based only (``BatchMode=yes``: never a password prompt) and host keys are checked
(``StrictHostKeyChecking=yes``) against ``~/.ssh/known_hosts`` or the ``known_hosts=`` file: an unknown or
changed host key is refused. Add a board's key once with ``ssh-keyscan -H HOST >> ~/.ssh/known_hosts`` after
checking its fingerprint. Spec: ``ssh://user@host[:port]?profile=rpi4&key=~/.ssh/id_ed25519&python=python3[&llama=none]``.
The OpenSSH clients are run without a local shell; the remote command line is quoted with :func:`shlex.join`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgedistill.core import llama_source
from edgedistill.core.fileio import atomic_path, sha256_file
from edgedistill.devices import llama_arm64
from edgedistill.devices.bundle import build_bundle
from edgedistill.devices.local import AGENT_MODULE, AgentError, AgentJob, parse_agent_output
from edgedistill.devices.transport import TRANSPORTS, Device, Label, Transport


@TRANSPORTS.register("ssh")
class SshTransport(Transport):
    """A board over SSH: ``measured``. Options: host, port, user, key, known_hosts, python, pythonpath."""

    label = Label.MEASURED

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        o = device.options
        self.host, self.port, self.user = o["host"], o.get("port", "22"), o.get("user", "")
        self.python = shlex.split(o.get("python", "python3"))
        self.pythonpath = [p for p in o.get("pythonpath", "").split(":") if p]
        if o.get("llama", "auto") not in ("auto", "none"):
            raise ValueError(f"{device.spec}: llama={o['llama']!r}; use llama=auto (push llama.cpp built for the "
                             "board's Arm core with a GGUF) or llama=none (the board has its own llama-cpp-python)")
        self._remote: str | None = None
        self._pushed: dict[str, str] = {}

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def _opts(self) -> list[str]:
        o = self.device.options
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if o.get("known_hosts"):
            opts += ["-o", f"UserKnownHostsFile={Path(o['known_hosts']).expanduser()}"]
        if o.get("key"):
            opts += ["-o", "IdentitiesOnly=yes", "-i", str(Path(o["key"]).expanduser())]
        return opts

    def ssh_argv(self, remote_cmd: list[str]) -> list[str]:
        """The local ``ssh`` argv that runs ``remote_cmd`` (quoted for the remote shell)."""
        target = f"{self.user}@{self.host}" if self.user else self.host
        # "--" before the destination: whatever the spec says, it is never read as an ssh option
        return ["ssh", *self._opts(), "-p", self.port, "--", target, shlex.join(remote_cmd)]

    def scp_argv(self, src: str, dst: str) -> list[str]:
        return ["scp", "-q", "-B", *self._opts(), "-P", self.port, "--", src, dst]

    def _remote_path(self, path: str) -> str:
        target = f"{self.user}@{self.host}" if self.user else self.host
        return f"{target}:{path}"

    def _call(self, argv: list[str], what: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise AgentError(f"ssh {self.where}: {what} timed out after {timeout_s:.0f} s") from None
        if proc.returncode == 255 or (proc.returncode != 0 and argv[0] == "scp"):
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            hint = (" (add the host key to known_hosts after checking its fingerprint)"
                    if "host key" in proc.stderr.lower() else "")
            raise AgentError(f"ssh {self.where}: {what} failed: {tail}{hint}")
        return proc

    def prepare(self) -> None:
        proc = self._call(self.ssh_argv(["mktemp", "-d", "/tmp/edgedistill-XXXXXX"]), "connect")
        self._remote = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else ""
        if not self._remote.startswith("/tmp/edgedistill-"):
            raise AgentError(f"ssh {self.where}: cannot create a remote work folder: {proc.stderr.strip()}")
        with tempfile.TemporaryDirectory() as d:
            self._push(build_bundle(Path(d) / "agent.zip"), "agent.zip")

    def _push(self, local: Path, name: str | None = None) -> str:
        assert self._remote is not None
        key = f"{local.resolve()}:{sha256_file(local)}"
        if key not in self._pushed:
            name = name or f"{sha256_file(local)[:12]}-{local.name}"
            self._call(self.scp_argv(str(local), self._remote_path(f"{self._remote}/{name}")), f"copy {local.name}",
                       600)
            self._pushed[key] = name
        return f"{self._remote}/{self._pushed[key]}"

    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        if self._remote is None:
            self.prepare()
        artifact = self._push(job.artifact)
        ev = self._push(job.eval_npz) if job.eval_npz else None
        logits = f"{self._remote}/logits.npy" if job.logits_out else None
        remote_job = dataclasses.replace(job, artifact=Path(artifact), eval_npz=Path(ev) if ev else None,
                                         logits_out=Path(logits) if logits else None)
        llama = self._push_llama() if job.artifact.suffix == ".gguf" else None
        env = [f"PYTHONPATH={':'.join([f'{self._remote}/agent.zip', *([llama] if llama else []), *self.pythonpath])}"]
        cmd = ["env", *env, *self.python, "-m", AGENT_MODULE, *remote_job.argv()]
        proc = self._call(self.ssh_argv(cmd), f"agent on {job.artifact.name}", timeout_s)
        doc = parse_agent_output(proc.stdout, proc.stderr)
        if job.logits_out and logits:
            with atomic_path(job.logits_out) as tmp:
                self._call(self.scp_argv(self._remote_path(logits), str(tmp)), "fetch logits")
        return self.annotate(doc, host=self.where)

    def _push_llama(self) -> str | None:
        """For a GGUF on an Arm board: push llama.cpp cross-built for the profile's core (once per session) and
        unpack it there; returns the folder to put on ``PYTHONPATH``. ``llama=none`` in the spec: the board has
        its own llama-cpp-python."""
        arch = llama_arm64.arch_for(self.device.profile)
        if self.device.options.get("llama") == "none" or arch is None:
            return None
        assert self._remote is not None
        dest = f"{self._remote}/llama-{arch}"
        if f"llama:{arch}" not in self._pushed:
            with tempfile.TemporaryDirectory() as d:
                tar = Path(d) / f"llama-{arch}.tar"
                try:
                    root = llama_arm64.ensure(arch)
                except llama_source.LlamaSourceError as err:
                    raise AgentError(f"ssh {self.where}: no llama.cpp for the board's {arch}: {err}") from None
                with tarfile.open(tar, "w") as tf:  # links kept as links: the libraries' soname chain
                    for rel in llama_arm64.relative_files(root):
                        tf.add(root / rel, arcname=str(rel), recursive=False)
                remote_tar = self._push(tar)
            self._call(self.ssh_argv(["mkdir", "-p", dest]), "make the llama.cpp folder")
            proc = self._call(self.ssh_argv(["tar", "-xf", remote_tar, "-C", dest]), "unpack llama.cpp", 300)
            if proc.returncode != 0:
                raise AgentError(f"ssh {self.where}: unpacking llama.cpp failed: {proc.stderr.strip()[-300:]}")
            self._pushed[f"llama:{arch}"] = dest
        return dest

    def close(self) -> None:
        if self._remote:
            with contextlib.suppress(AgentError):  # the board went away; nothing left to do
                self._call(self.ssh_argv(["rm", "-rf", self._remote]), "clean up", 60)
            self._remote, self._pushed = None, {}
