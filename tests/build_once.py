"""Expensive test inputs built once per test session, also when pytest-xdist spreads a module's tests over
several workers: the first worker builds under a file lock, the others wait and reuse the result (the recipe
pytest-xdist documents for session-wide fixtures)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_once(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)` fills an empty `folder` and returns JSON-able data; every caller gets that data."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the directory all workers of this session share
    folder = root / name
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())
