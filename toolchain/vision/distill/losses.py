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


def ensemble_logits(member_logits: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """The ensemble target of several teachers as logits at temperature ``T`` (You et al. 2017, "Learning from
    Multiple Teacher Networks"; the averaged soft targets of Hinton et al. 2015).

    Probabilities are averaged, not logits, each teacher softened at ``T`` first:
    ``p_ens = sum_m w_m softmax(z_m / T)``. Returned as ``z_ens = T * log p_ens``, so that
    ``softmax(z_ens / T) == p_ens`` exactly and :func:`response_kd` uses it unchanged (only at this same ``T``).

    Args:
        member_logits: ``(B, M, K)``, one row of logits per teacher. weights: ``(M,)``, positive, summing to 1.
    Returns:
        ``(B, K)``.
    """
    logp = F.log_softmax(member_logits.float() / temperature, dim=-1) + weights.log().view(1, -1, 1)
    return temperature * torch.logsumexp(logp, dim=1)


def mutual_kl(logits: torch.Tensor, peer_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
              weight: float) -> torch.Tensor:
    """One side of deep mutual learning (Zhang et al. 2018, "Deep Mutual Learning", eq. 1-2).

    ``CE(z, y) + weight * T^2 * KL(softmax(z_peer/T) || softmax(z/T))``; the peer's logits are detached (each
    model learns from the other's current outputs, never through them). CE over labelled samples only.

    Args:
        logits: ``(B, K)`` of the model being trained. peer_logits: ``(B, K)``. labels: ``(B,)`` (:data:`IGNORE`
        for unlabelled).
    """
    kl = soft_kl(peer_logits.detach(), logits, temperature).mean() * temperature**2
    return masked_ce(logits, labels) + weight * kl


def factor_transfer(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer", eq. 3 with p=1.

    ``mean_b || F_T/||F_T||_2 - F_S/||F_S||_2 ||_1`` over factors flattened per sample; the teacher's factor is a
    fixed target. (The authors' code averages over elements too, i.e. divides by ``C*H*W``, with beta=500.)

    Args:
        student_factor: ``(B, C, H, W)`` from the translator. teacher_factor: ``(B, C, H, W)`` from the
        paraphraser's encoder (same shape).
    """
    s = F.normalize(student_factor.flatten(1), dim=1)
    t = F.normalize(teacher_factor.detach().flatten(1), dim=1)
    return (s - t).abs().sum(1).mean()


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
