"""The LLM recipe schema (``kind: llm``): typed sections with their defaults here, in one place.

It reuses :mod:`edgedistill.toolchain.recipe`'s conventions: ``_Section`` (unknown keys are errors) and one-line
:class:`RecipeError` messages ``FILE: FIELD: what was expected``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from edgedistill.toolchain.recipe import Fraction, RecipeError, _one_line, _Section

GGUFVariant = Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
ONNXVariant = Literal["fp32", "int8_dynamic"]


class LLMDataConfig(_Section):
    """``legal-briefs``: the built-in generated task; ``jsonl``: a file of ``{"input","output"}`` or ``{"text"}``."""

    kind: Literal["legal-briefs", "jsonl"] = "legal-briefs"
    path: Path | None = Field(None, description="jsonl: one .jsonl file, or a folder with train/val/test.jsonl")
    n_examples: int = Field(3000, ge=10, description="legal-briefs: cases to generate")
    val_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05
    max_length: int = Field(320, ge=16, description="tokens per example (prompt + completion), longer are cut")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> LLMDataConfig:
        if self.kind == "jsonl" and self.path is None:
            raise ValueError("path: required when kind is 'jsonl'")
        return self


class TokenizerConfig(_Section):
    """``train-bpe``: a ByteLevel BPE trained on the training split; ``local``: a HF tokenizer directory."""

    kind: Literal["train-bpe", "local"] = "train-bpe"
    path: Path | None = None
    vocab_size: int = Field(1024, ge=300)

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        if self.kind == "local" and self.path is None:
            raise ValueError("path: required when kind is 'local' (a local Hugging Face tokenizer directory)")
        return self


class LlamaArch(_Section):
    """A LlamaConfig's shape. Keep hidden/intermediate sizes multiples of 256 so llama.cpp K-quants apply."""

    hidden_size: int = Field(256, ge=8)
    intermediate_size: int = Field(768, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(512, ge=16)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _check(self) -> LlamaArch:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size: must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_key_value_heads: must divide num_attention_heads")
        return self


class LMTrainConfig(_Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    dtype: Literal["float32", "bfloat16"] = "float32"


class LLMTeacherConfig(_Section):
    path: Path | None = Field(None, description="a local HF Llama checkpoint directory; null: train one here")
    arch: LlamaArch = LlamaArch()
    train: LMTrainConfig = LMTrainConfig()


class LLMStudentConfig(_Section):
    path: Path | None = Field(None, description="a local HF Llama directory to start from (e.g. Llama-3.2-1B)")
    arch: LlamaArch = LlamaArch(intermediate_size=512, num_hidden_layers=2)
    init: Literal["random", "teacher-layers"] = Field(
        "teacher-layers", description="teacher-layers: copy embeddings, head and every other block (DistilBERT)")
    selection_samples: int = Field(
        32, ge=1, description="validation examples summarised greedily to pick the best student (its task score)")


class KDLossConfig(_Section):
    """One white-box student: ``alpha * T^2 * D(teacher, student) + (1 - alpha) * CE``."""

    name: str = "kd"
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="jsd: 0 = forward KL, 1 = reverse KL (GKD convention)")
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class WhiteBoxConfig(_Section):
    enabled: bool = True
    mode: Literal["offline", "online"] = "offline"
    top_k: int | None = Field(8, ge=1, le=1024, description="offline cache keeps top-k log-probs + remainder mass")
    cache_dir: Path | None = Field(None, description="default: ~/.cache/edgedistill/llm-teacher")
    shard_tokens: int = Field(1 << 20, ge=1, description="tokens per cache shard")
    chunk_tokens: int = Field(512, ge=1, description="loss computed over this many positions at a time")
    losses: list[KDLossConfig] = [KDLossConfig()]
    train: LMTrainConfig = LMTrainConfig()
    parallel: Literal["none", "ddp", "fsdp"] = Field("none", description="ddp/fsdp: under `accelerate launch`")
    num_processes: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> WhiteBoxConfig:
        if self.mode == "offline" and self.top_k is None:
            raise ValueError("top_k: required for offline mode (the cache stores top-k teacher log-probs)")
        names = [loss.name for loss in self.losses]
        if len(set(names)) != len(names):
            raise ValueError(f"losses: names must be unique, got {names}")
        return self


class EndpointConfig(_Section):
    """Any OpenAI-compatible endpoint. ``base_url: null`` serves the teacher's GGUF with llama_cpp.server locally."""

    base_url: str | None = None
    model: str = "teacher"
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    prompt_template: str = "{prompt}"
    max_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0)
    concurrency: int = Field(4, ge=1, le=256)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> EndpointConfig:
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template: must contain {prompt}")
        return self


