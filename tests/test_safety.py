"""No code from data: a pickle that would create a marker file when unpickled is planted on every path that loads
weights or arrays, and the marker never appears. Model names and constructor kwargs from recipes and from file
metadata are allow-listed (no `checkpoint_path`, `pretrained*`)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny_recipe
from tests.test_cli import cli


class _Evil:
    """Unpickling this runs ``Path.touch(marker)``: the side effect the tests look for."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _evil_torch(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, path)
    return path


def test_the_planted_pickle_really_runs_code(tmp_path: Path) -> None:
    """Control: loaded the unsafe way, the payload does create the marker (so its absence below means something)."""
    marker = tmp_path / "pwned"
    torch.load(_evil_torch(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


def _run_recipe(tmp_path: Path, **overrides: object) -> tuple[int, str]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**overrides)))
    res = cli("run", str(recipe), "--out", str(tmp_path / "run"))
    return res.returncode, res.stderr


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_recipe_checkpoints_never_unpickle(tmp_path: Path, role: str) -> None:
    marker = tmp_path / "pwned"
    _evil_torch(tmp_path / "evil.pth", marker)
    r = tiny_recipe()
    code, err = _run_recipe(tmp_path, **{role: {**r[role], "checkpoint": "evil.pth"}})
    assert code == 2 and "evil.pth: refused to load (only tensors are allowed" in err, err[-2000:]
    assert "Traceback" not in err and not marker.exists()


def test_export_model_checkpoint_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_torch(tmp_path / "evil.pth", marker)
    res = cli("export", "--model", "mobilenetv3_small_050", "--checkpoint", str(evil), "--num-classes", "10",
              "--formats", "onnx", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "refused to load" in res.stderr and not marker.exists()


def test_recipe_kwargs_are_allow_listed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _evil_torch(tmp_path / "evil.pth", marker)
    r = tiny_recipe()
    code, err = _run_recipe(tmp_path, teacher={**r["teacher"], "kwargs": {**r["teacher"]["kwargs"],
                                                                          "checkpoint_path": "evil.pth"}})
    assert code == 2 and "teacher.kwargs.checkpoint_path: refused (it would load a file" in err, err
    for bad, why in (({"pretrained": True}, "refused"), ({"pretrained_cfg_overlay": {"file": "x"}}, "refused"),
                     ({"nonsense": 1}, "not an argument of")):
        code, err = _run_recipe(tmp_path, student={"name": "mobilenetv3_small_050", "kwargs": bad})
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    code, err = _run_recipe(tmp_path, student={"name": "no_such_net"})
    assert code == 2 and "student: unknown timm model 'no_such_net'" in err
    assert not marker.exists()


def test_reference_metadata_kwargs_are_allow_listed(tmp_path: Path) -> None:
    """A reference .safetensors (what bench loads for the PyTorch rows) whose metadata asks timm to load a pickle."""
    from safetensors.torch import save_file

    from edgedistill.runtimes.base import RuntimeError_
    from edgedistill.runtimes.torch_ref import META, load_reference

    marker = tmp_path / "pwned"
    evil = _evil_torch(tmp_path / "evil.pth", marker)
    ref = tmp_path / "teacher.safetensors"
    save_file({"x": torch.zeros(1)}, str(ref), metadata={META: json.dumps(
        {"model": "mobilenetv3_small_050", "kwargs": {"num_classes": 10, "checkpoint_path": str(evil)}})})
    with pytest.raises(RuntimeError_, match="kwargs.checkpoint_path: refused"):
        load_reference(ref)
    save_file({"x": torch.zeros(1)}, str(ref), metadata={META: json.dumps({"model": "os.system", "kwargs": {}})})
    with pytest.raises(RuntimeError_, match="unknown timm model 'os.system'"):
        load_reference(ref)
    assert not marker.exists()


def test_training_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    """A planted train-state file (the path a resumed stage reads) is refused, set aside, and training starts over."""
    from edgedistill.toolchain.training import LoopConfig, fit, train_state

    marker = tmp_path / "pwned"
    ckpt = _evil_torch(train_state(tmp_path, "abc"), marker)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    res = fit(model, lambda idx: (model(torch.ones(1, 2)).sum(), {}), lambda s: [0], opt, sched,
              LoopConfig(total_steps=2, save_every=1), ckpt, "t")
    assert res.steps == 2 and res.resumed_from == 0 and not marker.exists()
    assert ckpt.with_suffix(".pt.corrupt").is_file()  # kept for inspection, never read again


def test_hf_folders_load_safetensors_only(tmp_path: Path) -> None:
    """A Hugging Face folder whose weights are a pickled pytorch_model.bin is refused by every LLM loader."""
    from transformers import LlamaConfig

    from edgedistill.runtimes.base import RuntimeError_
    from edgedistill.runtimes.torch_lm import TorchLMSession

    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(folder)
    _evil_torch(folder / "pytorch_model.bin", marker)
    with pytest.raises((RuntimeError_, OSError, ValueError)):
        TorchLMSession(folder)
    assert not marker.exists()


def test_agent_eval_arrays_never_unpickle(tmp_path: Path) -> None:
    """The agent's eval file travels to devices: an object array in it is refused, not unpickled."""
    from edgedistill.devices.agent import measure, parse_args

    marker = tmp_path / "pwned"
    ev = tmp_path / "eval.npz"
    np.savez(ev, x=np.array([_Evil(marker)], dtype=object), y=np.zeros(1))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(ValueError, match="allow_pickle"):
        measure(parse_args(["--artifact", str(onnx), "--eval", str(ev), "--score"]))
    assert not marker.exists()
