"""The recipe base: one YAML file describes a whole run, validated by pydantic.

Every pipeline kind (:data:`edgedistill.toolchain.pipeline.PIPELINES`) has its recipe class, a subclass of
:class:`RecipeBase` with ``kind`` as a literal; :func:`parse_recipe` validates a document against the discriminated
union of all of them (a missing ``kind`` means ``vision``). Sections are typed models with ``extra="forbid"``
(unknown keys are errors) and their defaults beside them. Any problem becomes a :class:`RecipeError` whose message
is one line: ``FILE: FIELD: what was expected``. Relative paths resolve against the recipe file.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

BUILTIN_PACKAGE = "edgedistill.toolchain.recipes"
DEFAULT_KIND = "vision"
#: a recipe or loss name becomes a folder or file name: letters, digits, '.', '_' and '-', no path separators
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class RecipeError(ValueError):
    """A recipe problem, already phrased as one line naming the file and the field."""


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0, lt=1)]
SafeName = Annotated[str, Field(pattern=SAFE_NAME, description="letters, digits, '.', '_', '-' (a file name)")]


def _fraction(v: Any) -> Any:
    """``"10%"`` → 0.1; numbers pass through."""
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            return float(v.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a number or a percentage like '10%', got {v!r}") from None
    return v


Share = Annotated[float, BeforeValidator(_fraction), Field(ge=0)]


class Bound(Section):
    """Limits on one metric: absolute (``max`` / ``min``) and relative to a baseline (``max_regression``: how much
    worse it may get, ``10%`` or 0.1, for ratio metrics; ``max_drop``: points it may lose, for accuracy and
    retention). A check fails only when its confidence interval clears the limit."""

    max: float | None = None
    min: float | None = None
    max_regression: Share | None = None
    max_drop: Share | None = None


class Budget(Section):
    """Bounds for the artifacts whose names match ``artifacts`` on the devices matching ``devices`` (globs).

    Metrics: ``p50_ms``/``p90_ms``/``p99_ms`` (vision: batch-1 latency; LLM: ms per generated token),
    ``tokens_per_s`` (LLM generation), ``peak_rss_mb``, ``size_kb``, ``accuracy`` (vision test accuracy, LLM task
    score), ``retention`` (of the teacher's), ``kld`` and ``same_top`` (LLM fidelity), ``speedup`` (the PyTorch
    teacher's p50 / the artifact's), ``distill_speedup`` (the teacher's fp32 file / the student's, same runtime and
    precision: what distillation buys) and ``runtime_speedup`` (the PyTorch student / the artifact: what the runtime
    and quantisation buy)."""

    artifacts: str = "*"
    devices: str = "host"
    p50_ms: Bound | None = None
    p90_ms: Bound | None = None
    p99_ms: Bound | None = None
    tokens_per_s: Bound | None = None
    peak_rss_mb: Bound | None = None
    size_kb: Bound | None = None
    accuracy: Bound | None = None
    retention: Bound | None = None
    kld: Bound | None = None
    same_top: Bound | None = None
    speedup: Bound | None = None
    distill_speedup: Bound | None = None
    runtime_speedup: Bound | None = None


def _iso_date(v: Any) -> Any:
    """An ISO date (``2027-06-30``, quoted or not); anything else, a timestamp or a time of day included, is
    refused."""
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v.strip())
        except ValueError:
            pass
    elif isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    raise ValueError("expected an ISO date like 2027-06-30")  # the one-line error adds what it got


class Waiver(Section):
    """An accepted miss, for a while: a failing check on these artifacts/devices/metric is reported as waived, with
    the reason, up to and including ``expires``. Expired waivers and waivers that match no check are listed by the
    gate and waive nothing."""

    artifacts: str
    metric: str
    devices: str = "*"
    reason: str = Field(min_length=3, description="why the miss is accepted (an issue, a decision)")
    expires: Annotated[dt.date, BeforeValidator(_iso_date)] = Field(description="last day it applies (ISO date)")

    @model_validator(mode="after")
    def _known_metric(self) -> Waiver:
        metrics = [k for k in Budget.model_fields if k not in ("artifacts", "devices")]
        if self.metric not in metrics:
            raise ValueError(f"metric: unknown metric {self.metric!r}; one of: {', '.join(metrics)}")
        if not self.reason.strip():
            raise ValueError("reason: give why the miss is accepted")
        return self


class GateConfig(Section):
    """CI budgets, for every kind (``edgedistill gate``: exit 0 pass, 1 fail, 2 bad input, 3 inconclusive).

    ``min_retention`` / ``max_p50_ms`` / ``min_speedup`` bound the recommended artifact (vision: accuracy
    retention, batch-1 p50, teacher p50 / p50; LLM: task-score retention, ms per generated token, generation
    tokens/s vs the PyTorch teacher). ``budgets`` bound every matching artifact on every matching device, with
    intervals, and ``--baseline`` adds the relative limits.
    """

    min_retention: float | None = Field(None, gt=0)
    max_p50_ms: float | None = Field(None, gt=0)
    min_speedup: float | None = Field(None, gt=0)
    budgets: list[Budget] = Field(default_factory=list)
    waivers: list[Waiver] = Field(default_factory=list)
    confidence: float = Field(0.95, gt=0.5, lt=1, description="two-sided confidence of every interval")
    min_samples: int = Field(30, ge=5, description="latency samples a check needs; fewer: inconclusive")
    rounds: int = Field(10, ge=3, le=50, description="interleaved baseline/candidate rounds when both are at hand "
                        "(the median over rounds is judged: 10 tolerate two rounds slowed by interference)")


class AutoExport(Section):
    """``export.auto`` (``edgedistill export --auto``), for every kind: measure each exported artifact on ``device``
    and ship the fastest by p50 latency (vision: batch 1; LLM: per generated token) among those that ran there,
    passed parity and keep ``min_retention`` of their PyTorch source's accuracy (LLM: task score) on the same
    examples — ties within the measurement interval go to the smaller file. Every other artifact is listed with the
    reason it was not chosen (``export/auto.json``); the chosen one is the report's recommended artifact, which the
    gate checks. Not to be confused with ``gate.min_retention``, which is against the teacher."""

    enabled: bool = False
    device: str = Field("host", min_length=1, description="a device spec as bench takes (host, PROFILE-constrained, "
                        "qemu-arm64[:PROFILE], ssh://..., adb); not an estimate, which computes no outputs")
    min_retention: float = Field(0.99, gt=0, le=1, description="artifact score / its PyTorch source's, at least")

    @model_validator(mode="after")
    def _measurable(self) -> AutoExport:
        if self.device.partition("?")[0].endswith("-estimated"):
            raise ValueError(f"device: {self.device} is an estimate, which computes no outputs, so no retention can "
                             "be measured there; use PROFILE-constrained, qemu-arm64:PROFILE or a real board")
        return self


class RecipeBase(Section):
    """What every recipe has, whatever its kind."""

    kind: str
    name: SafeName
    description: str = ""
    seed: int = 0
    gate: GateConfig = GateConfig()

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain JSON data (for config hashes)."""
        return getattr(self, name).model_dump(mode="json")


