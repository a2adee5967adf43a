"""The white-box KD students: one per ``distill.losses`` entry, each distilled from the teacher (or the ensemble's
mixed target) through its top-k cache (offline) or the live teacher (online)."""

from __future__ import annotations

from typing import Any

from edgedistill.core.fileio import sha256_json
from edgedistill.toolchain.llm.context import (
    Context,
    Teachers,
    new_student,
    save_student,
    student_done,
    teacher_cache,
    trained,
)
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.llm.strategies import Round, Strategy
from edgedistill.toolchain.training import drop_train_states, train_state


def train(rnd: Round) -> None:
    """Every loss's student that is not already done."""
    from edgedistill.toolchain.llm.distill.kd import train_kd

    ctx, info, acc = rnd.ctx, rnd.info, rnd.accelerator
    cfg, tok = ctx.recipe.distill, ctx.tok
    for loss in cfg.losses:
        sh = sha256_json({"stage": rnd.h, "loss": loss.model_dump(mode="json")})
        if student_done(ctx, loss.name, sh):
            rnd.done(loss.name)
            continue
        cache = None
        if cfg.mode == "offline":
            cache, info["cache"] = teacher_cache(ctx, loss, rnd.teachers)
            if rnd.main:
                ctx.console.print(f"  teacher top-{cfg.top_k} cache {'hit' if info['cache']['hit'] else 'written'}: "
                                  f"{cache.bytes_per_token:.1f} B/token")
        student, layers, vocab = new_student(ctx, rnd.teachers.main())
        ckpt = train_state(ctx.run.path("students"), sh, f"{loss.name}-", ctx.force)
        res = train_kd(student, ctx.encoded("train"), loss, cfg.train, ctx.recipe.seed, tok.pad_token_id,
                       cfg.chunk_tokens, ckpt, cache=cache,
                       teacher=None if cache is not None else rnd.teachers.target(), accelerator=acc, vocab=vocab,
                       weights=rnd.teachers.weights, lora=ctx.recipe.student.lora)
        meta = {"config_hash": sh, "role": "kd", "loss": loss.model_dump(mode="json"), "init_layers": layers,
                "teachers": 1 + len(ctx.recipe.teacher.ensemble), "layers": student.config.num_hidden_layers,
                "steps": res.steps, "train_seconds": res.seconds, "tokens_per_second": res.per_second,
                "resumed_from": res.resumed_from, "history": res.history,
                "params": sum(p.numel() for p in student.parameters()), **trained(res),
                "processes": acc.num_processes if acc is not None else 1}
        if rnd.main:
            save_student(ctx, loss.name, student, meta)
            drop_train_states(ctx.run.path("students"), f"{loss.name}-")
        rnd.done(loss.name)


def prepare(ctx: Context, teachers: Teachers) -> dict[str, Any] | None:
    """Before ``accelerate launch``: every loss's teacher cache, built once here (offline); the last one's info."""
    info = None
    if ctx.recipe.distill.mode == "offline":
        for loss in ctx.recipe.distill.losses:
            _, info = teacher_cache(ctx, loss, teachers)
    return info


def candidates(r: LLMRecipe) -> list[str]:
    return [loss.name for loss in r.distill.losses] if r.distill.enabled else []


STRATEGY = Strategy("kd", candidates, train, prepare=prepare)
