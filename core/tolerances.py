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
#: vision int8 TFLite artifacts (litert int8 kernels): least top-1 agreement with PyTorch
TFLITE_INT8_MIN_TOP1_AGREEMENT = 0.97
#: LLM Q8_0 GGUF: least same-top-token rate vs the PyTorch model it came from
Q8_MIN_SAME_TOP = 0.95
#: LLM dynamic-int8 ONNX decoders: least same-top-token rate vs the PyTorch student
ONNX_INT8_MIN_SAME_TOP = 0.90
#: int8 artifacts on an emulated Arm core vs the host: least top-1 agreement (int8 rounding differs by ISA)
DEVICE_INT8_MIN_TOP1 = 0.95
