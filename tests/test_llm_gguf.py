"""HF Llama → GGUF → llama.cpp: F32 parity with PyTorch, llama.cpp's quantiser, fidelity like its perplexity tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedistill.runtimes.base import open_session, runtime_for
from edgedistill.toolchain.llm.fidelity import GGUF_F32_MAX_ABS_DIFF, Q8_MIN_SAME_TOP, fidelity, torch_logits
from edgedistill.toolchain.llm.gguf_export import permute_qk, quantize, tensor_types, write_gguf
from edgedistill.toolchain.llm.tokenizer import encode
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


def test_permute_qk_interleaves_rotary_halves() -> None:
    w = np.arange(8, dtype=np.float32).reshape(8, 1)  # one head, head_dim 8: halves [0..3] [4..7]
    assert permute_qk(w, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.fixture(scope="module")
def ggufs(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    d = tmp_path_factory.mktemp("gguf")
    out = {v: write_gguf(tiny_lm.dir, d / f"m-{v}.gguf", v) for v in ("f32", "f16")}
    for v in ("q8_0", "q4_k_m"):
        out[v] = quantize(out["f32"], d / f"m-{v}.gguf", v)
    return out


def _ids(tiny_lm: TinyLM, n: int = 6) -> list[list[int]]:  # noqa: F811
    return [encode(tiny_lm.tok, e.prompt, e.completion, 160).input_ids for e in tiny_lm.test[:n]]


def test_f32_gguf_matches_pytorch(tiny_lm: TinyLM, ggufs: dict[str, Path]) -> None:  # noqa: F811
    assert runtime_for(ggufs["f32"]) == "llama.cpp"
    sess = open_session("llama.cpp", ggufs["f32"], threads=2)
    sess_f32kv = type(sess)(ggufs["f32"], threads=2, kv_f32=True)
    text = tiny_lm.test[0].prompt
    ids = [tiny_lm.tok.bos_token_id, *tiny_lm.tok.encode(text, add_special_tokens=False)]
    assert sess_f32kv.tokenize(text) == ids  # llama.cpp tokenises exactly like `tokenizers`
    seqs = _ids(tiny_lm)
    fid = fidelity(seqs, torch_logits(tiny_lm.model, seqs), [sess_f32kv.logits(s) for s in seqs])
    assert fid.max_abs_diff <= GGUF_F32_MAX_ABS_DIFF, fid
    assert fid.same_top_token == 1.0
    sess.close()
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
