"""The vision recipe (``kind: vision``, the default): typed sections with their defaults here, in one place.

Shared conventions (unknown keys are errors, one-line messages, paths relative to the recipe file) come from
:mod:`edgedistill.toolchain.recipe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from edgedistill.toolchain.recipe import AutoExport, Fraction, RecipeBase, Section


class DataConfig(Section):
    """Where images come from and how they are split."""

    kind: Literal["digits", "imagefolder"] = "digits"
    root: Path | None = Field(None, description="imagefolder: a folder with one sub-folder per class")
    image_size: int = Field(32, ge=8, le=1024)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2
    labelled_per_class: int | None = Field(
        None, ge=1, description="students see labels for only this many train images per class; "
        "the rest of train is an unlabelled transfer set that only the teacher labels (None = all labelled)")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.kind == "imagefolder" and self.root is None:
            raise ValueError("root: required when kind is 'imagefolder'")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction: must leave at least 10% for training")
        return self


class TrainConfig(Section):
    """Optimisation settings shared by teacher training and student distillation."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    augment: bool = Field(False, description="random shifts; ignored for offline KD, whose teacher cache is fixed")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke tests)")


class ModelConfig(Section):
    """A timm model by name plus constructor kwargs (``num_classes`` comes from the data)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="local .safetensors (or timm .pth/.bin state dict)")

    @model_validator(mode="after")
    def _no_num_classes(self) -> ModelConfig:
        if "num_classes" in self.kwargs:
            raise ValueError("kwargs.num_classes: leave it out; it is taken from the data")
        from edgedistill.runtimes.torch_ref import check_timm_model

        try:
            check_timm_model(self.name, self.kwargs, "model")
        except ValueError as err:  # "model: kwargs.X: refused (...)" → field kwargs.X
            raise ValueError(str(err).removeprefix("model: ")) from None
        return self


class TeacherConfig(ModelConfig):
    train: TrainConfig = TrainConfig(epochs=30, lr=1e-3, augment=True)


class EnsembleTeacher(TeacherConfig):
    """One extra teacher of the ensemble: trained by the teacher stage (or loaded from ``checkpoint``)."""

    seed: int | None = Field(None, description="its training seed (default: the recipe's seed + its 1-based "
                                               "position here, so two identical entries still differ)")


class EnsembleConfig(Section):
    """Multi-teacher KD (the ensemble target of Hinton et al. 2015, sec. 1; You et al. 2017): the main ``teacher``
    and each of ``teachers`` (different seeds or shapes) give soft targets that are averaged, weighted by
    ``weights``, into one target for every KD student (``kd``, ``kd-tuned``).

    Probabilities are averaged, not logits, **at the KD temperature**: with ``T = distill.response.temperature``
    the target is ``p_ens = sum_m w_m softmax(z_m / T)`` (each teacher softened first, then mixed), which is what
    the student's ``KL(p_ens || softmax(z_S / T))`` compares against; ``T²`` scales the KL as for one teacher.
    The target is cached offline like one teacher's outputs (the key covers every teacher's weights and the
    weights); hint, attention, factor and RKD terms use the main teacher's features and embeddings. The
    ensemble's own accuracy (reported beside the teacher's) is the argmax of the mixture at T = 1.
    """

    teachers: list[EnsembleTeacher] = Field(
        default_factory=list, description="extra teachers beside `teacher` (empty: a single teacher)")
    weights: list[float] | None = Field(
        None, description="one positive weight per teacher, the main teacher first (null: equal); normalised")

    @model_validator(mode="after")
    def _check(self) -> EnsembleConfig:
        if self.weights is None:
            return self
        if not self.teachers:
            raise ValueError("weights: set ensemble.teachers first (one weight per teacher, the main one first)")
        if len(self.weights) != len(self.teachers) + 1:
            raise ValueError(f"weights: expected {len(self.teachers) + 1} (the main teacher first, then each of "
                             f"ensemble.teachers), got {len(self.weights)}")
        if any(not (w > 0) for w in self.weights):
            raise ValueError(f"weights: every weight must be > 0, got {self.weights}")
        return self

    def normalised_weights(self) -> list[float]:
        """The members' weights summing to 1, the main teacher first."""
        w = self.weights or [1.0] * (len(self.teachers) + 1)
        return [v / sum(w) for v in w]


