"""Output parity of an exported artifact against its PyTorch source, and the tolerances we hold them to.

The tolerances live here, once: the report marks each artifact against them and the tests assert them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: fp32 artifacts, numpy.allclose-style: every |Δ| <= FP32_ATOL + FP32_RTOL·|reference logit|. The relative
#: term matters for trained models with large logits: runtimes accumulate float32 sums in another order (ORT's
#: blocked NCHWc convs vs oneDNN), and that rounding grows with the values (seen: 1.07e-4 on logits ~|20|).
FP32_ATOL = 1e-4
FP32_RTOL = 1e-5
FP32_MAX_ABS_DIFF = FP32_ATOL  # the bar for logits of magnitude <= 1
#: quantised artifacts: least fraction of test images whose top-1 class matches PyTorch's
INT8_MIN_TOP1_AGREEMENT = 0.98
#: quantised TFLite artifacts (litert int8 kernels; issue 4's bar): least top-1 agreement with PyTorch
TFLITE_INT8_MIN_TOP1_AGREEMENT = 0.97


@dataclass
class Parity:
    reference: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    n: int
    criterion: str
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(reference_logits: np.ndarray, logits: np.ndarray, precision: str, reference: str,
            min_top1: float = INT8_MIN_TOP1_AGREEMENT) -> Parity:
    """Compare ``(N, K)`` logits; fp32 is held to :data:`FP32_ATOL` + :data:`FP32_RTOL`·|ref|, others to
    ``min_top1`` agreement (:data:`INT8_MIN_TOP1_AGREEMENT`, or :data:`TFLITE_INT8_MIN_TOP1_AGREEMENT` for TFLite)."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"parity: shapes differ, {reference_logits.shape} vs {logits.shape}")
    diff = np.abs(reference_logits.astype(np.float64) - logits.astype(np.float64))
    agree = float((reference_logits.argmax(1) == logits.argmax(1)).mean())
    if precision == "fp32":
        bound = FP32_ATOL + FP32_RTOL * np.abs(reference_logits.astype(np.float64))
        criterion, ok = f"|Δ| <= {FP32_ATOL:g} + {FP32_RTOL:g}·|logit|", bool((diff <= bound).all())
    else:
        criterion, ok = f"top1_agreement >= {min_top1:g}", agree >= min_top1
    return Parity(reference, float(diff.max()), float(diff.mean()), agree, len(logits), criterion, ok)
