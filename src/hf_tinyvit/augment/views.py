"""Rendered views as torch datasets: replayable augmented views of an image dataset (item i of epoch e
depends on (seed, e, i) only), map-style and streamed, the contract `DistillationTrainer` reads from a dataset,
the shuffle that keeps Mixup/CutMix partners in one batch, and an in-memory cache of rendered views."""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datasets import dataset_fingerprint, describe_sample, image_digest, image_to_tensor
from .mix import mix_images, mix_labels, mix_partners, pairing_order, sample_mix
from .recipe import AugmentationRecipe
from .render import apply_augmentation
from .sampling import augmentation_seed, sample_augmentation, seed_from

__all__ = [
    "AugmentedDataset",
    "DistillationDataset",
    "IterableAugmentedDataset",
    "PairedSampler",
    "StreamedBatches",
    "ViewCache",
    "collate_views",
    "known_shard_sizes",
    "stream_rows",
    "stream_shard_sizes",
    "with_sample_ids",
]


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


def render_view(recipe: AugmentationRecipe, seed: int, epoch: int, sample_id: int, image: torch.Tensor) -> torch.Tensor:
    """The unmixed view of one decoded image (uint8 (3, H, W)) as sample `sample_id` of `epoch`: normalised float32."""
    params = sample_augmentation(recipe, augmentation_seed(seed, epoch, sample_id), *image.shape[-2:])
    return apply_augmentation(image, params, recipe)


def checked_label(sample_id: int, label, num_labels: int | None) -> int:
    label = int(label)
    if num_labels is not None and not 0 <= label < num_labels:
        raise ValueError(f"sample_id={sample_id} has label={label}; accepted: 0..{num_labels - 1}")
    return label


def view_item(pixels: torch.Tensor, sample_id: int, label) -> dict[str, torch.Tensor]:
    """One dataset item: `pixel_values`, `sample_id` and, when there is one, `labels` (an index or a distribution)."""
    item = {"pixel_values": pixels, "sample_id": torch.tensor(int(sample_id), dtype=torch.int64)}
    if label is not None:
        item["labels"] = label if isinstance(label, torch.Tensor) else torch.tensor(label, dtype=torch.int64)
    return item


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
        return checked_label(sample_id, label, self.num_labels)

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
        view = render_view(self.recipe, self.seed, epoch, sample_id, image)
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
            item = view_item(pixels, i, label)
            if digest is not None:
                item["image_digest"] = torch.tensor(digest, dtype=torch.int64)
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


# ---- streamed image datasets -------------------------------------------------------------------------------


def _examples(stream, batch_size: int = 64) -> Iterator[dict]:
    """The rows of a `datasets.IterableDataset` one by one, read with `.iter`: unlike `iter(stream)`, it
    never splits the stream again among DataLoader workers when it runs inside one. With batch_size=1 the
    stream's `state_dict()` is exact after every row."""
    for batch in stream.iter(batch_size=batch_size):
        columns = list(batch)
        for j in range(len(batch[columns[0]]) if columns else 0):
            yield {name: batch[name][j] for name in columns}


def known_shard_sizes(stream) -> list[int] | None:
    """The row count of each source shard of a stream read without a pass over its rows, or None when the stream
    does not say: from the Parquet footers of a stream of Parquet files (local or Hub: only the footer is
    fetched), or from the shards of an in-memory dataset's `to_iterable_dataset`.

    `datasets` has no public accessor for this: the stream's source iterable is read, and anything but a
    plain, unshuffled, unsplit, unfiltered Parquet or in-memory stream gives None (the counting pass runs).
    A wrong count cannot go unseen: `stream_rows` and `with_sample_ids` check each shard they read whole.
    """
    try:
        from datasets.iterable_dataset import ArrowExamplesIterable

        source = stream._ex_iterable
        if type(source) is not ArrowExamplesIterable or getattr(stream, "_distributed", None) is not None:
            return None
        kwargs = source.kwargs
        if set(kwargs) == {"shards", "batch_size"}:  # Dataset.to_iterable_dataset
            sizes = [len(shard) for shard in kwargs["shards"]]
        else:
            from datasets.packaged_modules.parquet.parquet import Parquet

            builder = getattr(source.generate_tables_fn, "__self__", None)
            if not isinstance(builder, Parquet) or set(kwargs) != {"files", "row_groups_list"}:
                return None
            if any(groups is not None for groups in kwargs["row_groups_list"]):
                return None
            if getattr(builder.config, "filters", None) is not None:
                return None
            import fsspec
            import pyarrow.parquet as pq

            sizes = []
            for file in kwargs["files"]:
                with fsspec.open(file, "rb") as handle:
                    sizes.append(pq.ParquetFile(handle).metadata.num_rows)
        return [int(n) for n in sizes] if len(sizes) == stream.num_shards else None
    except Exception:  # an internal that moved, an unreachable footer: count instead
        return None


