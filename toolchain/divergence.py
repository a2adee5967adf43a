"""The one KL helper every distillation loss shares: vision response KD and the LLM divergences."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-row ``KL(softmax(target/T) || softmax(logits/T))``, shape ``(B,)``; ``target`` is the reference."""
    log_p = F.log_softmax(target_logits / temperature, dim=-1)
    log_q = F.log_softmax(logits / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
