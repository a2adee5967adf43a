"""`edgedistill run` on a shrunken tiny-llama recipe end to end, and its artifacts through the device matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgedistill.core.tolerances import DEVICE_INT8_MIN_TOP1, FP32_MAX_ABS_DIFF
from tests.test_cli import cli, cli_here

#: fp32 artifacts (F32 GGUF, fp32 ONNX) on another device vs the host run, largest absolute logit difference
FP32_DEVICE_PARITY = FP32_MAX_ABS_DIFF
#: a quantised GGUF on emulated Arm vs on the host, both against the PyTorch student: Arm's NEON and x86's AVX
#: kernels quantise activations and sum in different orders, so their logits differ slightly (random-weight Llama-3
#: shape, Q4_K_M: max |Δ| 0.05 between the two); KLD at most twice the host's (or this floor), top-1 agreement
#: within this many points of the host's
QUANT_KLD_SLACK = 0.01
QUANT_TOP1_SLACK = 0.03


def _small_llm_recipe() -> dict:
    """tiny-llama shrunk to a couple of minutes on 2 cores (models barely trained: the plumbing is under test)."""
    arch = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256}
    return {
        "kind": "llm", "name": "tiny-llama-small",
        "data": {"kind": "legal-briefs", "n_examples": 200, "val_fraction": 0.1, "test_fraction": 0.1,
                 "max_length": 160},
        "tokenizer": {"kind": "train-bpe", "vocab_size": 512},
        "teacher": {"arch": {**arch, "num_hidden_layers": 2},
                    "train": {"steps": 10, "batch_size": 8, "lr": 0.003, "warmup_steps": 2}},
        "student": {"arch": {**arch, "num_hidden_layers": 1}},
        "distill": {"top_k": 8, "losses": [{"name": "kd-fkl", "divergence": "forward_kl"}],
                    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1}},
        "blackbox": {"endpoint": {"max_tokens": 12, "concurrency": 2}, "max_prompts": 8,
                     "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1}},
        "export": {"gguf": ["f32", "q8_0", "q4_k_m"], "onnx": ["fp32", "int8_dynamic"], "fidelity_samples": 3},
        "bench": {"pp_tokens": 16, "tg_tokens": 8, "repetitions": 1, "eval_samples": 3, "max_new_tokens": 12,
                  "warmup": 2, "runs": 6, "device_eval_samples": 2},
    }


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("llm")
    recipe, out = d / "llm.yaml", d / "run"
    recipe.write_text(yaml.safe_dump(_small_llm_recipe()))
    res = cli("run", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_llm_recipe_runs_end_to_end(llm_run: Path) -> None:
    """Teacher, KD + SFT students, GGUFs and ONNX files with fidelity, every model through the benchmark agent
    (the task score from its own generations), report; a re-run skips every stage."""
    report = json.loads((llm_run / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "baseline-student", "kd-fkl-student", "sft-student", "student-f32", "student-q8_0",
                     "student-q4_k_m", "student-onnx-fp32", "student-onnx-int8_dynamic", "teacher-f32"]
    rows = {m["name"]: m for m in report["models"]}
    for m in report["models"]:
        assert m["bench_error"] is None, m["bench_error"]
        assert 0 <= m["task_score"] <= 1 and 0 <= m["rouge_l"] <= 1 and 0 <= m["exact_match"] <= 1
        assert m["pp_tps"] > 0 and m["tg_tps"] > 0 and m["ttft_ms"] > 0 and m["peak_rss_mb"] > 0
        assert m["latency_ms"]["1"]["p50"] > 0 and m["speedup"]["1"] > 0
        assert m["size_bytes"] > 0 and m["perplexity"] > 1
        assert m["per_example"] and len(m["per_example"]) == 3  # the gate's paired bootstrap needs them
    for m in report["models"][1:]:  # students vs the teacher, artifacts vs their PyTorch student
        assert 0 <= m["same_top_token"] <= 1 and m["kld"] >= 0
    artifacts = [m for m in report["models"] if m["kind"] == "artifact"]
    assert [m["name"] for m in artifacts] == names[4:-1]
    assert rows["student-f32"]["same_top_token"] == 1.0  # F32 GGUF: the PyTorch student's own top tokens
    onnx_fp32 = rows["student-onnx-fp32"]
    assert onnx_fp32["max_abs_diff"] < FP32_MAX_ABS_DIFF and onnx_fp32["runtime"]["runtime"] == "onnxruntime"
    assert rows["teacher"]["runtime"]["runtime"] == "pytorch"  # the teacher, measured by the same agent
    assert report["summary"]["recommended"] in names[4:-1] or report["summary"]["recommended"] is None
    # the honest split of the speed-up: distillation's share is the student's F32 GGUF vs the teacher's (same
    # runtime and precision); the runtime's and quantisation's is the PyTorch student vs each file
    teacher_file = rows["teacher-f32"]
    assert teacher_file["kind"] == "teacher-artifact" and teacher_file["same_top_token"] == 1.0
    assert "teacher-f32" not in report["per_device"]["keeps"]
    q4 = rows["student-q4_k_m"]
    assert q4["distill_speedup"]["1"] == pytest.approx(rows["student-f32"]["tg_tps"] / teacher_file["tg_tps"])
    assert q4["runtime_speedup"]["1"] == pytest.approx(q4["tg_tps"] / rows[f"{q4['source']}-student"]["tg_tps"])
    assert rows["student-onnx-fp32"]["distill_speedup"] == {}  # no ONNX teacher: not claimed
    assert (rows["student-q4_k_m"]["size_bytes"] < rows["student-q8_0"]["size_bytes"]
            < rows["student-f32"]["size_bytes"])
    # the shipped student has the best validation task score of all three, the CE-only baseline included
    val = {n: rows[f"{n}-student"]["val_task_score"] for n in ("baseline", "kd-fkl", "sft")}
    assert report["summary"]["best_student"] in val and val[report["summary"]["best_student"]] == max(val.values())
    assert report["blackbox"]["collected"] == 8  # served the teacher's GGUF on 127.0.0.1 and collected every prompt
    assert report["distill"]["cache"]["bytes_per_token"] < 300
    assert "| teacher |" in (llm_run / "report.md").read_text()
    again = cli("run", str(llm_run / "recipe.yaml"), "--out", str(llm_run))
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("data", "teacher", "distill", "blackbox", "export", "bench"):
        assert f"{stage}: unchanged, skipped" in again.stderr


@pytest.mark.slow
def test_llm_artifacts_on_the_device_matrix(llm_run: Path, qemu_rootfs: Path) -> None:
    """GGUF and ONNX files on a 1-core capped host, under qemu-arm64 and as roofline estimates: per-token figures
    labelled, logits compared with the host and the source. Under qemu the GGUFs run on llama.cpp cross-built for
    the Pi 4's Cortex-A72 from the host runtime's own sdist: the same tokens as the host on the test prompts, F32
    logits within the fp32 bound of the PyTorch student's, Q4_K_M's divergence from it as small as the host's."""
    constrained = "rpi4-constrained?cores=1&ram_mb=2048"
    teacher_bench = (llm_run / "bench" / "teacher-t1.json").stat().st_mtime_ns
    res = cli("bench", "--out", str(llm_run), "--devices", f"{constrained},rpi4-estimated,qemu-arm64,qemu-arm64:rpi5")
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((llm_run / "report.json").read_text())
    rows = {(d["device"], d["model"]): d for d in rep["devices"]}
    for model in ("student-f32", "student-q8_0", "student-onnx-fp32", "student-onnx-int8_dynamic"):
        row = rows[(constrained, model)]
        assert row["error"] is None and row["p50_ms"] > 0 and row["applied"]["cores_applied"] == 1
        assert row["accuracy"] == rows[("host", model)]["accuracy"]
        assert 0 <= row["task_score"] <= 1  # scored from the generations the agent made on that device
    for model in ("student-f32", "student-onnx-fp32"):
        assert rows[(constrained, model)]["parity_vs_host"]["max_abs_diff"] <= FP32_DEVICE_PARITY
    emu = rows[("qemu-arm64", "student-onnx-fp32")]
    assert emu["error"] is None and emu["label"] == "emulated" and 0 <= emu["task_score"] <= 1
    assert emu["parity_vs_host"]["max_abs_diff"] <= FP32_DEVICE_PARITY and emu["parity_vs_host"]["n"] > 100
    # int8 kernels under qemu's default 'max' CPU gave wrong logits; the rpi4 profile emulates a Cortex-A72
    emu8 = rows[("qemu-arm64", "student-onnx-int8_dynamic")]
    assert emu8["error"] is None and emu8["parity_vs_host"]["top1_agreement"] >= DEVICE_INT8_MIN_TOP1
    assert rows[("host", "teacher")]["parity_vs_source"] is None  # another model than the source: not compared
    for device in ("qemu-arm64", "qemu-arm64:rpi5"):  # Armv8.0 (A72) and Armv8.2 + dot product (A76) builds
        for model in ("student-f32", "student-q8_0", "student-q4_k_m"):
            row = rows[(device, model)]
            assert row["error"] is None, row["error"]
            assert row["label"] == "emulated" and 0 <= row["task_score"] <= 1
            tokens = row["tokens_vs_host"]
            assert tokens["texts"] >= 2 and tokens["identical"] == tokens["texts"], (device, tokens)
        f32 = rows[(device, "student-f32")]
        assert f32["parity_vs_source"]["fp32_ok"] and f32["parity_vs_source"]["n"] > 100, f32["parity_vs_source"]
        assert f32["parity_vs_host"]["max_abs_diff"] <= FP32_DEVICE_PARITY
        for model in ("student-q8_0", "student-q4_k_m"):  # quantised: judged by divergence from the source
            emu, host = rows[(device, model)]["parity_vs_source"], rows[("host", model)]["parity_vs_source"]
            assert emu["kld"] <= max(2 * host["kld"], QUANT_KLD_SLACK), (device, model, emu, host)
            assert emu["top1_agreement"] >= host["top1_agreement"] - QUANT_TOP1_SLACK, (device, model, emu, host)
    # one measure: the device parity scores the completion positions of the export's fidelity sequences, so the
    # host's figure is the export's own (up to the agent's F16 KV cache vs the export check's F32 one)
    exported = {a["name"]: a["fidelity"] for a in json.loads((llm_run / "export" / "artifacts.json").read_text())
                ["artifacts"]}
    for model in ("student-q8_0", "student-q4_k_m"):
        host, fid = rows[("host", model)]["parity_vs_source"], exported[model]
        assert host["n"] == fid["n_tokens"], (model, host, fid)
        assert abs(host["kld"] - fid["kld_mean"]) <= 0.25 * fid["kld_mean"] + 1e-6, (model, host, fid)
    builds = {rep_dev["spec"]: rep_dev for rep_dev in json.loads((llm_run / "bench" / "results.json").read_text())
              ["devices"].values()}
    gguf_docs = {d: next(iter(builds[d]["results"]["student-q4_k_m"]["runs"].values())) for d in
                 ("qemu-arm64", "qemu-arm64:rpi5")}
    assert {d: doc["llama_cpp_build"]["arch"] for d, doc in gguf_docs.items()} == {
        "qemu-arm64": "armv8-a", "qemu-arm64:rpi5": "armv8.2-a+dotprod"}
    assert rows[("rpi4-estimated", "student-q4_k_m")]["p50_ms"] > 0
    assert "estimates need" in rows[("rpi4-estimated", "student-onnx-fp32")]["error"]
    md = (llm_run / "report.md").read_text()
    assert "## Devices" in md and "p50 ms/token" in md and "| qemu-arm64 | emulated | student-onnx-fp32 |" in md
    # adding devices re-measured nothing the run had already measured in fresh processes
    assert (llm_run / "bench" / "teacher-t1.json").stat().st_mtime_ns == teacher_bench


