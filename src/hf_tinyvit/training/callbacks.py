"""Trainer callbacks of `DistillationTrainer`: the replayed views (and stored targets) follow the training
epoch; a non-finite loss or gradient stops training at its step, naming the samples; a checkpoint records
what it was trained from, and resuming from it in another world is refused; a streamed run's DataLoader
position is written into every checkpoint."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
from transformers import TrainerCallback

from ..log import get_logger

__all__ = [
    "RUN_RECORD_NAME",
    "STREAM_STATE_NAME",
    "FiniteTrainingGuard",
    "ReplayEpochCallback",
    "RunRecordCallback",
    "check_resume",
    "current_epoch",
    "run_record",
    "write_stream_state",
]

logger = get_logger(__name__)

# Written into every checkpoint folder: what the run trains on (see `run_record`).
RUN_RECORD_NAME = "distillation_run.json"


def current_epoch(state) -> int:
    """The epoch being trained, from `TrainerState.epoch` (a float: whole epochs done plus the fraction
    of the current one; a resumed run restores it from its checkpoint)."""
    return int(state.epoch or 0)


class ReplayEpochCallback(TrainerCallback):
    """Sets the train dataset's epoch at the start of every epoch, the one a run resumes in included.

    accelerate forwards `set_epoch` to a dataset only when its sampler has none; this callback makes
    the replayed epoch follow training whatever sampler the run uses.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(current_epoch(state))


def _where(state, dataset) -> str:
    where = f"epoch {current_epoch(state)}, step {state.global_step + 1}"
    replay = getattr(dataset, "replay_epoch", None)
    if replay is not None and replay != current_epoch(state):
        where += f" (replaying stored epoch {replay})"
    return where


class FiniteTrainingGuard(TrainerCallback):
    """Stops training at the first step whose loss or gradients are NaN or inf, naming the epoch, the step
    and the sample ids of its batches, before the optimizer applies them: transformers' own
    `logging_nan_inf_filter` would only hide such a loss from the logs while the weights turn to NaN.

    The trainer hands it each training batch's loss (`check_loss`); the gradients are checked once per
    optimizer step, after clipping (their total norm: one reduction, one sync). Under fp16 loss scaling
    an inf gradient is the scaler's business (it skips that step), so only the loss is checked there.
    """

    def __init__(self, dataset=None):
        self.dataset = dataset
        self._batches: list[torch.Tensor] = []  # the step's sample ids, turned into numbers only for a message
        self.state = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.state = state
        self._batches = []

    @staticmethod
    def _ids(batches: list[torch.Tensor]) -> str:
        ids = [int(i) for batch in batches for i in batch.reshape(-1).tolist()]
        return f"{ids}" if len(ids) <= 64 else f"{ids[:64]} (the first 64 of {len(ids)})"

    def check_loss(self, loss: torch.Tensor, batch: Mapping[str, Any]) -> None:
        ids = batch.get("sample_id")
        if ids is not None:
            self._batches.append(ids.detach())
        if not bool(torch.isfinite(loss.detach()).all()):
            batch_ids = "[] (the batch carries no sample_id)" if ids is None else self._ids([ids])
            raise FloatingPointError(
                f"the training loss is {loss.detach().float().reshape(-1)[0].item()} at {self._place()}: stopped "
                f"before the optimizer step, so no weight took it. Its batch holds sample_id={batch_ids}; "
                "check those samples' inputs and targets (and the learning rate)"
            )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.fp16 or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
        if not bool(torch.isfinite(norm)):
            bad = next(name for name, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all())
            raise FloatingPointError(
                f"the gradients are not finite (first in {bad}) at {self._place()}: stopped before the optimizer "
                f"step, so no weight took them. The step's batches hold sample_id={self._ids(self._batches)}"
            )

    def on_step_end(self, args, state, control, **kwargs):
        self._batches = []

    def _place(self) -> str:
        return "the start of training" if self.state is None else _where(self.state, self.dataset)


