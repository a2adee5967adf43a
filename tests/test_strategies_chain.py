"""Self-distillation with early exits (BYOT) and the teacher-assistant chain: the exits learn from the deepest
head, a student cut at an exit round-trips through the reference format and exports, and a chain runs through the
distill stage link by link, cached."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from torch import nn

from edgedistill.runtimes.early_exit import EarlyExitModel, ExitError, cut
from edgedistill.runtimes.torch_ref import META, load_reference
from edgedistill.toolchain.recipe import RecipeError, parse_recipe
from edgedistill.toolchain.vision.data import load_vision_data
from edgedistill.toolchain.vision.distill import losses
from edgedistill.toolchain.vision.distill.self_distill import FINAL, MultiExit, train_self_distill
from edgedistill.toolchain.vision.models import create, save_reference
from edgedistill.toolchain.vision.recipe import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    SelfDistillConfig,
    TrainConfig,
)
from tests.conftest import tiny_recipe

VIT_KW = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return load_vision_data(DataConfig(labelled_per_class=5))


def _net(cfg: SelfDistillConfig, sample: torch.Tensor) -> MultiExit:
    torch.manual_seed(0)
    return MultiExit(create("mobilenetv3_small_050", 10), cfg, 10, sample)


def _exit_grads(net: MultiExit, x: torch.Tensor) -> list[torch.Tensor]:
    """Each exit head's gradient from the exits' KL to the final head alone (CE weight 0, no labels)."""
    net.zero_grad(set_to_none=True)
    logits, _, exit_logits, _ = net(x)
    no_labels = torch.full((len(x),), losses.IGNORE)
    sum(losses.self_distill_exit(z, logits, no_labels, 3.0, 1.0, 0.0) for z in exit_logits).backward()
    return [h.fc.weight.grad.clone() for h in net.heads]


def test_exit_heads_learn_from_the_final_heads_outputs(data) -> None:  # type: ignore[no-untyped-def]
    """With CE weight 0 the only signal an exit gets is the final head's soft outputs: its gradient is non-zero,
    changes when the final logits change, and nothing flows back into the final head (it is the target)."""
    x = data.train_x[:16]
    net = _net(SelfDistillConfig(exits=["blocks.1", "blocks.3"], ce_weight=0.0), x[:2]).train()
    before = _exit_grads(net, x)
    assert all(g.abs().sum() > 0 for g in before)
    assert net.student.classifier.weight.grad is None  # the deepest head is detached: the exits never pull on it
    with torch.no_grad():  # new final logits, same exit features: the exits' targets alone change
        net.student.classifier.weight.add_(torch.randn_like(net.student.classifier.weight))
    after = _exit_grads(net, x)
    assert all(not torch.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_exits_run_in_depth_order_with_their_own_widths(data) -> None:  # type: ignore[no-untyped-def]
    net = _net(SelfDistillConfig(exits=["blocks.3", "blocks.1"], head="linear", feature_weight=1.0), data.train_x[:2])
    assert net.exits == ["blocks.1", "blocks.3"]
    widths = {}
    for n in ("blocks.1", "blocks.3"):
        net.student.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: widths.__setitem__(n, o.shape[1]))
    net.student(data.train_x[:2])
    assert [h.in_channels for h in net.heads] == [widths["blocks.1"], widths["blocks.3"]]
    logits, emb, exit_logits, exit_embs = net(data.train_x[:4])
    assert logits.shape == (4, 10) and all(z.shape == (4, 10) for z in exit_logits)
    assert net.adapters is not None and net.adapters[0](exit_embs[0]).shape == emb.shape


def test_self_distillation_without_a_teacher_lowers_the_loss(tmp_path: Path) -> None:
    from edgedistill.toolchain.vision.distill.self_distill import SelfDistillObjective

    data = load_vision_data(DataConfig())  # every train image labelled: the final head's CE is a steady signal
    # 120 steps: at 60 the held-out loss fell 32 % with 1 torch thread but only 14 % with 2 (the trajectory is not
    # settled yet, and float reduction order differs); at 120 it falls 57-61 % with either, far past the bound
    cfg = DistillConfig(train=TrainConfig(epochs=4, batch_size=32, max_steps=120, lr=3e-3, weight_decay=0.0),
                        self_distill=SelfDistillConfig(enabled=True, exits=["blocks.1", "blocks.3"],
                                                       feature_weight=0.5))
    torch.manual_seed(0)
    student = create("mobilenetv3_small_050", 10)
    held_x, held_y = data.train_x[:256], data.train_y[:256]

    def held_loss(net: MultiExit) -> float:  # the whole objective on a fixed batch, batch-norm in eval mode
        with torch.no_grad():
            return float(SelfDistillObjective(cfg.self_distill, None)(net.eval(), held_x, held_y, None)[0])

    before = held_loss(MultiExit(student, cfg.self_distill, 10, data.train_x[:2]))
    torch.manual_seed(0)
    res = train_self_distill(create("mobilenetv3_small_050", 10), data, cfg, tmp_path / "ckpt.pt", seed=0)
    assert res.fit.steps == 120 and held_loss(res.net) < 0.85 * before, (before, held_loss(res.net))
    last = res.fit.history[-1]
    assert {"ce", "exit:blocks.1", "exit:blocks.3", "exit_feature:blocks.1"} <= set(last)
    assert "response" not in last  # no teacher: the final head learns from the labels only
    acc = res.net.head_accuracies(data.val_x, data.val_y)
    assert set(acc) == {FINAL, "blocks.1", "blocks.3"} and res.selected_on == FINAL
    assert acc[FINAL] == pytest.approx(res.fit.best)


def _trained_cut(name: str, kwargs: dict, at: str, data) -> tuple[EarlyExitModel, nn.Module]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = MultiExit(create(name, 10, kwargs), SelfDistillConfig(exits=[at]), 10, data.train_x[:2])
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for i in range(3):  # a few steps: batch-norm statistics and weights away from their initial values
        logits, _, (z,), _ = net.train()(data.train_x[i * 32:(i + 1) * 32])
        loss = losses.masked_ce(z, data.train_y[i * 32:(i + 1) * 32]) + losses.masked_ce(logits, data.train_y[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head = net.heads[0]
    model = net.deployed(at, data.train_x[:2])
    assert isinstance(model, EarlyExitModel)
    return model, head


@pytest.mark.parametrize(("name", "kwargs", "at"), [("mobilenetv3_small_050", {}, "blocks.3"),
                                                     ("vit_tiny_patch16_224", VIT_KW, "blocks.1")])
def test_a_cut_model_round_trips_and_exports_to_onnx(tmp_path: Path, data, name: str, kwargs: dict,  # type: ignore[no-untyped-def]
                                                      at: str) -> None:
    import onnxruntime as ort

    from edgedistill.toolchain.vision.export.onnx import export_fp32

    model, head = _trained_cut(name, kwargs, at, data)
    full = create(name, 10, kwargs)
    assert sum(p.numel() for p in model.trunk.parameters()) < sum(p.numel() for p in full.parameters())
    path = tmp_path / "cut.safetensors"
    save_reference(model, ModelConfig(name=name, kwargs=kwargs), 10, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META])
    assert meta["exit"]["at"] == at and meta["exit"]["head"]["kind"] == "bottleneck"
    loaded = load_reference(path)
    x = data.test_x[:64]
    with torch.no_grad():
        want = model.eval()(x)
        assert torch.equal(loaded(x), want)  # the file alone rebuilds the cut model, without a pickle
    onnx_path = export_fp32(loaded, x[:1], tmp_path / "cut.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4 + 1e-5 * np.abs(want.numpy()).max()


def test_a_cut_model_converts_to_tflite(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("litert_torch")
    from edgedistill.runtimes import open_session
    from edgedistill.toolchain.vision.export.tflite import export_fp32

    model, _ = _trained_cut("mobilenetv3_small_050", {}, "blocks.3", data)
    path = export_fp32(model, data.test_x[:1], tmp_path / "cut.tflite", model_name="cut")
    x = data.test_x[:16]
    got = open_session("litert", path).run_all(x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 + 1e-5 * np.abs(want).max()


class _Doubles(nn.Module):
    """A model whose features are changed by code after its blocks (not by a module): it cannot be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
        self.head = nn.Linear(4, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((2, 3)))