def stream_shard_sizes(stream) -> list[int]:
    """The number of rows in each source shard of a streamed dataset, in shard order: from the Parquet footers
    (or the in-memory shards) where `known_shard_sizes` finds them, else one pass over the rows with media left
    undecoded. Pass the result to `IterableAugmentedDataset(shard_sizes=...)` to skip even that."""
    sizes = known_shard_sizes(stream)
    if sizes is not None:
        return sizes
    stream = stream.decode(False)
    return [sum(1 for _ in _examples(stream.shard(stream.num_shards, s))) for s in range(stream.num_shards)]


class _ShardReader:
    """The rows of one source shard read forward in Arrow batches: rows skipped over are never turned into
    Python objects, so reaching row 10,000 of a shard costs little more than its bytes."""

    def __init__(self, source, index: int, size: int):
        self.index, self.size = index, size
        shard = source.shard(source.num_shards, index).with_format("arrow")
        self._batches = shard.iter(batch_size=256)
        self._table = None
        self._start = 0  # position in the shard of `_table`'s first row
        self.position = 0  # the next row `take` can give

    def _load(self) -> bool:
        if self._table is not None:
            self._start += self._table.num_rows
        self._table = next(self._batches, None)
        return self._table is not None

    def _mismatch(self, seen: str) -> ValueError:
        return ValueError(
            f"source shard {self.index} holds {seen} rows, but shard_sizes says {self.size}: the sample ids would not "
            "be the map-style dataset's; pass the right shard_sizes"
        )

    def take(self, at: int, count: int) -> Iterator[dict]:
        """Rows `at`, ..., `at + count - 1` of the shard (`at` >= `position`), as dicts of undecoded values."""
        if at < self.position:
            raise RuntimeError(f"row {at} of source shard {self.index} lies behind the reader (at {self.position})")
        while count > 0:
            if self._table is None or at >= self._start + self._table.num_rows:
                if not self._load():
                    raise self._mismatch(str(self._start))
                continue
            offset = at - self._start
            part = self._table.slice(offset, min(count, self._table.num_rows - offset))
            yield from part.to_pylist()
            at, count = at + part.num_rows, count - part.num_rows
            self.position = at

    def check_end(self) -> None:
        """Refuse a shard that holds more rows than `size` (called once its `size` rows were read)."""
        while self._table is None or self.position >= self._start + self._table.num_rows:
            if not self._load():
                return
        raise self._mismatch(f"more than {self.size}")


