"""Rendered views as torch datasets: replayable augmented views of an image dataset (item i of epoch e
depends on (seed, e, i) only), the contract `DistillationTrainer` reads from a dataset, the shuffle that
keeps Mixup/CutMix partners in one batch, and an in-memory cache of rendered views."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datasets import dataset_fingerprint, describe_sample, image_digest, image_to_tensor
from .mix import mix_images, mix_labels, mix_partners, pairing_order, sample_mix
from .recipe import AugmentationRecipe
from .render import apply_augmentation
from .sampling import augmentation_seed, sample_augmentation, seed_from

__all__ = ["AugmentedDataset", "DistillationDataset", "PairedSampler", "ViewCache", "collate_views"]


class ViewCache:
    """Rendered views kept in memory, for small datasets whose views are rendered more than once.

    A view is a pure function of (image, recipe, seed, epoch, sample_id), so keeping it changes no
    pixel. It pays where the same views come back: several runs compared side by side on one
    dataset, or a student training past the epochs a store holds (which replays saved epochs).
    Keys carry the dataset's content fingerprint and the recipe's, so datasets over the same images
    (with another label column, say) share entries and other datasets never collide. At most
    `max_bytes` of pixels are kept; past that, views are rendered as usual and not kept. Each
    DataLoader worker process fills its own copy, so the saving is in the main process
    (num_workers=0). An ImageNet run sees each view once and has no use for it.
    """

    def __init__(self, max_bytes: int = 2 * 1024**3):
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes} must be >= 0")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._views: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._views)

    def get(self, key: tuple) -> torch.Tensor | None:
        view = self._views.get(key)
        if view is None:
            self.misses += 1
            return None
        self.hits += 1
        return view.clone()  # a caller may modify its copy in place; the kept view must not change

    def put(self, key: tuple, view: torch.Tensor) -> None:
        size = view.numel() * view.element_size()
        if key not in self._views and self.nbytes + size <= self.max_bytes:
            self._views[key] = view.clone()
            self.nbytes += size


def collate_views(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch; when some samples were mixed, every label becomes a distribution."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "labels" and any(v.dim() == 1 for v in values):
            num_labels = next(v.shape[0] for v in values if v.dim() == 1)
            values = [v if v.dim() == 1 else torch.nn.functional.one_hot(v, num_labels).float() for v in values]
        batch[key] = torch.stack(values)
    return batch


def _check_label_range(dataset, label_column: str, num_labels: int) -> None:
    """Refuse labels outside [0, num_labels) at construction, not hours into training at the first bad batch.

    Only `datasets` tables are scanned (one Arrow column, cheap even for ImageNet-21k); other
    datasets are checked item by item as they are read.
    """
    if not hasattr(dataset, "with_format"):
        return
    import pyarrow.compute as pc

    labels = dataset.select_columns([label_column]).with_format("arrow")[:][label_column]
    if len(labels) == 0:
        return
    bad = pc.or_(pc.less(labels, 0), pc.greater_equal(labels, num_labels))
    if pc.any(bad).as_py():
        index = pc.index(bad, True).as_py()
        raise ValueError(
            f"sample_id={index} has {label_column}={labels[index].as_py()}; accepted: 0..{num_labels - 1} "
            f"(num_labels={num_labels})"
        )


class DistillationDataset(Dataset):
    """What a dataset of replayed views tells `DistillationTrainer` about itself: a typed contract in
    place of attribute probing.

    - `recipe`: the augmentation recipe its `pixel_values` were rendered with (a live teacher needs
      its mean and std to undo the normalisation);
    - `store`: the teacher-logit store its targets come from, or None when it carries none;
    - `collate_fn(items)`: how its items batch (mixed and unmixed labels together);
    - `set_epoch(epoch)`: views (and stored targets) follow the training epoch;
    - `train_sampler(seed)`: the shuffle that keeps Mixup/CutMix partners in one batch;
    - `views`: the `AugmentedDataset` whose views it serves.
    """

    recipe: AugmentationRecipe
    # the store (an hf_tinyvit.store.TeacherLogitStore) or None; not imported here, the store sits above
    store: Any = None

    @staticmethod
    def collate_fn(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate_views(items)

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def train_sampler(self, seed: int = 0) -> "PairedSampler":
        return PairedSampler(self, seed)

    @property
    def views(self) -> "AugmentedDataset":
        """The replayable views this dataset serves (itself, or the views it adds targets to)."""
        raise NotImplementedError


class AugmentedDataset(DistillationDataset):
    """Replayable augmented views of an image dataset: item i of epoch e depends on (seed, e, i) only.

    Items: `pixel_values` float32 (3, S, S), `sample_id` int64 and, with a label column, `labels`
    (int64, or a float32 distribution over `num_labels` when Mixup/CutMix mixed the sample).
    The epoch lives in shared memory, so `set_epoch` in the main process reaches DataLoader
    workers, persistent ones included. A batch fetched through `__getitems__` (what DataLoader
    uses) decodes each image once even when its Mixup partner is in the same batch; use
    `train_sampler` with an even batch size to keep partners together. A `view_cache` keeps
    rendered views for runs that see them again (see `ViewCache`). With `image_digests`, items
    also carry `image_digest` (int64), the digest of the decoded image the view came from, which a
    teacher-logit store keeps with each record so that a replay notices a changed image.
    """

    def __init__(
        self,
        dataset,
        recipe: AugmentationRecipe,
        *,
        seed: int,
        epoch: int = 0,
        image_column: str = "image",
        label_column: str | None = "label",
        num_labels: int | None = None,
        view_cache: ViewCache | None = None,
        image_digests: bool = False,
    ):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: there is nothing to augment")
        columns = getattr(dataset, "column_names", None)
        if columns is not None:
            for name in (image_column, label_column):
                if name is not None and name not in columns:
                    raise ValueError(f"column {name!r} is not in the dataset; columns: {columns}")
            keep = [c for c in (image_column, label_column) if c is not None]
            dataset = dataset.select_columns(keep)
        if num_labels is None and label_column is not None and hasattr(dataset, "features"):
            num_labels = getattr(dataset.features[label_column], "num_classes", None)
        if recipe.mixes and label_column is not None and num_labels is None:
            raise ValueError("Mixup/CutMix mixes labels: pass num_labels (the label column is not a ClassLabel)")
        if num_labels is not None and label_column is not None:
            _check_label_range(dataset, label_column, int(num_labels))
        self.dataset = dataset
        self.recipe = recipe
        self.seed = int(seed)
        self.image_column = image_column
        self.label_column = label_column
        self.num_labels = num_labels
        # a shared-memory scalar: forked and spawned workers see what the main process writes
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._epoch.fill_(int(epoch))
        self._partners: tuple[int, np.ndarray] | None = None
        self._fingerprint: str | None = None
        self.view_cache = view_cache
        self.image_digests = bool(image_digests)
        # digests of images whose views came from the cache (which skips decoding): one decode per image
        self._digests: dict[int, int] = {}
        self._labels: np.ndarray | None = None
        if view_cache is not None:
            self._cache_key = (self.fingerprint(), recipe.fingerprint(), self.seed)
            if label_column is not None and hasattr(dataset, "with_format"):
                # a cached view skips decoding the row, so its label comes from the column, read once
                self._labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[label_column])

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def views(self) -> "AugmentedDataset":
        return self

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self._epoch.fill_(int(epoch))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.dataset, self.image_column)
        return self._fingerprint

    # -- rendering -----------------------------------------------------------------------------

    def partners(self, epoch: int) -> np.ndarray:
        if self._partners is None or self._partners[0] != epoch:
            self._partners = (epoch, mix_partners(self.recipe, self.seed, epoch, len(self)))
        return self._partners[1]

    def _read(self, sample_id: int) -> tuple[torch.Tensor, int | None]:
        try:
            row = self.dataset[sample_id]
            image = image_to_tensor(row[self.image_column])
        except Exception as error:  # decoding errors come from PIL, datasets or numpy alike
            where = describe_sample(self.dataset, self.image_column, sample_id)
            raise ValueError(f"cannot read the image of {where}: {error}") from error
        label = None if self.label_column is None else self._checked_label(sample_id, row[self.label_column])
        return image, label

    def _checked_label(self, sample_id: int, label) -> int:
        label = int(label)
        if self.num_labels is not None and not 0 <= label < self.num_labels:
            raise ValueError(f"sample_id={sample_id} has label={label}; accepted: 0..{self.num_labels - 1}")
        return label

    def render(self, sample_id: int, epoch: int | None = None) -> tuple[torch.Tensor, int | None]:
        """The unmixed view of one sample (normalised float32) and its label."""
        view, label, _ = self._render(sample_id, epoch, digest=False)
        return view, label

    def _render(self, sample_id: int, epoch: int | None, digest: bool) -> tuple[torch.Tensor, int | None, int | None]:
        """`render`, plus the decoded image's digest when `digest` is asked for."""
        epoch = self.epoch if epoch is None else epoch
        key = None
        if self.view_cache is not None:
            key = (*self._cache_key, int(epoch), int(sample_id))
            view = self.view_cache.get(key)
            if view is not None:
                found = None
                if digest:
                    if sample_id not in self._digests:
                        self._digests[sample_id] = image_digest(self._read(sample_id)[0])
                    found = self._digests[sample_id]
                if self.label_column is None:
                    return view, None, found
                if self._labels is not None:
                    return view, self._checked_label(sample_id, self._labels[sample_id]), found
                return view, self._checked_label(sample_id, self.dataset[sample_id][self.label_column]), found
        image, label = self._read(sample_id)
        params = sample_augmentation(self.recipe, augmentation_seed(self.seed, epoch, sample_id), *image.shape[-2:])
        view = apply_augmentation(image, params, self.recipe)
        if key is not None:
            self.view_cache.put(key, view)
        return view, label, (image_digest(image) if digest else None)

    def items(self, sample_ids: Sequence[int], epoch: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Items of `sample_ids` at `epoch` (default: the current one), each image decoded once."""
        epoch = self.epoch if epoch is None else int(epoch)
        ids = [int(i) for i in sample_ids]
        for i in ids:
            if not 0 <= i < len(self):
                raise IndexError(f"sample_id={i} is outside the dataset's {len(self)} samples")
        partners = self.partners(epoch) if self.recipe.mixes else None
        needed = list(ids)
        if partners is not None:
            needed += [int(partners[i]) for i in ids if partners[i] >= 0]
        # each image decoded once
        views = {i: self._render(i, epoch, self.image_digests) for i in dict.fromkeys(needed)}
        items = []
        for i in ids:
            pixels, label, digest = views[i]
            mix = sample_mix(self.recipe, self.seed, epoch, i, int(partners[i])) if partners is not None else None
            if mix is not None:
                partner_pixels, partner_label, _ = views[mix.partner]
                pixels = mix_images(pixels, partner_pixels, mix)
                if label is not None:
                    label = mix_labels(label, partner_label, mix, self.num_labels)
            item = {"pixel_values": pixels, "sample_id": torch.tensor(i, dtype=torch.int64)}
            if digest is not None:
                item["image_digest"] = torch.tensor(digest, dtype=torch.int64)
            if label is not None:
                item["labels"] = label if isinstance(label, torch.Tensor) else torch.tensor(label, dtype=torch.int64)
            items.append(item)
        return items

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        return self.items(indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items([index])[0]


class PairedSampler(Sampler[int]):
    """A shuffling sampler that keeps each epoch's Mixup/CutMix partners adjacent.

    With an even batch size a pair never straddles two batches, so a batch decodes each image
    once. The shuffle depends on (seed, epoch) only; set_epoch forwards to the dataset.
    """

    def __init__(self, dataset: "DistillationDataset", seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        augmented = self.dataset.views
        n = len(augmented)
        generator = torch.Generator().manual_seed(seed_from("sampler", self.seed, self.dataset.epoch))
        order = pairing_order(augmented.recipe, augmented.seed, augmented.epoch, n)
        if not augmented.recipe.mixes:
            yield from order[torch.randperm(n, generator=generator).numpy()].tolist()
            return
        paired = n - n % 2
        pairs = order[:paired].reshape(-1, 2)[torch.randperm(paired // 2, generator=generator).numpy()]
        yield from pairs.ravel().tolist()
        yield from order[paired:].tolist()
