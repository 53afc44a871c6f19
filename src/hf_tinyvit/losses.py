"""The one loss router of hf_tinyvit: every training loss, from the models' forward and from
`DistillationTrainer` alike, is chosen here from a distillation mode and a problem type.

This file imports only torch: saved model folders carry a copy of it beside their modeling code
(the model folders hold a link to this file), so it must load where hf_tinyvit is not installed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "PROBLEM_TYPES",
    "DistillationMode",
    "LossOutput",
    "StudentHeads",
    "TeacherTarget",
    "check_alpha",
    "check_label_smoothing",
    "check_problem_type",
    "check_tau",
    "cross_entropy",
    "deit_hard_distillation_loss",
    "deit_soft_distillation_loss",
    "distillation_loss",
    "label_loss",
    "reconcile_setting",
    "student_heads",
    "temper_probabilities",
]

# transformers' names for what `labels` mean; None lets the labels' shape and dtype decide.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class DistillationMode(str, enum.Enum):
    """What a student learns from, the one list every setting is checked against.

    - `none`: labels only (training from scratch or fine-tuning);
    - `hard`: DeiT's hard distillation, `CE(cls, y) / 2 + CE(dist, argmax teacher) / 2`;
    - `soft`: DeiT's soft distillation, `(1 - alpha) CE(cls, y) + alpha tau^2 KL(teacher || student)`;
    - `stored`: TinyViT's fast pretraining distillation, cross-entropy against the teacher
      distribution rebuilt from stored sparse top-k probabilities; no labels needed.
    """

    NONE = "none"
    HARD = "hard"
    SOFT = "soft"
    STORED = "stored"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, what: str = "distillation_type") -> "DistillationMode":
        """The mode named by `value` (a member or its string), or a ValueError naming what is accepted."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            accepted = [m.value for m in cls]
            raise ValueError(f"{what}={value!r} is not a distillation mode; accepted: {accepted}") from None

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]

    @property
    def needs_teacher(self) -> bool:
        return self is not DistillationMode.NONE

    @property
    def needs_labels(self) -> bool:
        """Whether every batch must carry ground-truth labels (`stored` learns from the teacher alone)."""
        return self is not DistillationMode.STORED


# ---- settings shared by configs and training arguments: one check each ----------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_alpha(value: Any, what: str = "alpha") -> float:
    """DeiT's soft-loss weight of the teacher term: a number in [0, 1]."""
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what}={value!r} must lie in [0, 1]")
    return float(value)


def check_tau(value: Any, what: str = "tau") -> float:
    """The soft loss's temperature: a number > 0."""
    if not (_is_number(value) and value > 0.0):
        raise ValueError(f"{what}={value!r} must be > 0")
    return float(value)


