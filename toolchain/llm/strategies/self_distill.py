"""The self-distilled student (``distill.self_distill``): the student with early exits (its exits learn its final
layer's distribution; the final layer the labels, or the teacher's targets with ``kd_loss``), saved as a plain HF
folder, and with ``export_exit`` the model cut at that exit as one more candidate. One process (the recipe checks
it)."""

from __future__ import annotations

from typing import Any

from edgedistill.core.fileio import sha256_json
from edgedistill.toolchain.llm.context import new_student, save_student, student_done, teacher_cache, val_nll
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.llm.strategies import Round, Strategy
from edgedistill.toolchain.training import drop_train_states, train_state


def train(rnd: Round) -> None:
    from edgedistill.toolchain.llm.distill.kd import train_self_distill
    from edgedistill.toolchain.llm.models import EarlyExitLM, cut_at_exit, param_count

    ctx, info, teachers = rnd.ctx, rnd.info, rnd.teachers
    cfg, tok, r = ctx.recipe.distill, ctx.tok, ctx.recipe
    sd = cfg.self_distill
    kd = next((loss for loss in cfg.losses if loss.name == sd.kd_loss), None)
    sh = sha256_json({"stage": rnd.h, "self_distill": sd.model_dump(mode="json"),
                      "kd": kd.model_dump(mode="json") if kd is not None else None})
    names = sd.candidate_names()
    if not all(student_done(ctx, n, sh) for n in names):
        cache = None
        if kd is not None and cfg.mode == "offline":
            cache, info["cache"] = teacher_cache(ctx, kd, teachers)
        student, layers, vocab = new_student(ctx, teachers.main())
        model = EarlyExitLM(student, sd.exits, per_exit_norm=sd.exit_norm == "per-exit")
        ckpt = train_state(ctx.run.path("students"), sh, f"{sd.name}-", ctx.force)
        online = teachers.target() if kd is not None and cache is None else None
        res = train_self_distill(model, ctx.encoded("train"), sd, cfg.train, r.seed, tok.pad_token_id,
                                 cfg.chunk_tokens, ckpt, kd, cache, online, vocab, teachers.weights)
        val = ctx.encoded("val")
        exit_nll = {str(e): val_nll(cut_at_exit(model, e), val, tok.pad_token_id) for e in sd.exits}
        n_layers = student.config.num_hidden_layers
        base = {"config_hash": sh, "role": "self-distill", "self_distill": sd.model_dump(mode="json"),
                "loss": kd.model_dump(mode="json") if kd is not None else None,
                "teachers": (1 + len(r.teacher.ensemble)) if kd is not None else 0, "init_layers": layers,
                "steps": res.steps, "train_seconds": res.seconds, "tokens_per_second": res.per_second,
                "resumed_from": res.resumed_from, "history": res.history, "exit_val_nll": exit_nll}
        save_student(ctx, sd.name, student, {**base, "layers": n_layers, "params": param_count(student)})
        if sd.export_exit is not None:
            cut = cut_at_exit(model, sd.export_exit)
            save_student(ctx, names[1], cut, {**base, "role": "self-distill-exit", "cut_at": sd.export_exit,
                                              "layers": sd.export_exit, "params": param_count(cut)})
        drop_train_states(ctx.run.path("students"), f"{sd.name}-")
    for n in names:
        rnd.done(n)


def candidates(r: LLMRecipe) -> list[str]:
    return r.distill.self_distill.candidate_names() if r.distill.enabled else []


def key(r: LLMRecipe) -> dict[str, Any]:
    sd = r.distill.self_distill
    return {"self_distill": sd.model_dump(mode="json")} if sd.enabled else {}


STRATEGY = Strategy("self-distill", candidates, train, key=key, sections=("self_distill",))
