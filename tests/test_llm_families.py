"""Llama 2, Llama 3.x, Mistral and Qwen2 checkpoints (published config shapes, shrunk; bf16, sharded, with an
index) through llama.cpp's converter: the GGUF parity contract per family, loading as teacher and student, and
checkpoint identity in cache keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.core.fileio import sha256_path
from edgedistill.runtimes.llama_cpp import LlamaCppSession
from edgedistill.toolchain.llm.export.fidelity import (
    PARITY_MIN_POSITIONS,
    PARITY_TEXTS,
    fidelity,
    long_parity,
    long_sequence,
    parity,
    token_parity,
    torch_logits,
)
from edgedistill.toolchain.llm.export.gguf import convert, identify_pre_tokenizer, metadata, quantize, tensor_types
from edgedistill.toolchain.llm.models import (
    FAMILIES,
    ModelError,
    align_vocab,
    build_like,
    init_from_teacher,
    load_causal_lm,
)
from edgedistill.toolchain.llm.recipe import LlamaArch
from tests.llm_families import FAMILY_NAMES, FamilyCheckpoint, build_checkpoint

#: what llama.cpp should record for each family: GGUF architecture, tokenizer model, pre-tokenizer
EXPECTED = {"llama3": ("llama", "gpt2", "llama-bpe"), "llama2": ("llama", "llama", "default"),
            "mistral": ("llama", "llama", "default"), "qwen2": ("qwen2", "gpt2", "qwen2")}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[FamilyCheckpoint, Path]:
    """One family's checkpoint and its F32 GGUF (converted once per module)."""
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp(request.param)
    ck = build_checkpoint(request.param, d / "hf")
    return ck, convert(ck.dir, d / "f32.gguf", "f32")


