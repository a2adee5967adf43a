"""Distillation entry point for ``accelerate launch`` (DDP on CPU with gloo, or FSDP/DDP on GPUs).

    accelerate launch --multi_gpu --num_processes 2 -m edgedistill.toolchain.llm.launch \\
        --teacher DIR --out history.json [--steps 4 --batch-size 8 --examples 64]

The teacher folder holds a HF Llama and its tokenizer. The student is the teacher's every-other-layer copy;
training is online KD (forward KL + CE) on generated briefs. Every rank takes its slice of each global batch and
the loss is normalised by the global token count, so N processes reproduce the one-process loss curve; rank 0
writes the all-reduced loss history to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from accelerate import Accelerator

    from edgedistill.toolchain.llm.data import generate_legal_briefs
    from edgedistill.toolchain.llm.distill import kd_step
    from edgedistill.toolchain.llm.models import init_from_teacher, load_llama
    from edgedistill.toolchain.llm.recipe import KDLossConfig, LMTrainConfig
    from edgedistill.toolchain.llm.tokenizer import encode, load_tokenizer
    from edgedistill.toolchain.llm.train import batches, optimizer_and_schedule

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--student-layers", type=int, default=1)
    a = p.parse_args(argv)

    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    tok = load_tokenizer(a.teacher)
    teacher = load_llama(a.teacher).eval().requires_grad_(False)
    cfg = teacher.config.to_dict() | {"num_hidden_layers": a.student_layers}
    student = type(teacher)(type(teacher.config).from_dict(cfg))
    init_from_teacher(student, teacher)
    teacher.to(acc.device)  # the student moves in acc.prepare
    data = [encode(tok, e.prompt, e.completion, 192) for e in generate_legal_briefs(a.examples, 0)]
    train = LMTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=1e-3, warmup_steps=1)
    opt, sched = optimizer_and_schedule(student, train)
    student, opt = acc.prepare(student, opt)
    loss_fn = kd_step(student, data, KDLossConfig(divergence="forward_kl", alpha=0.5), 128, teacher=teacher)
    it = batches(data, a.batch_size, 0, tok.pad_token_id, acc.process_index, acc.num_processes)
    history = []
    for _ in range(a.steps):
        idx, batch = next(it)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        loss = loss_fn(idx, batch)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        sched.step()
        history.append(float(acc.reduce(loss.detach(), reduction="mean")))
    if acc.is_main_process:
        a.out.write_text(json.dumps({"world": acc.num_processes, "history": history}))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
