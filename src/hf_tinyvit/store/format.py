"""The teacher-logit store's format: the sparse top-k code (encode a teacher output, rebuild its
distribution), the Parquet schema of a shard, where shards live, the metadata and its checks, the
format versions this release reads, and the dataset card."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from collections import Counter
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..augment.recipe import AugmentationRecipe
from ..augment.sampling import augmentation_seed
from .codec import FLOAT16_MASS_TOLERANCE, TOPK_COLUMNS, TOPK_ENCODINGS, index_dtype, topk_mass_tolerance

__all__ = [
    "CARD_NAME",
    "CHECKSUM_FIELD",
    "DIGEST_COLUMN",
    "FORMAT_VERSION",
    "IMAGE_DIGEST",
    "LOCK_NAME",
    "METADATA_NAME",
    "SUPPORTED_FORMAT_VERSIONS",
    "check_shard_schema",
    "dataset_card",
    "epoch_split",
    "expected_chunk_rows",
    "identity_mismatches",
    "index_dtype",
    "mass_tolerance",
    "metadata_checksum",
    "metadata_features",
    "parse_shard_relpath",
    "read_metadata",
    "row_group_rows",
    "seal_metadata",
    "seeds_checksum",
    "shard_entry",
    "shard_relpath",
    "shard_table",
    "sparse_to_dense",
    "store_features",
    "teacher_hard_labels",
    "teacher_topk",
    "topk_encoding",
    "topk_probabilities",
    "topk_row_problem",
]

FORMAT_VERSION = 3
# Versions this release opens: the current one and every older one (tests/fixtures holds a store of each).
# 2 added the per-shard checksums, the metadata's own checksum and the per-record image digest column.
# 3 records the top-k encoding (`topk_encoding`: "float16" or "sqrt8", whose columns have their own names),
# drops the per-record augmentation seed column (a hash of (seed, epoch, sample_id) that the reader derives;
# each shard's metadata line keeps a CRC-32 of its records' derived seeds instead, `aug_seeds`), writes row
# groups of about 1 MiB of top-k data (a random lookup decodes one of them, not a whole shard) and page
# checksums. A release that reads only 1 and 2 refuses a format 3 store by its version, naming the upgrade.
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
METADATA_NAME = "metadata.json"
CARD_NAME = "README.md"
# Held (flock) by the one saving run that may write a store; absent when nobody writes.
LOCK_NAME = "writer.lock"
# metadata field holding the sha256 of the metadata's other fields (format 2)
CHECKSUM_FIELD = "metadata_sha256"
# Per-record column (format 2): a digest of the decoded image the view was rendered from, and how it is computed.
DIGEST_COLUMN = "image_digest"
IMAGE_DIGEST = "crc32:uint8-rgb-chw"
# float16's tolerance on a row's mass (see codec.topk_mass_tolerance for every encoding's)
TOPK_MASS_TOLERANCE = FLOAT16_MASS_TOLERANCE
# Bounds on what a metadata file may make this code allocate or recurse into.
MAX_METADATA_BYTES = 256 * 2**20
MAX_METADATA_DEPTH = 8
MAX_NUM_LABELS = 1 << 20
# Optional metadata fields of formats 1 and 2, each with the values this release reads (absent = the first).
OPTIONAL_FIELDS = {"topk_encoding": ("float16",)}
# Fields that identify what a store was built from: a resumed run or a replay must match them all.
IDENTITY_FIELDS = (
    "format_version",
    "topk_encoding",
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


def topk_encoding(metadata: dict[str, Any]) -> str:
    """The store's top-k encoding: its metadata's `topk_encoding`, "float16" when absent (formats 1 and 2)."""
    return metadata.get("topk_encoding", "float16")


def store_features(
    topk: int,
    num_labels: int,
    with_partner: bool,
    with_digest: bool = False,
    *,
    topk_encoding: str = "float16",
    with_seed: bool = True,
) -> datasets.Features:
    """Columns of a store. Indices (and sqrt8 slots) use the smallest unsigned type that holds `num_labels`;
    format 1 and 2 stores keep a per-record `aug_seed` (`with_seed`), format 2 and 3 ones end with the
    `image_digest` column (uint32, 4 bytes a record)."""
    columns = {"sample_id": datasets.Value("int64"), "epoch": datasets.Value("int32")}
    if with_seed:
        columns["aug_seed"] = datasets.Value("uint32")
    first, second = TOPK_COLUMNS[topk_encoding]
    if topk_encoding == "float16":
        columns[first] = datasets.List(datasets.Value("float16"), length=topk)
        columns[second] = datasets.List(datasets.Value(index_dtype(num_labels).name), length=topk)
    else:
        columns[first] = datasets.List(datasets.Value(index_dtype(num_labels).name), length=topk)
        columns[second] = datasets.List(datasets.Value("uint8"), length=topk)
    if with_partner:
        columns["mix_partner"] = datasets.Value("int64")
    if with_digest:
        columns[DIGEST_COLUMN] = datasets.Value("uint32")
    return datasets.Features(columns)


def metadata_features(metadata: dict[str, Any]) -> datasets.Features:
    """The columns every shard of a store has, as its metadata (format version, encoding, recipe) implies them."""
    version = int(metadata["format_version"])
    return store_features(
        int(metadata["topk"]),
        int(metadata["num_labels"]),
        with_partner=AugmentationRecipe.from_dict(metadata["recipe"]).mixes,
        with_digest=version >= 2,
        topk_encoding=topk_encoding(metadata),
        with_seed=version <= 2,
    )


def shard_table(
    features: datasets.Features,
    sample_ids: np.ndarray,
    epoch: int,
    topk_columns: dict[str, np.ndarray],
    *,
    aug_seeds: np.ndarray | None = None,
    partners: np.ndarray | None = None,
    digests: np.ndarray | None = None,
) -> pa.Table:
    """One shard's rows as an Arrow table, sorted by sample id (the order delta encoding likes best).
    `topk_columns` are `codec.encode_topk`'s; `aug_seeds` only where the features keep them (formats 1, 2)."""
    order = np.argsort(sample_ids, kind="stable")
    schema = features.arrow_schema
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array(np.asarray(sample_ids)[order].astype(np.int64)),
        "epoch": pa.array(np.full(len(order), epoch, dtype=np.int32)),
    }
    if "aug_seed" in features:
        columns["aug_seed"] = pa.array(np.asarray(aug_seeds)[order].astype(np.uint32))
    for name, rows in topk_columns.items():
        dtype = schema.field(name).type.value_type.to_pandas_dtype()
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(rows[order].astype(dtype).ravel()), rows.shape[1])
    if "mix_partner" in features:
        columns["mix_partner"] = pa.array(np.asarray(partners)[order].astype(np.int64))
    if DIGEST_COLUMN in features:
        columns[DIGEST_COLUMN] = pa.array(np.asarray(digests)[order].astype(np.uint32))
    return pa.Table.from_pydict(columns, schema=schema)


