"""The CE-only ``baseline`` student (``distill.baseline``): the same initialisation, data and budget as the KD
students, trained on the reference completions alone (what distillation has to beat)."""

from __future__ import annotations

from edgedistill.core.fileio import sha256_json
from edgedistill.toolchain.llm.context import new_student, save_student, student_done, trained
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.llm.strategies import Round, Strategy
from edgedistill.toolchain.training import drop_train_states, train_state

BASELINE = "baseline"


def train(rnd: Round) -> None:
    from edgedistill.toolchain.llm.train import train_lm

    ctx = rnd.ctx
    cfg, tok, name = ctx.recipe.distill, ctx.tok, BASELINE
    sh = sha256_json({"stage": rnd.h, "baseline": cfg.train.model_dump(mode="json")})
    if not student_done(ctx, name, sh):
        student, layers, _ = new_student(ctx, rnd.teachers.main())
        ckpt = train_state(ctx.run.path("students"), sh, f"{name}-", ctx.force)
        res = train_lm(student, ctx.encoded("train"), cfg.train, ctx.recipe.seed, tok.pad_token_id, ckpt,
                       "training CE-only baseline", accelerator=rnd.accelerator, lora=ctx.recipe.student.lora)
        meta = {"config_hash": sh, "role": "baseline", "init_layers": layers,
                "layers": student.config.num_hidden_layers, "steps": res.steps,
                "train_seconds": res.seconds, "tokens_per_second": res.per_second, "resumed_from": res.resumed_from,
                "history": res.history, "params": sum(p.numel() for p in student.parameters()), **trained(res)}
        if rnd.main:
            save_student(ctx, name, student, meta)
            drop_train_states(ctx.run.path("students"), f"{name}-")
    rnd.done(name)


def candidates(r: LLMRecipe) -> list[str]:
    return [BASELINE] if r.distill.enabled and r.distill.baseline else []


STRATEGY = Strategy(BASELINE, candidates, train)
