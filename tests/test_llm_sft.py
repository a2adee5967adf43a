"""Black-box SFT of a student on collected (prompt, completion) pairs: TRL's objective on the one training loop."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedistill.toolchain.llm.distill.sft import train_sft
from edgedistill.toolchain.llm.models import build_llama
from edgedistill.toolchain.llm.recipe import LlamaArch, LMTrainConfig
from edgedistill.toolchain.llm.tokenizer import encode
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


def test_sft_is_trls_objective_on_the_one_loop(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """TRL's SFTTrainer, given the same prompt–completion pairs, builds exactly our sequences and completion mask;
    our loop then trains on them (and checkpoints like every other stage)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer


    tok = tiny_lm.tok
    pairs = [(e.prompt, e.completion) for e in tiny_lm.train_examples[:32]]
    arch = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256)
    student = build_llama(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    trl = SFTTrainer(model=student, processing_class=tok,
                     train_dataset=Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
                     args=SFTConfig(output_dir=str(tmp_path / "trl"), max_length=192, completion_only_loss=True,
                                    use_cpu=True, report_to=[], save_strategy="no"))
    for row, (p, c) in zip(trl.train_dataset, pairs, strict=True):
        ours = encode(tok, p, c, 192)
        assert row["input_ids"] == ours.input_ids
        assert row["labels"] == ours.labels  # -100 on the prompt, the tokens on completion + EOS
    before = [q.detach().clone() for q in student.parameters()]
    res = train_sft(student, tok, pairs, LMTrainConfig(steps=4, batch_size=4, lr=2e-3, warmup_steps=1,
                                                       checkpoint_every=2), tmp_path / "sft.pt", seed=0, max_length=192)
    assert res.steps == 4 and res.history[-1]["loss"] > 0 and (tmp_path / "sft.pt").is_file()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
