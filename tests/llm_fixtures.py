"""Shared, session-scoped tiny Llama fixtures for the LLM tests: a tokenizer and a briefly trained student.

Sizes are the smallest that still exercise llama.cpp's K-quants (rows of 256) and train to peaked logits in
seconds on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from edgedistill.toolchain.llm.data import Example, split
from edgedistill.toolchain.llm.models import build_llama
from edgedistill.toolchain.llm.recipe import LlamaArch, LMTrainConfig
from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs
from edgedistill.toolchain.llm.tokenizer import Encoded, encode, train_bpe
from edgedistill.toolchain.llm.train import train_lm
from edgedistill.toolchain.training import drop_train_states, train_state

TINY = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)


@dataclass
class TinyLM:
    dir: Path
    tok: object
    model: torch.nn.Module
    train: list[Encoded]
    test: list[Example]
    train_examples: list[Example]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> TinyLM:
    """A 2-layer h256 Llama trained for 40 steps on generated briefs, saved with its tokenizer."""
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("tiny-lm")
    s = split(generate_legal_briefs(400, 0), 0.05, 0.05, 0)
    tok = train_bpe((e.prompt + e.completion for e in s.train), 512, d)
    enc = [encode(tok, e.prompt, e.completion, 160) for e in s.train]
    model = build_llama(TINY, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    train_lm(model, enc, LMTrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=5), 0, tok.pad_token_id,
             train_state(d, "tiny-lm"))
    drop_train_states(d)
    model.save_pretrained(str(d), safe_serialization=True)
    return TinyLM(d, tok, model, enc, s.test, s.train)
