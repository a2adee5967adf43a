"""The LLM recipe schema (``kind: llm``): typed sections with their defaults here, in one place.

Shared conventions (unknown keys are errors, one-line messages, paths relative to the recipe file) come from
:mod:`edgedistill.toolchain.recipe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_serializer, model_validator

from edgedistill.core.urls import has_credentials, redact_url, secret_may_go_to
from edgedistill.toolchain.recipe import AutoExport, Fraction, RecipeBase, SafeName, Section

GGUFVariant = Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
ONNXVariant = Literal["fp32", "int8_dynamic"]


def _generator_names() -> list[str]:
    from edgedistill.toolchain.llm.tasks import GENERATORS, load_tasks

    load_tasks()
    return GENERATORS.names()


class ScoreConfig(Section):
    """How a generated output is scored against its reference: the task score that picks the best student and
    defines retention. ``name`` is a registered scorer (``edgedistill.toolchain.llm.tasks.SCORERS``: legal-briefs,
    exact-match, rouge-l, json-fields, regex) or your own ``package.module:function`` taking
    ``(predictions, references)`` and returning ``{"task_score": float, ...}``; null: the data kind's default."""

    name: str | None = None
    pattern: str | None = Field(None, description="regex: the final answer is the last match's group 1 (or match)")

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        import re

        from edgedistill.toolchain.llm.tasks import SCORERS, USER_SCORER, load_tasks

        load_tasks()
        if self.name is not None and self.name not in SCORERS and not USER_SCORER.match(self.name):
            raise ValueError(f"name: unknown scorer {self.name!r}; choose one of: {', '.join(SCORERS.names())}, or "
                             "give your own as package.module:function")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern: not a regular expression ({err})") from None
        return self
    fields: list[str] | None = Field(None, description="json-fields: the keys compared (default: the reference's)")


class LLMDataConfig(Section):
    """``legal-briefs``: the built-in generated task; ``wordnet``: real WordNet definitions (the word is the answer);
    ``jsonl``: a file of ``{"input","output"}`` or ``{"text"}``."""

    kind: str = Field("legal-briefs", description="jsonl, or a built-in task: legal-briefs (generated), wordnet "
                      "(definition → word, from Debian's wordnet-base)")
    path: Path | None = Field(None, description="jsonl: one .jsonl file, or a folder with train/val/test.jsonl")
    n_examples: int = Field(3000, ge=10, description="legal-briefs: cases to generate; wordnet: at most "
                            "this many of its 2,351 common noun senses")
    val_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05
    max_length: int = Field(320, ge=16, description="tokens per example (prompt + completion), longer are cut")
    prompt_template: str = Field("{input}", description="jsonl: how an input is shown to the models; the "
                                 "completion follows it (legal-briefs uses its own)")
    seed: int = 0
    score: ScoreConfig = ScoreConfig()

    @model_validator(mode="after")
    def _check(self) -> LLMDataConfig:
        if self.kind == "jsonl" and self.path is None:
            raise ValueError("path: required when kind is 'jsonl'")
        if "{input}" not in self.prompt_template:
            raise ValueError("prompt_template: must contain {input}")
        if self.kind != "jsonl" and self.kind not in _generator_names():
            raise ValueError(f"kind: expected jsonl or a built-in task ({', '.join(_generator_names())})")
        return self


class TokenizerConfig(Section):
    """``train-bpe``: a ByteLevel BPE trained on the training split; ``local``: a HF tokenizer directory."""

    kind: Literal["train-bpe", "local"] = "train-bpe"
    path: Path | None = None
    vocab_size: int = Field(1024, ge=300)

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        if self.kind == "local" and self.path is None:
            raise ValueError("path: required when kind is 'local' (a local Hugging Face tokenizer directory)")
        return self


class LlamaArch(Section):
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


