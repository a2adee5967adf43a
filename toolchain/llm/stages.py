"""The LLM pipeline's stages (``kind: llm``), in the order they run: data → teacher → ensemble (more teachers,
when ``teacher.ensemble`` lists any) → distill (KD students, the self-distilled student) → blackbox (SFT student) →
export → bench → report. The students' strategies are one module each in :mod:`.strategies`; the framework
(context, runner, skipping) is :mod:`edgedistill.toolchain.pipeline`; every stage has a config hash over its recipe
sections and the content of its inputs, records its outputs in the manifest, and is skipped when both are
unchanged.

Run-directory layout (relative to the run root)::

    recipe.yaml  manifest.json  report.json  report.md
    data/{train,val,test}.jsonl  data/tokenizer/            the splits and the tokenizer
    teacher/model/  teacher/metrics.json                    HF Llama folder (trained here) + metrics
    teacher/ensemble-<i>/  teacher/ensemble-<i>.json        teacher.ensemble[i] (trained here) + metrics
    students/<name>/  students/<name>.json                  KD students (one per loss) and the SFT student
    blackbox/teacher-f32.gguf  blackbox/collected.jsonl      the served teacher and the collect journal
    export/student-<variant>.gguf  export/artifacts.json    GGUFs of the best student, with fidelity
    export/student-onnx-<variant>/model.onnx                ONNX (KV cache, optimum) of the best student
    export/auto.json                                        export --auto's choice (toolchain/auto_select.py)
    bench/eval-tokens.npz  bench/<name>-t<T>.json           the agent's inputs and one document per measurement
    bench/devices/<device>/...  bench/results.json          other devices; everything, scored
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.core.errors import UserError
from edgedistill.core.fileio import atomic_dir, atomic_path, read_json, sha256_json, sha256_path, write_json
from edgedistill.toolchain import auto_select
from edgedistill.toolchain.llm import report as report_mod
from edgedistill.toolchain.llm.context import (
    TOKENIZER_DIR,
    Context,
    data_hash,
    files,
    lora_note,
    member_dir,
    student_outputs,
    teacher_sha,
    val_nll,
)
from edgedistill.toolchain.llm.recipe import GGUFVariant, LLMRecipe, ONNXVariant
from edgedistill.toolchain.llm.strategies import candidates, distill_key, launch, stage_key, train_students
from edgedistill.toolchain.llm.strategies.sft import stage_blackbox
from edgedistill.toolchain.pipeline import GateItem, Stage, finish_report
from edgedistill.toolchain.training import IGNORE_INDEX, drop_train_states, train_state

REPORT = report_mod
#: the LLM agent runs (generation over the whole eval set on a PyTorch teacher) may take long on 2 cores
HOST_TIMEOUT_S = 3600.0


# -- data ------------------------------------------------------------------------------------------------------
def stage_data(ctx: Context) -> None:
    from edgedistill.toolchain.llm.model_folder import check_recipe_folders

    if ctx.recipe.teacher.pretrained is not None:  # fetched, checked and dequantised once per machine
        from edgedistill.toolchain.llm.pretrained import ensure

        ensure(ctx.recipe.teacher.pretrained, log=lambda m: ctx.console.print(m, markup=False))
    check_recipe_folders(ctx.recipe)  # the recipe's own folders, before any stage reads one (even when skipped)
    h = data_hash(ctx)
    if ctx.skip("data", h):
        return
    from edgedistill.toolchain.llm.tokenizer import load_tokenizer, train_bpe

    s, tdir = ctx.splits, ctx.run.path(TOKENIZER_DIR)
    paths = s.save(ctx.run.path("data"))
    tcfg = ctx.recipe.tokenizer
    if tcfg.kind == "train-bpe":
        tok = train_bpe((e.prompt + e.completion for e in s.train), tcfg.vocab_size, tdir)
    else:
        assert tcfg.path is not None
        tok = load_tokenizer(tcfg.path)
        tok.save_pretrained(str(tdir))
    ctx.__dict__.pop("tok", None)
    _check_completions_fit(ctx)
    lengths = [len(e.input_ids) for e in ctx.encoded("test")]
    ctx.run.record("data", h, [*paths, tdir / "tokenizer.json"], {
        "split_hash": s.split_hash, "n_train": len(s.train), "n_val": len(s.val), "n_test": len(s.test),
        "vocab": len(tok), "test_tokens_mean": sum(lengths) / max(1, len(lengths)), **_data_provenance(ctx)})
    ctx.console.print(f"  {len(s.train)} train, {len(s.val)} val, {len(s.test)} test; tokenizer {len(tok)} tokens")


def _data_provenance(ctx: Context) -> dict[str, Any]:
    """The task's trivial baseline scored on the test split (what the teacher must beat) and, for a built-in
    task from a registry package, where its data came from."""
    from edgedistill.toolchain.llm.tasks import SOURCES, get_baseline

    out: dict[str, Any] = {}
    kind, test = ctx.recipe.data.kind, ctx.splits.test
    if (fn := get_baseline(kind)) is not None:
        what, preds = fn(test)
        out["baseline"] = {"what": what, **ctx.score(preds, [e.output for e in test])}
        ctx.console.print(f"  trivial baseline ({what}): task score {out['baseline']['task_score']:.3f}")
    if kind in SOURCES:
        out["source"] = SOURCES.get(kind)()
    return out


def _check_completions_fit(ctx: Context) -> None:
    """Fail closed when ``data.max_length`` cuts away every training completion: the teachers and students would
    train on no target token at all (a zero loss, then a crash in distillation)."""
    train = ctx.encoded("train")
    if train and all(y == IGNORE_INDEX for e in train for y in e.labels):
        n, prompts = ctx.recipe.data.max_length, sorted(e.n_prompt for e in train)
        raise UserError(f"data.max_length: {n} tokens cut away every training completion (the prompts take "
                        f"{prompts[0]}-{prompts[-1]} tokens); raise it above {prompts[0]}")


# -- teacher ---------------------------------------------------------------------------------------------------
def _teacher_hash(ctx: Context) -> str:
    t = ctx.recipe.teacher
    ckpt = sha256_path(t.path) if t.path is not None else None  # every shard and the index
    main = {k: v for k, v in ctx.recipe.section("teacher").items() if k not in ("ensemble", "ensemble_weights")}
    return sha256_json({"data": data_hash(ctx), "teacher": main, "ckpt": ckpt, "seed": ctx.recipe.seed})


def stage_teacher(ctx: Context) -> None:
    h = _teacher_hash(ctx)
    if ctx.skip("teacher", h):
        return
    from edgedistill.toolchain.llm.model_folder import check_vocab_fits
    from edgedistill.toolchain.llm.models import build_llama, load_causal_lm, param_count
    from edgedistill.toolchain.llm.train import train_lm

    cfg, tok = ctx.recipe.teacher, ctx.tok
    info: dict[str, Any] = {"trained_here": cfg.path is None}
    if cfg.path is None:
        model = build_llama(cfg.arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                            ctx.recipe.seed)
        ckpt = train_state(ctx.run.path("teacher"), h, fresh=ctx.force)
        res = train_lm(model, ctx.encoded("train"), cfg.train, ctx.recipe.seed, tok.pad_token_id, ckpt,
                       "training teacher")
        with atomic_dir(ctx.teacher_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
        info.update(steps=res.steps, train_seconds=res.seconds, tokens_per_second=res.per_second,
                    resumed_from=res.resumed_from, history=res.history)
    else:
        check_vocab_fits(cfg.path, tok, "teacher.path")
        model = load_causal_lm(cfg.path)
        info["checkpoint"] = str(cfg.path)
        if cfg.pretrained is not None:  # the released model it came from (package, hashes, licence, Q4_1 origin)
            from edgedistill.toolchain.llm.pretrained import recorded_source

            info["source"] = recorded_source(cfg.path)
    info.update(params=param_count(model), val_nll=val_nll(model, ctx.encoded("val"), tok.pad_token_id))
    metrics = ctx.run.path("teacher", "metrics.json")
    write_json(metrics, info)
    outs = [*files(ctx.teacher_dir), metrics] if cfg.path is None else [metrics]
    ctx.run.record("teacher", h, outs, {"params": info["params"], "val_nll": info["val_nll"],
                                        **({"source": info["source"]} if info.get("source") else {})})
    drop_train_states(ctx.run.path("teacher"))
    ctx.console.print(f"  teacher {info['params']:,} params, val NLL {info['val_nll']:.4f}")


# -- teacher ensemble ------------------------------------------------------------------------------------------
def _member_hash(ctx: Context, i: int) -> str:
    t, m = ctx.recipe.teacher, ctx.recipe.teacher.ensemble[i]
    if m.path is not None:
        return sha256_json({"ckpt": sha256_path(m.path)})
    return sha256_json({"data": data_hash(ctx), "arch": (m.arch or t.arch).model_dump(mode="json"),
                        "train": (m.train or t.train).model_dump(mode="json"),
                        "seed": t.member_seed(i, ctx.recipe.seed)})


def stage_ensemble(ctx: Context) -> None:
    """``teacher.ensemble``: check every local teacher's vocabulary against the main teacher's (the run's
    tokenizer), then train the others here like the main teacher (resumable, each keyed by its own hash and reused
    while unchanged). Nothing to do without an ensemble."""
    t = ctx.recipe.teacher
    if not t.ensemble:
        return
    h = sha256_json({"members": [_member_hash(ctx, i) for i in range(len(t.ensemble))], "data": data_hash(ctx),
                     "weights": t.weights()})
    if ctx.skip("ensemble", h):
        return
    from edgedistill.toolchain.llm.models import build_llama, check_same_vocab, load_causal_lm, param_count
    from edgedistill.toolchain.llm.train import train_lm

    tok = ctx.tok
    for i, m in enumerate(t.ensemble):  # every mismatch before any training
        if m.path is not None:
            check_same_vocab(tok, m.path, f"teacher.ensemble.{i}")
    outputs, members = [], []
    weights = t.weights()
    for i, m in enumerate(t.ensemble):
        folder, mh = member_dir(ctx, i), _member_hash(ctx, i)
        meta = ctx.run.path("teacher", f"ensemble-{i}.json")
        info: dict[str, Any] = {"label": f"teacher.ensemble.{i}", "path": str(folder),
                                "trained_here": m.path is None, "config_hash": mh, "weight": weights[i + 1]}
        old = read_json(meta) if meta.is_file() and not ctx.force else {}
        if m.path is None and not (old.get("config_hash") == mh and folder.is_dir()
                                   and old.get("weights_sha256") == sha256_path(folder)):
            seed = t.member_seed(i, ctx.recipe.seed)
            model = build_llama(m.arch or t.arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                                seed)
            ckpt = train_state(ctx.run.path("teacher"), mh, f"ensemble-{i}-", ctx.force)
            res = train_lm(model, ctx.encoded("train"), m.train or t.train, seed, tok.pad_token_id, ckpt,
                           f"training teacher.ensemble.{i}")
            with atomic_dir(folder) as tmp:
                model.save_pretrained(str(tmp), safe_serialization=True)
            drop_train_states(ctx.run.path("teacher"), f"ensemble-{i}-")
            info.update(seed=seed, steps=res.steps, train_seconds=res.seconds, resumed_from=res.resumed_from,
                        history=res.history, params=param_count(model),
                        val_nll=val_nll(model, ctx.encoded("val"), tok.pad_token_id))
        elif m.path is None:
            info = {**old, "weight": weights[i + 1]}
        else:
            model = load_causal_lm(folder)
            info.update(params=param_count(model), val_nll=val_nll(model, ctx.encoded("val"), tok.pad_token_id))
        info["weights_sha256"] = sha256_path(folder)
        write_json(meta, info)
        outputs += [*(files(folder) if m.path is None else []), meta]
        members.append({k: info.get(k) for k in ("label", "path", "trained_here", "weight", "params", "val_nll")})
        ctx.console.print(f"  {info['label']}: {info['params']:,} params, val NLL {info['val_nll']:.4f}, weight "
                          f"{info['weight']:.3f}")
    ctx.run.record("ensemble", h, outputs, {"main_weight": weights[0], "members": members})


# -- distill: every strategy's students (toolchain/llm/strategies/) ----------------------------------------------
def stage_distill(ctx: Context) -> None:
    cfg = ctx.recipe.distill
    h = distill_key(ctx)
    if not cfg.enabled or ctx.skip("distill", stage_key(ctx, h)):
        return
    info = train_students(ctx, h) if cfg.parallel == "none" else launch(ctx, h)
    outputs = [p for n in candidates(ctx.recipe, distill_only=True) for p in student_outputs(ctx, n)]
    for name, meta in info["students"].items():
        ctx.console.print(f"  {name}: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}"
                          f"{lora_note(meta)}")
    ctx.run.record("distill", stage_key(ctx, h), outputs, {
        "mode": cfg.mode, "cache": info.get("cache"), "parallel": cfg.parallel,
        "processes": cfg.num_processes if cfg.parallel != "none" else 1,
        "students": {k: {"val_nll": v["val_nll"], "val_task_score": v["val_task_score"], "params": v["params"],
                         "trainable_params": v.get("trainable_params", v["params"])}
                     for k, v in info["students"].items()}})


# -- export: GGUF and ONNX of the best student, with fidelity --------------------------------------------------
def student_names(ctx: Context) -> list[str]:
    """Trained students in report order: every strategy's candidates (:mod:`.strategies`), the CE-only baseline,
    KD students (recipe order), the self-distilled student (and its cut at ``export_exit``), then the SFT student."""
    return [n for n in candidates(ctx.recipe) if ctx.run.path("students", f"{n}.json").is_file()]


def best_student(ctx: Context) -> str:
    """The student with the highest validation task score, ties to the lower validation NLL (never chosen on the
    test split). NLL alone prefers KD students, which match the reference tokens best but need not summarise best."""
    names = student_names(ctx)
    if not names:
        raise FileNotFoundError(f"{ctx.run.root}: no trained student; run `edgedistill distill` first")

    def key(n: str) -> tuple[float, float]:
        meta = read_json(ctx.run.path("students", f"{n}.json"))
        return -round(meta.get("val_task_score", 0.0), 4), meta["val_nll"]

    return min(names, key=key)


def stage_export(ctx: Context) -> None:
    from edgedistill.toolchain.llm.export.fidelity import PARITY_VERSION
    from edgedistill.toolchain.llm.export.gguf import llama_cpp_version

    r, best = ctx.recipe, best_student(ctx)
    sdir = ctx.run.path("students", best)
    h = sha256_json({"student": sha256_path(sdir), "best": best, "export": auto_select.export_section(r),
                     "data": data_hash(ctx), "teacher": teacher_sha(ctx), "parity": PARITY_VERSION,
                     "llama_cpp": llama_cpp_version() if r.export.gguf else None})
    if ctx.skip("export", h):
        return
    from edgedistill.toolchain.llm.export.artifacts import LLMExport, export_llm, rejection_line
    from edgedistill.toolchain.llm.export.fidelity import PARITY_MIN_POSITIONS, fidelity, long_sequence, torch_logits
    from edgedistill.toolchain.llm.models import load_causal_lm

    test = ctx.encoded("test")[:r.export.fidelity_samples]
    ids, starts = [e.input_ids for e in test], [e.n_prompt for e in test]
    student = load_causal_lm(sdir)
    ref = torch_logits(student, ids)
    # the parity contract's long check: test sequences back to back, longer than data.max_length
    long_ids = long_sequence([e.input_ids for e in ctx.encoded("test")], PARITY_MIN_POSITIONS, ctx.tok.bos_token_id)
    long_ref = torch_logits(student, [long_ids])[0]
    del student
    # every PyTorch model on the same sequences: perplexity, and each student's KLD / same-top vs the teacher
    teacher = torch_logits(load_causal_lm(ctx.teacher_dir), ids)
    pytorch = {"teacher": {"perplexity": fidelity(ids, teacher, teacher, starts).perplexity}}
    for name in student_names(ctx):
        folder = ctx.run.path("students", name)
        f = fidelity(ids, teacher, ref if folder == sdir else torch_logits(load_causal_lm(folder), ids), starts)
        pytorch[name] = {"perplexity": f.perplexity, "kld_vs_teacher": f.kld_mean,
                         "same_top_vs_teacher": f.same_top_token}
    job = LLMExport(sdir, ctx.tok, ctx.run.path(TOKENIZER_DIR), ctx.run.path("export"), ctx.run.root, best,
                    list(r.export.gguf), list(r.export.onnx), ids, starts, long_ids,
                    log=lambda m: ctx.console.print(m, highlight=False), ref=ref, long_ref=long_ref)
    records, outputs, export_s = export_llm(job)
    teacher_records: list[dict[str, Any]] = []
    if r.export.teacher:  # the same-runtime, same-precision baseline for distillation's share of the speed-up
        ctx.console.print(f"  teacher → GGUF {', '.join(r.export.teacher)} (benched beside the student's files)")
        tjob = LLMExport(ctx.teacher_dir, ctx.tok, ctx.run.path(TOKENIZER_DIR), ctx.run.path("export"),
                         ctx.run.root, "teacher", list(r.export.teacher), [], ids, starts, long_ids, prefix="teacher",
                         log=lambda m: ctx.console.print(m, highlight=False), ref=teacher)
        teacher_records, t_outputs, t_s = export_llm(tjob)
        outputs, export_s = outputs + t_outputs, export_s + t_s
        job.rejected |= tjob.rejected
    listing = ctx.run.path("export", "artifacts.json")
    write_json(listing, {"best_student": best, "reference": f"PyTorch {best} student", "pytorch": pytorch,
                         "artifacts": records, "teacher_artifacts": teacher_records, "rejected": job.rejected,
                         "export_seconds": export_s})
    # a rejected file is no artifact (never benched); the run goes on and ends with exit 2 (errors)
    ctx.run.record("export", h, [*outputs, listing], {"best_student": best,
                                                      "artifacts": [a["name"] for a in records],
                                                      "teacher_artifacts": [a["name"] for a in teacher_records],
                                                      "parity_failed": [a["name"] for a in records + teacher_records
                                                                        if not a["fidelity"]["ok"]],
                                                      "rejected": job.rejected,
                                                      "errors": [rejection_line(job.rejected, listing)]
                                                      if job.rejected else []})


def export_options(recipe: LLMRecipe, formats: str | None, variants: str | None, layout: str | None) -> LLMRecipe:
    """The recipe with ``edgedistill export``'s --formats (gguf, onnx) and --variants applied and checked."""
    from typing import get_args

    if layout is not None:
        raise ValueError("--layout: only for vision runs (TFLite input layout)")
    known = {"gguf": list(get_args(GGUFVariant)), "onnx": list(get_args(ONNXVariant))}
    fmts = [f.strip() for f in (formats or "gguf,onnx").split(",") if f.strip()]
    if bad := [f for f in fmts if f not in known] or ([] if fmts else [""]):
        raise ValueError(f"--formats: unknown {bad}; an LLM run exports gguf, onnx")
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants is not None else None
    if names is not None and (bad := [v for v in names if not any(v in k for k in known.values())] or
                              ([] if names else [""])):
        raise ValueError(f"--variants: unknown {bad}; gguf has {', '.join(known['gguf'])}; onnx has "
                         f"{', '.join(known['onnx'])}")
    update: dict[str, Any] = {}
    for fmt in known:
        current = getattr(recipe.export, fmt)
        if fmt not in fmts:
            update[fmt] = []
        elif names is not None:
            update[fmt] = [v for v in names if v in known[fmt]]
        elif formats is not None and not current:
            update[fmt] = list(known[fmt])
        else:
            update[fmt] = list(current)
    if not update["gguf"] and not update["onnx"]:
        raise ValueError(f"--variants: none of {names} belongs to the chosen formats {fmts}")
    return recipe.model_copy(update={"export": recipe.export.model_copy(update=update)})