class BlackBoxConfig(_Section):
    enabled: bool = True
    endpoint: EndpointConfig = EndpointConfig()
    max_prompts: int | None = Field(None, ge=1, description="collect for at most this many training prompts")
    train: LMTrainConfig = LMTrainConfig(lr=2e-3)


class LLMExportConfig(_Section):
    gguf: list[GGUFVariant] = ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
    onnx: list[ONNXVariant] = Field(
        default_factory=list, description="ONNX files with a KV cache, exported through optimum: fp32, int8_dynamic")
    fidelity_samples: int = Field(16, ge=1, description="test examples for perplexity / KLD / same-top-token")


class LLMBenchConfig(_Section):
    pp_tokens: int = Field(64, ge=1, description="prompt-processing length (llama-bench's pp)")
    tg_tokens: int = Field(32, ge=1, description="generation length (llama-bench's tg)")
    repetitions: int = Field(3, ge=1)
    threads: int = Field(1, ge=1)
    eval_samples: int = Field(32, ge=1, description="test examples scored (exact match of key fields + ROUGE-L)")
    max_new_tokens: int = Field(96, ge=1)
    devices: list[str] = Field(
        default_factory=list, description="also run every exported artifact on these device specs (host, "
        "PROFILE-constrained, PROFILE-estimated, qemu-arm64, ssh://...; `edgedistill devices` lists them)")
    device_warmup: int = Field(8, ge=0, description="device matrix: untimed decode steps")
    device_runs: int = Field(64, ge=1, description="device matrix: timed decode steps (one sample per token)")
    profiles: list[Path] = Field(
        default_factory=list, description="extra device profile YAML files or folders (beside the built-ins)")


class PlanConfig(_Section):
    """Inputs of ``edgedistill plan``: the hardware and the teacher-cache size."""

    gpu_memory_gb: float = Field(80.0, gt=0)
    cache_tokens: int = Field(100_000_000, ge=1)
    train_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    teacher_dtype: Literal["float32", "bfloat16", "int8"] = "bfloat16"


class LLMRecipe(_Section):
    kind: Literal["llm"]
    name: str
    description: str = ""
    seed: int = 0
    data: LLMDataConfig = LLMDataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    teacher: LLMTeacherConfig = LLMTeacherConfig()
    student: LLMStudentConfig = LLMStudentConfig()
    distill: WhiteBoxConfig = WhiteBoxConfig()
    blackbox: BlackBoxConfig = BlackBoxConfig()
    export: LLMExportConfig = LLMExportConfig()
    bench: LLMBenchConfig = LLMBenchConfig()
    plan: PlanConfig = PlanConfig()

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump(mode="json")


def parse_llm_recipe(data: dict[str, Any], source: str = "<recipe>") -> LLMRecipe:
    try:
        return LLMRecipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_one_line(source, err)) from None


def resolve_llm_paths(recipe: LLMRecipe, base: Path) -> LLMRecipe:
    """Relative paths in a recipe are relative to the recipe file."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    upd = {
        "data": recipe.data.model_copy(update={"path": fix(recipe.data.path)}),
        "tokenizer": recipe.tokenizer.model_copy(update={"path": fix(recipe.tokenizer.path)}),
        "teacher": recipe.teacher.model_copy(update={"path": fix(recipe.teacher.path)}),
        "student": recipe.student.model_copy(update={"path": fix(recipe.student.path)}),
        "distill": recipe.distill.model_copy(update={"cache_dir": fix(recipe.distill.cache_dir)}),
        "bench": recipe.bench.model_copy(update={"profiles": [fix(x) for x in recipe.bench.profiles]}),
    }
    return recipe.model_copy(update=upd)
