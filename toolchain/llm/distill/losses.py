"""White-box KD losses for language models, over full teacher logits or a cached top-k of them.

Shapes: ``N`` token positions (batch × sequence, flattened and masked), ``V`` vocabulary, ``k`` cached entries,
``H`` hidden size. Every divergence goes through :func:`edgedistill.toolchain.divergence.soft_kl` on
log-probabilities (``log_softmax`` of a log-probability vector is itself), so the vision and LLM losses share
one KL definition.

* forward KL ``KL(p_T || p_S)`` — Hinton et al. 2015 (mode-covering);
* reverse KL ``KL(p_S || p_T)`` — MiniLLM, Gu et al. 2024 (mode-seeking);
* generalised JSD(β) ``β KL(p_T || m) + (1-β) KL(p_S || m)``, ``m = β p_T + (1-β) p_S`` — GKD, Agarwal et al.
  2024. Its limits scale as ``β KL(p_T||p_S)`` and ``(1-β) KL(p_S||p_T)``, so β=0 and β=1 are defined as forward
  and reverse KL (TRL's convention).

A top-k teacher is a distribution over ``k + 1`` bins: its k cached log-probs plus the probability mass left
outside them; the student is folded onto the same bins (its mass outside the teacher's top-k in the last bin).

A teacher ensemble is one distribution: the weighted mean of the teachers' probabilities (:func:`mixture_logp`),
cached as its top-k like a single teacher's. Self-distillation (:func:`chunked_self_distill_loss`) trains early
exits on the final layer's own distribution, detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from edgedistill.toolchain.divergence import soft_kl

_EPS = 1e-12


def divergence(t_logp: torch.Tensor, s_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence between teacher and student log-probabilities ``(N, C)`` → ``(N,)``."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return soft_kl(t_logp, s_logp)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return soft_kl(s_logp, t_logp)
    if kind != "jsd":
        raise ValueError(f"divergence: unknown kind {kind!r}; choose forward_kl, reverse_kl or jsd")
    m = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0)
    return beta * soft_kl(t_logp, m) + (1 - beta) * soft_kl(s_logp, m)


def remainder_logp(topk_logp: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum exp(topk_logp))`` ``(N, 1)``: the log of the mass outside the top-k (floored at 1e-12)."""
    return torch.log((1 - topk_logp.exp().sum(-1, keepdim=True)).clamp_min(_EPS))


def topk_bins(t_topk_logp: torch.Tensor, t_idx: torch.Tensor, s_logp: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs over the teacher's top-k bins plus one remainder bin, both ``(N, k + 1)``.

    Args:
        t_topk_logp: ``(N, k)`` teacher log-probs at its top-k tokens (any float dtype).
        t_idx: ``(N, k)`` their token ids.
        s_logp: ``(N, V)`` student log-probs (same temperature).
    """
    idx = t_idx.long()
    s_top = s_logp.gather(-1, idx)
    s_rest = torch.logsumexp(s_logp.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
    s_rest = s_rest.clamp_min(math.log(_EPS))  # k = V: both remainders are empty, not -inf
    t = t_topk_logp.to(s_logp.dtype)
    return torch.cat([t, remainder_logp(t)], -1), torch.cat([s_top, s_rest], -1)


def mixture_logp(logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float,
                 vocab: int | None = None) -> torch.Tensor:
    """``log Σ_i w_i softmax(z_i / T)`` ``(N, V)``: the weighted mean of the teachers' probability distributions
    (weights normalised to sum 1), as log-probs over the first ``vocab`` logits of each (float32). One teacher
    of weight 1 gives its own ``log_softmax(z / T)`` exactly."""
    total = float(sum(weights))
    parts = [F.log_softmax(z[..., :vocab].float() / temperature, dim=-1) + math.log(w / total)
             for z, w in zip(logits, weights, strict=True)]
    return parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), dim=0)


@dataclass
class TeacherSlice:
    """Teacher targets for ``n`` positions: full ``logits (n, V)``, or ``topk_logp``/``topk_idx`` ``(n, k)``
    (log-probs already at the loss temperature), or full log-probs ``logp (n, V)`` at the loss temperature (an
    ensemble's mixture, online)."""

    logits: torch.Tensor | None = None
    topk_logp: torch.Tensor | None = None
    topk_idx: torch.Tensor | None = None
    logp: torch.Tensor | None = None


def kd_token_loss(s_logits: torch.Tensor, teacher: TeacherSlice, labels: torch.Tensor, kind: str, beta: float,
                  temperature: float, alpha: float) -> torch.Tensor:
    """Summed loss of ``n`` positions: ``alpha * T^2 * D(teacher, student) + (1 - alpha) * CE(labels)``.

    Args:
        s_logits: ``(n, V)`` student logits. labels: ``(n,)`` next-token ids.
    """
    s_logp = F.log_softmax(s_logits.float() / temperature, dim=-1)
    if teacher.logp is not None:
        kd = divergence(teacher.logp.to(s_logp.dtype), s_logp, kind, beta)
    elif teacher.logits is not None:
        t_logp = F.log_softmax(teacher.logits.float() / temperature, dim=-1)
        kd = divergence(t_logp, s_logp, kind, beta)
    else:
        assert teacher.topk_logp is not None and teacher.topk_idx is not None
        kd = divergence(*topk_bins(teacher.topk_logp, teacher.topk_idx, s_logp), kind, beta)
    loss = alpha * temperature**2 * kd.sum()
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s_logits.float(), labels, reduction="sum")
    return loss


def chunked_kd_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                    teacher: Callable[[int, int], TeacherSlice], kind: str, beta: float, temperature: float,
                    alpha: float, chunk: int, normalizer: float | None = None, vocab: int | None = None
                    ) -> torch.Tensor:
    """Mean per-position loss, with student logits made ``chunk`` positions at a time and recomputed in backward
    (activation checkpointing), so at most ``chunk × V`` logits are alive at once.

    Args:
        hidden: ``(N, H)`` student final hidden states at the positions that are trained.
        normalizer: divide the sum by this (default ``N``); data-parallel ranks pass the global count.
        vocab: compare only the first ``vocab`` logits of both models (their shared tokenizer; padding rows of
            either embedding are cut).
        labels: ``(N,)`` the next token at each position. teacher: ``(start, end) → TeacherSlice``.
    """
    total = hidden.new_zeros(())
    for s in range(0, len(hidden), chunk):
        e = min(s + chunk, len(hidden))
        t = teacher(s, e)
        if t.logits is not None and vocab is not None:
            t = TeacherSlice(logits=t.logits[..., :vocab])

        def part(h: torch.Tensor, t: TeacherSlice = t, s: int = s, e: int = e) -> torch.Tensor:
            return kd_token_loss(lm_head(h)[..., :vocab], t, labels[s:e], kind, beta, temperature, alpha)

        total = total + (checkpoint(part, hidden[s:e], use_reentrant=False) if hidden.requires_grad
                         else part(hidden[s:e]))
    return total / max(1, normalizer if normalizer is not None else len(hidden))


