"""LLM recipes validate (built-ins, one-line errors) and `plan` matches hand arithmetic for Llama-3 70B → 1B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgedistill.toolchain.llm.data import read_jsonl, split
from edgedistill.toolchain.llm.plan import Shape, plan
from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs, key_fields
from edgedistill.toolchain.recipe import RecipeError, builtin_names, load_recipe
from edgedistill.toolchain.vision.recipe import VisionRecipe

LLAMA_70B = {"vocab_size": 128256, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False}
LLAMA_1B = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True}


def test_builtin_llm_recipes_validate() -> None:
    assert {"tiny-llama", "llama-70b-to-1b"} <= set(builtin_names())
    big = load_recipe("llama-70b-to-1b")
    assert isinstance(big, LLMRecipe) and big.teacher.path == Path("/models/Llama-3.3-70B-Instruct")
    assert big.distill.mode == "offline" and big.distill.parallel == "fsdp" and big.distill.top_k == 8
    tiny = load_recipe("tiny-llama")
    assert tiny.student.arch.hidden_size % 256 == 0 and tiny.teacher.arch.intermediate_size % 256 == 0
    assert isinstance(load_recipe("vit-to-mobilenet"), VisionRecipe)  # no kind: vision


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r["distill"].update(top_k=None), "my.yaml: distill.top_k: required for offline mode"),
    (lambda r: r["distill"]["losses"][0].update(divergence="kl"), "my.yaml: distill.losses.0.divergence: Input"),
    (lambda r: r["blackbox"]["endpoint"].update(prompt_template="no slot"),
     "my.yaml: blackbox.endpoint.prompt_template: must contain {prompt}"),
    (lambda r: r.update(kind="llm", extra=1), "my.yaml: extra: unknown key"),
])
def test_llm_recipe_errors_name_file_and_field(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    from importlib import resources

    r = yaml.safe_load(resources.files("edgedistill.toolchain.recipes").joinpath("tiny-llama.yaml").read_text())
    mutate(r)
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(r))
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    assert str(err.value).replace(f"{tmp_path}/", "").startswith(expected), str(err.value)


def test_plan_70b_to_1b_by_hand(tmp_path: Path) -> None:
    for name, cfg in (("t", LLAMA_70B), ("s", LLAMA_1B)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    t, s = Shape.from_dir(tmp_path / "t"), Shape.from_dir(tmp_path / "s")
    # 70B: embed + head 2 × 128256·8192; per layer 2·8192² + 2·8192·1024 + 3·8192·28672 + 2·8192; final norm
    layer = 2 * 8192**2 + 2 * 8192 * 8 * 128 + 3 * 8192 * 28672 + 2 * 8192
    assert layer == 855_654_400
    assert t.params() == 2 * 128256 * 8192 + 80 * layer + 8192 == 70_553_706_496
    # 1B (tied head): 128256·2048 + 16 × (2·2048² + 2·2048·512 + 3·2048·8192 + 2·2048) + 2048
    assert s.params() == 128256 * 2048 + 16 * (2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 4096) + 2048
    assert s.params() == 1_235_814_400
    p = plan(t, s, gpu_memory_gb=80, teacher_dtype="bfloat16", cache_tokens=100_000_000, top_k=8)
    assert p.teacher_bytes["bfloat16"] == 141_107_412_992
    assert p.teacher_gpus == 3  # 141.1 GB × 1.2 = 169.3 GB → ⌈2.12⌉
    assert p.student_train_gpus == 1  # 1.236 B × 16 B × 1.2 = 23.7 GB
    assert p.cache_bytes == 100_000_000 * 8 * (2 + 4)  # fp16 value + int32 id (vocab > 65,536): 4.8 GB
    assert plan(t, s, 40, "int8", 1, 8).teacher_gpus == 3  # 70.55 GB × 1.2 / 40 → ⌈2.12⌉
    # GPU-hours by hand: teacher 2 FLOPs/param/token over the cache; student 6/param + 2/head param per token
    g = plan(t, s, 80, "bfloat16", 100_000_000, 8, train_tokens=20_000 * 64 * 4096, gpu_tflops=1000, mfu=0.5)
    rate = 1000e12 * 0.5 * 3600
    assert g.teacher_pass_gpu_hours == pytest.approx(2 * 70_553_706_496 * 1e8 / rate)  # ≈ 7.8 GPU-hours
    assert g.student_train_gpu_hours == pytest.approx((6 * 1_235_814_400 + 2 * 128256 * 2048) * 5_242_880_000 / rate)


def test_generator_is_seeded_and_jsonl_loader(tmp_path: Path) -> None:
    a, b = generate_legal_briefs(20, 3), generate_legal_briefs(20, 3)
    assert a == b and a != generate_legal_briefs(20, 4)
    f = key_fields(a[0].output)
    assert all(f.values()) and f["date"][4] == "-"
    s = split(a, 0.1, 0.1, 0)
    assert len(s.train) + len(s.val) + len(s.test) == 20 and s.split_hash == split(b, 0.1, 0.1, 0).split_hash
    p = tmp_path / "d.jsonl"
    p.write_text('{"input": "i", "output": "o"}\n{"text": "plain"}\n')
    ex = read_jsonl(p, "Q: {input}\nA:")
    assert ex[0].prompt == "Q: i\nA:" and ex[1].prompt == "" and ex[1].completion == "plain"
    assert a[0].prompt.startswith("Brief: ")  # the legal-brief task's own template
    p.write_text('{"input": 1}\n')
    with pytest.raises(ValueError, match=r"d.jsonl: line 1: expected string fields"):
        read_jsonl(p)
