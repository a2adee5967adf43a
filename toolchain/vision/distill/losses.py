"""Distillation losses. Shapes: ``B`` batch, ``K`` classes, ``C`` channels, ``H×W`` spatial, ``D`` embedding.

Every KL-type loss goes through :func:`edgedistill.toolchain.divergence.soft_kl`, the one helper the LLM losses
share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgedistill.toolchain.divergence import soft_kl
from edgedistill.toolchain.training import IGNORE_INDEX

#: label of an unlabelled sample (transfer set): excluded from CE, still distilled
IGNORE = IGNORE_INDEX


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over samples whose label is not :data:`IGNORE` (0 when the batch has none)."""
    if (labels != IGNORE).any():
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return logits.sum() * 0.0


def response_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    ``alpha * T^2 * KL(softmax(z_T/T) || softmax(z_S/T)) + (1 - alpha) * CE(z_S, y)``; the T² keeps the soft
    gradients' scale independent of T. KL is averaged over all ``B`` samples, CE over labelled ones.

    Args:
        student_logits: ``(B, K)``. teacher_logits: ``(B, K)``. labels: ``(B,)`` with :data:`IGNORE` for unlabelled.
    """
    kd = soft_kl(teacher_logits, student_logits, temperature).mean() * temperature**2
    return alpha * kd + (1.0 - alpha) * masked_ce(student_logits, labels)


def hint_loss(adapted_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): MSE between the adapted student feature and the teacher's, same shape."""
    return F.mse_loss(adapted_student, teacher)


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a ``(B, C, H, W)`` map: ``mean_c |F|^p`` flattened and L2-normalised, ``(B, H*W)``."""
    return F.normalize(feat.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention": ``mean_b ||Q_S - Q_T||_2``.

    The student map is resized to the teacher's ``H×W`` first; channel counts may differ.
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return (attention_map(student, p) - attention_map(teacher, p)).norm(dim=1).mean()


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off_diag = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diag].mean().clamp_min(1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019, "Relational Knowledge Distillation": distance-wise loss on ``(B, D)`` embeddings.

    Pairwise Euclidean distances, each set divided by its mean off-diagonal distance, compared by smooth L1.
    """
    with torch.no_grad():
        t = _normalised_distances(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, D): unit vectors e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of the angle at i between j and k


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019: angle-wise loss, smooth L1 between the cosines of all triplet angles."""
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)


def self_distill_exit(exit_logits: torch.Tensor, final_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, weight: float, ce_weight: float) -> torch.Tensor:
    """Zhang et al. 2019, "Be Your Own Teacher": one auxiliary exit learns from the network's own deepest head.

    ``ce_weight * CE(z_exit, y) + weight * T^2 * KL(softmax(z_final/T) || softmax(z_exit/T))``. The final logits
    are the target and are detached: the deeper head teaches, it is not pulled towards the shallower one.

    Args:
        exit_logits: ``(B, K)``. final_logits: ``(B, K)``. labels: ``(B,)`` with :data:`IGNORE` for unlabelled.
    """
    kd = soft_kl(final_logits.detach(), exit_logits, temperature).mean() * temperature**2
    return weight * kd + ce_weight * masked_ce(exit_logits, labels)


def self_distill_feature(adapted_exit: torch.Tensor, final_embedding: torch.Tensor) -> torch.Tensor:
    """BYOT's feature term: MSE between an exit's adapted embedding ``(B, D)`` and the deepest embedding ``(B, D)``
    (detached, the target)."""
    return F.mse_loss(adapted_exit, final_embedding.detach())
