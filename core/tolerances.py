"""One home for the bars every artifact is held to (the report marks artifacts against them; the tests assert
them). Each says what it bounds and why it is this size."""

from __future__ import annotations

from typing import Any

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
#: int8 artifacts on an emulated Arm core vs the host: least top-1 agreement (int8 rounding differs by ISA)
DEVICE_INT8_MIN_TOP1 = 0.95
#: LLM artifacts' long-sequence logit check: at least this many positions, past a recipe's max_length (rope
#: scaling and position handling differ between converters and runtimes, and the error grows with position)
PARITY_MIN_POSITIONS = 512
