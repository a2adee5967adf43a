"""LoRA / QLoRA students through PEFT: the merged weights are W + (alpha/r)·B·A, only the adapters train, KD
converges through them, the merged student is a plain Llama folder, and an adapter checkpoint resumes to the same
weights; QLoRA's NF4 base where bitsandbytes has the kernels here, and one clear line where it has not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgedistill.toolchain.llm import lora as lora_mod
from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key
from edgedistill.toolchain.llm.distill.kd import kd_step, train_kd
from edgedistill.toolchain.llm.models import build_llama
from edgedistill.toolchain.llm.recipe import KDLossConfig, LlamaArch, LMTrainConfig, LoRAConfig
from edgedistill.toolchain.llm.train import collate, train_lm
from edgedistill.toolchain.recipe import RecipeError, load_recipe
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

#: a narrow random student over the tiny teacher's tokenizer: KD needs only the shared vocabulary, and at h64 a
#: training step costs a few milliseconds
STUDENT = LlamaArch(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256)
SMALL = LlamaArch(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _nf4_or_skip() -> None:
    why = lora_mod.nf4_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(f"QLoRA not testable here: {why}")


def _student(tiny: TinyLM) -> torch.nn.Module:
    tok = tiny.tok
    return build_llama(STUDENT, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def _randomise_b(peft_model: torch.nn.Module) -> None:
    """LoRA starts with B = 0 (a no-op); give the update a value so the merge has something to add."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("quantize", ["none", "4bit"])
def test_merged_weights_are_base_plus_scaled_ba(quantize: str) -> None:
    """W' = W + (alpha/r)·B·A on every target module (W: the NF4 weight dequantized under QLoRA), exact to 1e-6;
    the merged model is the object given, with plain nn.Linear layers and its parameters trainable again."""
    if quantize == "4bit":
        _nf4_or_skip()
    from bitsandbytes.functional import dequantize_4bit

    model = build_llama(SMALL, 96, 1, 2, 0)
    ref_logits_input = torch.randint(3, 96, (2, 12))
    cfg = LoRAConfig(enabled=True, r=4, alpha=8, quantize=quantize)
    adapted = lora_mod.attach(model, cfg)
    _randomise_b(adapted.peft)
    expected = {}
    for name, m in adapted.peft.named_modules():
        if name.endswith(("q_proj", "down_proj")) and hasattr(m, "lora_A"):
            w = m.base_layer.weight
            base = dequantize_4bit(w.data, w.quant_state) if quantize == "4bit" else w.detach()
            assert (w.dtype == torch.uint8) == (quantize == "4bit")  # the base really is 4-bit under QLoRA
            a, b = m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach()
            expected[name.removeprefix("base_model.model.")] = base.float() + (8 / 4) * (b @ a)
    with torch.no_grad():
        adapted.peft.eval()
        before = adapted.peft(input_ids=ref_logits_input).logits
    merged = lora_mod.merge(adapted)
    assert merged is model and len(expected) == 2 * SMALL.num_hidden_layers
    mods = dict(merged.named_modules())
    for name, w in expected.items():
        assert type(mods[name]) is torch.nn.Linear
        assert (mods[name].weight - w).abs().max() <= 1e-6, name
    assert all(type(m) is torch.nn.Linear for n, m in mods.items() if n.endswith(TARGETS))
    assert not [n for n in mods if "lora" in n] and all(p.requires_grad for p in merged.parameters())
    with torch.no_grad():  # the merged model computes what the adapted one did
        assert (merged(input_ids=ref_logits_input).logits - before).abs().max() < 1e-4