class LMTrainConfig(Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable training checkpoints")


class EnsembleTeacher(Section):
    """One more teacher of a multi-teacher ensemble: a local HF folder (``path``, with the tokenizer it was trained
    with, which must be the main teacher's), or trained here like the main teacher (``arch`` and ``train`` default
    to the main teacher's, ``seed`` to the recipe's seed + its 1-based position in the list)."""

    path: Path | None = Field(None, description="a local HF checkpoint folder; null: train this teacher here")
    arch: LlamaArch | None = Field(None, description="trained here: its shape (default: teacher.arch)")
    seed: int | None = Field(None, description="trained here: its seed (default: recipe seed + position)")
    train: LMTrainConfig | None = Field(None, description="trained here: its training (default: teacher.train)")

    @model_validator(mode="after")
    def _check(self) -> EnsembleTeacher:
        if self.path is not None and (self.arch is not None or self.seed is not None or self.train is not None):
            raise ValueError("path: a local teacher takes no arch, seed or train (those describe one trained here)")
        return self


class LLMTeacherConfig(Section):
    path: Path | None = Field(None, description="a local HF Llama checkpoint directory; null: train one here")
    pretrained: str | None = Field(None, description=(
        "a released model fetched and cached once per machine instead of path (edgedistill.toolchain.llm."
        "pretrained.SOURCES: smollm2-135m-instruct, SmolLM2-135M-Instruct dequantised from its Q4_1 GGUF release); "
        "the tokenizer defaults to its own"))
    arch: LlamaArch = LlamaArch()
    train: LMTrainConfig = LMTrainConfig()
    ensemble: list[EnsembleTeacher] = Field(default_factory=list, description=(
        "more teachers with the main teacher's vocabulary: white-box KD then learns the (weighted) mean of all "
        "the teachers' probability distributions (offline: its top-k is cached; online: averaged every step)"))
    ensemble_weights: list[Annotated[float, Field(gt=0)]] | None = Field(None, description=(
        "one weight per teacher, the main teacher first, then teacher.ensemble in order (normalised to sum 1); "
        "null: equal weights"))

    @model_validator(mode="before")
    @classmethod
    def _pretrained_path(cls, data: Any) -> Any:
        """``pretrained: NAME`` → ``path``: its folder in the machine's cache (the data stage fetches it there)."""
        if not isinstance(data, dict) or data.get("pretrained") is None:
            return data
        from edgedistill.toolchain.llm.pretrained import SOURCES, model_dir

        name = data["pretrained"]
        if name not in SOURCES:
            raise ValueError(f"pretrained: unknown model {name!r}; known: {', '.join(sorted(SOURCES))}")
        given = data.get("path")
        # a saved run's recipe holds the path it resolved to under the HOME that made it: same folder name, fine
        if given is not None and Path(given).name != model_dir(name).name:
            raise ValueError("pretrained: give path or pretrained, not both")
        return {**data, "path": model_dir(name)}

    @model_validator(mode="after")
    def _check(self) -> LLMTeacherConfig:
        if self.ensemble_weights is not None and len(self.ensemble_weights) != 1 + len(self.ensemble):
            raise ValueError(f"ensemble_weights: expected {1 + len(self.ensemble)} (the main teacher, then each of "
                             f"teacher.ensemble), got {len(self.ensemble_weights)}")
        return self

    def member_seed(self, i: int, recipe_seed: int) -> int:
        """The seed of ``ensemble[i]`` when trained here."""
        seed = self.ensemble[i].seed
        return seed if seed is not None else recipe_seed + i + 1

    def weights(self) -> list[float]:
        """Normalised weights of every teacher, the main one first."""
        w = self.ensemble_weights or [1.0] * (1 + len(self.ensemble))
        return [x / sum(w) for x in w]


#: a Llama/Mistral/Qwen2 block's linear layers: attention (q, k, v, o) and MLP (gate, up, down)
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoRAConfig(Section):
    """Train the students through PEFT LoRA adapters instead of every weight (Hu et al. 2021, LoRA): each target
    linear ``W`` becomes ``W + (alpha / r) · B·A`` with only ``A (r × in)`` and ``B (out × r)`` trained. ``quantize:
    4bit`` holds the frozen base weights of the blocks in bitsandbytes NF4 while the adapters train (Dettmers et al.
    2023, QLoRA). The adapters are merged before the student is saved, so it exports as a plain checkpoint."""

    enabled: bool = False
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEARS), min_length=1,
                                      description="names of the linear layers that get adapters (or a dotted "
                                      "suffix of their path, e.g. self_attn.q_proj)")
    quantize: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the blocks' frozen weights in NF4 (bitsandbytes) while training; the "
        "saved student is the dequantized weights plus the merged adapters")

    @model_validator(mode="after")
    def _check(self) -> LoRAConfig:
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules: names must be unique, got {self.target_modules}")
        if self.quantize != "none" and not self.enabled:
            raise ValueError(f"quantize: {self.quantize} quantizes the base under LoRA adapters; set enabled: true")
        return self


