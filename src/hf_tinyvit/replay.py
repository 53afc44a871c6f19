"""The stored teacher's targets joined with the replayed views they were computed on: a student trains
on the exact views and targets the teacher produced, with no teacher in memory."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from .augment.recipe import AugmentationRecipe
from .augment.views import (
    AugmentedDataset,
    DistillationDataset,
    IterableAugmentedDataset,
    ViewCache,
)
from .datasets import describe_sample
from .store.reader import TeacherLogitStore

__all__ = ["IterableStoredLogitsDataset", "StoredLogitsDataset"]


def replayed_epoch(store: TeacherLogitStore, epoch: int) -> int:
    """The saved epoch training epoch `epoch` replays: itself when saved, else `epochs[epoch % len(epochs)]`."""
    if epoch < 0:
        raise ValueError(f"epoch={epoch} must be >= 0")
    saved = store.epochs
    return epoch if epoch in saved else saved[epoch % len(saved)]


def _warn_cycling(store: TeacherLogitStore, epoch: int, replay: int) -> None:
    saved = store.epochs
    warnings.warn(
        f"epoch {epoch} was not saved in store {store.path!r} (saved: {saved}); replaying saved epoch {replay} "
        f"(warned once: every unsaved epoch e replays saved epoch {saved}[e % {len(saved)}])",
        stacklevel=3,
    )


def check_image_digests(store: TeacherLogitStore, epoch: int, sample_ids, digests, describe) -> None:
    """Every replayed record's image must be the one the teacher saw: the 64-image fingerprint checked
    at construction cannot see one image replaced, swapped or re-encoded; the per-record digest can."""
    mismatches = store.image_digest_mismatches(epoch, sample_ids, [int(d) for d in digests])
    if mismatches:
        sample_id, stored, given = mismatches[0]
        raise ValueError(
            f"the image of {describe(sample_id)} is not the one the teacher saw in store {store.path!r} (epoch {epoch}): "
            f"its digest {given:#010x} differs from the stored {stored:#010x} ({len(mismatches)} of this batch's "
            f"{len(sample_ids)} images differ): the dataset changed since the store was saved (an image replaced, "
            "swapped, or re-encoded with loss); replay the exact dataset the teacher saw, or save a new store"
        )


def target_fields(values: torch.Tensor, indices: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per-item stored-target fields from `store.targets`' `(values, indices)`."""
    return [{"teacher_topk_values": v, "teacher_topk_indices": i} for v, i in zip(values, indices)]


