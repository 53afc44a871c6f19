"""Opening a teacher-logit store and reading it in place: lookups by (epoch, sample id) served
straight from the Parquet shards, with no second copy of the store on disk."""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..augment.mix import mix_partners, pairing_order
from ..augment.recipe import AugmentationRecipe
from ..augment.sampling import augmentation_seed
from .format import (
    CARD_NAME,
    CHECKSUM_FIELD,
    DIGEST_COLUMN,
    METADATA_NAME,
    check_shard_schema,
    epoch_split,
    expected_chunk_rows,
    mass_tolerance,
    metadata_checksum,
    read_metadata,
    shard_relpath,
    store_features,
    topk_row_problem,
)

__all__ = ["TeacherLogitStore", "check_shard_records", "check_student_compatible", "decode_shard", "shard_schema"]

# Decoded shards kept per epoch reader: enough for a shuffled epoch to revisit shards without
# decompressing them again, bounded so a 21k-class epoch does not have to fit in memory at once.
_DEFAULT_SHARD_CACHE_BYTES = 1 << 30


def shard_schema(metadata: dict[str, Any]) -> pa.Schema:
    """The Arrow schema every shard of a store must have, as its metadata implies it."""
    features = store_features(
        int(metadata["topk"]),
        int(metadata["num_labels"]),
        with_partner=AugmentationRecipe.from_dict(metadata["recipe"]).mixes,
        with_digest=int(metadata["format_version"]) >= 2,
    )
    return features.arrow_schema


def _damaged(where: str, store_path: str, what: str) -> ValueError:
    return ValueError(
        f"{where}: {what}: the shard is damaged (truncated, bit-flipped or edited); check the whole store with "
        f"`hf-tinyvit verify {store_path}`, and restore the file or delete it and rerun the saving command"
    )


def decode_shard(
    source: bytes | str,
    metadata: dict[str, Any],
    epoch: int,
    where: str,
    store_path: str = "",
    schema: pa.Schema | None = None,
):
    """A shard's columns as numpy arrays (list columns as `(rows, k)`), after checking that it parses,
    has the columns the metadata implies (`schema`, `shard_schema(metadata)` when not given), belongs to
    `epoch`, and that every top-k row is one a teacher's softmax could have produced. `source` is the
    file's bytes or its path."""
    try:
        table = pq.read_table(pa.BufferReader(source) if isinstance(source, bytes) else source, memory_map=True)
    except (pa.ArrowException, OSError) as error:
        raise _damaged(where, store_path, f"it cannot be read as Parquet ({error})") from None
    schema = shard_schema(metadata) if schema is None else schema
    check_shard_schema(table.schema.remove_metadata(), schema.remove_metadata(), where)
    topk = int(metadata["topk"])
    shard = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            flat = column.flatten().to_numpy()
            rows = flat.reshape(len(column), -1) if len(column) else flat.reshape(0, topk)
            if len(column) and rows.shape[1] != topk:
                raise ValueError(f"{where}: {name} rows hold {rows.shape[1]} entries; the metadata says topk={topk}")
            shard[name] = rows
        else:
            shard[name] = column.to_numpy()
    if len(shard["epoch"]) and not (shard["epoch"] == epoch).all():
        other = int(shard["epoch"][shard["epoch"] != epoch][0])
        raise ValueError(f"{where}: the shard holds records of epoch {other}; it sits where epoch {epoch} belongs")
    problem = topk_row_problem(
        shard["teacher_topk_values"], shard["teacher_topk_indices"], int(metadata["num_labels"]), mass_tolerance(metadata)
    )
    if problem is not None:
        row, reason = problem
        raise ValueError(
            f"{where}: the record of sample_id={int(shard['sample_id'][row])} is no teacher output: {reason} "
            f"(probabilities {shard['teacher_topk_values'][row].astype(np.float32).tolist()}, class indices "
            f"{shard['teacher_topk_indices'][row].tolist()})"
        )
    return shard