# -- bench: every model and artifact through the one agent -----------------------------------------------------
def bench_items(ctx: Context, artifacts_only: bool = False) -> list[Any]:
    from edgedistill.benchmarks.harness import BenchItem

    items = [] if artifacts_only else [BenchItem("teacher", ctx.teacher_dir, "pytorch-llm")]
    if not artifacts_only:
        items += [BenchItem(f"{n}-student", ctx.run.path("students", n), "pytorch-llm") for n in student_names(ctx)]
    listing = ctx.run.path("export", "artifacts.json")
    if ctx.run.stage("export") and listing.is_file():
        doc = read_json(listing)  # the teacher's files are benched on the host only, beside the student's
        listed = doc["artifacts"] + ([] if artifacts_only else doc.get("teacher_artifacts", []))
        items += [BenchItem(a["name"], ctx.run.root / a["file"], "onnxruntime-llm" if a["format"] == "onnx"
                            else None) for a in listed]
    return items


def _write_eval(ctx: Context) -> Path:
    """The agent's eval file: test token sequences (next-token accuracy and logits, the fidelity samples), test
    prompts as ids (generation, the eval samples) and as text (a GGUF's own tokenizer on the device), and the EOS
    id; plain arrays (no pickle), so it travels to any device."""
    import numpy as np

    b, tok = ctx.recipe.bench, ctx.tok
    encoded = ctx.encoded("test")[:ctx.recipe.export.fidelity_samples]
    seqs = [e.input_ids for e in encoded]
    prompts = _prompts(ctx)[:max(b.eval_samples, b.device_eval_samples)]

    def pad(rows: list[list[int]]) -> tuple[Any, Any]:
        a = np.zeros((len(rows), max(map(len, rows), default=1)), dtype=np.int32)
        for i, s in enumerate(rows):
            a[i, :len(s)] = s
        return a, np.array([len(s) for s in rows], dtype=np.int32)

    ids, lengths = pad(seqs)
    p_ids, p_lengths = pad(prompts)
    texts = np.array([e.prompt for e in ctx.splits.test[:len(prompts)]], dtype=np.str_)  # fixed-width: no pickle
    out = ctx.run.path("bench", "eval-tokens.npz")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, lengths=lengths, score_from=np.array([e.n_prompt for e in encoded], dtype=np.int32),
                 prompt_ids=p_ids, prompt_lengths=p_lengths, texts=texts,
                 eos=np.int32(tok.eos_token_id if tok.eos_token_id is not None else -1))
    return out


