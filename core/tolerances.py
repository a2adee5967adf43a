"""One home for the bars every artifact is held to (the report marks artifacts against them; the tests assert
them). Each says what it bounds and why it is this size."""

from __future__ import annotations

#: fp32 artifacts, numpy.allclose-style: every |Δ| <= FP32_ATOL + FP32_RTOL·|reference logit|. The relative
#: term matters for trained models with large logits: runtimes accumulate float32 sums in another order (ORT's
#: blocked NCHWc convs vs oneDNN), and that rounding grows with the values (seen: 1.07e-4 on logits ~|20|).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-5
#: the same bar for logits of magnitude <= 1, and for an fp32 artifact's logits on another device vs the host
FP32_MAX_ABS_DIFF = FP32_ATOL
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
