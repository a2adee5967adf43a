"""HF Llama → GGUF → llama.cpp: F32 parity with PyTorch, llama.cpp's quantiser, fidelity like its perplexity tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedistill.runtimes.base import open_session, runtime_for
from edgedistill.toolchain.llm.export.fidelity import GGUF_F32_MAX_ABS_DIFF, Q8_MIN_SAME_TOP, fidelity, torch_logits
from edgedistill.toolchain.llm.export.gguf import permute_qk, quantize, tensor_types, write_gguf
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
