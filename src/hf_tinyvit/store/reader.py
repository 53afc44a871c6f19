"""Opening a teacher-logit store and reading it in place: lookups by (epoch, sample id) served
straight from the Parquet shards, row group by row group, with no second copy of the store on disk and
memory bounded by what is read, not by the number of records."""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..augment.mix import mix_partners, pairing_order
from ..augment.recipe import AugmentationRecipe
from ..augment.sampling import augmentation_seed
from ..hub import public_name
from .codec import decode_topk
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
    metadata_features,
    read_metadata,
    row_group_rows,
    seeds_checksum,
    shard_relpath,
    topk_encoding,
    topk_row_problem,
)

__all__ = [
    "TeacherLogitStore",
    "check_shard_records",
    "check_student_compatible",
    "decode_shard",
    "planned_row_groups",
    "shard_schema",
]

# Decoded row groups kept per epoch reader (their stored columns: sqrt8 codes, not the floats they decode to):
# enough for a 1k-class epoch (about 60 bytes a record) or a window of a 21k-class one, and a bound on memory
# whatever the number of records.
_DEFAULT_SHARD_CACHE_BYTES = 256 << 20
# Shards held open at once per epoch reader (a file handle and a footer each).
_MAX_OPEN_SHARDS = 16


def shard_schema(metadata: dict[str, Any]) -> pa.Schema:
    """The Arrow schema every shard of a store must have, as its metadata implies it."""
    return metadata_features(metadata).arrow_schema


def _damaged(where: str, store_path: str, what: str) -> ValueError:
    return ValueError(
        f"{where}: {what}: the shard is damaged (truncated, bit-flipped or edited); check the whole store with "
        f"`hf-tinyvit verify {store_path}`, and restore the file or delete it and rerun the saving command"
    )


def _table_columns(table: pa.Table, topk: int, where: str) -> dict[str, np.ndarray]:
    """A table's columns as numpy arrays, list columns as `(rows, k)`."""
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            flat = column.flatten().to_numpy()
            rows = flat.reshape(len(column), -1) if len(column) else flat.reshape(0, topk)
            if len(column) and rows.shape[1] != topk:
                raise ValueError(f"{where}: {name} rows hold {rows.shape[1]} entries; the metadata says topk={topk}")
            columns[name] = rows
        else:
            columns[name] = column.to_numpy()
    return columns


def _check_rows(columns: dict[str, np.ndarray], metadata: dict[str, Any], epoch: int, where: str) -> None:
    """Refuse rows of another epoch, and top-k rows that no teacher's softmax could have produced (checked on the
    values a student would get: decoded, with the encoding's tolerance on the mass)."""
    if len(columns["epoch"]) and not (columns["epoch"] == epoch).all():
        other = int(columns["epoch"][columns["epoch"] != epoch][0])
        raise ValueError(f"{where}: the shard holds records of epoch {other}; it sits where epoch {epoch} belongs")
    encoding = topk_encoding(metadata)
    if encoding == "float16":  # as stored: the float16 bit patterns allow the fast whole-array checks
        values, indices = columns["teacher_topk_values"], columns["teacher_topk_indices"]
    else:
        values, indices = decode_topk(columns, encoding)
    problem = topk_row_problem(values, indices, int(metadata["num_labels"]), mass_tolerance(metadata))
    if problem is not None:
        row, reason = problem
        stored = "" if encoding == "float16" else (
            f"; stored slots {columns['teacher_topk_slots'][row].tolist()}, codes {columns['teacher_topk_codes'][row].tolist()}"
        )  # fmt: skip
        raise ValueError(
            f"{where}: the record of sample_id={int(columns['sample_id'][row])} is no teacher output: {reason} "
            f"(probabilities {values[row].astype(np.float32).tolist()}, class indices {indices[row].tolist()}{stored})"
        )


def decode_shard(
    source: bytes | str,
    metadata: dict[str, Any],
    epoch: int,
    where: str,
    store_path: str = "",
    schema: pa.Schema | None = None,
):
    """A shard's columns as numpy arrays (list columns as `(rows, k)`, top-k columns as stored), after checking
    that it parses, has the columns the metadata implies (`schema`, `shard_schema(metadata)` when not given),
    belongs to `epoch`, and that every top-k row is one a teacher's softmax could have produced. `source` is
    the file's bytes or its path."""
    try:
        table = pq.read_table(pa.BufferReader(source) if isinstance(source, bytes) else source, memory_map=True)
    except (pa.ArrowException, OSError) as error:
        raise _damaged(where, store_path, f"it cannot be read as Parquet ({error})") from None
    schema = shard_schema(metadata) if schema is None else schema
    check_shard_schema(table.schema.remove_metadata(), schema.remove_metadata(), where)
    shard = _table_columns(table, int(metadata["topk"]), where)
    _check_rows(shard, metadata, epoch, where)
    return shard


