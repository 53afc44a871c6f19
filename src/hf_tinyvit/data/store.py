"""The teacher-logit store: Parquet shards of sparse top-k teacher probabilities and augmentation
seeds, one row per (sample, epoch), plus a metadata JSON; written atomically, read memory-mapped."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasets

from .sparse import index_dtype

__all__ = [
    "FORMAT_VERSION",
    "TeacherLogitStore",
    "check_student_compatible",
    "shard_relpath",
    "store_features",
    "write_shard",
    "write_json_atomic",
]

FORMAT_VERSION = 1
METADATA_NAME = "metadata.json"
# Fields that identify what a store was built from: a resumed run or a replay must match them all.
IDENTITY_FIELDS = (
    "format_version",
    "teacher_name",
    "teacher_hash",
    "num_labels",
    "topk",
    "recipe_fingerprint",
    "seed",
    "dataset_fingerprint",
    "dataset_size",
    "chunk_size",
)


def shard_relpath(epoch: int, chunk: int) -> str:
    """Where chunk `chunk` of epoch `epoch` lives inside a store folder."""
    return f"data/epoch_{epoch:04d}/chunk_{chunk:06d}.parquet"


def epoch_split(epoch: int) -> str:
    return f"epoch_{epoch}"


def store_features(topk: int, num_labels: int, with_partner: bool) -> datasets.Features:
    """Columns of a store. Indices use the smallest unsigned type that holds `num_labels`."""
    columns = {
        "sample_id": datasets.Value("int64"),
        "epoch": datasets.Value("int32"),
        "aug_seed": datasets.Value("uint32"),
        "teacher_topk_values": datasets.List(datasets.Value("float16"), length=topk),
        "teacher_topk_indices": datasets.List(datasets.Value(index_dtype(num_labels).name), length=topk),
    }
    if with_partner:
        columns["mix_partner"] = datasets.Value("int64")
    return datasets.Features(columns)


def shard_table(
    features: datasets.Features,
    sample_ids: np.ndarray,
    epoch: int,
    aug_seeds: np.ndarray,
    values: np.ndarray,
    indices: np.ndarray,
    partners: np.ndarray | None = None,
) -> pa.Table:
    """One shard's rows as an Arrow table, sorted by sample id (the order delta encoding likes best)."""
    order = np.argsort(sample_ids, kind="stable")
    k = values.shape[1]
    schema = features.arrow_schema
    columns = {
        "sample_id": pa.array(sample_ids[order].astype(np.int64)),
        "epoch": pa.array(np.full(len(order), epoch, dtype=np.int32)),
        "aug_seed": pa.array(aug_seeds[order].astype(np.uint32)),
        "teacher_topk_values": pa.FixedSizeListArray.from_arrays(pa.array(values[order].astype(np.float16).ravel()), k),
        "teacher_topk_indices": pa.FixedSizeListArray.from_arrays(
            pa.array(
                indices[order].astype(schema.field("teacher_topk_indices").type.value_type.to_pandas_dtype()).ravel()
            ),
            k,
        ),
    }
    if "mix_partner" in features:
        columns["mix_partner"] = pa.array(partners[order].astype(np.int64))
    return pa.Table.from_pydict(columns, schema=schema)


