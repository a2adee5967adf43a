"""The recipe: one YAML file describing a whole run, validated by pydantic.

Every section is a typed model with ``extra="forbid"`` (unknown keys are errors) and its defaults here, in one
place. :func:`load_recipe` turns any problem into a :class:`RecipeError` whose message is one line:
``FILE: FIELD: what was expected``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUILTIN_PACKAGE = "edgedistill.toolchain.recipes"


class RecipeError(ValueError):
    """A recipe problem, already phrased as one line naming the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0, lt=1)]


class DataConfig(_Section):
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


class TrainConfig(_Section):
    """Optimisation settings shared by teacher training and student distillation."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    augment: bool = Field(False, description="random shifts; ignored for offline KD, whose teacher cache is fixed")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke tests)")


class ModelConfig(_Section):
    """A timm model by name plus constructor kwargs (``num_classes`` comes from the data)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="local .safetensors (or timm .pth/.bin state dict)")

    @model_validator(mode="after")
    def _no_num_classes(self) -> ModelConfig:
        if "num_classes" in self.kwargs:
            raise ValueError("kwargs.num_classes: leave it out; it is taken from the data")
        return self


class TeacherConfig(ModelConfig):
    train: TrainConfig = TrainConfig(epochs=30, lr=1e-3, augment=True)


class ResponseKD(_Section):
    """Hinton et al. 2015: ``alpha * T^2 * KL(p_T || p_S) + (1 - alpha) * CE``."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)


class FeatureKD(_Section):
    """FitNets hint (Romero et al. 2015) from a student layer to a teacher layer through a learned adapter."""

    weight: float = Field(0.0, ge=0)
    student_layer: str = "blocks.2"
    teacher_layer: str = "blocks.3"
    adapter: Literal["conv1x1", "linear"] = "conv1x1"


class AttentionKD(_Section):
    """Attention transfer (Zagoruyko & Komodakis 2017) between the same pair of layers as the hint."""

    weight: float = Field(0.0, ge=0)
    p: float = Field(2.0, gt=0)


class RelationKD(_Section):
    """Relational KD (Park et al. 2019) on penultimate embeddings."""

    distance_weight: float = Field(0.0, ge=0)
    angle_weight: float = Field(0.0, ge=0)


class DistillConfig(_Section):
    mode: Literal["offline", "online"] = "offline"
    cache_dir: Path | None = Field(None, description="offline teacher cache (default: ~/.cache/edgedistill)")
    train: TrainConfig = TrainConfig(epochs=40, lr=3e-3)
    response: ResponseKD = ResponseKD()
    feature: FeatureKD = FeatureKD()
    attention: AttentionKD = AttentionKD()
    relation: RelationKD = RelationKD()
    baseline: bool = Field(True, description="also train a CE-only student with the same budget")


OnnxVariant = Literal["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]


class OnnxExport(_Section):
    opset: int = Field(18, ge=13)
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    variants: list[OnnxVariant] = ["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]
    calibration_samples: int = Field(256, ge=1)


TfliteVariant = Literal["fp32", "int8_static", "int8_dynamic", "int8_weight_only"]


class TfliteExport(_Section):
    """litert-torch conversion (fixed batch 1); see :mod:`edgedistill.toolchain.export.tflite` for the variants."""

    variants: list[TfliteVariant] = ["fp32", "int8_static", "int8_dynamic", "int8_weight_only"]
    layout: Literal["nchw", "nhwc"] = Field(
        "nchw", description="input layout of the .tflite graph; nhwc transposes inside it (mobile/camera pipelines)")
    calibration_samples: int = Field(128, ge=1, description="training images that calibrate int8_static")


ExportFormat = Literal["onnx", "tflite"]


class ExportConfig(_Section):
    formats: list[ExportFormat] = Field(["onnx", "tflite"], min_length=1)
    onnx: OnnxExport = OnnxExport()
    tflite: TfliteExport = TfliteExport()

    @model_validator(mode="after")
    def _unique_formats(self) -> ExportConfig:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats: each format once, got {self.formats}")
        return self


class BenchConfig(_Section):
    threads: list[int | Literal["all"]] = [1, "all"]
    warmup: int = Field(20, ge=0)
    runs: int = Field(200, ge=1)
    accuracy_tolerance: float = Field(
        0.01, ge=0, le=1, description="an artifact 'keeps accuracy' if within this of its PyTorch source")
    include_pytorch: bool = True
    devices: list[str] = Field(
        ["host"], min_length=1, description="device specs: host, PROFILE-constrained, PROFILE-estimated, "
        "qemu-arm64[:PROFILE], ssh://user@host[:port]?profile=P, adb[://SERIAL] (`edgedistill devices` lists them)")
    profiles: list[Path] = Field(
        default_factory=list, description="extra device profile YAML files or folders (beside the built-ins)")


class GateConfig(_Section):
    """CI budgets; ``edgedistill gate`` exits 1 when the recommended artifact misses one."""

    min_retention: float | None = Field(None, gt=0)
    max_p50_ms: float | None = Field(None, gt=0)
    min_speedup: float | None = Field(None, gt=0)


class Recipe(_Section):
    kind: Literal["vision"] = "vision"  # "llm" recipes: edgedistill.toolchain.llm.recipe
    name: str
    description: str = ""
    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: ModelConfig
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()
    gate: GateConfig = GateConfig()

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain JSON data (for config hashes)."""
        return getattr(self, name).model_dump(mode="json")


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "(top level)"


def _one_line(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    field = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check spelling; see `edgedistill recipes --show NAME` for the schema)"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg = f"{msg}, got {first['input']!r}"
    if ": " in msg and field == "(top level)":  # model validators name the field themselves
        field, msg = msg.split(": ", 1)
    elif ": " in msg and first["type"] == "value_error":
        sub, msg = msg.split(": ", 1)
        field = f"{field}.{sub}" if field != "(top level)" else sub
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {field}: {msg}{extra}"


def parse_recipe(data: Any, source: str = "<recipe>") -> Any:
    """A :class:`Recipe`, or an ``LLMRecipe`` when the top-level ``kind`` is ``llm``."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    if data.get("kind") == "llm":
        from edgedistill.toolchain.llm.recipe import parse_llm_recipe

        return parse_llm_recipe(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_one_line(source, err)) from None


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def builtin_text(name: str) -> str:
    if name not in builtin_names():
        raise RecipeError(f"{name}: not a recipe file or built-in recipe; built-ins: {', '.join(builtin_names())}")
    return resources.files(BUILTIN_PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(ref: str | Path) -> Any:
    """Load a recipe from a YAML path or a built-in name (``edgedistill recipes`` lists them)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        source, text = str(path), path.read_text(encoding="utf-8")
    else:
        source, text = f"{ref} (built-in)", builtin_text(str(ref))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise RecipeError(f"{source}: {where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    recipe = parse_recipe(data, source)
    base = path.parent if path.exists() else Path.cwd()
    if getattr(recipe, "kind", "vision") == "llm":
        from edgedistill.toolchain.llm.recipe import resolve_llm_paths

        return resolve_llm_paths(recipe, base)
    return _resolve_paths(recipe, base)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make relative paths in a recipe relative to the recipe file, as users expect."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    data = recipe.data.model_copy(update={"root": fix(recipe.data.root)})
    teacher = recipe.teacher.model_copy(update={"checkpoint": fix(recipe.teacher.checkpoint)})
    student = recipe.student.model_copy(update={"checkpoint": fix(recipe.student.checkpoint)})
    return recipe.model_copy(update={"data": data, "teacher": teacher, "student": student})
