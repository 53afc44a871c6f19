"""Checking a teacher-logit store: the check mode that replays stored records, re-runs the teacher and
compares its outputs with what was stored."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..augment.mix import pairing_order
from ..augment.views import AugmentedDataset, collate_views
from ..teachers import checked_teacher_logits
from .format import topk_probabilities
from .reader import TeacherLogitStore

__all__ = ["check_teacher_logits"]


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
) -> dict[str, Any]:
    """Replay `num_samples` stored records, re-run the teacher and compare with what was stored.

    The records are the first of the epoch's first chunk, batched as the saving run batched them,
    so a deterministic teacher sees bitwise the same inputs in the same batches. Both sides are
    compared after the float16 rounding the store applies; `max_abs_diff` is the largest gap.
    """
    store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store, cache_dir=cache_dir)
    epoch = store.epochs[0] if epoch is None else epoch
    if epoch not in store.epochs:
        raise KeyError(f"epoch {epoch} is not in store {store.path!r}; saved epochs: {store.epochs}")
    recipe = store.recipe
    views = AugmentedDataset(dataset, recipe, seed=int(store.metadata["seed"]), image_column=image_column, label_column=None)
    store.check_replay(len(dataset), views.fingerprint)
    first_chunk = pairing_order(recipe, store.metadata["seed"], epoch, len(views))[: store.metadata["chunk_size"]]
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
            values, indices = topk_probabilities(logits, store.topk)
            mismatches += int((indices.cpu() != stored_indices).any(dim=1).sum())
            diff = (values.float().cpu() - stored_values).abs().max().item()
            max_diff = max(max_diff, diff)
    return {"epoch": epoch, "num_checked": count, "max_abs_diff": max_diff, "index_mismatches": mismatches}
