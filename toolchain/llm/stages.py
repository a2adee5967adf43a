"""The LLM pipeline's stages (``kind: llm``), in the order they run: data → teacher → ensemble (more teachers,
when ``teacher.ensemble`` lists any) → distill (KD students, the self-distilled student) → blackbox (SFT student) →
export → bench → report. The framework (context, runner, skipping) is
:mod:`edgedistill.toolchain.pipeline`; every stage has a config hash over its recipe sections and the content of
its inputs, records its outputs in the manifest, and is skipped when both are unchanged.

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

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from edgedistill.benchmarks.report import llm as report_mod
from edgedistill.core.errors import UserError
from edgedistill.core.fileio import atomic_dir, atomic_path, read_json, sha256_json, sha256_path, write_json
from edgedistill.core.procs import dies_with_us
from edgedistill.core.urls import redact_url
from edgedistill.toolchain import auto_select, pipeline
from edgedistill.toolchain.llm.data import Splits, load_splits
from edgedistill.toolchain.llm.recipe import GGUFVariant, LLMRecipe, ONNXVariant
from edgedistill.toolchain.pipeline import GateItem, Stage, finish_report
from edgedistill.toolchain.training import IGNORE_INDEX, drop_train_states, train_state

TEACHER_DIR = "teacher/model"
TOKENIZER_DIR = "data/tokenizer"
SFT = "sft"
BASELINE = "baseline"
#: bumped when a student's metadata gains a field the pipeline relies on (3: weights_sha256), so old runs retrain
STUDENT_META_VERSION = 3
REPORT = report_mod
#: the LLM agent runs (generation over the whole eval set on a PyTorch teacher) may take long on 2 cores
HOST_TIMEOUT_S = 3600.0


@dataclass
class Context(pipeline.Context):
    """An LLM stage's context: the framework's, plus the splits and the tokenizer (loaded on first use)."""

    recipe: LLMRecipe

    @cached_property
    def splits(self) -> Splits:
        d = self.recipe.data
        return load_splits(d.kind, d.path, d.n_examples, d.val_fraction, d.test_fraction, d.seed, d.prompt_template)

    @cached_property
    def tok(self) -> Any:
        from edgedistill.toolchain.llm.tokenizer import load_tokenizer

        return load_tokenizer(self.run.path(TOKENIZER_DIR))

    def encoded(self, split: str) -> list[Any]:
        from edgedistill.toolchain.llm.tokenizer import encode

        n = self.recipe.data.max_length
        return [encode(self.tok, e.prompt, e.completion, n) for e in getattr(self.splits, split)]

    @property
    def teacher_dir(self) -> Path:
        p = self.recipe.teacher.path
        return p if p is not None else self.run.path(TEACHER_DIR)

    def score(self, preds: list[str], refs: list[str]) -> dict[str, Any]:
        from edgedistill.toolchain.llm.tasks import score

        s = self.recipe.data.score
        return score(preds, refs, s.name, self.recipe.data.kind, s)


# -- data ------------------------------------------------------------------------------------------------------
def data_hash(ctx: Context) -> str:
    return sha256_json({"data": ctx.recipe.section("data"), "tokenizer": ctx.recipe.section("tokenizer"),
                        "tokenizer_files": sha256_path(ctx.recipe.tokenizer.path) if ctx.recipe.tokenizer.path
                        else None, "split": ctx.splits.split_hash})


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


@torch.no_grad()
def val_nll(model: torch.nn.Module, data: list[Any], pad_id: int, n: int = 64, batch_size: int = 16) -> float:
    """Mean cross-entropy on the completion tokens of the first ``n`` validation examples."""
    from edgedistill.toolchain.llm.train import collate
    from edgedistill.toolchain.training import IGNORE_INDEX

    model.eval()
    tot, cnt = 0.0, 0
    for s in range(0, min(n, len(data)), batch_size):
        b = collate(data[s:min(s + batch_size, n)], pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        y = b["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        tot += float(loss)
        cnt += int((y != IGNORE_INDEX).sum())
    return tot / max(1, cnt)


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
    outs = [*_files(ctx.teacher_dir), metrics] if cfg.path is None else [metrics]
    ctx.run.record("teacher", h, outs, {"params": info["params"], "val_nll": info["val_nll"],
                                        **({"source": info["source"]} if info.get("source") else {})})
    drop_train_states(ctx.run.path("teacher"))
    ctx.console.print(f"  teacher {info['params']:,} params, val NLL {info['val_nll']:.4f}")


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def _teacher_sha(ctx: Context) -> str:
    return sha256_path(ctx.teacher_dir)


# -- teacher ensemble ------------------------------------------------------------------------------------------
def _member_dir(ctx: Context, i: int) -> Path:
    m = ctx.recipe.teacher.ensemble[i]
    return m.path if m.path is not None else ctx.run.path("teacher", f"ensemble-{i}")


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
        folder, mh = _member_dir(ctx, i), _member_hash(ctx, i)
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
        outputs += [*(_files(folder) if m.path is None else []), meta]
        members.append({k: info.get(k) for k in ("label", "path", "trained_here", "weight", "params", "val_nll")})
        ctx.console.print(f"  {info['label']}: {info['params']:,} params, val NLL {info['val_nll']:.4f}, weight "
                          f"{info['weight']:.3f}")
    ctx.run.record("ensemble", h, outputs, {"main_weight": weights[0], "members": members})


class _Teachers:
    """The main teacher and, with ``teacher.ensemble``, the others: loaded once, on first use. ``target()`` is
    what KD learns from: the main teacher, or the list of all (mixed with ``weights``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self._main, self._others, self._shas = ctx, None, None, None
        t = ctx.recipe.teacher
        self.weights: list[float] | None = t.weights() if t.ensemble else None

    def main(self) -> Any:
        from edgedistill.toolchain.llm.models import load_causal_lm

        if self._main is None:
            self._main = load_causal_lm(self.ctx.teacher_dir).eval()
        return self._main

    def target(self) -> Any:
        from edgedistill.toolchain.llm.models import load_causal_lm

        if self.weights is None:
            return self.main()
        if self._others is None:
            n = len(self.ctx.recipe.teacher.ensemble)
            self._others = [load_causal_lm(_member_dir(self.ctx, i)).eval() for i in range(n)]
        return [self.main(), *self._others]

    def shas(self) -> list[str]:
        """Every teacher's weights hash, the main one first (computed once: a large teacher takes a while)."""
        if self._shas is None:
            self._shas = [_teacher_sha(self.ctx)] + [sha256_path(_member_dir(self.ctx, i))
                                                     for i in range(len(self.ctx.recipe.teacher.ensemble))]
        return self._shas


# -- students --------------------------------------------------------------------------------------------------
def _new_student(ctx: Context, teacher: torch.nn.Module) -> tuple[torch.nn.Module, list[int] | None, int]:
    """The student before training (a local checkpoint, or a fresh model of the teacher's family with
    ``student.arch``'s widths, layers and heads, initialised from the teacher), the teacher layers it copied, and the
    vocabulary size both share (embedding rows beyond it are padding)."""
    from edgedistill.toolchain.llm.models import align_vocab, build_like, init_from_teacher, load_causal_lm

    r, tok = ctx.recipe, ctx.tok
    if r.student.path is not None:
        student, layers = load_causal_lm(r.student.path), None
    else:
        student = build_like(teacher, r.student.arch, teacher.config.vocab_size, r.seed)
        layers = init_from_teacher(student, teacher) if r.student.init == "teacher-layers" else None
    vocab = align_vocab(teacher.config.vocab_size, student.config.vocab_size, len(tok))
    return student, layers, vocab


def generate(ctx: Context, folder: Path, examples: list[Any]) -> list[str]:
    """Greedy outputs of the HF model in ``folder`` for ``examples`` (the PyTorch reference, in this process)."""
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.tokenizer import encode

    r, tok = ctx.recipe, ctx.tok
    sess = TorchLMSession(folder, threads=torch.get_num_threads())
    out = []
    for e in examples:
        new, _ = sess.generate(encode(tok, e.prompt, None, r.data.max_length).input_ids, r.bench.max_new_tokens,
                               tok.eos_token_id)
        out.append(tok.decode(new, skip_special_tokens=True).strip())
    return out


def val_task_score(ctx: Context, folder: Path) -> float:
    """Task score of greedy outputs on the first ``student.selection_samples`` validation examples: how the best
    student is chosen (never on the test split)."""
    val = ctx.splits.val[:ctx.recipe.student.selection_samples]
    return float(ctx.score(generate(ctx, folder, val), [e.output for e in val])["task_score"])


def _save_student(ctx: Context, name: str, model: torch.nn.Module, info: dict[str, Any]) -> list[Path]:
    """Weights first (atomically, as a folder), then the metadata naming their hash: a kill between the two leaves
    metadata that does not match, so the student is retrained rather than reused."""
    folder = ctx.run.path("students", name)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    info["weights_sha256"] = sha256_path(folder)
    info["val_nll"] = val_nll(model, ctx.encoded("val"), ctx.tok.pad_token_id)
    info["val_task_score"] = val_task_score(ctx, folder)
    meta = ctx.run.path("students", f"{name}.json")
    write_json(meta, info)
    return [*_files(folder), meta]


def _student_done(ctx: Context, name: str, h: str) -> bool:
    meta, folder = ctx.run.path("students", f"{name}.json"), ctx.run.path("students", name)
    if ctx.force or not (meta.is_file() and folder.is_dir()):
        return False
    try:
        m = read_json(meta)
    except ValueError:
        return False
    return m.get("config_hash") == h and m.get("weights_sha256") == sha256_path(folder)


def _student_outputs(ctx: Context, name: str) -> list[Path]:
    return [*_files(ctx.run.path("students", name)), ctx.run.path("students", f"{name}.json")]


def _trained(res: Any) -> dict[str, Any]:
    """A student's metadata on what trained: the parameters the optimiser updated (every one, or the LoRA
    adapters'), and the adapter settings (None: full fine-tuning)."""
    return {"trainable_params": res.trainable_params, "lora": res.lora}


def _lora_note(meta: dict[str, Any]) -> str:
    lora = meta.get("lora")
    if not lora:
        return ""
    base = ", NF4 base" if lora["quantize"] == "4bit" else ""
    return (f"; LoRA r={lora['r']}{base}: {lora['trainable_params']:,} of {lora['params']:,} params trained "
            f"({100 * lora['trainable_params'] / lora['params']:.2f}%), merged")


# -- white-box KD ----------------------------------------------------------------------------------------------
def _student_section(ctx: Context) -> dict[str, Any]:
    """The student section as the students' hashes see it: LoRA settings only when LoRA is on (so they cannot
    retrain students that never used them)."""
    sec = ctx.recipe.section("student")
    if not sec["lora"]["enabled"]:
        del sec["lora"]
    return sec


def distill_hash(ctx: Context) -> str:
    """What the KD and CE-only students depend on (the self-distilled student adds its own section:
    :func:`_distill_stage_hash`)."""
    r = ctx.recipe
    distill = {k: v for k, v in r.section("distill").items()
               if k not in ("cache_dir", "parallel", "num_processes", "self_distill")}
    parts = {"teacher": _teacher_sha(ctx), "data": data_hash(ctx), "student": _student_section(ctx),
             "distill": distill, "seed": r.seed, "meta": STUDENT_META_VERSION}
    if r.teacher.ensemble:  # absent without one, so runs made before ensembles keep their hash
        parts["ensemble"] = {"teachers": _Teachers(ctx).shas()[1:], "weights": r.teacher.weights()}
    return sha256_json(parts)


def _distill_stage_hash(ctx: Context, h: str) -> str:
    sd = ctx.recipe.distill.self_distill
    return h if not sd.enabled else sha256_json({"students": h, "self_distill": sd.model_dump(mode="json")})


def _teacher_cache(ctx: Context, loss: Any, teachers: _Teachers) -> tuple[Any, dict[str, Any]]:
    from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key, default_cache_dir

    cfg, tok = ctx.recipe.distill, ctx.tok
    assert cfg.top_k is not None
    data = ctx.encoded("train")
    key = cache_key(teachers.shas(), data, cfg.top_k, loss.temperature, teachers.weights)
    cache, hit = build_cache(key, cfg.cache_dir or default_cache_dir(), data, tok.pad_token_id, len(tok),
                             cfg.top_k, loss.temperature, teachers.target, cfg.shard_tokens, weights=teachers.weights)
    return cache, {"path": str(cache.folder), "hit": hit, "bytes_per_token": cache.bytes_per_token, "k": cfg.top_k,
                   "teachers": int(cache.index.get("teachers", 1))}


def train_kd_students(ctx: Context, h: str, accelerator: Any = None) -> dict[str, Any]:
    """Train every loss's student that is not already done (one process, or each rank under ``accelerator``);
    returns ``{"students": {name: meta}, "cache": info}``. Only the main process writes files."""
    from edgedistill.toolchain.llm.distill.kd import train_kd

    cfg, tok = ctx.recipe.distill, ctx.tok
    main = accelerator is None or accelerator.is_main_process
    teachers = _Teachers(ctx)
    get_teacher = teachers.main

    info: dict[str, Any] = {"students": {}, "cache": None}
    if cfg.baseline:
        _train_baseline(ctx, h, get_teacher, info, accelerator)
    for loss in cfg.losses:
        sh = sha256_json({"stage": h, "loss": loss.model_dump(mode="json")})
        if _student_done(ctx, loss.name, sh):
            info["students"][loss.name] = read_json(ctx.run.path("students", f"{loss.name}.json"))
            continue
        cache = None
        if cfg.mode == "offline":
            cache, info["cache"] = _teacher_cache(ctx, loss, teachers)
            if main:
                ctx.console.print(f"  teacher top-{cfg.top_k} cache {'hit' if info['cache']['hit'] else 'written'}: "
                                  f"{cache.bytes_per_token:.1f} B/token")
        student, layers, vocab = _new_student(ctx, get_teacher())
        ckpt = train_state(ctx.run.path("students"), sh, f"{loss.name}-", ctx.force)
        res = train_kd(student, ctx.encoded("train"), loss, cfg.train, ctx.recipe.seed, tok.pad_token_id,
                       cfg.chunk_tokens, ckpt, cache=cache, teacher=None if cache is not None else teachers.target(),
                       accelerator=accelerator, vocab=vocab, weights=teachers.weights,
                       lora=ctx.recipe.student.lora)
        meta = {"config_hash": sh, "role": "kd", "loss": loss.model_dump(mode="json"), "init_layers": layers,
                "teachers": 1 + len(ctx.recipe.teacher.ensemble), "layers": student.config.num_hidden_layers,
                "steps": res.steps, "train_seconds": res.seconds, "tokens_per_second": res.per_second,
                "resumed_from": res.resumed_from, "history": res.history,
                "params": sum(p.numel() for p in student.parameters()), **_trained(res),
                "processes": accelerator.num_processes if accelerator is not None else 1}
        if main:
            _save_student(ctx, loss.name, student, meta)
            drop_train_states(ctx.run.path("students"), f"{loss.name}-")
        if accelerator is not None:
            accelerator.wait_for_everyone()
        info["students"][loss.name] = read_json(ctx.run.path("students", f"{loss.name}.json"))
    if cfg.self_distill.enabled:
        _train_self_distill(ctx, h, teachers, info)
    return info


def _train_self_distill(ctx: Context, h: str, teachers: _Teachers, info: dict[str, Any]) -> None:
    """``distill.self_distill``: the student with early exits (its exits learn its final layer's distribution;
    the final layer the labels, or the teacher's targets with ``kd_loss``), saved as a plain HF folder, and with
    ``export_exit`` the model cut at that exit as one more candidate. One process (the recipe checks it)."""
    from edgedistill.toolchain.llm.distill.kd import train_self_distill
    from edgedistill.toolchain.llm.models import EarlyExitLM, cut_at_exit, param_count

    cfg, tok, r = ctx.recipe.distill, ctx.tok, ctx.recipe
    sd = cfg.self_distill
    kd = next((loss for loss in cfg.losses if loss.name == sd.kd_loss), None)
    sh = sha256_json({"stage": h, "self_distill": sd.model_dump(mode="json"),
                      "kd": kd.model_dump(mode="json") if kd is not None else None})
    names = sd.candidate_names()
    if not all(_student_done(ctx, n, sh) for n in names):
        cache = None
        if kd is not None and cfg.mode == "offline":
            cache, info["cache"] = _teacher_cache(ctx, kd, teachers)
        student, layers, vocab = _new_student(ctx, teachers.main())
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
        _save_student(ctx, sd.name, student, {**base, "layers": n_layers, "params": param_count(student)})
        if sd.export_exit is not None:
            cut = cut_at_exit(model, sd.export_exit)
            _save_student(ctx, names[1], cut, {**base, "role": "self-distill-exit", "cut_at": sd.export_exit,
                                               "layers": sd.export_exit, "params": param_count(cut)})
        drop_train_states(ctx.run.path("students"), f"{sd.name}-")
    for n in names:
        info["students"][n] = read_json(ctx.run.path("students", f"{n}.json"))


def _train_baseline(ctx: Context, h: str, get_teacher: Any, info: dict[str, Any], accelerator: Any = None) -> None:
    """The CE-only student: the same initialisation, data and budget as the KD students, trained on the reference
    completions alone (what distillation has to beat)."""
    from edgedistill.toolchain.llm.train import train_lm

    cfg, tok, name = ctx.recipe.distill, ctx.tok, BASELINE
    sh = sha256_json({"stage": h, "baseline": cfg.train.model_dump(mode="json")})
    if not _student_done(ctx, name, sh):
        student, layers, _ = _new_student(ctx, get_teacher())
        ckpt = train_state(ctx.run.path("students"), sh, f"{name}-", ctx.force)
        res = train_lm(student, ctx.encoded("train"), cfg.train, ctx.recipe.seed, tok.pad_token_id, ckpt,
                       "training CE-only baseline", accelerator=accelerator, lora=ctx.recipe.student.lora)
        meta = {"config_hash": sh, "role": "baseline", "init_layers": layers,
                "layers": student.config.num_hidden_layers, "steps": res.steps,
                "train_seconds": res.seconds, "tokens_per_second": res.per_second, "resumed_from": res.resumed_from,
                "history": res.history, "params": sum(p.numel() for p in student.parameters()), **_trained(res)}
        if accelerator is None or accelerator.is_main_process:
            _save_student(ctx, name, student, meta)
            drop_train_states(ctx.run.path("students"), f"{name}-")
        if accelerator is not None:
            accelerator.wait_for_everyone()
    info["students"][name] = read_json(ctx.run.path("students", f"{name}.json"))


def stage_distill(ctx: Context) -> None:
    cfg = ctx.recipe.distill
    h = distill_hash(ctx)
    if not cfg.enabled or ctx.skip("distill", _distill_stage_hash(ctx, h)):
        return
    info = train_kd_students(ctx, h) if cfg.parallel == "none" else _launch_distill(ctx, h)
    names = ([BASELINE] if cfg.baseline else []) + [loss.name for loss in cfg.losses]
    names += cfg.self_distill.candidate_names()
    outputs = [p for n in names for p in _student_outputs(ctx, n)]
    for name, meta in info["students"].items():
        ctx.console.print(f"  {name}: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}"
                          f"{_lora_note(meta)}")
    ctx.run.record("distill", _distill_stage_hash(ctx, h), outputs, {
        "mode": cfg.mode, "cache": info.get("cache"), "parallel": cfg.parallel,
        "processes": cfg.num_processes if cfg.parallel != "none" else 1,
        "students": {k: {"val_nll": v["val_nll"], "val_task_score": v["val_task_score"], "params": v["params"],
                         "trainable_params": v.get("trainable_params", v["params"])}
                     for k, v in info["students"].items()}})


def _launch_distill(ctx: Context, h: str) -> dict[str, Any]:
    """``distill.parallel``: build the teacher cache here (once), then train the students under ``accelerate launch``
    with ``num_processes`` ranks (:mod:`edgedistill.toolchain.llm.launch`); the ranks write the students."""
    from edgedistill.toolchain.llm.distill.server import free_port

    cfg = ctx.recipe.distill
    cache_info = None
    if cfg.mode == "offline":
        for loss in cfg.losses:
            _, cache_info = _teacher_cache(ctx, loss, _Teachers(ctx))
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--num_processes", str(cfg.num_processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += ["--use_fsdp"] if cfg.parallel == "fsdp" else ["--multi_gpu"]
    cmd += ["-m", "edgedistill.toolchain.llm.launch", "--out", str(ctx.run.root)]
    if ctx.force:  # the ranks run without --force: redo the work by removing what they would reuse
        for name in [BASELINE, *(loss.name for loss in cfg.losses)]:
            ctx.run.path("students", f"{name}.json").unlink(missing_ok=True)
        drop_train_states(ctx.run.path("students"))
    ctx.console.print(f"  accelerate launch: {cfg.num_processes} processes ({cfg.parallel})")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(dies_with_us(cmd), env=env, check=False)
    if proc.returncode != 0:
        raise UserError(f"distill: `accelerate launch` exited {proc.returncode}; re-run to resume from the last "
                        "checkpoint")
    names = ([BASELINE] if cfg.baseline else []) + [loss.name for loss in cfg.losses]
    students = {n: read_json(ctx.run.path("students", f"{n}.json")) for n in names}
    return {"students": students, "cache": cache_info}


# -- black-box: serve the teacher, collect its replies, SFT -----------------------------------------------------
def _blackbox_hash(ctx: Context) -> str:
    r = ctx.recipe
    return sha256_json({"teacher": _teacher_sha(ctx), "data": data_hash(ctx), "student": _student_section(ctx),
                        "blackbox": r.section("blackbox"), "max_length": r.data.max_length, "seed": r.seed,
                        "meta": STUDENT_META_VERSION})


def stage_blackbox(ctx: Context) -> None:
    cfg = ctx.recipe.blackbox
    h = _blackbox_hash(ctx)
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
    student, layers, _ = _new_student(ctx, teacher)
    del teacher
    ckpt = train_state(ctx.run.path("blackbox"), h, fresh=ctx.force)
    res = train_sft(student, ctx.tok, pairs, cfg.train, ckpt, ctx.recipe.seed, ctx.recipe.data.max_length,
                    lora=ctx.recipe.student.lora, no_eos=no_eos)
    meta = {"config_hash": h, "role": "sft", "endpoint": served, "collected": len(got), "prompts": len(prompts),
            "truncated": len(cut), "truncated_policy": cfg.truncated, "trained_on": len(pairs),
            "collect_failed": stats.failed, "collect_retries": stats.retries, "collect_seconds": collect_s,
            "init_layers": layers, "steps": res.steps, "train_seconds": res.seconds,
            "tokens_per_second": res.per_second, "resumed_from": res.resumed_from, "history": res.history,
            "params": sum(p.numel() for p in student.parameters()), **_trained(res)}
    outs = _save_student(ctx, SFT, student, meta)
    ctx.run.record("blackbox", h, [*outs, journal], {"collected": len(got), "prompts": len(prompts),
                                                     "truncated": len(cut), "truncated_policy": cfg.truncated,
                                                     "trained_on": len(pairs),
                                                     "val_nll": meta["val_nll"],
                                                     "val_task_score": meta["val_task_score"],
                                                     "params": meta["params"],
                                                     "trainable_params": meta["trainable_params"]})
    drop_train_states(ctx.run.path("blackbox"))
    ctx.console.print(f"  sft: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}{_lora_note(meta)}")


# -- export: GGUF and ONNX of the best student, with fidelity --------------------------------------------------
def student_names(ctx: Context) -> list[str]:
    """Trained students in report order: the CE-only baseline, KD students (recipe order), the self-distilled
    student (and its cut at ``export_exit``), then the SFT student."""
    d = ctx.recipe.distill
    names = ([BASELINE] if d.baseline else []) + [loss.name for loss in d.losses] if d.enabled else []
    names += d.self_distill.candidate_names() if d.enabled else []
    if ctx.recipe.blackbox.enabled:
        names.append(SFT)
    return [n for n in names if ctx.run.path("students", f"{n}.json").is_file()]


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
                     "data": data_hash(ctx), "teacher": _teacher_sha(ctx), "parity": PARITY_VERSION,
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
    seqs = [e.input_ids for e in ctx.encoded("test")[:ctx.recipe.export.fidelity_samples]]
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
        np.savez(f, ids=ids, lengths=lengths, prompt_ids=p_ids, prompt_lengths=p_lengths, texts=texts,
                 eos=np.int32(tok.eos_token_id if tok.eos_token_id is not None else -1))
    return out


def _prompts(ctx: Context) -> list[list[int]]:
    from edgedistill.toolchain.llm.tokenizer import encode

    n = ctx.recipe.data.max_length
    return [encode(ctx.tok, e.prompt, None, n).input_ids for e in ctx.splits.test]


def _reference_logits(ctx: Context, eval_npz: Path) -> Path | None:
    """The shipped student's PyTorch logits on the eval sequences, laid out as the agent writes them (every
    position of every sequence, concatenated): the source every device's parity is measured against."""
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
    out = ctx.run.path("bench", "reference-logits.npy")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(logits).astype(np.float32), allow_pickle=False)
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
