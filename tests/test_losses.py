"""Each distillation loss against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.toolchain.vision.distill import losses
from edgedistill.toolchain.vision.distill.features import HintAdapter, to_spatial


def _softmax(v: list[float]) -> list[float]:
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


S, T_ = [1.0, 2.0, 0.5], [3.0, 0.0, 1.0]


def test_soft_kl_direction_and_temperature() -> None:
    temp = 2.0
    p_t = _softmax([x / temp for x in T_])
    p_s = _softmax([x / temp for x in S])
    got = losses.soft_kl(torch.tensor([T_]), torch.tensor([S]), temp).item()
    assert got == pytest.approx(_kl(p_t, p_s), rel=1e-6)
    reverse = _kl(p_s, p_t)
    assert abs(got - reverse) > 1e-3  # the direction matters and we use KL(teacher || student)


def test_response_kd_scales_by_t_squared_and_mixes_alpha() -> None:
    temp, alpha, label = 4.0, 0.7, 2
    kl = _kl(_softmax([x / temp for x in T_]), _softmax([x / temp for x in S]))
    ce = -math.log(_softmax(S)[label])
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    got = losses.response_kd(torch.tensor([S]), torch.tensor([T_]), torch.tensor([label]), temp, alpha).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_response_kd_ignores_unlabelled_in_ce() -> None:
    temp = 2.0
    kl = _kl(_softmax([x / temp for x in T_]), _softmax([x / temp for x in S]))
    got = losses.response_kd(torch.tensor([S]), torch.tensor([T_]), torch.tensor([losses.IGNORE]), temp, 0.5).item()
    assert got == pytest.approx(0.5 * temp**2 * kl, rel=1e-6)  # CE term is 0 with no labelled sample


def test_hint_loss_is_mse() -> None:
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert losses.hint_loss(a, b).item() == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize(("kind", "shape"), [("conv1x1", (2, 192, 8, 8)), ("linear", (2, 192))])
def test_adapter_shapes(kind: str, shape: tuple[int, ...]) -> None:
    adapter = HintAdapter(kind, 16, 192)
    out = adapter(torch.randn(2, 16, 4, 4), (8, 8))
    assert tuple(out.shape) == shape
    assert tuple(adapter.target(torch.randn(2, 192, 8, 8)).shape) == shape


def test_vit_tokens_become_a_spatial_map() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 cls + 4 patches, 3 channels
    m = to_spatial(tokens, prefix_tokens=1)
    assert m.shape == (2, 3, 2, 2)
    assert torch.equal(m[0, :, 0, 1], tokens[0, 2])  # patch 1 (row 0, col 1) keeps its channels


def test_attention_transfer_by_hand() -> None:
    s = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    t = torch.tensor([2.0, 1.0]).view(1, 1, 1, 2)
    # Q_S = [1, 4]/sqrt(17), Q_T = [4, 1]/sqrt(17); ||Q_S - Q_T|| = 3*sqrt(2/17)
    assert losses.attention_transfer(s, t).item() == pytest.approx(3 * math.sqrt(2 / 17), rel=1e-6)


def test_rkd_distance_by_hand() -> None:
    s = torch.tensor([[0.0], [1.0], [3.0]])
    t = torch.tensor([[0.0], [1.0], [2.0]])
    # normalised distances: S (0.5, 1.5, 1) vs T (0.75, 1.5, 0.75); 4 of 9 entries differ by 0.25
    assert losses.rkd_distance(s, t).item() == pytest.approx(4 * 0.5 * 0.25**2 / 9, rel=1e-6)
    assert losses.rkd_distance(s * 10, s).item() == pytest.approx(0.0, abs=1e-7)  # scale invariant


def test_rkd_angle_invariant_to_rotation_and_scale_and_sensitive_to_shape() -> None:
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert losses.rkd_angle(3 * t @ rot, t).item() == pytest.approx(0.0, abs=1e-7)
    cos = losses._angles(t).view(3, 3, 3)
    assert cos[0, 1, 2].item() == pytest.approx(0.0, abs=1e-7)  # right angle at e0
    assert cos[1, 0, 2].item() == pytest.approx(math.cos(math.pi / 4), rel=1e-6)  # 45° at e1
    assert losses.rkd_angle(torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1]]), t).item() > 0.01
