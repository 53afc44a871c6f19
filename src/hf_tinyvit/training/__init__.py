"""Training: `DistillationTrainer` and its arguments, for fast pretraining distillation from stored teacher
logits, DeiT's hard/soft distillation and plain fine-tuning, with metrics, callbacks and model cards."""

from .arguments import DistillationTrainingArguments
from .callbacks import ReplayEpochCallback
from .cards import distillation_summary, write_trainer_model_card
from .metrics import (
    accuracy_metric,
    classification_metrics,
    compute_classification_metrics,
)
from .trainer import (
    PINNED_PRIVATE_HOOKS,
    DistillationTrainer,
    layer_decay_parameter_groups,
)

__all__ = [
    "PINNED_PRIVATE_HOOKS",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "ReplayEpochCallback",
    "accuracy_metric",
    "classification_metrics",
    "compute_classification_metrics",
    "distillation_summary",
    "layer_decay_parameter_groups",
    "write_trainer_model_card",
]