def _prompts(ctx: Context) -> list[list[int]]:
    from edgedistill.toolchain.llm.tokenizer import encode

    n = ctx.recipe.data.max_length
    return [encode(ctx.tok, e.prompt, None, n).input_ids for e in ctx.splits.test]


def _reference_logits(ctx: Context, eval_npz: Path) -> Path | None:
    """The shipped student's PyTorch logits on the eval sequences, laid out as the agent writes them (every
    position of every sequence, concatenated), and the ``rows`` that predict completion tokens: the source every
    device's parity is measured against, on the positions the export's fidelity check scores."""
    import numpy as np

    from edgedistill.toolchain.llm.export.fidelity import torch_logits
    from edgedistill.toolchain.llm.models import load_causal_lm

    listing = ctx.run.path("export", "artifacts.json")
    if not listing.is_file():
        return None
    best = read_json(listing)["best_student"]
    ev = np.load(eval_npz, allow_pickle=False)
    seqs = [list(map(int, row[:n])) for row, n in zip(ev["ids"], ev["lengths"], strict=True)]
    logits = torch_logits(load_causal_lm(ctx.run.path("students", best)), seqs)
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    rows = np.concatenate([np.arange(o + max(0, int(start) - 1), o + len(s) - 1) for o, s, start
                           in zip(offsets, seqs, ev["score_from"], strict=False)] or [np.zeros(0)]).astype(np.int64)
    out = ctx.run.path("bench", "reference-logits.npz")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, logits=np.concatenate(logits).astype(np.float32), rows=rows)
    return out