class LLMStudentConfig(Section):
    path: Path | None = Field(None, description="a local HF Llama directory to start from (e.g. Llama-3.2-1B)")
    arch: LlamaArch = LlamaArch(intermediate_size=512, num_hidden_layers=2)
    init: Literal["random", "teacher-layers"] = Field(
        "teacher-layers", description="teacher-layers: copy embeddings, head and every other block (DistilBERT)")
    selection_samples: int = Field(
        32, ge=1, description="validation examples summarised greedily to pick the best student (its task score)")
    lora: LoRAConfig = Field(LoRAConfig(), description="train through LoRA/QLoRA adapters (merged before saving)")


class KDLossConfig(Section):
    """One white-box student: ``alpha * T^2 * D(teacher, student) + (1 - alpha) * CE``."""

    name: SafeName = "kd"
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="jsd: 0 = forward KL, 1 = reverse KL (GKD convention)")
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)


class SelfDistillConfig(Section):
    """Self-distillation with early exits (BYOT, Zhang et al. 2019): after each of ``exits`` decoder layers the
    hidden state goes through the model's own final norm and head (shared; ``exit_norm: per-exit`` gives each exit
    its own norm, initialised from the final one) and learns the final layer's distribution, detached, at
    ``temperature``: ``weight · Σ_exits [T²·KL(p_final ‖ p_exit) + ce_weight·CE]``, beside the final layer's own
    loss (CE, or a teacher's KD with ``kd_loss``). The student is its own candidate (``name``); with
    ``export_exit: N`` the model cut after N layers (a plain HF folder with ``num_hidden_layers: N``) is one more
    candidate, ``<name>-exitN``."""

    enabled: bool = False
    name: SafeName = "self-distill"
    exits: list[Annotated[int, Field(ge=1)]] = Field(
        [1], min_length=1, description="exit points as the number of decoder layers kept (1 … layers - 1)")
    weight: float = Field(1.0, ge=0, description="the exits' loss weight beside the final layer's")
    temperature: float = Field(1.0, gt=0)
    ce_weight: float = Field(1.0, ge=0, description="cross-entropy on the labels at each exit, beside its KL")
    exit_norm: Literal["shared", "per-exit"] = "shared"
    kd_loss: SafeName | None = Field(None, description=(
        "a distill.losses name: the final layer also learns the teacher's targets with that loss (divergence, "
        "temperature, alpha; from the same top-k cache); null: the final layer learns the labels (CE) alone"))
    export_exit: int | None = Field(None, ge=1, description=(
        "also make the model cut after this many layers (one of exits) a candidate, <name>-exitN; null: none"))

    @model_validator(mode="after")
    def _check(self) -> SelfDistillConfig:
        if len(set(self.exits)) != len(self.exits):
            raise ValueError(f"exits: must be unique, got {self.exits}")
        if self.export_exit is not None and self.export_exit not in self.exits:
            raise ValueError(f"export_exit: {self.export_exit} is not one of exits {self.exits} (only a trained "
                             "exit can be cut at)")
        return self

    def candidate_names(self) -> list[str]:
        """The students this strategy adds: the full model, then the cut one (``export_exit``)."""
        if not self.enabled:
            return []
        return [self.name] + ([f"{self.name}-exit{self.export_exit}"] if self.export_exit is not None else [])


class WhiteBoxConfig(Section):
    enabled: bool = True
    mode: Literal["offline", "online"] = "offline"
    top_k: int | None = Field(8, ge=1, le=1024, description="offline cache keeps top-k log-probs + remainder mass")
    cache_dir: Path | None = Field(None, description="default: ~/.cache/edgedistill/llm-teacher")
    shard_tokens: int = Field(1 << 20, ge=1, description="tokens per cache shard")
    chunk_tokens: int = Field(512, ge=1, description="loss computed over this many positions at a time")
    losses: list[KDLossConfig] = [KDLossConfig()]
    baseline: bool = Field(True, description="also train a CE-only student (the reference completions, no teacher) "
                           "with the same budget: a candidate like the KD students, shipped if it validates best")
    train: LMTrainConfig = LMTrainConfig()
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="ddp/fsdp: the distill stage runs under `accelerate launch` with num_processes ranks")
    num_processes: int = Field(1, ge=1, description="ranks for parallel: ddp/fsdp (CPU: gloo; one per GPU)")
    self_distill: SelfDistillConfig = SelfDistillConfig()

    @model_validator(mode="after")
    def _check(self) -> WhiteBoxConfig:
        if self.mode == "offline" and self.top_k is None:
            raise ValueError("top_k: required for offline mode (the cache stores top-k teacher log-probs)")
        if self.parallel != "none" and self.num_processes < 2:
            raise ValueError(f"num_processes: parallel {self.parallel} needs at least 2, got {self.num_processes}")
        names = [loss.name for loss in self.losses]
        if {"baseline", "sft"} & set(names):
            raise ValueError("losses: 'baseline' and 'sft' name the CE-only and black-box students; rename the loss")
        if len(set(names)) != len(names):
            raise ValueError(f"losses: names must be unique, got {names}")
        sd = self.self_distill
        if sd.enabled:
            if clash := {"baseline", "sft", *names} & set(sd.candidate_names()):
                raise ValueError(f"self_distill.name: {sorted(clash)[0]!r} already names another student; rename it")
            if sd.kd_loss is not None and sd.kd_loss not in names:
                raise ValueError(f"self_distill.kd_loss: {sd.kd_loss!r} is not one of losses {names}")
            if self.parallel != "none":
                raise ValueError("self_distill: trains in one process; set parallel: none (or disable it)")
        return self


