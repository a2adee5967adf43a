"""Distillation strategies users combine (LLM): a multi-teacher ensemble (its cached top-k is the top-k of the
weighted mean of the teachers' distributions; a teacher with another vocabulary is one clear line) and
self-distillation with early exits (exits learn the final layer's detached distribution; cut at an exit, the model
is a plain HF Llama with fewer layers and the exit's logits)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key, positions, teacher_topk
from edgedistill.toolchain.llm.distill.kd import _gather, kd_step, self_distill_step, train_self_distill
from edgedistill.toolchain.llm.distill.losses import chunked_self_distill_loss, self_distill_token_loss
from edgedistill.toolchain.llm.models import EarlyExitLM, ModelError, check_same_vocab, cut_at_exit, load_causal_lm
from edgedistill.toolchain.llm.recipe import KDLossConfig, LMTrainConfig, SelfDistillConfig
from edgedistill.toolchain.llm.train import collate
from edgedistill.toolchain.recipe import RecipeError, load_recipe
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

#: float32 log-probs computed two ways (mixture in log space vs probabilities summed in float64)
LOGP_ATOL = 1e-5
WEIGHTS = [0.7, 0.3]


def _second_teacher(tiny: TinyLM) -> torch.nn.Module:
    """Another peaked teacher over the same vocabulary: the tiny model with a perturbed head."""
    other = copy.deepcopy(tiny.model).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn(other.lm_head.weight.shape, generator=g) * 0.5)
    return other


@torch.no_grad()
def _mixture_probs(teachers: list[torch.nn.Module], ids: list[int], pos: list[int], temperature: float,
                   weights: list[float]) -> torch.Tensor:
    """``Σ w_i softmax(z_i / T)`` in float64 at ``pos``, straight from each teacher's full forward pass."""
    x = torch.tensor([ids])
    probs = [torch.softmax(t(x).logits[0, pos].double() / temperature, -1) for t in teachers]
    return sum(w * p for w, p in zip(weights, probs, strict=True))  # type: ignore[return-value]


