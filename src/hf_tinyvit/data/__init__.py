"""Data for fast pretraining distillation: replayable augmentation, sparse teacher targets and the
stored-logit dataset."""

from .sparse import index_dtype, sparse_to_dense, teacher_hard_labels, topk_probabilities

__all__ = ["index_dtype", "sparse_to_dense", "teacher_hard_labels", "topk_probabilities"]
