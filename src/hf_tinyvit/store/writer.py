"""Writing a teacher-logit store: run a teacher once over replayable augmented views and save its sparse
top-k probabilities, in parallel under Accelerate, atomically shard by shard, resumable."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from ..augment import AugmentationRecipe, mix_partners, pairing_order
from ..augment.recipe import is_int
from ..augment.views import AugmentedDataset, IterableAugmentedDataset, StreamedBatches, collate_views
from ..datasets import dataset_fingerprint
from ..log import get_logger, progress_bar
from ..teachers import checked_teacher_logits, state_dict_hash
from .codec import TOPK_COLUMNS, check_topk_encoding, encode_topk
from .format import (
    CARD_NAME,
    DIGEST_COLUMN,
    FORMAT_VERSION,
    IMAGE_DIGEST,
    METADATA_NAME,
    dataset_card,
    expected_chunk_rows,
    identity_mismatches,
    metadata_features,
    parse_shard_relpath,
    read_metadata,
    row_group_rows,
    seal_metadata,
    seeds_checksum,
    shard_entry,
    shard_relpath,
    shard_table,
    teacher_topk,
)
from .lock import WriterLock, temp_owner_alive, temp_suffix
from .reader import check_shard_records, decode_shard

__all__ = ["save_teacher_logits", "write_json_atomic", "write_shard"]

logger = get_logger(__name__)


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


def write_shard(path: str, table: pa.Table, row_group_size: int | None = None) -> tuple[str, int]:
    """Write a shard under a temporary name, then rename it: a reader never sees a partial shard.
    Returns the sha256 and size of the bytes written, read back before the rename, for the metadata.

    The encodings keep a record small: sample ids are consecutive (delta-packed to almost nothing), the
    epoch is one value (dictionary + RLE), and byte-stream splitting groups the bytes of each list element
    (the probabilities' exponent bytes, the indices' and slots' high bytes, the three zero bytes Parquet
    adds to each uint8 code) so that zstd squeezes them. Seeds and image digests are random bits, stored
    plain (4 bytes a record). Row groups of `row_group_size` rows (one for the whole table when None) with
    page checksums, so a reader can decode and check one group without the rest.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + temp_suffix()
    encodings = {"sample_id": "DELTA_BINARY_PACKED"}
    for name in table.column_names:
        if name in ("aug_seed", DIGEST_COLUMN):
            encodings[name] = "PLAIN"
        elif name == "mix_partner":
            encodings[name] = "BYTE_STREAM_SPLIT"
        elif any(name in columns for columns in TOPK_COLUMNS.values()):
            encodings[f"{name}.list.element"] = "BYTE_STREAM_SPLIT"
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        compression_level=9,
        use_dictionary=["epoch"],
        column_encoding=encodings,
        write_statistics=["sample_id", "epoch"],
        row_group_size=max(1, row_group_size or table.num_rows),
        write_page_checksum=row_group_size is not None,
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
        seeds = seeds_checksum(metadata["seed"], epoch, shard["sample_id"])
        entries[relpath] = shard_entry(relpath, epoch, chunk, rows, data, aug_seeds=seeds)
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


