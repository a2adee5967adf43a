"""Output parity of an exported artifact against its PyTorch source, and the tolerances we hold them to.

The tolerances live here, once: the report marks each artifact against them and the tests assert them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: fp32 artifacts: largest absolute logit difference allowed vs PyTorch
FP32_MAX_ABS_DIFF = 1e-4
#: quantised artifacts: least fraction of test images whose top-1 class matches PyTorch's
INT8_MIN_TOP1_AGREEMENT = 0.98


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


def compare(reference_logits: np.ndarray, logits: np.ndarray, precision: str, reference: str) -> Parity:
    """Compare ``(N, K)`` logits; fp32 is held to :data:`FP32_MAX_ABS_DIFF`, others to top-1 agreement."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"parity: shapes differ, {reference_logits.shape} vs {logits.shape}")
    diff = np.abs(reference_logits.astype(np.float64) - logits.astype(np.float64))
    agree = float((reference_logits.argmax(1) == logits.argmax(1)).mean())
    if precision == "fp32":
        criterion, ok = f"max_abs_diff <= {FP32_MAX_ABS_DIFF:g}", float(diff.max()) <= FP32_MAX_ABS_DIFF
    else:
        criterion, ok = f"top1_agreement >= {INT8_MIN_TOP1_AGREEMENT:g}", agree >= INT8_MIN_TOP1_AGREEMENT
    return Parity(reference, float(diff.max()), float(diff.mean()), agree, len(logits), criterion, ok)
