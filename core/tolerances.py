"""One home for the bars every artifact is held to (the report marks artifacts against them; the tests assert
them). Each says what it bounds and why it is this size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: fp32 artifacts: every |Δ| <= FP32_ATOL + FP32_RTOL·(the largest |logit| of its row), row = one image or one
#: position (:func:`fp32_bound`). Float32 rounding of a sum is bounded by eps·Σ|terms|, so it scales with the size
#: of the activations, not of the one output: a logit near 0 left by large partial sums carries their rounding,
#: so a per-logit ``rtol·|x|`` (numpy.allclose) has no bound and flipped fp32 verdicts by chance (issue #23).
#: Measured by perf/fp32_spread.py on a trained MobileNetV3 student (|logit| up to 150; AMD EPYC, AVX-512 VNNI):
#: PyTorch (1/2 threads, ATen AVX2, oneDNN AVX2, an emulated Haswell) vs ONNX Runtime (all / no graph
#: optimisations, 1/2 threads, an emulated Haswell: its AVX2 kernels) differ by up to 7.2e-4, at most 9.6e-6 of
#: the row's largest logit, while the per-logit rtol needed reached 1.25e-4. FP32_RTOL sits 10x above that rounding
#: and ~90x below the next precision down (the same student with weights and inputs rounded to a 10-bit mantissa,
#: as fp16/TF32 math: 9.3e-3 of the row's largest logit; bf16: 6.3e-2), so a device that computes with fewer bits,
#: or wrongly, is still blamed. FP32_ATOL covers logits near 0 in rows of small logits.
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4
#: the same bar for logits of magnitude <= 1, and for an fp32 artifact's logits on another device vs the host
FP32_MAX_ABS_DIFF = FP32_ATOL
#: how the fp32 bar reads in reports and parity records
FP32_CRITERION = f"|Δ| <= {FP32_ATOL:g} + {FP32_RTOL:g}·max|logit| of its row"


def fp32_bound(reference: Any) -> Any:
    """The largest |Δ| an fp32 artifact may show at each logit of ``reference`` (a numpy array ``(..., K)``)."""
    import numpy as np

    ref = np.abs(np.asarray(reference, dtype=np.float64))
    return FP32_ATOL + FP32_RTOL * ref.max(axis=-1, keepdims=True)


def fp32_ok(reference: Any, logits: Any) -> bool:
    """Whether ``logits`` keep the fp32 bar against ``reference`` (same shape, numpy arrays)."""
    import numpy as np

    diff = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(logits, dtype=np.float64))
    return bool((diff <= fp32_bound(reference)).all())


#: vision int8 ONNX artifacts: least fraction of test images whose top-1 class matches PyTorch's
INT8_MIN_TOP1_AGREEMENT = 0.98
#: the same with 7-bit weights (onnxruntime's reduce_range, chosen for x86 targets without VNNI), which compute
#: the same logits on every x86 ISA because nothing saturates. One bit less of weight precision cost 0 to 1.1
#: points of agreement on two digits MobileNetV3s (perf/int8_isa.py: 0.986 both ways; 0.972 vs 0.983), while
#: 8-bit U8S8 fell to 0.822-0.892 on an emulated AVX2 core (benchmarks/RESULTS.md)
INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT = 0.96
#: vision int8 TFLite artifacts (litert int8 kernels): least top-1 agreement with PyTorch
TFLITE_INT8_MIN_TOP1_AGREEMENT = 0.97
#: LLM Q8_0 GGUF: least same-top-token rate vs the PyTorch model it came from
Q8_MIN_SAME_TOP = 0.95
#: LLM dynamic-int8 ONNX decoders: least same-top-token rate vs the PyTorch student
ONNX_INT8_MIN_SAME_TOP = 0.90
#: quantised artifacts on another device vs the same file on the host: least top-1 (LLM: same-top-token) agreement
#: (int8 rounding differs by ISA); below it the report flags the device (:data:`PARITY_BARS` ``"device vs host"``)
DEVICE_INT8_MIN_TOP1 = 0.95
#: LLM artifacts' long-sequence logit check: at least this many positions, past a recipe's max_length (rope
#: scaling and position handling differ between converters and runtimes, and the error grows with position)
PARITY_MIN_POSITIONS = 512



@dataclass(frozen=True)
class ParityBar:
    """What an artifact's outputs are held to against its PyTorch source (at export and on every device).

    ``metric``: ``fp32`` (every logit within :data:`FP32_CRITERION`), ``top1_agreement`` (vision: the fraction of
    test images whose top-1 class matches), ``same_top_token`` (LLM: the fraction of positions whose top token
    matches) or ``none`` (reported, not held to a bar); ``floor`` the least agreement (None for fp32 and none)."""

    metric: Literal["fp32", "top1_agreement", "same_top_token", "none"]
    floor: float | None
    reason: str

    @property
    def criterion(self) -> str:
        """The bar in words, as parity records and reports print it."""
        if self.metric == "fp32":
            return FP32_CRITERION
        return "no logit bar" if self.floor is None else f"{self.metric} >= {self.floor:g}"


#: the one table of parity bars: name → bar, with why it is this size (the constants above carry the measurements)
PARITY_BARS: dict[str, ParityBar] = {
    "fp32": ParityBar("fp32", None, "full precision: only float32 rounding, bounded by FP32_ATOL + "
                      "FP32_RTOL·max|logit| of the row (vision fp32 ONNX/TFLite, LLM F32 GGUF and fp32 ONNX)"),
    "vision int8": ParityBar("top1_agreement", INT8_MIN_TOP1_AGREEMENT,
                             "vision int8 ONNX (static U8S8/S8S8, dynamic): 8-bit rounding may flip a few "
                             "borderline images"),
    "vision int8 reduced-range": ParityBar("top1_agreement", INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT,
                                           "vision int8 ONNX with 7-bit static weights (reduce_range, for x86 "
                                           "without VNNI): one bit less of weight precision"),
    "vision tflite int8": ParityBar("top1_agreement", TFLITE_INT8_MIN_TOP1_AGREEMENT,
                                    "vision int8 TFLite (LiteRT int8 kernels)"),
    "llm q8": ParityBar("same_top_token", Q8_MIN_SAME_TOP,
                        "LLM F16 and Q8_0 GGUF: near-lossless, so the top token rarely moves"),
    "llm onnx int8": ParityBar("same_top_token", ONNX_INT8_MIN_SAME_TOP,
                               "LLM dynamic-int8 ONNX decoders: activations quantised per token"),
    "llm 4-bit": ParityBar("none", None, "LLM 4-bit GGUF (Q4_0, Q4_K_M): KLD and same-top reported, as llama.cpp's "
                           "perplexity tool does, with no bar"),
    "device vs host": ParityBar("top1_agreement", DEVICE_INT8_MIN_TOP1,
                                "a quantised file on another device vs the same file on the host: int8 rounding "
                                "differs by ISA (the report flags a device below it)"),
}

#: (kind, format, variant) → its bar's name in :data:`PARITY_BARS`; format "" matches any format of the kind
VARIANT_BARS: dict[tuple[str, str, str], str] = {
    **{("vision", fmt, "fp32"): "fp32" for fmt in ("onnx", "tflite")},
    **{("vision", "onnx", v): "vision int8" for v in ("int8_static_u8s8", "int8_static_s8s8", "int8_dynamic")},
    **{("vision", "tflite", v): "vision tflite int8" for v in ("int8_static", "int8_dynamic", "int8_weight_only")},
    **{("llm", "", v): "fp32" for v in ("f32", "fp32")},
    **{("llm", "", v): "llm q8" for v in ("f16", "q8_0")},
    ("llm", "", "int8_dynamic"): "llm onnx int8",
    **{("llm", "", v): "llm 4-bit" for v in ("q4_0", "q4_k_m")},
}


def parity_bar_name(kind: str, fmt: str, variant: str, reduced_range: bool = False) -> str:
    """The name of the bar an artifact of ``kind``/``fmt``/``variant`` is held to (``reduced_range``: vision static
    int8 ONNX with 7-bit weights). An unknown variant is a KeyError naming it: no artifact goes without a bar."""
    name = VARIANT_BARS.get((kind, fmt, variant)) or VARIANT_BARS.get((kind, "", variant))
    if name is None:
        raise KeyError(f"no parity bar for {kind} {fmt} {variant} (core/tolerances.py VARIANT_BARS)")
    return "vision int8 reduced-range" if reduced_range and name == "vision int8" and "static" in variant else name


def parity_bar(kind: str, fmt: str, variant: str, reduced_range: bool = False) -> ParityBar:
    """The bar an artifact is held to (:func:`parity_bar_name`)."""
    return PARITY_BARS[parity_bar_name(kind, fmt, variant, reduced_range)]