@cache
def _adapter(kinds: tuple[str, ...]) -> TypeAdapter[Any]:
    """The discriminated union of the recipe classes of ``kinds`` (a key: a kind registered later gets a new one)."""
    from edgedistill.toolchain.pipeline import get_pipeline

    types = tuple(get_pipeline(k).recipe for k in kinds)
    union = types[0] if len(types) == 1 else Union[types]  # noqa: UP007 (a runtime tuple of classes)
    return TypeAdapter(Annotated[union, Field(discriminator="kind")])


def _field_path(loc: tuple[Any, ...]) -> str:
    # drop the union's tag (the first element names the kind when the document validated against one member)
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    from edgedistill.toolchain.pipeline import kinds

    if parts and parts[0] in kinds():
        parts = parts[1:]
    return ".".join(parts) or "(top level)"


def _one_line(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    field = _field_path(tuple(first["loc"]))
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())  # one line, whatever the validator wrote
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check spelling; see `edgedistill recipes --show NAME` for the schema)"
    elif first["type"] == "union_tag_invalid":
        field, msg = "kind", f"unknown pipeline kind {first['input'].get('kind')!r}" if isinstance(
            first["input"], dict) else msg
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg = f"{msg}, got {first['input']!r}"
    if ": " in msg and field == "(top level)":  # model validators name the field themselves
        field, msg = msg.split(": ", 1)
    elif ": " in msg and first["type"] == "value_error":
        sub, msg = msg.split(": ", 1)
        field = f"{field}.{sub}" if field != "(top level)" else sub
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {field}: {msg}{extra}"