def row_group_rows(topk: int, num_labels: int, encoding: str, chunk_size: int) -> int:
    """Rows per Parquet row group of a format 3 shard: a power of two holding about 1 MiB of top-k data (at
    least 1,024 rows, at most the chunk), so that a random lookup decodes one group rather than a whole shard
    while the groups stay large enough for zstd (k = 10: the whole 16,384-record chunk; k = 100: 2,048)."""
    width = index_dtype(num_labels).itemsize + (2 if encoding == "float16" else 1)
    rows = 1 << max(10, int(math.log2(max(1, (1 << 20) // (topk * width)))))
    return int(min(rows, chunk_size))


def seeds_checksum(seed: int, epoch: int, sample_ids: np.ndarray) -> int:
    """CRC-32 of the augmentation seeds (little-endian uint32) that `(seed, epoch, sample_id)` derive for the
    given sample ids, in order: what a format 3 shard's metadata line keeps in place of a seed column, so a
    reader whose seed derivation differs from the writer's refuses to replay views the teacher never saw."""
    seeds = np.fromiter((augmentation_seed(seed, epoch, int(i)) for i in sample_ids), dtype="<u4", count=len(sample_ids))
    return zlib.crc32(seeds.tobytes())


# ---- where shards live, what a shard must hold ------------------------------------------------------

_SHARD_PATH = re.compile(r"data/epoch_(\d{4,})/chunk_(\d{6,})\.parquet")


def parse_shard_relpath(relpath: str) -> tuple[int, int] | None:
    """(epoch, chunk) of a path written by `shard_relpath`, or None for any other name (a stray file)."""
    match = _SHARD_PATH.fullmatch(relpath.replace(os.sep, "/"))
    if match is None:
        return None
    epoch, chunk = int(match.group(1)), int(match.group(2))
    return (epoch, chunk) if shard_relpath(epoch, chunk) == relpath.replace(os.sep, "/") else None


def expected_chunk_rows(dataset_size: int, chunk_size: int, chunk: int) -> int:
    """Records in chunk `chunk` of an epoch: `chunk_size`, the last one the remainder."""
    return min(chunk_size, dataset_size - chunk * chunk_size)


def shard_entry(relpath: str, epoch: int, chunk: int, rows: int, data: bytes | None = None, *, sha256: str | None = None,
                size: int | None = None, aug_seeds: int | None = None) -> dict[str, Any]:  # fmt: skip
    """A shard's line in the metadata (format 2): where it is, what it holds, and the sha256 of its bytes; in
    format 3 also the CRC-32 of its records' derived augmentation seeds (`seeds_checksum`)."""
    if data is not None:
        sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    entry = {"path": relpath, "epoch": int(epoch), "chunk": int(chunk), "rows": int(rows), "bytes": int(size),
             "sha256": sha256}  # fmt: skip
    if aug_seeds is not None:
        entry["aug_seeds"] = int(aug_seeds)
    return entry


def check_shard_schema(schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Refuse a shard whose columns are not the ones the metadata implies (names, order and types)."""
    names, wanted = schema.names, expected.names
    if names != wanted:
        raise ValueError(f"{where}: the shard has columns {names}; the metadata implies {wanted}")
    for field in expected:
        got = schema.field(field.name).type
        if not got.equals(field.type):
            raise ValueError(f"{where}: column {field.name} has type {got}; the metadata implies {field.type}")


def mass_tolerance(metadata: dict[str, Any]) -> float:
    """How far past 1 a stored top-k row may sum once decoded, given how its values are encoded."""
    return topk_mass_tolerance(topk_encoding(metadata), int(metadata["topk"]))


def topk_row_problem(
    values: np.ndarray, indices: np.ndarray, num_labels: int, tolerance: float = TOPK_MASS_TOLERANCE
) -> tuple[int, str] | None:
    """The first row of `(n, k)` top-k values and indices that no teacher softmax could have produced,
    as `(row, reason)`, or None when every row is valid.

    Valid: finite probabilities in [0, 1], in decreasing order (column 0 is the top-1 that hard
    distillation trains on), summing to at most `1 + tolerance`; class indices in [0, num_labels),
    distinct within a row. Whole-shard reductions first (see `_rows_look_valid`); the row and the
    reason are looked for only when one of them fails.
    """
    if _rows_look_valid(values, indices, num_labels, tolerance):
        return None
    return _first_bad_row(values, indices, num_labels, tolerance)


def _first_bad_row(values: np.ndarray, indices: np.ndarray, num_labels: int, tolerance: float):
    """`topk_row_problem` row by row: per-row masks, one check at a time, the first bad row and why."""
    v = values.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        checks = [
            (lambda: ~np.isfinite(v).all(axis=1), "a probability is NaN or inf"),
            (lambda: ((v < 0) | (v > 1)).any(axis=1), "a probability lies outside [0, 1]"),
            (lambda: v.sum(axis=1) > 1 + tolerance, f"its probabilities sum to more than 1 + {tolerance:g}"),
            (lambda: (np.diff(v, axis=1) > 0).any(axis=1),
             "its probabilities are not in decreasing order (column 0 must be the teacher's top-1)"),
            (lambda: ((indices < 0) | (indices >= num_labels)).any(axis=1),
             f"a class index lies outside [0, {num_labels})"),
            (lambda: (np.diff(np.sort(indices, axis=1), axis=1) == 0).any(axis=1), "a class index appears twice"),
        ]  # fmt: skip
        for mask, reason in checks:
            bad = mask()
            if bad.any():
                return int(np.argmax(bad)), reason
    return None


def _rows_look_valid(values: np.ndarray, indices: np.ndarray, num_labels: int, tolerance: float) -> bool:
    """`topk_row_problem`'s checks as a few whole-array reductions, for the common case of a valid shard
    (about 1 us per record at k=100 where per-row masks take 5). True only when every row is valid."""
    rows, k = values.shape
    if rows == 0:
        return True
    if values.dtype == np.float16:
        # Non-negative finite float16 values order like their bit patterns, 1.0 being 0x3C00; NaN, inf and
        # every negative number (sign bit set) lie above it: one max checks finiteness and range.
        ordered = values.view(np.uint16)
        if ordered.max() > 0x3C00:
            return False
    else:
        ordered = values.astype(np.float32, copy=False)
        if not (ordered.min() >= 0 and ordered.max() <= 1):  # False for NaN too
            return False
    flat = ordered.reshape(-1)
    rising = flat[1:] > flat[:-1]
    rising[k - 1 :: k] = False  # a row's first value may exceed the previous row's last
    if rising.any() or values.sum(axis=1, dtype=np.float32).max() > 1 + tolerance:
        return False
    if int(indices.min()) < 0 or int(indices.max()) >= num_labels:
        return False
    flat = np.sort(indices, axis=1).reshape(-1)
    repeated = flat[1:] == flat[:-1]
    repeated[k - 1 :: k] = False
    return not repeated.any()


# ---- metadata ------------------------------------------------------------------------------------


def metadata_checksum(metadata: dict[str, Any]) -> str:
    """sha256 of a metadata's fields other than the checksum itself, over their canonical JSON.

    A JSON round trip first: keys become strings as on disk, so in-memory and read-back metadata agree.
    """
    payload = json.loads(json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_FIELD}, allow_nan=False))
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata with its own checksum, as the writer saves it (format 2)."""
    return {**{k: v for k, v in metadata.items() if k != CHECKSUM_FIELD}, CHECKSUM_FIELD: metadata_checksum(metadata)}


def _nesting_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
        if depth > MAX_METADATA_DEPTH:
            break
    return depth


def read_metadata(path: str) -> dict[str, Any]:
    metadata_path = os.path.join(path, METADATA_NAME)
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"{path!r} is not a teacher-logit store: {METADATA_NAME} is missing")
    size = os.path.getsize(metadata_path)
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"store {path!r}: {METADATA_NAME} is {size} bytes; a store's metadata is at most {MAX_METADATA_BYTES}"
        )
    with open(metadata_path, "rb") as handle:
        try:
            metadata = json.loads(handle.read())
        except (ValueError, RecursionError) as error:  # RecursionError: nesting deeper than the interpreter's stack
            reason = "nests deeper than JSON decoding allows" if isinstance(error, RecursionError) else str(error)
            raise ValueError(f"store {path!r}: {METADATA_NAME} is not valid JSON ({reason})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"store {path!r}: {METADATA_NAME} holds a {type(metadata).__name__}, not an object")
    if _nesting_depth(metadata) > MAX_METADATA_DEPTH:
        raise ValueError(f"store {path!r}: {METADATA_NAME} nests deeper than {MAX_METADATA_DEPTH} levels")
    version = metadata.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(
            f"store {path!r} has format_version={version}, written by a newer hf_tinyvit; this release reads "
            f"format versions {list(SUPPORTED_FORMAT_VERSIONS)}: upgrade hf_tinyvit to read it"
        )
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        raise ValueError(
            f"store {path!r} has format_version={version!r}; this release reads {list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    if version >= 2:
        # first, so that an edited field is reported as an edit rather than as whatever it breaks
        stored = metadata.get(CHECKSUM_FIELD)
        if stored != metadata_checksum(metadata):
            raise ValueError(
                f"store {path!r}: {METADATA_NAME} does not match its own checksum ({CHECKSUM_FIELD}={stored!r}): it "
                "was edited or damaged after hf_tinyvit wrote it; restore the original file or save the store again"
            )
    _check_metadata(path, metadata)
    # JSON keys are strings; the rest of the stack (transformers configs) keys id2label by int
    metadata["id2label"] = {int(k): v for k, v in (metadata.get("id2label") or {}).items()}
    return metadata


_REQUIRED_FIELDS = (
    "format_version", "teacher_name", "teacher_hash", "num_labels", "id2label", "topk", "recipe",
    "recipe_fingerprint", "seed", "dataset_fingerprint", "dataset_size", "chunk_size", "num_chunks", "num_epochs",
    "epochs",
)  # fmt: skip
_V2_FIELDS = ("shards", "image_digest", CHECKSUM_FIELD)
_ENTRY_KEYS = {"path", "epoch", "chunk", "rows", "bytes", "sha256"}
_V3_ENTRY_KEYS = _ENTRY_KEYS | {"aug_seeds"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_metadata(path: str, metadata: dict[str, Any]) -> None:
    """Refuse metadata whose fields have the wrong type, lie out of bounds or contradict each other,
    naming the field.

    A store may come from the Hub: its metadata is input like any other, and a wrong `topk` or
    `dataset_size` would otherwise surface as a wrong-size target deep inside training.
    """

    def fail(field: str, accepted: str):
        value = repr(metadata.get(field))
        value = value if len(value) <= 200 else value[:200] + "..."
        raise ValueError(f"store {path!r}: {METADATA_NAME} has {field}={value}; expected {accepted}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    version = metadata["format_version"]
    known = set(_REQUIRED_FIELDS) | set(OPTIONAL_FIELDS) | (set(_V2_FIELDS) if version >= 2 else set())
    unknown = sorted(set(metadata) - known)
    if unknown:
        raise ValueError(
            f"store {path!r}: {METADATA_NAME} has fields {unknown} that format_version={version} does not define; "
            f"known fields: {sorted(known)}"
        )
    if version >= 3:  # the encoding is required, and sqrt8 exists, from format 3 on
        if metadata.get("topk_encoding") not in TOPK_ENCODINGS:
            fail("topk_encoding", f"one of {list(TOPK_ENCODINGS)}")
    else:
        for field, accepted in OPTIONAL_FIELDS.items():
            if field in metadata and metadata[field] not in accepted:
                fail(field, f"one of {list(accepted)} (format_version={version} knows no other)")
    for field in ("teacher_name", "teacher_hash", "recipe_fingerprint", "dataset_fingerprint"):
        if not isinstance(metadata.get(field), str):
            fail(field, "a string")
    for field in ("num_labels", "dataset_size", "chunk_size", "num_chunks", "num_epochs", "topk"):
        if not (is_int(metadata.get(field)) and metadata[field] >= 1):
            fail(field, "an integer >= 1")
    if not (is_int(metadata.get("seed")) and metadata["seed"] >= 0):
        fail("seed", "an integer >= 0")
    if metadata["num_labels"] > MAX_NUM_LABELS:
        fail("num_labels", f"at most {MAX_NUM_LABELS}")
    if metadata["topk"] > metadata["num_labels"]:
        fail("topk", f"at most num_labels={metadata['num_labels']}")
    if metadata["num_chunks"] != -(-metadata["dataset_size"] // metadata["chunk_size"]):
        fail("num_chunks", "ceil(dataset_size / chunk_size)")
    if not isinstance(metadata.get("recipe"), dict):
        fail("recipe", "an object of AugmentationRecipe fields")
    try:  # the recipe's own checks, bounds included
        recipe = AugmentationRecipe.from_dict(metadata["recipe"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"store {path!r}: {METADATA_NAME} holds an invalid recipe: {error}") from None
    if recipe.fingerprint() != metadata["recipe_fingerprint"]:
        fail("recipe_fingerprint", f"the fingerprint of its recipe, {recipe.fingerprint()}")
    epochs = metadata.get("epochs")
    if not (isinstance(epochs, list) and all(is_int(e) and e >= 0 for e in epochs) and epochs == sorted(set(epochs))):
        fail("epochs", "a sorted list of distinct epoch numbers >= 0")
    id2label = metadata.get("id2label")
    if id2label is not None and not (
        isinstance(id2label, dict)
        and all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in id2label.items())
    ):
        fail("id2label", "an object mapping class numbers to names")
    if id2label and sorted(int(k) for k in id2label) != list(range(metadata["num_labels"])):
        fail("id2label", f"one name for each class 0..{metadata['num_labels'] - 1}")
    if version >= 2:
        _check_shard_entries(path, metadata, fail, is_int)


def _check_shard_entries(path: str, metadata: dict[str, Any], fail, is_int) -> None:
    """Format 2: the shard list names exactly the chunks of the listed epochs, each with the rows it must hold."""
    if metadata.get("image_digest") != IMAGE_DIGEST:
        fail("image_digest", f"{IMAGE_DIGEST!r}")
    if not isinstance(metadata.get(CHECKSUM_FIELD), str):
        fail(CHECKSUM_FIELD, "a sha256 hex string")
    shards = metadata.get("shards")
    if not isinstance(shards, list):
        fail("shards", "a list of shard entries")
    size, chunk_size = metadata["dataset_size"], metadata["chunk_size"]
    keys = _V3_ENTRY_KEYS if metadata["format_version"] >= 3 else _ENTRY_KEYS
    integers = ("epoch", "chunk", "rows", "bytes") + (("aug_seeds",) if "aug_seeds" in keys else ())
    seen = set()
    for entry in shards:
        ok = isinstance(entry, dict) and set(entry) == keys
        ok = ok and all(is_int(entry[k]) for k in integers)
        ok = ok and isinstance(entry["path"], str) and bool(_SHA256.fullmatch(str(entry["sha256"])))
        ok = ok and (0 <= entry.get("aug_seeds", 0) < 2**32)
        if not ok:
            raise ValueError(
                f"store {path!r}: {METADATA_NAME} has a shard entry {str(entry)[:200]}; expected an object with "
                f"{sorted(keys)}"
            )
        epoch, chunk = entry["epoch"], entry["chunk"]
        if epoch not in metadata["epochs"] or not 0 <= chunk < metadata["num_chunks"]:
            raise ValueError(
                f"store {path!r}: {METADATA_NAME} lists shard {entry['path']!r} of epoch {epoch}, chunk {chunk}, "
                f"outside the saved epochs {metadata['epochs']} x chunks 0..{metadata['num_chunks'] - 1}"
            )
        if entry["path"] != shard_relpath(epoch, chunk):
            raise ValueError(
                f"store {path!r}: {METADATA_NAME} lists epoch {epoch} chunk {chunk} at {entry['path']!r}; the format "
                f"puts it at {shard_relpath(epoch, chunk)!r}"
            )
        if entry["rows"] != expected_chunk_rows(size, chunk_size, chunk) or entry["bytes"] < 1:
            raise ValueError(
                f"store {path!r}: {METADATA_NAME} says {entry['path']} holds {entry['rows']} rows in {entry['bytes']} "
                f"bytes; chunk {chunk} of {size} samples in chunks of {chunk_size} holds "
                f"{expected_chunk_rows(size, chunk_size, chunk)}"
            )
        if (epoch, chunk) in seen:
            raise ValueError(f"store {path!r}: {METADATA_NAME} lists {entry['path']} twice")
        seen.add((epoch, chunk))
    missing = [(e, c) for e in metadata["epochs"] for c in range(metadata["num_chunks"]) if (e, c) not in seen]
    if missing:
        epoch, chunk = missing[0]
        raise ValueError(
            f"store {path!r}: {METADATA_NAME} lists epoch {epoch} but no entry for its shard "
            f"{shard_relpath(epoch, chunk)} ({len(missing)} missing)"
        )


def identity_mismatches(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {got.get(name)!r} != {expected.get(name)!r}"
        for name in IDENTITY_FIELDS
        if expected.get(name) != got.get(name)
    ]


_ENCODING_TEXT = {
    "float16": "columns `teacher_topk_values`, float16 probabilities by decreasing value, and `teacher_topk_indices`, "
    "their classes",
    "sqrt8": "quantised: `teacher_topk_slots` holds the top-1 class, then the other classes ascending as a first "
    "index and gaps; `teacher_topk_codes` holds round(255 sqrt(p)) of the leftover mass, then of the other classes; "
    "hf_tinyvit decodes them (`hf_tinyvit.store.codec.decode_sqrt8`)",
}


def dataset_card(metadata: dict[str, Any], *, license: str = "other", repo_id: str | None = None) -> str:
    """The store's dataset card: Hub metadata (license, task, features with the teacher's class names as a
    `ClassLabel`, one config per saved epoch listing its exact shard files, so that a stray file in the
    folder is never read) and a body naming the teacher by Hub id or name (never a local path), top-k and
    the augmentation recipe.

    `load_dataset(<store>, "epoch_3")` gives epoch 3 as its "train" split; `load_dataset(<store>)` gives
    every epoch, one split each.
    """
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    from ..hub import public_name

    epochs = list(metadata["epochs"])
    files = {epoch: [shard_relpath(epoch, c) for c in range(metadata["num_chunks"])] for epoch in epochs}
    configs = [
        {"config_name": "default", "data_files": [{"split": epoch_split(e), "path": list(files[e])} for e in epochs]}
    ]
    configs += [
        {"config_name": epoch_split(e), "data_files": [{"split": "train", "path": list(files[e])}]} for e in epochs
    ]
    id2label = {int(k): v for k, v in (metadata.get("id2label") or {}).items()}
    names = [id2label.get(i, str(i)) for i in range(int(metadata["num_labels"]))]
    # ClassLabel names must be unique; ImageNet-1k's are not ("crane", "maillot"): number the repeats
    repeated = {name for name, count in Counter(names).items() if count > 1}
    names = [f"{name} ({i})" if name in repeated else name for i, name in enumerate(names)]
    features = metadata_features(metadata)
    encoding = topk_encoding(metadata)
    if encoding == "float16":  # sqrt8 slots are the top-1 class, then gaps between classes: no class names
        features["teacher_topk_indices"] = datasets.List(datasets.ClassLabel(names=names), length=int(metadata["topk"]))
    teacher = public_name(metadata["teacher_name"])
    data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        tags=["knowledge-distillation", "teacher-logits", "tinyvit", "hf_tinyvit"],
        pretty_name=f"Top-{metadata['topk']} teacher logits of {teacher}",
        configs=configs,
    )
    DatasetInfosDict({"default": datasets.DatasetInfo(features=features)}).to_dataset_card_data(data)
    info = dict(data["dataset_info"])
    # Every configuration has the same features: one YAML object referenced by each (an anchor), so 21,841
    # class names are written once, not once per epoch.
    data["dataset_info"] = [{"config_name": "default", **info}] + [
        {"config_name": epoch_split(e), "features": info["features"]} for e in epochs
    ]
    recipe = json.dumps(metadata.get("recipe"), indent=2, sort_keys=True)
    where = repo_id or "path/to/this/store"
    body = f"""
# Teacher logits of `{teacher}`

Sparse top-{metadata['topk']} teacher probabilities and class indices (of {metadata['num_labels']} classes) for
{metadata['dataset_size']} images x {len(epochs)} epochs (epochs {epochs}); each record replays the exact view the
teacher saw from (seed, epoch, sample_id): TinyViT's fast pretraining distillation.

- teacher: `{teacher}` (weights hash `{metadata.get('teacher_hash')}`)
- top-k: {metadata['topk']} of {metadata['num_labels']} classes; the other classes share the leftover probability evenly
- top-k encoding: `{encoding}` ({_ENCODING_TEXT[encoding]})
- images: {metadata['dataset_size']} (fingerprint `{metadata.get('dataset_fingerprint')}`), seed {metadata['seed']}
- format version {metadata.get('format_version')}; `metadata.json` holds all of this and the teacher's class names

## How to use

Train a student on the replayed views with hf_tinyvit (`pip install hf_tinyvit`):

```python
from hf_tinyvit import StoredLogitsDataset, TeacherLogitStore, load_image_dataset

store = TeacherLogitStore.open("{where}")
train = StoredLogitsDataset(load_image_dataset(...)["train"], store)  # the same images the teacher saw
```

or `hf-tinyvit distill --teacher_logits {where} --distillation_type stored ...`. Inspect the records with
`datasets.load_dataset("{where}", "{epoch_split(epochs[0]) if epochs else "epoch_0"}")` (one configuration per
epoch, its records in the `train` split).

## Augmentation recipe

```json
{recipe}
```
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


# ---- the sparse top-k code ---------------------------------------------------------------------------


def teacher_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of `logits` `(batch, num_labels)`, reduced to its `k` largest entries.

    Returns float32 probabilities and int64 indices, both `(batch, k)`, sorted by decreasing
    probability so that column 0 is the teacher's top-1 class: what every top-k encoding starts
    from. Non-finite logits raise, naming the first offending row, rather than poisoning a store
    that students will train on for days.
    """
    if logits.dim() != 2:
        raise ValueError(f"teacher logits must be (batch, num_labels), got shape {tuple(logits.shape)}")
    num_labels = logits.shape[1]
    if not 1 <= k <= num_labels:
        raise ValueError(f"topk={k} must lie in [1, num_labels={num_labels}]")
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        raise ValueError(f"teacher output row {row} contains NaN or inf; refusing to store it")
    probs = torch.softmax(logits.float(), dim=1)
    return probs.topk(k, dim=1, largest=True, sorted=True)


def topk_probabilities(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`teacher_topk` with the probabilities rounded to float16, as a "float16" store keeps them."""
    values, indices = teacher_topk(logits, k)
    return values.half(), indices


def sparse_to_dense(values: torch.Tensor, indices: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Rebuild `(batch, num_labels)` float32 distributions from stored top-k probabilities.

    Class `c` gets `p_j` if it is the j-th stored index, otherwise `(1 - sum_j p_j) / (C - k)`,
    the paper's even spread of the leftover mass. float16 rounding can make the stored mass exceed
    1 by a hair; the leftover is clamped at 0 so no class gets a negative probability.
    """
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(
            f"top-k values {tuple(values.shape)} and indices {tuple(indices.shape)} must both be (batch, k)"
        )
    k = values.shape[1]
    if k > num_labels:
        raise ValueError(f"topk={k} exceeds num_labels={num_labels}")
    indices = indices.long()
    values = values.float()
    # one host sync for every check: a NaN, negative or > 1 target would train a student on it silently
    bad_values = ~torch.isfinite(values) | (values < 0) | (values > 1)
    bad_indices = (indices < 0) | (indices >= num_labels)
    if values.numel() and bool((bad_values | bad_indices).any()):
        row = int((bad_values | bad_indices).any(dim=1).nonzero()[0])
        raise ValueError(
            f"top-k target row {row} holds probabilities {values[row].tolist()} and class indices "
            f"{indices[row].tolist()}: probabilities must be finite in [0, 1] and class indices must lie in "
            f"[0, {num_labels - 1}]"
        )
    leftover = (1.0 - values.sum(dim=1, keepdim=True)).clamp_min(0.0)
    fill = leftover / (num_labels - k) if num_labels > k else torch.zeros_like(leftover)
    dense = fill.expand(values.shape[0], num_labels).clone()
    return dense.scatter_(1, indices, values)


def teacher_hard_labels(indices: torch.Tensor) -> torch.Tensor:
    """The teacher's top-1 class from sorted top-k indices, the target of DeiT's hard loss."""
    return indices[..., 0].long()
