"""Output parity of an exported artifact against its PyTorch source, and the tolerances we hold them to.

The tolerances live in :mod:`edgedistill.core.tolerances`, once: the report marks each artifact against them and
the tests assert them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgedistill.core.tolerances import (  # noqa: F401  (re-exported: the bars this module applies)
    FP32_ATOL,
    FP32_CRITERION,
    FP32_MAX_ABS_DIFF,
    FP32_RTOL,
    INT8_MIN_TOP1_AGREEMENT,
    INT8_REDUCED_RANGE_MIN_TOP1_AGREEMENT,
    TFLITE_INT8_MIN_TOP1_AGREEMENT,
    fp32_ok,
)


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
    """Compare ``(N, K)`` logits; fp32 is held to :func:`~edgedistill.core.tolerances.fp32_ok`, others to
    ``min_top1`` agreement (:data:`INT8_MIN_TOP1_AGREEMENT`, or :data:`TFLITE_INT8_MIN_TOP1_AGREEMENT` for TFLite)."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"parity: shapes differ, {reference_logits.shape} vs {logits.shape}")
    diff = np.abs(reference_logits.astype(np.float64) - logits.astype(np.float64))
    agree = float((reference_logits.argmax(1) == logits.argmax(1)).mean())
    if precision == "fp32":
        criterion, ok = FP32_CRITERION, fp32_ok(reference_logits, logits)
    else:
        criterion, ok = f"top1_agreement >= {min_top1:g}", agree >= min_top1
    return Parity(reference, float(diff.max()), float(diff.mean()), agree, len(logits), criterion, ok)