class EndpointConfig(Section):
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
        url = self.base_url
        if url is not None and not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"base_url: {redact_url(url)} is not an http(s) URL")
        secret = "api_key_env" if self.api_key_env else "credentials in base_url" if url and has_credentials(
            url) else None
        if url and secret and not secret_may_go_to(url):
            raise ValueError(f"base_url: {redact_url(url)} is neither https:// nor loopback (127.0.0.0/8, ::1, "
                             f"localhost); {secret} would travel in the clear")
        return self

    @field_serializer("base_url")
    def _redacted(self, url: str | None) -> str | None:
        """Credentials never reach a file: the run's recipe.yaml, config hashes and sources see them redacted."""
        return None if url is None else redact_url(url)


class BlackBoxConfig(Section):
    enabled: bool = True
    endpoint: EndpointConfig = EndpointConfig()
    max_prompts: int | None = Field(None, ge=1, description="collect for at most this many training prompts")
    truncated: Literal["no_eos", "drop", "keep"] = Field("no_eos", description=(
        "replies cut off at endpoint.max_tokens (finish_reason: length): no_eos trains on the text the teacher "
        "wrote but not on an end-of-sequence where it was cut (the default: the text is a true prefix of the "
        "teacher's answer, while an EOS there would teach the student to stop mid-answer, and dropping throws "
        "away paid replies and favours short answers); drop leaves them out; keep trains on them as complete"))
    train: LMTrainConfig = LMTrainConfig(lr=2e-3)


class LLMExportConfig(Section):
    gguf: list[GGUFVariant] = ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
    onnx: list[ONNXVariant] = Field(
        default_factory=list, description="ONNX files with a KV cache, exported through optimum: fp32, int8_dynamic")
    fidelity_samples: int = Field(16, ge=1, description="test examples for perplexity / KLD / same-top-token")
    teacher: list[GGUFVariant] = Field(["f32"], description=(
        "the teacher's own GGUF variants, held to the same parity contract and benched beside the student's: the "
        "report then separates the speed-up distillation buys (teacher vs student file, same runtime and "
        "precision) from what the runtime and quantisation buy; [] skips it (a 70B teacher's F32 file is 280 GB)"))
    auto: AutoExport = AutoExport()


class LLMBenchConfig(Section):
    """Every model and artifact goes through the benchmark agent in a fresh process (on the host, and the exported
    artifacts on each of ``devices``): per-token decode latency, llama-bench pp/tg, next-token accuracy and logits,
    and greedy generations that the host scores with the task's scorer."""

    pp_tokens: int = Field(64, ge=1, description="prompt-processing length (llama-bench's pp)")
    tg_tokens: int = Field(32, ge=1, description="generation length (llama-bench's tg)")
    repetitions: int = Field(3, ge=1, description="pp/tg repetitions (mean ± sd)")
    threads: int = Field(1, ge=1)
    warmup: int = Field(8, ge=0, description="untimed decode steps before the per-token samples")
    runs: int = Field(64, ge=1, description="timed decode steps (one latency sample per generated token)")
    eval_samples: int = Field(32, ge=1, description="test examples generated on the host and scored (task score)")
    device_eval_samples: int = Field(
        8, ge=1, description="the same on other devices (emulation is hundreds of times slower than the host)")
    max_new_tokens: int = Field(96, ge=1)
    accuracy_tolerance: float = Field(
        0.02, ge=0, le=1, description="an artifact 'keeps accuracy' if its task score is within this of its source's")
    devices: list[str] = Field(
        default_factory=list, description="also run every exported artifact on these device specs (host, "
        "PROFILE-constrained, PROFILE-estimated, qemu-arm64, ssh://...; `edgedistill devices` lists them)")
    profiles: list[Path] = Field(
        default_factory=list, description="extra device profile YAML files or folders (beside the built-ins)")


