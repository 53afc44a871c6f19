"""Class similarity as the stored teacher sees it: for each class, the teacher's mean distribution over
the stored views of that class's images, and the classes it is most often taken for (the dark
knowledge that soft labels carry and one-hot labels lack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from ..store.reader import TeacherLogitStore
from .records import check_store_dataset, iter_sample_distributions

__all__ = ["ClassSimilarity", "class_similarity", "class_similarity_matrix"]


def class_similarity_matrix(
    mean_probs: torch.Tensor, num_records: torch.Tensor, groups: torch.Tensor, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sum, per class, the per-sample mean distributions weighted by their record counts.

    Returns `(sums (C, C) float64, records (C,) int64)`; `sums[c] / records[c]` is the teacher's mean
    distribution over the records of class `c`. Sums (not means) so that chunks add up.
    """
    if mean_probs.dim() != 2 or mean_probs.shape[1] != num_labels:
        raise ValueError(f"mean_probs {tuple(mean_probs.shape)} must be (samples, num_labels={num_labels})")
    groups = groups.long()
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_labels):
        raise ValueError(f"class groups must lie in [0, {num_labels - 1}], got {int(groups.min())}..{int(groups.max())}")
    weights = num_records.double()
    sums = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    sums.index_add_(0, groups, mean_probs.double() * weights[:, None])
    records = torch.zeros(num_labels, dtype=torch.float64).index_add_(0, groups, weights)
    return sums.numpy(), records.numpy().astype(np.int64)


@dataclass
class ClassSimilarity:
    """`matrix[c]`: the teacher's mean distribution over the stored records of class `c` (NaN rows for
    classes with no record); `records[c]`: how many records that is. `grouped_by` says whether a
    record's class is its dataset label or the teacher's own top-1."""

    matrix: np.ndarray
    records: np.ndarray
    grouped_by: str
    id2label: Mapping[int, str] | None = None

    @property
    def num_labels(self) -> int:
        return self.matrix.shape[0]

    def name(self, label: int) -> str:
        return str(self.id2label.get(int(label), label)) if self.id2label else str(int(label))

    def nearest(self, n: int = 2) -> list[list[tuple[int, float]]]:
        """For each class, the `n` other classes with the most mean teacher probability, largest first."""
        if n < 1:
            raise ValueError(f"n={n} must be >= 1")
        off = self.matrix.copy()
        np.fill_diagonal(off, -np.inf)
        result = []
        for c, row in enumerate(off):
            if np.isnan(self.matrix[c]).all():
                result.append([])
                continue
            order = np.argsort(-row, kind="stable")[: min(n, self.num_labels - 1)]
            result.append([(int(c), float(row[c])) for c in order])
        return result

    def pairs(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The `n` most confused pairs of classes, by the mean of the two directions `(M[a, b] + M[b, a]) / 2`."""
        symmetric = (self.matrix + self.matrix.T) / 2.0
        a, b = np.triu_indices(self.num_labels, k=1)
        scores = symmetric[a, b]
        keep = ~np.isnan(scores)
        a, b, scores = a[keep], b[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:n]
        return [(int(a[i]), int(b[i]), float(scores[i])) for i in order]

    def to_markdown(self, n: int = 2) -> str:
        lines = [
            "| class | records | teacher probability of the class | nearest classes (mean probability) |",
            "|---|---|---|---|",
        ]
        for c, neighbours in enumerate(self.nearest(n)):
            own = self.matrix[c, c]
            listed = ", ".join(f"{self.name(k)} ({100 * p:.2f}%)" for k, p in neighbours)
            own_text = "" if np.isnan(own) else f"{100 * own:.1f}%"
            lines.append(f"| {self.name(c)} | {self.records[c]} | {own_text} | {listed} |")
        return "\n".join(lines) + "\n"


def class_similarity(
    store: TeacherLogitStore | str,
    dataset=None,
    *,
    label_column: str = "label",
    image_column: str = "image",
    epochs: Iterable[int] | None = None,
) -> ClassSimilarity:
    """The class-by-class mean teacher distribution of a store.

    With `dataset` (the images the store was built from, checked by fingerprint) a record's class is
    its label; without it, the teacher's top-1 of that sample's mean distribution. Mixed
    (Mixup/CutMix) records are left out. The matrix is C x C: meant for up to a few thousand classes.
    """
    store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store)
    labels = None
    names = None
    if dataset is not None:
        if label_column not in dataset.column_names:
            raise ValueError(f"column {label_column!r} is not in the dataset; columns: {dataset.column_names}")
        check_store_dataset(store, dataset, image_column)
        labels = torch.as_tensor(np.asarray(dataset[label_column], dtype=np.int64))
        names = getattr(dataset.features[label_column], "names", None)
    num_labels = store.num_labels
    sums = np.zeros((num_labels, num_labels))
    records = np.zeros(num_labels, dtype=np.int64)
    for chunk in iter_sample_distributions(store, epochs):
        groups = labels[torch.from_numpy(chunk.sample_ids)] if labels is not None else chunk.mean_probs.argmax(dim=1)
        chunk_sums, chunk_records = class_similarity_matrix(chunk.mean_probs, chunk.num_records, groups, num_labels)
        sums += chunk_sums
        records += chunk_records
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = sums / records[:, None]
    matrix[records == 0] = np.nan
    id2label = store.metadata.get("id2label") or (dict(enumerate(names)) if names else None)
    return ClassSimilarity(matrix, records, "label" if labels is not None else "teacher top-1", id2label)