@pytest.mark.slow
def test_export_auto_on_an_llm_run(llm_run: Path) -> None:
    """`export --auto` on the LLM run (~30 s): every GGUF and ONNX file is a candidate with its figures and reason,
    measured on the host as the bench stage measured it (reused, not re-run), and the report ships the choice. (These
    students are barely trained, so whether one qualifies is not the point: tests/test_auto_select.py is.)"""
    bench = llm_run / "bench"
    before = {p.name: p.stat().st_mtime_ns for p in bench.glob("student-*-t1.json")}
    res = cli_here("export", "--out", str(llm_run), "--auto", "--min-retention", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "export: unchanged, skipped" in res.stderr and "export --auto on host" in res.stdout
    decision = json.loads((llm_run / "export" / "auto.json").read_text())
    listing = json.loads((llm_run / "export" / "artifacts.json").read_text())
    assert [c["name"] for c in decision["candidates"]] == [a["name"] for a in listing["artifacts"]]
    assert decision["metric"].startswith("p50 latency per generated token")
    for c in decision["candidates"]:
        assert c["reason"] and c["p50_ms"] > 0 and c["file"] and c["sha256"]
        assert c["status"] == "rejected" or c["retention"] >= 0.5
    assert {p.name: p.stat().st_mtime_ns for p in bench.glob("student-*-t1.json")} == before
    assert cli_here("report", "--out", str(llm_run)).returncode == 0
    report = json.loads((llm_run / "report.json").read_text())
    assert report["summary"]["recommended"] == decision["chosen"] and report["auto"] == decision
    assert "## export --auto" in (llm_run / "report.md").read_text()


@pytest.mark.slow
def test_a_gguf_that_aborts_llama_cpp_keeps_the_rest_of_the_run(llm_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GGUF of a run (the F32 reference and the teacher's too) gets a vocabulary that aborts llama.cpp:
    `export` moves them to rejected/ and exits 2 in one line; `run` then benches and reports the ONNX files, and
    exits 2 with the same line, because the export stage recorded it."""
    import shutil

    from tests.test_llm_gguf_crash import break_every_converted_gguf

    run = tmp_path / "run"
    shutil.copytree(llm_run, run)
    break_every_converted_gguf(monkeypatch)
    res = cli_here("export", "--out", str(run), "--force")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "student-f32 rejected" in errors[0], res.stderr[-2000:]
    listing = json.loads((run / "export" / "artifacts.json").read_text())
    assert {a["format"] for a in listing["artifacts"]} == {"onnx"}, listing["artifacts"]
    assert {"student-f32", "student-q8_0", "student-q4_k_m"} <= set(listing["rejected"])
    res = cli_here("run", str(llm_run.parent / "llm.yaml"), "--out", str(run))
    assert res.returncode == 2 and "student-f32 rejected" in res.stderr.splitlines()[-1], res.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    names = [m["name"] for m in report["models"] if m["kind"] == "artifact"]
    assert names == ["student-onnx-fp32", "student-onnx-int8_dynamic"], names
    assert all(m["bench_error"] is None for m in report["models"] if m["kind"] == "artifact")
    assert set(report["provenance"]["rejected"]) == set(listing["rejected"])
    assert "Rejected (never benched): student-f32" in (run / "report.md").read_text()
