"""``edgedistill plan``: the resource estimate of a recipe, from model shapes alone (no weights loaded).

Memory rules of thumb (stated so they can be checked by hand):

* teacher forward: weights at ``teacher_dtype`` bytes/param × 1.2 headroom (activations, KV, buffers);
* student training (mixed precision AdamW, FSDP-sharded): weights (2) + gradients (2) + fp32 master (4) + Adam
  moments (8) = 16 bytes/param, × 1.2 headroom;
* teacher cache: tokens × k × (2-byte value + 2- or 4-byte id);
* compute: a forward pass costs 2 FLOPs per parameter per token, a training step 6 (forward + backward), plus 2 per
  head parameter for the chunked KD loss recomputing its logits in backward; GPU-hours = FLOPs / (peak × MFU).
  The training tokens are ``steps × batch × max_length`` (an upper bound: shorter examples cost less).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
TRAIN_BYTES_PER_PARAM = 16
HEADROOM = 1.2


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> Shape:
        return cls(**{f: cfg[f] for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads")},
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))

    @classmethod
    def from_dir(cls, path: Path) -> Shape:
        f = Path(path) / "config.json"
        if not f.is_file():
            raise FileNotFoundError(f"{path}: no config.json (plan reads only the model's config)")
        return cls.from_config(json.loads(f.read_text(encoding="utf-8")))

    def params(self) -> int:
        """Llama parameters: embeddings, per layer attention (q, o full; k, v at kv heads) + gated MLP + 2 norms,
        final norm and the output head (unless tied)."""
        h, hd = self.hidden_size, self.hidden_size // self.num_attention_heads
        attn = 2 * h * h + 2 * h * self.num_key_value_heads * hd
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * per_layer + h + head


@dataclass
class Plan:
    teacher_params: int
    student_params: int
    teacher_bytes: dict[str, float]
    student_bytes: dict[str, float]
    gpu_memory_gb: float
    teacher_gpus: int
    student_train_gpus: int
    cache_tokens: int
    top_k: int
    cache_bytes: float
    train_tokens: int = 0
    teacher_pass_gpu_hours: float = 0.0
    student_train_gpu_hours: float = 0.0
    gpu_tflops: float = 0.0
    mfu: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def plan(teacher: Shape, student: Shape, gpu_memory_gb: float, teacher_dtype: str, cache_tokens: int,
         top_k: int, train_tokens: int = 0, gpu_tflops: float = 989.0, mfu: float = 0.4) -> Plan:
    tp, sp = teacher.params(), student.params()
    rate = gpu_tflops * 1e12 * mfu * 3600  # FLOPs per GPU-hour
    head = student.vocab_size * student.hidden_size
    gpu = gpu_memory_gb * 1e9
    teacher_gpus = math.ceil(tp * BYTES[teacher_dtype] * HEADROOM / gpu)
    student_gpus = math.ceil(sp * TRAIN_BYTES_PER_PARAM * HEADROOM / gpu)
    id_bytes = 2 if max(teacher.vocab_size, student.vocab_size) <= 65536 else 4
    return Plan(tp, sp, {k: tp * v for k, v in BYTES.items()}, {k: sp * v for k, v in BYTES.items()},
                gpu_memory_gb, teacher_gpus, student_gpus, cache_tokens, top_k,
                cache_tokens * top_k * (2 + id_bytes), train_tokens, 2 * tp * cache_tokens / rate,
                (6 * sp + 2 * head) * train_tokens / rate, gpu_tflops, mfu)


def format_plan(p: Plan) -> str:
    gb = 1e9
    lines = [f"teacher: {p.teacher_params / 1e9:.2f} B params — bf16 {p.teacher_bytes['bfloat16'] / gb:.1f} GB, "
             f"fp32 {p.teacher_bytes['float32'] / gb:.1f} GB, int8 {p.teacher_bytes['int8'] / gb:.1f} GB",
             f"student: {p.student_params / 1e9:.3f} B params — bf16 {p.student_bytes['bfloat16'] / gb:.2f} GB",
             f"teacher pass: {p.teacher_gpus} × {p.gpu_memory_gb:g} GB GPU(s)",
             f"student training (AdamW, {TRAIN_BYTES_PER_PARAM} B/param): {p.student_train_gpus} × "
             f"{p.gpu_memory_gb:g} GB GPU(s)",
             f"teacher cache: {p.cache_tokens:,} tokens × top-{p.top_k} = {p.cache_bytes / gb:.1f} GB"]
    if p.gpu_tflops:
        at = f"at {p.gpu_tflops:g} TFLOP/s × {p.mfu:.0%} MFU"
        lines.append(f"teacher pass over the cache: {p.teacher_pass_gpu_hours:,.0f} GPU-hours {at}")
    if p.train_tokens:
        lines.append(f"student training: {p.train_tokens:,} tokens (steps × batch × max_length), "
                     f"{p.student_train_gpu_hours:,.0f} GPU-hours {at}")
        if p.train_tokens > p.cache_tokens:
            lines.append(f"note: training reads {p.train_tokens / p.cache_tokens:.1f}× the cached tokens (epochs "
                         f"over the cache); caching every trained token would take "
                         f"{p.cache_bytes / p.cache_tokens * p.train_tokens / gb:,.0f} GB")
    return "\n".join(lines)
