"""What every LLM stage and strategy shares: the stage context (splits, tokenizer, scorer), the run's fixed paths,
the data key, the teachers (the main one and the ensemble) and their top-k cache, and how a student is built,
saved, checked and scored."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from edgedistill.core.fileio import atomic_dir, read_json, sha256_json, sha256_path, write_json
from edgedistill.toolchain import pipeline
from edgedistill.toolchain.llm.data import Splits, load_splits
from edgedistill.toolchain.llm.recipe import LLMRecipe

TEACHER_DIR = "teacher/model"
TOKENIZER_DIR = "data/tokenizer"
#: bumped when a student's metadata gains a field the pipeline relies on (3: weights_sha256), so old runs retrain
STUDENT_META_VERSION = 3


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


def data_hash(ctx: Context) -> str:
    """The data stage's key: the data and tokenizer sections, the tokenizer's files and the split."""
    return sha256_json({"data": ctx.recipe.section("data"), "tokenizer": ctx.recipe.section("tokenizer"),
                        "tokenizer_files": sha256_path(ctx.recipe.tokenizer.path) if ctx.recipe.tokenizer.path
                        else None, "split": ctx.splits.split_hash})


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


def files(folder: Path) -> list[Path]:
    """The files of a model folder as the manifest records them (hidden ones left out)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def teacher_sha(ctx: Context) -> str:
    """The main teacher's weights hash (its whole folder)."""
    return sha256_path(ctx.teacher_dir)


def member_dir(ctx: Context, i: int) -> Path:
    """The folder of ``teacher.ensemble[i]``: its own path, or where this run trains it."""
    m = ctx.recipe.teacher.ensemble[i]
    return m.path if m.path is not None else ctx.run.path("teacher", f"ensemble-{i}")


class Teachers:
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
            self._others = [load_causal_lm(member_dir(self.ctx, i)).eval() for i in range(n)]
        return [self.main(), *self._others]

    def shas(self) -> list[str]:
        """Every teacher's weights hash, the main one first (computed once: a large teacher takes a while)."""
        if self._shas is None:
            self._shas = [teacher_sha(self.ctx)] + [sha256_path(member_dir(self.ctx, i))
                                                     for i in range(len(self.ctx.recipe.teacher.ensemble))]
        return self._shas


def new_student(ctx: Context, teacher: torch.nn.Module) -> tuple[torch.nn.Module, list[int] | None, int]:
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


def save_student(ctx: Context, name: str, model: torch.nn.Module, info: dict[str, Any]) -> list[Path]:
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
    return [*files(folder), meta]


def student_done(ctx: Context, name: str, h: str) -> bool:
    """A finished student ``name``: its metadata has key ``h`` and names its folder's own hash (never with --force)."""
    meta, folder = ctx.run.path("students", f"{name}.json"), ctx.run.path("students", name)
    if ctx.force or not (meta.is_file() and folder.is_dir()):
        return False
    try:
        m = read_json(meta)
    except ValueError:
        return False
    return m.get("config_hash") == h and m.get("weights_sha256") == sha256_path(folder)


def student_outputs(ctx: Context, name: str) -> list[Path]:
    """Student ``name``'s files as the manifest records them: its folder's files and its metadata."""
    return [*files(ctx.run.path("students", name)), ctx.run.path("students", f"{name}.json")]


def trained(res: Any) -> dict[str, Any]:
    """A student's metadata on what trained: the parameters the optimiser updated (every one, or the LoRA
    adapters'), and the adapter settings (None: full fine-tuning)."""
    return {"trainable_params": res.trainable_params, "lora": res.lora}


def lora_note(meta: dict[str, Any]) -> str:
    lora = meta.get("lora")
    if not lora:
        return ""
    base = ", NF4 base" if lora["quantize"] == "4bit" else ""
    return (f"; LoRA r={lora['r']}{base}: {lora['trainable_params']:,} of {lora['params']:,} params trained "
            f"({100 * lora['trainable_params'] / lora['params']:.2f}%), merged")


def student_section(ctx: Context) -> dict[str, Any]:
    """The student section as the students' hashes see it: LoRA settings only when LoRA is on (so they cannot
    retrain students that never used them)."""
    sec = ctx.recipe.section("student")
    if not sec["lora"]["enabled"]:
        del sec["lora"]
    return sec


def teacher_cache(ctx: Context, loss: Any, teachers: Teachers) -> tuple[Any, dict[str, Any]]:
    from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key, default_cache_dir

    cfg, tok = ctx.recipe.distill, ctx.tok
    assert cfg.top_k is not None
    data = ctx.encoded("train")
    key = cache_key(teachers.shas(), data, cfg.top_k, loss.temperature, teachers.weights)
    cache, hit = build_cache(key, cfg.cache_dir or default_cache_dir(), data, tok.pad_token_id, len(tok),
                             cfg.top_k, loss.temperature, teachers.target, cfg.shard_tokens, weights=teachers.weights)
    return cache, {"path": str(cache.folder), "hit": hit, "bytes_per_token": cache.bytes_per_token, "k": cfg.top_k,
                   "teachers": int(cache.index.get("teachers", 1))}
