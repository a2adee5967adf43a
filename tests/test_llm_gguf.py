"""HF Llama → GGUF through llama.cpp's own converter → llama.cpp: F32 parity with PyTorch (tokens and logits over a
long sequence), llama.cpp's quantiser, fidelity like its perplexity tool; fetching the converter safely."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgedistill.runtimes.base import open_session, runtime_for
from edgedistill.runtimes.llama_cpp import LlamaCppSession
from edgedistill.toolchain.llm.export import gguf as gguf_mod
from edgedistill.toolchain.llm.export.fidelity import (
    GGUF_F32_MAX_ABS_DIFF,
    PARITY_MIN_POSITIONS,
    PARITY_TEXTS,
    Q8_MIN_SAME_TOP,
    fidelity,
    long_parity,
    long_sequence,
    parity,
    token_parity,
    torch_logits,
)
from edgedistill.toolchain.llm.export.gguf import (
    GGUFError,
    convert,
    identify_pre_tokenizer,
    metadata,
    quantize,
    tensor_types,
)
from edgedistill.toolchain.llm.tokenizer import encode
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def ggufs(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    d = tmp_path_factory.mktemp("gguf")
    out = {v: convert(tiny_lm.dir, d / f"m-{v}.gguf", v) for v in ("f32", "f16")}
    for v in ("q8_0", "q4_k_m"):
        out[v] = quantize(out["f32"], d / f"m-{v}.gguf", v)
    return out


def _ids(tiny_lm: TinyLM, n: int = 6) -> list[list[int]]:  # noqa: F811
    return [encode(tiny_lm.tok, e.prompt, e.completion, 160).input_ids for e in tiny_lm.test[:n]]


def test_f32_gguf_matches_pytorch(tiny_lm: TinyLM, ggufs: dict[str, Path]) -> None:  # noqa: F811
    """The project's own tokenizer (ByteLevel BPE, unknown to llama.cpp's hash list) converts as ``gpt-2``, and the
    F32 file meets the parity contract: identical tokens on every text, logits within the fp32 bound over a
    sequence of PARITY_MIN_POSITIONS tokens (past the model's 256 trained positions)."""
    assert runtime_for(ggufs["f32"]) == "llama.cpp"
    assert metadata(ggufs["f32"])["tokenizer.ggml.pre"] == "gpt-2"
    sess_f32kv = LlamaCppSession(ggufs["f32"], threads=2, n_ctx=PARITY_MIN_POSITIONS, kv_f32=True)
    text = tiny_lm.test[0].prompt
    ids = [tiny_lm.tok.bos_token_id, *tiny_lm.tok.encode(text, add_special_tokens=False)]
    assert sess_f32kv.tokenize(text) == ids  # llama.cpp tokenises exactly like `tokenizers`
    tokens = token_parity(tiny_lm.tok, sess_f32kv.tokenize)
    assert tokens.identical == len(PARITY_TEXTS), [PARITY_TEXTS[i] for i in tokens.mismatches]
    seqs = _ids(tiny_lm)
    fid = fidelity(seqs, torch_logits(tiny_lm.model, seqs), [sess_f32kv.logits(s) for s in seqs])
    assert fid.max_abs_diff <= GGUF_F32_MAX_ABS_DIFF, fid
    assert fid.same_top_token == 1.0
    long_ids = long_sequence(seqs, PARITY_MIN_POSITIONS, tiny_lm.tok.bos_token_id)
    assert len(long_ids) == PARITY_MIN_POSITIONS
    long = long_parity(torch_logits(tiny_lm.model, [long_ids])[0], sess_f32kv.logits(long_ids))
    par = parity("f32", tokens, long, fid, "llama.cpp")
    assert par.ok and long.within_fp32 and long.positions == PARITY_MIN_POSITIONS, par
    sess_f32kv.close()


def test_quantised_ggufs(tiny_lm: TinyLM, ggufs: dict[str, Path]) -> None:  # noqa: F811
    types = set(tensor_types(ggufs["q4_k_m"]).values())
    assert {"Q4_K", "Q6_K"} <= types, types  # widths of 256: K-quants really applied, no fallback
    assert set(tensor_types(ggufs["q8_0"]).values()) == {"Q8_0", "F32"}
    seqs = _ids(tiny_lm)
    ref = torch_logits(tiny_lm.model, seqs)
    res = {}
    for v in ("f16", "q8_0", "q4_k_m"):
        sess = open_session("llama.cpp", ggufs[v], threads=2)
        res[v] = fidelity(seqs, ref, [sess.logits(s) for s in seqs])
        sess.close()
    assert res["q8_0"].same_top_token >= Q8_MIN_SAME_TOP, res["q8_0"]
    assert res["f16"].kld_mean < res["q8_0"].kld_mean * 2 + 1e-4 < res["q4_k_m"].kld_mean * 2 + 1e-3
    assert ggufs["q4_k_m"].stat().st_size < ggufs["q8_0"].stat().st_size < ggufs["f16"].stat().st_size
    print({k: v.to_dict() for k, v in res.items()})


def test_gguf_roofline_by_hand(tiny_lm: TinyLM, ggufs: dict[str, Path]) -> None:  # noqa: F811
    """Per-token decode cost of a GGUF: 2 FLOPs per weight of every matrix (not the embedding lookup), attention
    over the cached context; quantised matrices count as int8 work; F32 bytes are the weights' bytes."""
    from edgedistill.devices.estimate import GGUF_ESTIMATE_CONTEXT, estimate_ms, gguf_cost
    from edgedistill.devices.profile import get_profile

    cfg = tiny_lm.model.config
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    matrix = layers * (h * h * 2 + h * kv * 2 + 3 * h * inter) + vocab * h  # q,o + k,v + gate/up/down + head
    norms = (2 * layers + 1) * h
    attention = layers * 4 * h * GGUF_ESTIMATE_CONTEXT
    f32 = gguf_cost(ggufs["f32"])
    assert f32.flops == pytest.approx(2 * matrix + 4 * norms + attention) and f32.int8_flops == 0
    kv_bytes = layers * 2 * kv * GGUF_ESTIMATE_CONTEXT * 2
    assert f32.bytes == pytest.approx(4 * (matrix + norms + h) + kv_bytes)  # + one F32 embedding row
    q4 = gguf_cost(ggufs["q4_k_m"])
    assert q4.int8_flops == pytest.approx(2 * matrix) and q4.bytes < f32.bytes / 4
    rpi4 = get_profile("rpi4")
    assert estimate_ms(q4, rpi4, 1)["ms"] < estimate_ms(f32, rpi4, 1)["ms"]


def test_agent_measures_a_gguf_per_token(tiny_lm: TinyLM, ggufs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """The device agent's language-model mode: ms per generated token, pp/tg, next-token accuracy and the
    logits of every eval position (for parity against the host)."""
    from edgedistill.devices.local import AgentJob, run_local

    seqs = _ids(tiny_lm, 3)
    ids = np.zeros((3, max(map(len, seqs))), dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    np.savez(tmp_path / "eval.npz", ids=ids, lengths=np.array([len(s) for s in seqs]))
    doc = run_local(AgentJob(ggufs["f32"], 1, tmp_path / "eval.npz", None, 2, 10, True, tmp_path / "l.npy"))
    assert doc["unit"] == "ms per generated token" and doc["latency_ms"]["p50"] > 0 and doc["tg_tps"] > 0
    assert doc["n_eval"] == sum(len(s) - 1 for s in seqs) and 0 <= doc["accuracy"] <= 1
    logits = np.load(tmp_path / "l.npy")
    ref = np.concatenate(torch_logits(tiny_lm.model, seqs))
    assert logits.shape == ref.shape and np.abs(logits - ref).max() < 1e-2  # F16 KV cache in the agent
    hits = sum(int((r[:-1].argmax(-1) == np.asarray(s[1:])).sum()) for r, s in zip(
        torch_logits(tiny_lm.model, seqs), seqs, strict=True))
    assert doc["accuracy"] == pytest.approx(hits / doc["n_eval"], abs=2 / doc["n_eval"])


# -- the converter: fetched once per machine, extracted safely; the pre-tokenizer from tokenizer.json ----------
def _tokenizer_json(pre: dict, normalizer: dict | None = None, model: str = "BPE") -> dict:
    return {"model": {"type": model, "vocab": {}, "merges": []}, "pre_tokenizer": pre, "normalizer": normalizer}


def _split(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def test_pre_tokenizer_is_identified_from_the_definition(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    assert identify_pre_tokenizer(tiny_lm.dir / "tokenizer.json") == "gpt-2"  # train_bpe: ByteLevel alone
    cases = {
        "llama-bpe": _tokenizer_json(_split(gguf_mod.LLAMA3_REGEX)),
        "qwen2": _tokenizer_json(_split(gguf_mod.QWEN2_REGEX), {"type": "NFC"}),
        None: _tokenizer_json(_split(r"\s+|\w+")),  # a regex llama.cpp has no pre-tokenizer for
    }
    for want, tj in cases.items():
        (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
        assert identify_pre_tokenizer(tmp_path / "tokenizer.json") == want, want
    odd = [_tokenizer_json({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}),  # prefix space
           _tokenizer_json(_split(gguf_mod.LLAMA3_REGEX), {"type": "Lowercase"}),  # llama.cpp does not lowercase
           _tokenizer_json({"type": "Metaspace"}), _tokenizer_json({"type": "ByteLevel"}, model="WordPiece")]
    for tj in odd:
        (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
        assert identify_pre_tokenizer(tmp_path / "tokenizer.json") is None, tj


def test_unknown_pre_tokenizer_fails_naming_the_tokenizer_file(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """A BPE tokenizer that llama.cpp's hash does not know and whose definition matches no known pre-tokenizer is
    refused (never converted with a guessed pre-tokenizer)."""
    src = tmp_path / "m"
    src.mkdir()
    for f in tiny_lm.dir.iterdir():
        if f.is_file():
            (src / f.name).write_bytes(f.read_bytes())
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+|\w+|[^\s\w]+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(GGUFError, match=r"tokenizer\.json defines none that edgedistill recognises"):
        convert(src, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


def test_convert_refuses_pickles_and_missing_tokenizers(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "config.json").write_text((tiny_lm.dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(GGUFError, match=f"{tmp_path}: no \\*.safetensors"):
        convert(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "model.safetensors").write_bytes((tiny_lm.dir / "model.safetensors").read_bytes())
    with pytest.raises(GGUFError, match="no tokenizer.json or tokenizer.model"):
        convert(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(GGUFError, match="quantise to q8_0 with quantize"):
        convert(tmp_path, tmp_path / "x.gguf", "q8_0")


def _sdist(path: Path, extra: list[tarfile.TarInfo]) -> Path:
    """A fake llama-cpp-python sdist: the converter's files, one file that must not be extracted, and ``extra``."""
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    with tarfile.open(path, "w:gz") as tf:
        for name in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py",
                     "src/llama.cpp", "gguf-py/tests/test.py"):
            data = b"# " + name.encode()
            info = tarfile.TarInfo(root + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def test_converter_extraction_is_safe(tmp_path: Path) -> None:
    good = _sdist(tmp_path / "good.tar.gz", [])
    gguf_mod._extract_converter(good, tmp_path / "out")
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    dotdot = tarfile.TarInfo(root + "conversion/../../../../evil.py")
    dotdot.size = 1
    link = tarfile.TarInfo(root + "conversion/link.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad, why in ((dotdot, "unsafe path"), (link, "not a regular file")):
        with pytest.raises(GGUFError, match=why):
            gguf_mod._extract_converter(_sdist(tmp_path / "bad.tar.gz", [bad]), tmp_path / "bad")
    assert not (tmp_path.parent / "evil.py").exists()


def test_converter_is_fetched_for_the_installed_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """One converter per machine, for the llama-cpp-python this venv runs (not under the per-test cache)."""
    import llama_cpp

    monkeypatch.delenv(gguf_mod.CONVERTER_ENV, raising=False)
    d = gguf_mod.ensure_converter()
    assert d == Path.home() / ".cache" / "edgedistill" / f"llama.cpp-convert-{llama_cpp.__version__}"
    assert (d / "convert_hf_to_gguf.py").is_file() and (d / "gguf-py" / "gguf" / "__init__.py").is_file()
    assert gguf_mod.ensure_converter() == d  # idempotent: the second call finds it
    monkeypatch.setenv(gguf_mod.CONVERTER_ENV, "/nonexistent")
    with pytest.raises(GGUFError, match="no convert_hf_to_gguf.py there"):
        gguf_mod.ensure_converter()


def test_the_kv_cache_follows_the_file(ggufs: dict[str, Path]) -> None:
    """An all-F32 GGUF is the full-precision reference and gets an F32 KV cache (held to the fp32 bound on every
    device); quantised and F16 files keep llama.cpp's F16 default; an explicit choice wins."""
    kv = {v: LlamaCppSession(p, threads=1).describe()["kv_cache"] for v, p in ggufs.items()}
    assert kv == {"f32": "f32", "f16": "f16", "q8_0": "f16", "q4_k_m": "f16"}
    assert LlamaCppSession(ggufs["f32"], threads=1, kv_f32=False).describe()["kv_cache"] == "f16"
