import math

import pytest
import torch

from hf_tinyvit.losses import (
    cross_entropy,
    deit_hard_distillation_loss,
    deit_soft_distillation_loss,
    temper_probabilities,
)


def _hand_ce(logits, target_probs):
    return -(target_probs * torch.log_softmax(logits, -1)).sum(-1).mean()


def test_cross_entropy_accepts_indices_and_distributions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 3, 1, 4])
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    assert torch.allclose(cross_entropy(logits, labels), _hand_ce(logits, onehot), atol=1e-6)
    soft = torch.softmax(torch.randn(4, 5, generator=g), -1)
    assert torch.allclose(cross_entropy(logits, soft), _hand_ce(logits, soft), atol=1e-6)


def test_cross_entropy_rejects_out_of_range_and_misshaped_targets():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"label 3 is out of range.*\[0, 2\]"):
        cross_entropy(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="do not fit logits"):
        cross_entropy(logits, torch.zeros(2, 4))


def test_temper_is_exact_for_full_softmax():
    z = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    for tau in (0.5, 1.0, 3.0):
        assert torch.allclose(temper_probabilities(torch.softmax(z, -1), tau), torch.softmax(z / tau, -1), atol=1e-6)
    with pytest.raises(ValueError, match="tau=0"):
        temper_probabilities(torch.softmax(z, -1), 0)


def test_hard_distillation_matches_hand_computation():
    g = torch.Generator().manual_seed(2)
    cls, dist = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    teacher = torch.randn(6, 4, generator=g)
    yt = teacher.argmax(-1)
    expected = 0.5 * _hand_ce(cls, torch.eye(4)[y]) + 0.5 * _hand_ce(dist, torch.eye(4)[yt])
    assert torch.allclose(deit_hard_distillation_loss(cls, dist, y, yt), expected, atol=1e-6)


def test_soft_distillation_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    cls, dist = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    y = torch.randint(0, 6, (5,), generator=g)
    zt = torch.randn(5, 6, generator=g)
    alpha, tau = 0.3, 2.0
    pt, log_ps = torch.softmax(zt / tau, -1), torch.log_softmax(dist / tau, -1)
    kl = (pt * (torch.log(pt) - log_ps)).sum(-1).mean()
    expected = (1 - alpha) * _hand_ce(cls, torch.eye(6)[y]) + alpha * tau**2 * kl
    got = deit_soft_distillation_loss(cls, dist, y, torch.softmax(zt, -1), alpha=alpha, tau=tau)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="alpha=1.5"):
        deit_soft_distillation_loss(cls, dist, y, torch.softmax(zt, -1), alpha=1.5)