def write_shard(path: str, table: pa.Table) -> None:
    """Write a shard under a temporary name, then rename it: a reader never sees a partial shard.

    The encodings keep a record near the paper's `4 + 4k` bytes: sample ids are consecutive
    (delta-packed to almost nothing), the epoch is one value (dictionary + RLE), and byte-stream
    splitting groups the probabilities' exponent bytes and the indices' high bytes so that zstd
    squeezes them.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    encodings = {
        "sample_id": "DELTA_BINARY_PACKED",
        "aug_seed": "PLAIN",
        "teacher_topk_values.list.element": "BYTE_STREAM_SPLIT",
        "teacher_topk_indices.list.element": "BYTE_STREAM_SPLIT",
    }
    if "mix_partner" in table.column_names:
        encodings["mix_partner"] = "BYTE_STREAM_SPLIT"
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=9,
        use_dictionary=["epoch"],
        column_encoding=encodings,
        write_statistics=["sample_id", "epoch"],
        row_group_size=max(1, table.num_rows),
    )
    os.replace(tmp, path)


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def read_metadata(path: str) -> dict[str, Any]:
    metadata_path = os.path.join(path, METADATA_NAME)
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"{path!r} is not a teacher-logit store: {METADATA_NAME} is missing")
    with open(metadata_path) as handle:
        try:
            metadata = json.load(handle)
        except ValueError as error:
            raise ValueError(f"store {path!r}: {METADATA_NAME} is not valid JSON ({error})") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"store {path!r}: {METADATA_NAME} holds a {type(metadata).__name__}, not an object")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"store {path!r} has format_version={metadata.get('format_version')}; this version reads {FORMAT_VERSION}"
        )
    _check_metadata(path, metadata)
    # JSON keys are strings; the rest of the stack (transformers configs) keys id2label by int
    metadata["id2label"] = {int(k): v for k, v in (metadata.get("id2label") or {}).items()}
    return metadata


def _check_metadata(path: str, metadata: dict[str, Any]) -> None:
    """Refuse metadata whose fields have the wrong type or contradict each other, naming the field.

    A store may come from the Hub: its metadata is input like any other, and a wrong `topk` or
    `dataset_size` would otherwise surface as a wrong-size target deep inside training.
    """

    def fail(field: str, accepted: str):
        raise ValueError(f"store {path!r}: {METADATA_NAME} has {field}={metadata.get(field)!r}; expected {accepted}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for field in ("teacher_name", "teacher_hash", "recipe_fingerprint", "dataset_fingerprint"):
        if not isinstance(metadata.get(field), str):
            fail(field, "a string")
    for field in ("num_labels", "dataset_size", "chunk_size", "num_chunks", "num_epochs", "topk"):
        if not (is_int(metadata.get(field)) and metadata[field] >= 1):
            fail(field, "an integer >= 1")
    if not (is_int(metadata.get("seed")) and metadata["seed"] >= 0):
        fail("seed", "an integer >= 0")
    if metadata["topk"] > metadata["num_labels"]:
        fail("topk", f"at most num_labels={metadata['num_labels']}")
    if metadata["num_chunks"] != -(-metadata["dataset_size"] // metadata["chunk_size"]):
        fail("num_chunks", "ceil(dataset_size / chunk_size)")
    if not isinstance(metadata.get("recipe"), dict):
        fail("recipe", "an object of AugmentationRecipe fields")
    epochs = metadata.get("epochs")
    if not (isinstance(epochs, list) and all(is_int(e) and e >= 0 for e in epochs) and epochs == sorted(set(epochs))):
        fail("epochs", "a sorted list of distinct epoch numbers >= 0")
    id2label = metadata.get("id2label")
    if id2label is not None and not (
        isinstance(id2label, dict)
        and all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in id2label.items())
    ):
        fail("id2label", "an object mapping class numbers to names")


def identity_mismatches(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {got.get(name)!r} != {expected.get(name)!r}"
        for name in IDENTITY_FIELDS
        if expected.get(name) != got.get(name)
    ]


def dataset_card(metadata: dict[str, Any]) -> str:
    """A dataset card whose YAML maps one split per saved epoch, so `load_dataset(<repo>)` works."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for epoch in metadata["epochs"]:
        lines += [f"  - split: {epoch_split(epoch)}", f"    path: {os.path.dirname(shard_relpath(epoch, 0))}/*.parquet"]
    lines += ["tags:", "- knowledge-distillation", "- tinyvit", "---", ""]
    lines += [
        f"# Teacher logits of `{metadata['teacher_name']}`",
        "",
        f"Sparse top-{metadata['topk']} teacher probabilities (float16) and class indices for "
        f"{metadata['dataset_size']} images x {len(metadata['epochs'])} epochs, with a per-record uint32 "
        "augmentation seed that replays the exact view the teacher saw (TinyViT's fast pretraining "
        "distillation). Read it with `hf_tinyvit.data.TeacherLogitStore.open` and "
        "`StoredLogitsDataset`; `metadata.json` holds the augmentation recipe and the teacher's identity.",
        "",
    ]
    return "\n".join(lines)


