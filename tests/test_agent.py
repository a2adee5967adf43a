"""The benchmark agent in a fresh process: one JSON document, honest memory, failures reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.devices.local import AgentError, AgentJob, parse_agent_output, run_local
from edgedistill.toolchain.vision.export.onnx import export_fp32


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("agent")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    export_fp32(model, torch.zeros(1, 3, 8, 8), d / "m.onnx")
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(d / "eval.npz", x=x, y=y)
    return d / "m.onnx", d / "eval.npz"


def test_agent_measures_and_scores(onnx_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, ev = onnx_model
    doc = run_local(AgentJob(model, 1, ev, warmup=2, runs=20, score=True, logits_out=tmp_path / "l.npy"))
    lat = doc["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert doc["runs"] == 20 and doc["threads"] == 1 and doc["session"]["runtime"] == "onnxruntime"
    assert doc["accuracy"] == 1.0  # labels are the model's own predictions
    assert np.load(tmp_path / "l.npy").shape == (10, 3)
    # the fresh process's own peak, not its parent's (the test process holds torch: hundreds of MB)
    assert doc["rss_before_load_mb"] <= doc["peak_rss_mb"] < 400
    assert doc["size_bytes"] == model.stat().st_size


def test_agent_reports_a_broken_artifact(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(AgentError, match="broken.onnx: onnxruntime cannot load it"):
        run_local(AgentJob(bad, 1, runs=1, warmup=0))


def test_parse_agent_output_rejects_junk() -> None:
    with pytest.raises(AgentError, match="no result: Segmentation fault"):
        parse_agent_output("garbage\n", "loading\nSegmentation fault\n")
    assert parse_agent_output('noise\n{"schema": "x", "latency_ms": {}}\n')["schema"] == "x"


def test_a_mistyped_runtime_lists_every_runtime(onnx_model: tuple[Path, Path]) -> None:
    """In a fresh agent process, where no runtime module has been imported yet, the error lists every runtime the
    registry knows, not only the ones loaded so far."""
    from edgedistill.runtimes import RUNTIMES

    with pytest.raises(AgentError) as err:
        run_local(AgentJob(onnx_model[0], 1, runtime="onnxruntim", runs=1, warmup=0))
    known = RUNTIMES.names()
    assert {"onnxruntime", "litert", "llama.cpp", "torch", "pytorch-llm", "onnxruntime-llm"} <= set(known)
    assert f"unknown runtime 'onnxruntim'; choose one of: {', '.join(known)}" in str(err.value)


def test_a_registry_lists_members_it_has_not_loaded() -> None:
    """``modules`` names members before their import; ``get`` imports the one asked for, a miss lists them all."""
    from edgedistill.core.registry import Registry, UnknownNameError

    reg: Registry[object] = Registry("thing", modules={"silent": "fnmatch", "never-loaded": "a_module_that_is_absent"})
    reg.register("here")(object())
    assert reg.names() == ["here", "never-loaded", "silent"] and "never-loaded" in reg and "x" not in reg
    with pytest.raises(UnknownNameError, match="unknown thing 'x'; choose one of: here, never-loaded, silent"):
        reg.get("x")
    with pytest.raises(ModuleNotFoundError):  # its module is imported only when it is asked for
        reg.get("never-loaded")
    with pytest.raises(UnknownNameError, match="unknown thing 'silent'"):  # imported, but it registered nothing
        reg.get("silent")
