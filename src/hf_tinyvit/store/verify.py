"""Checking a teacher-logit store: `verify_store` (every byte and row against the metadata's checksums
and the format's rules, and optionally every image against its digest), and the check mode that
replays stored records, re-runs the teacher and compares its outputs with what was stored."""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..augment.mix import mix_partners, pairing_order
from ..augment.views import AugmentedDataset, IterableAugmentedDataset, collate_views
from ..teachers import checked_teacher_logits
from .format import teacher_topk
from .reader import TeacherLogitStore

__all__ = ["VerifyReport", "check_teacher_logits", "verify_store"]


def check_teacher_logits(
    teacher,
    dataset,
    store: TeacherLogitStore | str,
    *,
    num_samples: int,
    batch_size: int = 64,
    epoch: int | None = None,
    image_column: str = "image",
    cache_dir: str | None = None,
    device: str | torch.device | None = None,
    shard_sizes=None,
) -> dict[str, Any]:
    """Replay `num_samples` stored records, re-run the teacher and compare with what was stored.

    The records are the first of the epoch's first chunk, batched as the saving run batched them,
    so a deterministic teacher sees bitwise the same inputs in the same batches. `dataset` is the
    map-style dataset or the stream (`datasets.IterableDataset`, its `shard_sizes` when known) the
    store was saved from. Both sides are compared after the store's encoding (float16 rounding, or
    sqrt8 codes decoded), so a teacher that computes what it computed when saving differs by 0;
    `max_abs_diff` is the largest gap, `index_mismatches` the records whose classes differ.
    """
    import datasets

    from .codec import decode_topk, encode_topk

    store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store, cache_dir=cache_dir)
    epoch = store.epochs[0] if epoch is None else epoch
    if epoch not in store.epochs:
        raise KeyError(f"epoch {epoch} is not in store {store.path!r}; saved epochs: {store.epochs}")
    recipe = store.recipe
    seed = int(store.metadata["seed"])
    if isinstance(dataset, datasets.IterableDataset):
        views = IterableAugmentedDataset(dataset, recipe, seed=seed, shard_sizes=shard_sizes, image_column=image_column,
                                         label_column=None)  # fmt: skip
        size = views.num_samples
    else:
        views = AugmentedDataset(dataset, recipe, seed=seed, image_column=image_column, label_column=None)
        size = len(dataset)
    store.check_replay(size, views.fingerprint)
    first_chunk = pairing_order(recipe, seed, epoch, size)[: store.metadata["chunk_size"]]
    count = min(len(first_chunk), math.ceil(num_samples / batch_size) * batch_size)
    ids = first_chunk[:count].tolist()
    device = device or next((p.device for p in getattr(teacher, "parameters", lambda: iter(()))()), torch.device("cpu"))
    max_diff, mismatches = 0.0, 0
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            chunk = ids[start : start + batch_size]
            batch = collate_views(views.items(chunk, epoch))
            stored_values, stored_indices = store.targets(epoch, chunk)
            logits = checked_teacher_logits(teacher, batch["pixel_values"].to(device), batch["sample_id"], epoch)
            values, indices = teacher_topk(logits, store.topk)
            columns = encode_topk(values.cpu().numpy(), indices.cpu().numpy(), store.num_labels, store.topk_encoding)
            values, indices = (torch.from_numpy(a) for a in decode_topk(columns, store.topk_encoding))
            mismatches += int((indices != stored_indices).any(dim=1).sum())
            max_diff = max(max_diff, (values - stored_values).abs().max().item())
    return {"epoch": epoch, "num_checked": count, "max_abs_diff": max_diff, "index_mismatches": mismatches}


