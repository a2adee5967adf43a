"""Offline top-k teacher cache (sharded, reused, bytes/token) and white-box KD training offline and online."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedistill.toolchain.llm.cache import build_cache, cache_key, positions
from edgedistill.toolchain.llm.distill import train_kd
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
        res = train_kd(student, data, cfg, train, 0, tok.pad_token_id, chunk=64,
                       cache=cache if mode == "offline" else None, teacher=tiny_lm.model if mode == "online" else None)
        assert res.steps == 6 and all(h == h for h in res.history), res.history  # finite
