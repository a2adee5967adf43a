"""What the LLM kind adds to the generic CLI (:mod:`edgedistill.toolchain.cli`): ``export --hf`` (any local
Hugging Face causal-LM folder), the table of exported artifacts, and the ``plan`` and ``collect`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.toolchain.llm.recipe import LLMRecipe

#: ``export --hf``'s formats when --formats is not given
HF_FORMATS = "gguf:f32,gguf:q8_0,gguf:q4_k_m,onnx:fp32"


def export_hf(folder: Path, formats: str | None, out: Path, log: Any) -> list[dict[str, Any]]:
    """``edgedistill export --hf``: export ``folder`` into ``out`` and check each file against it."""
    from edgedistill.toolchain.llm.export.artifacts import export_folder

    return export_folder(folder, formats or HF_FORMATS, out, log=log)


def artifact_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The exported artifacts as a table: header and rows (rich markup)."""
    body = []
    for a in records:
        f = a["fidelity"]
        body.append([a["file"], a["variant"], f"{f['tokens_identical']:.2f}",
                     f"{f['long_max_abs_diff']:.1e} ({f['long_positions']})", f"{f['kld_mean']:.2e}",
                     f"{f['same_top_token']:.3f}", "ok" if f["ok"] else f"[red]fails {f['criterion']}[/red]"])
    return ["artifact", "variant", "tokens identical", "max |Δ| (positions)", "KLD", "same-top", "parity"], body


def failed_artifacts(records: list[dict[str, Any]]) -> list[str]:
    """The exported files that failed their parity contract."""
    return [a["name"] for a in records if not a["fidelity"]["ok"]]


def plan(r: LLMRecipe, ref: str) -> str:
    """``edgedistill plan``: the recipe's resource estimate, as text."""
    from edgedistill.toolchain.llm.plan import Shape, format_plan
    from edgedistill.toolchain.llm.plan import plan as make_plan

    if r.teacher.path is None:
        raise ValueError(f"{ref}: teacher.path: plan needs a local teacher checkpoint (its config.json)")
    t = Shape.from_dir(r.teacher.path)
    if r.student.path is not None:
        s = Shape.from_dir(r.student.path)
    else:
        a = r.student.arch
        s = Shape(t.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers, a.num_attention_heads,
                  a.num_key_value_heads, a.tie_word_embeddings)
    tokens = r.distill.train.steps * r.distill.train.batch_size * r.data.max_length
    return format_plan(make_plan(t, s, r.plan.gpu_memory_gb, r.plan.teacher_dtype, r.plan.cache_tokens,
                                 r.distill.top_k or 0, tokens, r.plan.gpu_tflops, r.plan.mfu))


def collect(r: LLMRecipe, prompts: Path, out: Path, base_url: str | None, say: Any) -> None:
    """``edgedistill collect``: send ``prompts`` to the recipe's endpoint, journalled in ``out``, and ``say`` the
    summary line; any prompt left unanswered is then a :class:`CollectError` naming the endpoint and the reasons."""
    from edgedistill.toolchain.llm.distill.collect import CollectError, failure_summary, read_prompts
    from edgedistill.toolchain.llm.distill.collect import collect as run_collect

    st = run_collect(read_prompts(prompts), out, r.blackbox.endpoint, base_url)
    say(f"{st.ok} collected, {st.failed} failed, {st.skipped} already done, {st.retries} retries "
        f"in {st.seconds:.1f} s → {out}")
    if st.failed:
        raise CollectError(failure_summary(st, base_url or r.blackbox.endpoint.base_url or "?", out))
