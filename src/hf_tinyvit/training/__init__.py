"""Training: `DistillationTrainer` and its arguments, for fast pretraining distillation from stored teacher
logits, DeiT's hard/soft distillation and plain fine-tuning, with metrics and model cards."""

from .arguments import DISTILLATION_TYPES, DistillationTrainingArguments
from .cards import distillation_summary, write_trainer_model_card
from .metrics import accuracy_metric, classification_metrics, compute_classification_metrics
from .trainer import DistillationTrainer, TeacherSignal, distillation_loss, layer_decay_parameter_groups, student_heads

__all__ = [
    "DISTILLATION_TYPES",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "TeacherSignal",
    "accuracy_metric",
    "classification_metrics",
    "compute_classification_metrics",
    "distillation_loss",
    "distillation_summary",
    "layer_decay_parameter_groups",
    "student_heads",
    "write_trainer_model_card",
]
