"""Offline top-k teacher cache (sharded, reused, bytes/token) and white-box KD training offline and online."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key, positions
from edgedistill.toolchain.llm.distill.kd import train_kd
from edgedistill.toolchain.llm.models import build_llama, init_from_teacher
from edgedistill.toolchain.llm.recipe import KDLossConfig, LlamaArch, LMTrainConfig
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


def test_cache_is_sharded_reused_and_compact(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    data = tiny_lm.train[:24]
    calls = []

    def load_teacher() -> torch.nn.Module:
        calls.append(1)
        return tiny_lm.model

    key = cache_key("sha-of-teacher", data, 8, 1.0)
    args = (key, tmp_path, data, tiny_lm.tok.pad_token_id, len(tiny_lm.tok), 8, 1.0, load_teacher)
    cache, hit = build_cache(*args, shard_tokens=200, batch_size=8)
    assert not hit and len(calls) == 1
    assert len(cache.index["shards"]) >= 2  # sharded
    again, hit = build_cache(*args, shard_tokens=200, batch_size=8)
    assert hit and len(calls) == 1  # the teacher was not called again
    assert torch.equal(again.logp, cache.logp) and torch.equal(again.idx, cache.idx)
    assert cache.index["payload_bytes_per_token"] == 32  # 8 × (fp16 value + uint16 id)
    assert cache.bytes_per_token < 40  # safetensors headers included; DistillKit stores ~300 B/token
    # rows match a fresh teacher pass, and the cached mass is a (sub-)distribution
    logp, idx = cache.rows([3])
    e = data[3]
    with torch.no_grad():
        full = torch.log_softmax(tiny_lm.model(torch.tensor([e.input_ids])).logits[0, positions(e)], -1)
    assert torch.allclose(logp, full.topk(8).values, atol=2e-2)
    assert (logp.exp().sum(-1) <= 1.0 + 1e-2).all()


def test_kd_offline_and_online_train(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    data = tiny_lm.train[:32]
    arch = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256)
    tok = tiny_lm.tok
    key = cache_key("t", data, 8, 2.0)
    cache, _ = build_cache(key, tmp_path, data, tok.pad_token_id, len(tok), 8, 2.0, lambda: tiny_lm.model,
                           shard_tokens=10_000)
    train = LMTrainConfig(steps=6, batch_size=4, lr=2e-3, warmup_steps=1)
    for mode in ("offline", "online"):
        student = build_llama(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert init_from_teacher(student, tiny_lm.model) == [0]
        cfg = KDLossConfig(name=mode, divergence="jsd", beta=0.5, temperature=2.0, alpha=0.8)
        res = train_kd(student, data, cfg, train, 0, tok.pad_token_id, 64, tmp_path / f"{mode}.pt",
                       cache=cache if mode == "offline" else None, teacher=tiny_lm.model if mode == "online" else None)
        assert res.steps == 6 and all(h["loss"] == h["loss"] for h in res.history), res.history  # finite


def test_padded_teacher_vocab_is_aligned(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """A teacher whose embedding has padding rows beyond the shared tokenizer (as Qwen2.5-7B vs 3B): KD compares
    only the tokenizer's rows, online and from the cache, even when the padding rows carry the largest logits."""
    import pytest

    from edgedistill.toolchain.llm.distill.kd import kd_step
    from edgedistill.toolchain.llm.models import ModelError, align_vocab

    tok, v = tiny_lm.tok, len(tiny_lm.tok)
    cfg = tiny_lm.model.config.to_dict() | {"vocab_size": v + 64}
    padded = type(tiny_lm.model)(type(tiny_lm.model.config).from_dict(cfg)).eval()
    with torch.no_grad():
        for (_, p), (_, q) in zip(padded.named_parameters(), tiny_lm.model.named_parameters(), strict=True):
            p.copy_(q) if p.shape == q.shape else (p[:v].copy_(q), p[v:].fill_(0.0))
        padded.lm_head.weight[v:] = tiny_lm.model.lm_head.weight[:64] * 50  # huge logits on padding rows
    assert align_vocab(v + 64, v, v) == v
    with pytest.raises(ModelError, match="must share one tokenizer"):
        align_vocab(v + 64, v - 1, v)
    data, loss = tiny_lm.train[:8], KDLossConfig(divergence="forward_kl", alpha=1.0)
    idx = list(range(8))
    from edgedistill.toolchain.llm.train import collate

    batch = collate(data, tok.pad_token_id)
    student = tiny_lm.model
    want = kd_step(student, data, loss, 64, teacher=tiny_lm.model)(idx, batch)
    got = kd_step(student, data, loss, 64, teacher=padded, vocab=v)(idx, batch)
    assert torch.allclose(got, want, atol=1e-5) and float(want.detach()) < 1e-6  # same model: KL 0 once aligned
    key = cache_key("padded", data, 8, 1.0)
    cache, _ = build_cache(key, tmp_path, data, tok.pad_token_id, v, 8, 1.0, lambda: padded, 10_000)
    assert int(cache.idx.max()) < v
    offline = kd_step(student, data, loss, 64, cache=cache, vocab=v)(idx, batch)
    assert float(offline.detach()) < 0.05  # top-8 of the model's own distribution: only the remainder bin differs
