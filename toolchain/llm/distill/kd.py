"""White-box distillation of a Llama student: offline from the top-k cache, or online with the teacher (or a
teacher ensemble, averaged in probability) running each step. One loss step for both; the same code runs in one
process or under ``accelerate launch``. Self-distillation with early exits (:func:`train_self_distill`) trains a
student's intermediate layers on its own final distribution, with or without a teacher on the final layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.distill.cache import TopKCache, positions
from edgedistill.toolchain.llm.distill.losses import (
    TeacherSlice,
    chunked_kd_loss,
    chunked_self_distill_loss,
    kd_token_loss,
    mixture_logp,
)
from edgedistill.toolchain.llm.recipe import KDLossConfig, LMTrainConfig, LoRAConfig, SelfDistillConfig
from edgedistill.toolchain.llm.tokenizer import Encoded
from edgedistill.toolchain.llm.train import LMFitResult, train_lm

#: one teacher, or an ensemble (a list, mixed with weights)
Teachers = torch.nn.Module | Sequence[torch.nn.Module]


def _gather(hidden: torch.Tensor, ids: torch.Tensor, pos: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden rows ``(N, H)`` at the trained positions and the next-token labels ``(N,)``, example by example."""
    rows, labels = [], []
    for i, p in enumerate(pos):
        t = torch.tensor(p, dtype=torch.long, device=hidden.device)
        rows.append(hidden[i, t])
        labels.append(ids[i, t + 1])
    return torch.cat(rows), torch.cat(labels)


def _teacher_slices(idx: list[int], batch: dict[str, torch.Tensor], pos: list[list[int]], device: torch.device,
                    temperature: float, cache: TopKCache | None, teacher: Teachers | None,
                    weights: Sequence[float] | None, vocab: int | None):  # type: ignore[no-untyped-def]
    """``(start, end) → TeacherSlice`` over the batch's trained positions: cached top-k rows, one teacher's logits,
    or an ensemble's mixture log-probs (at ``temperature``), computed on the fly."""
    if cache is not None:
        logp, tidx = (t.to(device) for t in cache.rows(idx))
        return lambda s, e: TeacherSlice(None, logp[s:e], tidx[s:e])
    assert teacher is not None
    teachers = [teacher] if isinstance(teacher, torch.nn.Module) else list(teacher)
    with torch.no_grad():
        t_h = [_gather(t.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                       .last_hidden_state, batch["input_ids"], pos)[0] for t in teachers]

    def tslice(s: int, e: int) -> TeacherSlice:
        with torch.no_grad():
            if len(teachers) == 1:
                return TeacherSlice(logits=teachers[0].lm_head(t_h[0][s:e])[..., :vocab])
            w = list(weights) if weights is not None else [1.0] * len(teachers)
            return TeacherSlice(logp=mixture_logp([t.lm_head(h[s:e]) for t, h in zip(teachers, t_h, strict=True)],
                                                  w, temperature, vocab))

    return tslice


def kd_step(student: torch.nn.Module, data: list[Encoded], cfg: KDLossConfig, chunk: int,
            cache: TopKCache | None = None, teacher: Teachers | None = None,
            vocab: int | None = None, weights: Sequence[float] | None = None):  # type: ignore[no-untyped-def]
    """The loss function ``(example indices, batch) → loss`` for :func:`~edgedistill.toolchain.llm.train.train_lm`.

    ``teacher`` may be a list (an ensemble, online): its target is the ``weights``-weighted mean of the teachers'
    probabilities. Under data parallelism the batch carries ``global_targets`` (positions in the global batch /
    world size), so DDP's gradient average equals the one-process mean over all positions.
    """
    core = getattr(student, "module", student)  # unwrap DDP

    def loss_fn(idx: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pos = [positions(data[i]) for i in idx]
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_hidden_states=True, logits_to_keep=1)
        h, labels = _gather(out.hidden_states[-1], batch["input_ids"], pos)
        tslice = _teacher_slices(idx, batch, pos, h.device, cfg.temperature, cache, teacher, weights, vocab)
        norm = float(batch["global_targets"]) if "global_targets" in batch else None
        return chunked_kd_loss(h, core.lm_head, labels, tslice, cfg.divergence, cfg.beta, cfg.temperature,
                               cfg.alpha, chunk, norm, vocab)

    return loss_fn


