"""Tokenizers: a ByteLevel BPE trained with ``tokenizers`` on the training split (saved as a Hugging Face
tokenizer), or a user's local HF tokenizer directory. Encoding of prompt/completion pairs for training."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from edgedistill.toolchain.llm.model_folder import check_tokenizer_folder
from edgedistill.toolchain.training import IGNORE_INDEX

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style ByteLevel BPE (no prefix space) and save it to ``out_dir`` as a HF tokenizer.

    llama.cpp reads it as ``tokenizer.ggml.model=gpt2`` / ``pre=gpt-2`` and tokenises identically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # BOS on every encode with special tokens (as Llama's tokenizer does), so TRL's SFT and llama.cpp agree
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """A local HF tokenizer directory (offline; checked by
    :func:`~edgedistill.toolchain.llm.model_folder.check_tokenizer_folder` first); a pad token is set to EOS when it
    has none."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no tokenizer directory (tokenizer.kind: local needs a HF tokenizer folder)")
    check_tokenizer_folder(path)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos_token; set one in its tokenizer_config.json")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Encoded:
    """Token ids of one example; ``labels`` is ``IGNORE_INDEX`` on the prompt (loss only on the completion)."""

    input_ids: list[int]
    labels: list[int]
    n_prompt: int


def encode(tok: PreTrainedTokenizerFast, prompt: str, completion: str | None, max_length: int) -> Encoded:
    """``[BOS] prompt completion [EOS]`` cut to ``max_length``; labels only on completion + EOS.

    Plain text (``prompt == ""``) has every token after BOS as a target; ``completion=None`` encodes the prompt
    alone (for generation).
    """
    head = [tok.bos_token_id] if tok.bos_token_id is not None else []
    head += tok.encode(prompt, add_special_tokens=False) if prompt else []
    if completion is None:
        return Encoded(head[:max_length], [IGNORE_INDEX] * min(len(head), max_length), len(head))
    tail = tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id]
    ids = (head + tail)[:max_length]
    labels = ([IGNORE_INDEX] * len(head) + tail)[:max_length]
    return Encoded(ids, labels, len(head))