def check_label_smoothing(value: Any, what: str = "label_smoothing") -> float:
    """Label smoothing epsilon: a number in [0, 1)."""
    if not (_is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{what}={value!r} must lie in [0, 1)")
    return float(value)


def check_problem_type(value: Any, what: str = "problem_type") -> str | None:
    """transformers' `problem_type`: one of `PROBLEM_TYPES`, or None to let the head decide."""
    if value is not None and value not in PROBLEM_TYPES:
        raise ValueError(f"{what}={value!r}; accepted: {list(PROBLEM_TYPES)} or None")
    return value


def reconcile_setting(config_name: str, config_value: Any, args_name: str, args_value: Any) -> Any:
    """The value of a setting given both by a model config and by training arguments.

    An unset (None) config value takes the arguments' value; two set values must agree, or the
    run would train with one and record the other.
    """
    if config_value is None or config_value == args_value:
        return args_value
    raise ValueError(
        f"the model config has {config_name}={config_value!r} but the training arguments say "
        f"{args_name}={args_value!r}; make them agree (or set the config's {config_name} to None)"
    )


# ---- what the student produced and what the teacher says ------------------------------------------


class StudentHeads(NamedTuple):
    """Class-head and distillation-head logits. A single-head student has the same tensor in both."""

    cls: torch.Tensor
    distillation: torch.Tensor

    @property
    def two_headed(self) -> bool:
        return self.cls is not self.distillation


def student_heads(outputs: Any) -> StudentHeads:
    """The heads of a model output: `cls_logits` / `distillation_logits` when it has both (a DeiT
    with a distillation token), else its `logits` twice (any single-head classifier)."""
    cls_logits = getattr(outputs, "cls_logits", None)
    distillation_logits = getattr(outputs, "distillation_logits", None)
    if cls_logits is not None and distillation_logits is not None:
        return StudentHeads(cls_logits, distillation_logits)
    if isinstance(outputs, torch.Tensor):
        return StudentHeads(outputs, outputs)
    logits = outputs["logits"] if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if logits is None:
        logits = outputs[0]
    return StudentHeads(logits, logits)


@dataclass
class TeacherTarget:
    """A teacher's signal for one batch: its distribution at temperature 1 `(batch, num_labels)`
    (needed by `soft` and `stored`) and its top-1 classes `(batch,)` (needed by `hard`)."""

    probs: torch.Tensor | None = None
    hard_labels: torch.Tensor | None = None

    def __post_init__(self):
        if self.hard_labels is None and self.probs is not None:
            self.hard_labels = self.probs.argmax(dim=-1)

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "TeacherTarget":
        return cls(probs=torch.softmax(logits.float(), dim=-1))


@dataclass
class LossOutput:
    """The loss and its named terms (detached), e.g. `{"cls": ..., "distillation": ...}`."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


# ---- the numerics ------------------------------------------------------------------------------------


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


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The ground-truth loss of one head for transformers' `problem_type`.

    - `single_label_classification`: cross-entropy on class indices `(batch,)` or on target
      distributions `(batch, num_labels)` (Mixup/CutMix mixtures, teacher distributions);
    - `multi_label_classification`: BCE-with-logits on multi-hot targets `(batch, num_labels)`;
    - `regression`: mean squared error (`num_labels == 1` takes labels of shape `(batch,)`).

    With `problem_type=None`, one output means regression and anything else single-label
    classification. Unlike transformers, float labels of shape `(batch, num_labels)` then count as
    target distributions, not multi-hot vectors: Mixup and teacher targets are the common case
    here; set `problem_type="multi_label_classification"` for multi-hot labels. Nor is the choice
    written back to the model's config on the first batch, as transformers' own heads do: the
    same batch always gets the same loss, whatever the model saw before.
    """
    check_problem_type(problem_type)
    if problem_type is None:
        problem_type = "regression" if logits.shape[-1] == 1 else "single_label_classification"
    if problem_type == "single_label_classification":
        return cross_entropy(logits, labels, label_smoothing)
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi-label targets of shape {tuple(labels.shape)} must match logits {tuple(logits.shape)} "
                "(one 0/1 entry per class)"
            )
        targets = labels.float()
        if label_smoothing:
            targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    # regression
    if not labels.is_floating_point() and labels.dtype != torch.long and labels.dtype != torch.int:
        raise TypeError(f"regression labels must be numbers, got dtype {labels.dtype}")
    predictions = logits.float()
    if logits.shape[-1] == 1:
        # one output takes labels of shape (batch,) or (batch, 1), as transformers' heads do
        predictions = predictions.squeeze(-1)
        if labels.dim() == logits.dim() and labels.shape[-1] == 1:
            labels = labels.squeeze(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"regression labels of shape {tuple(labels.shape)} do not fit predictions of shape "
            f"{tuple(predictions.shape)}"
        )
    return F.mse_loss(predictions, labels.float())


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


def _kl_to_teacher(logits: torch.Tensor, teacher_probs: torch.Tensor, tau: float) -> torch.Tensor:
    if teacher_probs.shape != logits.shape:
        raise ValueError(
            f"teacher_probs of shape {tuple(teacher_probs.shape)} must match the student's logits "
            f"{tuple(logits.shape)}"
        )
    student_log_probs = F.log_softmax(logits.float() / tau, dim=-1)
    return F.kl_div(student_log_probs, temper_probabilities(teacher_probs, tau), reduction="batchmean")


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
    check_alpha(alpha)
    kl = _kl_to_teacher(distillation_logits, teacher_probs, tau)
    return (1.0 - alpha) * cross_entropy(cls_logits, labels, label_smoothing) + alpha * tau * tau * kl


# ---- the router ------------------------------------------------------------------------------------