def check_shard_records(
    shard: dict[str, np.ndarray],
    metadata: dict[str, Any],
    epoch: int,
    chunk: int,
    where: str,
    order: np.ndarray | None = None,
    partners: np.ndarray | None = None,
):
    """Refuse a decoded shard that does not hold exactly chunk `chunk` of `epoch`: its sample ids, their
    augmentation seeds and Mixup partners, as the store's seed, recipe and size derive them (`order` and
    `partners`, the epoch's pairing order and partners, may be passed in when checking many chunks)."""
    seed, size, chunk_size = int(metadata["seed"]), int(metadata["dataset_size"]), int(metadata["chunk_size"])
    recipe = AugmentationRecipe.from_dict(metadata["recipe"])
    order = pairing_order(recipe, seed, epoch, size) if order is None else order
    expected = np.sort(order[chunk * chunk_size : chunk * chunk_size + expected_chunk_rows(size, chunk_size, chunk)])
    ids = shard["sample_id"]
    if not np.array_equal(ids, expected):
        raise ValueError(
            f"{where}: holds {len(ids)} records whose sample ids are not the {len(expected)} of chunk {chunk} "
            f"(e.g. {sorted(set(ids.tolist()) ^ set(expected.tolist()))[:5]} differ)"
        )
    seeds = np.array([augmentation_seed(seed, epoch, int(i)) for i in ids], dtype=np.uint32)
    if not np.array_equal(shard["aug_seed"].astype(np.uint32), seeds):
        bad = int(ids[shard["aug_seed"].astype(np.uint32) != seeds][0])
        raise ValueError(f"{where}: the augmentation seed of sample_id={bad} is not the one seed={seed} derives")
    if "mix_partner" in shard:
        partners = (mix_partners(recipe, seed, epoch, size) if partners is None else partners)[ids]
        if not np.array_equal(shard["mix_partner"], partners):
            bad = int(ids[shard["mix_partner"] != partners][0])
            raise ValueError(f"{where}: the Mixup partner of sample_id={bad} is not the one the pairing derives")


