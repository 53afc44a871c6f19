"""Evaluation metrics for `DistillationTrainer`: top-1 accuracy through `evaluate`, top-5 accuracy, and
the student's agreement with the teacher's top-1 class on distillation runs."""

from __future__ import annotations

import functools

import datasets
import evaluate
import numpy as np
from transformers import EvalPrediction

from ..log import get_logger

__all__ = ["accuracy_metric", "classification_metrics", "compute_classification_metrics"]

logger = get_logger(__name__)

IGNORE_INDEX = -100


class _BundledAccuracy(evaluate.Metric):
    """Top-1 accuracy as an `evaluate` module defined in this package.

    `evaluate.load("accuracy")` fetches its script from the Hub on first use, so it fails on an
    offline machine with an empty cache; this module gives the same number without the network.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference class.",
            citation="",
            inputs_description="predictions and references: class indices",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}


@functools.lru_cache(maxsize=1)
def accuracy_metric() -> evaluate.EvaluationModule:
    """`evaluate.load("accuracy")`, or the bundled equivalent when the Hub script cannot be fetched."""
    try:
        return evaluate.load("accuracy")
    except Exception as err:  # offline: FileNotFoundError / ConnectionError / OSError depending on the cache state
        logger.info(
            "evaluate.load('accuracy') unavailable (%s); using hf_tinyvit's bundled accuracy", type(err).__name__
        )
        return _BundledAccuracy()


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray | None, teacher_labels: np.ndarray | None = None, top_k: int = 5
) -> dict[str, float]:
    """Top-1 and top-k accuracy of `logits` `(n, num_labels)` against `labels` `(n,)` (or soft labels
    `(n, num_labels)`, scored by their argmax), plus agreement with the teacher's top-1 `teacher_labels`.

    Rows whose label is -100 (no ground truth) count only toward the agreement.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (num_samples, num_labels), got shape {logits.shape}")
    predictions = logits.argmax(axis=-1)
    metrics: dict[str, float] = {}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels.argmax(axis=-1)
        known = labels != IGNORE_INDEX
        if known.any():
            metrics.update(
                accuracy_metric().compute(predictions=predictions[known].tolist(), references=labels[known].tolist())
            )
            k = min(top_k, logits.shape[-1])
            top = np.argsort(-logits[known], axis=-1, kind="stable")[:, :k]
            metrics[f"top{top_k}_accuracy"] = float((top == labels[known, None]).any(axis=-1).mean())
    if teacher_labels is not None:
        metrics["teacher_agreement"] = float(np.mean(predictions == np.asarray(teacher_labels)))
    return metrics


def compute_classification_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: label_ids are the labels, or `(labels, teacher_labels)` as
    `DistillationTrainer.prediction_step` returns them when a teacher signal is available."""
    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    label_ids = eval_pred.label_ids
    teacher_labels = None
    if isinstance(label_ids, (tuple, list)):
        label_ids, teacher_labels = label_ids
    return classification_metrics(logits, label_ids, teacher_labels)
