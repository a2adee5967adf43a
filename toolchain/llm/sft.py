"""Black-box distillation: supervised fine-tuning of the student on the teacher's collected outputs with TRL's
``SFTTrainer`` (prompt–completion data, loss on the completion only; CPU when no GPU)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.recipe import LMTrainConfig


def train_sft(student: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], cfg: LMTrainConfig,
              work_dir: Path, seed: int, max_length: int) -> dict[str, Any]:
    """Fine-tune ``student`` in place on ``(prompt, completion)`` pairs; returns steps, seconds and loss history."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from edgedistill.toolchain.progress import make_progress

    if not pairs:
        raise ValueError("SFT: no collected targets (every request failed?); see the collect journal")
    ds = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    args = SFTConfig(
        output_dir=str(work_dir), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="cosine", use_cpu=not torch.cuda.is_available(), bf16=cfg.dtype == "bfloat16",
        logging_steps=10, save_strategy="no", report_to=[], seed=seed, max_length=max_length,
        completion_only_loss=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=student, args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; our bar replaces it

    class _Bar(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            prog.advance(task)

    t0 = time.perf_counter()
    with make_progress() as prog:
        task = prog.add_task("SFT on teacher replies (TRL)", total=cfg.steps, status="")
        trainer.add_callback(_Bar())
        trainer.train()
    history = [round(h["loss"], 5) for h in trainer.state.log_history if "loss" in h]
    student.eval()
    return {"steps": trainer.state.global_step, "seconds": time.perf_counter() - t0, "history": history,
            "examples": len(pairs)}
