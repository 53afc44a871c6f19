"""A store's records gathered per sample: each sample's stored top-k of every epoch, rebuilt into
distributions and averaged over epochs. The common input of the hard-sample audit and the
class-similarity map, read through the store's public reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..augment.mix import mix_partners, sample_mix
from ..datasets import dataset_fingerprint
from ..store.format import sparse_to_dense
from ..store.reader import TeacherLogitStore

__all__ = [
    "SampleDistributions",
    "accumulate_distributions",
    "check_store_dataset",
    "iter_sample_distributions",
    "unmixed_records",
]

# (samples x classes) entries accumulated per chunk: bounds memory for stores with many classes.
_CHUNK_ENTRIES = 1 << 24


@dataclass
class SampleDistributions:
    """Per sample, what the teacher said about it over the epochs of a store.

    `mean_probs` (n, C) float32: the mean over epochs of the rebuilt teacher distribution (top-k
    probabilities, the leftover mass spread evenly, as the students see it); `topk_counts` (n, C)
    int32: in how many epochs class c was among the stored top-k; `num_records` (n,) int64: epochs
    counted (records whose view was Mixup/CutMix-mixed are left out: they describe two images).
    """

    sample_ids: np.ndarray
    mean_probs: torch.Tensor
    topk_counts: torch.Tensor
    num_records: torch.Tensor

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def concatenate(cls, parts: list["SampleDistributions"]) -> "SampleDistributions":
        if not parts:
            raise ValueError("no sample distributions to concatenate")
        return cls(
            np.concatenate([p.sample_ids for p in parts]),
            torch.cat([p.mean_probs for p in parts]),
            torch.cat([p.topk_counts for p in parts]),
            torch.cat([p.num_records for p in parts]),
        )


def accumulate_distributions(
    values: torch.Tensor, indices: torch.Tensor, used: torch.Tensor, num_labels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average stored top-k records over epochs, per sample.

    `values` / `indices`: (epochs, n, k) stored probabilities and class indices; `used`: (epochs, n)
    bool, the records to count. Returns `(mean_probs (n, C), topk_counts (n, C), num_records (n,))`;
    a sample with no record counted gets a zero row and `num_records` 0.
    """
    if values.shape != indices.shape or values.dim() != 3:
        raise ValueError(
            f"values {tuple(values.shape)} and indices {tuple(indices.shape)} must both be (epochs, samples, k)"
        )
    if tuple(used.shape) != tuple(values.shape[:2]):
        raise ValueError(f"used {tuple(used.shape)} must be (epochs, samples) = {tuple(values.shape[:2])}")
    epochs, n, k = values.shape
    total = torch.zeros(n, num_labels, dtype=torch.float64)
    counts = torch.zeros(n, num_labels, dtype=torch.int32)
    used = used.bool()
    for epoch in range(epochs):
        weight = used[epoch]
        dense = sparse_to_dense(values[epoch], indices[epoch], num_labels)
        total += dense.double() * weight[:, None]
        ones = weight[:, None].expand(n, k).to(torch.int32)
        counts.scatter_add_(1, indices[epoch].long(), ones)
    num_records = used.sum(dim=0).to(torch.int64)
    mean = (total / num_records.clamp_min(1)[:, None].double()).float()
    return mean, counts, num_records


def unmixed_records(store: TeacherLogitStore, epoch: int, sample_ids: np.ndarray) -> np.ndarray:
    """Which of these records show one image: all of them unless the store's recipe mixes pairs."""
    recipe = store.recipe
    if not recipe.mixes:
        return np.ones(len(sample_ids), dtype=bool)
    seed = int(store.metadata["seed"])
    partners = mix_partners(recipe, seed, epoch, store.dataset_size)
    return np.array([sample_mix(recipe, seed, epoch, int(i), int(partners[i])) is None for i in sample_ids], dtype=bool)


def iter_sample_distributions(
    store: TeacherLogitStore, epochs: Iterable[int] | None = None, chunk_size: int | None = None
) -> Iterator[SampleDistributions]:
    """`SampleDistributions` of every sample of the store, in chunks of consecutive sample ids.

    Records are read with `store.targets`, which refuses any whose augmentation seed is not the
    store's. A chunk holds about 16M (sample, class) entries unless `chunk_size` says otherwise.
    """
    epochs = store.epochs if epochs is None else [int(e) for e in epochs]
    if not epochs:
        raise ValueError(f"store {store.path!r} has no complete epoch to read")
    missing = sorted(set(epochs) - set(store.epochs))
    if missing:
        raise ValueError(f"epochs {missing} are not in store {store.path!r}; saved epochs: {store.epochs}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ENTRIES // store.num_labels)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    for start in range(0, store.dataset_size, chunk_size):
        ids = np.arange(start, min(start + chunk_size, store.dataset_size), dtype=np.int64)
        values, indices, used = [], [], []
        for epoch in epochs:
            v, i = store.targets(epoch, ids)
            values.append(v)
            indices.append(i)
            used.append(torch.from_numpy(unmixed_records(store, epoch, ids)))
        mean, counts, num = accumulate_distributions(
            torch.stack(values), torch.stack(indices), torch.stack(used), store.num_labels
        )
        yield SampleDistributions(ids, mean, counts, num)


def check_store_dataset(store: TeacherLogitStore, dataset, image_column: str = "image") -> None:
    """Raise unless `dataset` holds the images the store was built from (size and content fingerprint):
    a store's records are addressed by sample id, so another dataset would pair them with other images."""
    store.check_replay(len(dataset), lambda: dataset_fingerprint(dataset, image_column))