def _agent_options(ctx: Context, generate: int) -> tuple[str, ...]:
    b, r = ctx.recipe.bench, ctx.recipe
    ctx_len = max(512, r.data.max_length + b.max_new_tokens + 16, b.pp_tokens + b.warmup + b.runs + 16)
    return ("--pp", str(b.pp_tokens), "--tg", str(b.tg_tokens), "--reps", str(b.repetitions), "--generate",
            str(generate), "--max-new-tokens", str(b.max_new_tokens), "--ctx", str(ctx_len))


def _score_runs(ctx: Context, matrix: dict[str, Any]) -> None:
    """Decode every run's generated ids and score them against the test references (in place): the task score of
    each model on each device, from the agent's own outputs."""
    refs = [e.output for e in ctx.splits.test]
    for dev in matrix.values():
        for res in dev.get("results", {}).values():
            for doc in res.get("runs", {}).values():
                gen = doc.get("generated")
                if gen is None:
                    continue
                preds = [ctx.tok.decode(ids, skip_special_tokens=True).strip() for ids in gen]
                doc["task"] = ctx.score(preds, refs[:len(preds)])
                doc["task"]["per_example"] = [ctx.score([p], [r])["task_score"] for p, r in zip(preds, refs,
                                                                                             strict=False)]
                doc["samples"] = [{"id": e.id, "prediction": p, "reference": e.output}
                                  for e, p in list(zip(ctx.splits.test, preds, strict=False))[:3]]


