"""The hard-sample audit: samples whose label the stored teacher keeps disagreeing with over the epochs,
ranked by how sure the teacher is of another class, with precision and recall against known wrong
labels and a relabelled copy of the dataset. No teacher runs: everything comes from the store."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Mapping

import numpy as np
import torch

from ..store.reader import TeacherLogitStore
from .records import SampleDistributions, check_store_dataset, iter_sample_distributions

__all__ = ["DEFAULT_AUDIT_THRESHOLD", "LabelAudit", "audit_distributions", "audit_labels", "precision_recall_curve"]

# A label the teacher gives less than 10% on average, over every stored view of the image, is one it
# does not believe; on the digits demo clean labels sit near 0.9 and flipped ones near 0.01.
DEFAULT_AUDIT_THRESHOLD = 0.1
# "Outside the top-k in most epochs": the label is among the stored classes in fewer than half of them.
DEFAULT_MIN_TOPK_FRACTION = 0.5
_SETTINGS = ("threshold", "min_topk_fraction", "id2label")


def precision_recall_curve(scores: np.ndarray, positives: np.ndarray) -> dict[str, np.ndarray]:
    """Precision and recall of flagging every sample whose score is at most `t`, for each distinct `t`.

    `scores`: lower means more suspect (here the label's mean teacher probability); `positives`:
    bool, the samples truly wrong. Written out because scikit-learn, whose curve ranks the other
    way round, is not a dependency of the package (the tests check the two agree).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be 1-d of the same length")
    if not positives.any():
        raise ValueError("no positive (truly wrong) sample: precision and recall are undefined")
    order = np.argsort(scores, kind="stable")
    ranked, hits = scores[order], positives[order]
    true_positives = np.cumsum(hits)
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last sample of each distinct score
    return {
        "thresholds": ranked[last],
        "precision": true_positives[last] / (last + 1.0),
        "recall": true_positives[last] / float(positives.sum()),
    }


@dataclass
class LabelAudit:
    """Per sample: the label, how much the teacher believed it over the stored epochs, and the class it
    proposes instead. `suspect` marks labels with a mean probability below `threshold` or outside the
    stored top-k in most epochs (in fewer than `min_topk_fraction` of them)."""

    sample_ids: np.ndarray
    labels: np.ndarray
    label_probability: np.ndarray
    label_topk_fraction: np.ndarray
    teacher_class: np.ndarray
    proposed_class: np.ndarray
    proposed_probability: np.ndarray
    num_records: np.ndarray
    threshold: float = DEFAULT_AUDIT_THRESHOLD
    min_topk_fraction: float = DEFAULT_MIN_TOPK_FRACTION
    id2label: Mapping[int, str] | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def concatenate(cls, parts: list["LabelAudit"]) -> "LabelAudit":
        """One audit from audits of consecutive chunks of samples (with the same settings)."""
        if not parts:
            raise ValueError("no audits to concatenate")
        first = parts[0]
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls) if f.name not in _SETTINGS}
        return cls(**arrays, **{name: getattr(first, name) for name in _SETTINGS})

    @property
    def counted(self) -> np.ndarray:
        """Samples with at least one unmixed record: the only ones the audit can judge."""
        return self.num_records > 0

    @property
    def suspect(self) -> np.ndarray:
        low = (self.label_probability < self.threshold) | (self.label_topk_fraction < self.min_topk_fraction)
        return self.counted & low

    def suspect_ids(self) -> np.ndarray:
        """Suspects' sample ids, the teacher's most confident disagreement first."""
        rows = np.flatnonzero(self.suspect)
        rows = rows[np.argsort(-self.proposed_probability[rows], kind="stable")]
        return self.sample_ids[rows]

    def _row(self, sample_ids: np.ndarray) -> np.ndarray:
        where = {int(s): r for r, s in enumerate(self.sample_ids)}
        return np.array([where[int(s)] for s in sample_ids], dtype=np.int64)

    def _name(self, label: int) -> str:
        return str(self.id2label.get(int(label), label)) if self.id2label else str(int(label))

    def table(self, sample_ids: Iterable[int] | None = None):
        """The suspects (or the given samples) as a `datasets.Dataset`, in rank order."""
        import datasets

        ids = self.suspect_ids() if sample_ids is None else np.asarray(list(sample_ids), dtype=np.int64)
        rows = self._row(ids)
        return datasets.Dataset.from_dict(
            {
                "rank": list(range(1, len(rows) + 1)),
                "sample_id": self.sample_ids[rows].tolist(),
                "label": self.labels[rows].tolist(),
                "label_name": [self._name(c) for c in self.labels[rows]],
                "teacher_class": self.proposed_class[rows].tolist(),
                "teacher_class_name": [self._name(c) for c in self.proposed_class[rows]],
                "teacher_probability": self.proposed_probability[rows].astype(float).round(4).tolist(),
                "label_probability": self.label_probability[rows].astype(float).round(4).tolist(),
                "label_topk_fraction": self.label_topk_fraction[rows].astype(float).round(4).tolist(),
                "records": self.num_records[rows].tolist(),
            }
        )

    def to_csv(self, path) -> None:
        """The suspects' table as CSV (through `datasets`)."""
        self.table().to_pandas().to_csv(str(path), index=False)

    def precision_recall(self, wrong_ids: Iterable[int]) -> dict[str, float]:
        """The audit's precision and recall at its own settings, against the ids known to be wrong."""
        wrong = self._wrong_mask(wrong_ids)
        flagged = self.suspect
        hits = int((flagged & wrong).sum())
        return {
            "precision": hits / max(int(flagged.sum()), 1),
            "recall": hits / max(int(wrong.sum()), 1),
            "flagged": int(flagged.sum()),
            "wrong": int(wrong.sum()),
            "true_positives": hits,
        }

    def precision_recall_curve(self, wrong_ids: Iterable[int]) -> dict[str, np.ndarray]:
        """Precision and recall of the probability rule as its threshold sweeps (counted samples only)."""
        wrong = self._wrong_mask(wrong_ids)
        counted = self.counted
        return precision_recall_curve(self.label_probability[counted], wrong[counted])

    def _wrong_mask(self, wrong_ids: Iterable[int]) -> np.ndarray:
        wrong_ids = np.asarray(list(wrong_ids), dtype=np.int64)
        unknown = np.setdiff1d(wrong_ids, self.sample_ids)
        if len(unknown):
            raise ValueError(f"wrong_ids hold sample ids the audit has not seen, e.g. {int(unknown[0])}")
        return np.isin(self.sample_ids, wrong_ids)

    def relabel_ids(self, min_confidence: float = 0.5) -> np.ndarray:
        """Suspects the teacher is confident about: its proposed class has mean probability >= `min_confidence`."""
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence={min_confidence} must lie in [0, 1]")
        ids = self.suspect_ids()
        return ids[self.proposed_probability[self._row(ids)] >= min_confidence]

    def relabelled(self, dataset, min_confidence: float = 0.5, label_column: str = "label"):
        """A copy of `dataset` in which confident suspects carry the teacher's class; returns
        `(dataset, changed sample ids)`. The images are untouched, so the store still replays on it."""
        if len(dataset) != len(self.sample_ids) or not np.array_equal(self.sample_ids, np.arange(len(dataset))):
            raise ValueError(
                f"the dataset has {len(dataset)} samples; this audit covers {len(self.sample_ids)}: "
                "relabel the dataset the audit was run on"
            )
        changed = self.relabel_ids(min_confidence)
        labels = np.array(dataset[label_column])
        labels[changed] = self.proposed_class[self._row(changed)]
        feature = dataset.features[label_column]
        copy = dataset.remove_columns(label_column).add_column(label_column, labels.tolist(), feature=feature)
        return copy, changed


