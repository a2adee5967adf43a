"""Black-box distillation: supervised fine-tuning of the student on the teacher's collected (prompt, completion)
pairs, loss on the completion only.

This is TRL's ``SFTTrainer`` objective (prompt–completion data with ``completion_only_loss``: ``[BOS] prompt
completion [EOS]``, cross-entropy on completion + EOS; ``tests/test_llm_sft.py`` checks that TRL tokenises the pairs
exactly as :func:`~edgedistill.toolchain.llm.tokenizer.encode` does) trained on the project's one loop instead of
TRL's Trainer. Why not TRL's loop: it checkpoints in its own format on its own schedule and cannot resume from the
stage-keyed checkpoints every other stage uses, so a pre-empted black-box stage started over; on the one loop it
resumes like a KD student, under the same ``accelerate`` set-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.recipe import LMTrainConfig, LoRAConfig
from edgedistill.toolchain.llm.tokenizer import encode
from edgedistill.toolchain.llm.train import LMFitResult, train_lm
from edgedistill.toolchain.training import IGNORE_INDEX


def train_sft(student: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], cfg: LMTrainConfig,
              checkpoint: Path, seed: int, max_length: int, accelerator: Any = None,
              lora: LoRAConfig | None = None, no_eos: Sequence[bool] | None = None) -> LMFitResult:
    """Fine-tune ``student`` in place on ``(prompt, completion)`` pairs for ``cfg.steps`` steps (through merged
    LoRA adapters with ``lora``). ``no_eos[i]``: pair ``i`` was cut off at the endpoint's ``max_tokens``, so its
    end-of-sequence is no target (the teacher never ended there)."""
    if not pairs:
        raise ValueError("SFT: no collected targets (every request failed?); see the collect journal")
    data = [encode(tokenizer, p, c, max_length) for p, c in pairs]
    for enc, cut in zip(data, no_eos or [False] * len(data), strict=True):
        if cut and enc.labels and enc.labels[-1] == tokenizer.eos_token_id:
            enc.labels[-1] = IGNORE_INDEX
    return train_lm(student, data, cfg, seed, tokenizer.pad_token_id, checkpoint, "SFT on teacher replies",
                    accelerator=accelerator, lora=lora)
