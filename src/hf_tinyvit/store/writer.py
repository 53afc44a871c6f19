"""Writing a teacher-logit store: run a teacher once over replayable augmented views and save its sparse
top-k probabilities, in parallel under Accelerate, atomically shard by shard, resumable."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from ..augment import AugmentationRecipe, augmentation_seed, mix_partners, pairing_order
from ..augment.recipe import is_int
from ..augment.views import AugmentedDataset, collate_views
from ..datasets import dataset_fingerprint
from ..teachers import checked_teacher_logits, state_dict_hash
from .format import (
    CARD_NAME,
    FORMAT_VERSION,
    IMAGE_DIGEST,
    METADATA_NAME,
    dataset_card,
    expected_chunk_rows,
    identity_mismatches,
    parse_shard_relpath,
    read_metadata,
    seal_metadata,
    shard_entry,
    shard_relpath,
    shard_table,
    store_features,
    topk_probabilities,
)
from .lock import WriterLock, temp_owner_alive, temp_suffix
from .reader import check_shard_records, decode_shard

__all__ = ["save_teacher_logits", "write_json_atomic", "write_shard"]

logger = logging.getLogger(__name__)


def _teacher_identity(teacher, name: str | None, weights_hash: str | None) -> tuple[str, str]:
    name = name or getattr(teacher, "name", None) or type(teacher).__name__
    weights_hash = weights_hash or getattr(teacher, "weights_hash", None)
    if weights_hash is None:
        if not isinstance(teacher, torch.nn.Module):
            raise ValueError(
                f"teacher {name!r} is a plain callable: pass teacher_hash= so a store can tell which weights it holds"
            )
        weights_hash = state_dict_hash(teacher)
    return name, weights_hash


def write_shard(path: str, table: pa.Table) -> tuple[str, int]:
    """Write a shard under a temporary name, then rename it: a reader never sees a partial shard.
    Returns the sha256 and size of the bytes written, read back before the rename, for the metadata.

    The encodings keep a record near the paper's `4 + 4k` bytes: sample ids are consecutive
    (delta-packed to almost nothing), the epoch is one value (dictionary + RLE), and byte-stream
    splitting groups the probabilities' exponent bytes and the indices' high bytes so that zstd
    squeezes them. The image digests are random bits, stored plain (4 bytes a record).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + temp_suffix()
    encodings = {
        "sample_id": "DELTA_BINARY_PACKED",
        "aug_seed": "PLAIN",
        "teacher_topk_values.list.element": "BYTE_STREAM_SPLIT",
        "teacher_topk_indices.list.element": "BYTE_STREAM_SPLIT",
    }
    if "mix_partner" in table.column_names:
        encodings["mix_partner"] = "BYTE_STREAM_SPLIT"
    if "image_digest" in table.column_names:
        encodings["image_digest"] = "PLAIN"
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
    with open(tmp, "rb") as handle:
        data = handle.read()
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest(), len(data)


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = path + temp_suffix()
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def _remove_stale_temps(final_path: str) -> None:
    """Remove temporary files of `final_path` left by killed runs; another live process's are never touched."""
    for stale in glob.glob(glob.escape(final_path) + ".tmp-*"):
        if not temp_owner_alive(stale):
            try:
                os.remove(stale)
            except FileNotFoundError:
                pass


def _on_main(accelerator, work: Callable[[], Any]) -> Any:
    """Run `work` on the main process and hand its result to every process; when it fails, every process
    raises, so none is left waiting at a barrier for a main process that stopped."""
    from accelerate.utils import broadcast_object_list

    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = work()
        except Exception as failure:  # re-raised below, here and (as text) on the other processes
            error = failure
    payload = [None if error is None else f"{type(error).__name__}: {error}", result]
    if accelerator.num_processes > 1:
        broadcast_object_list(payload)
    if error is not None:
        raise error
    if payload[0] is not None:
        raise RuntimeError(f"the main process stopped: {payload[0]}")
    return payload[1]


