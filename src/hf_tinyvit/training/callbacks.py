"""Trainer callbacks of `DistillationTrainer`: the replayed views (and stored targets) follow the
training epoch, and a streamed run's DataLoader position goes into every checkpoint."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["STREAM_STATE_NAME", "ReplayEpochCallback", "StreamStateCallback", "current_epoch"]


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


# Per-rank file in a checkpoint folder holding the position of a streamed training DataLoader.
STREAM_STATE_NAME = "stream_state_rank{rank}.json"


class StreamStateCallback(TrainerCallback):
    """Saves the stateful training DataLoader's position (torchdata `StatefulDataLoader.state_dict`, each
    worker's dataset state included) into every checkpoint, one JSON file per rank, so that a resumed
    streamed run continues where the checkpoint was taken instead of re-reading the epoch up to there."""

    def on_save(self, args, state, control, train_dataloader=None, **kwargs):
        import json
        import os

        if train_dataloader is None or not hasattr(train_dataloader, "state_dict"):
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STREAM_STATE_NAME.format(rank=args.process_index))
        with open(f"{path}.tmp", "w") as handle:
            json.dump(train_dataloader.state_dict(), handle)
        os.replace(f"{path}.tmp", path)