def stage_bench(ctx: Context) -> None:
    b = ctx.recipe.bench
    ctx.run.require_intact("export")
    items = bench_items(ctx)
    measured = {i.name: {"path": str(i.path.relative_to(ctx.run.root)) if i.path.is_relative_to(ctx.run.root)
                         else str(i.path), "sha256": sha256_path(i.path)} for i in items}
    h = sha256_json({"items": {n: m["sha256"] for n, m in measured.items()}, "bench": ctx.recipe.section("bench"),
                     "data": data_hash(ctx), "export": ctx.recipe.export.fidelity_samples})
    if ctx.skip("bench", h):
        return
    from edgedistill.benchmarks.harness import measure_devices, plan_devices
    from edgedistill.toolchain.progress import make_progress

    eval_npz, out_dir = _write_eval(ctx), ctx.run.path("bench", "x").parent
    reference = _reference_logits(ctx, eval_npz)
    others = [d for d in b.devices if d not in ("host", "local")]
    artifacts = bench_items(ctx, artifacts_only=True)
    plan = plan_devices(others, [b.threads], b.profiles)
    with make_progress() as prog:
        task = prog.add_task("benchmarking (agent, fresh process each)", status="",
                             total=len(items) + len(artifacts) * sum(map(len, plan.values())))
        matrix = measure_devices(items, ["host"], [b.threads], eval_npz, out_dir, b.warmup, b.runs, b.profiles,
                                 progress=lambda: prog.advance(task), options=_agent_options(ctx, b.eval_samples),
                                 timeout_s=HOST_TIMEOUT_S, force=ctx.force, reference=reference)
        if others and artifacts:
            matrix |= measure_devices(artifacts, others, [b.threads], eval_npz, out_dir, b.warmup, b.runs,
                                      b.profiles, progress=lambda: prog.advance(task),
                                      options=_agent_options(ctx, b.device_eval_samples), force=ctx.force,
                                      reference=reference)
    _score_runs(ctx, matrix)
    agg = ctx.run.path("bench", "results.json")
    write_json(agg, {"threads": [b.threads], "devices": matrix})
    host = matrix["host"]["results"]
    for name, res in host.items():
        doc = res["runs"].get(b.threads)
        if res["error"] or doc is None:
            ctx.console.print(f"  [yellow]{name} failed:[/yellow] {res['error']}")
        else:
            ctx.console.print(f"  {name}: task {doc['task']['task_score']:.3f}, {doc['latency_ms']['p50']:.2f} "
                              f"ms/token, tg {doc['tg_tps']:.0f} tok/s, pp {doc['pp_tps']:.0f} tok/s")
    failed_devices = {d: e["error"] for d, e in matrix.items() if e["error"]}
    for d, err in failed_devices.items():
        ctx.console.print(f"  [yellow]device {d} failed:[/yellow] {err}")
    ctx.run.record("bench", h, [agg], {"failed": [n for n, r in host.items() if r["error"]], "measured": measured,
                                       "devices": list(matrix), "failed_devices": failed_devices})


