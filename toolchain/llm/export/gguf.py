"""Hugging Face Llama → GGUF (F32/F16) with ``gguf.GGUFWriter``, then llama.cpp's own quantiser.

The conversion follows llama.cpp's ``convert_hf_to_gguf.py`` for Llama: its metadata keys, its tensor names
(``gguf.get_tensor_name_map``), and its Q/K row permutation for llama.cpp's rotary layout (HF stores rotary
halves, llama.cpp interleaved pairs). Norm weights (1-D) stay F32 in every file type.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import torch

from edgedistill.core.fileio import atomic_path

#: variant → llama.cpp ``llama_ftype`` (llama.h): the quantiser's target type
QUANT_FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
#: variants the writer produces directly
WRITER_VARIANTS = ("f32", "f16")


class GGUFError(RuntimeError):
    """Conversion or quantisation failed; the message names the file."""


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder ``(n_head * head_dim, hidden)`` rows from HF's rotary halves to llama.cpp's interleaved pairs."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _vocab(tokenizer_dir: Path) -> tuple[list[str], list[int], list[str], dict]:
    """Tokens (by id), token types (3 control, 1 normal), merges ``"a b"`` and the special-token config."""
    tj = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj["model"]
    if model.get("type") != "BPE":
        raise GGUFError(f"{tokenizer_dir}: tokenizer model {model.get('type')!r}; only byte-level BPE is converted")
    vocab: dict[str, int] = dict(model["vocab"])
    specials = {a["content"]: a["id"] for a in tj.get("added_tokens", [])}
    vocab.update(specials)
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for t, i in vocab.items():
        tokens[i] = t
    types = [3 if t in specials else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    cfg_path = Path(tokenizer_dir) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    return tokens, types, merges, {"vocab": vocab, **cfg}


def _token_id(tcfg: dict, key: str) -> int | None:
    tok = tcfg.get(key)
    tok = tok.get("content") if isinstance(tok, dict) else tok
    return tcfg["vocab"].get(tok) if tok else None


def write_gguf(model_dir: Path, out: Path, dtype: str = "f32", tokenizer_dir: Path | None = None) -> Path:
    """Convert a local HF Llama folder (config.json + weights, tokenizer beside it or in ``tokenizer_dir``)."""
    import gguf
    from transformers import LlamaForCausalLM

    if dtype not in WRITER_VARIANTS:
        raise GGUFError(f"{out}: the writer makes f32/f16; quantise to {dtype} with quantize()")
    model = LlamaForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    c = model.config
    tokens, types, merges, tcfg = _vocab(tokenizer_dir or model_dir)
    if len(tokens) > c.vocab_size:
        raise GGUFError(f"{model_dir}: tokenizer has {len(tokens)} tokens but the model only {c.vocab_size} rows")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), c.vocab_size)]  # padded embedding rows (Qwen-style)
    types += [5] * (c.vocab_size - len(types))  # 5 = unused
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    ftype = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(Path(model_dir).name)
        w.add_file_type(int(ftype))
        w.add_vocab_size(c.vocab_size)
        w.add_context_length(c.max_position_embeddings)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_rope_freq_base(float(getattr(c, "rope_theta", 10000.0)))
        w.add_rope_dimension_count(head_dim)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                         ("pad_token", w.add_pad_token_id)):
            if (tid := _token_id(tcfg, key)) is not None:
                add(tid)
        w.add_add_bos_token(_token_id(tcfg, "bos_token") is not None)
        _add_tensors(w, model, dtype, head_dim)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _add_tensors(w, model, dtype: str, head_dim: int) -> None:  # type: ignore[no-untyped-def]
    import gguf

    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    sd = model.state_dict()
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    for hf_name, t in sd.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"no GGUF name for tensor {hf_name!r} (not a plain Llama checkpoint?)")
        a = t.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            a = permute_qk(a, c.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = permute_qk(a, c.num_key_value_heads)
        if dtype == "f16" and a.ndim > 1:
            a = a.astype(np.float16)
        w.add_tensor(name, np.ascontiguousarray(a))


def quantize(src: Path, out: Path, variant: str, threads: int = 2) -> Path:
    """Quantise a GGUF with llama.cpp's ``llama_model_quantize`` (Q8_0, Q4_0, Q4_K_M)."""
    import llama_cpp

    if variant not in QUANT_FTYPES:
        raise GGUFError(f"{out}: unknown quantisation {variant!r}; choose one of {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[variant]
    params.nthread = threads
    with atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise GGUFError(f"{src}: llama_model_quantize to {variant} failed (code {rc})")
    return out


def tensor_types(path: Path) -> dict[str, str]:
    """Tensor name → GGML type name, read back from a GGUF (shows what the quantiser really chose)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}