def stream_rows(stream, shard_sizes: Sequence[int], ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, dict]]:
    """`(sample_id, row)` for every sample id in `ranges` (sorted, disjoint `[start, stop)` pairs of map-style
    indices), rows undecoded, read from the source shards that overlap the ranges and no other.

    A shard read to its end is checked against `shard_sizes`: the ids would be wrong if a count were."""
    source = stream.decode(False)
    sizes = [int(n) for n in shard_sizes]
    ends = np.cumsum(sizes)
    reader: _ShardReader | None = None
    for start, stop in ranges:
        position = int(start)
        while position < stop:
            shard = int(np.searchsorted(ends, position, side="right"))  # the first shard ending past it
            if shard >= len(sizes):
                raise IndexError(f"sample_id={position} lies past the stream's {int(ends[-1])} rows")
            first = int(ends[shard]) - sizes[shard]
            if reader is None or reader.index != shard or reader.position > position - first:
                if reader is not None and reader.index < shard and reader.position == reader.size:
                    reader.check_end()
                reader = _ShardReader(source, shard, sizes[shard])
            count = min(int(stop), int(ends[shard])) - position
            for row in reader.take(position - first, count):
                yield position, row
                position += 1
    if reader is not None and reader.position == reader.size:
        reader.check_end()


def _rows_with_ids(shard: list[int], offset: list[int], size: list[int], source, num_shards: int) -> Iterator[dict]:
    # The generator of `with_sample_ids`: each call receives a list of source shards (one per datasets shard).
    for index, first, expected in zip(shard, offset, size):
        row = -1
        for row, example in enumerate(_examples(source.shard(num_shards, index))):
            if row >= expected:
                break
            yield {**example, "sample_id": first + row}
        if row + 1 != expected:
            raise ValueError(
                f"source shard {index} holds {row + 1}{'+' if row >= expected else ''} rows, but shard_sizes says "
                f"{expected}: the sample ids would not be the map-style dataset's; pass the right shard_sizes"
            )


class StreamedBatches(torch.utils.data.IterableDataset):
    """Collated batches of rendered views of a streamed image dataset, for a fixed plan of batches: what a
    teacher pass over a stream runs on (`save_teacher_logits` with a `datasets.IterableDataset`).

    `batches` are `(group, start, stop)`: the views of sample ids `[start, stop)` at `epoch`, `group` a key the
    caller gets back with each batch (a store chunk). Each DataLoader worker takes a contiguous share of every
    group's batches, so it reads only the source shards under its shares and the groups complete in turn.
    A batch is `collate_views` of the `views.items` of its ids (a `group` entry added): bitwise what the
    map-style dataset gives for the same ids, whatever the number of workers.
    """

    def __init__(self, views: "IterableAugmentedDataset", epoch: int, batches: Sequence[tuple[int, int, int]]):
        self.views = views
        self.epoch = int(epoch)
        self.batches = [(int(g), int(a), int(b)) for g, a, b in batches]

    def share(self, worker: int, workers: int) -> list[tuple[int, int, int]]:
        """The batches worker `worker` of `workers` renders: a contiguous share of each group's, in plan order."""
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for batch in self.batches:
            groups.setdefault(batch[0], []).append(batch)
        mine = []
        for batches in groups.values():
            count = len(batches)
            mine += batches[worker * count // workers : (worker + 1) * count // workers]
        return mine

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.share(worker, workers)
        views = self.views
        ranges = sorted((a, b) for _, a, b in mine)
        rows = stream_rows(views.source, views.shard_sizes, ranges)
        for group, start, stop in sorted(mine, key=lambda batch: batch[1]):
            items = []
            for sample_id, row in itertools.islice(rows, stop - start):
                items.append(views._render({**row, "sample_id": sample_id}, self.epoch))
            if [int(item["sample_id"]) for item in items] != list(range(start, stop)):
                raise RuntimeError(f"the stream gave sample ids {[int(i['sample_id']) for i in items][:4]}... for [{start}, {stop})")
            batch = collate_views(items)
            batch["group"] = torch.tensor(group, dtype=torch.int64)
            yield batch


def with_sample_ids(stream, shard_sizes: Sequence[int], shard_order: Sequence[int] | None = None):
    """A `datasets.IterableDataset` of `stream`'s rows (media undecoded) plus `sample_id`: the row's index in
    the unshuffled, unsplit dataset (the map-style index a store was written with).

    Ids are attached per source shard from `shard_sizes`, so they stay right after any later shard
    shuffle, `split_dataset_by_node` or worker split; `shard_order` sets the order the shards are read in.
    (`stream.map(..., with_indices=True)` would not: its indices restart in every split.)
    """
    import datasets

    if len(shard_sizes) != stream.num_shards:
        raise ValueError(f"shard_sizes has {len(shard_sizes)} entries; the stream has {stream.num_shards} shards")
    order = list(range(stream.num_shards)) if shard_order is None else [int(s) for s in shard_order]
    offsets = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]).astype(int).tolist()
    return datasets.IterableDataset.from_generator(
        _rows_with_ids,
        gen_kwargs={
            "shard": order,
            "offset": [offsets[s] for s in order],
            "size": [int(shard_sizes[s]) for s in order],
            "source": stream.decode(False),
            "num_shards": stream.num_shards,
        },
    )


