"""The teacher-logit store's format: the sparse top-k code (encode a teacher output, rebuild its
distribution), the Parquet schema of a shard, where shards live, the metadata and its checks, the
format versions this release reads, and the dataset card."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

__all__ = [
    "FORMAT_VERSION",
    "METADATA_NAME",
    "SUPPORTED_FORMAT_VERSIONS",
    "dataset_card",
    "epoch_split",
    "identity_mismatches",
    "index_dtype",
    "read_metadata",
    "shard_relpath",
    "shard_table",
    "sparse_to_dense",
    "store_features",
    "teacher_hard_labels",
    "topk_probabilities",
]

FORMAT_VERSION = 1
# Versions this release opens: the current one and every older one (tests/fixtures holds a store of each).
SUPPORTED_FORMAT_VERSIONS = (1,)
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
    version = metadata.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(
            f"store {path!r} has format_version={version}, written by a newer hf_tinyvit; this release reads "
            f"format versions {list(SUPPORTED_FORMAT_VERSIONS)}: upgrade hf_tinyvit to read it"
        )
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"store {path!r} has format_version={version!r}; this release reads {list(SUPPORTED_FORMAT_VERSIONS)}"
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
    from ..augment.recipe import AugmentationRecipe

    mixes = AugmentationRecipe.from_dict(metadata["recipe"]).mixes  # Mixup/CutMix stores record each partner
    features = store_features(int(metadata["topk"]), int(metadata["num_labels"]), with_partner=mixes)
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

Sparse top-{metadata['topk']} teacher probabilities (float16) and class indices (of {metadata['num_labels']}
classes) for {metadata['dataset_size']} images x {len(epochs)} epochs (epochs {epochs}), each with a per-record
uint32 augmentation seed that replays the exact view the teacher saw: TinyViT's fast pretraining distillation.

- teacher: `{teacher}` (weights hash `{metadata.get('teacher_hash')}`)
- top-k: {metadata['topk']} of {metadata['num_labels']} classes; the other classes share the leftover probability evenly
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


def index_dtype(num_labels: int) -> np.dtype:
    """The smallest unsigned integer type that holds every class index of `num_labels` classes."""
    if num_labels < 1:
        raise ValueError(f"num_labels={num_labels} must be >= 1")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"num_labels={num_labels} exceeds what a uint32 index can hold")


def topk_probabilities(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of `logits` `(batch, num_labels)`, reduced to its `k` largest entries.

    Returns float16 probabilities and int64 indices, both `(batch, k)`, sorted by decreasing
    probability so that column 0 is the teacher's top-1 class. Non-finite logits raise, naming the
    first offending row, rather than poisoning a store that students will train on for days.
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
    values, indices = probs.topk(k, dim=1, largest=True, sorted=True)
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
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_labels):
        raise ValueError(f"stored class indices must lie in [0, {num_labels - 1}], got {indices.min()}..{indices.max()}")
    values = values.float()
    leftover = (1.0 - values.sum(dim=1, keepdim=True)).clamp_min(0.0)
    fill = leftover / (num_labels - k) if num_labels > k else torch.zeros_like(leftover)
    dense = fill.expand(values.shape[0], num_labels).clone()
    return dense.scatter_(1, indices, values)


def teacher_hard_labels(indices: torch.Tensor) -> torch.Tensor:
    """The teacher's top-1 class from sorted top-k indices, the target of DeiT's hard loss."""
    return indices[..., 0].long()