def test_cutting_refuses_what_it_cannot_cut_exactly(data) -> None:  # type: ignore[no-untyped-def]
    from edgedistill.runtimes.early_exit import AuxHead

    with pytest.raises(ExitError, match=r"cannot cut _Doubles at 'blocks.1': its forward_features does more"):
        cut(_Doubles(), "blocks.1", AuxHead("linear", 4, 10), data.train_x[:2])
    with pytest.raises(ExitError, match=r"no module 'blocks.7': blocks has 2 items"):
        cut(_Doubles(), "blocks.7", AuxHead("linear", 4, 10), data.train_x[:2])


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda e: e.update(dropped=["__class__"]), "cannot drop '__class__'"),
    (lambda e: e.update(at="blocks.99"), "no module 'blocks.99'"),
    (lambda e: e["head"].update(in_channels=10**9), "exit.head.in_channels: expected an integer"),
    (lambda e: e.update(at="blocks[0]; import os"), "an exit is a top-level module"),
])
def test_a_tampered_exit_spec_is_refused_in_one_line(tmp_path: Path, data, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    from edgedistill.runtimes.base import RuntimeError_

    model, _ = _trained_cut("mobilenetv3_small_050", {}, "blocks.3", data)
    path = tmp_path / "cut.safetensors"
    save_reference(model, ModelConfig(name="mobilenetv3_small_050"), 10, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ref = json.loads(f.metadata()[META])
    edit(ref["exit"])
    save_file(load_file(str(path)), str(path), metadata={META: json.dumps(ref)})
    with pytest.raises(RuntimeError_) as err:
        load_reference(path)
    assert expected in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(("distill", "expected"), [
    ({"self_distill": {"enabled": True, "exits": ["blocks.9"]}},
     "distill.self_distill.exits: no module 'blocks.9': blocks has 6 items"),
    ({"self_distill": {"enabled": True, "exits": ["conv_stem.0"]}},
     "distill.self_distill.exits: 'conv_stem' in MobileNetV3 is a Conv2d, not a Sequential"),
    ({"self_distill": {"exits": ["blocks.2", "blocks.2"]}}, "distill.self_distill.exits: each exit once"),
    ({"self_distill": {"exits": ["blocks/2"]}}, "distill.self_distill.exits: 'blocks/2': an exit is a top-level"),
    ({"self_distill": {"enabled": True, "export_exit": "blocks.3"}},
     "distill.self_distill.export_exit: 'blocks.3' is not one of exits ['blocks.2', 'blocks.4']"),
    ({"self_distill": {"export_exit": "blocks.2"}}, "distill.self_distill.export_exit: no student trains exits"),
    ({"self_distill": {"temperature": 0}}, "distill.self_distill.temperature: Input should be greater than 0"),
    ({"self_distill": {"weight": 0, "ce_weight": 0}}, "distill.self_distill.weight: with ce_weight and "
                                                       "feature_weight also 0 the exits learn nothing"),
    ({"chain": {"assistants": [{"name": "resnet18"}]}, "mode": "online"},
     "distill.chain.assistants: each link learns from its predecessor's cached outputs; set mode: offline"),
    ({"chain": {"assistants": [{"name": "resnet18", "checkpoint": "a.safetensors"}]}},
     "distill.chain.assistants.0.checkpoint: assistants are distilled here"),
    ({"chain": {"assistants": [{"name": "no_such_net"}]}}, "distill.chain.assistants.0: unknown timm model"),
    ({"chain": {"self_distill": True}}, "distill.chain.self_distill: the chain has no assistants"),
    ({"self_distill": {"enabled": True, "with_teacher": True}, "mode": "online",
      "factor": {"weight": 1.0, "teacher_layer": "blocks.1"}},
     "distill.self_distill.with_teacher: factor transfer reaches self-distillation through the offline cache only"),
])
def test_bad_strategy_settings_are_one_line_naming_the_field(distill: dict, expected: str) -> None:
    r = tiny_recipe()
    r["student"] = {"name": "mobilenetv3_small_100"}
    r["distill"] = distill
    with pytest.raises(RecipeError) as err:
        parse_recipe(r, "r.yaml")
    msg = str(err.value)
    assert msg.startswith("r.yaml: ") and expected in msg and "\n" not in msg, msg


def _stages(recipe: dict, out: Path, names: tuple[str, ...] = ("data", "teacher", "distill")) -> str:
    from edgedistill.toolchain.pipeline import pipeline_of, run_stages
    from edgedistill.toolchain.rundir import RunDir

    parsed = parse_recipe(recipe, "r.yaml")
    log = io.StringIO()
    ctx = pipeline_of(parsed).context(parsed, RunDir(out), Console(file=log, width=200))
    run_stages(ctx, names)
    return log.getvalue()


@pytest.mark.slow
def test_a_tiny_chain_runs_link_by_link_and_a_second_run_skips(tmp_path: Path, _private_cache: Path) -> None:
    r = tiny_recipe(distill={"train": {"epochs": 1, "max_steps": 2}, "baseline": False,
                             "chain": {"assistants": [{"name": "mobilenetv3_small_100"}],
                                       "train": {"epochs": 1, "max_steps": 3}}})
    out = tmp_path / "run"
    log = _stages(r, out)
    assert "chain link teacher → assistant-1" in log and "chain link assistant-1 → student" in log
    info = json.loads((out / "manifest.json").read_text())["stages"]["distill"]["info"]
    links = info["assistant_chain"]["links"]
    assert [(lk["teacher"], lk["student"]) for lk in links] == [("teacher", "assistant-1"), ("assistant-1", "student")]
    assert links[0]["steps"] == 3 and links[1]["steps"] == 2  # chain.train for assistants, distill.train last
    for lk in links:
        assert lk["retention"] == pytest.approx(lk["student_test_accuracy"] / lk["teacher_test_accuracy"])
    assert links[1]["retention_vs_teacher"] == pytest.approx(
        links[1]["student_test_accuracy"] / links[0]["teacher_test_accuracy"])
    assert info["chain"]["test_accuracy"] == links[1]["student_test_accuracy"]
    # the assistant's outputs are cached under its own weights' hash, beside the teacher's
    a_sha = json.loads((out / "students/chain/assistant-1.json").read_text())["weights_sha256"]
    from edgedistill.toolchain.vision.distill.cache import cache_key

    data_hash = json.loads((out / "manifest.json").read_text())["stages"]["data"]["config_hash"]
    assert (_private_cache / "teacher" / f"teacher-{cache_key(a_sha, data_hash, None)[:24]}.safetensors").is_file()

    assert "distill: unchanged, skipped" in _stages(r, out)
    # another candidate added: the stage re-runs, but each finished link is kept (no link trains again)
    kept = {p: p.stat().st_mtime_ns for p in (out / "students/chain/assistant-1.safetensors",
                                             out / "students/chain.safetensors")}
    r["distill"]["self_distill"] = {"enabled": True, "exits": ["blocks.1"]}
    log = _stages(r, out)
    assert "self-distill student" in log and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    info = json.loads((out / "manifest.json").read_text())["stages"]["distill"]["info"]
    assert set(info["self_distill"]["exits"]) == {"blocks.1", "final"}
    _stages(r, out, ("report",))
    md = (out / "report.md").read_text()
    assert "## Teacher-assistant chain" in md and "| assistant-1 → student | mobilenetv3_small_100 → " in md
    assert "## Early exits of the self-distill student" in md
    report = json.loads((out / "report.json").read_text())
    assert report["distill"]["assistant_chain"]["links"] == info["assistant_chain"]["links"]
    assert {"chain-student", "self-distill-student"} <= {m["name"] for m in report["models"]}


@pytest.mark.slow
def test_a_cut_self_distilled_student_is_the_one_shipped(tmp_path: Path) -> None:
    """``export_exit`` set: the student cut there ships, is exported and its parity is checked against itself."""
    r = tiny_recipe(distill={"train": {"epochs": 1, "max_steps": 2},
                             "self_distill": {"enabled": True, "exits": ["blocks.1", "blocks.3"],
                                              "export_exit": "blocks.3"}},
                    export={"formats": ["onnx"], "onnx": {"variants": ["fp32"]}, "teacher": False})
    out = tmp_path / "run"
    log = _stages(r, out, ("data", "teacher", "distill", "export"))
    assert "shipping the self-distill student: distill.self_distill.export_exit: blocks.3 deploys the cut model" in log
    art = json.loads((out / "export/artifacts.json").read_text())
    assert art[0]["source"] == "self-distill" and art[0]["parity"]["ok"]
    shipped = load_reference(out / "students/self-distill.safetensors")
    assert isinstance(shipped, EarlyExitModel) and shipped.at == "blocks.3"
    meta = json.loads((out / "students/self-distill.json").read_text())
    assert meta["deployed_exit"] == "blocks.3" and meta["val_accuracy"] == meta["exits"]["blocks.3"]["val_accuracy"]
    assert meta["params"] == sum(p.numel() for p in shipped.parameters())


def test_builtin_chain_recipe_loads_and_opens_with_its_command() -> None:
    from edgedistill.toolchain.recipe import builtin_text, load_recipe

    r = load_recipe("vit-ta-mobilenet")
    assert [a.name for a in r.distill.chain.assistants] and r.distill.chain.assistants[0].name != r.student.name
    first = builtin_text("vit-ta-mobilenet").splitlines()
    assert any("edgedistill run vit-ta-mobilenet" in line for line in first[:4])
    assert yaml.safe_load(builtin_text("vit-ta-mobilenet"))["name"] == "vit-ta-mobilenet"
