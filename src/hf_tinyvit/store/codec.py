"""Smaller top-k records: an optional quantised encoding of a teacher's sparse top-k (pure numpy functions).

`"sqrt8"` keeps the teacher's top-1 class and the leftover mass `1 - sum(p)` exactly where they matter and
spends about 6 bits on each other probability:

- slot 0 holds the top-1 class index, slots 1..k-1 the other k-1 indices sorted ascending and delta-coded
  (a first absolute index, then gaps), which zstd packs close to the entropy of the set;
- code 0 is the leftover mass, codes 1..k-1 the other probabilities in that index order, each
  `round(255 * sqrt(p))` in a uint8; the top-1 probability is `1 - leftover - sum(others)` on decoding.

Quantising `sqrt(p)` uniformly makes every class add about the same error to the KL divergence of the
rebuilt distribution (the square root stabilises the variance of a probability), where a uniform step in
`p` would wreck the small probabilities and one in `log p` would waste bits on them. Coding the leftover
rather than the top-1 value keeps the mass spread over the classes outside the top k from collapsing to
0 when a confident teacher leaves little of it (a positive probability is coded 1 or more, never 0, and so
is the leftover whenever classes lie outside the top k). `"float16"` names today's columns (float16 values sorted
by decreasing probability, indices in that order); a store without `topk_encoding` in its metadata uses it.
"""

from __future__ import annotations

import numpy as np

from .format import index_dtype

__all__ = ["SQRT8_SCALE", "TOPK_ENCODINGS", "check_topk_encoding", "decode_sqrt8", "encode_sqrt8"]

TOPK_ENCODINGS = ("float16", "sqrt8")
SQRT8_SCALE = 255


def check_topk_encoding(name: str) -> str:
    if name not in TOPK_ENCODINGS:
        raise ValueError(f"topk_encoding={name!r}; accepted: {list(TOPK_ENCODINGS)}")
    return name


def _check_topk(values: np.ndarray, indices: np.ndarray, num_labels: int) -> None:
    if values.ndim != 2 or values.shape != indices.shape:
        raise ValueError(
            f"top-k values {values.shape} and indices {indices.shape} must both be (records, k)"
        )
    k = values.shape[1]
    if not 1 <= k <= num_labels:
        raise ValueError(f"topk={k} must lie in [1, num_labels={num_labels}]")
    if values.size == 0:
        return
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        row = int(np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values <= 1)).all(axis=1))[0])
        raise ValueError(f"record {row} has top-k probabilities outside [0, 1]: {values[row].tolist()}")
    if indices.min() < 0 or indices.max() >= num_labels:
        row = int(np.flatnonzero(((indices < 0) | (indices >= num_labels)).any(axis=1))[0])
        raise ValueError(f"record {row} has class indices outside [0, {num_labels - 1}]: {indices[row].tolist()}")
    ordered = np.sort(indices, axis=1)
    repeated = (np.diff(ordered, axis=1) == 0).any(axis=1)
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise ValueError(f"record {row} repeats a class index: {indices[row].tolist()}")


def _code(mass: np.ndarray) -> np.ndarray:
    # a positive mass never rounds to code 0: a stored class (or the classes outside the top k, for the
    # leftover) would get probability 0 and the rebuilt distribution an infinite KL from the teacher's
    codes = np.rint(np.sqrt(np.clip(mass, 0.0, 1.0)) * SQRT8_SCALE)
    return np.where(mass > 0, np.maximum(codes, 1), 0).astype(np.uint8)


def _mass(codes: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float64) / SQRT8_SCALE) ** 2


def encode_sqrt8(values: np.ndarray, indices: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """`(slots, codes)`, both `(records, k)`, of top-k probabilities sorted by decreasing probability (column 0
    the teacher's top-1, as `topk_probabilities` returns them) and their class indices.

    `slots` use the smallest unsigned type that holds `num_labels` classes; `codes` are uint8.
    """
    values = np.asarray(values, dtype=np.float64)
    indices = np.asarray(indices)
    _check_topk(values, indices, int(num_labels))
    top, rest, rest_values = indices[:, :1], indices[:, 1:], values[:, 1:]
    order = np.argsort(rest, axis=1, kind="stable")
    rest = np.take_along_axis(rest, order, axis=1)
    rest_values = np.take_along_axis(rest_values, order, axis=1)
    gaps = np.diff(rest, axis=1, prepend=0)
    slots = np.concatenate([top, gaps], axis=1).astype(index_dtype(int(num_labels)))
    # A softmax leaves every class some mass, however little: the classes outside the top k keep at least
    # one step's worth (a float sum of the top k can round to 1 or past it, which would starve them).
    leftover = _code(1.0 - values.sum(axis=1, keepdims=True))
    leftover = np.maximum(leftover, 1).astype(np.uint8) if values.shape[1] < num_labels else np.zeros_like(leftover)
    codes = np.concatenate([leftover, _code(rest_values)], axis=1)
    return slots, codes


def decode_sqrt8(slots: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(values float32, indices int64)`, both `(records, k)`, from `encode_sqrt8`'s columns: column 0 is the
    teacher's top-1 class with `1 - leftover - sum(others)`, then the others by decreasing probability
    (ties by class index), the layout `sparse_to_dense` and `teacher_hard_labels` read."""
    slots = np.asarray(slots)
    codes = np.asarray(codes)
    if slots.ndim != 2 or slots.shape != codes.shape or slots.shape[1] < 1:
        raise ValueError(f"slots {slots.shape} and codes {codes.shape} must both be (records, k) with k >= 1")
    rest = np.cumsum(slots[:, 1:].astype(np.int64), axis=1)
    rest_values = _mass(codes[:, 1:])
    top_value = np.clip(1.0 - _mass(codes[:, :1]) - rest_values.sum(axis=1, keepdims=True), 0.0, 1.0)
    # by decreasing probability, ties by class index: lexsort's last key is the primary one
    order = np.lexsort((rest, -rest_values), axis=1) if rest.shape[1] else np.zeros_like(rest)
    rest = np.take_along_axis(rest, order, axis=1)
    rest_values = np.take_along_axis(rest_values, order, axis=1)
    values = np.concatenate([top_value, rest_values], axis=1).astype(np.float32)
    indices = np.concatenate([slots[:, :1].astype(np.int64), rest], axis=1)
    return values, indices