def self_distill_token_loss(final_logits: torch.Tensor, exit_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                            temperature: float, weight: float, ce_weight: float) -> torch.Tensor:
    """Summed exit loss of ``n`` positions: ``weight · Σ_exits [T²·KL(p_final ‖ p_exit) + ce_weight·CE]``, the
    final layer's distribution detached (a target: no gradient flows into the final layer through the exits).

    Args:
        final_logits: ``(n, V)`` the final layer's logits. exit_logits: ``(n, V)`` each exit's. labels: ``(n,)``.
    """
    target = F.log_softmax(final_logits.detach().float() / temperature, dim=-1)
    total = final_logits.new_zeros((), dtype=torch.float32)
    for z in exit_logits:
        total = total + temperature**2 * soft_kl(target, F.log_softmax(z.float() / temperature, dim=-1)).sum()
        if ce_weight:
            total = total + ce_weight * F.cross_entropy(z.float(), labels, reduction="sum")
    return weight * total


def chunked_self_distill_loss(final_h: torch.Tensor, exit_h: Sequence[torch.Tensor], lm_head: torch.nn.Module,
                              exit_norms: Sequence[torch.nn.Module], labels: torch.Tensor,
                              final_loss: Callable[[torch.Tensor, TeacherSlice | None, torch.Tensor], torch.Tensor],
                              temperature: float, weight: float, ce_weight: float, chunk: int,
                              teacher: Callable[[int, int], TeacherSlice] | None = None,
                              vocab: int | None = None) -> torch.Tensor:
    """Mean per-position loss of the final layer (``final_loss(logits, teacher slice, labels)``, summed) plus the
    exits' :func:`self_distill_token_loss`, ``chunk`` positions at a time with activation checkpointing.

    Args:
        final_h: ``(N, H)`` the final (normed) hidden states at the trained positions.
        exit_h: ``(N, H)`` per exit: the raw hidden state after its last kept layer (normed here by its norm).
        teacher: ``(start, end) → TeacherSlice`` for the final layer's KD, or None (no teacher).
    """
    total = final_h.new_zeros(())
    for s in range(0, len(final_h), chunk):
        e = min(s + chunk, len(final_h))
        t = teacher(s, e) if teacher is not None else None

        def part(hf: torch.Tensor, *hx: torch.Tensor, t: TeacherSlice | None = t, s: int = s,
                 e: int = e) -> torch.Tensor:
            zf = lm_head(hf)[..., :vocab]
            zx = [lm_head(norm(h))[..., :vocab] for norm, h in zip(exit_norms, hx, strict=True)]
            return final_loss(zf, t, labels[s:e]) + self_distill_token_loss(zf, zx, labels[s:e], temperature,
                                                                             weight, ce_weight)

        args = (final_h[s:e], *(h[s:e] for h in exit_h))
        total = total + (checkpoint(part, *args, use_reentrant=False) if final_h.requires_grad else part(*args))
    return total / max(1, len(final_h))