def test_ensemble_cache_is_the_weighted_mean_of_the_teachers(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    teachers = [tiny_lm.model.eval(), _second_teacher(tiny_lm)]
    data, tok, k, temp = tiny_lm.train[:6], tiny_lm.tok, 8, 2.0
    # one teacher keys as before; an ensemble by every teacher's hash, in order, and the weights
    one = cache_key("a", data, k, temp)
    assert cache_key(["a"], data, k, temp) == one
    key = cache_key(["a", "b"], data, k, temp, WEIGHTS)
    assert len({one, key, cache_key(["b", "a"], data, k, temp, WEIGHTS), cache_key(["a", "b"], data, k, temp)}) == 4
    # the rows a cache is made of: top-k of the weighted mean of probabilities, exact
    vals, idx = teacher_topk(teachers, data, tok.pad_token_id, k, temp, len(tok), WEIGHTS)
    want = torch.cat([_mixture_probs(teachers, e.input_ids, positions(e), temp, WEIGHTS) for e in data])
    top = want.topk(k, -1)
    assert torch.equal(idx, top.indices)
    assert torch.allclose(vals.double(), top.values.log(), atol=LOGP_ATOL, rtol=0)
    rest = 1 - vals.double().exp().sum(-1)  # what the loss takes as the remainder bin
    assert torch.allclose(rest, want.sum(-1) - top.values.sum(-1), atol=LOGP_ATOL, rtol=0)
    assert (rest > 0.01).all()  # a real remainder: the test is not trivially top-k = everything
    # stored: the same rows at float16 precision, and the remainder consistent with them
    cache, hit = build_cache(key, tmp_path, data, tok.pad_token_id, len(tok), k, temp, lambda: teachers, 10_000,
                             batch_size=4, weights=WEIGHTS)
    assert not hit and cache.index["teachers"] == 2 and cache.index["weights"] == WEIGHTS
    assert torch.equal(cache.idx.long(), top.indices)
    half_ulp = top.values.log().abs() * 2.0**-11 + 1e-7
    assert ((cache.logp.double() - top.values.log()).abs() <= half_ulp).all()
    assert torch.allclose(1 - cache.logp.double().exp().sum(-1), rest, atol=1e-3, rtol=0)
    # a single-teacher mixture is that teacher's own distribution (what the cache held before ensembles)
    v1, _ = teacher_topk(teachers[0], data, tok.pad_token_id, k, temp, len(tok))
    single = torch.cat([_mixture_probs(teachers[:1], e.input_ids, positions(e), temp, [1.0]) for e in data])
    assert torch.allclose(v1.double(), single.topk(k, -1).values.log(), atol=LOGP_ATOL, rtol=0)


def test_online_ensemble_kd_averages_probabilities(tiny_lm: TinyLM) -> None:  # noqa: F811
    """Online mode mixes the teachers on the fly: the loss is T²·KL(Σ w_i p_i ‖ p_student), position-averaged."""
    teachers = [tiny_lm.model.eval(), _second_teacher(tiny_lm)]
    data, tok, temp = tiny_lm.train[:4], tiny_lm.tok, 2.0
    student = copy.deepcopy(tiny_lm.model).eval()
    with torch.no_grad():
        student.lm_head.weight.mul_(0.5)
    cfg = KDLossConfig(divergence="forward_kl", temperature=temp, alpha=1.0)
    got = kd_step(student, data, cfg, 64, teacher=teachers, vocab=len(tok), weights=WEIGHTS)(
        list(range(4)), collate(data, tok.pad_token_id))
    kl, n = 0.0, 0
    with torch.no_grad():
        for e in data:
            p = _mixture_probs(teachers, e.input_ids, positions(e), temp, WEIGHTS)
            q = torch.log_softmax(student(torch.tensor([e.input_ids])).logits[0, positions(e)].double() / temp, -1)
            kl += float((p * (p.log() - q)).sum())
            n += len(positions(e))
    assert float(got.detach()) == pytest.approx(temp**2 * kl / n, rel=1e-4)


def test_ensemble_teacher_with_another_vocabulary_is_one_line(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    from edgedistill.toolchain.llm.tokenizer import train_bpe

    other = tmp_path / "other"
    tok2 = train_bpe((e.prompt + e.completion for e in tiny_lm.train_examples[:100]), 600, other)
    tiny_lm.model.save_pretrained(str(other), safe_serialization=True)  # as many rows, another tokenizer
    assert len(tok2) != len(tiny_lm.tok) or tok2.get_vocab() != tiny_lm.tok.get_vocab()
    with pytest.raises(ModelError) as err:
        check_same_vocab(tiny_lm.tok, other, "teacher.ensemble.1")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"teacher.ensemble.1 ({other}): vocabulary differs from the main "
                                              "teacher's"), msg
    check_same_vocab(tiny_lm.tok, tiny_lm.dir, "teacher.ensemble.0")  # the same tokenizer passes
    bare = tmp_path / "bare"  # weights without the tokenizer they were trained with: nothing to compare
    tiny_lm.model.save_pretrained(str(bare), safe_serialization=True)
    for folder, start in ((bare, f"teacher.ensemble.2 ({bare}): no tokenizer files"),
                          (tmp_path / "nope", f"teacher.ensemble.2: {tmp_path / 'nope'}: not a Hugging Face")):
        with pytest.raises(ModelError) as err:
            check_same_vocab(tiny_lm.tok, folder, "teacher.ensemble.2")
        assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)


