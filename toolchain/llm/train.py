"""Batches of token ids and the plain language-model training loop (teacher training, CE-only students).

Distillation reuses :func:`batches` and :func:`optimizer_and_schedule` with its own loss (see :mod:`.distill`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from edgedistill.toolchain.llm.recipe import LMTrainConfig
from edgedistill.toolchain.llm.tokenizer import IGNORE, Encoded
from edgedistill.toolchain.progress import progress_bar


def n_targets(e: Encoded) -> int:
    """Positions trained in ``e`` (labels other than IGNORE after the first token)."""
    return sum(1 for y in e.labels[1:] if y != IGNORE)


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``(B, L)``; labels are IGNORE on padding."""
    n = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(data: list[Encoded], batch_size: int, seed: int, pad_id: int,
            rank: int = 0, world: int = 1) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Endless shuffled batches ``(example indices, tensors)``; with ``world > 1`` each rank takes its slice of
    every global batch (so N processes see exactly the one-process batches between them)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            glob = order[s:s + batch_size]
            idx = glob[rank::world]
            batch = collate([data[i] for i in idx], pad_id)
            if world > 1:  # trained positions in the whole global batch, for a loss normalised like one process
                batch["global_targets"] = torch.tensor(sum(n_targets(data[i]) for i in glob) / world)
            yield idx, batch


def optimizer_and_schedule(model: torch.nn.Module, cfg: LMTrainConfig
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up then cosine decay to 10% over ``cfg.steps``."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens_per_second: float
    history: list[float] = field(default_factory=list)


def train_loop(model: torch.nn.Module, data: list[Encoded], cfg: LMTrainConfig, seed: int, pad_id: int,
               loss_fn: Callable[[list[int], dict[str, torch.Tensor]], torch.Tensor], desc: str,
               accelerator: Any = None) -> TrainResult:
    """Run ``cfg.steps`` optimiser steps of ``loss_fn(indices, batch)`` (grad-norm clipped at 1)."""
    torch.manual_seed(seed)
    model.train()
    opt, sched = optimizer_and_schedule(model, cfg)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator is not None:  # DDP/FSDP: wrap model and optimiser; each rank takes its slice of every batch
        model, opt = accelerator.prepare(model, opt)
    it = batches(data, cfg.batch_size, seed, pad_id, rank, world)
    history, tokens, t0 = [], 0, time.perf_counter()
    dev = accelerator.device if accelerator is not None else next(model.parameters()).device
    for step in progress_bar(range(cfg.steps), desc):
        idx, batch = next(it)
        batch = {k: v.to(dev) for k, v in batch.items()}  # a no-op on CPU; GPUs train on their own copies
        loss = loss_fn(idx, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward() if accelerator is None else accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int(batch["attention_mask"].sum())
        if step % 10 == 0 or step == cfg.steps - 1:
            history.append(round(float(loss.detach()), 5))
    model.eval()
    dt = time.perf_counter() - t0
    return TrainResult(cfg.steps, dt, tokens / dt, history)


def lm_loss(model: torch.nn.Module) -> Callable[[list[int], dict[str, torch.Tensor]], torch.Tensor]:
    """Cross-entropy on the labels (completion tokens), as HF computes it."""
    return lambda _idx, b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def train_lm(model: torch.nn.Module, data: list[Encoded], cfg: LMTrainConfig, seed: int, pad_id: int,
             desc: str = "training") -> TrainResult:
    return train_loop(model, data, cfg, seed, pad_id, lm_loss(model), desc)
