"""Sparse teacher targets: keep the top-k probabilities of a teacher and rebuild the full
distribution from them, as TinyViT's fast pretraining distillation stores them."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["index_dtype", "topk_probabilities", "sparse_to_dense", "teacher_hard_labels"]


def index_dtype(num_labels: int) -> np.dtype:
    """The smallest unsigned integer type that holds every class index of `num_labels` classes."""
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels} must be >= 1")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"num_labels={num_labels} exceeds what a uint32 index can hold")


def topk_probabilities(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of `logits` `(batch, num_labels)`, reduced to its `k` largest entries.

    Returns float16 probabilities and int64 indices, both `(batch, k)`, sorted by decreasing
    probability so that column 0 is the teacher's top-1 class. Non-finite logits raise, naming the
    first offending row, rather than poisoning a store that students will train on for days.
    """
    if logits.dim() != 2:
        raise ValueError(f"teacher logits must be (batch, num_labels), got shape {tuple(logits.shape)}")
    num_labels = logits.shape[1]
    if not 1 <= k <= num_labels:
        raise ValueError(f"topk={k} must lie in [1, num_labels={num_labels}]")
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise ValueError(f"teacher output row {row} contains NaN or inf; refusing to store it")
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(k, dim=1, largest=True, sorted=True)
    return values.half(), indices


def sparse_to_dense(values: torch.Tensor, indices: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Rebuild `(batch, num_labels)` float32 distributions from stored top-k probabilities.

    Class `c` gets `p_j` if it is the j-th stored index, otherwise `(1 - sum_j p_j) / (C - k)`,
    the paper's even spread of the leftover mass. float16 rounding can make the stored mass exceed
    1 by a hair; the leftover is clamped at 0 so no class gets a negative probability.
    """
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(
            f"top-k values {tuple(values.shape)} and indices {tuple(indices.shape)} must both be (batch, k)"
        )
    k = values.shape[1]
    if k > num_labels:
        raise ValueError(f"topk={k} exceeds num_labels={num_labels}")
    indices = indices.long()
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_labels):
        raise ValueError(f"stored class indices must lie in [0, {num_labels - 1}], got {indices.min()}..{indices.max()}")
    values = values.float()
    leftover = (1.0 - values.sum(dim=1, keepdim=True)).clamp_min(0.0)
    fill = leftover / (num_labels - k) if num_labels > k else torch.zeros_like(leftover)
    dense = fill.expand(values.shape[0], num_labels).clone()
    return dense.scatter_(1, indices, values)


def teacher_hard_labels(indices: torch.Tensor) -> torch.Tensor:
    """The teacher's top-1 class from sorted top-k indices, the target of DeiT's hard loss."""
    return indices[..., 0].long()