def run_record(train_dataset, args) -> dict[str, Any]:
    """What a run trains on, as a checkpoint records it: the teacher-logit store's identity (its metadata
    checksum), the augmentation recipe, the dataset's content fingerprint and the view seed."""
    record: dict[str, Any] = {"distillation_type": args.distillation_type}
    views = getattr(train_dataset, "views", None)
    if views is not None:
        record["dataset_fingerprint"] = views.fingerprint()
        record["dataset_size"] = getattr(views, "num_samples", None) or len(views)  # a stream's len is per rank
        record["recipe_fingerprint"] = views.recipe.fingerprint()
        record["view_seed"] = views.seed
    store = getattr(train_dataset, "store", None)
    if store is not None:
        record["store"] = {"identity": store.identity, "path": store.path, "epochs": store.epochs,
                           "teacher_hash": store.metadata["teacher_hash"]}  # fmt: skip
    return record


def check_resume(checkpoint: str, record: dict[str, Any]) -> None:
    """Refuse to resume from `checkpoint` when what the run trains on is not what the checkpoint was
    trained on, naming each difference."""
    path = os.path.join(checkpoint, RUN_RECORD_NAME)
    if not os.path.exists(path):
        logger.warning("checkpoint %s records no %s: cannot check that it resumes the same data", checkpoint, RUN_RECORD_NAME)
        return
    with open(path) as handle:
        saved = json.load(handle)
    changed = []
    saved_store, store = saved.get("store") or {}, record.get("store") or {}
    if saved_store.get("identity") != store.get("identity"):
        detail = [
            f"{key} {saved_store.get(key)!r} -> {store.get(key)!r}"
            for key in ("teacher_hash", "epochs", "path")
            if saved_store.get(key) != store.get(key)
        ]
        changed.append(
            f"the teacher-logit store (identity {saved_store.get('identity')!r} -> {store.get('identity')!r}"
            + (f": {', '.join(detail)}" if detail else "") + ")"
        )
    for key, what in (
        ("recipe_fingerprint", "the augmentation recipe"),
        ("dataset_fingerprint", "the dataset's content"),
        ("dataset_size", "the dataset's size"),
        ("view_seed", "the view seed"),
        ("distillation_type", "distillation_type"),
    ):
        if saved.get(key) != record.get(key):
            changed.append(f"{what} ({key} {saved.get(key)!r} -> {record.get(key)!r})")
    if changed:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was trained on another world; changed: {'; '.join(changed)}. "
            "Resume with the store, recipe and dataset it was trained on, or start a new run (another output_dir)"
        )


class RunRecordCallback(TrainerCallback):
    """Writes `run_record` into every checkpoint folder, so that a resume can be checked against it."""

    def __init__(self, train_dataset):
        self.train_dataset = train_dataset
        self._record: dict[str, Any] | None = None

    def record(self, args) -> dict[str, Any]:
        if self._record is None:
            self._record = run_record(self.train_dataset, args)
        return self._record

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            # atomically: a run killed while writing must not leave a half record that stops its resume
            path = os.path.join(folder, RUN_RECORD_NAME)
            with open(f"{path}.tmp", "w") as handle:
                json.dump(self.record(args), handle, indent=2, sort_keys=True, allow_nan=False)
            os.replace(f"{path}.tmp", path)

# Per-rank file in a checkpoint folder holding the position of a streamed training DataLoader.
STREAM_STATE_NAME = "stream_state_rank{rank}.json"


def write_stream_state(dataloader, folder: str, rank: int) -> None:
    """Save a stateful training DataLoader's position (torchdata `StatefulDataLoader.state_dict`, each worker's
    dataset state included) into a checkpoint folder as JSON, one file per rank, atomically."""
    import json
    import os

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STREAM_STATE_NAME.format(rank=rank))
    with open(f"{path}.tmp", "w") as handle:
        json.dump(dataloader.state_dict(), handle)
    os.replace(f"{path}.tmp", path)
