"""LoRA / QLoRA students vs full fine-tuning on the tiny-llama demo data, at equal steps: CE-only (full
fine-tuning), top-k KD with full fine-tuning, top-k KD through LoRA adapters, and through QLoRA (NF4 base) where
bitsandbytes has the kernels here. Printed as Markdown for benchmarks/RESULTS.md::

    .venv/bin/python perf/strategies_llm_lora.py [--steps 300] [--teacher-steps 1500] [--eval 100] [--out DIR]

The data, tokenizer, teacher architecture, student architecture and initialisation (teacher layers), KD loss and
batch size are the built-in ``tiny-llama`` recipe's; the teacher trains here once (``--teacher-steps``, kept in
``--out`` and reused) and its top-k cache is built once. Each student trains in a fresh process (so its peak RSS is
its own) through the pipeline's one loop (``train_lm`` / ``train_kd`` with ``lora``), then is scored: validation
NLL on the whole validation split, and the task score of greedy outputs on the first ``--eval`` test briefs.
"training state" is what the training holds for the student — parameters (NF4 under QLoRA, with their constants)
plus gradient and AdamW moments of the trainable ones — which is what LoRA/QLoRA save; at this model size the peak
RSS is the Python/torch runtime's, not the model's.
LoRA trains at ``--lora-lr`` (adapters start at B = 0 and commonly want a larger step than full fine-tuning).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("ce-only", "kd-full", "kd-lora", "kd-qlora")
LORA = {"enabled": True, "r": 8, "alpha": 16}


def _recipe() -> Any:
    from edgedistill.toolchain.recipe import load_recipe

    return load_recipe("tiny-llama")


def _splits(r: Any) -> Any:
    from edgedistill.toolchain.llm.data import load_splits

    d = r.data
    return load_splits(d.kind, d.path, d.n_examples, d.val_fraction, d.test_fraction, d.seed, d.prompt_template)


def _encoded(tok: Any, examples: list[Any], n: int) -> list[Any]:
    from edgedistill.toolchain.llm.tokenizer import encode

    return [encode(tok, e.prompt, e.completion, n) for e in examples]


def _evaluate(model: torch.nn.Module, folder: Path, r: Any, tok: Any, splits: Any, n_eval: int) -> dict[str, Any]:
    """Validation NLL (every validation brief) and the task score of greedy outputs on ``n_eval`` test briefs."""
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.stages import val_nll
    from edgedistill.toolchain.llm.tasks import score
    from edgedistill.toolchain.llm.tokenizer import encode

    val = _encoded(tok, splits.val, r.data.max_length)
    nll = val_nll(model, val, tok.pad_token_id, n=len(val))
    sess = TorchLMSession(folder, threads=torch.get_num_threads())
    test = splits.test[:n_eval]
    preds = []
    for e in test:
        new, _ = sess.generate(encode(tok, e.prompt, None, r.data.max_length).input_ids, r.bench.max_new_tokens,
                               tok.eos_token_id)
        preds.append(tok.decode(new, skip_special_tokens=True).strip())
    s = score(preds, [e.output for e in test], r.data.score.name, r.data.kind, r.data.score)
    return {"val_nll": nll, "task_score": s["task_score"], "rouge_l": s["rouge_l"]}


def prepare(out: Path, teacher_steps: int, n_eval: int) -> dict[str, Any]:
    """Tokenizer, teacher (trained here once) and its top-k cache under ``out``; the teacher's scores."""
    from edgedistill.core.fileio import sha256_path
    from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key
    from edgedistill.toolchain.llm.models import build_llama, load_causal_lm
    from edgedistill.toolchain.llm.tokenizer import load_tokenizer, train_bpe
    from edgedistill.toolchain.llm.train import train_lm

    r, meta_path = _recipe(), out / "teacher.json"
    splits = _splits(r)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        train_bpe((e.prompt + e.completion for e in splits.train), r.tokenizer.vocab_size, out / "tokenizer")
    tok = load_tokenizer(out / "tokenizer")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("steps") != teacher_steps:
        t = r.teacher
        model = build_llama(t.arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, r.seed)
        t0 = time.perf_counter()
        train_lm(model, _encoded(tok, splits.train, r.data.max_length), t.train.model_copy(
            update={"steps": teacher_steps}), r.seed, tok.pad_token_id, out / "teacher-state.pt", "training teacher")
        meta = {"steps": teacher_steps, "train_seconds": time.perf_counter() - t0}
        model.save_pretrained(str(out / "teacher"), safe_serialization=True)
        (out / "teacher-state.pt").unlink(missing_ok=True)
    if meta.get("eval") != n_eval:
        model = load_causal_lm(out / "teacher")
        meta.update(eval=n_eval, **_evaluate(model, out / "teacher", r, tok, splits, n_eval))
        meta_path.write_text(json.dumps(meta, indent=1))
    loss, d = r.distill.losses[0], r.distill
    train = _encoded(tok, splits.train, r.data.max_length)
    build_cache(cache_key(sha256_path(out / "teacher"), train, d.top_k, loss.temperature), out / "cache", train,
                tok.pad_token_id, len(tok), d.top_k, loss.temperature, lambda: load_causal_lm(out / "teacher"),
                d.shard_tokens)
    return meta


