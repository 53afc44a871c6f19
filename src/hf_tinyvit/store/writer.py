"""Writing a teacher-logit store: run a teacher once over replayable augmented views and save its sparse
top-k probabilities, in parallel under Accelerate, atomically shard by shard, resumable."""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from ..augment import AugmentationRecipe, augmentation_seed, mix_partners, pairing_order
from ..augment.views import AugmentedDataset, collate_views
from ..datasets import dataset_fingerprint
from ..log import get_logger, progress_bar
from ..teachers import checked_teacher_logits, state_dict_hash
from .format import (
    FORMAT_VERSION,
    METADATA_NAME,
    dataset_card,
    identity_mismatches,
    read_metadata,
    shard_relpath,
    shard_table,
    store_features,
    topk_probabilities,
)

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


def _complete_epochs(output_dir: str, num_chunks: int) -> list[int]:
    data_dir = os.path.join(output_dir, "data")
    epochs = []
    for entry in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []:
        if not entry.startswith("epoch_"):
            continue
        epoch = int(entry.removeprefix("epoch_"))
        if all(os.path.exists(os.path.join(output_dir, shard_relpath(epoch, c))) for c in range(num_chunks)):
            epochs.append(epoch)
    return epochs


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
) -> str:
    """Save a teacher's top-k probabilities for epochs [start_epoch, end_epoch) of augmented views.

    `teacher` takes views normalised with the recipe's mean/std (see `load_teacher`) and returns
    logits. Records are split into fixed chunks of `chunk_size` samples per epoch, dealt out
    round-robin to the Accelerate processes; each chunk is one Parquet shard, so a store is
    byte-identical whatever the process count. Rerunning the same call skips complete shards;
    a store built from another teacher, dataset, recipe or seed is refused before any work.
    `view_cache` (a `ViewCache`) reuses views already rendered, e.g. while the teacher trained on
    the same recipe and seed. Returns `output_dir`.
    """
    from accelerate import Accelerator

    end_epoch = num_epochs if end_epoch is None else end_epoch
    if not 0 <= start_epoch < end_epoch <= num_epochs:
        raise ValueError(
            f"epochs [{start_epoch}, {end_epoch}) must satisfy 0 <= start_epoch < end_epoch <= num_epochs={num_epochs}"
        )
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size={batch_size} and chunk_size={chunk_size} must be >= 1")
    if recipe.mixes and chunk_size % 2:
        raise ValueError(f"chunk_size={chunk_size} must be even with Mixup/CutMix so that partners share a shard")
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples={max_samples} must be >= 1")
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there is nothing to save")
    accelerator = accelerator or Accelerator()
    device = accelerator.device
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval()
    name, weights_hash = _teacher_identity(teacher, teacher_name, teacher_hash)
    views = AugmentedDataset(
        dataset, recipe, seed=seed, image_column=image_column, label_column=None, view_cache=view_cache
    )
    num_samples = len(views)

    # One view through the teacher before any work: class count, output shape, topk range.
    with torch.inference_mode():
        probe = views.items([0], start_epoch)[0]["pixel_values"].unsqueeze(0).to(device)
        num_labels = checked_teacher_logits(teacher, probe, torch.zeros(1, dtype=torch.int64), start_epoch).shape[1]
    declared = getattr(teacher, "num_labels", None)
    if declared is not None and int(declared) != num_labels:
        raise ValueError(f"the teacher declares num_labels={declared} but returns {num_labels} logits")
    if not 1 <= topk <= num_labels:
        raise ValueError(
            f"topk={topk} exceeds the teacher's num_labels={num_labels}"
            if topk > num_labels
            else f"topk={topk} must be >= 1"
        )
    id2label = id2label or getattr(teacher, "id2label", None) or {i: str(i) for i in range(num_labels)}

    num_chunks = math.ceil(num_samples / chunk_size)
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "teacher_name": name,
        "teacher_hash": weights_hash,
        "num_labels": num_labels,
        "id2label": {str(int(k)): v for k, v in id2label.items()},
        "topk": topk,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": seed,
        "dataset_fingerprint": dataset_fingerprint(views.dataset, image_column),
        "dataset_size": num_samples,
        "chunk_size": chunk_size,
        "num_chunks": num_chunks,
        "num_epochs": num_epochs,
        "epochs": [],
    }
    metadata_path = os.path.join(output_dir, METADATA_NAME)
    if os.path.exists(metadata_path):
        # every process checks, so all of them stop together rather than some waiting at a barrier
        existing = read_metadata(output_dir)
        mismatches = identity_mismatches(existing, metadata)
        if mismatches:
            raise ValueError(
                f"{output_dir!r} holds a store built differently (this run != stored): {'; '.join(mismatches)}"
            )
        metadata["num_epochs"] = max(num_epochs, existing.get("num_epochs", 0))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        # temporary metadata or card files of a killed run: only the main process writes those
        for name in (METADATA_NAME, "README.md"):
            for stale in glob.glob(glob.escape(os.path.join(output_dir, name)) + ".tmp-*"):
                os.remove(stale)
        metadata["epochs"] = _complete_epochs(output_dir, num_chunks)
        write_json_atomic(metadata_path, metadata)
    accelerator.wait_for_everyone()

    features = store_features(topk, num_labels, with_partner=recipe.mixes)
    rank, world = accelerator.process_index, accelerator.num_processes
    work = {
        epoch: [
            c
            for c in range(rank, num_chunks, world)
            if not os.path.exists(os.path.join(output_dir, shard_relpath(epoch, c)))
        ]
        for epoch in range(start_epoch, end_epoch)
    }
    for epoch, chunks in work.items():
        for chunk in chunks:
            # a killed run can leave a half-written temporary file of a chunk this rank now redoes
            for stale in glob.glob(glob.escape(os.path.join(output_dir, shard_relpath(epoch, chunk))) + ".tmp-*"):
                os.remove(stale)
    total = sum(min(chunk_size, num_samples - c * chunk_size) for chunks in work.values() for c in chunks)
    bar = progress_bar(
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
        pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {c: [] for c in chunks}
        with torch.inference_mode():
            for (chunk, ids), batch in zip(batches, loader):
                logits = checked_teacher_logits(teacher, batch["pixel_values"].to(device), batch["sample_id"], epoch)
                values, indices = topk_probabilities(logits, topk)
                pending[chunk].append((values.cpu(), indices.cpu()))
                bar.update(len(ids))
                if sum(len(v) for v, _ in pending[chunk]) == len(chunk_ids[chunk]):
                    parts = pending.pop(chunk)
                    sample_ids = chunk_ids[chunk]
                    table = shard_table(
                        features,
                        sample_ids,
                        epoch,
                        np.array([augmentation_seed(seed, epoch, s) for s in sample_ids], dtype=np.uint32),
                        torch.cat([v for v, _ in parts]).numpy(),
                        torch.cat([i for _, i in parts]).numpy(),
                        None if partners is None else partners[sample_ids],
                    )
                    relpath = shard_relpath(epoch, chunk)
                    write_shard(os.path.join(output_dir, relpath), table)
                    logger.info("rank %d wrote %s (%d records)", rank, relpath, table.num_rows)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # only complete epochs are listed, so a reader never meets a half-saved one
            metadata["epochs"] = _complete_epochs(output_dir, num_chunks)
            write_json_atomic(metadata_path, metadata)
            # the card too goes through a temporary name: a kill mid-write must not leave half a card behind
            card_tmp = os.path.join(output_dir, f"README.md.tmp-{os.getpid()}")
            with open(card_tmp, "w") as handle:
                handle.write(dataset_card(metadata))
            os.replace(card_tmp, os.path.join(output_dir, "README.md"))
        accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process and metadata["epochs"]:
        shards = [os.path.join(output_dir, shard_relpath(e, c)) for e in metadata["epochs"] for c in range(num_chunks)]
        records = num_samples * len(metadata["epochs"])
        logger.info(
            "store %s: %d epochs x %d samples, %.1f bytes/record on disk (the official format takes 4 + 4k = %d)",
            output_dir, len(metadata["epochs"]), num_samples, sum(map(os.path.getsize, shards)) / records, 4 + 4 * topk,
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
    return output_dir