class _EpochReader:
    """Random access by sample id into one epoch of a store, decoding shards from Parquet on demand.

    Opening reads only the `sample_id` column of each shard (delta-packed, a few bytes per row) to
    map every sample to its shard and row; a lookup decodes the shards it touches and keeps the
    most recently used ones up to `cache_bytes`. A shard is checked as it is decoded: its sha256
    against the metadata's (format 2), its columns, and every top-k row (see `decode_shard`).
    Pickling (DataLoader workers) drops the caches; each worker rebuilds its own.
    """

    def __init__(
        self,
        files: list[str],
        metadata: dict[str, Any],
        epoch: int,
        path: str,
        cache_bytes: int,
        entries: list[dict[str, Any]] | None = None,
    ):
        self.files = files
        self.metadata = metadata
        self.dataset_size = int(metadata["dataset_size"])
        self.epoch = epoch
        self.path = path
        self.entries = entries
        self.cache_bytes = cache_bytes
        self._where: tuple[np.ndarray, np.ndarray] | None = None
        self._shards: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0
        self._schema = shard_schema(metadata)  # built once: a shard's decode only compares against it

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_where"], state["_shards"], state["_cached"] = None, OrderedDict(), 0
        return state

    def _name(self, number: int) -> str:
        return f"store {self.path!r} epoch {self.epoch}: {os.path.relpath(self.files[number], self.path)}"

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._where is None:
            columns = []
            for number, file in enumerate(self.files):
                try:
                    ids = pq.read_table(file, columns=["sample_id"], memory_map=True).column(0).to_numpy()
                except (pa.ArrowException, OSError, KeyError) as error:
                    raise _damaged(self._name(number), self.path, f"its sample ids cannot be read ({error})") from None
                if len(ids) and (ids.min() < 0 or ids.max() >= self.dataset_size):
                    raise ValueError(f"{self._name(number)} holds sample ids outside [0, {self.dataset_size})")
                columns.append(ids)
            # counted before allocating: a metadata claiming more samples than the shards hold allocates nothing
            total = sum(len(ids) for ids in columns)
            if total > self.dataset_size:
                raise ValueError(
                    f"store {self.path!r} epoch {self.epoch}: its shards hold {total} records for a dataset of "
                    f"{self.dataset_size} samples: some sample appears twice"
                )
            shard_of = np.full(self.dataset_size, -1, dtype=np.int32)
            row_of = np.full(self.dataset_size, -1, dtype=np.int64)
            for number, ids in enumerate(columns):
                twice = ids[shard_of[ids] >= 0] if len(ids) else ids
                if len(twice) or len(np.unique(ids)) != len(ids):
                    sample = int(twice[0]) if len(twice) else int(ids[np.flatnonzero(np.diff(np.sort(ids)) == 0)[0]])
                    raise ValueError(f"{self._name(number)}: sample_id={sample} has a record in two places")
                shard_of[ids] = number
                row_of[ids] = np.arange(len(ids))
            self._where = (shard_of, row_of)
        return self._where

    def missing(self) -> np.ndarray:
        """Sample ids the epoch holds no record for."""
        return np.flatnonzero(self._index()[0] < 0)

    def _read(self, number: int) -> bytes | str:
        """The shard's bytes, checked against the metadata's size and sha256; its path when there are none (format 1)."""
        if self.entries is None:
            return self.files[number]
        entry = self.entries[number]
        try:
            with open(self.files[number], "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise FileNotFoundError(f"{self._name(number)} cannot be read: {error}") from None
        if len(data) != entry["bytes"]:
            raise _damaged(self._name(number), self.path, f"it holds {len(data)} bytes; the metadata says {entry['bytes']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise _damaged(self._name(number), self.path, f"its sha256 {digest[:16]}... differs from the metadata's "
                           f"{entry['sha256'][:16]}...")  # fmt: skip
        return data

    def _decode(self, number: int) -> dict[str, np.ndarray]:
        shard = self._shards.get(number)
        if shard is not None:
            self._shards.move_to_end(number)
            return shard
        shard = decode_shard(self._read(number), self.metadata, self.epoch, self._name(number), self.path, self._schema)
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
            picked = rows[positions]
            if picked.max() >= len(shard["sample_id"]) or not np.array_equal(shard["sample_id"][picked], sample_ids[positions]):
                # the file changed between indexing and decoding (replaced under a running job)
                raise _damaged(self._name(int(number)), self.path, "its rows moved since the epoch was indexed")
            for name, values in shard.items():
                if name not in out:
                    out[name] = np.empty((len(sample_ids), *values.shape[1:]), dtype=values.dtype)
                out[name][positions] = values[picked]
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
        self._epochs: dict[int, _EpochReader] = {}

    @classmethod
    def open(
        cls, path_or_hub_id: str | os.PathLike, *, cache_dir: str | None = None, revision: str | None = None
    ) -> "TeacherLogitStore":
        path = _local_or_download(str(path_or_hub_id), revision)
        store = cls(path, read_metadata(path), cache_dir=cache_dir)
        store.check_complete()
        return store

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"TeacherLogitStore({self.path!r}, teacher={m['teacher_name']!r}, top-{m['topk']} of {m['num_labels']} "
            f"classes, {m['dataset_size']} samples x {len(m['epochs'])} epochs)"
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

    def shard_entries(self, epoch: int) -> list[dict[str, Any]] | None:
        """The metadata's line (rows, bytes, sha256) of each shard of `epoch`, in chunk order; None for a
        format 1 store, which records none."""
        if "shards" not in self.metadata:
            return None
        entries = {entry["chunk"]: entry for entry in self.metadata["shards"] if entry["epoch"] == epoch}
        return [entries[c] for c in range(self.metadata["num_chunks"])]

    @property
    def identity(self) -> str:
        """What this store is, as a training checkpoint records it: the metadata's checksum (over the
        teacher, recipe, dataset, epochs and every shard's sha256; computed for a format 1 store)."""
        return self.metadata.get(CHECKSUM_FIELD) or metadata_checksum(self.metadata)

    @property
    def has_image_digests(self) -> bool:
        """Whether each record keeps a digest of its image (format 2), so a replay checks every image."""
        return int(self.metadata["format_version"]) >= 2

    def check_complete(self) -> None:
        """The cheap check `open` runs: every listed shard is there and, where the metadata records it, has
        its size. `verify()` reads every byte and every row."""
        for epoch in self.epochs:
            missing = [f for f in self.shard_files(epoch) if not os.path.exists(f)]
            if missing:
                raise FileNotFoundError(
                    f"store {self.path!r} lists epoch {epoch} but {len(missing)} shard(s) are missing, e.g. {missing[0]}"
                )
            for file, entry in zip(self.shard_files(epoch), self.shard_entries(epoch) or []):
                size = os.path.getsize(file)
                if size != entry["bytes"]:
                    raise _damaged(
                        f"store {self.path!r} epoch {epoch}: {entry['path']}", self.path,
                        f"it holds {size} bytes; the metadata says {entry['bytes']}",
                    )  # fmt: skip

    def verify(self, dataset=None, *, image_column: str = "image"):
        """Read every byte and row of the store and report what is damaged (see `verify_store`)."""
        from .verify import verify_store

        return verify_store(self.path, dataset=dataset, image_column=image_column)

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
                    self.shard_files(epoch), self.metadata, epoch, self.path, self.shard_cache_bytes,
                    self.shard_entries(epoch),
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

    def image_digest_mismatches(self, epoch: int, sample_ids: Iterable[int], digests: Iterable[int]) -> list[tuple]:
        """`(sample_id, stored, given)` for each sample whose image digest differs from the one stored with
        its record: the image changed since the teacher saw it. Empty for a format 1 store (no digests)."""
        if not self.has_image_digests:
            return []
        sample_ids = np.asarray([int(i) for i in sample_ids], dtype=np.int64)
        given = np.asarray([int(d) for d in digests], dtype=np.int64)
        stored = self.lookup(epoch, sample_ids)[DIGEST_COLUMN].astype(np.int64)
        return [(int(i), int(s), int(g)) for i, s, g in zip(sample_ids, stored, given) if s != g]

    def _partners(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_partner_cache", None)
        if cached is None or cached[0] != epoch:
            cached = (epoch, mix_partners(self.recipe, int(self.metadata["seed"]), epoch, self.dataset_size))
            self._partner_cache = cached
        return cached[1]

    # -- Hub -----------------------------------------------------------------------------------

    def upload_files(self) -> list[str]:
        """Paths (relative to the store) that `push_to_hub` uploads: metadata, card, complete shards."""
        files = [METADATA_NAME]
        if os.path.exists(os.path.join(self.path, CARD_NAME)):
            files.append(CARD_NAME)
        for epoch in self.epochs:
            files += [shard_relpath(epoch, c) for c in range(self.metadata["num_chunks"])]
        return files

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | None = None, commit_message: str | None = None
    ):
        """Upload the store as a Hub dataset repo (temporary files and caches stay behind)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=self.path,
            allow_patterns=self.upload_files(),
            commit_message=commit_message or f"Upload teacher logits of {self.metadata['teacher_name']}",
        )


# A Hub repo id is one "name" or "owner/name"; anything else (several slashes, a leading dot or slash, a
# backslash, "~") can only be meant as a local folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _local_or_download(path: str, revision: str | None) -> str:
    """A store folder: `path` itself when it is one, else the snapshot of the Hub dataset repo it names.

    A path that does not exist and cannot be a Hub id is named as a missing folder, not handed to the
    Hub client (whose `HFValidationError` would not say that a local path was mistyped)."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"store path {path!r} is a file; a teacher-logit store is a folder ({METADATA_NAME}, data/)")
    if not _HUB_ID.fullmatch(path) or ".." in path:
        raise FileNotFoundError(
            f"no store folder {path!r} (looked in {os.path.abspath(path)!r}); it is not a Hub dataset id either "
            "(owner/name): check the path"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, repo_type="dataset", revision=revision)
    except Exception as error:  # offline, unknown repo, no access: the client's many types say the same
        raise FileNotFoundError(
            f"no store folder {path!r} here (looked in {os.path.abspath(path)!r}), and the Hub dataset repo "
            f"{path!r} could not be fetched: {type(error).__name__}: {error}"
        ) from error


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