def stage_report(ctx: Context) -> dict[str, Any]:
    """report.json and report.md from the stages' files (always re-run: it is cheap)."""
    run = ctx.run

    def opt(*parts: str) -> Any:
        p = run.root.joinpath(*parts)
        return read_json(p) if p.is_file() else None

    rep = report_mod.build(report_mod.ReportInputs(
        recipe=ctx.recipe.name, run_dir=str(run.root), teacher=opt("teacher", "metrics.json") or {},
        students={n: read_json(run.path("students", f"{n}.json")) for n in student_names(ctx)},
        export=opt("export", "artifacts.json") if run.stage("export") else None,
        bench=opt("bench", "results.json") if run.stage("bench") else None,
        manifest=run.manifest(), threads=ctx.recipe.bench.threads,
        accuracy_tolerance=ctx.recipe.bench.accuracy_tolerance, auto=auto_select.report_decision(ctx)))
    finish_report(ctx, rep, report_mod)
    return rep


def gate_items(ctx: Context) -> list[GateItem]:
    return [GateItem(i.name, i.path, i.runtime, _agent_options(ctx, 0), ctx.run.path("bench", "eval-tokens.npz"))
            for i in bench_items(ctx, artifacts_only=True)]


def auto_candidates(ctx: Context, spec: str) -> Any:
    """``export --auto``: the exported artifacts measured on ``spec`` (:mod:`edgedistill.toolchain.llm.auto`)."""
    from edgedistill.toolchain.llm.auto import auto_candidates as measure

    return measure(ctx, spec)


STAGES = (Stage("data", stage_data, "distill"), Stage("teacher", stage_teacher, "distill"),
          Stage("ensemble", stage_ensemble, "distill"), Stage("distill", stage_distill, "distill"),
          Stage("blackbox", stage_blackbox, "distill"),
          Stage("export", stage_export, "export"), Stage(auto_select.STAGE, auto_select.stage_select, "export"),
          Stage("bench", stage_bench, "bench"),
          Stage("report", stage_report, "report"))