def _shards_on_disk(output_dir: str, num_chunks: int) -> dict[str, tuple[int, int]]:
    """relpath -> (epoch, chunk) of every file named as a shard of this store; any other file is not ours."""
    found = {}
    for file in glob.glob(os.path.join(glob.escape(output_dir), "data", "epoch_*", "chunk_*.parquet")):
        relpath = os.path.relpath(file, output_dir).replace(os.sep, "/")
        parsed = parse_shard_relpath(relpath)
        if parsed is not None and parsed[1] < num_chunks and os.path.isfile(file):
            found[relpath] = parsed
    return found


def _known_shards(output_dir: str, metadata: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, dict]:
    """Entries of the complete shards already in the store: those its metadata lists (sizes checked), and
    those a killed run wrote without listing them (every byte and row checked before they are kept)."""
    listed = {entry["path"]: entry for entry in (existing or {}).get("shards", [])}
    entries = {}
    for relpath, (epoch, chunk) in sorted(_shards_on_disk(output_dir, metadata["num_chunks"]).items()):
        file = os.path.join(output_dir, relpath)
        where = f"store {output_dir!r} epoch {epoch}: {relpath}"
        if relpath in listed:
            if os.path.getsize(file) != listed[relpath]["bytes"]:
                raise ValueError(
                    f"{where} holds {os.path.getsize(file)} bytes; the metadata says {listed[relpath]['bytes']}: the "
                    f"shard is damaged; check the store with `hf-tinyvit verify {output_dir}`, then restore the file or "
                    "delete it so that this command rewrites it"
                )
            entries[relpath] = listed[relpath]
            continue
        with open(file, "rb") as handle:
            data = handle.read()
        try:
            shard = decode_shard(data, metadata, epoch, where, output_dir)
            check_shard_records(shard, metadata, epoch, chunk, where)
        except ValueError as error:
            raise ValueError(
                f"{error} (a shard an earlier run left unlisted; delete it so that this command rewrites it)"
            ) from None
        rows = expected_chunk_rows(metadata["dataset_size"], metadata["chunk_size"], chunk)
        entries[relpath] = shard_entry(relpath, epoch, chunk, rows, data)
    return entries


def _listed(metadata: dict[str, Any], entries: dict[str, dict]) -> tuple[list[int], list[dict]]:
    """(complete epochs, their shard entries): only an epoch with every chunk written is listed."""
    by_epoch: dict[int, list[dict]] = {}
    for entry in entries.values():
        by_epoch.setdefault(entry["epoch"], []).append(entry)
    epochs = sorted(e for e, found in by_epoch.items() if len(found) == metadata["num_chunks"])
    shards = sorted((entry for e in epochs for entry in by_epoch[e]), key=lambda entry: (entry["epoch"], entry["chunk"]))
    return epochs, shards


def _check_settings(**settings) -> None:
    """Every saving setting checked before a teacher runs or a file is written, each with what is accepted."""
    integers = {
        "topk": 1, "num_epochs": 1, "start_epoch": 0, "seed": 0, "batch_size": 1, "num_workers": 0, "chunk_size": 1,
        "check_samples": 0,
    }  # fmt: skip
    for name, minimum in integers.items():
        value = settings[name]
        if not (is_int(value) and value >= minimum):
            raise ValueError(f"{name}={value!r} must be >= {minimum} (an integer)")
    for name in ("end_epoch", "max_samples"):
        value = settings[name]
        if value is not None and not (is_int(value) and value >= 1):
            raise ValueError(f"{name}={value!r} must be >= 1 (an integer, or None)")
    tolerance = settings["check_tolerance"]
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"check_tolerance={tolerance!r} must be a finite number >= 0")
    timeout = settings["lock_timeout"]
    if not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"lock_timeout={timeout!r} must be a number of seconds >= 0 (0: fail at once)")