def test_checkpoint_is_shaped_as_published(family: tuple[FamilyCheckpoint, Path]) -> None:
    ck, _ = family
    index = json.loads((ck.dir / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all((ck.dir / s).is_file() for s in shards)
    assert ck.config["torch_dtype" if "torch_dtype" in ck.config else "dtype"] == "bfloat16"
    if ck.family in ("llama3", "qwen2"):
        assert ck.config["tie_word_embeddings"] and "lm_head.weight" not in index["weight_map"]
        assert identify_pre_tokenizer(ck.dir / "tokenizer.json") == EXPECTED[ck.family][2]
    else:
        assert (ck.dir / "tokenizer.model").is_file()  # sentencepiece, read by the converter itself
    if ck.family == "qwen2":
        assert ck.config["vocab_size"] > len(ck.tok)  # embedding rows padded beyond the tokenizer
        assert "model.layers.0.self_attn.q_proj.bias" in index["weight_map"]
    if ck.family == "llama3":
        assert ck.config["rope_scaling"]["rope_type"] == "llama3" and ck.config["num_key_value_heads"] == 2


def test_gguf_parity_contract(family: tuple[FamilyCheckpoint, Path]) -> None:
    """Identical tokens on every parity text, F32 logits within FP32_ATOL + FP32_RTOL·|ref| of HF float32 at every
    one of PARITY_MIN_POSITIONS positions (llama.cpp with an F32 KV cache, STACK.md's parity method)."""
    ck, gguf = family
    meta = metadata(gguf)
    assert (meta["general.architecture"], meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == \
        EXPECTED[ck.family]
    model = load_causal_lm(ck.dir).eval()  # bf16 weights, float32 compute
    sess = LlamaCppSession(gguf, threads=2, n_ctx=PARITY_MIN_POSITIONS, kv_f32=True)
    try:
        tokens = token_parity(ck.tok, sess.tokenize)
        assert tokens.identical == len(PARITY_TEXTS), [
            (PARITY_TEXTS[i], sess.tokenize(PARITY_TEXTS[i]), ck.tok.encode(PARITY_TEXTS[i]))
            for i in tokens.mismatches]
        seqs = [ck.tok.encode(t) for t in PARITY_TEXTS]
        long_ids = long_sequence(seqs, PARITY_MIN_POSITIONS, ck.tok.bos_token_id)
        ref = torch_logits(model, [long_ids])[0]
        got = sess.logits(long_ids)
        assert got.shape == ref.shape == (PARITY_MIN_POSITIONS, model.config.vocab_size)
        long = long_parity(ref, got)
        fid = fidelity([long_ids], [ref], [got])
        par = parity("f32", tokens, long, fid, "llama.cpp")
        assert long.within_fp32 and par.ok, (par, float(np.abs(ref).max()))
        print(f"\n{ck.family}: tokens {tokens.identical}/{tokens.total}, max|Δ| {long.max_abs_diff:.2e} over "
              f"{long.positions} positions (|logit| <= {np.abs(ref).max():.2f})")
    finally:
        sess.close()


@pytest.mark.parametrize("family", ["llama3"], indirect=True)
def test_k_quants_apply_to_a_converted_family(family: tuple[FamilyCheckpoint, Path], tmp_path: Path) -> None:
    """The converter's output quantises with llama.cpp's quantiser; widths of 256 keep K-quants (no fallback)."""
    ck, gguf = family
    q = quantize(gguf, tmp_path / "q4_k_m.gguf", "q4_k_m")
    assert {"Q4_K", "Q6_K"} <= set(tensor_types(q).values())
    sess = LlamaCppSession(q, threads=2)
    try:
        assert token_parity(ck.tok, sess.tokenize).identical == len(PARITY_TEXTS)  # the vocabulary is untouched
    finally:
        sess.close()


@pytest.mark.parametrize("family", ["llama3"], indirect=True)
def test_a_wrong_pre_tokenizer_breaks_the_contract(family: tuple[FamilyCheckpoint, Path], tmp_path: Path) -> None:
    """The parity texts catch a pre-tokenizer that does not match the definition (Llama 3's regex read as GPT-2's:
    digits, contractions and newlines split differently), so a guessed name never passes silently."""
    ck, _ = family
    wrong = convert(ck.dir, tmp_path / "wrong.gguf", "f32", pre_tokenizer="gpt-2")
    assert metadata(wrong)["tokenizer.ggml.pre"] == "gpt-2"
    sess = LlamaCppSession(wrong, threads=2)
    try:
        tokens = token_parity(ck.tok, sess.tokenize)
    finally:
        sess.close()
    assert tokens.identical < tokens.total, tokens


# -- families as teacher and student ---------------------------------------------------------------------------
def test_each_family_loads_as_teacher_and_student(family: tuple[FamilyCheckpoint, Path], tmp_path: Path) -> None:
    """A student checkpoint of the family (fewer layers, the teacher's tokenizer; Qwen2 padded differently) loads,
    is initialised from the teacher's layers, and KD compares over the tokenizer's rows."""
    ck, _ = family
    teacher = load_causal_lm(ck.dir)
    assert teacher.config.model_type in FAMILIES and next(teacher.parameters()).dtype == torch.float32
    sdir = build_checkpoint(ck.family, tmp_path / "student", seed=1, layers=1, tokenizer_from=ck.dir).dir
    student = load_causal_lm(sdir)
    if ck.family == "qwen2":  # Qwen2.5-3B and 7B pad one tokenizer to different row counts
        student.resize_token_embeddings(teacher.config.vocab_size + 128)
        assert student.config.vocab_size != teacher.config.vocab_size
    assert student.config.model_type == teacher.config.model_type
    assert init_from_teacher(student, teacher) == [0]
    v = min(student.config.vocab_size, teacher.config.vocab_size)
    assert torch.equal(student.get_input_embeddings().weight[:v], teacher.get_input_embeddings().weight[:v])
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight, teacher.model.layers[0].self_attn.q_proj.weight)
    if ck.family == "qwen2":  # QKV bias copied too
        assert torch.equal(student.model.layers[0].self_attn.k_proj.bias, teacher.model.layers[0].self_attn.k_proj.bias)
    if teacher.config.tie_word_embeddings:
        assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    assert align_vocab(teacher.config.vocab_size, student.config.vocab_size, len(ck.tok)) == len(ck.tok)
    # a fresh student in the teacher's family (rope scaling, biases, tying kept) from a recipe shape
    arch = LlamaArch(hidden_size=teacher.config.hidden_size, intermediate_size=512, num_hidden_layers=1,
                     num_attention_heads=teacher.config.num_attention_heads,
                     num_key_value_heads=teacher.config.num_key_value_heads)
    fresh = build_like(teacher, arch)
    assert type(fresh) is type(teacher)
    assert getattr(fresh.config, "rope_scaling", None) == getattr(teacher.config, "rope_scaling", None)
    assert fresh.config.rope_theta == teacher.config.rope_theta
    assert init_from_teacher(fresh, teacher) == [0]
    ids = ck.tok.encode(PARITY_TEXTS[0])
    assert torch.isfinite(fresh(torch.tensor([ids])).logits).all()


def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"model_type 'gpt2' is not supported; use one of llama .*qwen2") as err:
        load_causal_lm(tmp_path / "gpt2")
    assert "\n" not in str(err.value)
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="no \\*.safetensors weights"):
        load_causal_lm(tmp_path / "pickled")
    with pytest.raises(ModelError, match="no config.json"):
        load_causal_lm(tmp_path)