def test_pipeline_names_the_mismatching_teacher_in_one_line(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """`edgedistill distill` with an ensemble teacher of another tokenizer: exit 2, one line, before any training."""
    from edgedistill.toolchain.llm.tokenizer import train_bpe
    from tests.test_bad_inputs import _one_line_exit_2
    from tests.test_cli import cli

    other = tmp_path / "other"
    train_bpe((e.prompt + e.completion for e in tiny_lm.train_examples[:100]), 600, other)
    tiny_lm.model.save_pretrained(str(other), safe_serialization=True)
    run = tmp_path / "run"
    run.mkdir()
    doc = _llm_doc(tiny_lm, teacher={"ensemble": [{"path": str(tiny_lm.dir)}, {"path": str(other)}]})
    (run / "recipe.yaml").write_text(yaml.safe_dump(doc))
    res = cli("distill", "--out", str(run))
    _one_line_exit_2(res, f"teacher.ensemble.1 ({other}): vocabulary differs from the main teacher's")
    assert not (run / "students").exists()


def _llm_doc(tiny: TinyLM, **over: dict) -> dict:
    arch = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256}
    doc = {"kind": "llm", "name": "strategies",
           "data": {"kind": "legal-briefs", "n_examples": 60, "val_fraction": 0.1, "test_fraction": 0.1,
                    "max_length": 160},
           "tokenizer": {"kind": "local", "path": str(tiny.dir)},
           "teacher": {"path": str(tiny.dir)},
           "student": {"arch": {**arch, "num_hidden_layers": 2}, "selection_samples": 2},
           "distill": {"top_k": 8, "losses": [{"name": "kd-fkl"}],
                       "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1}},
           "blackbox": {"enabled": False},
           "export": {"gguf": ["f32"], "fidelity_samples": 2, "teacher": []},
           "bench": {"max_new_tokens": 8}}
    for section, value in over.items():
        doc[section] = {**doc[section], **value}
    return doc


@pytest.mark.parametrize(("over", "expected"), [
    ({"teacher": {"ensemble": [{"path": "x"}], "ensemble_weights": [1.0]}},
     "teacher.ensemble_weights: expected 2 (the main teacher, then each of teacher.ensemble), got 1"),
    ({"teacher": {"path": None, "ensemble": [{"seed": 0}]}},
     "teacher.ensemble.0: identical to the main teacher (same arch, train and seed 0); give it another seed"),
    ({"teacher": {"ensemble": [{"path": "x", "seed": 3}]}}, "teacher.ensemble.0.path: a local teacher takes no"),
    ({"teacher": {"ensemble": [{"path": "x"}], "ensemble_weights": [1.0, 0.0]}}, "teacher.ensemble_weights.1: "),
    ({"distill": {"self_distill": {"enabled": True, "exits": [2]}}},
     "distill.self_distill.exits: [2] not below the student's 2 layers"),
    ({"distill": {"self_distill": {"enabled": True, "exits": [1], "export_exit": 2}}},
     "distill.self_distill.export_exit: 2 is not one of exits [1]"),
    ({"distill": {"self_distill": {"enabled": True, "kd_loss": "kd"}}},
     "distill.self_distill.kd_loss: 'kd' is not one of losses ['kd-fkl']"),
    ({"distill": {"self_distill": {"enabled": True, "name": "kd-fkl"}}},
     "distill.self_distill.name: 'kd-fkl' already names another student"),
    ({"distill": {"parallel": "ddp", "num_processes": 2, "self_distill": {"enabled": True}}},
     "distill.self_distill: trains in one process"),
])
def test_strategy_options_are_one_line_errors(tiny_lm: TinyLM, tmp_path: Path, over: dict,  # noqa: F811
                                              expected: str) -> None:
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(_llm_doc(tiny_lm, **over)))
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    msg = str(err.value).replace(f"{tmp_path}/", "")
    assert msg.startswith(f"my.yaml: {expected}") and "\n" not in msg, msg


def test_defaults_keep_the_recipe_as_it_was() -> None:
    r = load_recipe("tiny-llama")
    assert r.teacher.ensemble == [] and r.teacher.weights() == [1.0]
    sd = r.distill.self_distill
    assert not sd.enabled and sd.exits == [1] and sd.weight == 1.0 and sd.temperature == 1.0
    assert sd.export_exit is None and sd.candidate_names() == []


