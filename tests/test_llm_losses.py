"""LLM KD losses against hand-computed values: both KL directions, JSD endpoints, top-k with remainder mass,
temperature, CE mixing and chunking."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.toolchain.llm.distill.losses import (
    TeacherSlice,
    chunked_kd_loss,
    divergence,
    kd_token_loss,
    topk_bins,
)


def _lp(*p: float) -> torch.Tensor:
    return torch.tensor([p], dtype=torch.float64).log()


P, Q = _lp(0.5, 0.5), _lp(0.25, 0.75)  # teacher, student


def test_forward_and_reverse_kl_by_hand() -> None:
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # = 0.5 ln(4/3) = 0.143841
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # = 0.130812
    assert divergence(P, Q, "forward_kl").item() == pytest.approx(fkl, abs=1e-12)
    assert divergence(P, Q, "reverse_kl").item() == pytest.approx(rkl, abs=1e-12)
    assert fkl == pytest.approx(0.143841, abs=1e-6) and rkl == pytest.approx(0.130812, abs=1e-6)


def test_jsd_midpoint_and_endpoints() -> None:
    m = (0.375, 0.625)
    kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_qm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    assert divergence(P, Q, "jsd", 0.5).item() == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, abs=1e-12)
    assert divergence(P, Q, "jsd", 0.5).item() == pytest.approx(0.0338215, abs=1e-6)
    # β = 0 / 1 are forward / reverse KL; the β-JSD approaches them as β·KL and (1-β)·KL
    assert divergence(P, Q, "jsd", 0.0).item() == divergence(P, Q, "forward_kl").item()
    assert divergence(P, Q, "jsd", 1.0).item() == divergence(P, Q, "reverse_kl").item()
    eps = 1e-5
    assert divergence(P, Q, "jsd", eps).item() / eps == pytest.approx(divergence(P, Q, "forward_kl").item(), rel=1e-3)
    assert divergence(P, Q, "jsd", 1 - eps).item() / eps == pytest.approx(
        divergence(P, Q, "reverse_kl").item(), rel=1e-3)
    assert divergence(P, P, "jsd", 0.3).item() == pytest.approx(0.0, abs=1e-12)


def test_topk_with_remainder_mass_by_hand() -> None:
    t = torch.tensor([[0.6, 0.3, 0.06, 0.04]], dtype=torch.float64)
    s = torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=torch.float64)
    top_p, top_i = t.topk(2)
    tb, sb = topk_bins(top_p.log(), top_i, s.log())
    assert tb.exp().tolist()[0] == pytest.approx([0.6, 0.3, 0.1])  # remainder 1 - 0.9
    assert sb.exp().tolist()[0] == pytest.approx([0.5, 0.2, 0.3])  # student mass outside the teacher's top-2
    hand = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / 0.3)
    assert divergence(tb, sb, "forward_kl").item() == pytest.approx(hand, abs=1e-6)
    hand_r = 0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.3) + 0.3 * math.log(0.3 / 0.1)
    assert divergence(tb, sb, "reverse_kl").item() == pytest.approx(hand_r, abs=1e-6)
    # k = V: the remainder is empty and the top-k loss is the full KL
    full_p, full_i = t.topk(4)
    tb4, sb4 = topk_bins(full_p.log(), full_i, s.log())
    assert divergence(tb4, sb4, "forward_kl").item() == pytest.approx(divergence(t.log(), s.log(), "forward_kl").item(),
                                                                      abs=1e-9)


def test_temperature_and_ce_mixing() -> None:
    torch.manual_seed(0)
    s, t, y, temp = torch.randn(5, 11), torch.randn(5, 11), torch.randint(0, 11, (5,)), 2.0
    kl = sum(
        (torch.softmax(t[i] / temp, -1) * (torch.log_softmax(t[i] / temp, -1) - torch.log_softmax(s[i] / temp, -1))
         ).sum() for i in range(5))
    ce = torch.nn.functional.cross_entropy(s, y, reduction="sum")
    got = kd_token_loss(s, TeacherSlice(logits=t), y, "forward_kl", 0.5, temp, alpha=0.7)
    assert got.item() == pytest.approx((0.7 * temp**2 * kl + 0.3 * ce).item(), rel=1e-5)


@pytest.mark.parametrize("top_k", [None, 3])
def test_chunked_equals_unchunked_with_gradients(top_k: int | None) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False)
    h = torch.randn(10, 8, requires_grad=True)
    y = torch.randint(0, 13, (10,))
    t_logits = torch.randn(10, 13)
    t_lp = torch.log_softmax(t_logits, -1)
    vals, idx = t_lp.topk(top_k) if top_k else (None, None)

    def teacher(s: int, e: int) -> TeacherSlice:
        return TeacherSlice(logits=t_logits[s:e]) if top_k is None else TeacherSlice(None, vals[s:e], idx[s:e])

    grads = []
    for chunk in (10, 3):
        h.grad, head.weight.grad = None, None
        loss = chunked_kd_loss(h, head, y, teacher, "jsd", 0.4, 1.0, 0.5, chunk)
        loss.backward()
        grads.append((loss.item(), h.grad.clone(), head.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6) and torch.allclose(grads[0][2], grads[1][2], atol=1e-6)