class ResponseKD(Section):
    """Hinton et al. 2015: ``alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE``."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


class FeatureKD(Section):
    """FitNets hint (Romero et al. 2015) from a student layer to a teacher layer through a learned adapter."""

    weight: float = Field(0.0, ge=0)
    student_layer: str = "blocks.2"
    teacher_layer: str = "blocks.3"
    adapter: Literal["conv1x1", "linear"] = "conv1x1"


class AttentionKD(Section):
    """Attention transfer (Zagoruyko & Komodakis 2017) between the same pair of layers as the hint."""

    weight: float = Field(0.0, ge=0)
    p: float = Field(2.0, gt=0)


class RelationKD(Section):
    """Relational KD (Park et al. 2019) on penultimate embeddings."""

    distance_weight: float = Field(0.0, ge=0)
    angle_weight: float = Field(0.0, ge=0)


class MutualKD(Section):
    """Deep mutual learning (Zhang et al. 2018, "Deep Mutual Learning"): online co-training of a peer and the
    student. The peer **starts from the trained teacher's weights** and keeps learning: each step both models see
    the same batch and each minimises ``CE(own logits, labels) + weight * T^2 * KL(p_other || p_self)`` at
    temperature ``T`` (the other's softened outputs detached), so the teacher adapts to the student's pace —
    unlike ``mode: online``, where a frozen teacher runs every step. The student uses the labelled subset, the
    peer every training label (the teacher's own). Both models and their optimiser (one AdamW, the peer in its
    own parameter group at ``peer_lr``) are checkpointed by the one training loop, so the pair resumes.
    The student becomes the ``mutual`` candidate; the KD student's other losses do not apply to it."""

    enabled: bool = False
    weight: float = Field(1.0, ge=0, description="the KL term's weight (both directions)")
    temperature: float = Field(1.0, gt=0)
    peer_lr: float = Field(1e-4, gt=0, description="the peer's peak learning rate (it starts trained; the "
                                                  "student's is distill.train.lr)")


class FactorKD(Section):
    """Factor transfer (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor
    Transfer"). A paraphraser (a small convolutional auto-encoder) is trained for ``paraphraser_epochs`` to
    reconstruct the teacher's ``teacher_layer`` map; its encoder's output, ``rate`` × the teacher's channels, is
    the teacher factor. A translator (small conv stack, trained with the student) maps the student's
    ``student_layer`` map onto factors; the loss is ``weight * mean_b || F_T/||F_T||_2 - F_S/||F_S||_2 ||_1`` on
    flattened factors. The trained paraphraser is cached beside the teacher cache."""

    weight: float = Field(0.0, ge=0)
    teacher_layer: str | None = Field(None, description="default: distill.feature.teacher_layer")
    student_layer: str | None = Field(None, description="default: distill.feature.student_layer")
    rate: float = Field(0.5, gt=0, le=1, description="factor channels / teacher channels (the paper's k)")
    paraphraser_epochs: int = Field(5, ge=1)


Span = tuple[float, float]


class TuneConfig(Section):
    """``distill.tune``: search the KD settings on the offline teacher cache (no teacher passes), selected on
    validation accuracy, with Optuna (TPE sampler, median pruning of bad trials after each epoch). The best trial's
    student becomes the ``kd-tuned`` candidate; the chosen settings are written back into the run's recipe.yaml
    (``distill.tune.chosen``). A span is ``[low, high]``; an unset span keeps the recipe's value."""

    trials: int = Field(0, ge=0, description="trials to run (0: tuning off)")
    minutes: float | None = Field(None, gt=0, description="stop starting trials after this many minutes")
    epochs: int | None = Field(None, ge=1, description="epochs per trial (default: distill.train.epochs)")
    temperature: Span | None = (1.0, 8.0)
    alpha: Span | None = (0.3, 0.99)
    lr: Span | None = None
    feature_weight: Span | None = None
    attention_weight: Span | None = None
    relation_weight: Span | None = Field(None, description="the RKD distance and angle weights, together")
    seed: int = 0
    chosen: dict[str, float] | None = Field(None, description="written by the run: the best trial's settings")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        for name in ("temperature", "alpha", "lr", "feature_weight", "attention_weight", "relation_weight"):
            span = getattr(self, name)
            if span is not None and not (0 <= span[0] <= span[1]):
                raise ValueError(f"{name}: expected [low, high] with 0 <= low <= high, got {list(span)}")
        if self.alpha is not None and self.alpha[1] > 1:
            raise ValueError("alpha: the KD weight is at most 1")
        return self


class SelfDistillConfig(Section):
    """``distill.self_distill``: Zhang et al. 2019, "Be Your Own Teacher" — the student's deepest head teaches
    auxiliary heads on its own intermediate blocks; no external teacher needed. Each exit's loss is
    ``ce_weight·CE + weight·T²·KL(p_final || p_exit)`` (the final head detached: the target) plus, with
    ``feature_weight``, ``MSE(adapter(exit embedding), final embedding)`` (detached). The final head learns from
    the labels (CE), or with ``with_teacher`` from the recipe's KD losses on the external teacher too. The student is
    the ``self-distill`` candidate; ``export_exit`` deploys it cut at one exit (that exit's blocks and head)."""

    enabled: bool = Field(False, description="train the self-distill candidate")
    exits: list[str] = Field(["blocks.2", "blocks.4"], min_length=1, description=(
        "student module paths that get an auxiliary head: a top-level module or an item of a top-level Sequential"))
    head: Literal["bottleneck", "linear"] = Field(
        "bottleneck", description="bottleneck: 1×1 conv + 3×3 conv (BN, ReLU) + pool + linear; linear: pool + linear")
    head_channels: int = Field(128, ge=1, le=4096, description="the bottleneck's width")
    weight: float = Field(1.0, ge=0, description="weight of each exit's KL to the final head")
    temperature: float = Field(3.0, gt=0)
    ce_weight: float = Field(1.0, ge=0, description="weight of each exit's own CE on the labels")
    feature_weight: float = Field(0.0, ge=0, description="weight of each exit's L2 to the final embedding")
    with_teacher: bool = Field(False, description=(
        "the final head also learns from the external teacher (the recipe's response/hint/attention/RKD losses); "
        "false: no teacher at all, the final head learns from the labels only"))
    export_exit: str | None = Field(None, description=(
        "null: deploy the whole student; an exit: deploy the student cut there (its blocks and head), which is "
        "what export, bench and parity then see; best-epoch selection looks at that exit (changing it retrains)"))

    @model_validator(mode="after")
    def _check(self) -> SelfDistillConfig:
        from edgedistill.runtimes.early_exit import EXIT_PATH

        for name in self.exits:
            if not EXIT_PATH.match(name):
                raise ValueError(f"exits: {name!r}: an exit is a top-level module or an item of a top-level "
                                 f"Sequential, e.g. blocks.2")
        if len(set(self.exits)) != len(self.exits):
            raise ValueError(f"exits: each exit once, got {self.exits}")
        if self.export_exit is not None and self.export_exit not in self.exits:
            raise ValueError(f"export_exit: {self.export_exit!r} is not one of exits {self.exits}")
        if self.weight == 0 and self.ce_weight == 0 and self.feature_weight == 0:
            raise ValueError("weight: with ce_weight and feature_weight also 0 the exits learn nothing")
        return self


class ChainConfig(Section):
    """``distill.chain``: teacher-assistant KD (Mirzadeh et al. 2020) — teacher → assistant(s) → student, for size
    gaps too large for one step. Each link is its own cached, resumable training: an assistant is distilled from its
    predecessor's cached outputs (the teacher's first), and its own outputs are cached in turn, keyed by its weights'
    sha256. Links use the response KD and RKD settings (hint and attention transfer name layers of one
    teacher/student pair and are left out). The chained student is the ``chain`` candidate."""

    assistants: list[ModelConfig] = Field(
        default_factory=list, description="timm models from the largest to the smallest (empty: chain off)")
    train: TrainConfig | None = Field(None, description="each assistant's training (default: distill.train)")
    self_distill: bool = Field(False, description=(
        "the chain's student also trains distill.self_distill's exits (its final head learning from the last "
        "assistant); distill.self_distill.export_exit then cuts it too"))

    @model_validator(mode="after")
    def _check(self) -> ChainConfig:
        for i, a in enumerate(self.assistants):
            if a.checkpoint is not None:
                raise ValueError(f"assistants.{i}.checkpoint: assistants are distilled here from the teacher; "
                                 "leave it out")
        if self.self_distill and not self.assistants:
            raise ValueError("self_distill: the chain has no assistants; add some or use distill.self_distill")
        return self


class DistillConfig(Section):
    mode: Literal["offline", "online"] = "offline"
    cache_dir: Path | None = Field(None, description="offline teacher cache (default: $EDGEDISTILL_CACHE/teacher, "
                                 "else ~/.cache/edgedistill/teacher)")
    train: TrainConfig = TrainConfig(epochs=40, lr=3e-3)
    response: ResponseKD = ResponseKD()
    feature: FeatureKD = FeatureKD()
    attention: AttentionKD = AttentionKD()
    relation: RelationKD = RelationKD()
    baseline: bool = Field(True, description="also train a CE-only student with the same budget")
    tune: TuneConfig = TuneConfig()
    mutual: MutualKD = MutualKD()
    factor: FactorKD = FactorKD()
    self_distill: SelfDistillConfig = SelfDistillConfig()
    chain: ChainConfig = ChainConfig()

    @model_validator(mode="after")
    def _tune_needs_cache(self) -> DistillConfig:
        if self.tune.trials and self.mode != "offline":
            raise ValueError("tune.trials: tuning runs on the offline teacher cache; set mode: offline")
        f = self.factor
        if (f.weight > 0 and f.teacher_layer not in (None, self.feature.teacher_layer)
                and (self.feature.weight > 0 or self.attention.weight > 0)):
            raise ValueError(f"factor.teacher_layer: the teacher is read at one layer and hint/attention use "
                             f"feature.teacher_layer {self.feature.teacher_layer!r}; use it or leave this unset")
        if self.chain.assistants and self.mode != "offline":
            raise ValueError("chain.assistants: each link learns from its predecessor's cached outputs; "
                             "set mode: offline")
        sd = self.self_distill
        if sd.enabled and sd.with_teacher and self.factor.weight > 0 and self.mode != "offline":
            raise ValueError("self_distill.with_teacher: factor transfer reaches self-distillation through the "
                             "offline cache only; set mode: offline or factor.weight: 0")
        if sd.export_exit is not None and not (sd.enabled or self.chain.self_distill):
            raise ValueError("self_distill.export_exit: no student trains exits; set self_distill.enabled or "
                             "chain.self_distill")
        return self

    @property
    def teacher_layer(self) -> str | None:
        """The teacher layer the feature losses (hint, attention, factor) read; None when none is on."""
        if self.feature.weight > 0 or self.attention.weight > 0:
            return self.feature.teacher_layer
        return (self.factor.teacher_layer or self.feature.teacher_layer) if self.factor.weight > 0 else None

    @property
    def factor_student_layer(self) -> str:
        return self.factor.student_layer or self.feature.student_layer


OnnxVariant = Literal["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]


class OnnxExport(Section):
    opset: int = Field(18, ge=13)
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    variants: list[OnnxVariant] = ["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]
    calibration_samples: int = Field(256, ge=1)
    reduce_range: Literal["auto"] | bool = Field(
        "auto", description="7-bit static int8 weights; auto: when the host or a bench device is x86 without VNNI, "
        "where 8-bit u8×s8 products saturate (then results are the same on every ISA)")
    remedies: bool = Field(
        True, description="when an int8 file fails parity, try more/stratified calibration, percentile and "
        "entropy calibration, then float first/last layers; keep the first that passes (each attempt recorded)")
    fp32_stem: bool = Field(
        True, description="keep the first convolution (it sees raw pixels) in float in static int8 files: measured "
        "+1.4 points of top-1 agreement on the demo's MobileNetV3 at any ISA")


TfliteVariant = Literal["fp32", "int8_static", "int8_dynamic", "int8_weight_only"]


class TfliteExport(Section):
    """litert-torch conversion (fixed batch 1); :mod:`edgedistill.toolchain.vision.export.tflite` has the variants."""

    variants: list[TfliteVariant] = ["fp32", "int8_static", "int8_dynamic", "int8_weight_only"]
    layout: Literal["nchw", "nhwc"] = Field(
        "nchw", description="input layout of the .tflite graph; nhwc transposes inside it (mobile/camera pipelines)")
    calibration_samples: int = Field(128, ge=1, description="training images that calibrate int8_static")
    remedies: bool = Field(True, description="int8_static failing parity: retry with 4x stratified calibration")


ExportFormat = Literal["onnx", "tflite"]


class ExportConfig(Section):
    formats: list[ExportFormat] = Field(["onnx", "tflite"], min_length=1)
    onnx: OnnxExport = OnnxExport()
    tflite: TfliteExport = TfliteExport()
    teacher: bool = Field(True, description=(
        "also export the teacher (fp32, in each format the teacher converts to) and bench it beside the student: "
        "the report then separates the speed-up distillation buys (teacher vs student, same runtime and "
        "precision) from what the runtime and quantisation buy (PyTorch student vs each artifact)"))
    auto: AutoExport = AutoExport()

    @model_validator(mode="after")
    def _unique_formats(self) -> ExportConfig:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats: each format once, got {self.formats}")
        return self


class BenchConfig(Section):
    threads: list[int | Literal["all"]] = [1, "all"]
    warmup: int = Field(20, ge=0)
    runs: int = Field(200, ge=1)
    processes: int = Field(1, ge=1, le=10, description="fresh processes per artifact on the host, round-robin; the "
                           "fastest one's timing is kept (a shared runner's interference slows whole processes)")
    accuracy_tolerance: float = Field(
        0.01, ge=0, le=1, description="an artifact 'keeps accuracy' if within this of its PyTorch source")
    include_pytorch: bool = True
    devices: list[str] = Field(
        ["host"], min_length=1, description="device specs: host, PROFILE-constrained, PROFILE-estimated, "
        "qemu-arm64[:PROFILE], ssh://user@host[:port]?profile=P, adb[://SERIAL] (`edgedistill devices` lists them)")
    profiles: list[Path] = Field(
        default_factory=list, description="extra device profile YAML files or folders (beside the built-ins)")


class VisionRecipe(RecipeBase):
    kind: Literal["vision"] = "vision"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: ModelConfig
    distill: DistillConfig = DistillConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _ensemble_is_offline(self) -> VisionRecipe:
        if self.ensemble.teachers and self.distill.mode != "offline":
            raise ValueError("ensemble.teachers: the ensemble target is cached offline; set distill.mode: offline")
        return self

    @model_validator(mode="after")
    def _exits_exist(self) -> VisionRecipe:
        """``distill.self_distill.exits`` name modules of the student (checked on a weightless copy of it)."""
        if self.distill.self_distill.enabled or self.distill.chain.self_distill:
            import timm
            import torch

            from edgedistill.runtimes.early_exit import ExitError, exit_module

            try:
                with torch.device("meta"):
                    model = timm.create_model(self.student.name, pretrained=False, **self.student.kwargs)
            except Exception as err:  # kwargs of the right kinds but values the builder refuses
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(f"student.kwargs: {self.student.name} cannot be built with them ({first})") from None
            for name in self.distill.self_distill.exits:
                try:
                    exit_module(model, name)
                except ExitError as err:
                    raise ValueError(f"distill.self_distill.exits: {err}") from None
        return self
