"""Llama teacher and student: build from a recipe's shape or load a local HF checkpoint; initialise a student
from the teacher by layer selection; align vocabularies that differ only by padding."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgedistill.toolchain.llm.recipe import LlamaArch


class ModelError(ValueError):
    """A model cannot be built or paired; the message names the path and the fix."""


def llama_config(arch: LlamaArch, vocab_size: int, bos: int | None, eos: int, pad: int | None) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                       head_dim=arch.hidden_size // arch.num_attention_heads, attention_bias=False, mlp_bias=False,
                       **arch.model_dump())


def build_llama(arch: LlamaArch, vocab_size: int, bos: int | None, eos: int, pad: int | None,
                seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(arch, vocab_size, bos, eos, pad))
    return model.float()


def load_llama(path: Path, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A local HF Llama checkpoint (offline, never a hub id)."""
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face model folder (no config.json); give a local checkpoint path")
    model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    if model.config.model_type != "llama":
        raise ModelError(f"{path}: model_type is {model.config.model_type!r}; this pipeline needs a Llama model")
    return model


def every_other_layer(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers (DistilBERT took every other one; Sanh et al. 2019)."""
    if n_student > n_teacher:
        raise ModelError(f"student has {n_student} layers, teacher {n_teacher}: cannot select layers")
    step = n_teacher / n_student
    return [int(i * step) for i in range(n_student)]


def init_from_teacher(student: LlamaForCausalLM, teacher: LlamaForCausalLM) -> list[int]:
    """Copy embeddings, final norm, head and evenly spaced blocks from ``teacher``; returns the layers used.

    Widths must match (hidden size, heads); the MLP may be narrower, in which case its first rows/columns are kept.
    """
    sc, tc = student.config, teacher.config
    for f in ("hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if getattr(sc, f) != getattr(tc, f):
            raise ModelError(f"student.init: teacher-layers needs equal {f} (student {getattr(sc, f)}, "
                             f"teacher {getattr(tc, f)}); use init: random")
    layers = every_other_layer(tc.num_hidden_layers, sc.num_hidden_layers)
    with torch.no_grad():
        student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        student.model.norm.weight.copy_(teacher.model.norm.weight)
        student.lm_head.weight.copy_(teacher.lm_head.weight)
        for s_layer, t_idx in zip(student.model.layers, layers, strict=True):
            t_sd = teacher.model.layers[t_idx].state_dict()
            for name, p in s_layer.state_dict().items():
                src = t_sd[name]
                p.copy_(src[tuple(slice(0, n) for n in p.shape)])
    return layers


def align_vocab(teacher_vocab: int, student_vocab: int, tokenizer_len: int) -> int:
    """The shared vocabulary size KD compares over: the tokenizer's, when both models only pad beyond it.

    Qwen2.5-7B has 152064 embedding rows and 3B has 151936 over one 151665-token tokenizer: the extra rows are
    padding and are cut. A model smaller than the tokenizer means a different tokenizer, which is an error.
    """
    if min(teacher_vocab, student_vocab) < tokenizer_len:
        raise ModelError(f"vocabularies differ: teacher {teacher_vocab}, student {student_vocab} rows, tokenizer "
                         f"{tokenizer_len} tokens; teacher and student must share one tokenizer")
    return tokenizer_len


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