def _freeze(teacher: Teachers) -> None:
    for t in [teacher] if isinstance(teacher, torch.nn.Module) else teacher:
        t.eval().requires_grad_(False)


def train_kd(student: torch.nn.Module, data: list[Encoded], cfg: KDLossConfig, train: LMTrainConfig, seed: int,
             pad_id: int, chunk: int, checkpoint: Path, cache: TopKCache | None = None,
             teacher: Teachers | None = None, accelerator: Any = None, vocab: int | None = None,
             weights: Sequence[float] | None = None, lora: LoRAConfig | None = None) -> LMFitResult:
    """Train ``student`` for ``train.steps`` steps on ``alpha·T²·D + (1-alpha)·CE`` (see :mod:`.losses`) over the
    first ``vocab`` logits (see :func:`~edgedistill.toolchain.llm.models.align_vocab`), on the shared loop
    (checkpointed to ``checkpoint``, resumed from it). ``teacher`` may be an ensemble (a list, with ``weights``);
    with ``lora`` the student trains through LoRA adapters, merged at the end."""
    if (cache is None) == (teacher is None):
        raise ValueError("train_kd: give exactly one of cache (offline) or teacher (online)")
    if teacher is not None:
        _freeze(teacher)
    return train_lm(student, data, train, seed, pad_id, checkpoint, f"distilling ({cfg.name})",
                    lambda model: kd_step(model, data, cfg, chunk, cache, teacher, vocab, weights), accelerator,
                    lora)


# -- self-distillation with early exits --------------------------------------------------------------------------
def self_distill_step(model: torch.nn.Module, data: list[Encoded], cfg: SelfDistillConfig, chunk: int,
                      kd: KDLossConfig | None = None, cache: TopKCache | None = None, teacher: Teachers | None = None,
                      vocab: int | None = None, weights: Sequence[float] | None = None):  # type: ignore[no-untyped-def]
    """The loss ``(example indices, batch) → loss`` of an :class:`~edgedistill.toolchain.llm.models.EarlyExitLM`:
    the final layer's CE (or ``kd``'s loss against the cached or online teacher) plus the exits' self-distillation
    (:func:`~edgedistill.toolchain.llm.distill.losses.chunked_self_distill_loss`)."""
    core = getattr(model, "module", model)
    if kd is not None and (cache is None) == (teacher is None):
        raise ValueError("self_distill_step: a kd loss needs exactly one of cache (offline) or teacher (online)")

    def final_loss(z: torch.Tensor, t: TeacherSlice | None, labels: torch.Tensor) -> torch.Tensor:
        if kd is None or t is None:
            return torch.nn.functional.cross_entropy(z.float(), labels, reduction="sum")
        return kd_token_loss(z, t, labels, kd.divergence, kd.beta, kd.temperature, kd.alpha)

    def loss_fn(idx: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pos = [positions(data[i]) for i in idx]
        final, exits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        h, labels = _gather(final, batch["input_ids"], pos)
        hx = [_gather(x, batch["input_ids"], pos)[0] for x in exits]
        tslice = (_teacher_slices(idx, batch, pos, h.device, kd.temperature, cache, teacher, weights, vocab)
                  if kd is not None else None)
        return chunked_self_distill_loss(h, hx, core.student.lm_head, [core.norm(e) for e in core.exits], labels,
                                         final_loss, cfg.temperature, cfg.weight, cfg.ce_weight, chunk, tslice,
                                         vocab)

    return loss_fn


def train_self_distill(model: torch.nn.Module, data: list[Encoded], cfg: SelfDistillConfig, train: LMTrainConfig,
                       seed: int, pad_id: int, chunk: int, checkpoint: Path, kd: KDLossConfig | None = None,
                       cache: TopKCache | None = None, teacher: Teachers | None = None, vocab: int | None = None,
                       weights: Sequence[float] | None = None) -> LMFitResult:
    """Train an :class:`~edgedistill.toolchain.llm.models.EarlyExitLM` (the student and its exit norms) for
    ``train.steps`` steps on the shared loop (checkpointed to ``checkpoint``, resumed from it)."""
    if teacher is not None:
        _freeze(teacher)
    return train_lm(model, data, train, seed, pad_id, checkpoint, f"self-distilling ({cfg.name})",
                    lambda m: self_distill_step(m, data, cfg, chunk, kd, cache, teacher, vocab, weights))