def _state_mb(student: torch.nn.Module, lora: Any) -> float:
    """Bytes the training holds for the student: every parameter (NF4 weights with their quantization constants
    under QLoRA) plus, per trainable parameter, its gradient and AdamW's two moments; measured on a copy."""
    import copy

    if lora is None:
        return 4 * sum(p.nbytes for p in student.parameters()) / 2**20
    from edgedistill.toolchain.llm.lora import attach

    peft = attach(copy.deepcopy(student), lora).peft
    total = 0
    for p in peft.parameters():
        total += p.nbytes * (4 if p.requires_grad else 1)
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += sum(t.nbytes for t in state.as_dict(packed=True).values() if torch.is_tensor(t))
    return total / 2**20


class Setup:
    """What every student's training shares in one process: recipe, splits, tokenizer, encoded train split, the
    teacher (for initialisation) and its top-k cache."""

    def __init__(self, out: Path) -> None:
        from edgedistill.core.fileio import sha256_path
        from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key
        from edgedistill.toolchain.llm.models import load_causal_lm
        from edgedistill.toolchain.llm.tokenizer import load_tokenizer

        self.out, self.r = out, _recipe()
        self.splits, self.tok = _splits(self.r), load_tokenizer(out / "tokenizer")
        self.train = _encoded(self.tok, self.splits.train, self.r.data.max_length)
        self.teacher = load_causal_lm(out / "teacher")
        loss, d = self.r.distill.losses[0], self.r.distill
        self.cache, _ = build_cache(cache_key(sha256_path(out / "teacher"), self.train, d.top_k, loss.temperature),
                                    out / "cache", self.train, self.tok.pad_token_id, len(self.tok), d.top_k,
                                    loss.temperature, lambda: self.teacher, d.shard_tokens)

    def student(self) -> torch.nn.Module:
        from edgedistill.toolchain.llm.models import build_like, init_from_teacher

        s = build_like(self.teacher, self.r.student.arch, self.teacher.config.vocab_size, self.r.seed)
        init_from_teacher(s, self.teacher)
        return s

    def lora(self, method: str) -> Any:
        from edgedistill.toolchain.llm.recipe import LoRAConfig

        if method not in ("kd-lora", "kd-qlora"):
            return None
        return LoRAConfig(**LORA, quantize="4bit" if method == "kd-qlora" else "none")

    def fit(self, method: str, student: torch.nn.Module, steps: int, lora_lr: float) -> tuple[Any, float]:
        """Train ``student`` by ``method`` for ``steps`` steps (no checkpoint left behind); result and seconds."""
        from edgedistill.toolchain.llm.distill.kd import train_kd
        from edgedistill.toolchain.llm.train import train_lm

        r, lora, loss, d = self.r, self.lora(method), self.r.distill.losses[0], self.r.distill
        cfg = d.train.model_copy(update={"steps": steps, "checkpoint_every": steps,
                                         **({"lr": lora_lr} if lora else {})})
        ckpt = self.out / f"{method}-state.pt"
        ckpt.unlink(missing_ok=True)
        t0 = time.perf_counter()
        if method == "ce-only":
            res = train_lm(student, self.train, cfg, r.seed, self.tok.pad_token_id, ckpt, "CE-only")
        else:
            res = train_kd(student, self.train, loss, cfg, r.seed, self.tok.pad_token_id, d.chunk_tokens, ckpt,
                           cache=self.cache, vocab=len(self.tok), lora=lora)
        secs = time.perf_counter() - t0
        ckpt.unlink(missing_ok=True)
        return res, secs


