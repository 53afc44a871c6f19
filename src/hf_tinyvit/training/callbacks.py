"""Trainer callbacks of `DistillationTrainer`: the replayed views (and stored targets) follow the
training epoch; a streamed run's DataLoader position, written into every checkpoint."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["STREAM_STATE_NAME", "ReplayEpochCallback", "current_epoch", "write_stream_state"]


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