class _StreamRows:
    """Random reads of a few rows of a stream (what `dataset_fingerprint` probes, in increasing order), each shard
    read forward once, rows skipped over in Arrow batches."""

    def __init__(self, views: "IterableAugmentedDataset"):
        self.views = views
        self._reader: _ShardReader | None = None

    def __len__(self) -> int:
        return self.views.num_samples

    def select_columns(self, columns):
        return self

    def __getitem__(self, sample_id: int) -> dict:
        views = self.views
        shard = int(np.searchsorted(views._offsets, sample_id, side="right")) - 1
        first = int(views._offsets[shard])  # side="right": never an empty shard, which shares the next one's offset
        if self._reader is None or self._reader.index != shard or self._reader.position > sample_id - first:
            self._reader = _ShardReader(views.source.decode(False), shard, views.shard_sizes[shard])
        row = next(iter(self._reader.take(sample_id - first, 1)))
        return {views.image_column: views._decode(row[views.image_column])}


class IterableAugmentedDataset(DistillationDataset, torch.utils.data.IterableDataset):
    """Replayable augmented views of a streamed image dataset (`datasets.IterableDataset`: local Parquet or image
    folders, or a Hub id loaded with `streaming=True`), item for item the views `AugmentedDataset` renders.

    Every row carries the `sample_id` of the map-style dataset (attached per source shard before any split,
    see `with_sample_ids`). Each epoch reads the source shards in an order drawn from (seed, epoch), splits
    them among processes and DataLoader workers with `datasets.distributed.split_dataset_by_node` (one node
    per (rank, worker)), and shuffles each node's rows in windows of `shuffle_buffer` rows drawn from
    (seed, epoch, node). Every node yields the same number of items per epoch (`num_samples // nodes`,
    rounded down to a multiple of the batch size given to `configure_loader`: a node whose shards hold
    fewer rows reads them again), so all ranks take the same number of steps. The position is a small
    state (`state_dict` / `load_state_dict`, what torchdata's `StatefulDataLoader` saves per worker): a
    resumed run re-reads at most one window of raw rows and yields exactly the items an uninterrupted one
    would. Mixup/CutMix need random access to partners and are refused.
    """

    def __init__(
        self,
        stream,
        recipe: AugmentationRecipe,
        *,
        seed: int,
        shard_sizes: Sequence[int] | None = None,
        epoch: int = 0,
        image_column: str = "image",
        label_column: str | None = "label",
        num_labels: int | None = None,
        shuffle_buffer: int = 1024,
        rank: int | None = None,
        world_size: int | None = None,
        equal_split: bool = True,
    ):
        if recipe.mixes:
            raise ValueError(
                "Mixup/CutMix replay pairs samples by sample id, which needs random access: stream a recipe without "
                "mixing (TinyViT's ImageNet-21k recipe has none) or use the map-style AugmentedDataset"
            )
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer={shuffle_buffer} must be >= 1")
        columns = stream.column_names
        if columns is not None:
            for name in (image_column, label_column):
                if name is not None and name not in columns:
                    raise ValueError(f"column {name!r} is not in the stream; columns: {columns}")
        if num_labels is None and label_column is not None and stream.features is not None:
            num_labels = getattr(stream.features.get(label_column), "num_classes", None)
        self.source = stream
        self.features = stream.features
        self.shard_sizes = [int(n) for n in (stream_shard_sizes(stream) if shard_sizes is None else shard_sizes)]
        if len(self.shard_sizes) != stream.num_shards or min(self.shard_sizes, default=0) < 0:
            raise ValueError(
                f"shard_sizes={self.shard_sizes[:8]}... must give a row count >= 0 for each of the "
                f"{stream.num_shards} shards"
            )
        self.num_samples = sum(self.shard_sizes)
        if self.num_samples == 0:
            raise ValueError("the stream is empty: there is nothing to augment")
        self._offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)[:-1]])
        self.recipe = recipe
        self.seed = int(seed)
        self.image_column = image_column
        self.label_column = label_column
        self.num_labels = num_labels
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank, self.world_size = rank, world_size
        self.equal_split = bool(equal_split)
        self.image_digests = False  # items carry `image_digest` (a store with digests checks each image)
        self.batch_size, self.num_workers = 1, None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._epoch.fill_(int(epoch))
        self._fingerprint: str | None = None
        self._state: dict | None = None
        self._resume: dict | None = None

    # -- the DistillationDataset contract ----------------------------------------------------------

    @property
    def views(self) -> "IterableAugmentedDataset":
        return self

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self._epoch.fill_(int(epoch))

    def train_sampler(self, seed: int = 0) -> None:
        return None  # a stream orders itself; DataLoader takes no sampler for it

    def fingerprint(self) -> str:
        """`dataset_fingerprint` of the map-style dataset these rows come from, read off the stream."""
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(_StreamRows(self), self.image_column)
        return self._fingerprint

    # -- splitting ------------------------------------------------------------------------------------

    def configure_loader(self, batch_size: int, num_workers: int) -> None:
        """Tell the dataset how its DataLoader batches, so every node yields whole batches in equal numbers."""
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return int(self.rank), int(self.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _node(self) -> tuple[int, int]:
        rank, world = self._rank_world()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.num_workers is not None and workers != max(1, self.num_workers):
            raise RuntimeError(
                f"the DataLoader runs {workers} worker(s) but configure_loader was told num_workers={self.num_workers}"
            )
        return rank * workers + worker, world * workers

    def items_per_node(self, nodes: int) -> int | None:
        if not self.equal_split:
            return None  # every node reads its rows once (one reader, e.g. an evaluation that rank 0 dispatches)
        per_node = (self.num_samples // nodes) // self.batch_size * self.batch_size
        if per_node == 0:
            raise ValueError(
                f"{self.num_samples} samples cannot give {nodes} nodes (processes x workers) a batch of "
                f"{self.batch_size} each"
            )
        return per_node

    def __len__(self) -> int:
        """Items this process yields per epoch (all its workers together)."""
        rank, world = self._rank_world()
        if not self.equal_split:
            return self.num_samples if world == 1 else sum(self.shard_sizes[rank::world])
        workers = max(1, self.num_workers or 0)
        return workers * self.items_per_node(world * workers)

    # -- reading ---------------------------------------------------------------------------------------

    def _epoch_stream(self, epoch: int, node: int, nodes: int):
        from datasets.distributed import split_dataset_by_node

        generator = torch.Generator().manual_seed(seed_from("stream-shards", self.seed, epoch))
        order = torch.randperm(len(self.shard_sizes), generator=generator).tolist()
        source = with_sample_ids(self.source, self.shard_sizes, order)
        return split_dataset_by_node(source, rank=node, world_size=nodes)

    def _decode(self, value):
        feature = None if self.features is None else self.features.get(self.image_column)
        if isinstance(value, dict) and hasattr(feature, "decode_example"):
            return feature.decode_example(value)
        return value

    def _render(self, row: dict, epoch: int) -> dict[str, torch.Tensor]:
        sample_id = int(row["sample_id"])
        try:
            image = image_to_tensor(self._decode(row[self.image_column]))
        except Exception as error:  # decoding errors come from PIL, datasets or numpy alike
            raise ValueError(f"cannot read the image of sample_id={sample_id}: {error}") from error
        label = None if self.label_column is None else checked_label(sample_id, row[self.label_column], self.num_labels)
        item = view_item(render_view(self.recipe, self.seed, epoch, sample_id, image), sample_id, label)
        if self.image_digests:
            item["image_digest"] = torch.tensor(image_digest(image), dtype=torch.int64)
        return item

    def view_epoch(self, epoch: int) -> int:
        """The epoch whose views training epoch `epoch` renders."""
        return epoch

    def items(self, sample_ids: Sequence[int], epoch: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Items of a few `sample_ids` at `epoch` (default: the current one), as `AugmentedDataset.items` gives
        them, read off the stream (one forward pass over the shards that hold them: cheap for a handful of
        ids or a contiguous run, a pass over the stream for ids spread across it)."""
        epoch = self.epoch if epoch is None else int(epoch)
        ids = [int(i) for i in sample_ids]
        for i in ids:
            if not 0 <= i < self.num_samples:
                raise IndexError(f"sample_id={i} is outside the stream's {self.num_samples} samples")
        wanted = sorted(set(ids))
        ranges = [(i, i + 1) for i in wanted]
        rendered = {i: self._render({**row, "sample_id": i}, epoch) for i, row in stream_rows(self.source, self.shard_sizes, ranges)}
        return [rendered[i] for i in ids]

    def _extras(self, epoch: int, sample_ids: np.ndarray) -> list[dict[str, torch.Tensor]] | None:
        """Per-item fields a subclass adds for one window (stored targets); None for none."""
        return None

    def state_dict(self) -> dict:
        """Where this node stands: epoch, node, the stream state at the current window's start, and counts."""
        return dict(self._state) if self._state is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from itertools import islice

        node, nodes = self._node()
        epoch = self.epoch
        quota = self.items_per_node(nodes)
        resume, self._resume = self._resume, None
        if resume is not None and (resume.get("epoch"), resume.get("nodes"), resume.get("node")) != (epoch, nodes, node):
            resume = None  # the state of another epoch or split: start this epoch afresh
        position = resume or {"stream": None, "window": 0, "taken": 0, "passes": 0, "yielded": 0}
        render_epoch = self.view_epoch(epoch)
        passes, window_index, taken, yielded = (position[k] for k in ("passes", "window", "taken", "yielded"))
        limit = quota if quota is not None else float("inf")
        while yielded < limit:
            stream = self._epoch_stream(epoch, node, nodes)
            window_state = position["stream"] if position["stream"] is not None else stream.state_dict()
            stream.load_state_dict(window_state)
            position["stream"] = None
            rows = _examples(stream, batch_size=1)
            read_any = False
            while yielded < limit:
                window = list(islice(rows, self.shuffle_buffer))
                if not window:
                    break
                read_any = True
                generator = torch.Generator().manual_seed(
                    seed_from("stream-buffer", self.seed, epoch, node, nodes, passes, window_index)
                )
                order = torch.randperm(len(window), generator=generator).tolist()
                extras = self._extras(render_epoch, np.array([int(window[j]["sample_id"]) for j in order]))
                for position_in_window in range(taken, len(order)):
                    if yielded >= limit:
                        break
                    item = self._render(window[order[position_in_window]], render_epoch)
                    if extras is not None:
                        item.update(extras[position_in_window])
                    yielded += 1
                    self._state = {
                        "epoch": epoch, "node": node, "nodes": nodes, "stream": window_state, "window": window_index,
                        "taken": position_in_window + 1, "passes": passes, "yielded": yielded,
                    }  # fmt: skip
                    yield item
                window_state = stream.state_dict()
                window_index, taken = window_index + 1, 0
            if quota is None:
                return  # one pass over this node's rows
            if not read_any:
                raise ValueError(f"node {node} of {nodes} got no rows in epoch {epoch}: there are too few shards")
            passes += 1  # this node's shards hold fewer rows than its share: read them again
            window_index = 0