def test_init_from_teacher_needs_one_family(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 100}
    teacher = Qwen2ForCausalLM(Qwen2Config(**shape))
    student = LlamaForCausalLM(LlamaConfig(**shape | {"num_hidden_layers": 1}))
    with pytest.raises(ModelError, match="needs one family"):
        init_from_teacher(student, teacher)


# -- checkpoint identity ---------------------------------------------------------------------------------------
def test_teacher_cache_key_hashes_every_shard_and_the_index(tmp_path: Path) -> None:
    """Two folders with the same config.json and different weights never share a teacher cache key; changing one
    shard, or the index alone, changes it too (the stages key the cache on sha256_path of the teacher folder)."""
    from edgedistill.toolchain.llm.distill.cache import cache_key
    from edgedistill.toolchain.llm.tokenizer import Encoded

    a = build_checkpoint("llama3", tmp_path / "a", seed=0).dir
    b = build_checkpoint("llama3", tmp_path / "b", seed=1, tokenizer_from=a).dir
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    data = [Encoded([1, 2, 3], [-100, 2, 3], 1)]
    keys = {cache_key(sha256_path(d), data, 8, 2.0) for d in (a, b)}
    assert len(keys) == 2
    base = cache_key(sha256_path(a), data, 8, 2.0)
    shards = sorted(a.glob("model-*.safetensors"))
    last = shards[-1].read_bytes()
    shards[-1].write_bytes(last[:-1] + bytes([last[-1] ^ 1]))  # one bit in the last shard
    assert cache_key(sha256_path(a), data, 8, 2.0) != base
    shards[-1].write_bytes(last)
    assert cache_key(sha256_path(a), data, 8, 2.0) == base
    index = a / "model.safetensors.index.json"
    index.write_text(index.read_text().replace('"total_size"', '"total_size" ', 1))
    assert cache_key(sha256_path(a), data, 8, 2.0) != base


# -- the converter's memory --------------------------------------------------------------------------------------
def test_converter_peak_memory_is_measured_at_two_sizes(tmp_path: Path) -> None:
    """perf/gguf_convert_memory.py at two sizes (4x the parameters apart): lazy conversion's anonymous memory grows
    with the largest tensor, not with the model (the F32 GGUF grows by ~90 MB here)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("gguf_convert_memory",
                                                  Path(__file__).parents[1] / "perf" / "gguf_convert_memory.py")
    assert spec is not None and spec.loader is not None
    perf = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = perf  # dataclasses look their module up there
    spec.loader.exec_module(perf)
    rows = perf.run([(512, 2), (1024, 2)], eager=False, workdir=tmp_path, floor=False)
    small, large = rows
    print("\n" + perf.table(rows))
    assert small.params * 3 < large.params and large.gguf_mb - small.gguf_mb > 80
    assert 0 < small.peak_anon_mb <= small.peak_rss_mb and 0 < large.peak_anon_mb <= large.peak_rss_mb
    # growth stays under half the larger F32 model (it held a few of the largest tensors, ~16 MB each, at once)
    assert large.peak_anon_mb - small.peak_anon_mb < large.gguf_mb / 2, rows