def _row_groups(data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    footer = pq.ParquetFile(pa.BufferReader(data)).metadata
    return [footer.row_group(g) for g in range(footer.num_row_groups)]


@dataclass
class VerifyReport:
    """What `verify_store` found: `problems` (damage: the store is not OK), `unlisted` (files the metadata
    does not list, which readers ignore) and `notes` (what a store's format leaves unchecked)."""

    path: str
    format_version: int | None = None
    problems: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_checked: int = 0
    records_checked: int = 0
    images_checked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"{self.shards_checked} shards, {self.records_checked} records"
        if self.images_checked:
            what += f", {self.images_checked} images"
        version = "unread" if self.format_version is None else self.format_version
        head = f"{'OK' if self.ok else 'DAMAGED'}: store {self.path!r} (format {version}): checked {what}"
        lines = [f"{head} in {self.seconds:.2f} s"]
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  unlisted (ignored by readers): {name}" for name in self.unlisted]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


_MAX_PROBLEMS = 50


def verify_store(path: str, dataset=None, *, image_column: str = "image") -> VerifyReport:
    """Check a whole store: its metadata (schema, bounds, own checksum), every listed shard (size, sha256,
    columns, every top-k row, the sample ids, seeds and partners of its chunk), that each image's digest
    is the same in every epoch, and, given the `dataset` it was built from, every image against its
    digest. Files the metadata does not list are reported, not read. Damage is reported, never repaired.
    """
    from ..augment.recipe import AugmentationRecipe
    from ..datasets import image_digest, image_to_tensor
    from .format import (
        CARD_NAME,
        DIGEST_COLUMN,
        LOCK_NAME,
        METADATA_NAME,
        read_metadata,
        shard_relpath,
    )
    from .lock import WriterLock
    from .reader import _local_or_download, check_shard_records, decode_shard, planned_row_groups

    started = time.perf_counter()
    report = VerifyReport(path=str(path))

    def problem(text: str) -> None:
        if len(report.problems) < _MAX_PROBLEMS:
            report.problems.append(text)
        elif len(report.problems) == _MAX_PROBLEMS:
            report.problems.append("... (more problems not listed)")

    def done() -> VerifyReport:
        report.seconds = time.perf_counter() - started
        return report

    try:
        path = _local_or_download(str(path), None)
        metadata = read_metadata(path)
    except (OSError, ValueError) as error:
        problem(str(error))
        return done()
    report.path, report.format_version = path, int(metadata["format_version"])
    version = report.format_version
    if version < 2:
        report.notes.append(
            "no checksums: written by format 1; every row is checked, but a changed byte that still decodes to a "
            "valid row, and a changed image, cannot be seen (save the store again to get both)"
        )
    recipe = AugmentationRecipe.from_dict(metadata["recipe"])
    seed, size = int(metadata["seed"]), int(metadata["dataset_size"])
    listed = {METADATA_NAME, CARD_NAME}
    digests: dict[int, np.ndarray] = {}
    entries = {(e["epoch"], e["chunk"]): e for e in metadata.get("shards", [])}
    for epoch in metadata["epochs"]:
        order = pairing_order(recipe, seed, epoch, size)
        partners = mix_partners(recipe, seed, epoch, size) if recipe.mixes else None
        seen, before = np.zeros(size, dtype=bool), len(report.problems)
        epoch_digests = np.zeros(size, dtype=np.int64)
        for chunk in range(metadata["num_chunks"]):
            relpath = shard_relpath(epoch, chunk)
            listed.add(relpath)
            where = f"epoch {epoch}: {relpath}"
            file = os.path.join(path, relpath)
            try:
                with open(file, "rb") as handle:
                    data = handle.read()
            except OSError as error:
                problem(f"{where} is missing or unreadable ({error.strerror or error})")
                continue
            entry = entries.get((epoch, chunk))
            if entry is not None:
                if len(data) != entry["bytes"]:
                    problem(f"{where} holds {len(data)} bytes; the metadata says {entry['bytes']} (truncated or extended)")
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if digest != entry["sha256"]:
                    problem(f"{where}: its sha256 {digest[:16]}... differs from the metadata's {entry['sha256'][:16]}... "
                            "(bytes changed: a bit flip or an edit)")  # fmt: skip
                    continue
            try:
                shard = decode_shard(data, metadata, epoch, where, path)
                check_shard_records(shard, metadata, epoch, chunk, where, order=order, partners=partners, entry=entry)
                groups = [g.num_rows for g in _row_groups(data)]
                if groups != planned_row_groups(metadata, len(shard["sample_id"])):
                    raise ValueError(f"{where}: its row groups hold {groups[:4]}... rows; the format writes "
                                     f"{planned_row_groups(metadata, len(shard['sample_id']))[:4]}...")  # fmt: skip
            except ValueError as error:
                problem(str(error))
                continue
            report.shards_checked += 1
            report.records_checked += len(shard["sample_id"])
            seen[shard["sample_id"]] = True
            if DIGEST_COLUMN in shard:
                epoch_digests[shard["sample_id"]] = shard[DIGEST_COLUMN].astype(np.int64)
        if not seen.all() and len(report.problems) == before:
            problem(f"epoch {epoch}: no record for sample_id={int(np.flatnonzero(~seen)[0])}")
        if version >= 2 and seen.all():
            digests[epoch] = epoch_digests
    if len(digests) > 1:
        first_epoch, first = next(iter(digests.items()))
        for epoch, other in digests.items():
            differ = np.flatnonzero(other != first)
            if len(differ):
                problem(f"sample_id={int(differ[0])} has image digest {int(other[differ[0]]):#010x} in epoch {epoch} "
                        f"but {int(first[differ[0]]):#010x} in epoch {first_epoch} ({len(differ)} samples differ)")  # fmt: skip
    if dataset is not None:
        _verify_images(report, problem, dataset, metadata, digests, image_column, image_to_tensor, image_digest)

    lock = WriterLock(path)
    for root, folders, files in os.walk(path):
        folders.sort()
        for name in sorted(files):
            relpath = os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/")
            if relpath in listed:
                continue
            if relpath == LOCK_NAME:
                owner = lock.read_owner()
                report.notes.append(f"{LOCK_NAME}: a saving run holds or held the store (pid {owner and owner.get('pid')} "
                                    f"on host {owner and owner.get('host')!r}); its epochs in progress are not listed yet")  # fmt: skip
                continue
            report.unlisted.append(relpath)
    return done()


def _verify_images(report, problem, dataset, metadata, digests, image_column, image_to_tensor, image_digest) -> None:
    """Every image of `dataset` against the digest stored with its records (one decode per image)."""
    if len(dataset) != int(metadata["dataset_size"]):
        problem(f"the dataset has {len(dataset)} images; the store was built from {metadata['dataset_size']}")
        return
    if not digests:
        report.notes.append("the images cannot be checked: this store keeps no image digests (format 1)")
        return
    stored = next(iter(digests.values()))
    column = dataset.select_columns([image_column]) if hasattr(dataset, "select_columns") else dataset
    differ = []
    for sample_id in range(len(dataset)):
        if image_digest(image_to_tensor(column[sample_id][image_column])) != int(stored[sample_id]):
            differ.append(sample_id)
        report.images_checked += 1
    if differ:
        problem(f"{len(differ)} images differ from those the teacher saw, e.g. sample_id={differ[:5]} "
                "(replaced, swapped or re-encoded with loss since the store was saved)")  # fmt: skip
