"""Checkpoints of each supported LLM family in its published config shapes, shrunk, for conversion and parity tests.

Each family's ``config.json`` values are the published model's (Llama-3.2-1B, Llama-2-7b, Mistral-7B-v0.3,
Qwen2.5-0.5B), with fewer layers and smaller widths (multiples of 256 where llama.cpp's K-quants need them) and
random weights (norm weights and biases randomised too, so a converter that drops a bias or a norm shows). Saved
as bf16 safetensors in several shards with an index, as those checkpoints are published.

Tokenizers are trained here, offline, on generated briefs plus the parity texts:

* Llama 3: byte-level BPE behind Llama 3's Split regex (its tokenizer.json layout; BOS ``<|begin_of_text|>``);
* Qwen2: byte-level BPE behind Qwen2's Split regex with an NFC normalizer (no BOS; vocabulary padded beyond it);
* Llama 2 and Mistral: real sentencepiece BPE models (``tokenizer.model``) trained with Llama 2's trainer options
  (byte fallback, split digits, identity normalisation, dummy prefix), wrapped as ``LlamaTokenizerFast`` — the
  files llama.cpp's converter reads through its sentencepiece path; Mistral's adds ``[INST]``/``[/INST]``
  control tokens as v0.3 does.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgedistill.toolchain.llm.export.fidelity import PARITY_TEXTS
from edgedistill.toolchain.llm.export.gguf import LLAMA3_REGEX, QWEN2_REGEX

#: published config.json values that matter to conversion and parity, shrunk (layers, widths, vocabulary)
CONFIGS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B: GQA 32/8 (here 8/2), rope_theta 500000, llama3 rope scaling, tied embeddings
    "llama3": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "head_dim": 32,
               "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8,
               "num_key_value_heads": 2, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
               "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
                                                        "low_freq_factor": 1.0,
                                                        "original_max_position_embeddings": 8192,
                                                        "rope_type": "llama3"},
               "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
               "pretraining_tp": 1},
    # meta-llama/Llama-2-7b-hf: MHA 32/32 (here 4/4), rope_theta 10000, no scaling, untied head
    "llama2": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
               "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
               "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
               "tie_word_embeddings": False, "hidden_act": "silu", "pretraining_tp": 1},
    # mistralai/Mistral-7B-v0.3: GQA 32/8 (here 8/2), rope_theta 1e6, no sliding window, untied head
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 256,
                "head_dim": 32, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 8,
                "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
                "hidden_act": "silu"},
    # Qwen/Qwen2.5-0.5B: GQA 14/2 (here 4/2, head_dim 64), q/k/v bias, rope_theta 1e6, tied embeddings,
    # rms_norm_eps 1e-6, embedding rows padded beyond the tokenizer (151936 rows for 151665 tokens)
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
              "intermediate_size": 1280, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 32768, "max_window_layers": 2, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False,
              "tie_word_embeddings": True, "hidden_act": "silu"},
}
FAMILY_NAMES = tuple(CONFIGS)
#: a shard size that splits every family's checkpoint into several files (and writes the index)
SHARD = "1MB"


def corpus(n: int = 200) -> list[str]:
    """Training text: generated briefs, plus the parity texts so merges span accents, CJK and emoji bytes."""
    from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs

    return [e.prompt + e.completion for e in generate_legal_briefs(n, 0)] + list(PARITY_TEXTS) * 3


def byte_level_bpe(regex: str, vocab_size: int, specials: list[str], bos: str | None, eos: str, pad: str,
                   out_dir: Path, nfc: bool = False) -> Any:
    """A byte-level BPE behind ``Split(regex, Isolated)`` + ``ByteLevel(use_regex=False)`` (Llama 3 / Qwen2
    tokenizer.json layout), BOS added by the post-processor when ``bos`` is given."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC() if nfc else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if bos is not None:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   add_bos_token=bos is not None, add_eos_token=False,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    return fast


def sentencepiece_bpe(vocab_size: int, out_dir: Path, control: list[str] | None = None) -> Any:
    """A sentencepiece BPE model with Llama 2's trainer options, saved as ``tokenizer.model`` and wrapped as
    ``LlamaTokenizerFast`` (``tokenizer.json`` converted from it by transformers)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, split_by_unicode_script=True,
        character_coverage=0.99995, max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=control or [], minloglevel=2, num_threads=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(buf.getvalue())
    # legacy + add_prefix_space: the published Llama 2 / Mistral tokenizer.json (Prepend("▁") then Replace(" ", "▁")).
    # Without add_prefix_space, transformers 4.57 converts it with no Prepend: no dummy prefix, unlike sentencepiece.
    fast = LlamaTokenizerFast(vocab_file=str(out_dir / "tokenizer.model"), add_bos_token=True, add_eos_token=False,
                              legacy=True, add_prefix_space=True, clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    return fast


def family_tokenizer(family: str, out_dir: Path) -> Any:
    if family == "llama3":
        return byte_level_bpe(LLAMA3_REGEX, 1000, ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>",
                              "<|end_of_text|>", "<|end_of_text|>", out_dir)
    if family == "qwen2":
        return byte_level_bpe(QWEN2_REGEX, 1000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                              "<|endoftext|>", "<|endoftext|>", out_dir, nfc=True)
    if family == "llama2":
        return sentencepiece_bpe(1000, out_dir)
    if family == "mistral":
        return sentencepiece_bpe(1024, out_dir, control=["[INST]", "[/INST]"])
    raise KeyError(family)


def randomise(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Random weights everywhere: matrices N(0, std), norm weights 1 + N(0, 0.1), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)


@dataclass
class FamilyCheckpoint:
    family: str
    dir: Path  # config.json, sharded bf16 safetensors + index, tokenizer files
    tok: Any
    config: dict[str, Any]


def build_checkpoint(family: str, out_dir: Path, seed: int = 0, layers: int | None = None,
                     tokenizer_from: Path | None = None) -> FamilyCheckpoint:
    """Save ``family``'s shrunk checkpoint (bf16, sharded, with an index) and its tokenizer into ``out_dir``.

    ``layers`` changes the depth (e.g. for a student); ``tokenizer_from`` reuses a tokenizer folder (teacher and
    student share one)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_from), local_files_only=True)
        tok.save_pretrained(str(out_dir))
        if (tokenizer_from / "tokenizer.model").is_file():
            (out_dir / "tokenizer.model").write_bytes((tokenizer_from / "tokenizer.model").read_bytes())
    else:
        tok = family_tokenizer(family, out_dir)
    cfg = dict(CONFIGS[family])
    if layers is not None:
        cfg["num_hidden_layers"] = layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = layers
    n = len(tok)
    vocab = (n + 127) // 128 * 128 + 128 if family == "qwen2" else n  # Qwen pads its embedding beyond the tokenizer
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, vocab_size=vocab, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    randomise(model, seed)
    model.to(torch.bfloat16).save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=SHARD)
    return FamilyCheckpoint(family, out_dir, tok, json.loads((out_dir / "config.json").read_text()))
