"""Bring your own: the README's recipe with your own Llama-3-shaped teacher and student folders (bf16, sharded, rope
scaling, GQA, tied embeddings, Llama 3's pre-tokenizer), a JSONL data set and a named scorer, run end to end by
`edgedistill run`; its GGUF and ONNX reproduce the student's tokens and logits. And `export --hf` on one folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from tests.llm_families import build_checkpoint
from tests.test_cli import cli


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("byo")
    teacher = build_checkpoint("llama3", d / "teacher", seed=0, layers=2)
    build_checkpoint("llama3", d / "student", seed=1, layers=1, tokenizer_from=teacher.dir)
    rng = random.Random(0)
    with open(d / "math.jsonl", "w") as f:
        for i in range(80):
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            f.write(json.dumps({"id": f"q{i}", "input": f"What is {a} plus {b}?",
                                "output": f"{a} + {b} = {a + b}. #### {a + b}"}) + "\n")
    recipe = {
        "kind": "llm", "name": "my-llama",
        "data": {"kind": "jsonl", "path": "math.jsonl", "prompt_template": "Question: {input}\nAnswer:",
                 "max_length": 64, "val_fraction": 0.1, "test_fraction": 0.1, "score": {"name": "regex"}},
        "tokenizer": {"kind": "local", "path": "teacher"},
        "teacher": {"path": "teacher"},
        "student": {"path": "student", "selection_samples": 2},
        "distill": {"top_k": 8, "losses": [{"name": "kd", "divergence": "forward_kl"}],
                    "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1}},
        "blackbox": {"enabled": False},
        "export": {"gguf": ["f32", "q8_0"], "onnx": ["fp32"], "fidelity_samples": 2, "teacher": []},
        "bench": {"pp_tokens": 8, "tg_tokens": 4, "repetitions": 1, "eval_samples": 2, "max_new_tokens": 8,
                  "warmup": 1, "runs": 3},
    }
    (d / "my.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return d


@pytest.mark.slow
def test_your_own_llama3_folders_end_to_end(byo: Path) -> None:
    res = cli("run", str(byo / "my.yaml"), "--out", str(byo / "run"))
    assert res.returncode == 0, res.stderr[-3000:]
    listing = json.loads((byo / "run" / "export" / "artifacts.json").read_text())
    by = {a["name"]: a for a in listing["artifacts"]}
    f32, onnx = by["student-f32"]["fidelity"], by["student-onnx-fp32"]["fidelity"]
    assert by["student-f32"]["pre_tokenizer"] == "llama-bpe"  # identified from Llama 3's regex
    assert f32["ok"] and f32["tokens_identical"] == 1.0 and f32["long_positions"] >= 512, f32
    assert onnx["ok"] and onnx["long_positions"] >= 512, onnx
    rep = json.loads((byo / "run" / "report.json").read_text())
    assert [m["name"] for m in rep["models"]][:3] == ["teacher", "baseline-student", "kd-student"]
    assert all(m["task_score"] is not None and 0 <= m["task_score"] <= 1 for m in rep["models"])


@pytest.mark.slow
def test_export_one_folder_without_a_run(byo: Path) -> None:
    out = byo / "just-export"
    res = cli("export", "--hf", str(byo / "student"), "--formats", "gguf:f32,gguf:q4_0,onnx:fp32", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    listing = json.loads((out / "artifacts.json").read_text())
    assert [a["variant"] for a in listing["artifacts"]] == ["f32", "q4_0", "fp32"]
    assert all(a["fidelity"]["ok"] for a in listing["artifacts"]), listing
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["stages"]["export"]["outputs"]) >= 4
    bad = cli("export", "--hf", str(byo / "student"), "--formats", "gguf:q3_k", "--out", str(out))
    assert bad.returncode == 2 and "--formats: 'gguf:q3_k' is not FORMAT[:VARIANT]" in bad.stderr
