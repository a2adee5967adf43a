"""The LLM pipeline (``kind: llm``): data → teacher → distill (KD students) → blackbox (SFT student) → export →
bench → report, each stage reading from and writing to the run directory like the vision stages
(:mod:`edgedistill.toolchain.stages`): a config hash per stage, outputs recorded in the manifest, and a stage whose
hash and outputs are unchanged is skipped.

Run-directory layout (relative to the run root)::

    recipe.yaml  manifest.json  report.json  report.md
    data/{train,val,test}.jsonl  data/tokenizer/            the splits and the tokenizer
    teacher/model/  teacher/metrics.json                    HF Llama folder (trained here) + metrics
    students/<name>/  students/<name>.json                  KD students (one per loss) and the SFT student
    blackbox/teacher-f32.gguf  blackbox/collected.jsonl      the served teacher and the collect journal
    export/student-<variant>.gguf  export/artifacts.json    GGUFs of the best student, with fidelity
    export/student-onnx-<variant>/model.onnx                ONNX (KV cache, optimum) of the best student
    bench/<name>.json  bench/results.json                   one fresh-process measurement per model / artifact
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgedistill.core.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json
from edgedistill.toolchain.llm.data import Splits, load_splits
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.pipeline import save_recipe, skip_stage  # noqa: F401  (save_recipe: used by the CLI)
from edgedistill.toolchain.rundir import RunDir

STAGES = ("data", "teacher", "distill", "blackbox", "export", "bench", "report")
TEACHER_DIR = "teacher/model"
TOKENIZER_DIR = "data/tokenizer"
SFT = "sft"
#: bumped when a student's metadata gains a field the pipeline relies on (2: val_task_score), so old runs retrain
STUDENT_META_VERSION = 2
HF_FILES = ("config.json", "model.safetensors")


@dataclass
class LLMContext:
    """What every LLM stage gets: the recipe, the run directory, a console; lazily the splits and tokenizer."""

    recipe: LLMRecipe
    run: RunDir
    console: Console = field(default_factory=lambda: Console(stderr=True))
    force: bool = False

    @cached_property
    def splits(self) -> Splits:
        d = self.recipe.data
        return load_splits(d.kind, d.path, d.n_examples, d.val_fraction, d.test_fraction, d.seed)

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

    def skip(self, stage: str, config_hash: str) -> bool:
        return skip_stage(self.run, self.console, self.force, stage, config_hash)


def run_llm_stages(ctx: LLMContext, stages: tuple[str, ...] = STAGES) -> dict[str, Any] | None:
    """Run ``stages`` in pipeline order; returns the report when the report stage ran."""
    funcs = {"data": stage_data, "teacher": stage_teacher, "distill": stage_distill, "blackbox": stage_blackbox,
             "export": stage_export, "bench": stage_bench, "report": stage_report}
    report = None
    for name in STAGES:
        if name in stages:
            report = funcs[name](ctx)
    return report


def _hf_files(folder: Path) -> list[Path]:
    return [folder / f for f in HF_FILES]


def _dir_sha(folder: Path) -> str:
    return sha256_json({f: sha256_file(folder / f) for f in HF_FILES if (folder / f).is_file()})


# -- data ------------------------------------------------------------------------------------------------------
def _data_hash(ctx: LLMContext) -> str:
    return sha256_json({"data": ctx.recipe.section("data"), "tokenizer": ctx.recipe.section("tokenizer"),
                        "split": ctx.splits.split_hash})


def stage_data(ctx: LLMContext) -> None:
    h = _data_hash(ctx)
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
    lengths = [len(e.input_ids) for e in ctx.encoded("test")]
    ctx.run.record("data", h, [*paths, tdir / "tokenizer.json"], {
        "split_hash": s.split_hash, "n_train": len(s.train), "n_val": len(s.val), "n_test": len(s.test),
        "vocab": len(tok), "test_tokens_mean": sum(lengths) / max(1, len(lengths))})
    ctx.console.print(f"  {len(s.train)} train, {len(s.val)} val, {len(s.test)} test; tokenizer {len(tok)} tokens")


# -- teacher ---------------------------------------------------------------------------------------------------
def _teacher_hash(ctx: LLMContext) -> str:
    t = ctx.recipe.teacher
    ckpt = _dir_sha(t.path) if t.path is not None else None
    return sha256_json({"data": _data_hash(ctx), "teacher": ctx.recipe.section("teacher"), "ckpt": ckpt,
                        "seed": ctx.recipe.seed})


@torch.no_grad()
def val_nll(model: torch.nn.Module, data: list[Any], pad_id: int, n: int = 64, batch_size: int = 16) -> float:
    """Mean cross-entropy on the completion tokens of the first ``n`` validation examples."""
    from edgedistill.toolchain.llm.train import collate

    model.eval()
    tot, cnt = 0.0, 0
    for s in range(0, min(n, len(data)), batch_size):
        b = collate(data[s:min(s + batch_size, n)], pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        y = b["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        tot += float(loss)
        cnt += int((y != -100).sum())
    return tot / max(1, cnt)


def stage_teacher(ctx: LLMContext) -> None:
    h = _teacher_hash(ctx)
    if ctx.skip("teacher", h):
        return
    from edgedistill.toolchain.llm.models import build_llama, load_llama, param_count
    from edgedistill.toolchain.llm.train import train_lm

    cfg, tok = ctx.recipe.teacher, ctx.tok
    info: dict[str, Any] = {"trained_here": cfg.path is None}
    if cfg.path is None:
        model = build_llama(cfg.arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                            ctx.recipe.seed)
        res = train_lm(model, ctx.encoded("train"), cfg.train, ctx.recipe.seed, tok.pad_token_id, "training teacher")
        model.save_pretrained(str(ctx.teacher_dir), safe_serialization=True)
        info.update(steps=res.steps, train_seconds=res.seconds, tokens_per_second=res.tokens_per_second,
                    history=res.history)
    else:
        model = load_llama(cfg.path)
        info["checkpoint"] = str(cfg.path)
    info.update(params=param_count(model), val_nll=val_nll(model, ctx.encoded("val"), tok.pad_token_id))
    metrics = ctx.run.path("teacher", "metrics.json")
    write_json(metrics, info)
    outs = [*_hf_files(ctx.teacher_dir), metrics] if cfg.path is None else [metrics]
    ctx.run.record("teacher", h, outs, {"params": info["params"], "val_nll": info["val_nll"]})
    ctx.console.print(f"  teacher {info['params']:,} params, val NLL {info['val_nll']:.4f}")


def _teacher_sha(ctx: LLMContext) -> str:
    return _dir_sha(ctx.teacher_dir)


def _new_student(ctx: LLMContext, teacher: torch.nn.Module) -> tuple[torch.nn.Module, list[int] | None, int]:
    """The student before training (a local checkpoint, or a fresh LlamaConfig initialised from the teacher), the
    teacher layers it copied, and the vocabulary size both share (embedding rows beyond it are padding)."""
    from edgedistill.toolchain.llm.models import align_vocab, build_llama, init_from_teacher, load_llama

    r, tok = ctx.recipe, ctx.tok
    if r.student.path is not None:
        student, layers = load_llama(r.student.path), None
    else:
        student = build_llama(r.student.arch, teacher.config.vocab_size, tok.bos_token_id, tok.eos_token_id,
                              tok.pad_token_id, r.seed)
        layers = init_from_teacher(student, teacher) if r.student.init == "teacher-layers" else None
    vocab = align_vocab(teacher.config.vocab_size, student.config.vocab_size, len(tok))
    return student, layers, vocab


def val_task_score(ctx: LLMContext, folder: Path) -> float:
    """Task score (key-field exact match) of greedy summaries on the first ``student.selection_samples``
    validation examples: how the best student is chosen (never on the test split)."""
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.bench import generate_and_score
    from edgedistill.toolchain.llm.tokenizer import encode

    r, tok = ctx.recipe, ctx.tok
    sess = TorchLMSession(folder, threads=torch.get_num_threads())
    res = generate_and_score(sess, ctx.splits.val[:r.student.selection_samples],
                             lambda p: encode(tok, p, None, r.data.max_length).input_ids,
                             lambda ids: tok.decode(ids, skip_special_tokens=True), r.bench.max_new_tokens,
                             tok.eos_token_id)
    return float(res["score"]["task_score"])


def _save_student(ctx: LLMContext, name: str, model: torch.nn.Module, info: dict[str, Any]) -> list[Path]:
    folder = ctx.run.path("students", name)
    model.save_pretrained(str(folder), safe_serialization=True)
    info["val_nll"] = val_nll(model, ctx.encoded("val"), ctx.tok.pad_token_id)
    info["val_task_score"] = val_task_score(ctx, folder)
    meta = ctx.run.path("students", f"{name}.json")
    write_json(meta, info)
    return [*_hf_files(folder), meta]


def _student_done(ctx: LLMContext, name: str, h: str) -> bool:
    meta = ctx.run.path("students", f"{name}.json")
    return (meta.is_file() and read_json(meta).get("config_hash") == h
            and all(p.is_file() for p in _hf_files(ctx.run.path("students", name))))


# -- white-box KD ----------------------------------------------------------------------------------------------
def _distill_hash(ctx: LLMContext) -> str:
    r = ctx.recipe
    distill = {k: v for k, v in r.section("distill").items() if k != "cache_dir"}
    return sha256_json({"teacher": _teacher_sha(ctx), "data": _data_hash(ctx), "student": r.section("student"),
                        "distill": distill, "seed": r.seed, "meta": STUDENT_META_VERSION})


def stage_distill(ctx: LLMContext) -> None:
    cfg = ctx.recipe.distill
    h = _distill_hash(ctx)
    if not cfg.enabled or ctx.skip("distill", h):
        return
    from edgedistill.toolchain.llm.cache import build_cache, cache_key, default_cache_dir
    from edgedistill.toolchain.llm.distill import train_kd
    from edgedistill.toolchain.llm.models import load_llama

    teacher = load_llama(ctx.teacher_dir).eval()
    data, tok, outputs, info = ctx.encoded("train"), ctx.tok, [], {"mode": cfg.mode, "students": {}}
    for loss in cfg.losses:
        sh = sha256_json({"stage": h, "loss": loss.model_dump(mode="json")})
        if _student_done(ctx, loss.name, sh):
            info["students"][loss.name] = read_json(ctx.run.path("students", f"{loss.name}.json"))
        else:
            cache = None
            if cfg.mode == "offline":
                assert cfg.top_k is not None
                key = cache_key(_teacher_sha(ctx), data, cfg.top_k, loss.temperature)
                cache, hit = build_cache(key, cfg.cache_dir or default_cache_dir(), data, tok.pad_token_id,
                                         len(tok), cfg.top_k, loss.temperature, lambda: teacher, cfg.shard_tokens)
                info["cache"] = {"path": str(cache.folder), "hit": hit, "bytes_per_token": cache.bytes_per_token,
                                 "k": cfg.top_k}
                ctx.console.print(f"  teacher top-{cfg.top_k} cache {'hit' if hit else 'written'}: "
                                  f"{cache.bytes_per_token:.1f} B/token")
            student, layers, vocab = _new_student(ctx, teacher)
            res = train_kd(student, data, loss, cfg.train, ctx.recipe.seed, tok.pad_token_id, cfg.chunk_tokens,
                           cache=cache, teacher=None if cache is not None else teacher, vocab=vocab)
            meta = {"config_hash": sh, "role": "kd", "loss": loss.model_dump(mode="json"), "init_layers": layers,
                    "steps": res.steps, "train_seconds": res.seconds, "tokens_per_second": res.tokens_per_second,
                    "history": res.history, "params": sum(p.numel() for p in student.parameters())}
            _save_student(ctx, loss.name, student, meta)
            info["students"][loss.name] = meta
        outputs += [*_hf_files(ctx.run.path("students", loss.name)), ctx.run.path("students", f"{loss.name}.json")]
        meta = info["students"][loss.name]
        ctx.console.print(f"  {loss.name}: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}")
    ctx.run.record("distill", h, outputs, {
        "mode": cfg.mode, "cache": info.get("cache"),
        "students": {k: {"val_nll": v["val_nll"], "val_task_score": v["val_task_score"]}
                     for k, v in info["students"].items()}})


# -- black-box: serve the teacher, collect its replies, SFT -----------------------------------------------------
def _blackbox_hash(ctx: LLMContext) -> str:
    r = ctx.recipe
    return sha256_json({"teacher": _teacher_sha(ctx), "data": _data_hash(ctx), "student": r.section("student"),
                        "blackbox": r.section("blackbox"), "max_length": r.data.max_length, "seed": r.seed,
                        "meta": STUDENT_META_VERSION})


def stage_blackbox(ctx: LLMContext) -> None:
    cfg = ctx.recipe.blackbox
    h = _blackbox_hash(ctx)
    if not cfg.enabled or ctx.skip("blackbox", h):
        return
    from edgedistill.toolchain.llm.collect import Prompt, collect, targets
    from edgedistill.toolchain.llm.gguf_export import write_gguf
    from edgedistill.toolchain.llm.models import load_llama
    from edgedistill.toolchain.llm.server import serving
    from edgedistill.toolchain.llm.sft import train_sft

    train = ctx.splits.train[:cfg.max_prompts] if cfg.max_prompts else ctx.splits.train
    prompts = [Prompt(e.id, e.prompt) for e in train]
    journal = ctx.run.path("blackbox", "collected.jsonl")
    if journal.is_file() and _journal_hash(ctx) != h:
        journal.unlink()  # replies of another teacher or endpoint are not this run's targets
    write_json(ctx.run.path("blackbox", "journal-key.json"), {"config_hash": h})
    t0 = time.perf_counter()
    if cfg.endpoint.base_url:
        stats = collect(prompts, journal, cfg.endpoint)
        served = cfg.endpoint.base_url
    else:
        gguf = write_gguf(ctx.teacher_dir, ctx.run.path("blackbox", "teacher-f32.gguf"), "f32",
                          ctx.run.path(TOKENIZER_DIR))
        n_ctx = ctx.recipe.data.max_length + cfg.endpoint.max_tokens + 16
        with serving(gguf, n_ctx=max(512, n_ctx), threads=2, log=ctx.run.path("blackbox", "server.log"),
                     alias=cfg.endpoint.model) as url:
            stats = collect(prompts, journal, cfg.endpoint, base_url=url)
        served = f"llama_cpp.server on 127.0.0.1 ({gguf.name})"
    collect_s = time.perf_counter() - t0
    got = targets(journal)
    pairs = [(e.prompt, got[e.id]) for e in train if e.id in got]
    ctx.console.print(f"  collected {len(pairs)}/{len(prompts)} teacher replies from {served} in {collect_s:.0f} s "
                      f"({stats.failed} failed)")
    teacher = load_llama(ctx.teacher_dir).eval()
    student, layers, _ = _new_student(ctx, teacher)
    del teacher
    work = ctx.run.path("blackbox", "sft-work")
    res = train_sft(student, ctx.tok, pairs, cfg.train, work, ctx.recipe.seed, ctx.recipe.data.max_length)
    shutil.rmtree(work, ignore_errors=True)
    meta = {"config_hash": h, "role": "sft", "endpoint": served, "collected": len(pairs), "prompts": len(prompts),
            "collect_failed": stats.failed, "collect_retries": stats.retries, "collect_seconds": collect_s,
            "init_layers": layers, "steps": res["steps"], "train_seconds": res["seconds"],
            "history": res["history"], "params": sum(p.numel() for p in student.parameters())}
    outs = _save_student(ctx, SFT, student, meta)
    ctx.run.record("blackbox", h, [*outs, journal], {"collected": len(pairs), "prompts": len(prompts),
                                                     "val_nll": meta["val_nll"],
                                                     "val_task_score": meta["val_task_score"]})
    ctx.console.print(f"  sft: val NLL {meta['val_nll']:.4f}, val task {meta['val_task_score']:.3f}")


def _journal_hash(ctx: LLMContext) -> str | None:
    key = ctx.run.path("blackbox", "journal-key.json")
    return read_json(key).get("config_hash") if key.is_file() else None


# -- export: GGUF of the best student, with fidelity -----------------------------------------------------------
def student_names(ctx: LLMContext) -> list[str]:
    """Trained students in report order: KD students (recipe order), then the SFT student."""
    names = [loss.name for loss in ctx.recipe.distill.losses] if ctx.recipe.distill.enabled else []
    if ctx.recipe.blackbox.enabled:
        names.append(SFT)
    return [n for n in names if ctx.run.path("students", f"{n}.json").is_file()]


def best_student(ctx: LLMContext) -> str:
    """The student with the highest validation task score, ties to the lower validation NLL (never chosen on the
    test split). NLL alone prefers KD students, which match the reference tokens best but need not summarise best."""
    names = student_names(ctx)
    if not names:
        raise FileNotFoundError(f"{ctx.run.root}: no trained student; run the distill or blackbox stage first")

    def key(n: str) -> tuple[float, float]:
        meta = read_json(ctx.run.path("students", f"{n}.json"))
        return -round(meta.get("val_task_score", 0.0), 4), meta["val_nll"]

    return min(names, key=key)


def stage_export(ctx: LLMContext) -> None:
    r, best = ctx.recipe, best_student(ctx)
    sdir = ctx.run.path("students", best)
    h = sha256_json({"student": _dir_sha(sdir), "best": best, "export": r.section("export"),
                     "data": _data_hash(ctx), "teacher": _teacher_sha(ctx)})
    if ctx.skip("export", h):
        return
    from edgedistill.runtimes.llama_cpp import LlamaCppSession, quiet_stderr
    from edgedistill.toolchain.llm.fidelity import fidelity, torch_logits
    from edgedistill.toolchain.llm.gguf_export import quantize, tensor_types, write_gguf
    from edgedistill.toolchain.llm.models import load_llama

    test = ctx.encoded("test")[:r.export.fidelity_samples]
    ids, starts = [e.input_ids for e in test], [e.n_prompt for e in test]
    ref = torch_logits(load_llama(sdir), ids)
    # every PyTorch model on the same sequences: perplexity, and each student's KLD / same-top vs the teacher
    teacher = torch_logits(load_llama(ctx.teacher_dir), ids)
    pytorch = {"teacher": {"perplexity": fidelity(ids, teacher, teacher, starts).perplexity}}
    for name in student_names(ctx):
        folder = ctx.run.path("students", name)
        f = fidelity(ids, teacher, ref if folder == sdir else torch_logits(load_llama(folder), ids), starts)
        pytorch[name] = {"perplexity": f.perplexity, "kld_vs_teacher": f.kld_mean,
                         "same_top_vs_teacher": f.same_top_token}
    tdir, records, outputs = ctx.run.path(TOKENIZER_DIR), [], []
    order = [v for v in ("f32", "f16") if v in r.export.gguf or v == "f32"] + \
        [v for v in r.export.gguf if v not in ("f32", "f16")]
    paths: dict[str, Path] = {}
    t0 = time.perf_counter()
    for v in order:
        out = ctx.run.path("export", f"student-{v}.gguf")
        with quiet_stderr():  # llama.cpp's quantiser logs every tensor to fd 2
            paths[v] = write_gguf(sdir, out, v, tdir) if v in ("f32", "f16") else quantize(paths["f32"], out, v)
    export_s = time.perf_counter() - t0
    for v in r.export.gguf:
        sess = LlamaCppSession(paths[v], threads=2, n_ctx=max(512, r.data.max_length))
        fid = fidelity(ids, ref, [sess.logits(s) for s in ids], starts)
        sess.close()
        types = sorted(set(tensor_types(paths[v]).values()))
        records.append({"name": f"student-{v}", "file": str(paths[v].relative_to(ctx.run.root)), "format": "gguf",
                        "variant": v, "source": best, "tensor_types": types, "size_bytes": paths[v].stat().st_size,
                        "fidelity": fid.to_dict()})
        outputs.append(paths[v])
        ctx.console.print(f"  student-{v}: ppl {fid.perplexity:.3f}, KLD {fid.kld_mean:.2e}, "
                          f"same-top {fid.same_top_token:.4f}, {paths[v].stat().st_size / 1024:.0f} KB")
    if "f32" not in r.export.gguf:
        paths["f32"].unlink()
    if r.export.onnx:
        onnx_records, onnx_outputs, onnx_s = _export_onnx(ctx, sdir, best, ids, ref, starts)
        records += onnx_records
        outputs += onnx_outputs
        export_s += onnx_s
    listing = ctx.run.path("export", "artifacts.json")
    write_json(listing, {"best_student": best, "reference": f"PyTorch {best} student", "pytorch": pytorch,
                         "artifacts": records, "export_seconds": export_s})
    ctx.run.record("export", h, [*outputs, listing], {"best_student": best,
                                                      "artifacts": [a["name"] for a in records]})


def _export_onnx(ctx: LLMContext, sdir: Path, best: str, ids: list[list[int]], ref: list[Any], starts: list[int]
                 ) -> tuple[list[dict[str, Any]], list[Path], float]:
    """ONNX (KV cache) of the best student through optimum, then its int8 file; each with fidelity."""
    from edgedistill.runtimes.ort_llm import OrtLLMSession
    from edgedistill.toolchain.llm.fidelity import fidelity
    from edgedistill.toolchain.llm.onnx_export import export_onnx, quantize_onnx

    variants = ctx.recipe.export.onnx
    t0 = time.perf_counter()
    fp32_dir = ctx.run.path("export", "student-onnx-fp32")
    files = {"fp32": export_onnx(sdir, fp32_dir)}
    if "int8_dynamic" in variants:
        files["int8_dynamic"] = quantize_onnx(files["fp32"], ctx.run.path("export", "student-onnx-int8_dynamic"))
    seconds = time.perf_counter() - t0
    records, outputs = [], []
    for v in variants:
        sess = OrtLLMSession(files[v], threads=2)
        fid = fidelity(ids, ref, [sess.logits(s) for s in ids], starts)
        size = sum(f.stat().st_size for f in files[v].parent.iterdir() if f.is_file())
        records.append({"name": f"student-onnx-{v}", "file": str(files[v].relative_to(ctx.run.root)),
                        "format": "onnx", "variant": v, "source": best, "size_bytes": size,
                        "fidelity": fid.to_dict()})
        outputs += sorted(f for f in files[v].parent.iterdir() if f.is_file())
        ctx.console.print(f"  student-onnx-{v}: ppl {fid.perplexity:.3f}, KLD {fid.kld_mean:.2e}, "
                          f"same-top {fid.same_top_token:.4f}, max|Δ| {fid.max_abs_diff:.1e}, {size / 1024:.0f} KB")
    if "fp32" not in variants:
        shutil.rmtree(fp32_dir)
    return records, outputs, seconds


# -- bench: each model and artifact in a fresh process ---------------------------------------------------------
def bench_items(ctx: LLMContext) -> list[tuple[str, Path]]:
    items = [("teacher", ctx.teacher_dir)]
    items += [(f"{n}-student", ctx.run.path("students", n)) for n in student_names(ctx)]
    listing = ctx.run.path("export", "artifacts.json")
    if ctx.run.stage("export") and listing.is_file():
        items += [(a["name"], ctx.run.root / a["file"]) for a in read_json(listing)["artifacts"]]
    return items


def _item_sha(path: Path) -> str:
    return _dir_sha(path) if path.is_dir() else sha256_file(path)


def measure_fresh(path: Path, ctx: LLMContext) -> dict[str, Any]:
    """One agent run in a fresh Python process; its JSON document, or ``{"error": ...}``."""
    b, r = ctx.recipe.bench, ctx.recipe
    cmd = [sys.executable, "-m", "edgedistill.toolchain.llm.bench", "--artifact", str(path),
           "--tokenizer", str(ctx.run.path(TOKENIZER_DIR)), "--test", str(ctx.run.path("data", "test.jsonl")),
           "--threads", str(b.threads), "--pp", str(b.pp_tokens), "--tg", str(b.tg_tokens),
           "--reps", str(b.repetitions), "--eval-samples", str(b.eval_samples),
           "--max-new-tokens", str(b.max_new_tokens), "--max-length", str(r.data.max_length)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if res.returncode != 0:
        return {"error": f"agent exited {res.returncode}: {res.stderr.strip()[-600:]}"}
    try:
        import json

        return json.loads(res.stdout.strip().splitlines()[-1]) | {"error": None}
    except (ValueError, IndexError):
        return {"error": f"agent printed no JSON: {res.stdout[-300:]}"}


def stage_bench(ctx: LLMContext) -> None:
    items = bench_items(ctx)
    h = sha256_json({"items": {n: _item_sha(p) for n, p in items}, "bench": ctx.recipe.section("bench"),
                     "data": _data_hash(ctx)})
    if ctx.skip("bench", h):
        return
    from edgedistill.toolchain.progress import progress_bar

    results, outputs = {}, []
    device_keys = ("devices", "device_warmup", "device_runs", "profiles")  # the matrix resumes on its own
    own = {k: v for k, v in ctx.recipe.section("bench").items() if k not in device_keys}
    for name, path in progress_bar(items, "benchmarking (fresh process each)"):
        ih = sha256_json({"item": name, "sha": _item_sha(path), "bench": own, "data": _data_hash(ctx)})
        out = ctx.run.path("bench", f"{name}.json")
        if out.is_file() and read_json(out).get("config_hash") == ih and not ctx.force:
            doc = read_json(out)
        else:
            doc = measure_fresh(path, ctx) | {"config_hash": ih, "name": name}
            write_json(out, doc)
        results[name] = doc
        outputs.append(out)
        if doc["error"]:
            ctx.console.print(f"  [yellow]{name} failed:[/yellow] {doc['error']}")
        else:
            ctx.console.print(f"  {name}: task {doc['task_score']:.3f}, ROUGE-L {doc['rouge_l']:.3f}, "
                              f"tg {doc['tg_tps']:.0f} tok/s, pp {doc['pp_tps']:.0f} tok/s")
    devices = _device_matrix(ctx) if ctx.recipe.bench.devices else None
    agg = ctx.run.path("bench", "results.json")
    write_json(agg, {"threads": ctx.recipe.bench.threads, "results": results, "devices": devices})
    failed_devices = {d: e["error"] for d, e in (devices or {}).items() if e["error"]}
    ctx.run.record("bench", h, [*outputs, agg], {"failed": [n for n, d in results.items() if d["error"]],
                                                  "devices": list(devices or {}), "failed_devices": failed_devices})


def _device_matrix(ctx: LLMContext) -> dict[str, Any]:
    """Every exported artifact on every device of ``bench.devices`` through the shared device harness: per-token
    decode latency, pp/tg tokens/s, peak RSS, next-token accuracy, and logit parity against the host run."""
    import numpy as np

    from edgedistill.benchmarks.harness import BenchItem, measure_devices, plan_devices
    from edgedistill.toolchain.progress import make_progress

    b, listing = ctx.recipe.bench, ctx.run.path("export", "artifacts.json")
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: the device matrix measures exported artifacts; run the export stage")
    items = [BenchItem(a["name"], ctx.run.root / a["file"], "onnxruntime-llm" if a["format"] == "onnx" else None)
             for a in read_json(listing)["artifacts"]]
    seqs = [e.input_ids for e in ctx.encoded("test")[:ctx.recipe.export.fidelity_samples]]
    ids = np.zeros((len(seqs), max(map(len, seqs))), dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    eval_npz = ctx.run.path("bench", "eval-tokens.npz")
    with atomic_path(eval_npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=ids, lengths=np.array([len(s) for s in seqs], dtype=np.int32))
    devices = ["host", *b.devices] if not {"host", "local"} & set(b.devices) else list(b.devices)
    plan = plan_devices(devices, [b.threads], b.profiles)
    with make_progress() as prog:
        task = prog.add_task("device matrix", total=len(items) * max(1, sum(map(len, plan.values()))), status="")
        matrix = measure_devices(items, devices, [b.threads], eval_npz, ctx.run.path("bench", "devices"),
                                 b.device_warmup, b.device_runs, b.profiles, progress=lambda: prog.advance(task))
    for d, e in matrix.items():
        if e["error"]:
            ctx.console.print(f"  [yellow]device {d} failed:[/yellow] {e['error']}")
        for name, res in e["results"].items():
            if res["error"]:
                ctx.console.print(f"  [yellow]{d} / {name}:[/yellow] {res['error']}")
    return matrix


def stage_report(ctx: LLMContext) -> dict[str, Any]:
    """report.json and report.md from the stages' files (always re-run: it is cheap)."""
    from edgedistill.toolchain.llm import report as report_mod

    run = ctx.run

    def opt(*parts: str) -> Any:
        p = run.root.joinpath(*parts)
        return read_json(p) if p.is_file() else None

    rep = report_mod.build(
        recipe=ctx.recipe.name, run_dir=str(run.root), teacher=opt("teacher", "metrics.json") or {},
        students={n: read_json(run.path("students", f"{n}.json")) for n in student_names(ctx)},
        export=opt("export", "artifacts.json") if run.stage("export") else None,
        bench=(opt("bench", "results.json") or {}).get("results", {}) if run.stage("bench") else {},
        manifest=run.manifest(), threads=ctx.recipe.bench.threads,
        devices=(opt("bench", "results.json") or {}).get("devices") if run.stage("bench") else None)
    report_mod.write(rep, run.path("report.json"), run.path("report.md"))
    return rep