class PlanConfig(Section):
    """Inputs of ``edgedistill plan``: the hardware and the teacher-cache size."""

    gpu_memory_gb: float = Field(80.0, gt=0)
    cache_tokens: int = Field(100_000_000, ge=1)
    train_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    teacher_dtype: Literal["float32", "bfloat16", "int8"] = "bfloat16"
    gpu_tflops: float = Field(989.0, gt=0, description="the GPU's dense peak at train_dtype (H100 SXM bf16: 989)")
    mfu: float = Field(0.4, gt=0, le=1, description="model FLOPs utilisation assumed for GPU-hour figures")


class LLMRecipe(RecipeBase):
    kind: Literal["llm"]
    data: LLMDataConfig = LLMDataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    teacher: LLMTeacherConfig = LLMTeacherConfig()
    student: LLMStudentConfig = LLMStudentConfig()
    distill: WhiteBoxConfig = WhiteBoxConfig()
    blackbox: BlackBoxConfig = BlackBoxConfig()
    export: LLMExportConfig = LLMExportConfig()
    bench: LLMBenchConfig = LLMBenchConfig()
    plan: PlanConfig = PlanConfig()

    @model_validator(mode="before")
    @classmethod
    def _pretrained_tokenizer(cls, data: Any) -> Any:
        """A pretrained teacher's own tokenizer when the recipe names none."""
        teacher = data.get("teacher") if isinstance(data, dict) else None
        if not isinstance(teacher, dict) or teacher.get("pretrained") is None:
            return data
        from edgedistill.toolchain.llm.pretrained import SOURCES, model_dir

        if teacher["pretrained"] not in SOURCES:
            return data  # the teacher section says why
        own = {"kind": "local", "path": model_dir(teacher["pretrained"])}
        tok = data.get("tokenizer")
        # a saved run's recipe names the folder under the HOME that made it: follow this machine's cache
        saved = isinstance(tok, dict) and tok.get("kind") == "local" and tok.get("path") is not None \
            and Path(tok["path"]).name == own["path"].name
        return {**data, "tokenizer": own} if tok is None or saved else data

    @model_validator(mode="after")
    def _check_pretrained(self) -> LLMRecipe:
        t = self.teacher
        if t.pretrained is not None and self.tokenizer.kind != "local":
            raise ValueError(f"tokenizer.kind: teacher.pretrained {t.pretrained} needs its own tokenizer (kind: "
                             "local, or leave tokenizer out)")
        return self

    @model_validator(mode="after")
    def _check(self) -> LLMRecipe:
        lora, parallel = self.student.lora, self.distill.parallel
        if lora.enabled and parallel == "fsdp":
            raise ValueError("student.lora: not supported with distill.parallel: fsdp (PEFT adapters need FSDP "
                             "wrapping of their own); use parallel: ddp or none")
        if lora.quantize == "4bit" and parallel != "none":
            raise ValueError(f"student.lora.quantize: 4bit trains in one process; use distill.parallel: none, or "
                             f"quantize: none under {parallel}")
        return self

    @model_validator(mode="after")
    def _check_strategies(self) -> LLMRecipe:
        t = self.teacher
        for i, m in enumerate(t.ensemble):
            same = (t.path is None and m.path is None and (m.arch or t.arch) == t.arch
                    and (m.train or t.train) == t.train and t.member_seed(i, self.seed) == self.seed)
            if same:
                raise ValueError(f"teacher.ensemble.{i}: identical to the main teacher (same arch, train and seed "
                                 f"{self.seed}); give it another seed")
        sd = self.distill.self_distill
        layers = self.student.arch.num_hidden_layers
        if sd.enabled and self.student.path is None and (bad := [e for e in sd.exits if e >= layers]):
            raise ValueError(f"distill.self_distill.exits: {bad} not below the student's {layers} layers (an exit "
                             "keeps 1 … layers - 1 of them)")
        if sd.enabled and self.student.lora.enabled:
            raise ValueError("distill.self_distill: not with student.lora (the exits train the whole student); "
                             "turn one of them off")
        return self
