"""White-box distillation of a Llama student: offline from the top-k cache, or online with the teacher running
each step. One loss step for both; the same code runs in one process or under ``accelerate launch``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.distill.cache import TopKCache, positions
from edgedistill.toolchain.llm.distill.losses import TeacherSlice, chunked_kd_loss
from edgedistill.toolchain.llm.recipe import KDLossConfig, LMTrainConfig, LoRAConfig
from edgedistill.toolchain.llm.tokenizer import Encoded
from edgedistill.toolchain.llm.train import LMFitResult, train_lm


def _gather(hidden: torch.Tensor, ids: torch.Tensor, pos: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden rows ``(N, H)`` at the trained positions and the next-token labels ``(N,)``, example by example."""
    rows, labels = [], []
    for i, p in enumerate(pos):
        t = torch.tensor(p, dtype=torch.long, device=hidden.device)
        rows.append(hidden[i, t])
        labels.append(ids[i, t + 1])
    return torch.cat(rows), torch.cat(labels)


def kd_step(student: torch.nn.Module, data: list[Encoded], cfg: KDLossConfig, chunk: int,
            cache: TopKCache | None = None, teacher: torch.nn.Module | None = None,
            vocab: int | None = None):  # type: ignore[no-untyped-def]
    """The loss function ``(example indices, batch) → loss`` for :func:`~edgedistill.toolchain.llm.train.train_lm`.

    Under data parallelism the batch carries ``global_targets`` (positions in the global batch / world size), so
    DDP's gradient average equals the one-process mean over all positions.
    """
    core = getattr(student, "module", student)  # unwrap DDP

    def loss_fn(idx: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pos = [positions(data[i]) for i in idx]
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_hidden_states=True, logits_to_keep=1)
        h, labels = _gather(out.hidden_states[-1], batch["input_ids"], pos)
        if cache is not None:
            logp, tidx = (t.to(h.device) for t in cache.rows(idx))

            def tslice(s: int, e: int) -> TeacherSlice:
                return TeacherSlice(None, logp[s:e], tidx[s:e])
        else:
            assert teacher is not None
            with torch.no_grad():
                th = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                t_h, _ = _gather(th.last_hidden_state, batch["input_ids"], pos)

            def tslice(s: int, e: int) -> TeacherSlice:
                with torch.no_grad():
                    return TeacherSlice(logits=teacher.lm_head(t_h[s:e]))
        norm = float(batch["global_targets"]) if "global_targets" in batch else None
        return chunked_kd_loss(h, core.lm_head, labels, tslice, cfg.divergence, cfg.beta, cfg.temperature,
                               cfg.alpha, chunk, norm, vocab)

    return loss_fn


def train_kd(student: torch.nn.Module, data: list[Encoded], cfg: KDLossConfig, train: LMTrainConfig, seed: int,
             pad_id: int, chunk: int, checkpoint: Path, cache: TopKCache | None = None,
             teacher: torch.nn.Module | None = None, accelerator: Any = None, vocab: int | None = None,
             lora: LoRAConfig | None = None) -> LMFitResult:
    """Train ``student`` for ``train.steps`` steps on ``alpha·T²·D + (1-alpha)·CE`` (see :mod:`.losses`) over the
    first ``vocab`` logits (see :func:`~edgedistill.toolchain.llm.models.align_vocab`), on the shared loop
    (checkpointed to ``checkpoint``, resumed from it); through merged LoRA adapters with ``lora``."""
    if (cache is None) == (teacher is None):
        raise ValueError("train_kd: give exactly one of cache (offline) or teacher (online)")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    return train_lm(student, data, train, seed, pad_id, checkpoint, f"distilling ({cfg.name})",
                    lambda model: kd_step(model, data, cfg, chunk, cache, teacher, vocab), accelerator, lora)
