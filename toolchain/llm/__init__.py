"""The LLM pipeline: a Llama teacher distilled into a smaller Llama student (white-box KD and black-box SFT),
exported to GGUF and quantised with llama.cpp, measured and reported. See :mod:`.recipe` for the schema."""

from edgedistill.toolchain.llm.recipe import LLMRecipe
from edgedistill.toolchain.pipeline import PIPELINES, Pipeline

PIPELINES.register("llm")(Pipeline(
    "llm", LLMRecipe, "edgedistill.toolchain.llm.stages",
    "Llama teacher → Llama student (top-k KD, black-box SFT), GGUF + ONNX",
    cli_module="edgedistill.toolchain.llm.cli_hooks"))
