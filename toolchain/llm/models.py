"""Teacher and student causal LMs: build a Llama from a recipe's shape or load a local HF checkpoint of a supported
family; initialise a student from the teacher by layer selection; align vocabularies that differ only by padding.

Supported families (:data:`FAMILIES`, by ``config.json``'s ``model_type``), each loaded by
``AutoModelForCausalLM`` from local safetensors only:

* ``llama``: Llama 2 (MHA, sentencepiece tokenizer) and Llama 3.x (GQA, ``rope_scaling`` ``llama3``, tied
  embeddings in 1B/3B);
* ``mistral``: Mistral 7B (GQA; v0.2+ has no sliding window, which llama.cpp's Llama graph does not implement);
* ``qwen2``: Qwen2/2.5 (bias on q/k/v, tied embeddings in small sizes, embedding rows padded beyond the tokenizer).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

from edgedistill.toolchain.llm.model_folder import FAMILIES as FAMILIES  # re-exported: the families' home
from edgedistill.toolchain.llm.model_folder import ModelError, check_model_folder
from edgedistill.toolchain.llm.recipe import LlamaArch


def llama_config(arch: LlamaArch, vocab_size: int, bos: int | None, eos: int, pad: int | None) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                       head_dim=arch.hidden_size // arch.num_attention_heads, attention_bias=False, mlp_bias=False,
                       **arch.model_dump())


def build_llama(arch: LlamaArch, vocab_size: int, bos: int | None, eos: int, pad: int | None,
                seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(arch, vocab_size, bos, eos, pad))
    return model.float()


def config_like(teacher: PretrainedConfig, arch: LlamaArch, vocab_size: int | None = None) -> PretrainedConfig:
    """A student config in the teacher's family with ``arch``'s shape (widths, layers, heads); everything else
    (rope theta and scaling, norms, biases, tying, positions, token ids) is the teacher's, so
    :func:`init_from_teacher` can fill it from that teacher."""
    shape = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    cfg = {k: v for k, v in teacher.to_dict().items() if k not in ("architectures", "_name_or_path", "torch_dtype",
                                                                   "dtype")}
    cfg.update({k: getattr(arch, k) for k in shape}, head_dim=arch.hidden_size // arch.num_attention_heads,
               vocab_size=vocab_size or teacher.vocab_size)
    if cfg.get("layer_types"):  # per-layer attention kinds (Qwen2): those of the teacher layers the student copies
        picked = every_other_layer(teacher.num_hidden_layers, arch.num_hidden_layers)
        cfg["layer_types"] = [teacher.layer_types[i] for i in picked]
    return type(teacher).from_dict(cfg)


def build_like(teacher: PreTrainedModel, arch: LlamaArch, vocab_size: int | None = None,
               seed: int = 0) -> PreTrainedModel:
    """A fresh student of the teacher's family with ``arch``'s shape (float32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_like(teacher.config, arch, vocab_size)).float()


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A local HF checkpoint of a supported family (offline, never a hub id; safetensors only, never a pickle;
    checked by :func:`~edgedistill.toolchain.llm.model_folder.check_model_folder` first)."""
    from transformers import AutoModelForCausalLM

    check_model_folder(path)
    if not any(Path(path).glob("*.safetensors")):
        raise ModelError(f"{path}: no *.safetensors weights (pickled .bin checkpoints are not loaded); convert "
                         "them with save_pretrained(..., safe_serialization=True)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                    dtype=dtype, trust_remote_code=False)
    except Exception as err:  # torn shards (SafetensorError), bad index, shape mismatches: name the folder
        if isinstance(err, ModelError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: cannot load the checkpoint ({first})") from None



def every_other_layer(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers (DistilBERT took every other one; Sanh et al. 2019)."""
    if n_student > n_teacher:
        raise ModelError(f"student has {n_student} layers, teacher {n_teacher}: cannot select layers")
    step = n_teacher / n_student
    return [int(i * step) for i in range(n_student)]


def _head_dim(c: PretrainedConfig) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel) -> list[int]:
    """Copy embeddings, final norm, head and evenly spaced blocks from ``teacher``; returns the layers used.

    Both must be of one family (``model_type``) with equal widths (hidden size, heads, head size); the MLP may be
    narrower (its first rows/columns are kept) and the vocabularies may differ by padding rows (the shared first
    rows are copied). A tied student head is its embedding (copied); an untied one gets the teacher's head.
    """
    sc, tc = student.config, teacher.config
    if sc.model_type != tc.model_type:
        raise ModelError(f"student.init: teacher-layers needs one family (student {sc.model_type}, teacher "
                         f"{tc.model_type}); build the student like the teacher or use init: random")
    for f in ("hidden_size", "num_attention_heads", "num_key_value_heads"):
        if getattr(sc, f) != getattr(tc, f):
            raise ModelError(f"student.init: teacher-layers needs equal {f} (student {getattr(sc, f)}, "
                             f"teacher {getattr(tc, f)}); use init: random")
    if _head_dim(sc) != _head_dim(tc):
        raise ModelError(f"student.init: teacher-layers needs equal head_dim (student {_head_dim(sc)}, teacher "
                         f"{_head_dim(tc)}); use init: random")
    layers = every_other_layer(tc.num_hidden_layers, sc.num_hidden_layers)
    v = min(sc.vocab_size, tc.vocab_size)
    s_emb, t_emb = student.get_input_embeddings().weight, teacher.get_input_embeddings().weight
    s_head, t_head = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    with torch.no_grad():
        s_emb[:v].copy_(t_emb[:v])
        if s_head.data_ptr() != s_emb.data_ptr():  # untied student: the teacher's head (its embedding, if tied)
            s_head[:v].copy_(t_head[:v])
        student.model.norm.weight.copy_(teacher.model.norm.weight)
        for s_layer, t_idx in zip(student.model.layers, layers, strict=True):
            t_sd = teacher.model.layers[t_idx].state_dict()
            for name, p in s_layer.state_dict().items():
                if name not in t_sd:
                    raise ModelError(f"student.init: the teacher's layers have no {name!r} (the student's config "
                                     "differs from the teacher's, e.g. attention bias); use init: random")
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


