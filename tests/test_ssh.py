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

from edgedistill.core.tolerances import FP32_MAX_ABS_DIFF
from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.profile import get_profile
from edgedistill.devices.ssh import SshTransport
from edgedistill.devices.transport import Device
from edgedistill.toolchain.llm.tokenizer import encode
from edgedistill.toolchain.vision.export.onnx import export_fp32
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

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


def test_an_unknown_llama_option_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="llama='yes'; use llama=auto .* or llama=none"):
        SshTransport(Device("ssh://pi@b?llama=yes", "ssh", get_profile("rpi4"), {"host": "b", "llama": "yes"}))


@pytest.mark.parametrize("spec", ["ssh://-oProxyCommand=touch%20x@host", "ssh://pi@-oProxyCommand=x",
                                  "ssh://pi;id@host"])
def test_ssh_specs_cannot_smuggle_options(spec: str) -> None:
    from edgedistill.devices.transport import parse_device

    with pytest.raises(ValueError, match="is not a plain"):
        parse_device(spec)


@pytest.mark.slow
def test_ssh_pushes_llama_cpp_for_an_arm_board(sshd: dict[str, str], qemu_rootfs: Path, tiny_lm: TinyLM,  # noqa: F811
                                               tmp_path: Path) -> None:
    """A GGUF on an Arm board over real SSH: llama.cpp cross-built for the profile's core is pushed beside the agent
    and run there. The loopback "board" runs it under qemu-user (this host cannot run aarch64 code itself), so the
    board's python is the emulator plus the rootfs's Python. Its tokens and F32 logits match the host's."""
    from edgedistill.devices.local import run_local
    from edgedistill.devices.qemu import PYTHON, SITE
    from edgedistill.toolchain.llm.export.gguf import convert

    gguf = convert(tiny_lm.dir, tmp_path / "m.gguf", "f32")
    seqs = [encode(tiny_lm.tok, e.prompt, e.completion, 64).input_ids for e in tiny_lm.test[:2]]
    ids = np.zeros((2, max(map(len, seqs))), dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    np.savez(tmp_path / "eval.npz", ids=ids, lengths=np.array(list(map(len, seqs)), dtype=np.int32),
             texts=np.array([e.prompt for e in tiny_lm.test[:3]], dtype=np.str_))
    qemu = shutil.which("qemu-aarch64-static") or "qemu-aarch64-static"
    board = Device("ssh://arm", "ssh", get_profile("rpi4"), {
        "host": "127.0.0.1", "port": sshd["port"], "user": sshd["user"], "key": sshd["key"],
        "known_hosts": sshd["known_hosts"], "pythonpath": SITE,
        "python": f"{qemu} -cpu cortex-a72 -L {qemu_rootfs} {qemu_rootfs}{PYTHON}"})
    opts = ("--pp", "8", "--tg", "4", "--reps", "1", "--ctx", "256")
    tr = SshTransport(board)
    try:
        doc = tr.run(AgentJob(gguf, 1, tmp_path / "eval.npz", warmup=1, runs=3, score=True,
                              logits_out=tmp_path / "arm.npy", options=opts, timeout_s=600))
        pushed = dict(tr._pushed)
    finally:
        tr.close()
    host = run_local(AgentJob(gguf, 1, tmp_path / "eval.npz", warmup=1, runs=3, score=True,
                              logits_out=tmp_path / "host.npy", options=opts))
    assert doc["machine"]["machine"] == "aarch64" and doc["device"]["transport"] == "ssh"
    assert "llama:armv8-a" in pushed and doc["session"]["kv_cache"] == "f32"
    assert doc["tokenized"] == host["tokenized"] and len(doc["tokenized"]) == 3
    arm, ref = np.load(tmp_path / "arm.npy"), np.load(tmp_path / "host.npy")
    assert arm.shape == ref.shape and float(np.abs(arm - ref).max()) <= FP32_MAX_ABS_DIFF