def child(method: str, out: Path, steps: int, lora_lr: float, n_eval: int) -> dict[str, Any]:
    """Train and score one student in this process; its numbers."""
    import psutil

    from edgedistill.toolchain.llm.lora import _import_peft

    setup = Setup(out)
    student = setup.student()
    _import_peft()  # a one-off of seconds, not training time
    state_mb = _state_mb(student, setup.lora(method))
    rss0 = psutil.Process().memory_info().rss
    res, secs = setup.fit(method, student, steps, lora_lr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    folder = out / "students" / method
    student.save_pretrained(str(folder), safe_serialization=True)
    return {"method": method, "steps": res.steps, "lr": lora_lr if setup.lora(method) else setup.r.distill.train.lr,
            "train_seconds": secs, "trainable_params": res.trainable_params,
            "params": sum(p.numel() for p in student.parameters()), "peak_rss_mb": peak / 2**20,
            "train_state_mb": state_mb, "rss_before_train_mb": rss0 / 2**20, "final_loss": res.history[-1]["loss"],
            **_evaluate(student, folder, setup.r, setup.tok, setup.splits, n_eval)}


def timing(out: Path, methods: list[str], rounds: int, steps: int, lora_lr: float) -> dict[str, list[float]]:
    """Seconds per training step of each method, in rounds that visit every method in turn (alternating order) in
    one process: on a shared host the load drifts, and interleaving spreads the drift over all methods alike."""
    from edgedistill.toolchain.llm.lora import _import_peft

    setup, per_step = Setup(out), {m: [] for m in methods}
    _import_peft()
    for i in range(rounds):
        for m in methods if i % 2 == 0 else methods[::-1]:
            _, secs = setup.fit(m, setup.student(), steps, lora_lr)
            per_step[m].append(secs / steps)
    return per_step


def _ratio(a: float, b: float, spec: str = ".3f") -> str:
    return format(a / b, spec) if b else "—"


def table(teacher: dict[str, Any], rows: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    ce, full = rows.get("ce-only"), rows.get("kd-full")
    lines = ["| student | trainable params | val NLL | task score | retention | gain vs CE-only | train s (scored "
             "run) | step ms (median, interleaved) | ÷ full KD | training state MB | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| teacher ({teacher['steps']} steps) | — | {teacher['val_nll']:.4f} | {teacher['task_score']:.3f} | "
             "1.000 | — | — | — | — | — | — |"]
    for m in METHODS:
        if m in skipped:
            lines.append(f"| {m} | skipped: {skipped[m]} |||||||||| ")
            continue
        x = rows[m]
        gain = "—" if ce is None or m == "ce-only" else (
            f"{x['task_score'] - ce['task_score']:+.3f} (NLL {x['val_nll'] - ce['val_nll']:+.4f})")
        step = x.get("step_seconds_median")
        ratio = _ratio(step, full["step_seconds_median"], ".2f") if full and step else "—"
        share = 100 * x["trainable_params"] / x["params"]
        lines.append(f"| {m} | {x['trainable_params']:,} ({share:.1f}%) | {x['val_nll']:.4f} | "
                     f"{x['task_score']:.3f} | {_ratio(x['task_score'], teacher['task_score'])} | {gain} | "
                     f"{x['train_seconds']:.1f} | {1000 * step:.0f} | {ratio} | {x['train_state_mb']:.1f} | "
                     f"{x['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimiser steps of every student (equal budgets)")
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--eval", type=int, default=100, help="test briefs generated and scored per model")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared host)")
    p.add_argument("--out", type=Path, default=Path("/tmp/edgedistill-lora-perf"))
    p.add_argument("--timing-rounds", type=int, default=4, help="interleaved rounds of the per-step timing")
    p.add_argument("--timing-steps", type=int, default=30, help="steps per method per timing round")
    p.add_argument("--reuse", action="store_true", help="keep the students already trained in --out (same --steps "
                   "and --eval) and only redo the timing")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out.resolve()
    if args.child:
        res = child(args.child, out, args.steps, args.lora_lr, args.eval) | {"eval": args.eval}
        (out / f"{args.child}.json").write_text(json.dumps(res, indent=1))
        return
    from edgedistill.toolchain.llm.lora import nf4_unavailable

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher = prepare(out, args.teacher_steps, args.eval)
    print(f"teacher ready in {time.perf_counter() - t0:.0f} s: val NLL {teacher['val_nll']:.4f}, task "
          f"{teacher['task_score']:.3f}", file=sys.stderr)
    rows, skipped = {}, {}
    for m in METHODS:
        if m == "kd-qlora" and (why := nf4_unavailable(torch.device("cpu"))):
            skipped[m] = why
            continue
        done = out / f"{m}.json"
        if args.reuse and done.is_file():
            prev = json.loads(done.read_text())
            if prev["steps"] == args.steps and prev.get("eval") == args.eval:
                rows[m] = prev
                continue
        cmd = [sys.executable, __file__, "--child", m, "--steps", str(args.steps), "--lora-lr", str(args.lora_lr),
               "--eval", str(args.eval), "--threads", str(args.threads), "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        rows[m] = json.loads((out / f"{m}.json").read_text())
        print(f"{m}: task {rows[m]['task_score']:.3f}, val NLL {rows[m]['val_nll']:.4f}, "
              f"{rows[m]['train_seconds']:.0f} s", file=sys.stderr)
    import statistics

    per_step = timing(out, list(rows), args.timing_rounds, args.timing_steps, args.lora_lr)
    for m, xs in per_step.items():
        rows[m]["step_seconds_median"] = statistics.median(xs)
        rows[m]["step_seconds"] = xs
    (out / "summary.json").write_text(json.dumps({"teacher": teacher, "students": rows, "skipped": skipped,
                                                  "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    r = _recipe()
    print(f"tiny-llama data ({r.data.n_examples} briefs), teacher {r.teacher.arch.num_hidden_layers} layers "
          f"h{r.teacher.arch.hidden_size}, student {r.student.arch.num_hidden_layers} layers "
          f"h{r.student.arch.hidden_size} from teacher layers; {args.steps} steps × batch "
          f"{r.distill.train.batch_size} for every student (lr {r.distill.train.lr:g}; LoRA r={LORA['r']} "
          f"alpha={LORA['alpha']} on every linear of the blocks at lr {args.lora_lr:g}); KD "
          f"{r.distill.losses[0].divergence} on the top-{r.distill.top_k} cache, alpha {r.distill.losses[0].alpha}; "
          f"task score on {args.eval} test briefs; torch threads {args.threads}\n")
    print(table(teacher, rows, skipped))


if __name__ == "__main__":
    main()