class _EpochRows:
    """Random access by sample id into one epoch of a store, over a memory-mapped Arrow table."""

    def __init__(
        self, dataset: datasets.Dataset, dataset_size: int, epoch: int, path: str, topk: int, num_labels: int
    ):
        self.topk = topk
        self.num_labels = num_labels
        self.dataset = dataset
        self.epoch = epoch
        self.path = path
        self.dataset_size = dataset_size
        self._views: dict[str, Any] | None = None

    def __getstate__(self):
        # the numpy views point into a memory map; a worker rebuilds them from the dataset instead
        state = dict(self.__dict__)
        state["_views"] = None
        return state

    def _build(self) -> dict[str, Any]:
        table = self.dataset.data.table
        starts, offset = [], 0
        columns: dict[str, list[np.ndarray]] = {}
        for name in table.column_names:
            columns[name] = []
            for chunk in table.column(name).chunks:
                if pa.types.is_fixed_size_list(chunk.type) or pa.types.is_list(chunk.type):
                    # flatten() honours the chunk's slice offset; zero_copy keeps the data on the map.
                    # Every row holds k entries, whether the list type says so or not.
                    flat = chunk.flatten().to_numpy(zero_copy_only=True)
                    columns[name].append(flat.reshape(len(chunk), -1) if len(chunk) else flat.reshape(0, 0))
                else:
                    columns[name].append(chunk.to_numpy(zero_copy_only=True))
        for chunk in columns["sample_id"]:
            starts.append(offset)
            offset += len(chunk)
        for name, limit in (("teacher_topk_values", None), ("teacher_topk_indices", self.num_labels)):
            for part in columns[name]:
                if part.size and part.shape[1] != self.topk:
                    raise ValueError(
                        f"store {self.path!r} epoch {self.epoch}: {name} rows hold {part.shape[1]} entries; "
                        f"the metadata says topk={self.topk}"
                    )
                if limit is not None and part.size and int(part.max()) >= limit:
                    raise ValueError(
                        f"store {self.path!r} epoch {self.epoch}: a class index {int(part.max())} is outside "
                        f"the metadata's num_labels={limit}"
                    )
        sample_ids = np.concatenate(columns["sample_id"]) if columns["sample_id"] else np.zeros(0, np.int64)
        if len(sample_ids) and (sample_ids.min() < 0 or sample_ids.max() >= self.dataset_size):
            raise ValueError(
                f"store {self.path!r} epoch {self.epoch} holds sample ids outside [0, {self.dataset_size})"
            )
        row_of = np.full(self.dataset_size, -1, dtype=np.int64)
        row_of[sample_ids] = np.arange(len(sample_ids))
        return {"starts": np.asarray(starts), "columns": columns, "row_of": row_of}

    def missing(self) -> np.ndarray:
        if self._views is None:
            self._views = self._build()
        return np.flatnonzero(self._views["row_of"] < 0)

    def lookup(self, sample_ids: Iterable[int]) -> dict[str, np.ndarray]:
        if self._views is None:
            self._views = self._build()
        views = self._views
        sample_ids = np.asarray(list(sample_ids), dtype=np.int64)
        if len(sample_ids) and (sample_ids.min() < 0 or sample_ids.max() >= self.dataset_size):
            bad = sample_ids[(sample_ids < 0) | (sample_ids >= self.dataset_size)][0]
            raise IndexError(f"sample_id={bad} is outside the store's dataset of {self.dataset_size} samples")
        rows = views["row_of"][sample_ids]
        if (rows < 0).any():
            raise KeyError(
                f"store {self.path!r} has no record for sample_id={int(sample_ids[rows < 0][0])} in epoch {self.epoch}"
            )
        chunk = np.searchsorted(views["starts"], rows, side="right") - 1
        within = rows - views["starts"][chunk]
        return {
            name: np.stack([parts[c][r] for c, r in zip(chunk, within)]) if len(rows) else np.zeros(0)
            for name, parts in views["columns"].items()
        }


class TeacherLogitStore:
    """A saved teacher-logit store: metadata plus per-epoch Parquet shards.

    `open` reads a local folder or downloads a Hub dataset repo. Epochs are converted by
    `datasets` into memory-mapped Arrow files on first use (`cache_dir`), so nothing is held
    whole in RAM; `load()` gives the same data as a `DatasetDict` with one split per epoch.
    """

    def __init__(self, path: str, metadata: dict[str, Any], cache_dir: str | None = None):
        self.path = path
        self.metadata = metadata
        self.cache_dir = cache_dir
        self._epochs: dict[int, _EpochRows] = {}

    @classmethod
    def open(
        cls, path_or_hub_id: str, *, cache_dir: str | None = None, revision: str | None = None
    ) -> "TeacherLogitStore":
        path = str(path_or_hub_id)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(path, repo_type="dataset", revision=revision)
        store = cls(path, read_metadata(path), cache_dir=cache_dir)
        store.check_complete()
        return store

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
        return datasets.load_dataset(
            "parquet", data_files=self.data_files(epochs), cache_dir=self.cache_dir, streaming=streaming
        )

    def _require_epoch(self, epoch: int) -> None:
        if epoch not in self.metadata["epochs"]:
            raise KeyError(f"epoch {epoch} is not in store {self.path!r}; saved epochs: {self.epochs}")

    # -- reading -------------------------------------------------------------------------------

    def rows(self, epoch: int) -> _EpochRows:
        if epoch not in self._epochs:
            self._require_epoch(epoch)
            split = epoch_split(epoch)
            # Opened mid-training, once per epoch: the loader's progress bars would interleave with the logs.
            shown = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()
            try:
                dataset = datasets.load_dataset(
                    "parquet", data_files={split: self.shard_files(epoch)}, split=split, cache_dir=self.cache_dir
                )
            finally:
                if shown:
                    datasets.enable_progress_bars()
            self._epochs[epoch] = _EpochRows(
                dataset, int(self.metadata["dataset_size"]), epoch, self.path, self.topk, self.num_labels
            )
        return self._epochs[epoch]

    def lookup(self, epoch: int, sample_ids: Iterable[int]) -> dict[str, np.ndarray]:
        """The stored columns of the given samples in `epoch`, as numpy arrays in the given order."""
        return self.rows(epoch).lookup(sample_ids)

    # -- Hub -----------------------------------------------------------------------------------

    def upload_files(self) -> list[str]:
        """Paths (relative to the store) that `push_to_hub` uploads: metadata, card, complete shards."""
        files = [METADATA_NAME]
        if os.path.exists(os.path.join(self.path, "README.md")):
            files.append("README.md")
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
