"""The ``mutual`` candidate (``distill.mutual``; deep mutual learning): the student co-trained with a peer that
starts as the trained teacher. It never sees the ensemble."""

from __future__ import annotations

from typing import Any

from edgedistill.core.fileio import sha256_json
from edgedistill.runtimes.torch_ref import load_reference
from edgedistill.toolchain.vision.context import TEACHER
from edgedistill.toolchain.vision.distill.trainer import accuracy, train_mutual
from edgedistill.toolchain.vision.recipe import VisionRecipe
from edgedistill.toolchain.vision.strategies import Strategy, Teach, train_candidate


def train(teach: Teach) -> dict[str, Any]:
    ctx = teach.ctx
    r, d = ctx.recipe, ctx.data

    def fit(student: Any, ckpt: Any) -> Any:
        peer = load_reference(ctx.run.path(TEACHER))
        res = train_mutual(student, peer, d, r.distill, ckpt, r.seed)
        return res, {"peer": {"val_accuracy": accuracy(peer, d.val_x, d.val_y),
                              "test_accuracy": accuracy(peer, d.test_x, d.test_y)}}

    return train_candidate(ctx, "mutual", sha256_json({"students": teach.plain,
                                                       "mutual": r.distill.mutual.model_dump()}), fit)


def key(r: VisionRecipe) -> dict[str, Any]:
    return {"mutual": r.section("distill")["mutual"]} if r.distill.mutual.enabled else {}


STRATEGY = Strategy("mutual", train, ship_rank=3, enabled=lambda r: r.distill.mutual.enabled, key=key,
                    sections=("mutual",), optional=True)