def distillation_loss(
    mode: DistillationMode | str,
    heads: StudentHeads | Any,
    labels: torch.Tensor | None,
    teacher: TeacherTarget | None = None,
    *,
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
    problem_type: str | None = None,
) -> LossOutput:
    """The loss of one batch for `mode`, from the student's heads (or its model output), the labels
    and the teacher's target; returns the loss and its terms.

    Two-headed students (DeiT) put the label term on the class head and the teacher term on the
    distillation head; a single-head student takes both on its one head. Per mode:

    - `none`: the label loss of `problem_type` (both heads of a DeiT, averaged, so that plain
      fine-tuning trains the distillation half of the late fusion too);
    - `hard`: `label_loss(cls, y) / 2 + CE(dist, teacher top-1) / 2`;
    - `soft`: `(1 - alpha) label_loss(cls, y) + alpha tau^2 KL(teacher_tau || dist_tau)`;
    - `stored`: `CE(dist, teacher distribution)`; a DeiT with labels puts them on its class head
      (`1/2 + 1/2`), without labels both heads learn the teacher distribution.

    `label_smoothing` applies to the ground-truth term only.
    """
    mode = DistillationMode.parse(mode)
    if not isinstance(heads, StudentHeads):
        heads = student_heads(heads)
    if mode.needs_labels and labels is None:
        raise ValueError(f"distillation_type={mode.value!r} needs 'labels' in every batch; none were given")
    if mode.needs_teacher:
        if problem_type == "regression" or (problem_type is None and heads.distillation.shape[-1] == 1):
            raise ValueError(
                f"distillation_type={mode.value!r} distils a class distribution; a regression head "
                "(problem_type='regression' or num_labels=1) has none: use distillation_type='none'"
            )
        if teacher is None:
            raise ValueError(
                f"distillation_type={mode.value!r} needs a teacher signal: batches with teacher_topk_values / "
                "teacher_topk_indices (a StoredLogitsDataset) or a live teacher"
            )
        if teacher.probs is not None and teacher.probs.shape != heads.distillation.shape:
            raise ValueError(
                f"teacher_probs of shape {tuple(teacher.probs.shape)} must match the student's logits "
                f"{tuple(heads.distillation.shape)}: the teacher and the student must share their classes"
            )
        needed = "hard_labels" if mode is DistillationMode.HARD else "probs"
        if getattr(teacher, needed) is None:
            what = "top-1 classes" if needed == "hard_labels" else "distribution (teacher_topk_values)"
            raise ValueError(f"distillation_type={mode.value!r} needs the teacher's {what}; the target has none")

    def labelled(logits: torch.Tensor) -> torch.Tensor:
        return label_loss(logits, labels, problem_type, label_smoothing)

    # Parts are named by head for two-headed students and by signal for single-head ones.
    if mode is DistillationMode.NONE:
        if not heads.two_headed:
            loss = labelled(heads.cls)
            return LossOutput(loss, {"labels": loss.detach()})
        cls_term, dist_term = labelled(heads.cls), labelled(heads.distillation)
    elif mode is DistillationMode.HARD:
        cls_term, dist_term = labelled(heads.cls), cross_entropy(heads.distillation, teacher.hard_labels)
    elif mode is DistillationMode.SOFT:
        check_alpha(alpha)
        cls_term, dist_term = labelled(heads.cls), _kl_to_teacher(heads.distillation, teacher.probs, tau)
        loss = (1.0 - alpha) * cls_term + alpha * tau * tau * dist_term
        return LossOutput(loss, _parts(heads, cls_term, dist_term))
    else:  # STORED
        dist_term = cross_entropy(heads.distillation, teacher.probs)
        if not heads.two_headed:
            return LossOutput(dist_term, {"teacher": dist_term.detach()})
        cls_term = labelled(heads.cls) if labels is not None else cross_entropy(heads.cls, teacher.probs)
    return LossOutput(0.5 * cls_term + 0.5 * dist_term, _parts(heads, cls_term, dist_term))


def _parts(heads: StudentHeads, cls_term: torch.Tensor, dist_term: torch.Tensor) -> dict[str, torch.Tensor]:
    if heads.two_headed:
        return {"cls": cls_term.detach(), "distillation": dist_term.detach()}
    return {"labels": cls_term.detach(), "teacher": dist_term.detach()}
