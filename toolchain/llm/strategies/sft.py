"""The black-box ``sft`` student (``blackbox``): serve the teacher (or use the recipe's endpoint), collect its
replies to the training prompts, and fine-tune the student on them. Its own stage (``blackbox``) trains it, after
the distill stage."""

from __future__ import annotations

import time

from edgedistill.core.fileio import sha256_json, sha256_path
from edgedistill.core.urls import redact_url
from edgedistill.toolchain.llm.context import (
    STUDENT_META_VERSION,
    TOKENIZER_DIR,
    Context,
    data_hash,
    lora_note,
    new_student,
    save_student,
    student_section,
    teacher_sha,
    trained,
)
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.llm.strategies import Strategy
from edgedistill.toolchain.training import drop_train_states, train_state

SFT = "sft"


def blackbox_hash(ctx: Context) -> str:
    r = ctx.recipe
    return sha256_json({"teacher": teacher_sha(ctx), "data": data_hash(ctx), "student": student_section(ctx),
                        "blackbox": r.section("blackbox"), "max_length": r.data.max_length, "seed": r.seed,
                        "meta": STUDENT_META_VERSION})


def stage_blackbox(ctx: Context) -> None:
    cfg = ctx.recipe.blackbox
    h = blackbox_hash(ctx)
    if not cfg.enabled or ctx.skip("blackbox", h):
        return
    from edgedistill.toolchain.llm.distill.collect import (
        CollectError,
        Prompt,
        collect,
        failure_summary,
        replies,
        source_id,
    )
    from edgedistill.toolchain.llm.distill.server import serving
    from edgedistill.toolchain.llm.distill.sft import train_sft
    from edgedistill.toolchain.llm.export.gguf import convert
    from edgedistill.toolchain.llm.models import load_causal_lm

    train = ctx.splits.train[:cfg.max_prompts] if cfg.max_prompts else ctx.splits.train
    prompts = [Prompt(e.id, e.prompt) for e in train]
    # one journal for every recipe: a reply counts only for its own source and prompt text (see collect.py), so
    # a change that asks nothing new (max_prompts, the SFT settings, the student) requests nothing again
    journal = ctx.run.path("blackbox", "collected.jsonl")
    t0 = time.perf_counter()
    if cfg.endpoint.base_url:
        stats = collect(prompts, journal, cfg.endpoint)
        served, source = redact_url(cfg.endpoint.base_url), source_id(cfg.endpoint)
    else:
        gguf = convert(ctx.teacher_dir, ctx.run.path("blackbox", "teacher-f32.gguf"), "f32",
                       ctx.run.path(TOKENIZER_DIR))
        n_ctx = ctx.recipe.data.max_length + cfg.endpoint.max_tokens + 16
        with serving(gguf, n_ctx=max(512, n_ctx), threads=2, log=ctx.run.path("blackbox", "server.log"),
                     alias=cfg.endpoint.model) as url:
            stats = collect(prompts, journal, cfg.endpoint, base_url=url, served=sha256_path(gguf))
        served, source = f"llama_cpp.server on 127.0.0.1 ({gguf.name})", source_id(cfg.endpoint,
                                                                                    served=sha256_path(gguf))
    collect_s = time.perf_counter() - t0
    got = replies(journal, source, prompts)
    cut = {i for i, r in got.items() if r.get("finish_reason") == "length"}
    ctx.console.print(f"  collected {len(got)}/{len(prompts)} teacher replies from {served} in {collect_s:.0f} s "
                      f"({stats.failed} failed, {len(cut)} cut off at max_tokens={cfg.endpoint.max_tokens}: "
                      f"truncated: {cfg.truncated})", highlight=False)
    if len(got) < len(prompts):  # partial work is never recorded as done: a re-run asks only the missing ones
        raise CollectError(failure_summary(stats, served, journal))
    used = [e for e in train if not (cfg.truncated == "drop" and e.id in cut)]
    if len(used) < cfg.train.batch_size and len(used) < len(train):
        raise CollectError(f"{journal}: blackbox.truncated is drop and {len(cut)} of {len(train)} replies were cut "
                           f"off at blackbox.endpoint.max_tokens={cfg.endpoint.max_tokens}, leaving {len(used)} "
                           f"examples for blackbox.train.batch_size={cfg.train.batch_size}; raise max_tokens, lower "
                           "the batch size or set truncated: no_eos")
    pairs = [(e.prompt, got[e.id]["output"]) for e in used]
    no_eos = [cfg.truncated == "no_eos" and e.id in cut for e in used]
    teacher = load_causal_lm(ctx.teacher_dir).eval()
    student, layers, _ = new_student(ctx, teacher)
    del teacher
    ckpt = train_state(ctx.run.path("blackbox"), h, fresh=ctx.force)
    res = train_sft(student, ctx.tok, pairs, cfg.train, ckpt, ctx.recipe.seed, ctx.recipe.data.max_length,
                    lora=ctx.recipe.student.lora, no_eos=no_eos)
    meta = {"config_hash": h, "role": "sft", "endpoint": served, "collected": len(got), "prompts": len(prompts),
            "truncated": len(cut), "truncated_policy": cfg.truncated, "trained_on": len(pairs),
            "collect_failed": stats.failed, "collect_retries": stats.retries, "collect_seconds": collect_s,
            "init_layers": layers, "steps": res.steps, "train_seconds": res.seconds,
            "tokens_per_second": res.per_second, "resumed_from": res.resumed_from, "history": res.history,
            "params": sum(p.numel() for p in student.parameters()), **trained(res)}
    outs = save_student(ctx, SFT, student, meta)
    ctx.run.record("blackbox", h, [*outs, journal], {"collected": len(got), "prompts": len(prompts),
                                                     "truncated": len(cut), "truncated_policy": cfg.truncated,
                                                     "trained_on": len(pairs),
                                                     "val_nll": meta["val_nll"],
                                                     "val_task_score": meta["val_task_score"],
                                                     "params": meta["params"],
                                                     "trainable_params": meta["trainable_params"]})
    drop_train_states(ctx.run.path("blackbox"))
    ctx.console.print(f"  sft: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}{lora_note(meta)}")


def candidates(r: LLMRecipe) -> list[str]:
    return [SFT] if r.blackbox.enabled else []


STRATEGY = Strategy(SFT, candidates)
