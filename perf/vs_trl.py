"""LLM KD: edgedistill vs TRL (GKD, on-policy distillation, SFT) on the same tiny job, side by side in one run.

One prepared job (the tiny-llama demo's generated legal briefs and BPE tokenizer, its 4-layer teacher trained here
for ``--teacher-steps``, and one 2-layer student initialised from the teacher's layers) is trained for the same
number of steps, batch size, learning rate and warm-up by:

- edgedistill: CE only, offline top-k KD (cache built first, its time reported apart), online KD (teacher every step);
- TRL 1.16: ``GKDTrainer`` with ``lmbda=0`` (supervised KD on the data's completions, as ours), ``beta=0`` (forward
  KL, as ours); ``DistillationTrainer`` (on-policy: the student generates its completions); ``SFTTrainer`` (CE).

All KD rows use forward KL at T=1 and no CE term (alpha = 1), so the losses match. Every configuration runs in its own
process (peak RSS is its own). Student quality at equal steps: mean per-token KL(teacher ‖ student) over the full
vocabulary on the completion tokens of the validation briefs, and the validation NLL::

    .venv/bin/python perf/vs_trl.py --steps 200 --teacher-steps 600

Prints a Markdown table; paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "ed-ce": ("edgedistill", "CE only (reference completions)"),
    "ed-offline": ("edgedistill", "offline top-k KD (k=8, cached teacher)"),
    "ed-online": ("edgedistill", "online KD (teacher every step, full vocabulary)"),
    "trl-gkd": ("TRL", "GKDTrainer, lmbda=0 (supervised KD), beta=0 (forward KL)"),
    "trl-onpolicy": ("TRL", "DistillationTrainer (on-policy: student generates)"),
    "trl-sft": ("TRL", "SFTTrainer (CE on completions)"),
}
BATCH, LR, WARMUP, MAX_LEN, TOP_K = 8, 2e-3, 10, 160, 8
CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}{{ m['content'] }}{% else %}"
        "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(work: Path, teacher_steps: int) -> None:
    """Data, tokenizer, a trained teacher and the common initial student, written to ``work``."""
    from edgedistill.toolchain.llm.data import load_splits
    from edgedistill.toolchain.llm.models import build_like, build_llama, init_from_teacher
    from edgedistill.toolchain.llm.recipe import LMTrainConfig
    from edgedistill.toolchain.llm.tokenizer import encode, train_bpe
    from edgedistill.toolchain.llm.train import train_lm
    from edgedistill.toolchain.recipe import load_recipe

    r = load_recipe("tiny-llama")
    splits = load_splits(r.data.kind, None, r.data.n_examples, r.data.val_fraction, r.data.test_fraction, 0)
    tok = train_bpe((e.prompt + e.completion for e in splits.train), r.tokenizer.vocab_size, work / "tokenizer")
    rows = {name: [{"prompt": e.prompt, "completion": e.completion} for e in getattr(splits, name)]
            for name in ("train", "val")}
    (work / "data.json").write_text(json.dumps(rows))
    teacher = build_llama(r.teacher.arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    enc = [encode(tok, e.prompt, e.completion, MAX_LEN) for e in splits.train]
    train_lm(teacher, enc, LMTrainConfig(steps=teacher_steps, batch_size=BATCH, lr=3e-3, warmup_steps=20),
             0, tok.pad_token_id, work / "teacher-state.pt", "training teacher")
    teacher.save_pretrained(work / "teacher")
    student = build_like(teacher, r.student.arch)
    init_from_teacher(student, teacher)
    student.save_pretrained(work / "student-init")


def _load(work: Path):  # type: ignore[no-untyped-def]
    from edgedistill.toolchain.llm.models import load_causal_lm
    from edgedistill.toolchain.llm.tokenizer import load_tokenizer

    tok = load_tokenizer(work / "tokenizer")
    data = json.loads((work / "data.json").read_text())
    return tok, data, load_causal_lm(work / "student-init"), load_causal_lm(work / "teacher")


def _trl_args(cls, steps: int, out: Path, **extra):  # type: ignore[no-untyped-def]
    return cls(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
               warmup_steps=WARMUP, lr_scheduler_type="cosine", weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
               logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
               dataloader_num_workers=0, seed=0, disable_tqdm=True, **extra)


def run(config: str, work: Path, steps: int, top_k: int = TOP_K) -> dict:

    from edgedistill.toolchain.llm.tokenizer import encode

    tok, data, student, teacher = _load(work)
    teacher.eval().requires_grad_(False)
    enc = [encode(tok, d["prompt"], d["completion"], MAX_LEN) for d in data["train"]]
    info: dict = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if config.startswith("ed-"):
            from edgedistill.toolchain.llm.distill.cache import build_cache, cache_key
            from edgedistill.toolchain.llm.distill.kd import train_kd
            from edgedistill.toolchain.llm.recipe import KDLossConfig, LMTrainConfig
            from edgedistill.toolchain.llm.train import train_lm

            train = LMTrainConfig(steps=steps, batch_size=BATCH, lr=LR, warmup_steps=WARMUP,
                                  checkpoint_every=10_000)
            loss = KDLossConfig(divergence="forward_kl", temperature=1.0, alpha=1.0)
            vocab = len(tok)
            kwargs: dict = {}
            if config == "ed-offline":
                t = time.perf_counter()
                key = cache_key("perf", enc, top_k, 1.0)
                kwargs["cache"], _ = build_cache(key, tmp, enc, tok.pad_token_id, vocab, top_k, 1.0,
                                                 lambda: teacher, shard_tokens=1 << 20)
                info["cache_build_s"] = time.perf_counter() - t
            elif config == "ed-online":
                kwargs["teacher"] = teacher
            t = time.perf_counter()
            if config == "ed-ce":
                train_lm(student, enc, train, 0, tok.pad_token_id, tmp / "state.pt")
            else:
                train_kd(student, enc, loss, train, 0, tok.pad_token_id, 256, tmp / "state.pt", vocab=vocab,
                         **kwargs)
            info["seconds"] = time.perf_counter() - t
        else:
            from datasets import Dataset

            tok.chat_template = CHAT
            tok.padding_side = "left" if config == "trl-onpolicy" else "right"
            t = time.perf_counter()
            if config == "trl-sft":
                from trl import SFTConfig, SFTTrainer

                ds = Dataset.from_list(data["train"])
                trainer = SFTTrainer(model=student, args=_trl_args(SFTConfig, steps, tmp, max_length=MAX_LEN,
                                                                   completion_only_loss=True),
                                     train_dataset=ds, processing_class=tok)
            elif config == "trl-gkd":
                from trl.experimental.gkd import GKDConfig, GKDTrainer

                ds = Dataset.from_list([{"messages": [{"role": "user", "content": d["prompt"]},
                                                      {"role": "assistant", "content": d["completion"]}]}
                                        for d in data["train"]])
                trainer = GKDTrainer(model=student, teacher_model=teacher, train_dataset=ds, processing_class=tok,
                                     args=_trl_args(GKDConfig, steps, tmp, lmbda=0.0, beta=0.0, temperature=1.0,
                                                    max_length=MAX_LEN, max_new_tokens=56))
            else:
                from trl import DistillationConfig, DistillationTrainer

                ds = Dataset.from_list([{"prompt": d["prompt"]} for d in data["train"]])
                trainer = DistillationTrainer(model=student, teacher_model=teacher, train_dataset=ds,
                                              processing_class=tok,
                                              args=_trl_args(DistillationConfig, steps, tmp, beta=0.0,
                                                             temperature=1.0, max_completion_length=56))
            info["setup_s"] = time.perf_counter() - t
            t = time.perf_counter()
            trainer.train()
            info["seconds"] = time.perf_counter() - t
            student = trainer.model
    info["tokens"] = steps * BATCH * sum(len(e.input_ids) for e in enc) / len(enc)  # expected tokens seen
    info.update(_quality(student.float().eval(), teacher, tok, data["val"]))
    info["peak_rss_mb"] = _peak_rss_mb()
    return info


def _quality(student, teacher, tok, val: list[dict]) -> dict:  # type: ignore[no-untyped-def]
    """Mean per-token KL(teacher ‖ student) over the full vocabulary, and the student's NLL, on the completion
    tokens of the validation split."""
    import torch
    import torch.nn.functional as F

    from edgedistill.toolchain.llm.tokenizer import encode
    from edgedistill.toolchain.training import IGNORE_INDEX

    kl = nll = 0.0
    n = 0
    with torch.no_grad():
        for d in val:
            e = encode(tok, d["prompt"], d["completion"], MAX_LEN)
            ids = torch.tensor([e.input_ids])
            tgt = torch.tensor(e.labels[1:])
            keep = tgt != IGNORE_INDEX
            v = len(tok)
            s = F.log_softmax(student(ids).logits[0, :-1, :v].float(), -1)[keep]
            t = F.log_softmax(teacher(ids).logits[0, :-1, :v].float(), -1)[keep]
            kl += float((t.exp() * (t - s)).sum())
            nll += float(-s.gather(1, tgt[keep][:, None]).sum())
            n += int(keep.sum())
    return {"kld": kl / n, "val_nll": nll / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, help="a prepared folder to reuse (default: a new temporary one)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--top-k", type=int, default=TOP_K, help="k of the offline top-k KD rows")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.update(EDGEDISTILL_PROGRESS="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      OMP_NUM_THREADS=str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run(args.one, args.work, args.steps, args.top_k)))
        return
    with tempfile.TemporaryDirectory() as td:
        work = args.work or Path(td)
        if not (work / "teacher").is_dir():
            t = time.perf_counter()
            prepare(work, args.teacher_steps)
            print(f"prepared teacher ({args.teacher_steps} steps) in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
        res = {}
        for c in args.configs.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", c, "--work", str(work), "--steps",
                                  str(args.steps), "--threads", str(args.threads), "--top-k", str(args.top_k)],
                                 capture_output=True, text=True)
            if out.returncode:
                res[c] = {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:160]}
            else:
                res[c] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{c}: {res[c]}", file=sys.stderr)
    print(f"{args.steps} steps × batch {BATCH}, lr {LR}, torch threads {args.threads}; teacher trained "
          f"{args.teacher_steps} steps; KL and NLL per completion token on the validation briefs\n")
    print("| framework | training | tokens/s | vs edgedistill offline KD | peak RSS MB | KL(teacher‖student) "
          "| val NLL |\n|---|---|---|---|---|---|---|")
    ref = res.get("ed-offline", {})
    for c, r in res.items():
        fw, what = CONFIGS[c]
        if "error" in r:
            print(f"| {fw} | {what} | failed: {r['error']} | | | | |")
            continue
        rate = r["tokens"] / r["seconds"]
        vs = f"{rate / (ref['tokens'] / ref['seconds']):.2f}×" if "seconds" in ref else ""
        extra = f" (+{r['cache_build_s']:.0f} s cache build)" if "cache_build_s" in r else ""
        print(f"| {fw} | {what}{extra} | {rate:.0f} | {vs} | {r['peak_rss_mb']:.0f} | {r['kld']:.4f} "
              f"| {r['val_nll']:.3f} |")


if __name__ == "__main__":
    main()