def _is_stream(dataset) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def _streamed_views(stream, recipe: AugmentationRecipe, seed: int, image_column: str, max_samples: int | None):
    """`IterableAugmentedDataset` views of a streamed image dataset for saving: its sample ids and size from the
    shard sizes (Parquet footers where the stream has them), cut to the first `max_samples` rows."""
    from ..augment.views import stream_shard_sizes

    if recipe.mixes:
        raise ValueError(
            "a Mixup/CutMix store cannot be saved from a stream: each record's view mixes in a partner image drawn "
            "from the whole dataset, which a stream cannot fetch; save it from a map-style dataset (load the images "
            "without streaming), or stream a recipe without mixing (TinyViT's ImageNet-21k recipe has none)"
        )
    sizes = stream_shard_sizes(stream)
    if max_samples is not None:
        ends = np.cumsum(sizes)
        sizes = [int(max(0, min(n, max_samples - (end - n)))) for n, end in zip(sizes, ends)]
    if sum(sizes) == 0:
        raise ValueError("the dataset is empty: there is nothing to save")
    views = IterableAugmentedDataset(stream, recipe, seed=seed, shard_sizes=sizes, image_column=image_column,
                                     label_column=None)  # fmt: skip
    views.image_digests = True
    return views


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
    topk_encoding: str = "float16",
) -> str:
    """Save a teacher's top-k probabilities for epochs [start_epoch, end_epoch) of augmented views.

    `teacher` takes views normalised with the recipe's mean/std (see `load_teacher`) and returns
    logits. `dataset` is a map-style image dataset or a streamed one (`datasets.IterableDataset`:
    local Parquet or image folders, a Hub id with `streaming=True`; not with Mixup/CutMix); both
    give byte-identical stores. Records are split into fixed chunks of `chunk_size` samples per
    epoch, dealt out round-robin to the Accelerate processes (from a stream, each process and
    DataLoader worker reads only the source shards under its chunks); each chunk is one Parquet
    shard, so a store is byte-identical whatever the process count. `topk_encoding` is "float16"
    or the quantised "sqrt8" (see `hf_tinyvit.store.codec`), encoded from the float32 top-k.
    Each record keeps a digest of its image, and the metadata each shard's sha256 (see
    `verify_store`). Rerunning the same call skips complete shards; a store built from another
    teacher, dataset, recipe, seed or encoding is refused before any work. One saving run writes
    a store at a time (a lock file): another waits up to `lock_timeout` seconds, then fails naming
    the holder. `view_cache` (a `ViewCache`, map-style only) reuses views already rendered, e.g.
    while the teacher trained on the same recipe and seed. Returns `output_dir`.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    _check_settings(
        topk=topk, num_epochs=num_epochs, start_epoch=start_epoch, end_epoch=end_epoch, seed=seed,
        batch_size=batch_size, num_workers=num_workers, chunk_size=chunk_size, max_samples=max_samples,
        check_samples=check_samples, check_tolerance=check_tolerance, lock_timeout=lock_timeout,
    )  # fmt: skip
    check_topk_encoding(topk_encoding)
    end_epoch = num_epochs if end_epoch is None else end_epoch
    if not 0 <= start_epoch < end_epoch <= num_epochs:
        raise ValueError(
            f"epochs [{start_epoch}, {end_epoch}) must satisfy 0 <= start_epoch < end_epoch <= num_epochs={num_epochs}"
        )
    if recipe.mixes and chunk_size % 2:
        raise ValueError(f"chunk_size={chunk_size} must be even with Mixup/CutMix so that partners share a shard")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir={output_dir!r} is a file; a store is a folder")
    streamed = _is_stream(dataset)
    if streamed:
        if view_cache is not None:
            raise ValueError("view_cache serves map-style datasets; a stream renders each view once")
        views = _streamed_views(dataset, recipe, seed, image_column, max_samples)
        num_samples = views.num_samples
    else:
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: there is nothing to save")
        views = AugmentedDataset(
            dataset, recipe, seed=seed, image_column=image_column, label_column=None, view_cache=view_cache,
            image_digests=True,
        )  # fmt: skip
        num_samples = len(views)
    accelerator = accelerator or Accelerator()
    device = accelerator.device
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval()
    name, weights_hash = _teacher_identity(teacher, teacher_name, teacher_hash)

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
        "topk_encoding": topk_encoding,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": seed,
        "dataset_fingerprint": views.fingerprint() if streamed else dataset_fingerprint(views.dataset, image_column),
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
                teacher, views.source if streamed else dataset, output_dir, num_samples=check_samples,
                batch_size=batch_size, epoch=start_epoch, image_column=image_column, cache_dir=cache_dir,
                shard_sizes=views.shard_sizes if streamed else None,
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


def _batches(views, recipe, seed: int, epoch: int, chunks: list[int], chunk_size: int, batch_size: int, num_workers: int):
    """`(chunk, sample ids, batch)` for every batch of the given chunks of `epoch`: batches never cross a chunk and
    are the same slices of each chunk's ids for a map-style dataset and a stream, so the teacher sees the same
    inputs in the same batches either way (the stream's arrive by chunk in any order of their workers)."""
    num_samples = views.num_samples if isinstance(views, IterableAugmentedDataset) else len(views)
    order = pairing_order(recipe, seed, epoch, num_samples)
    chunk_ids = {c: order[c * chunk_size : (c + 1) * chunk_size] for c in chunks}
    plan = [(c, i, min(i + batch_size, len(chunk_ids[c]))) for c in chunks for i in range(0, len(chunk_ids[c]), batch_size)]
    if isinstance(views, IterableAugmentedDataset):  # no Mixup: chunk c holds ids [c * chunk_size, ...) in order
        streamed = StreamedBatches(views, epoch, [(c, c * chunk_size + a, c * chunk_size + b) for c, a, b in plan])
        loader = DataLoader(streamed, batch_size=None, num_workers=num_workers)
        for batch in loader:
            yield int(batch.pop("group")), batch["sample_id"].numpy(), batch
        return
    views.set_epoch(epoch)
    sampler = [chunk_ids[c][a:b].tolist() for c, a, b in plan]
    loader = DataLoader(views, batch_sampler=sampler, collate_fn=collate_views, num_workers=num_workers)
    for (chunk, _, _), ids, batch in zip(plan, sampler, loader):
        yield chunk, np.asarray(ids, dtype=np.int64), batch


def _write_epochs(
    teacher, views, output_dir, metadata, entries, *, recipe, seed, start_epoch, end_epoch, batch_size, num_workers,
    accelerator, progress, gather,
) -> None:  # fmt: skip
    """Run the teacher over this process's chunks of each epoch, write them, and (main process) list each
    completed epoch with its shards' sha256 in the metadata."""
    device = accelerator.device
    num_samples, chunk_size, num_chunks = metadata["dataset_size"], metadata["chunk_size"], metadata["num_chunks"]
    topk, num_labels, encoding = metadata["topk"], metadata["num_labels"], metadata["topk_encoding"]
    features = metadata_features(metadata)
    group_rows = row_group_rows(topk, num_labels, encoding, chunk_size)
    rank, world = accelerator.process_index, accelerator.num_processes
    work = {
        epoch: [c for c in range(rank, num_chunks, world) if shard_relpath(epoch, c) not in entries]
        for epoch in range(start_epoch, end_epoch)
    }
    for epoch, chunks in work.items():
        for chunk in chunks:
            # a killed run can leave a half-written temporary file of a chunk this rank now redoes
            _remove_stale_temps(os.path.join(output_dir, shard_relpath(epoch, chunk)))
    total = sum(expected_chunk_rows(num_samples, chunk_size, c) for chunks in work.values() for c in chunks)
    bar = progress_bar(
        total=total, desc="teacher logits", unit="img", disable=not (progress and accelerator.is_local_main_process)
    )
    for epoch, chunks in work.items():
        partners = mix_partners(recipe, seed, epoch, num_samples) if recipe.mixes else None
        pending: dict[int, list[tuple[np.ndarray, ...]]] = {c: [] for c in chunks}
        written = []
        with torch.inference_mode():
            for chunk, ids, batch in _batches(views, recipe, seed, epoch, chunks, chunk_size, batch_size, num_workers):
                logits = checked_teacher_logits(teacher, batch["pixel_values"].to(device), batch["sample_id"], epoch)
                values, indices = teacher_topk(logits, topk)
                pending[chunk].append((ids, values.cpu().numpy(), indices.cpu().numpy(), batch["image_digest"].numpy()))
                bar.update(len(ids))
                if sum(len(part[0]) for part in pending[chunk]) == expected_chunk_rows(num_samples, chunk_size, chunk):
                    sample_ids, values, indices, digests = (np.concatenate(column) for column in zip(*pending.pop(chunk)))
                    table = shard_table(
                        features, sample_ids, epoch, encode_topk(values, indices, num_labels, encoding),
                        partners=None if partners is None else partners[sample_ids], digests=digests,
                    )  # fmt: skip
                    relpath = shard_relpath(epoch, chunk)
                    sha256, size = write_shard(os.path.join(output_dir, relpath), table, row_group_size=group_rows)
                    seeds = seeds_checksum(seed, epoch, np.sort(sample_ids))
                    written.append(shard_entry(relpath, epoch, chunk, table.num_rows, sha256=sha256, size=size,
                                               aug_seeds=seeds))  # fmt: skip
                    logger.info("rank %d wrote %s (%d records)", rank, relpath, table.num_rows)
        if pending:
            raise RuntimeError(f"rank {rank} epoch {epoch}: chunks {sorted(pending)} did not receive all their records")
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