def test_only_adapter_parameters_get_gradients(tiny_lm: TinyLM) -> None:  # noqa: F811
    data = tiny_lm.train[:4]
    adapted = lora_mod.attach(_student(tiny_lm), LoRAConfig(enabled=True, r=8, alpha=16))
    fn = kd_step(adapted.peft, data, KDLossConfig(), 64, teacher=tiny_lm.model.eval(), vocab=len(tiny_lm.tok))
    batch = collate(data, tiny_lm.tok.pad_token_id)
    fn(list(range(4)), batch).backward()
    got = {n for n, p in adapted.peft.named_parameters() if p.grad is not None}
    lora = {n for n, _ in adapted.peft.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert got == lora and len(lora) == 2 * len(TARGETS)
    # r·(in + out) per target: q and o 64↔64, k and v 64→32 (2 KV heads of 16), gate/up/down 64↔128
    assert adapted.trainable == 8 * (2 * 128 + 2 * 96 + 3 * 192) == sum(p.numel() for p in adapted.peft.parameters()
                                                                       if p.requires_grad)


@pytest.mark.parametrize("quantize", ["none", "4bit"])
def test_kd_through_adapters_lowers_the_loss_and_saves_a_plain_llama(tiny_lm: TinyLM, tmp_path: Path,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    quantize: str) -> None:
    """Offline top-k KD through LoRA (and QLoRA): the loss falls, the targets' weights move while every other
    weight (embeddings, norms, head) stays bit-identical, and the merged student saves as a plain HF Llama folder
    that loads with peft unimportable and computes the same logits."""
    if quantize == "4bit":
        _nf4_or_skip()
    tok, data = tiny_lm.tok, tiny_lm.train[:8]
    cache, _ = build_cache(cache_key("t", data, 8, 1.0), tmp_path / "cache", data, tok.pad_token_id, len(tok), 8,
                           1.0, lambda: tiny_lm.model, shard_tokens=10_000)
    student = _student(tiny_lm)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    cfg = LoRAConfig(enabled=True, r=8, alpha=16, quantize=quantize)
    res = train_kd(student, data, KDLossConfig(alpha=1.0), LMTrainConfig(steps=20, batch_size=8, lr=1e-2,
                   warmup_steps=1), 0, tok.pad_token_id, 64, tmp_path / "state.pt", cache=cache, lora=cfg)
    losses = [h["loss"] for h in res.history]
    # a random h64 student: frozen embeddings and head bound it. A 10-step run ended at x0.935 (a 1.5% margin left
    # to a CPU's rounding and the fixture's teacher); a 30-step one passed x0.941, 0.922, 0.910 at steps 10, 20, 30
    # (AMD EPYC; LoRA and QLoRA within 0.001 of each other)
    assert losses[-1] < 0.95 * losses[0], losses
    assert res.lora is not None and res.lora["quantize"] == quantize
    assert res.trainable_params == res.lora["trainable_params"] == 8192  # as counted in the test above
    assert res.lora["params"] == sum(p.numel() for p in student.parameters())
    after = dict(student.named_parameters())
    assert set(after) == set(before)  # no adapter left behind
    for n, p in after.items():
        if n.rsplit(".", 1)[0].endswith(TARGETS):
            assert not torch.equal(p, before[n]), n  # merged update (and, under QLoRA, the NF4 rounding)
        else:
            assert torch.equal(p, before[n]), n
    folder = tmp_path / "student"
    student.save_pretrained(str(folder), safe_serialization=True)
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises: the folder must not need it
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    assert type(loaded) is LlamaForCausalLM
    ids = torch.tensor([data[0].input_ids])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


def test_sft_student_trains_through_adapters_too(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """The black-box SFT student takes the same `student.lora` path (one place: `train_lm`)."""
    from edgedistill.toolchain.llm.distill.sft import train_sft

    student = _student(tiny_lm)
    embed = student.get_input_embeddings().weight.detach().clone()
    pairs = [(e.prompt, e.completion) for e in tiny_lm.train_examples[:4]]
    res = train_sft(student, tiny_lm.tok, pairs, LMTrainConfig(steps=2, batch_size=2, warmup_steps=1),
                    tmp_path / "sft.pt", 0, 160, lora=LoRAConfig(enabled=True, r=2, target_modules=["o_proj"]))
    assert res.lora is not None and res.trainable_params == 2 * (64 + 64)
    assert not [n for n, _ in student.named_modules() if "lora" in n]
    assert torch.equal(student.get_input_embeddings().weight, embed)


def test_adapter_checkpoint_resumes_to_the_same_student(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """A run killed after its step-3 checkpoint resumes from it (adapters, optimiser, schedule, RNG: dropout draws
    too) to bit-identical merged weights; the checkpoint holds the adapters only."""
    tok, data = tiny_lm.tok, tiny_lm.train[:16]
    cfg = LMTrainConfig(steps=6, batch_size=4, lr=5e-3, warmup_steps=1, checkpoint_every=3)
    lora = LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"])
    ref = _student(tiny_lm)
    train_lm(ref, data, cfg, 0, tok.pad_token_id, tmp_path / "ref.pt", lora=lora)

    class Killed(Exception):
        pass

    def dies_at_step_4(model: torch.nn.Module):  # type: ignore[no-untyped-def]
        calls = []

        def loss(_idx: list[int], b: dict[str, torch.Tensor]) -> torch.Tensor:
            calls.append(1)
            if len(calls) == 4:
                raise Killed
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        return loss

    ckpt = tmp_path / "killed.pt"
    with pytest.raises(Killed):
        train_lm(_student(tiny_lm), data, cfg, 0, tok.pad_token_id, ckpt, loss=dies_at_step_4, lora=lora)
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert blob["step"] == 3 and blob["model"] and all(".lora_A." in k or ".lora_B." in k for k in blob["model"])
    resumed = _student(tiny_lm)
    res = train_lm(resumed, data, cfg, 0, tok.pad_token_id, ckpt, lora=lora)
    assert res.resumed_from == 3 and res.steps == 6
    for (n, a), (_, b) in zip(ref.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_lora_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where bitsandbytes cannot hold NF4 weights, QLoRA stops before training with one line naming the field, the
    reason and what to use; so does a target module the student does not have; the recipe rejects combinations
    that cannot train."""
    monkeypatch.setattr(lora_mod, "nf4_unavailable", lambda device: "bitsandbytes 0.0 has no NF4 kernels for cpu")
    with pytest.raises(lora_mod.LoRAError) as err:
        lora_mod.attach(build_llama(SMALL, 96, 1, 2, 0), LoRAConfig(enabled=True, quantize="4bit"))
    assert str(err.value) == ("student.lora.quantize: 4bit cannot run here: bitsandbytes 0.0 has no NF4 kernels for "
                              "cpu; use student.lora.quantize: none (LoRA on the float weights)")
    with pytest.raises(lora_mod.LoRAError, match=r"^student.lora.target_modules: the student has no linear layer "
                                                 r"named \['qkv'\]; its linear layers are \['down_proj', "):
        lora_mod.attach(build_llama(SMALL, 96, 1, 2, 0), LoRAConfig(enabled=True, target_modules=["q_proj", "qkv"]))
    dotted = lora_mod.attach(build_llama(SMALL, 96, 1, 2, 0), LoRAConfig(enabled=True, r=2,
                                                                         target_modules=["self_attn.q_proj"]))
    assert dotted.trainable == 2 * (64 + 64) * SMALL.num_hidden_layers  # PEFT's dotted-suffix names work too
    from importlib import resources

    base = yaml.safe_load(resources.files("edgedistill.toolchain.recipes").joinpath("tiny-llama.yaml").read_text())
    for student, distill, expected in [
        ({"lora": {"quantize": "4bit"}}, {}, "student.lora.quantize: 4bit quantizes the base under LoRA adapters; "
                                             "set enabled: true"),
        ({"lora": {"enabled": True}}, {"parallel": "fsdp", "num_processes": 2},
         "student.lora: not supported with distill.parallel: fsdp"),
        ({"lora": {"enabled": True, "quantize": "4bit"}}, {"parallel": "ddp", "num_processes": 2},
         "student.lora.quantize: 4bit trains in one process"),
    ]:
        r = yaml.safe_load(yaml.safe_dump(base))
        r["student"].update(student)
        r["distill"].update(distill)
        (tmp_path / "my.yaml").write_text(yaml.safe_dump(r))
        with pytest.raises(RecipeError) as err:
            load_recipe(tmp_path / "my.yaml")
        assert str(err.value).replace(f"{tmp_path}/", "").startswith(f"my.yaml: {expected}"), str(err.value)
        assert "\n" not in str(err.value)
    r = yaml.safe_load(yaml.safe_dump(base))
    r["student"]["lora"] = {"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"]}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(r))
    ok = load_recipe(tmp_path / "ok.yaml")
    assert ok.student.lora.r == 4 and ok.student.lora.alpha == 16 and ok.student.lora.quantize == "none"
    assert load_recipe("tiny-llama").student.lora.enabled is False  # full fine-tuning unless asked


@pytest.mark.slow
def test_distill_stage_trains_lora_students(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """`edgedistill distill` with `student.lora`: the CE-only baseline and the KD student train through QLoRA
    adapters, their metadata and the stage's info give trainable vs total parameters, and the saved students are
    plain Llama folders (the export contract's input)."""
    from tests.test_pipelines import _distill, _llm_recipe, _new_run

    quantize = "none" if lora_mod.nf4_unavailable(torch.device("cpu")) else "4bit"
    recipe = _llm_recipe(tiny_lm)
    recipe["student"]["lora"] = {"enabled": True, "r": 4, "alpha": 8, "quantize": quantize}
    recipe["distill"]["train"].update(steps=3, checkpoint_every=2)
    run = _new_run(tmp_path / "run", recipe)
    p = _distill(run)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    info = manifest["stages"]["distill"]["info"]["students"]
    for name in ("baseline", "kd-fkl"):
        meta = json.loads((run / "students" / f"{name}.json").read_text())
        assert meta["lora"]["quantize"] == quantize and meta["lora"]["r"] == 4
        assert meta["trainable_params"] == meta["lora"]["trainable_params"] < meta["params"]
        assert info[name]["trainable_params"] == meta["trainable_params"] and info[name]["params"] == meta["params"]
        assert sorted(f.name for f in (run / "students" / name).iterdir()) == [
            "config.json", "generation_config.json", "model.safetensors"]
        assert f"{name}: val NLL" in err and "params trained" in err


@pytest.mark.slow
def test_ddp_lora_student_matches_one_process(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """`distill.parallel: ddp` with LoRA: the adapters train under DDP (2 gloo ranks) to the one-process curve."""
    from tests.test_pipelines import LOSS_MATCH_RTOL, _distill, _llm_recipe, _new_run

    histories = {}
    for name, extra in (("one", {}), ("two", {"parallel": "ddp", "num_processes": 2})):
        r = _llm_recipe(tiny_lm, baseline=False, **extra) | {"name": name}
        r["student"]["lora"] = {"enabled": True, "r": 4, "alpha": 8}
        r["distill"]["train"]["steps"] = 12
        p = _distill(_new_run(tmp_path / name, r))
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        histories[name] = json.loads((tmp_path / name / "students" / "kd-fkl.json").read_text())
    assert histories["two"]["processes"] == 2 and histories["two"]["lora"]["r"] == 4
    one = [h["loss"] for h in histories["one"]["history"]]
    two = [h["loss"] for h in histories["two"]["history"]]
    assert len(one) == len(two) > 2 and two == pytest.approx(one, rel=LOSS_MATCH_RTOL)


def test_report_gives_trainable_params_and_adapters() -> None:
    """Student rows carry trainable vs total parameters (all of them under full fine-tuning) and the Markdown says
    which students trained through adapters; a run without LoRA gets no such section."""
    from edgedistill.toolchain.llm.report import ReportInputs, build, to_markdown

    lora = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "quantize": "4bit",
            "trainable_params": 2048, "params": 102400}
    students = {"baseline": {"role": "baseline", "params": 102400, "trainable_params": 102400, "lora": None},
                "kd": {"role": "kd", "params": 102400, "trainable_params": 2048, "lora": lora},
                "old": {"role": "kd", "params": 5}}  # metadata written before LoRA existed
    rep = build(ReportInputs("r", "d", {}, students, None, None, {}, 1, 0.02))
    rows = {r["name"]: r for r in rep["models"]}
    assert rows["kd-student"]["trainable_params"] == 2048 and rows["kd-student"]["lora"]["quantize"] == "4bit"
    assert rows["baseline-student"]["trainable_params"] == 102400 and rows["baseline-student"]["lora"] is None
    assert rows["old-student"]["trainable_params"] == 5
    md = to_markdown(rep)
    assert ("- kd-student: LoRA r=8, alpha=16 on q_proj, v_proj, base weights NF4 (QLoRA) while training; 2,048 of "
            "102,400 parameters trained (2.00%), adapters merged before export") in md
    assert "baseline-student: LoRA" not in md
    students["kd"]["lora"] = None
    assert "trained through adapters" not in to_markdown(build(ReportInputs("r", "d", {}, students, None, None, {},
                                                                            1, 0.02)))


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families_merge_with_biases_and_tied_embeddings(family: str) -> None:
    """Qwen2 (bias on q/k/v) and Mistral with tied embeddings, under LoRA and QLoRA: the merged model computes what
    the adapted one did, keeps its biases and its tied head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for quantize in ("none", "4bit"):
        if quantize == "4bit" and lora_mod.nf4_unavailable(torch.device("cpu")):
            continue
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(family, vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        model, ids = AutoModelForCausalLM.from_config(cfg), torch.randint(0, 96, (2, 10))
        adapted = lora_mod.attach(model, LoRAConfig(enabled=True, r=4, quantize=quantize))
        _randomise_b(adapted.peft)
        with torch.no_grad():
            before = adapted.peft.eval()(input_ids=ids).logits
            merged = lora_mod.merge(adapted)
            assert (merged(input_ids=ids).logits - before).abs().max() < 1e-5, (family, quantize)
        assert (merged.model.layers[0].self_attn.q_proj.bias is not None) == (family == "qwen2")
        assert merged.lm_head.weight is merged.model.embed_tokens.weight
