"""The one loss router (`hf_tinyvit.losses`): its numerics against hand-written formulas from the papers
(shared/BRIEF.md), per distillation mode and problem type, and the single set of modes."""

import math

import pytest
import torch

from hf_tinyvit.losses import (
    DistillationMode,
    StudentHeads,
    TeacherTarget,
    cross_entropy,
    deit_hard_distillation_loss,
    deit_soft_distillation_loss,
    distillation_loss,
    label_loss,
    reconcile_setting,
    student_heads,
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


# ---- the one router: each mode against the paper's formula, computed by hand ------------------------


def _batch(seed=0, n=6, c=5):
    g = torch.Generator().manual_seed(seed)
    cls, dist = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    teacher_logits = torch.randn(n, c, generator=g)
    return cls, dist, labels, teacher_logits


def _smoothed(labels, c, eps):
    return torch.eye(c)[labels] * (1 - eps) + eps / c


def test_none_is_the_label_loss_and_averages_two_heads():
    cls, dist, y, _ = _batch()
    one = distillation_loss("none", cls, y, label_smoothing=0.1)
    assert torch.allclose(one.loss, _hand_ce(cls, _smoothed(y, 5, 0.1)), atol=1e-6)
    two = distillation_loss("none", StudentHeads(cls, dist), y, label_smoothing=0.1)
    expected = 0.5 * _hand_ce(cls, _smoothed(y, 5, 0.1)) + 0.5 * _hand_ce(dist, _smoothed(y, 5, 0.1))
    assert torch.allclose(two.loss, expected, atol=1e-6)
    assert set(two.parts) == {"cls", "distillation"}


def test_hard_is_half_labels_half_teacher_argmax():
    cls, dist, y, zt = _batch(1)
    teacher = TeacherTarget.from_logits(zt)
    out = distillation_loss(DistillationMode.HARD, StudentHeads(cls, dist), y, teacher, label_smoothing=0.1)
    expected = 0.5 * _hand_ce(cls, _smoothed(y, 5, 0.1)) + 0.5 * _hand_ce(dist, torch.eye(5)[zt.argmax(-1)])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # a single-head student takes both terms on its one head
    single = distillation_loss("hard", cls, y, teacher)
    assert torch.allclose(single.loss, 0.5 * _hand_ce(cls, torch.eye(5)[y]) + 0.5 * _hand_ce(cls, torch.eye(5)[zt.argmax(-1)]))


def test_soft_is_weighted_ce_plus_tau_squared_kl():
    cls, dist, y, zt = _batch(2)
    alpha, tau = 0.3, 2.0
    out = distillation_loss("soft", StudentHeads(cls, dist), y, TeacherTarget.from_logits(zt), alpha=alpha, tau=tau)
    pt, log_ps = torch.softmax(zt / tau, -1), torch.log_softmax(dist / tau, -1)
    kl = (pt * (torch.log(pt) - log_ps)).sum(-1).mean()
    expected = (1 - alpha) * _hand_ce(cls, torch.eye(5)[y]) + alpha * tau**2 * kl
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)


def test_stored_is_ce_against_the_teacher_distribution():
    cls, dist, y, zt = _batch(3)
    probs = torch.softmax(zt, -1)
    teacher = TeacherTarget(probs=probs)
    assert torch.allclose(distillation_loss("stored", cls, None, teacher).loss, _hand_ce(cls, probs), atol=1e-6)
    heads = StudentHeads(cls, dist)
    with_labels = distillation_loss("stored", heads, y, teacher, label_smoothing=0.1).loss
    assert torch.allclose(with_labels, 0.5 * _hand_ce(cls, _smoothed(y, 5, 0.1)) + 0.5 * _hand_ce(dist, probs), atol=1e-6)
    without = distillation_loss("stored", heads, None, teacher).loss
    assert torch.allclose(without, 0.5 * _hand_ce(cls, probs) + 0.5 * _hand_ce(dist, probs), atol=1e-6)


def test_problem_types_pick_their_losses():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 3, generator=g)
    multi_hot = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    bce = -(multi_hot * torch.nn.functional.logsigmoid(logits) + (1 - multi_hot) * torch.nn.functional.logsigmoid(-logits)).mean()
    assert torch.allclose(label_loss(logits, multi_hot, "multi_label_classification"), bce, atol=1e-6)
    targets = torch.randn(4, generator=g)
    prediction = torch.randn(4, 1, generator=g)
    assert torch.allclose(label_loss(prediction, targets), ((prediction[:, 0] - targets) ** 2).mean())
    assert torch.allclose(label_loss(prediction, targets, "regression"), ((prediction[:, 0] - targets) ** 2).mean())
    with pytest.raises(ValueError, match="problem_type='ordinal'"):
        label_loss(logits, multi_hot, "ordinal")
    with pytest.raises(ValueError, match="regression head"):
        distillation_loss("stored", prediction, None, TeacherTarget(probs=torch.ones(4, 1)))


def test_router_refuses_what_a_mode_lacks_and_unknown_modes():
    cls, dist, y, zt = _batch(5)
    with pytest.raises(ValueError, match="distillation_type='hard' needs 'labels'"):
        distillation_loss("hard", cls, None, TeacherTarget.from_logits(zt))
    with pytest.raises(ValueError, match="distillation_type='soft' needs a teacher signal"):
        distillation_loss("soft", cls, y, None)
    with pytest.raises(ValueError, match="needs the teacher's distribution"):
        distillation_loss("stored", cls, None, TeacherTarget(hard_labels=y))
    with pytest.raises(ValueError, match=r"distillation_type='feature' is not a distillation mode; accepted: \['none', 'hard', 'soft', 'stored'\]"):
        distillation_loss("feature", cls, y)


def test_one_set_of_modes_for_configs_and_arguments():
    from hf_tinyvit import DeiTDistilledConfig
    from hf_tinyvit.training import DistillationTrainingArguments

    choices = {f.name: f.metadata.get("choices") for f in __import__("dataclasses").fields(DistillationTrainingArguments)}
    assert choices["distillation_type"] == [m.value for m in DistillationMode]
    for mode in DistillationMode:
        assert DeiTDistilledConfig(distillation_type=mode.value).distillation_type == mode.value
    with pytest.raises(Exception, match="distillation_type='feature' is not a distillation mode"):
        DeiTDistilledConfig(distillation_type="feature")


def test_reconcile_names_both_values():
    assert reconcile_setting("distillation_type", None, "distillation_type", "hard") == "hard"
    assert reconcile_setting("distillation_tau", 2.0, "tau", 2.0) == 2.0
    with pytest.raises(ValueError, match=r"config has distillation_type='soft' but the training arguments say distillation_type='hard'"):
        reconcile_setting("distillation_type", "soft", "distillation_type", "hard")


def test_student_heads_of_model_outputs():
    logits = torch.zeros(2, 3)
    assert student_heads({"logits": logits}).two_headed is False
    class Two:
        cls_logits, distillation_logits = torch.zeros(2, 3), torch.ones(2, 3)
    assert student_heads(Two()).two_headed
