"""The ssh transport against a real OpenSSH server on 127.0.0.1 (own host key, own authorized_keys)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.profile import get_profile
from edgedistill.devices.ssh import SshTransport
from edgedistill.devices.transport import Device
from edgedistill.toolchain.vision.export.onnx import export_fp32

SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
SITE = str(Path(np.__file__).parents[1])
SFTP = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
             if Path(p).is_file()), "internal-sftp")
pytestmark = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None,
                                reason="OpenSSH server/client not installed (apt-get install openssh-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
    (d / "other_known_hosts").write_text("")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PubkeyAuthentication yes\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {SFTP}\n")  # scp speaks SFTP since OpenSSH 9
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start here: {proc.stderr.read()[-300:] if proc.stderr else ''}")
        time.sleep(0.05)
    try:
        yield {"port": str(port), "key": str(d / "client_key"), "known_hosts": str(d / "known_hosts"),
               "other_known_hosts": str(d / "other_known_hosts"),
               "user": subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _device(sshd: dict[str, str], known_hosts: str) -> Device:
    # -S: the remote Python sees edgedistill only through the pushed bundle (the editable install is not loaded)
    return Device("ssh://test", "ssh", get_profile("rpi4"), {
        "host": "127.0.0.1", "port": sshd["port"], "user": sshd["user"], "key": sshd["key"],
        "known_hosts": known_hosts, "python": f"{sys.executable} -S", "pythonpath": SITE})


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sshmodel")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    export_fp32(net, torch.zeros(1, 3, 8, 8), d / "m.onnx")
    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        np.savez(d / "eval.npz", x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
    return d / "m.onnx", d / "eval.npz"


def test_ssh_runs_the_agent_bundle_and_pulls_results(sshd: dict[str, str], model: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    tr = SshTransport(_device(sshd, sshd["known_hosts"]))
    try:
        tr.prepare()
        remote = tr._remote
        doc = tr.run(AgentJob(model[0], 1, model[1], warmup=1, runs=5, score=True, logits_out=tmp_path / "l.npy"))
        doc2 = tr.run(AgentJob(model[0], 1, model[1], warmup=1, runs=5))  # artifact already pushed: reused
    finally:
        tr.close()
    assert doc["device"]["label"] == "measured" and doc["device"]["transport"] == "ssh"
    assert doc["accuracy"] == 1.0 and np.load(tmp_path / "l.npy").shape == (6, 3)
    assert doc2["latency_ms"]["p50"] > 0 and len(tr._pushed) == 0
    assert remote and not Path(remote).exists()  # the remote work folder was removed (same machine here)


def test_ssh_refuses_an_unknown_host_key(sshd: dict[str, str]) -> None:
    tr = SshTransport(_device(sshd, sshd["other_known_hosts"]))
    with pytest.raises(AgentError, match="Host key verification failed.*known_hosts"):
        tr.prepare()


def test_ssh_argv_quotes_the_remote_command() -> None:
    tr = SshTransport(Device("ssh://x", "ssh", get_profile("rpi4"), {"host": "b", "port": "22", "user": "pi"}))
    argv = tr.ssh_argv(["echo", "a b; rm -rf /"])
    assert argv[-1] == "echo 'a b; rm -rf /'" and "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv[argv.index("--") + 1] == "pi@b"  # the destination comes after "--": never an option
    assert tr.scp_argv("a", "b")[-3:] == ["--", "a", "b"]


@pytest.mark.parametrize("spec", ["ssh://-oProxyCommand=touch%20x@host", "ssh://pi@-oProxyCommand=x",
                                  "ssh://pi;id@host"])
def test_ssh_specs_cannot_smuggle_options(spec: str) -> None:
    from edgedistill.devices.transport import parse_device

    with pytest.raises(ValueError, match="is not a plain"):
        parse_device(spec)
