"""qemu-arm64: the agent on aarch64 wheels under user-mode emulation, parity against the host run.

The rootfs is built once per machine (``edgedistill devices setup qemu-arm64``, ~1-2 min) into
``~/.cache/edgedistill/qemu-arm64``; the tests use that machine-wide cache (conftest's ``qemu_rootfs`` builds it
if absent).
It skips only where emulation is impossible (no qemu-aarch64-static/debootstrap, or not root for the first build).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgedistill.devices.local import AgentJob, run_local
from edgedistill.devices.transport import open_transport, parse_device
from edgedistill.toolchain.vision.export.onnx import export_fp32


def test_emulated_run_matches_the_host(qemu_rootfs: Path, tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(32, 5))
    export_fp32(net, torch.zeros(1, 3, 16, 16), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        np.savez(tmp_path / "eval.npz", x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
    job = dict(artifact=tmp_path / "m.onnx", threads=1, eval_npz=tmp_path / "eval.npz", warmup=1, runs=3, score=True)
    host = run_local(AgentJob(**job, logits_out=tmp_path / "host.npy"))
    tr = open_transport(parse_device("qemu-arm64"))
    try:
        emu = tr.run(AgentJob(**job, logits_out=tmp_path / "emu.npy"))
    finally:
        tr.close()
    assert emu["machine"]["machine"] == "aarch64" and emu["device"]["label"] == "emulated"
    assert emu["session"]["runtime"] == "onnxruntime" and emu["accuracy"] == host["accuracy"] == 1.0
    diff = float(np.abs(np.load(tmp_path / "host.npy") - np.load(tmp_path / "emu.npy")).max())
    print(f"qemu-arm64 parity vs host: max |diff| {diff:.2e}; p50 host {host['latency_ms']['p50']:.3f} ms, "
          f"emulated {emu['latency_ms']['p50']:.3f} ms")
    assert diff < 1e-5
