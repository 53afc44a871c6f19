"""Trainer callbacks of `DistillationTrainer`: the replayed views (and stored targets) follow the
training epoch."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["ReplayEpochCallback", "current_epoch"]


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