class StoredLogitsDataset(DistillationDataset):
    """The replayed views of a store's epoch with the teacher's stored top-k targets.

    Items are `AugmentedDataset` items plus `teacher_topk_values` float32 (k,) and
    `teacher_topk_indices` int64 (k,). Training past the saved epochs cycles through them
    (with a warning): epoch e replays saved epoch `epochs[e % len(epochs)]` when e is not saved.
    The dataset must be the one the store was built from (size and content fingerprint), and a
    `recipe` given here must be the store's. `num_labels` is the teacher's class count, the
    size the student's distillation head needs; `num_dataset_labels` is only for mixing dataset
    labels when the label column is not a ClassLabel.
    """

    def __init__(
        self,
        dataset,
        store: TeacherLogitStore | str,
        *,
        epoch: int = 0,
        image_column: str = "image",
        label_column: str | None = "label",
        recipe: AugmentationRecipe | None = None,
        num_dataset_labels: int | None = None,
        view_cache: ViewCache | None = None,
    ):
        store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store)
        self.store = store
        self.augmented = AugmentedDataset(
            dataset,
            store.recipe,
            seed=int(store.metadata["seed"]),
            image_column=image_column,
            label_column=label_column,
            num_labels=num_dataset_labels,
            view_cache=view_cache,
            image_digests=store.has_image_digests,
        )
        store.check_replay(len(dataset), self.augmented.fingerprint, recipe)
        self._requested = torch.zeros((), dtype=torch.int64).share_memory_()
        self._warned = False  # one warning per dataset: a long run would print one per epoch
        self.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.augmented)

    @property
    def views(self) -> AugmentedDataset:
        return self.augmented

    @property
    def num_labels(self) -> int:
        return self.store.num_labels

    @property
    def recipe(self) -> AugmentationRecipe:
        """The store's recipe, which normalised `pixel_values` (a live teacher needs its mean/std)."""
        return self.augmented.recipe

    @property
    def epoch(self) -> int:
        """The training epoch last set (which may lie past the saved epochs)."""
        return int(self._requested.item())

    @property
    def replay_epoch(self) -> int:
        """The saved epoch whose views and targets are being replayed."""
        return self.augmented.epoch

    def set_epoch(self, epoch: int) -> None:
        replay = replayed_epoch(self.store, epoch)
        if replay != epoch and not self._warned:
            self._warned = True
            _warn_cycling(self.store, epoch, replay)
        self._requested.fill_(int(epoch))
        self.augmented.set_epoch(replay)

    def items(self, sample_ids: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        epoch = self.augmented.epoch
        items = self.augmented.items(sample_ids, epoch)
        values, indices = self.store.targets(epoch, sample_ids)
        if self.store.has_image_digests:
            self._check_images(epoch, sample_ids, [item.pop("image_digest") for item in items])
        for item, fields in zip(items, target_fields(values, indices)):
            item.update(fields)
        return items

    def _check_images(self, epoch: int, sample_ids: Sequence[int], digests: list[torch.Tensor]) -> None:
        views = self.augmented
        check_image_digests(
            self.store, epoch, sample_ids, digests, lambda i: describe_sample(views.dataset, views.image_column, i)
        )

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.items(indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items([index])[0]


class IterableStoredLogitsDataset(IterableAugmentedDataset):
    """`StoredLogitsDataset` for a streamed image dataset: the replayed views of `IterableAugmentedDataset`
    with the store's top-k targets, looked up once per shuffle window (`TeacherLogitStore.targets`, which
    checks each record's augmentation seed against its sample id and epoch).

    The stream must be the dataset the store was built from, in its map-style order: the sample count, the
    content fingerprint (read off the stream, `check_fingerprint=False` skips that read for a remote
    stream) and a given `recipe` are checked against the store. Training past the saved epochs cycles
    through them, as the map-style dataset does; the shuffle follows the training epoch.
    """

    def __init__(
        self,
        stream,
        store: TeacherLogitStore | str,
        *,
        shard_sizes=None,
        epoch: int = 0,
        image_column: str = "image",
        label_column: str | None = "label",
        recipe: AugmentationRecipe | None = None,
        num_dataset_labels: int | None = None,
        shuffle_buffer: int = 1024,
        rank: int | None = None,
        world_size: int | None = None,
        check_fingerprint: bool = True,
    ):
        store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store)
        super().__init__(
            stream,
            store.recipe,
            seed=int(store.metadata["seed"]),
            shard_sizes=shard_sizes,
            epoch=epoch,
            image_column=image_column,
            label_column=label_column,
            num_labels=num_dataset_labels,
            shuffle_buffer=shuffle_buffer,
            rank=rank,
            world_size=world_size,
        )
        self.store = store
        self.image_digests = store.has_image_digests
        fingerprint = self.fingerprint if check_fingerprint else (lambda: store.metadata["dataset_fingerprint"])
        store.check_replay(self.num_samples, fingerprint, recipe)
        self._warned = False
        self.set_epoch(epoch)

    @property
    def teacher_num_labels(self) -> int:
        return self.store.num_labels

    @property
    def replay_epoch(self) -> int:
        return replayed_epoch(self.store, self.epoch)

    def set_epoch(self, epoch: int) -> None:
        replay = replayed_epoch(self.store, epoch)
        if replay != epoch and not getattr(self, "_warned", True):
            self._warned = True
            _warn_cycling(self.store, epoch, replay)
        super().set_epoch(epoch)

    def view_epoch(self, epoch: int) -> int:
        return replayed_epoch(self.store, epoch)

    def _render(self, row: dict, epoch: int) -> dict[str, torch.Tensor]:
        item = super()._render(row, epoch)
        if "image_digest" in item:
            sample_id = int(item["sample_id"])
            check_image_digests(self.store, epoch, [sample_id], [item.pop("image_digest")], lambda i: f"sample_id={i}")
        return item

    def _extras(self, epoch: int, sample_ids) -> list[dict[str, torch.Tensor]]:
        return target_fields(*self.store.targets(epoch, sample_ids))
