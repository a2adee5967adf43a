"""ONNX with a KV cache through optimum, run by the numpy-only ONNX Runtime adapter: parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.core.tolerances import FP32_MAX_ABS_DIFF as ONNX_FP32_MAX_ABS_DIFF  # measured ~1e-6
from edgedistill.core.tolerances import ONNX_INT8_MIN_SAME_TOP
from edgedistill.runtimes.base import RuntimeError_
from edgedistill.runtimes.ort_llm import OrtLLMSession
from edgedistill.toolchain.llm.export.fidelity import fidelity, torch_logits
from edgedistill.toolchain.llm.export.onnx import ONNXExportError, export_onnx, quantize_onnx
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def onnx_files(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    d = tmp_path_factory.mktemp("llm-onnx")
    fp32 = export_onnx(tiny_lm.dir, d / "fp32")
    return {"fp32": fp32, "int8": quantize_onnx(fp32, d / "int8")}


def _ids(tiny_lm: TinyLM, n: int = 6) -> list[list[int]]:  # noqa: F811
    return [tiny_lm.train[i].input_ids[:96] for i in range(n)]


def test_fp32_onnx_matches_pytorch(tiny_lm: TinyLM, onnx_files: dict[str, Path]) -> None:  # noqa: F811
    ids = _ids(tiny_lm)
    ref = torch_logits(tiny_lm.model, ids)
    sess = OrtLLMSession(onnx_files["fp32"], threads=2)
    fid = fidelity(ids, ref, [sess.logits(s) for s in ids])
    assert fid.max_abs_diff < ONNX_FP32_MAX_ABS_DIFF and fid.same_top_token == 1.0
    # the KV-cache path (prefill, then one token at a time) gives the same logits as one full pass
    seq = ids[0]
    sess.prefill(seq[:10])
    inc = np.stack([sess.decode(t) for t in seq[10:]])
    assert np.abs(inc - ref[0][10:]).max() < ONNX_FP32_MAX_ABS_DIFF


def test_onnx_greedy_generation_matches_transformers(tiny_lm: TinyLM, onnx_files: dict[str, Path]) -> None:  # noqa: F811
    prompt = _ids(tiny_lm, 1)[0][:20]
    sess = OrtLLMSession(onnx_files["fp32"], threads=1)
    got, ttft = sess.generate(prompt, 16)
    with torch.no_grad():
        x = torch.tensor([prompt])
        want = tiny_lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                                      eos_token_id=None, pad_token_id=tiny_lm.tok.pad_token_id)[0, len(prompt):]
    want = want.tolist()
    assert got == want and ttft > 0


def test_int8_onnx_fidelity_and_size(tiny_lm: TinyLM, onnx_files: dict[str, Path]) -> None:  # noqa: F811
    ids = _ids(tiny_lm)
    fid = fidelity(ids, torch_logits(tiny_lm.model, ids),
                   [OrtLLMSession(onnx_files["int8"]).logits(s) for s in ids])
    assert fid.same_top_token >= ONNX_INT8_MIN_SAME_TOP and fid.kld_mean < 0.1
    assert onnx_files["int8"].stat().st_size < 0.5 * onnx_files["fp32"].stat().st_size


def test_agent_generates_with_an_onnx_decoder(tiny_lm: TinyLM, onnx_files: dict[str, Path],  # noqa: F811
                                              tmp_path: Path) -> None:
    """The one benchmark agent's generate mode on an ONNX decoder: the same greedy tokens as the PyTorch model
    from the same prompt ids (the host decodes and scores them), plus per-token timings."""
    from edgedistill.devices.agent import measure, parse_args
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.tokenizer import encode

    prompts = [encode(tiny_lm.tok, e.prompt, None, 160).input_ids for e in tiny_lm.test[:2]]
    seqs = _ids(tiny_lm, 2)
    ev = tmp_path / "eval.npz"
    pad = np.zeros((2, max(map(len, prompts))), dtype=np.int32)
    for i, p in enumerate(prompts):
        pad[i, :len(p)] = p
    sq = np.zeros((2, 96), dtype=np.int32)
    for i, q in enumerate(seqs):
        sq[i, :len(q)] = q
    np.savez(ev, ids=sq, lengths=np.array([len(q) for q in seqs]), prompt_ids=pad,
             prompt_lengths=np.array([len(p) for p in prompts]), eos=np.int32(tiny_lm.tok.eos_token_id))
    doc = measure(parse_args(["--artifact", str(onnx_files["fp32"]), "--runtime", "onnxruntime-llm", "--eval",
                              str(ev), "--score", "--warmup", "1", "--runs", "4", "--pp", "16", "--tg", "8",
                              "--generate", "2", "--max-new-tokens", "8"]))
    ref = TorchLMSession(tiny_lm.dir)
    assert doc["generated"] == [ref.generate(p, 8, tiny_lm.tok.eos_token_id)[0] for p in prompts]
    assert doc["tg_tps"] > 0 and doc["pp_tps"] > 0 and doc["ttft_ms"] > 0 and doc["latency_ms"]["p50"] > 0
    assert 0 <= doc["accuracy"] <= 1 and doc["n_eval"] == sum(len(q) - 1 for q in seqs)


def test_bad_inputs_are_named(tmp_path: Path, onnx_files: dict[str, Path]) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(onnx_files["fp32"].read_bytes()[:1000])
    with pytest.raises(RuntimeError_, match="model.onnx: onnxruntime cannot load it"):
        OrtLLMSession(broken)
    with pytest.raises(ONNXExportError, match="missing"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