def check_same_vocab(tok: Any, folder: Path, label: str) -> None:
    """An ensemble teacher's local checkpoint must share the main teacher's tokenizer (the run's): same
    token → id map, and at least as many embedding rows (more are padding, cut by :func:`align_vocab`).
    Raises :class:`ModelError` with one line naming ``label`` (e.g. ``teacher.ensemble.0``) and the folder."""
    from transformers import AutoTokenizer

    check_model_folder(folder, label)  # a HF folder of a supported family holding no code, or one line
    head = f"{label} ({folder}): vocabulary differs from the main teacher's"
    rows = int(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("vocab_size") or 0)
    if rows < len(tok):
        raise ModelError(f"{head}: {rows} embedding rows for the main tokenizer's {len(tok)} tokens; every "
                         "ensemble teacher must share the main teacher's tokenizer")
    if not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelError(f"{label} ({folder}): no tokenizer files to compare with the main teacher's; copy the "
                         "tokenizer this teacher was trained with into the folder")
    try:
        theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                               trust_remote_code=False).get_vocab()
    except Exception as err:  # tokenizers raise their own types for unreadable files: one line naming the folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{label} ({folder}): cannot read its tokenizer ({first})") from None
    ours = tok.get_vocab()
    if theirs != ours:
        moved = sum(1 for t, i in ours.items() if theirs.get(t) != i)
        raise ModelError(f"{head}: {len(theirs)} vs {len(ours)} tokens, {moved} of the main tokenizer's map to "
                         "another id or are missing; every ensemble teacher must share the main teacher's tokenizer")


class EarlyExitLM(torch.nn.Module):
    """A causal LM with early exits for self-distillation: ``forward`` returns the final (normed) hidden states
    and, per exit ``N`` (decoder layers kept), the raw hidden state after layer ``N``; an exit's logits are
    ``lm_head(norm_N(h_N))`` with the model's own head and final norm (``per_exit_norm``: a copy of the final norm
    per exit, trained with it). Cut at an exit (:func:`cut_at_exit`) the model is the same family with
    ``num_hidden_layers = N`` and these logits."""

    def __init__(self, student: PreTrainedModel, exits: list[int], per_exit_norm: bool = False) -> None:
        super().__init__()
        n = student.config.num_hidden_layers
        if bad := [e for e in exits if not 1 <= e < n]:
            raise ModelError(f"distill.self_distill.exits: {bad} not in 1 … {n - 1} (the student has {n} layers)")
        self.student = student
        self.exits = list(exits)
        self.norms = (torch.nn.ModuleDict({str(e): copy.deepcopy(student.model.norm) for e in self.exits})
                      if per_exit_norm else None)

    def norm(self, exit_: int) -> torch.nn.Module:
        return self.norms[str(exit_)] if self.norms is not None else self.student.model.norm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                           logits_to_keep=1)
        hs = out.hidden_states  # (embeddings, layer 1 … layer L-1 outputs, final normed)
        return hs[-1], [hs[e] for e in self.exits]

    @torch.no_grad()
    def exit_logits(self, input_ids: torch.Tensor, exit_: int,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, V)`` logits of exit ``exit_`` (the final layer's when it is the layer count)."""
        final, exits = self(input_ids, attention_mask)
        if exit_ == self.student.config.num_hidden_layers:
            return self.student.lm_head(final)
        return self.student.lm_head(self.norm(exit_)(exits[self.exits.index(exit_)]))


def cut_at_exit(model: EarlyExitLM, exit_: int) -> PreTrainedModel:
    """The model cut after ``exit_`` decoder layers: its embeddings, first ``exit_`` layers, the exit's norm (the
    final norm when shared) and head, as a fresh model of the same family with ``num_hidden_layers = exit_`` (a
    plain HF checkpoint once saved; GGUF/ONNX export and the parity contract apply unchanged)."""
    from transformers import AutoModelForCausalLM

    if exit_ not in model.exits:
        raise ModelError(f"distill.self_distill.export_exit: {exit_} is not a trained exit ({model.exits})")
    src = model.student
    cfg = {k: v for k, v in src.config.to_dict().items() if k not in ("_name_or_path", "torch_dtype", "dtype")}
    cfg["num_hidden_layers"] = exit_
    if cfg.get("layer_types"):
        cfg["layer_types"] = cfg["layer_types"][:exit_]
    if cfg.get("max_window_layers") is not None:
        cfg["max_window_layers"] = min(cfg["max_window_layers"], exit_)
    cut = AutoModelForCausalLM.from_config(type(src.config).from_dict(cfg)).to(next(src.parameters()).dtype)
    state = {k: v for k, v in src.state_dict().items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < exit_}
    state["model.norm.weight"] = model.norm(exit_).weight.detach()
    cut.load_state_dict(state, strict=True)
    return cut.eval()