# -- self-distillation -------------------------------------------------------------------------------------------
def test_exit_learns_the_final_layers_detached_distribution(tiny_lm: TinyLM) -> None:  # noqa: F811
    """With CE weight 0, the exit's gradient is T·(p_exit − p_final)/N from the final layer's distribution alone,
    and nothing flows back into the final logits (the target is detached)."""
    g = torch.Generator().manual_seed(0)
    zf = torch.randn(5, 11, generator=g, requires_grad=True)
    zx = torch.randn(5, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (5,), generator=g)
    t = 2.0
    self_distill_token_loss(zf, [zx], labels, t, weight=1.0, ce_weight=0.0).backward()
    want = t * (torch.softmax(zx.detach() / t, -1) - torch.softmax(zf.detach() / t, -1))
    assert torch.allclose(zx.grad, want, atol=1e-6) and zf.grad is None
    # in the model: the exit's loss trains layer 1 (under the exit) and never layer 2 (above it)
    model = EarlyExitLM(copy.deepcopy(tiny_lm.model), [1])
    data = tiny_lm.train[:4]
    cfg = SelfDistillConfig(enabled=True, exits=[1], ce_weight=0.0, temperature=t)
    loss = self_distill_step(model, data, cfg, 64, vocab=len(tiny_lm.tok))
    model.zero_grad()
    loss(list(range(4)), collate(data, tiny_lm.tok.pad_token_id)).backward()
    assert model.student.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    model.zero_grad()
    # the exit term alone (final loss 0): layer 2 gets exactly no gradient
    b = collate(data, tiny_lm.tok.pad_token_id)
    pos = [positions(e) for e in data]
    final, exits = model(b["input_ids"], b["attention_mask"])
    h, y = _gather(final, b["input_ids"], pos)
    hx = _gather(exits[0], b["input_ids"], pos)[0]
    chunked_self_distill_loss(h, [hx], model.student.lm_head, [model.norm(1)], y, lambda z, _t, _y: z.sum() * 0,
                              t, 1.0, 0.0, 64).backward()
    layer = {n: p.grad for n, p in model.named_parameters() if ".layers." in n}
    assert all(v is None or not v.any() for n, v in layer.items() if ".layers.1." in n)
    assert any(v is not None and v.any() for n, v in layer.items() if ".layers.0." in n)


