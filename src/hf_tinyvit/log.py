"""hf_tinyvit's messages and progress bars, in one place and through transformers' own tools.

Every module logs with `get_logger(__name__)` (transformers' `get_logger`): plain loggers under
"hf_tinyvit" that add no handler and propagate, as a library's should. What is shown is decided by whoever
runs the code: `set_verbosity` sets hf_tinyvit's and transformers' levels together; the `hf-tinyvit` command
line calls it from `--verbosity` (default: hf_tinyvit at INFO, transformers left as it is), and a distillation
run follows the Trainer's `--log_level` / `--log_level_replica` for each process. Progress bars are tqdm bars
that a caller's `disable` (e.g. `--disable_tqdm`) or `transformers.utils.logging.disable_progress_bar()` turn off.
"""

from __future__ import annotations

import logging
import sys

from transformers.utils import logging as transformers_logging

__all__ = ["LEVELS", "enable_console", "follow_training_args", "get_logger", "progress_bar", "set_verbosity"]

PACKAGE = "hf_tinyvit"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def get_logger(name: str) -> logging.Logger:
    """The logger of one module (`get_logger(__name__)`)."""
    return transformers_logging.get_logger(name)


def _level(level: int | str) -> int:
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"verbosity={level!r}; accepted: {sorted(LEVELS)}")
        return LEVELS[level.lower()]
    return int(level)


def set_verbosity(level: int | str, *, transformers: bool = True) -> None:
    """Show hf_tinyvit's messages at `level` and above ("debug", "info", "warning", "error" or a logging
    level); with `transformers`, transformers' messages too."""
    level = _level(level)
    logging.getLogger(PACKAGE).setLevel(level)
    if transformers:
        transformers_logging.set_verbosity(level)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes, not to the stream it was created with (a
    command run in-process, e.g. under pytest, may outlive the stderr it started with)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def enable_console() -> None:
    """Print hf_tinyvit's messages, one per line, to stderr, where transformers writes its own.

    For command lines: a library adds no handler. Calling it again changes nothing.
    """
    package = logging.getLogger(PACKAGE)
    if any(isinstance(handler, _StderrHandler) for handler in package.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package.addHandler(handler)


def follow_training_args(args) -> None:
    """hf_tinyvit's level for this process from a `TrainingArguments`: `log_level` on the main process
    (INFO when left "passive") and `log_level_replica` on the others, as the Trainer sets transformers'."""
    if args.should_log and args.log_level == "passive":
        set_verbosity(logging.INFO, transformers=False)
    else:
        set_verbosity(args.get_process_log_level(), transformers=False)


def progress_bar(iterable=None, *, disable: bool = False, **kwargs):
    """A tqdm bar, off when `disable` or when transformers' progress bars are disabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=disable or not transformers_logging.is_progress_bar_enabled(), **kwargs)
