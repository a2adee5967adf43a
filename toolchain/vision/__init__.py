"""The vision pipeline (``kind: vision``): a timm teacher distilled into a timm student, exported to ONNX and
TFLite, measured and reported. Same shape as :mod:`edgedistill.toolchain.llm`: recipe, stages, data, models,
``distill/``, ``export/``."""

from edgedistill.toolchain.pipeline import PIPELINES, Pipeline
from edgedistill.toolchain.vision.recipe import VisionRecipe

PIPELINES.register("vision")(Pipeline(
    "vision", VisionRecipe, "edgedistill.toolchain.vision.stages",
    "timm teacher → timm student (response/FitNets/AT/RKD), ONNX + TFLite",
    cli_module="edgedistill.toolchain.vision.cli_hooks"))