def test_self_distill_loss_decreases_and_combines_with_the_teacher(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    tok, data = tiny_lm.tok, tiny_lm.train[:32]
    cfg = SelfDistillConfig(enabled=True, exits=[1], exit_norm="per-exit", ce_weight=0.0)
    model = EarlyExitLM(copy.deepcopy(tiny_lm.model), [1], per_exit_norm=True)
    batch, idx = collate(data[:8], tok.pad_token_id), list(range(8))

    def exit_loss() -> float:
        with torch.no_grad():
            model.eval()
            return float(self_distill_step(model, data, cfg, 64, vocab=len(tok))(idx, batch))

    before = exit_loss()
    # a trend, not a step: over 5 steps the exit loss rose or fell by CPU rounding and data order (x0.98 to x1.21
    # over seeds 0-3 here; 2.61 -> 2.76 on a Xeon), over 40 it falls to x0.41-0.43 for every seed (AMD EPYC,
    # 1 thread; tests/llm_fixtures.py's student), a margin that a CPU's rounding does not cross
    train = LMTrainConfig(steps=40, batch_size=4, lr=2e-3, warmup_steps=1)
    res = train_self_distill(model, data, cfg, train, 0, tok.pad_token_id, 64, tmp_path / "sd.pt", vocab=len(tok))
    after = exit_loss()
    assert res.steps == 40 and after < 0.6 * before, (before, after)
    # with a teacher's top-k KD on the final layer (offline cache), and an ensemble of two
    kd = KDLossConfig(name="kd-fkl", temperature=1.0, alpha=0.5)
    key = cache_key(["t", "u"], data, 8, 1.0, WEIGHTS)
    cache, _ = build_cache(key, tmp_path, data, tok.pad_token_id, len(tok), 8, 1.0,
                           lambda: [tiny_lm.model, _second_teacher(tiny_lm)], 10_000, weights=WEIGHTS)
    train = LMTrainConfig(steps=2, batch_size=4, lr=2e-3, warmup_steps=1)
    res = train_self_distill(EarlyExitLM(copy.deepcopy(tiny_lm.model), [1]), data, cfg, train, 0, tok.pad_token_id,
                             64, tmp_path / "sd-kd.pt", kd=kd, cache=cache, vocab=len(tok))
    assert res.steps == 2 and all(h["loss"] == h["loss"] for h in res.history)  # finite


@pytest.mark.parametrize("exit_norm", ["shared", "per-exit"])
def test_cut_model_is_a_plain_llama_with_the_exits_logits(tiny_lm: TinyLM, tmp_path: Path,  # noqa: F811
                                                          exit_norm: str) -> None:
    model = EarlyExitLM(copy.deepcopy(tiny_lm.model), [1], per_exit_norm=exit_norm == "per-exit").eval()
    if model.norms is not None:
        with torch.no_grad():  # an exit norm of its own, unlike the final one
            model.norm(1).weight.mul_(torch.linspace(0.5, 1.5, model.norm(1).weight.numel()))
    cut = cut_at_exit(model, 1)
    cut.save_pretrained(str(tmp_path / "cut"), safe_serialization=True)
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 1
    assert tiny_lm.model.config.num_hidden_layers == 2
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["config.json", "generation_config.json",
                                                                     "model.safetensors"]
    loaded = load_causal_lm(tmp_path / "cut").eval()
    ids = torch.tensor([tiny_lm.train[0].input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.exit_logits(ids, 1), atol=1e-5)
        assert torch.allclose(model.exit_logits(ids, 2), tiny_lm.model(ids).logits, atol=1e-5)  # the final head
    with pytest.raises(ModelError, match="export_exit: 3 is not a trained exit"):
        cut_at_exit(model, 3)
    with pytest.raises(ModelError, match=r"exits: \[2\] not in 1 … 1"):
        EarlyExitLM(tiny_lm.model, [2])


@pytest.mark.slow
def test_pipeline_runs_an_ensemble_and_a_self_distilled_student(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """`edgedistill distill` with a second teacher trained here and self-distillation (with the ensemble's KD on the
    final layer, cut at exit 1): both students are candidates; a re-run reuses everything."""
    from tests.test_cli import cli

    arch = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "num_hidden_layers": 1}
    doc = _llm_doc(tiny_lm, teacher={"ensemble": [{"arch": arch, "seed": 5,
                                                   "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1}}],
                                     "ensemble_weights": [3, 1]},
                   distill={"self_distill": {"enabled": True, "exits": [1], "kd_loss": "kd-fkl", "export_exit": 1}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(doc))
    res = cli("distill", "--out", str(run))
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    ens = manifest["stages"]["ensemble"]["info"]
    assert ens["main_weight"] == 0.75 and ens["members"][0]["weight"] == 0.25 and ens["members"][0]["trained_here"]
    assert manifest["stages"]["distill"]["info"]["cache"]["teachers"] == 2
    students = manifest["stages"]["distill"]["info"]["students"]
    assert set(students) == {"baseline", "kd-fkl", "self-distill", "self-distill-exit1"}
    cut = json.loads((run / "students" / "self-distill-exit1" / "config.json").read_text())
    assert cut["num_hidden_layers"] == 1
    meta = json.loads((run / "students" / "self-distill.json").read_text())
    assert meta["role"] == "self-distill" and set(meta["exit_val_nll"]) == {"1"} and meta["teachers"] == 2
    again = cli("distill", "--out", str(run))
    assert again.returncode == 0 and again.stderr.count("unchanged, skipped") == 4, again.stderr[-2000:]
    rep = cli("report", "--out", str(run))
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = {m["name"]: m for m in json.loads((run / "report.json").read_text())["models"]}
    assert rows["self-distill-exit1-student"]["layers"] == 1 and rows["self-distill-student"]["layers"] == 2
    assert "ensemble of 2 teachers" in rows["kd-fkl-student"]["strategy"]
    assert "cut at exit 1" in rows["self-distill-exit1-student"]["strategy"]
    md = (run / "report.md").read_text()
    assert "## Distillation strategies" in md and "teacher.ensemble.0" in md
