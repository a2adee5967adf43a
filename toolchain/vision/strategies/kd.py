"""The ``kd`` candidate: the student distilled from the teacher (the cached outputs offline, the frozen teacher and
the paraphraser online) with the recipe's response, feature, attention, relation and factor terms."""

from __future__ import annotations

from typing import Any

from edgedistill.toolchain.vision.distill.trainer import train_student
from edgedistill.toolchain.vision.strategies import Strategy, Teach, train_candidate


def train(teach: Teach) -> dict[str, Any]:
    ctx = teach.ctx
    r, d = ctx.recipe, ctx.data
    cached, teacher, para = teach.cached, teach.teacher, teach.paraphraser
    return train_candidate(ctx, "kd", teach.base, lambda student, ckpt: (train_student(
        student, d, r.distill, ckpt, r.seed, cached=cached, teacher=teacher, paraphraser=para), {}))


STRATEGY = Strategy("kd", train, ship_rank=1)