def parse_recipe(data: Any, source: str = "<recipe>") -> RecipeBase:
    """Validate a parsed YAML document as the recipe of its ``kind`` (default ``vision``)."""
    from edgedistill.toolchain.pipeline import kinds

    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    data = {"kind": DEFAULT_KIND, **data}
    if not isinstance(data["kind"], str) or data["kind"] not in kinds():
        raise RecipeError(f"{source}: kind: unknown pipeline kind {data['kind']!r}; choose one of: "
                          f"{', '.join(kinds())}")
    try:
        return _adapter(tuple(kinds())).validate_python(data)
    except ValidationError as err:
        raise RecipeError(_one_line(source, err)) from None


def builtin_names() -> list[str]:
    files = resources.files(BUILTIN_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def builtin_text(name: str) -> str:
    if name not in builtin_names():
        raise RecipeError(f"{name}: not a recipe file or built-in recipe; built-ins: {', '.join(builtin_names())}")
    return resources.files(BUILTIN_PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(ref: str | Path) -> RecipeBase:
    """Load a recipe from a YAML path or a built-in name (``edgedistill recipes`` lists them)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        source, text = str(path), _read_text(path)
    else:
        source, text = f"{ref} (built-in)", builtin_text(str(ref))
    recipe = parse_recipe(_parse_yaml(text, source), source)
    return resolve_paths(recipe, path.parent if path.exists() else Path.cwd())


def _read_text(path: Path, what: str = "recipe file") -> str:
    if not path.is_file():
        raise RecipeError(f"{path}: no such {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: (file): not UTF-8 text") from None


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
        raise RecipeError(f"{source}: {where}: invalid YAML ({problem})") from None


class _GateFile(Section):
    gate: GateConfig


def load_gate(path: Path) -> GateConfig:
    """The gate section from a YAML file outside the judged run (``edgedistill gate --budgets``): a whole recipe
    (validated as one; it has ``kind`` or ``name``), a file holding only ``gate:``, or the section's own keys
    (``budgets``, ``waivers``, ...) at the top level. Problems are one line naming the file and the field."""
    source = str(path)
    data = _parse_yaml(_read_text(path, "budgets file"), source)
    if isinstance(data, dict) and ("kind" in data or "name" in data):
        return parse_recipe(data, source).gate
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: (top level): expected a recipe or a gate section, got {type(data).__name__}")
    try:
        return _GateFile.model_validate(data).gate if "gate" in data else GateConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_one_line(source, err)) from None


def resolve_paths(model: Any, base: Path) -> Any:
    """Every relative path in ``model`` (a recipe or section, recursively, lists included) made relative to
    ``base``: users write paths relative to their recipe file."""
    if not isinstance(model, BaseModel):
        return model
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            update[name] = value if value.is_absolute() else (base / value).resolve()
        elif isinstance(value, BaseModel):
            update[name] = resolve_paths(value, base)
        elif isinstance(value, list | tuple) and any(isinstance(v, Path | BaseModel) for v in value):
            update[name] = type(value)(
                (v if v.is_absolute() else (base / v).resolve()) if isinstance(v, Path) else resolve_paths(v, base)
                for v in value)
    return model.model_copy(update=update)
