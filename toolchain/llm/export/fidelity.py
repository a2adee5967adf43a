"""Artifact fidelity as llama.cpp's ``perplexity --kl-divergence`` reports it: the artifact's perplexity, the
mean KL divergence from the reference (PyTorch) distribution to the artifact's, and the same-top-token rate.
(llama.cpp scores the second half of fixed-size text chunks; here the scored tokens are the test completions.)

All figures are over next-token positions of the same token sequences fed to both models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from edgedistill.core.tolerances import FP32_MAX_ABS_DIFF, Q8_MIN_SAME_TOP  # noqa: F401  (re-exported)

#: F32 GGUF with an F32 KV cache: largest absolute logit difference vs PyTorch
GGUF_F32_MAX_ABS_DIFF = FP32_MAX_ABS_DIFF


@dataclass
class Fidelity:
    perplexity: float
    reference_perplexity: float
    kld_mean: float
    kld_p99: float
    same_top_token: float
    max_abs_diff: float
    n_tokens: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def fidelity(ids: Sequence[Sequence[int]], ref_logits: Sequence[np.ndarray], logits: Sequence[np.ndarray],
             score_from: Sequence[int] | None = None) -> Fidelity:
    """Compare per-sequence logits ``(L_i, V)`` of an artifact against the reference on token ids ``ids``.

    Position ``t`` predicts token ``t+1``. Every figure covers the positions that predict tokens from index
    ``score_from[i]`` on (the completion, for prompt/completion data: models trained on completions only never
    learn to predict prompts, so prompt positions would measure noise), else every next-token position.
    """
    nll, nll_ref, kld, same, maxdiff, n = [], [], [], 0, 0.0, 0
    starts = score_from if score_from is not None else [1] * len(ids)
    for seq, r, a, start in zip(ids, ref_logits, logits, starts, strict=True):
        v = min(r.shape[-1], a.shape[-1])
        rows = np.arange(max(0, start - 1), len(seq) - 1)
        r, a = r[rows, :v], a[rows, :v]
        lr, la = _log_softmax(r), _log_softmax(a)
        tgt = np.asarray(seq)[rows + 1]
        at = np.arange(len(rows))
        nll.append(-la[at, tgt])
        nll_ref.append(-lr[at, tgt])
        kld.append((np.exp(lr) * (lr - la)).sum(-1))
        same += int((r.argmax(-1) == a.argmax(-1)).sum())
        maxdiff = max(maxdiff, float(np.abs(r.astype(np.float64) - a).max())) if len(rows) else maxdiff
        n += len(rows)
    k = np.concatenate(kld)
    return Fidelity(float(np.exp(np.concatenate(nll).mean())), float(np.exp(np.concatenate(nll_ref).mean())),
                    float(k.mean()), float(np.percentile(k, 99)), same / max(1, n), maxdiff, n)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference logits ``(L_i, V)`` per sequence from a HF causal LM, one sequence at a time (no padding)."""
    model.eval()
    return [model(torch.tensor([list(s)])).logits[0].float().numpy() for s in ids]
