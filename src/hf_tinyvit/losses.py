"""Losses shared by the models and the trainer: cross-entropy on hard or soft targets and
DeiT's hard and soft distillation losses, as small pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "cross_entropy",
    "temper_probabilities",
    "deit_hard_distillation_loss",
    "deit_soft_distillation_loss",
]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy against class indices `(batch,)` or target distributions `(batch, num_labels)`.

    Soft targets are what Mixup/CutMix labels and rebuilt teacher distributions look like; torch's
    `cross_entropy` already takes both forms, this only checks which one was given.
    """
    if targets.dim() == logits.dim() and targets.shape == logits.shape:
        if not targets.is_floating_point():
            raise TypeError(f"soft targets must be floating point, got dtype {targets.dtype}")
        return F.cross_entropy(logits.float(), targets.float(), label_smoothing=label_smoothing)
    if targets.dim() == logits.dim() - 1 and not targets.is_floating_point():
        num_labels = logits.shape[-1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_labels):
            bad = targets[(targets < 0) | (targets >= num_labels)][0].item()
            raise ValueError(f"label {bad} is out of range: labels must lie in [0, {num_labels - 1}]")
        return F.cross_entropy(logits.float(), targets.long(), label_smoothing=label_smoothing)
    raise ValueError(
        f"targets of shape {tuple(targets.shape)} and dtype {targets.dtype} do not fit logits of shape "
        f"{tuple(logits.shape)}: pass integer class indices of shape {tuple(logits.shape[:-1])} or a "
        f"distribution of shape {tuple(logits.shape)}"
    )


def temper_probabilities(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Return `softmax(z / tau)` given `probs = softmax(z)`, as `probs ** (1 / tau)` renormalised.

    This is exact for a full teacher distribution. For a distribution rebuilt from stored top-k
    probabilities the leftover mass was spread evenly over the other classes, so their tempered
    values are only an approximation when `tau != 1` (the top-k entries keep their exact ratios).
    """
    if tau <= 0:
        raise ValueError(f"tau={tau} must be > 0")
    probs = probs.float()
    if tau == 1.0:
        return probs
    log_probs = torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny)) / tau
    return torch.softmax(log_probs, dim=-1)


def deit_hard_distillation_loss(
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_labels: torch.Tensor,
    label_smoothing: float = 0.0,
    teacher_label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DeiT's hard distillation: `CE(cls, y) / 2 + CE(dist, y_t) / 2` with `y_t` the teacher's top-1 class.

    A single-head student passes the same logits twice.
    """
    return 0.5 * cross_entropy(cls_logits, labels, label_smoothing) + 0.5 * cross_entropy(
        distillation_logits, teacher_labels, teacher_label_smoothing
    )


def deit_soft_distillation_loss(
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DeiT's soft distillation: `(1 - alpha) CE(cls, y) + alpha tau^2 KL(teacher_tau || student_tau)`.

    `teacher_probs` is the teacher's distribution at temperature 1 (a softmax, or one rebuilt from
    stored top-k probabilities); it is tempered here. The KL term is averaged over the batch, as
    the paper's formula reads; facebookresearch/deit divides its summed KL by batch * num_labels
    instead, which makes the same `alpha` weigh the teacher num_labels times less.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    if teacher_probs.shape != distillation_logits.shape:
        raise ValueError(
            f"teacher_probs of shape {tuple(teacher_probs.shape)} must match the student's logits "
            f"{tuple(distillation_logits.shape)}"
        )
    student_log_probs = F.log_softmax(distillation_logits.float() / tau, dim=-1)
    teacher = temper_probabilities(teacher_probs, tau)
    kl = F.kl_div(student_log_probs, teacher, reduction="batchmean")
    return (1.0 - alpha) * cross_entropy(cls_logits, labels, label_smoothing) + alpha * tau * tau * kl
