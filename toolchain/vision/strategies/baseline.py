"""The CE-only ``baseline`` candidate (``distill.baseline``): the student trained on the labelled subset alone,
with the KD student's step budget — what distillation has to beat. It never sees the teacher or the ensemble."""

from __future__ import annotations

from typing import Any

import torch

from edgedistill.toolchain.vision.distill.trainer import train_supervised
from edgedistill.toolchain.vision.strategies import Strategy, Teach, train_candidate


def train(teach: Teach) -> dict[str, Any]:
    ctx = teach.ctx
    r, d = ctx.recipe, ctx.data
    return train_candidate(ctx, "baseline", teach.plain, lambda student, ckpt: (train_supervised(
        student, d, r.distill.train.model_copy(update={"augment": False}), torch.nonzero(d.labelled).flatten(),
        ckpt, "training CE-only baseline", r.seed), {}))


STRATEGY = Strategy("baseline", train, ship_rank=5, enabled=lambda r: r.distill.baseline)
