"""Opening a teacher-logit store and reading it in place: lookups by (epoch, sample id) served
straight from the Parquet shards, with no second copy of the store on disk."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..augment.mix import mix_partners
from ..augment.recipe import AugmentationRecipe
from ..augment.sampling import augmentation_seed
from ..hub import public_name
from .format import METADATA_NAME, epoch_split, read_metadata, shard_relpath

__all__ = ["TeacherLogitStore", "check_student_compatible"]

# Decoded shards kept per epoch reader: enough for a shuffled epoch to revisit shards without
# decompressing them again, bounded so a 21k-class epoch does not have to fit in memory at once.
_DEFAULT_SHARD_CACHE_BYTES = 1 << 30


class _EpochReader:
    """Random access by sample id into one epoch of a store, decoding shards from Parquet on demand.

    Opening reads only the `sample_id` column of each shard (delta-packed, a few bytes per row) to
    map every sample to its shard and row; a lookup decodes the shards it touches and keeps the
    most recently used ones up to `cache_bytes`. Pickling (DataLoader workers) drops the caches;
    each worker rebuilds its own.
    """

    def __init__(
        self, files: list[str], dataset_size: int, epoch: int, path: str, topk: int, num_labels: int, cache_bytes: int
    ):
        self.files = files
        self.dataset_size = dataset_size
        self.epoch = epoch
        self.path = path
        self.topk = topk
        self.num_labels = num_labels
        self.cache_bytes = cache_bytes
        self._where: tuple[np.ndarray, np.ndarray] | None = None
        self._shards: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_where"], state["_shards"], state["_cached"] = None, OrderedDict(), 0
        return state

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._where is None:
            shard_of = np.full(self.dataset_size, -1, dtype=np.int32)
            row_of = np.full(self.dataset_size, -1, dtype=np.int64)
            for number, file in enumerate(self.files):
                ids = pq.read_table(file, columns=["sample_id"], memory_map=True).column(0).to_numpy()
                if len(ids) and (ids.min() < 0 or ids.max() >= self.dataset_size):
                    raise ValueError(
                        f"store {self.path!r} epoch {self.epoch}: {os.path.basename(file)} holds sample ids outside "
                        f"[0, {self.dataset_size})"
                    )
                shard_of[ids] = number
                row_of[ids] = np.arange(len(ids))
            self._where = (shard_of, row_of)
        return self._where

    def missing(self) -> np.ndarray:
        """Sample ids the epoch holds no record for."""
        return np.flatnonzero(self._index()[0] < 0)

    def _decode(self, number: int) -> dict[str, np.ndarray]:
        shard = self._shards.get(number)
        if shard is not None:
            self._shards.move_to_end(number)
            return shard
        table = pq.read_table(self.files[number], memory_map=True)
        shard = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
                flat = column.flatten().to_numpy()
                rows = flat.reshape(len(column), -1) if len(column) else flat.reshape(0, self.topk)
                if len(column) and rows.shape[1] != self.topk:
                    raise ValueError(
                        f"store {self.path!r} epoch {self.epoch}: {name} rows hold {rows.shape[1]} entries; "
                        f"the metadata says topk={self.topk}"
                    )
                shard[name] = rows
            else:
                shard[name] = column.to_numpy()
        indices = shard.get("teacher_topk_indices")
        if indices is not None and indices.size and int(indices.max()) >= self.num_labels:
            raise ValueError(
                f"store {self.path!r} epoch {self.epoch}: a class index {int(indices.max())} is outside "
                f"the metadata's num_labels={self.num_labels}"
            )
        self._shards[number] = shard
        self._cached += sum(a.nbytes for a in shard.values())
        while self._cached > self.cache_bytes and len(self._shards) > 1:
            _, evicted = self._shards.popitem(last=False)
            self._cached -= sum(a.nbytes for a in evicted.values())
        return shard

    def lookup(self, sample_ids: Iterable[int]) -> dict[str, np.ndarray]:
        sample_ids = np.asarray(list(sample_ids), dtype=np.int64)
        if len(sample_ids) and (sample_ids.min() < 0 or sample_ids.max() >= self.dataset_size):
            bad = sample_ids[(sample_ids < 0) | (sample_ids >= self.dataset_size)][0]
            raise IndexError(f"sample_id={bad} is outside the store's dataset of {self.dataset_size} samples")
        shard_of, row_of = self._index()
        shards, rows = shard_of[sample_ids], row_of[sample_ids]
        if (shards < 0).any():
            raise KeyError(
                f"store {self.path!r} has no record for sample_id={int(sample_ids[shards < 0][0])} in epoch {self.epoch}"
            )
        out: dict[str, np.ndarray] = {}
        for number in np.unique(shards):
            shard = self._decode(int(number))
            positions = np.flatnonzero(shards == number)
            for name, values in shard.items():
                if name not in out:
                    out[name] = np.empty((len(sample_ids), *values.shape[1:]), dtype=values.dtype)
                out[name][positions] = values[rows[positions]]
        return out


class TeacherLogitStore:
    """A saved teacher-logit store: metadata plus per-epoch Parquet shards.

    `open` reads a local folder or downloads a Hub dataset repo. Lookups read the shards in place
    (see `lookup`); `load()` gives the same data as a `datasets.DatasetDict` with one split per
    epoch, for inspection (that path builds `datasets`' Arrow cache, in `cache_dir`).
    """

    def __init__(
        self,
        path: str,
        metadata: dict[str, Any],
        cache_dir: str | None = None,
        shard_cache_bytes: int = _DEFAULT_SHARD_CACHE_BYTES,
    ):
        self.path = path
        self.metadata = metadata
        self.cache_dir = cache_dir
        self.shard_cache_bytes = int(shard_cache_bytes)
        self.source = path  # what `open` was given: this folder, or the Hub id it was downloaded from
        self._epochs: dict[int, _EpochReader] = {}

    @classmethod
    def open(
        cls, path_or_hub_id: str | os.PathLike, *, cache_dir: str | None = None, revision: str | None = None
    ) -> "TeacherLogitStore":
        """Open a store folder, or a Hub dataset repo (downloaded once into the Hub cache: its metadata, card
        and shards). `store.source` keeps what was given, which cards name instead of a local path."""
        source = str(path_or_hub_id)
        path = source
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(source)
            except HFValidationError:
                raise FileNotFoundError(
                    f"{source!r} is neither a store folder on this machine nor a Hub dataset id (user/name)"
                ) from None
            # The shards a store lists, its metadata and card: no stray files of the repo.
            patterns = [METADATA_NAME, "README.md", "data/epoch_*/chunk_*.parquet"]
            path = snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=patterns)
        store = cls(path, read_metadata(path), cache_dir=cache_dir)
        store.source = source
        store.check_complete()
        return store

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"TeacherLogitStore({self.source!r}, teacher={m['teacher_name']!r}, top-{m['topk']} of {m['num_labels']} "
            f"classes, {m['dataset_size']} samples x epochs {m['epochs']}, {m['recipe'].get('image_size')} px views, "
            f"format {m['format_version']})"
        )

    # -- facts ---------------------------------------------------------------------------------

    @property
    def epochs(self) -> list[int]:
        return list(self.metadata["epochs"])

    @property
    def num_labels(self) -> int:
        return int(self.metadata["num_labels"])

    @property
    def topk(self) -> int:
        return int(self.metadata["topk"])

    @property
    def dataset_size(self) -> int:
        return int(self.metadata["dataset_size"])

    @property
    def recipe(self) -> AugmentationRecipe:
        """The augmentation recipe the stored views were rendered with."""
        recipe = AugmentationRecipe.from_dict(self.metadata["recipe"])
        if recipe.fingerprint() != self.metadata["recipe_fingerprint"]:
            raise ValueError(
                f"store {self.path!r} recipe fingerprint {self.metadata['recipe_fingerprint']} does not match its "
                f"recipe ({recipe.fingerprint()}): it was written by an incompatible version"
            )
        return recipe

    def check_replay(self, dataset_size: int, dataset_fingerprint, recipe: AugmentationRecipe | None = None) -> None:
        """Raise unless a dataset of `dataset_size` samples whose content hashes to `dataset_fingerprint()`
        (called only once the sizes agree) and `recipe` (when given) replay this store's views."""
        if not self.epochs:
            raise ValueError(f"store {self.path!r} has no complete epoch yet")
        if dataset_size != self.dataset_size:
            raise ValueError(
                f"the dataset has {dataset_size} samples but store {self.path!r} was built from "
                f"{self.dataset_size}: pass the same dataset (split, --max_samples) the teacher saw"
            )
        stored = self.recipe
        if recipe is not None and recipe.fingerprint() != stored.fingerprint():
            differing = {
                k: (v, self.metadata["recipe"].get(k)) for k, v in recipe.to_dict().items()
                if self.metadata["recipe"].get(k) != v
            }  # fmt: skip
            raise ValueError(
                f"recipe {recipe.fingerprint()} differs from the store's {stored.fingerprint()} in "
                f"{differing} (given, stored): replaying it would not rebuild the teacher's views"
            )
        fingerprint = dataset_fingerprint()
        if fingerprint != self.metadata["dataset_fingerprint"]:
            raise ValueError(
                f"dataset fingerprint {fingerprint} differs from the store's {self.metadata['dataset_fingerprint']}: "
                f"store {self.path!r} was built from another dataset, split or order"
            )

    def shard_files(self, epoch: int) -> list[str]:
        return [os.path.join(self.path, shard_relpath(epoch, c)) for c in range(self.metadata["num_chunks"])]

    def check_complete(self) -> None:
        for epoch in self.epochs:
            missing = [f for f in self.shard_files(epoch) if not os.path.exists(f)]
            if missing:
                raise FileNotFoundError(
                    f"store {self.path!r} lists epoch {epoch} but {len(missing)} shard(s) are missing, e.g. {missing[0]}"
                )

    def data_files(self, epochs: Iterable[int] | None = None) -> dict[str, list[str]]:
        """`data_files` for `datasets.load_dataset("parquet", ...)`: one split per epoch."""
        chosen = self.epochs if epochs is None else list(epochs)
        for epoch in chosen:
            self._require_epoch(epoch)
        return {epoch_split(e): self.shard_files(e) for e in chosen}

    def load(self, epochs: Iterable[int] | None = None, *, streaming: bool = False):
        """The store as a `DatasetDict` (memory-mapped) or, with `streaming`, an `IterableDatasetDict`."""
        import datasets

        return datasets.load_dataset(
            "parquet", data_files=self.data_files(epochs), cache_dir=self.cache_dir, streaming=streaming
        )

    def _require_epoch(self, epoch: int) -> None:
        if epoch not in self.metadata["epochs"]:
            raise KeyError(f"epoch {epoch} is not in store {self.path!r}; saved epochs: {self.epochs}")

    # -- reading -------------------------------------------------------------------------------

    def rows(self, epoch: int) -> _EpochReader:
        if epoch not in self._epochs:
            self._require_epoch(epoch)
            # One epoch's decoded shards at a time: training reads epochs in turn.
            self._epochs = {
                epoch: _EpochReader(
                    self.shard_files(epoch), self.dataset_size, epoch, self.path, self.topk, self.num_labels,
                    self.shard_cache_bytes,
                )
            }  # fmt: skip
        return self._epochs[epoch]

    def lookup(self, epoch: int, sample_ids: Iterable[int]) -> dict[str, np.ndarray]:
        """The stored columns of the given samples in `epoch`, as numpy arrays in the given order."""
        return self.rows(epoch).lookup(sample_ids)

    def targets(self, epoch: int, sample_ids: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's stored top-k `(values float32, indices int64)`, both `(len(sample_ids), k)`,
        after checking that each record's augmentation seed (and Mixup partner) is the one this store's
        seed replays: a record that does not belong to the view being replayed is refused by name."""
        sample_ids = np.asarray([int(i) for i in sample_ids], dtype=np.int64)
        stored = self.lookup(epoch, sample_ids)
        seed = int(self.metadata["seed"])
        expected = np.array([augmentation_seed(seed, epoch, int(i)) for i in sample_ids], dtype=np.uint32)
        got = stored["aug_seed"].astype(np.uint32)
        if not np.array_equal(got, expected):
            bad = int(sample_ids[got != expected][0])
            raise ValueError(
                f"store {self.path!r} epoch {epoch}: the augmentation seed of sample_id={bad} does not match "
                f"seed={seed}; the store is corrupt or was built with another seed"
            )
        if "mix_partner" in stored:
            partners = self._partners(epoch)[sample_ids]
            if not np.array_equal(stored["mix_partner"], partners):
                raise ValueError(
                    f"store {self.path!r} epoch {epoch}: stored Mixup partners differ from the replayed pairing"
                )
        values = torch.from_numpy(stored["teacher_topk_values"].astype(np.float32))
        indices = torch.from_numpy(stored["teacher_topk_indices"].astype(np.int64))
        return values, indices

    def _partners(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_partner_cache", None)
        if cached is None or cached[0] != epoch:
            cached = (epoch, mix_partners(self.recipe, int(self.metadata["seed"]), epoch, self.dataset_size))
            self._partner_cache = cached
        return cached[1]

    # -- Hub -----------------------------------------------------------------------------------

    def upload_files(self) -> list[str]:
        """Paths (relative to the store) that `push_to_hub` uploads besides the card: metadata and the shards
        of every complete epoch (temporary files, caches and stray files stay behind)."""
        return [METADATA_NAME] + [shard_relpath(e, c) for e in self.epochs for c in range(self.metadata["num_chunks"])]

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        license: str = "other",
        revision: str | None = None,
    ):
        """Upload the store as a Hub dataset repo in one commit: its metadata, its shards and a dataset card
        written for `repo_id` (with `license`: the logits of a dataset usually carry that dataset's terms).
        `hf-tinyvit distill --teacher_logits <repo_id>` then trains from it. Returns the commit info."""
        from huggingface_hub import CommitOperationAdd, HfApi

        from .format import dataset_card

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        card = dataset_card(self.metadata, license=license, repo_id=repo_id)
        operations = [
            CommitOperationAdd(path_in_repo=relpath, path_or_fileobj=os.path.join(self.path, relpath))
            for relpath in self.upload_files()
        ]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        return api.create_commit(
            repo_id=repo_id,
            repo_type="dataset",
            operations=operations,
            revision=revision,
            commit_message=commit_message
            or f"Upload top-{self.topk} teacher logits of {public_name(self.metadata['teacher_name'])}",
        )


def check_student_compatible(store: TeacherLogitStore | dict[str, Any], num_labels: int) -> None:
    """Raise unless a student head of `num_labels` outputs can learn from the store's targets.

    The store's class count is the teacher's (e.g. 21,841), which need not be the dataset's.
    """
    metadata = store.metadata if isinstance(store, TeacherLogitStore) else store
    if int(num_labels) != int(metadata["num_labels"]):
        raise ValueError(
            f"student num_labels={num_labels} differs from the store's num_labels={metadata['num_labels']} "
            f"(teacher {metadata['teacher_name']!r}); build the student head with num_labels={metadata['num_labels']}"
        )
