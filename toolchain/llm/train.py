"""Language-model training on the shared loop (:func:`edgedistill.toolchain.training.fit`): batches of token ids,
AdamW with warm-up and cosine decay, and the plain completion-only cross-entropy step.

Teacher training, the KD students (:mod:`.distill.kd`, their own loss) and the SFT student (:mod:`.distill.sft`) all
train through :func:`train_lm`, in one process or under ``accelerate launch`` (each rank takes its slice of every
global batch, so N processes see exactly the one-process batches between them). Given ``lora``, the student trains
through LoRA/QLoRA adapters that are merged back before :func:`train_lm` returns (:mod:`.lora`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.recipe import LMTrainConfig, LoRAConfig
from edgedistill.toolchain.llm.tokenizer import Encoded
from edgedistill.toolchain.training import IGNORE_INDEX, FitResult, LoopConfig, ShuffleSampler, fit

#: a loss over one rank's batch: ``(example indices, tensors) → loss``
LossFn = Callable[[list[int], dict[str, torch.Tensor]], torch.Tensor]
#: makes the loss for the model being trained (under DDP the wrapped one, so gradients synchronise)
LossFactory = Callable[[torch.nn.Module], LossFn]


@dataclass
class LMFitResult(FitResult):
    """:class:`FitResult` plus what was trained: ``trainable_params`` the optimiser updated (all of the model's, or
    the adapters'), and ``lora`` (the adapter settings and counts) when the model trained through adapters."""

    trainable_params: int = 0
    lora: dict[str, Any] | None = None


def n_targets(e: Encoded) -> int:
    """Positions trained in ``e`` (labels other than IGNORE_INDEX after the first token)."""
    return sum(1 for y in e.labels[1:] if y != IGNORE_INDEX)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``(B, L)``; labels are IGNORE_INDEX on padding."""
    n = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def optimizer_and_schedule(model: torch.nn.Module, cfg: LMTrainConfig
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up then cosine decay to 10% over ``cfg.steps``."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # all, or the adapters under LoRA
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def lm_loss(model: torch.nn.Module) -> LossFn:
    """Cross-entropy on the labels (completion tokens), as HF computes it (mean over the batch's labelled tokens),
    with the head applied only where a label is: HF's own loss runs the head over every position, and with a
    49k-token vocabulary and prompts 20× longer than the answers (the WordNet task) that was most of a step."""
    core = getattr(model, "module", model)  # unwrap DDP; a PEFT model forwards lm_head to its base

    def loss(_idx: Sequence[int], b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True,
                    logits_to_keep=1)
        target = b["labels"][:, 1:]
        keep = target != IGNORE_INDEX
        logits = core.lm_head(out.hidden_states[-1][:, :-1][keep])
        return torch.nn.functional.cross_entropy(logits.float(), target[keep])

    return loss


def train_lm(model: torch.nn.Module, data: list[Encoded], cfg: LMTrainConfig, seed: int, pad_id: int,
             checkpoint: Path, desc: str = "training", loss: LossFactory | None = None,
             accelerator: Any = None, lora: LoRAConfig | None = None) -> LMFitResult:
    """``cfg.steps`` optimiser steps of ``loss(model)`` (default: completion cross-entropy) on shuffled batches of
    ``data``, grad-norm clipped at 1, checkpointed every ``cfg.checkpoint_every`` steps to ``checkpoint``.

    With ``lora.enabled`` only LoRA adapters train (on NF4 base weights for ``quantize: 4bit``), the checkpoint holds
    only them, and they are merged into ``model`` before returning: ``model`` is a plain model again.

    Under ``accelerator`` (DDP/FSDP), rank ``r`` of ``w`` takes ``batch[r::w]`` of each global batch, and the batch
    carries ``global_targets`` (trained positions in the global batch / ``w``) so a loss normalised by it makes
    DDP's gradient average equal the one-process mean over all positions.
    """
    torch.manual_seed(seed)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    adapted = None
    if lora is not None and lora.enabled:
        from edgedistill.toolchain.llm.lora import attach

        adapted = attach(model, lora)
        model = adapted.peft
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before FSDP shards them
    opt, sched = optimizer_and_schedule(model, cfg)
    if accelerator is not None:  # DDP/FSDP wraps the model; the loss must call the wrapped one
        model, opt = accelerator.prepare(model, opt)
    fn = (loss or lm_loss)(model)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device

    def step(glob: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        idx = list(glob)[rank::world]
        batch = collate([data[i] for i in idx], pad_id)
        if world > 1:
            batch["global_targets"] = torch.tensor(sum(n_targets(data[i]) for i in glob) / world)
        tokens = float(batch["attention_mask"].sum())
        batch = {k: v.to(device) for k, v in batch.items()}  # a no-op on CPU; GPUs train on their own copies
        return fn(idx, batch), {"n": tokens}

    loop = LoopConfig(total_steps=cfg.steps, save_every=cfg.checkpoint_every, clip_grad_norm=1.0)
    if adapted is None:
        res = fit(model, step, ShuffleSampler(len(data), cfg.batch_size, seed), opt, sched, loop, checkpoint, desc,
                  accelerator=accelerator)
        return LMFitResult(**_fields(res), trainable_params=trainable)
    from edgedistill.toolchain.llm.lora import AdapterState, merge

    res = fit(AdapterState(adapted, model), step, ShuffleSampler(len(data), cfg.batch_size, seed), opt, sched, loop,
              checkpoint, f"{desc} (LoRA r={lora.r}{', NF4 base' if lora.quantize == '4bit' else ''})",
              accelerator=accelerator)
    merge(adapted)
    return LMFitResult(**_fields(res), trainable_params=trainable, lora=adapted.info())


def _fields(res: FitResult) -> dict[str, Any]:
    return {f.name: getattr(res, f.name) for f in fields(FitResult)}