def check_shard_records(
    shard: dict[str, np.ndarray],
    metadata: dict[str, Any],
    epoch: int,
    chunk: int,
    where: str,
    order: np.ndarray | None = None,
    partners: np.ndarray | None = None,
    entry: dict[str, Any] | None = None,
):
    """Refuse a decoded shard that does not hold exactly chunk `chunk` of `epoch`: its sample ids, their
    augmentation seeds (stored per record in formats 1 and 2; in format 3 as the CRC-32 in the shard's
    metadata `entry`) and Mixup partners, as the store's seed, recipe and size derive them (`order` and
    `partners`, the epoch's pairing order and partners, may be passed in when checking many chunks)."""
    seed, size, chunk_size = int(metadata["seed"]), int(metadata["dataset_size"]), int(metadata["chunk_size"])
    recipe = AugmentationRecipe.from_dict(metadata["recipe"])
    order = pairing_order(recipe, seed, epoch, size) if order is None else order
    expected = np.sort(order[chunk * chunk_size : chunk * chunk_size + expected_chunk_rows(size, chunk_size, chunk)])
    ids = shard["sample_id"]
    _check_ids(ids, expected, chunk, where)
    if "aug_seed" in shard:
        seeds = np.array([augmentation_seed(seed, epoch, int(i)) for i in ids], dtype=np.uint32)
        if not np.array_equal(shard["aug_seed"].astype(np.uint32), seeds):
            bad = int(ids[shard["aug_seed"].astype(np.uint32) != seeds][0])
            raise ValueError(f"{where}: the augmentation seed of sample_id={bad} is not the one seed={seed} derives")
    if entry is not None and "aug_seeds" in entry:
        _check_seeds(entry, seed, epoch, ids, where)
    if "mix_partner" in shard:
        partners = (mix_partners(recipe, seed, epoch, size) if partners is None else partners)[ids]
        if not np.array_equal(shard["mix_partner"], partners):
            bad = int(ids[shard["mix_partner"] != partners][0])
            raise ValueError(f"{where}: the Mixup partner of sample_id={bad} is not the one the pairing derives")


def _check_ids(ids: np.ndarray, expected: np.ndarray, chunk: int, where: str) -> None:
    if np.array_equal(ids, expected):
        return
    ids_set, expected_set = set(ids.tolist()), set(expected.tolist())
    missing, foreign = sorted(expected_set - ids_set), sorted(ids_set - expected_set)
    ordered = np.sort(ids)
    twice = ordered[:-1][np.diff(ordered) == 0]
    details = []
    if missing:
        details.append(f"no record for sample_id={missing[0]} ({len(missing)} missing)")
    if len(twice):
        details.append(f"sample_id={int(twice[0])} has a record in two places")
    if foreign:
        details.append(f"sample_id={foreign[0]} belongs to another chunk")
    raise ValueError(
        f"{where}: holds {len(ids)} records whose sample ids are not the {len(expected)} of chunk {chunk}: "
        + ("; ".join(details) or "they are not sorted")
    )


def _check_seeds(entry: dict[str, Any], seed: int, epoch: int, ids: np.ndarray, where: str) -> None:
    derived = seeds_checksum(seed, epoch, ids)
    if derived != entry["aug_seeds"]:
        raise ValueError(
            f"{where}: the augmentation seeds this release derives from seed={seed} for the shard's records "
            f"(CRC-32 {derived:#010x}) are not those it was saved with ({int(entry['aug_seeds']):#010x}): replaying "
            "it would not rebuild the views the teacher saw; read the store with the hf_tinyvit release that wrote it"
        )


def planned_row_groups(metadata: dict[str, Any], rows: int) -> list[int]:
    """The rows of each row group of a shard of `rows` records, as the store's format writes them (format 3:
    `row_group_rows` each, the last cut short; before: one group)."""
    if int(metadata["format_version"]) < 3:
        return [rows] if rows else []
    size = row_group_rows(int(metadata["topk"]), int(metadata["num_labels"]), topk_encoding(metadata),
                          int(metadata["chunk_size"]))  # fmt: skip
    return [min(size, rows - start) for start in range(0, rows, size)]


@dataclass
class _OpenShard:
    handle: Any  # the open file, so the bytes read are those that were checked, even if the path is replaced
    file: pq.ParquetFile
    starts: np.ndarray  # first row of each row group, then the row count