def save_teacher_logits(
    teacher: torch.nn.Module | Callable[[torch.Tensor], Any],
    dataset,
    output_dir: str,
    *,
    recipe: AugmentationRecipe,
    topk: int,
    num_epochs: int = 1,
    start_epoch: int = 0,
    end_epoch: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    chunk_size: int = 16384,
    max_samples: int | None = None,
    check_samples: int = 0,
    check_tolerance: float = 1e-5,
    teacher_name: str | None = None,
    teacher_hash: str | None = None,
    id2label: Mapping[int, str] | None = None,
    image_column: str = "image",
    accelerator=None,
    cache_dir: str | None = None,
    progress: bool = True,
    view_cache=None,
    lock_timeout: float = 0.0,
) -> str:
    """Save a teacher's top-k probabilities for epochs [start_epoch, end_epoch) of augmented views.

    `teacher` takes views normalised with the recipe's mean/std (see `load_teacher`) and returns
    logits. Records are split into fixed chunks of `chunk_size` samples per epoch, dealt out
    round-robin to the Accelerate processes; each chunk is one Parquet shard, so a store is
    byte-identical whatever the process count. Each record keeps a digest of its image, and the
    metadata each shard's sha256 (see `verify_store`). Rerunning the same call skips complete
    shards; a store built from another teacher, dataset, recipe or seed is refused before any work.
    One saving run writes a store at a time (a lock file): another waits up to `lock_timeout`
    seconds, then fails naming the holder. `view_cache` (a `ViewCache`) reuses views already
    rendered, e.g. while the teacher trained on the same recipe and seed. Returns `output_dir`.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    _check_settings(
        topk=topk, num_epochs=num_epochs, start_epoch=start_epoch, end_epoch=end_epoch, seed=seed,
        batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size, max_samples=max_samples,
        check_samples=check_samples, check_tolerance=check_tolerance, lock_timeout=lock_timeout,
    )  # fmt: skip
    end_epoch = num_epochs if end_epoch is None else end_epoch
    if not 0 <= start_epoch < end_epoch <= num_epochs:
        raise ValueError(
            f"epochs [{start_epoch}, {end_epoch}) must satisfy 0 <= start_epoch < end_epoch <= num_epochs={num_epochs}"
        )
    if recipe.mixes and chunk_size % 2:
        raise ValueError(f"chunk_size={chunk_size} must be even with Mixup/CutMix so that partners share a shard")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there is nothing to save")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir={output_dir!r} is a file; a store is a folder")
    accelerator = accelerator or Accelerator()
    device = accelerator.device
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval()
    name, weights_hash = _teacher_identity(teacher, teacher_name, teacher_hash)
    views = AugmentedDataset(
        dataset, recipe, seed=seed, image_column=image_column, label_column=None, view_cache=view_cache,
        image_digests=True,
    )  # fmt: skip
    num_samples = len(views)

    # One view through the teacher before any work: class count, output shape, topk range.
    with torch.inference_mode():
        probe = views.items([0], start_epoch)[0]["pixel_values"].unsqueeze(0).to(device)
        num_labels = checked_teacher_logits(teacher, probe, torch.zeros(1, dtype=torch.int64), start_epoch).shape[1]
    declared = getattr(teacher, "num_labels", None)
    if declared is not None and int(declared) != num_labels:
        raise ValueError(f"the teacher declares num_labels={declared} but returns {num_labels} logits")
    if topk > num_labels:
        raise ValueError(f"topk={topk} exceeds the teacher's num_labels={num_labels}")
    id2label = id2label or getattr(teacher, "id2label", None) or {i: str(i) for i in range(num_labels)}
    if sorted(int(k) for k in id2label) != list(range(num_labels)):
        raise ValueError(
            f"id2label has {len(id2label)} entries (classes {sorted(int(k) for k in id2label)[:5]}...); the teacher "
            f"returns {num_labels} logits: give one name for each class 0..{num_labels - 1}"
        )

    num_chunks = math.ceil(num_samples / chunk_size)
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "teacher_name": name,
        "teacher_hash": weights_hash,
        "num_labels": num_labels,
        "id2label": {str(int(k)): str(v) for k, v in id2label.items()},
        "topk": topk,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": seed,
        "dataset_fingerprint": dataset_fingerprint(views.dataset, image_column),
        "dataset_size": num_samples,
        "chunk_size": chunk_size,
        "num_chunks": num_chunks,
        "num_epochs": num_epochs,
        "image_digest": IMAGE_DIGEST,
        "epochs": [],
        "shards": [],
    }
    metadata_path = os.path.join(output_dir, METADATA_NAME)
    lock = WriterLock(output_dir, timeout=lock_timeout)

    def take_lock():
        os.makedirs(output_dir, exist_ok=True)
        lock.acquire()

    # The lock comes first: what is read from the store below cannot change under this run.
    _on_main(accelerator, take_lock)
    try:
        if os.path.exists(metadata_path):
            # every process checks, so all of them stop together rather than some waiting at a barrier
            existing = read_metadata(output_dir)
            mismatches = identity_mismatches(existing, metadata)
            if mismatches:
                raise ValueError(
                    f"{output_dir!r} holds a store built differently (this run != stored): {'; '.join(mismatches)}"
                )
            metadata["num_epochs"] = max(num_epochs, existing.get("num_epochs", 0))
        else:
            existing = None

        def set_up() -> dict[str, dict]:
            # temporary metadata or card files of a killed run: only the main process writes those
            for final in (METADATA_NAME, CARD_NAME):
                _remove_stale_temps(os.path.join(output_dir, final))
            known = _known_shards(output_dir, metadata, existing)
            metadata["epochs"], metadata["shards"] = _listed(metadata, known)
            write_json_atomic(metadata_path, seal_metadata(metadata))
            return known

        entries = _on_main(accelerator, set_up)
        accelerator.wait_for_everyone()
        _write_epochs(
            teacher, views, output_dir, metadata, entries, recipe=recipe, seed=seed, start_epoch=start_epoch,
            end_epoch=end_epoch, batch_size=batch_size, num_workers=num_workers, accelerator=accelerator,
            progress=progress, gather=gather_object,
        )  # fmt: skip

        if check_samples > 0 and accelerator.is_main_process:
            from .verify import check_teacher_logits

            report = check_teacher_logits(
                teacher, dataset, output_dir, num_samples=check_samples, batch_size=batch_size, epoch=start_epoch,
                image_column=image_column, cache_dir=cache_dir,
            )  # fmt: skip
            logger.info(
                "check: re-ran the teacher on %d replayed records of epoch %d: largest difference %.3g, %d top-k index mismatches",
                report["num_checked"], report["epoch"], report["max_abs_diff"], report["index_mismatches"],
            )  # fmt: skip
            if report["max_abs_diff"] > check_tolerance or report["index_mismatches"]:
                raise RuntimeError(
                    f"check failed: stored and recomputed teacher probabilities differ by {report['max_abs_diff']:.3g} "
                    f"(tolerance {check_tolerance}) with {report['index_mismatches']} index mismatches"
                )
        accelerator.wait_for_everyone()
    finally:
        if accelerator.is_main_process:
            lock.release()
    return output_dir


def _write_epochs(
    teacher, views, output_dir, metadata, entries, *, recipe, seed, start_epoch, end_epoch, batch_size, num_workers,
    accelerator, progress, gather,
) -> None:  # fmt: skip
    """Run the teacher over this process's chunks of each epoch, write them, and (main process) list each
    completed epoch with its shards' sha256 in the metadata."""
    device = accelerator.device
    num_samples, chunk_size, num_chunks = len(views), metadata["chunk_size"], metadata["num_chunks"]
    topk = metadata["topk"]
    features = store_features(topk, metadata["num_labels"], with_partner=recipe.mixes, with_digest=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    work = {
        epoch: [c for c in range(rank, num_chunks, world) if shard_relpath(epoch, c) not in entries]
        for epoch in range(start_epoch, end_epoch)
    }
    for epoch, chunks in work.items():
        for chunk in chunks:
            # a killed run can leave a half-written temporary file of a chunk this rank now redoes
            _remove_stale_temps(os.path.join(output_dir, shard_relpath(epoch, chunk)))
    total = sum(min(chunk_size, num_samples - c * chunk_size) for chunks in work.values() for c in chunks)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total, desc="teacher logits", unit="img", disable=not (progress and accelerator.is_local_main_process)
    )
    for epoch, chunks in work.items():
        order = pairing_order(recipe, seed, epoch, num_samples)
        partners = mix_partners(recipe, seed, epoch, num_samples) if recipe.mixes else None
        chunk_ids = {c: order[c * chunk_size : (c + 1) * chunk_size] for c in chunks}
        # batches never cross a chunk, so a finished chunk is written as soon as its last batch is in
        batches = [
            (c, ids[i : i + batch_size].tolist())
            for c in chunks
            for ids in [chunk_ids[c]]
            for i in range(0, len(ids), batch_size)
        ]
        views.set_epoch(epoch)
        loader = DataLoader(
            views, batch_sampler=[ids for _, ids in batches], collate_fn=collate_views, num_workers=num_workers
        )
        pending: dict[int, list[tuple[torch.Tensor, ...]]] = {c: [] for c in chunks}
        written = []
        with torch.inference_mode():
            for (chunk, ids), batch in zip(batches, loader):
                logits = checked_teacher_logits(teacher, batch["pixel_values"].to(device), batch["sample_id"], epoch)
                values, indices = topk_probabilities(logits, topk)
                pending[chunk].append((values.cpu(), indices.cpu(), batch["image_digest"]))
                bar.update(len(ids))
                if sum(len(v) for v, _, _ in pending[chunk]) == len(chunk_ids[chunk]):
                    parts = pending.pop(chunk)
                    sample_ids = chunk_ids[chunk]
                    table = shard_table(
                        features,
                        sample_ids,
                        epoch,
                        np.array([augmentation_seed(seed, epoch, s) for s in sample_ids], dtype=np.uint32),
                        torch.cat([v for v, _, _ in parts]).numpy(),
                        torch.cat([i for _, i, _ in parts]).numpy(),
                        None if partners is None else partners[sample_ids],
                        digests=torch.cat([d for _, _, d in parts]).numpy(),
                    )
                    relpath = shard_relpath(epoch, chunk)
                    sha256, size = write_shard(os.path.join(output_dir, relpath), table)
                    written.append(shard_entry(relpath, epoch, chunk, table.num_rows, sha256=sha256, size=size))
                    logger.info("rank %d wrote %s (%d records)", rank, relpath, table.num_rows)
        # every process's new shards, with their checksums, reach the main process, which lists them
        for entry in gather(written):
            entries[entry["path"]] = entry
        if accelerator.is_main_process:
            # only complete epochs are listed, so a reader never meets a half-saved one
            metadata["epochs"], metadata["shards"] = _listed(metadata, entries)
            write_json_atomic(os.path.join(output_dir, METADATA_NAME), seal_metadata(metadata))
            # the card too goes through a temporary name: a kill mid-write must not leave half a card behind
            card_tmp = os.path.join(output_dir, CARD_NAME + temp_suffix())
            with open(card_tmp, "w") as handle:
                handle.write(dataset_card(metadata))
            os.replace(card_tmp, os.path.join(output_dir, CARD_NAME))
        accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process and metadata["epochs"]:
        records = num_samples * len(metadata["epochs"])
        logger.info(
            "store %s: %d epochs x %d samples, %.1f bytes/record on disk (the official format takes 4 + 4k = %d)",
            output_dir, len(metadata["epochs"]), num_samples, sum(e["bytes"] for e in metadata["shards"]) / records,
            4 + 4 * topk,
        )  # fmt: skip
