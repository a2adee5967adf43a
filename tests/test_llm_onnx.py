"""ONNX with a KV cache through optimum, run by the numpy-only ONNX Runtime adapter: parity with PyTorch."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.runtimes.base import RuntimeError_
from edgedistill.runtimes.ort_llm import OrtLLMSession
from edgedistill.toolchain.llm.bench import measure
from edgedistill.toolchain.llm.data import write_jsonl
from edgedistill.toolchain.llm.fidelity import fidelity, torch_logits
from edgedistill.toolchain.llm.onnx_export import ONNXExportError, export_onnx, quantize_onnx
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

#: fp32 ONNX vs PyTorch, largest absolute logit difference (measured ~1e-6)
ONNX_FP32_MAX_ABS_DIFF = 1e-4
#: dynamic-int8 ONNX: least same-top-token rate vs the PyTorch student
ONNX_INT8_MIN_SAME_TOP = 0.90


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


def test_agent_measures_an_onnx_decoder(tiny_lm: TinyLM, onnx_files: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [asdict(e) for e in tiny_lm.test[:2]])
    doc = measure(onnx_files["fp32"], tiny_lm.dir, test, threads=1, pp=16, tg=8, reps=1, eval_samples=2,
                  max_new_tokens=8, max_length=160)
    assert doc["runtime"]["runtime"] == "onnxruntime" and doc["n"] == 2
    assert doc["tg_tps"] > 0 and doc["pp_tps"] > 0 and doc["ttft_ms"] > 0 and 0 <= doc["task_score"] <= 1


def test_bad_inputs_are_named(tmp_path: Path, onnx_files: dict[str, Path]) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(onnx_files["fp32"].read_bytes()[:1000])
    with pytest.raises(RuntimeError_, match="model.onnx: onnxruntime cannot load it"):
        OrtLLMSession(broken)
    with pytest.raises(ONNXExportError, match="missing"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_device_tokenizer_matches_transformers(tiny_lm: TinyLM) -> None:  # noqa: F811
    """The ONNX agent tokenises with `tokenizers` alone (no torch/transformers on a device): same ids, same text."""
    from edgedistill.toolchain.llm.bench import _plain_tokenizer
    from edgedistill.toolchain.llm.tokenizer import encode

    enc, dec, eos = _plain_tokenizer(tiny_lm.dir, 160)
    assert eos == tiny_lm.tok.eos_token_id
    for e in tiny_lm.test[:10]:
        assert enc(e.prompt) == encode(tiny_lm.tok, e.prompt, None, 160).input_ids
        ids = encode(tiny_lm.tok, e.prompt, e.completion, 160).input_ids
        assert dec(ids) == tiny_lm.tok.decode(ids, skip_special_tokens=True)
