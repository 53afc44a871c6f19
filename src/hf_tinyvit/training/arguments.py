"""`DistillationTrainingArguments`: `TrainingArguments` plus the distillation settings (mode, teacher
source, DeiT's alpha and tau, augmentation mixing, layer-wise lr decay, frozen BatchNorm), all checked
before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..losses import DistillationMode, check_alpha, check_label_smoothing, check_tau

__all__ = ["DistillationTrainingArguments"]


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` for `DistillationTrainer`.

    Label smoothing reuses the parent's `label_smoothing_factor`: it already means "epsilon applied
    to the ground-truth targets", which is exactly what DeiT's recipe smooths (Mixup/CutMix targets
    included); a second field would only let the two disagree.
    """

    distillation_type: str = field(
        default="none",
        metadata={
            "help": "none: plain training or fine-tuning on labels. hard / soft: DeiT's hard or soft distillation "
            "from a live `teacher` or a `teacher_logits` store. stored: TinyViT's fast pretraining distillation, "
            "cross-entropy against the stored sparse teacher distribution of the replayed view (no labels needed).",
            "choices": DistillationMode.values(),
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the teacher term in DeiT's soft loss, in [0, 1]."},
    )
    tau: float = field(
        default=1.0,
        metadata={"help": "Temperature of DeiT's soft loss, > 0."},
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Live teacher for hard/soft distillation: a transformers model folder, a Hub id, or "
            "`timm:<model_name>` (with --teacher_weights). Loaded with hf_tinyvit.load_teacher."
        },
    )
    teacher_weights: str | None = field(
        default=None,
        metadata={"help": "Weights file for a `timm:<name>` teacher (safetensors, or a .pth state dict)."},
    )
    teacher_logits: str | None = field(
        default=None,
        metadata={
            "help": "Stored teacher logits (a TeacherLogitStore folder or Hub dataset id). Required for "
            "distillation_type=stored; for hard/soft it replaces a live teacher."
        },
    )
    mixup_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Mixup beta-distribution alpha for online runs, >= 0; 0 disables it, unset keeps the "
            "augmentation preset's value."
        },
    )
    cutmix_alpha: float | None = field(
        default=None,
        metadata={
            "help": "CutMix beta-distribution alpha for online runs, >= 0; 0 disables it, unset keeps the "
            "augmentation preset's value."
        },
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay in (0, 1]: a layer at depth d of L gets lr * decay**(L - 1 - d), "
            "the head keeps lr. 1 disables it. Needs a model with get_num_layers_for_lr_decay / "
            "get_layer_id_for_lr_decay (TinyViT, DeiT-distilled)."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Drop batch entries the model's forward does not take (transformers' default is True). Off "
            "here: the teacher targets (teacher_topk_values, teacher_topk_indices) and sample ids are not forward "
            "arguments but the loss needs them; a distillation run refuses True."
        },
    )
    freeze_batchnorm: bool = field(
        default=False,
        metadata={
            "help": "Keep BatchNorm layers in eval mode (running statistics frozen, affine weights still trained), "
            "as TinyViT's 21k->1k and higher-resolution fine-tuning recipes do."
        },
    )

    def __post_init__(self):
        # Our checks first: they are cheap and must fail before the parent sets up devices.
        self._check_distillation_fields()
        super().__post_init__()

    def _check_training_length_and_rates(self) -> None:
        """Parent fields transformers accepts but that train nothing or train on NaN: refused by name."""
        epochs, steps = self.num_train_epochs, self.max_steps
        if not (isinstance(steps, int) and steps > 0):
            if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
                raise ValueError(
                    f"num_train_epochs={epochs!r} with max_steps={steps!r} trains nothing; pass num_train_epochs > 0 "
                    "(a finite number) or max_steps > 0"
                )
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if not (isinstance(self.max_grad_norm, (int, float)) and not math.isnan(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be a number (<= 0 disables clipping)")

    def _check_distillation_fields(self) -> None:
        # The same checks as the model configs' (hf_tinyvit.losses), so a value is valid in both or in neither.
        self._check_training_length_and_rates()
        self.distillation_type = DistillationMode.parse(self.distillation_type).value
        check_alpha(self.alpha)
        check_tau(self.tau)
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name}={value} must be >= 0 (0 disables it; leave it unset for the preset's value)")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay={self.layer_lr_decay} must lie in (0, 1] (1 disables it)")
        check_label_smoothing(self.label_smoothing_factor, "label_smoothing_factor")

        mode = self.distillation_type
        if self.teacher_weights is not None and self.teacher is None:
            raise ValueError(
                f"teacher_weights={self.teacher_weights!r} needs a teacher: pass --teacher timm:<model_name>"
            )
        if mode == "none" and (self.teacher is not None or self.teacher_logits is not None):
            given = "teacher" if self.teacher is not None else "teacher_logits"
            raise ValueError(
                f"distillation_type='none' trains on labels only, but {given}={getattr(self, given)!r} was given; "
                "pick distillation_type hard, soft or stored, or drop the teacher"
            )
        if mode == "stored":
            if self.teacher_logits is None:
                raise ValueError("distillation_type='stored' needs teacher_logits (a TeacherLogitStore path or Hub id)")
            if self.teacher is not None:
                raise ValueError(
                    f"distillation_type='stored' runs no teacher, but teacher={self.teacher!r} was given; "
                    "drop it, or use distillation_type hard/soft for a live teacher"
                )
        if self.teacher_logits is not None and (self.mixup_alpha is not None or self.cutmix_alpha is not None):
            raise ValueError(
                f"mixup_alpha={self.mixup_alpha} / cutmix_alpha={self.cutmix_alpha} apply to online runs only: "
                "with teacher_logits the views, Mixup/CutMix included, are replayed from the store's recipe"
            )
        if mode in ("hard", "soft") and self.teacher is not None and self.teacher_logits is not None:
            raise ValueError(
                f"distillation_type={mode!r} takes one teacher source, got both teacher={self.teacher!r} and "
                f"teacher_logits={self.teacher_logits!r}"
            )
        if mode != "none" and self.remove_unused_columns:
            raise ValueError(
                f"remove_unused_columns=True would drop the teacher targets and sample ids that "
                f"distillation_type={mode!r} reads (they are not arguments of the model's forward); leave it False"
            )
        # hard/soft with neither source is checked by DistillationTrainer, which may also get a teacher module.
