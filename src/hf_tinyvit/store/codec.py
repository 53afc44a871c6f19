"""How a record's top-k is encoded in a store (pure numpy functions): `"float16"` (probabilities and class
indices as they are) or the smaller, quantised `"sqrt8"`, and the columns each encoding writes.

`"sqrt8"` keeps the teacher's top-1 class and the leftover mass `1 - sum(p)` exactly where they matter and
spends about 6 bits on each other probability:

- slot 0 holds the top-1 class index, slots 1..k-1 the other k-1 indices sorted ascending and delta-coded
  (a first absolute index, then gaps), which zstd packs close to the entropy of the set;
- code 0 is the leftover mass, codes 1..k-1 the other probabilities in that index order, each
  `round(255 * sqrt(p))` in a uint8; the top-1 probability is `1 - leftover - sum(others)` on decoding,
  and never less than the largest of the others (it is the teacher's top-1).

Quantising `sqrt(p)` uniformly makes every class add about the same error to the KL divergence of the
rebuilt distribution (the square root stabilises the variance of a probability), where a uniform step in
`p` would wreck the small probabilities and one in `log p` would waste bits on them. Coding the leftover
rather than the top-1 value keeps the mass spread over the classes outside the top k from collapsing to
0 when a confident teacher leaves little of it (a positive probability is coded 1 or more, never 0, and so
is the leftover whenever classes lie outside the top k). `"float16"` names the original columns (float16
values sorted by decreasing probability, indices in that order); a store without `topk_encoding` in its
metadata uses it.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = [
    "SQRT8_SCALE",
    "TOP1_COLUMN",
    "TOPK_COLUMNS",
    "TOPK_ENCODINGS",
    "check_topk_encoding",
    "decode_sqrt8",
    "decode_topk",
    "encode_sqrt8",
    "encode_topk",
    "index_dtype",
    "topk_mass_tolerance",
]

TOPK_ENCODINGS = ("float16", "sqrt8")
SQRT8_SCALE = 255
# The two list columns of each encoding. sqrt8's have their own names, so that no reader that predates them
# can take codes for probabilities.
TOPK_COLUMNS = {
    "float16": ("teacher_topk_values", "teacher_topk_indices"),
    "sqrt8": ("teacher_topk_slots", "teacher_topk_codes"),
}
# The column whose first element is the teacher's top-1 class (sqrt8's slot 0 is the one absolute index).
TOP1_COLUMN = {"float16": "teacher_topk_indices", "sqrt8": "teacher_topk_slots"}
# float16 rounds each stored probability by at most 2**-11 of itself, so a top-k row sums to at most
# 1 + 2**-11; anything past this tolerance was not written by a teacher's softmax.
FLOAT16_MASS_TOLERANCE = 1e-3


def check_topk_encoding(name: str) -> str:
    if name not in TOPK_ENCODINGS:
        raise ValueError(f"topk_encoding={name!r}; accepted: {list(TOPK_ENCODINGS)}")
    return name


def index_dtype(num_labels: int) -> np.dtype:
    """The smallest unsigned integer type that holds every class index of `num_labels` classes."""
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels} must be >= 1")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"num_labels={num_labels} exceeds what a uint32 index can hold")


def topk_mass_tolerance(encoding: str, k: int) -> float:
    """How far past 1 the decoded top-k probabilities of an honest record may sum, by encoding.

    sqrt8: each other probability decodes within `sqrt(p) / 255 + 1 / 255**2` of the teacher's (half a step
    in square-root space, or the one step a tiny positive probability is raised to); the sum can pass 1 only
    where the top-1 is raised to the largest other, which counts that error twice, and the square roots of
    k - 1 probabilities sum to at most sqrt(k - 1).
    """
    if check_topk_encoding(encoding) == "float16":
        return FLOAT16_MASS_TOLERANCE
    step = 1.0 / SQRT8_SCALE
    return (math.sqrt(max(k - 1, 0)) + 1) * step + k * step**2 + 1e-6


def _check_topk(values: np.ndarray, indices: np.ndarray, num_labels: int) -> None:
    if values.ndim != 2 or values.shape != indices.shape:
        raise ValueError(f"top-k values {values.shape} and indices {indices.shape} must both be (records, k)")
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


# (code -> probability) for every uint8 code: decoding is a table lookup
_MASS = (np.arange(256, dtype=np.float64) / SQRT8_SCALE) ** 2


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
    teacher's top-1 class with `1 - leftover - sum(others)` (at least the largest other: the rounding of many
    small probabilities must not push the top-1 below them, or to 0 for a flat teacher), then the others by
    decreasing probability (ties by class index), the layout `sparse_to_dense` and `teacher_hard_labels` read."""
    slots = np.asarray(slots)
    codes = np.asarray(codes)
    if slots.ndim != 2 or slots.shape != codes.shape or slots.shape[1] < 1:
        raise ValueError(f"slots {slots.shape} and codes {codes.shape} must both be (records, k) with k >= 1")
    if codes.dtype != np.uint8:
        raise ValueError(f"sqrt8 codes must be uint8, got {codes.dtype}")
    rest = np.cumsum(slots[:, 1:].astype(np.int64), axis=1)
    rest_codes = codes[:, 1:]
    if rest.shape[1]:
        # by decreasing probability (a code's probability grows with the code), ties by class index: one
        # sort of a combined key; a cumulated index stays below 2**40 (k - 1 gaps of at most 2**32 - 1)
        key = np.sort(((SQRT8_SCALE - rest_codes.astype(np.int64)) << 40) | rest, axis=1)
        rest = key & ((1 << 40) - 1)
        rest_codes = (SQRT8_SCALE - (key >> 40)).astype(np.uint8)
    rest_values = _MASS[rest_codes]
    top_value = 1.0 - _MASS[codes[:, 0]] - rest_values.sum(axis=1)
    if rest.shape[1]:
        top_value = np.maximum(top_value, rest_values[:, 0])
    values = np.concatenate([np.clip(top_value, 0.0, 1.0)[:, None], rest_values], axis=1).astype(np.float32)
    indices = np.concatenate([slots[:, :1].astype(np.int64), rest], axis=1)
    return values, indices


def encode_topk(values: np.ndarray, indices: np.ndarray, num_labels: int, encoding: str) -> dict[str, np.ndarray]:
    """A shard's top-k columns (name -> `(records, k)` array) from float32 top-k probabilities sorted by
    decreasing probability and their class indices: float16 rounds last, sqrt8 codes the float32 values."""
    names = TOPK_COLUMNS[check_topk_encoding(encoding)]
    if encoding == "float16":
        values = np.asarray(values, dtype=np.float32).astype(np.float16)
        return {names[0]: values, names[1]: np.asarray(indices).astype(index_dtype(int(num_labels)))}
    slots, codes = encode_sqrt8(values, indices, num_labels)
    return {names[0]: slots, names[1]: codes}


def decode_topk(columns: Mapping[str, np.ndarray], encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """`(values float32, indices int64)`, both `(records, k)`, from a shard's top-k columns."""
    first, second = (columns[name] for name in TOPK_COLUMNS[check_topk_encoding(encoding)])
    if encoding == "float16":
        return first.astype(np.float32), second.astype(np.int64)
    return decode_sqrt8(first, second)