class _EpochReader:
    """Random access by sample id into one epoch of a store, decoding row groups from Parquet on demand.

    Where a sample's record lies follows from the layout: chunk `id // chunk_size`, row `id % chunk_size`
    without Mixup/CutMix (sample ids in order); with them, the epoch's pairing order (derived, not read).
    A shard is checked once per process when first read (and again if its file changes): its size and
    sha256 against the metadata's (format 2 and later), its columns and row groups, its sample ids and
    epoch, and in format 3 its records' derived augmentation seeds against the CRC its metadata line
    keeps. A lookup then decodes only the row groups it touches, checks their top-k rows, and keeps the
    most recently used ones up to `cache_bytes`. Pickling (DataLoader workers) drops the caches and the
    open files; each worker opens its own.
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
        self.chunk_size = int(metadata["chunk_size"])
        self.epoch = epoch
        self.path = path
        self.entries = entries
        self.cache_bytes = cache_bytes
        self.version = int(metadata["format_version"])
        self.recipe = AugmentationRecipe.from_dict(metadata["recipe"])
        # every shard of a store has the same row groups (one per shard before format 3), the last one's cut short
        self.group_rows = (
            row_group_rows(int(metadata["topk"]), int(metadata["num_labels"]), topk_encoding(metadata), self.chunk_size)
            if self.version >= 3 else self.chunk_size
        )  # fmt: skip
        self.groups_per_chunk = -(-self.chunk_size // self.group_rows)
        self._schema = shard_schema(metadata).remove_metadata()  # built once: each shard only compares against it
        self._reset()

    def _reset(self) -> None:
        self._order: np.ndarray | None = None  # pairing order (Mixup/CutMix stores)
        self._place: tuple[np.ndarray, np.ndarray] | None = None  # (chunk, row) of each sample id, same stores
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        self._verified: dict[int, tuple] = {}  # shard -> identity of the file checked
        self._groups: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in ("_order", "_place", "_open", "_verified", "_groups", "_cached"):
            state.pop(name)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def _name(self, number: int) -> str:
        return f"store {self.path!r} epoch {self.epoch}: {os.path.relpath(self.files[number], self.path)}"

    # -- where records lie ---------------------------------------------------------------------

    def _pairing(self) -> np.ndarray:
        if self._order is None:
            self._order = pairing_order(self.recipe, int(self.metadata["seed"]), self.epoch, self.dataset_size)
        return self._order

    def expected_ids(self, chunk: int) -> np.ndarray:
        """The sample ids chunk `chunk` of this epoch holds, in the order they are stored."""
        start = chunk * self.chunk_size
        stop = start + expected_chunk_rows(self.dataset_size, self.chunk_size, chunk)
        if not self.recipe.mixes:
            return np.arange(start, stop, dtype=np.int64)
        return np.sort(self._pairing()[start:stop])

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, row in the chunk's shard) of each sample id."""
        if not self.recipe.mixes:
            chunks = sample_ids // self.chunk_size
            return chunks, sample_ids - chunks * self.chunk_size
        if self._place is None:  # 12 bytes a sample: Mixup/CutMix stores are ImageNet-1k scale at most
            order = self._pairing()
            chunk_of = np.empty(self.dataset_size, dtype=np.int32)
            chunk_of[order] = np.arange(self.dataset_size) // self.chunk_size
            by_chunk = np.lexsort((np.arange(self.dataset_size), chunk_of))  # ids sorted by (chunk, id)
            row_of = np.empty(self.dataset_size, dtype=np.int64)
            row_of[by_chunk] = np.arange(self.dataset_size) - chunk_of[by_chunk].astype(np.int64) * self.chunk_size
            self._place = (chunk_of, row_of)
        chunk_of, row_of = self._place
        return chunk_of[sample_ids].astype(np.int64), row_of[sample_ids]

    def missing(self) -> np.ndarray:
        """Sample ids the epoch holds no record for: none, once every shard is checked (a shard that lacks a
        record of its chunk is refused, naming it)."""
        for number in range(len(self.files)):
            self._shard(number)
        return np.zeros(0, dtype=np.int64)

    # -- shards --------------------------------------------------------------------------------

    def _shard(self, number: int) -> _OpenShard:
        shard = self._open.get(number)
        if shard is not None:
            self._open.move_to_end(number)
            return shard
        try:
            handle = open(self.files[number], "rb", buffering=0)  # pyarrow buffers; a second buffer would hide changes
        except OSError as error:
            raise FileNotFoundError(f"{self._name(number)} cannot be read: {error}") from None
        try:
            status = os.fstat(handle.fileno())
            identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
            if self._verified.get(number) != identity:
                self._verify(number, handle.read())
                self._verified[number] = identity
                handle.seek(0)
            try:
                file = pq.ParquetFile(handle, page_checksum_verification=self.version >= 3)
            except (pa.ArrowException, OSError) as error:
                raise _damaged(self._name(number), self.path, f"it cannot be read as Parquet ({error})") from None
            starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
        except BaseException:
            handle.close()
            raise
        shard = _OpenShard(handle, file, starts)
        self._open[number] = shard
        while len(self._open) > _MAX_OPEN_SHARDS:
            _, closed = self._open.popitem(last=False)
            closed.handle.close()
        return shard

    def _verify(self, number: int, data: bytes) -> None:
        """The checks a shard passes once per process (and again whenever its file changes): bytes, layout, ids."""
        where = self._name(number)
        entry = None if self.entries is None else self.entries[number]
        if entry is not None:
            if len(data) != entry["bytes"]:
                raise _damaged(where, self.path, f"it holds {len(data)} bytes; the metadata says {entry['bytes']}")
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise _damaged(where, self.path, f"its sha256 {digest[:16]}... differs from the metadata's "
                               f"{entry['sha256'][:16]}...")  # fmt: skip
        try:
            file = pq.ParquetFile(pa.BufferReader(data))
            check_shard_schema(file.schema_arrow.remove_metadata(), self._schema, where)
            head = file.read(columns=["sample_id", "epoch"])
        except (pa.ArrowException, OSError) as error:
            raise _damaged(where, self.path, f"its sample ids cannot be read ({error})") from None
        ids, epochs = head.column(0).to_numpy(), head.column(1).to_numpy()
        if len(epochs) and not (epochs == self.epoch).all():
            other = int(epochs[epochs != self.epoch][0])
            raise ValueError(f"{where}: the shard holds records of epoch {other}; it sits where epoch {self.epoch} belongs")
        _check_ids(ids, self.expected_ids(number), number, where)
        groups = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
        planned = planned_row_groups(self.metadata, len(ids))
        if groups != planned and len(ids):
            raise _damaged(where, self.path, f"its row groups hold {groups[:4]}... rows; the format writes {planned[:4]}...")
        if entry is not None and "aug_seeds" in entry:
            _check_seeds(entry, int(self.metadata["seed"]), self.epoch, ids, where)

    def _group(self, number: int, group: int) -> dict[str, np.ndarray]:
        key = (number, group)
        columns = self._groups.get(key)
        if columns is not None:
            self._groups.move_to_end(key)
            return columns
        shard = self._shard(number)
        where = self._name(number)
        try:
            table = shard.file.read_row_group(group)
        except (pa.ArrowException, OSError) as error:  # a page checksum that fails, a page that cannot decode
            raise _damaged(where, self.path, f"row group {group} cannot be read ({error})") from None
        columns = _table_columns(table, int(self.metadata["topk"]), where)
        expected = self.expected_ids(number)[shard.starts[group] : shard.starts[group + 1]]
        if not np.array_equal(columns["sample_id"], expected):
            raise _damaged(where, self.path, f"row group {group} holds other sample ids than when the shard was checked")
        _check_rows(columns, self.metadata, self.epoch, where)
        self._groups[key] = columns
        self._cached += sum(a.nbytes for a in columns.values())
        while self._cached > self.cache_bytes and len(self._groups) > 1:
            _, evicted = self._groups.popitem(last=False)
            self._cached -= sum(a.nbytes for a in evicted.values())
        return columns

    def lookup(self, sample_ids: Iterable[int]) -> dict[str, np.ndarray]:
        sample_ids = np.asarray(list(sample_ids) if not isinstance(sample_ids, np.ndarray) else sample_ids, dtype=np.int64)
        if len(sample_ids) and (sample_ids.min() < 0 or sample_ids.max() >= self.dataset_size):
            bad = sample_ids[(sample_ids < 0) | (sample_ids >= self.dataset_size)][0]
            raise IndexError(f"sample_id={bad} is outside the store's dataset of {self.dataset_size} samples")
        chunks, rows = self.locate(sample_ids)
        groups = rows // self.group_rows
        keys = chunks * self.groups_per_chunk + groups
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        out: dict[str, np.ndarray] = {}
        for positions in np.split(order, bounds) if len(order) else []:
            number, group = int(chunks[positions[0]]), int(groups[positions[0]])
            columns = self._group(number, group)
            picked = rows[positions] - group * self.group_rows
            for name, values in columns.items():
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
        self.source = path  # what `open` was given: this folder, or the Hub id it was downloaded from
        self._epochs: dict[int, _EpochReader] = {}
        self._hub: tuple[str, str | None] | None = None  # (repo id, revision) of a store opened from the Hub
        self._fetched: set[int] | None = None  # epochs whose shards are here; None: all of them

    @classmethod
    def open(
        cls,
        path_or_hub_id: str | os.PathLike,
        *,
        cache_dir: str | None = None,
        revision: str | None = None,
        epochs: Iterable[int] | None = None,
    ) -> "TeacherLogitStore":
        """Open a store folder, or a Hub dataset repo (downloaded into the Hub cache: its metadata, card and
        shards). From the Hub, `epochs` fetches the shards of only those epochs (another epoch's shards are
        fetched when it is first read, or with `fetch`); None fetches every epoch. `store.source` keeps what
        was given, which cards name instead of a local path."""
        source = str(path_or_hub_id)
        wanted = None if epochs is None else sorted({int(e) for e in epochs})
        path = _local_or_download(source, revision, wanted)
        store = cls(path, read_metadata(path), cache_dir=cache_dir)
        store.source = source
        if os.path.normpath(path) != os.path.normpath(source):
            # later fetches read the same snapshot: the commit this one resolved to, where the path names it
            parent, commit = os.path.split(os.path.normpath(path))
            store._hub = (source, commit if os.path.basename(parent) == "snapshots" else revision)
            store._fetched = None if wanted is None else set(wanted)
        store.check_complete()
        return store

    def fetch(self, epochs: Iterable[int]) -> None:
        """Make the shards of `epochs` local: a no-op for a store folder or epochs already fetched; from the Hub,
        one download of just those epochs' files (`allow_patterns` per `data/epoch_XXXX`)."""
        missing = sorted({int(e) for e in epochs} - (self._fetched or set()))
        if self._hub is None or self._fetched is None or not missing:
            return
        for epoch in missing:
            self._require_epoch(epoch)
        repo_id, revision = self._hub
        _local_or_download(repo_id, revision, missing)
        self._fetched.update(missing)
        self.check_complete(missing)

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
    def topk_encoding(self) -> str:
        """How the top-k is stored: "float16" or the quantised "sqrt8" (see `hf_tinyvit.store.codec`)."""
        return topk_encoding(self.metadata)

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

    def check_complete(self, epochs: Iterable[int] | None = None) -> None:
        """The cheap check `open` runs: every listed shard (of `epochs`; default: the fetched ones) is there
        and, where the metadata records it, has its size. `verify()` reads every byte and every row."""
        if epochs is None:
            epochs = [e for e in self.epochs if self._fetched is None or e in self._fetched]
        for epoch in epochs:
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
        self.fetch(chosen)
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
            self.fetch([epoch])
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
        """The teacher's stored top-k `(values float32, indices int64)`, both `(len(sample_ids), k)`, decoded
        from the store's encoding, after checking that each record's augmentation seed (and Mixup partner) is
        the one this store's seed replays: a record that does not belong to the view being replayed is refused
        by name. (Format 3 keeps no seed per record: each shard's derived seeds were checked against the CRC
        its metadata line keeps when the shard was first read.)"""
        sample_ids = np.asarray([int(i) for i in sample_ids], dtype=np.int64)
        stored = self.lookup(epoch, sample_ids)
        seed = int(self.metadata["seed"])
        if "aug_seed" in stored:
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
        values, indices = decode_topk(stored, self.topk_encoding)
        return torch.from_numpy(values), torch.from_numpy(indices)

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

        self.fetch(self.epochs)
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


# A Hub repo id is one "name" or "owner/name"; anything else (several slashes, a leading dot or slash, a
# backslash, "~") can only be meant as a local folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _local_or_download(path: str, revision: str | None, epochs: list[int] | None = None) -> str:
    """A store folder: `path` itself when it is one, else the snapshot of the Hub dataset repo it names, with
    its metadata, card and the shards of `epochs` (None: of every epoch).

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

    # The shards a store lists, its metadata and card: no stray files of the repo.
    shards = ["data/epoch_*/chunk_*.parquet"] if epochs is None else [f"data/epoch_{e:04d}/chunk_*.parquet" for e in epochs]
    patterns = [METADATA_NAME, CARD_NAME, *shards]
    try:
        return snapshot_download(path, repo_type="dataset", revision=revision, allow_patterns=patterns)
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