def audit_distributions(
    distributions: SampleDistributions,
    labels: np.ndarray,
    *,
    threshold: float = DEFAULT_AUDIT_THRESHOLD,
    min_topk_fraction: float = DEFAULT_MIN_TOPK_FRACTION,
    id2label: Mapping[int, str] | None = None,
) -> LabelAudit:
    """The audit of samples whose per-epoch teacher view is `distributions`, given their `labels`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must lie in (0, 1]")
    if not 0.0 <= min_topk_fraction <= 1.0:
        raise ValueError(f"min_topk_fraction={min_topk_fraction} must lie in [0, 1]")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(distributions),):
        raise ValueError(f"{len(labels)} labels for {len(distributions)} samples")
    num_labels = distributions.mean_probs.shape[1]
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        raise ValueError(
            f"sample_id={int(distributions.sample_ids[bad][0])} has label={int(labels[bad][0])}; the teacher's classes "
            f"are 0..{num_labels - 1}: the dataset's labels must be the store's classes"
        )
    rows = torch.arange(len(labels))
    target = torch.from_numpy(labels)
    probs = distributions.mean_probs
    label_probability = probs[rows, target]
    counts = distributions.topk_counts[rows, target].double()
    topk_fraction = counts / distributions.num_records.clamp_min(1).double()
    others = probs.clone()
    others[rows, target] = -1.0
    proposed_probability, proposed = others.max(dim=1)
    return LabelAudit(
        sample_ids=distributions.sample_ids.copy(),
        labels=labels,
        label_probability=label_probability.numpy().astype(np.float64),
        label_topk_fraction=topk_fraction.numpy(),
        teacher_class=probs.argmax(dim=1).numpy(),
        proposed_class=proposed.numpy(),
        proposed_probability=proposed_probability.numpy().astype(np.float64),
        num_records=distributions.num_records.numpy(),
        threshold=float(threshold),
        min_topk_fraction=float(min_topk_fraction),
        id2label=dict(id2label) if id2label else None,
    )


def audit_labels(
    store: TeacherLogitStore | str,
    dataset,
    *,
    label_column: str = "label",
    image_column: str = "image",
    threshold: float = DEFAULT_AUDIT_THRESHOLD,
    min_topk_fraction: float = DEFAULT_MIN_TOPK_FRACTION,
    epochs: Iterable[int] | None = None,
) -> LabelAudit:
    """Audit `dataset`'s labels against the teacher's stored views of its images.

    `dataset` must hold the images the store was built from, in the same order (checked by size and
    content fingerprint); its labels may differ from the ones the teacher was trained with, which is
    the point. Mixed (Mixup/CutMix) records are left out.
    """
    store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store)
    if label_column not in dataset.column_names:
        raise ValueError(f"column {label_column!r} is not in the dataset; columns: {dataset.column_names}")
    check_store_dataset(store, dataset, image_column)
    names = getattr(dataset.features[label_column], "names", None)
    id2label = store.metadata.get("id2label") or (dict(enumerate(names)) if names else None)
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    # audited chunk by chunk: only (chunk, classes) distributions are ever in memory
    return LabelAudit.concatenate([
        audit_distributions(
            chunk, labels[chunk.sample_ids], threshold=threshold, min_topk_fraction=min_topk_fraction, id2label=id2label
        )
        for chunk in iter_sample_distributions(store, epochs)
    ])
