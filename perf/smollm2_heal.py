"""#24 research probe (not part of the product): can KD over every position of real WordNet text heal a 3x depth
cut of SmolLM2-135M-Instruct? The 10-block student (every 3rd block; embeddings and tied head frozen) trains on
``Definition: <gloss>\\nWord: <lemma>`` lines of noun synsets that share no lemma with the evaluated senses,
with forward KL to the teacher's full softmax (``--mode kd``) or cross-entropy (``--mode ce``), and is scored with
the recipe's 3-shot prompt every ``--eval-every`` steps (benchmarks/RESULTS.md, the smollm2-wordnet section).

    .venv/bin/python perf/smollm2_heal.py --mode kd --steps 160 --eval-every 40 --batch 16
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from edgedistill.toolchain.llm import models, pretrained
from edgedistill.toolchain.llm.tasks import wordnet as wn

N_EVAL, N_HELD_OUT = 48, 400


def cut(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of ``teacher`` keeping only ``layers``; embeddings and tied head frozen."""
    st = copy.deepcopy(teacher)
    st.model.layers = torch.nn.ModuleList([st.model.layers[i] for i in layers])
    st.config.num_hidden_layers = len(layers)
    for j, layer in enumerate(st.model.layers):
        layer.self_attn.layer_idx = j
    for p in st.parameters():
        p.requires_grad_(True)
    st.model.embed_tokens.weight.requires_grad_(False)
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["kd", "ce"], default="kd")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--every", type=int, default=3, help="keep every n-th block")
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.manual_seed(0)
    torch.set_num_threads(2)
    folder = wn.ensure()
    common = wn.common_senses(folder)
    random.Random(0).shuffle(common)
    evals = common[-N_EVAL:]
    banned = set().union(*(wn.synonyms(folder, s.lemmas[0]) for s in common[-N_HELD_OUT:]))
    senses, _ = wn._database(str(folder))
    pool = [s for s in senses.values() if s.definition and s.lemmas[0].replace(" ", "").isalpha()
            and not set(s.lemmas) & banned]
    random.Random(1).shuffle(pool)
    path = pretrained.ensure("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    teacher = models.load_causal_lm(path).eval().requires_grad_(False)
    student = cut(teacher, list(range(0, teacher.config.num_hidden_layers, a.every)))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 10) * max(0.1, 1 - s / a.steps))
    print(f"pool {len(pool)} glosses; student keeps every {a.every}th block", flush=True)

    @torch.no_grad()
    def evaluate() -> tuple[float, list[str]]:
        student.eval()
        hits, outs = 0, []
        for s in evals:
            ids = tok(wn.PROMPT_TEMPLATE.replace("{input}", s.definition), return_tensors="pt").input_ids
            out = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                   pad_token_id=tok.eos_token_id)
            outs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
            hits += wn.first_word(outs[-1]) in wn.synonyms(folder, s.lemmas[0])
        student.train()
        return hits / len(evals), outs[:5]

    t0 = time.time()
    for step in range(a.steps + 1):
        if step % a.eval_every == 0:
            score, sample = evaluate()
            print(f"step {step} score {score:.3f} {sample} t={time.time() - t0:.0f}s", flush=True)
        if step == a.steps:
            break
        batch = pool[step * a.batch:(step + 1) * a.batch]
        enc = tok([f"Definition: {s.definition}\nWord: {s.lemmas[0]}\n\n" for s in batch], return_tensors="pt",
                  padding=True, truncation=True, max_length=64)
        ids, mask = enc.input_ids, enc.attention_mask
        logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
        if a.mode == "kd":
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
            per_tok = F.kl_div(F.log_softmax(logits, -1), t_logp, log_target=True, reduction="none").sum(-1)
        else:
            per_tok = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        w = mask[:, 1:].float()
        loss = (per_tok * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            print(f"  step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
