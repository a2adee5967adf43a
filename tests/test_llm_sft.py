"""Black-box SFT of a student on collected (prompt, completion) pairs with TRL's SFTTrainer on CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedistill.toolchain.llm.models import build_llama
from edgedistill.toolchain.llm.recipe import LlamaArch, LMTrainConfig
from edgedistill.toolchain.llm.sft import train_sft
from edgedistill.toolchain.llm.tokenizer import encode
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


def test_sft_trains_on_collected_pairs(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    tok = tiny_lm.tok
    pairs = [(e.prompt, e.completion) for e in tiny_lm.train_examples[:32]]
    # TRL tokenises like our encoder: BOS first, completion then EOS
    ours = encode(tok, pairs[0][0], pairs[0][1], 512).input_ids
    assert tok(pairs[0][0] + pairs[0][1])["input_ids"] + [tok.eos_token_id] == ours
    arch = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256)
    student = build_llama(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    before = [p.detach().clone() for p in student.parameters()]
    info = train_sft(student, tok, pairs, LMTrainConfig(steps=4, batch_size=4, lr=2e-3, warmup_steps=1),
                     tmp_path / "sft", seed=0, max_length=192)
    assert info["steps"] == 4 and info["examples"] == 32
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
