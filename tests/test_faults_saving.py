"""Fault tests of `examples/save_teacher_logits.py`: SIGKILLed at seeded random points (mid-shard
included) and rerun, it ends byte-identical to an uninterrupted run while a concurrent reader only
ever sees complete shards; and 1 or 2 processes with 0 or 2 DataLoader workers give one store."""

from __future__ import annotations

import hashlib
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAVE_SCRIPT = REPO / "examples" / "save_teacher_logits.py"
NUM_SAMPLES, CHUNK, EPOCHS = 48, 6, 2
NUM_SHARDS = EPOCHS * NUM_SAMPLES // CHUNK
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

pytestmark = [pytest.mark.fault, pytest.mark.xdist_group("faults_saving")]


def fork_script(script: Path, argv: list[str], log: Path, patch=None) -> int:
    """Run `script` as __main__ in a forked child of this warm interpreter and return its pid.

    Every run of a script pays 10-20 s of imports (torch, torchvision, transformers) on the 2-core
    machines; a fork from the test process, which has them loaded, costs only the script's own work,
    so a kill lands on real saving or training work. `patch` runs in the child first.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if patch is not None:
            patch()
        sys.argv = [str(script), *argv]
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_child(pid: int, timeout: float = 300) -> int:
    """The child's exit status as subprocess reports it (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise TimeoutError(f"child {pid} ran past {timeout} s")


def free_port() -> int:
    with socket.socket() as probe:  # other suites start process groups too: never a fixed port
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def store_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file of a store (temporary files and caches would show up here too)."""
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A tiny random 5-class ViT saved as a transformers folder: the script's --teacher."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=5, id2label={i: f"c{i}" for i in range(5)}, label2id={f"c{i}": i for i in range(5)},
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("teacher")
    with torch.random.fork_rng():  # transformers initialises from the global generator: seed a private copy
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def save_args(teacher: Path, output_dir: Path, workers: int = 0) -> list[str]:
    options = {
        "teacher": teacher, "dataset_name": "digits", "image_size": 16, "num_epochs": EPOCHS, "topk": 3,
        "max_samples": NUM_SAMPLES, "chunk_size": CHUNK, "batch_size": 3, "seed": 0, "num_workers": workers,
        "output_dir": output_dir,
    }  # fmt: skip
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


def save_logits(argv):
    from hf_tinyvit.cli import main

    return main(["save-logits", *argv])


@pytest.fixture(scope="module")
def reference(teacher_folder, tmp_path_factory):
    """An uninterrupted one-process, zero-worker run of the script, in this process."""
    output = tmp_path_factory.mktemp("reference") / "store"
    save_logits(save_args(teacher_folder, output))
    return output


class ShardReader(threading.Thread):
    """Polls a store while it is written: every shard under its final name must read whole, and every
    epoch metadata.json lists must have all its shards."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop, self.errors = path, threading.Event(), []
        self.verified: set[str] = set()
        self.temporaries_seen = 0
        self.polls = 0

    def run(self):
        while not self.stop.is_set():
            self.polls += 1
            data = self.path / "data"
            names = [str(p) for p in data.rglob("*")] if data.is_dir() else []
            self.temporaries_seen += sum(".tmp-" in n for n in names)
            for name in names:
                if name.endswith(".parquet") and name not in self.verified:
                    try:
                        table = pq.read_table(name)
                        assert table.num_rows == CHUNK, f"{name} has {table.num_rows} rows"
                        self.verified.add(name)
                    except FileNotFoundError:
                        pass  # a run that redoes the chunk may not have renamed it yet
                    except Exception as error:  # anything else is a partial shard seen by a reader
                        self.errors.append(f"{name}: {error!r}")
            metadata = self.path / "metadata.json"
            if metadata.exists():
                try:
                    listed = json.loads(metadata.read_text())["epochs"]
                except FileNotFoundError:
                    listed = []
                except Exception as error:
                    self.errors.append(f"metadata.json: {error!r}")
                    listed = []
                for epoch in listed:
                    shards = list((data / f"epoch_{epoch:04d}").glob("chunk_*.parquet"))
                    if len(shards) != NUM_SAMPLES // CHUNK:
                        self.errors.append(f"metadata lists epoch {epoch} with {len(shards)} shards")
            time.sleep(0.002)


def slow_shard_writes():
    """In a killed child only: a shard's temporary file holds its first bytes for 50 ms before the real
    write, so kills polled on temporary files land mid-write and leave a genuinely partial file."""
    import pyarrow.parquet as child_pq

    write = child_pq.write_table

    def slow(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1")
        time.sleep(0.05)
        write(table, where, **kwargs)

    child_pq.write_table = slow


def test_sigkilled_saving_resumes_to_the_uninterrupted_bytes(teacher_folder, reference, tmp_path):
    output = tmp_path / "store"
    argv = save_args(teacher_folder, output)
    generator = torch.Generator().manual_seed(8)
    # kill points: during set-up, mid-shard-write (a temporary file exists) or right after whole shards
    kinds = ["setup", "mid_write", "after_shards", "mid_write", "after_shards", "mid_write"]
    reader = ShardReader(output)
    reader.start()
    survived = []
    try:
        for run, kind in enumerate(kinds):
            done_before = len(list(output.glob("data/*/*.parquet")))
            remaining = NUM_SHARDS - done_before
            assert remaining >= 3, f"kill {run}: only {remaining} shards left to interrupt"
            target = int(torch.randint(1, min(3, remaining - 1) + 1, (1,), generator=generator))
            delay = float(torch.rand((), generator=generator)) * (0.5 if kind == "setup" else 0.02)
            pid = fork_script(SAVE_SCRIPT, argv, tmp_path / f"run{run}.log", patch=slow_shard_writes)
            start = time.monotonic()
            while True:
                complete = len(list(output.glob("data/*/*.parquet"))) - done_before
                temporaries = list(output.glob("data/*/*.tmp-*"))
                if kind == "setup" and time.monotonic() - start >= delay:
                    break
                if kind == "mid_write" and complete >= target - 1 and temporaries:
                    break
                if kind == "after_shards" and complete >= target:
                    time.sleep(delay)
                    break
                assert os.waitpid(pid, os.WNOHANG) == (0, 0), (tmp_path / f"run{run}.log").read_text()[-3000:]
                time.sleep(0.001)
            partial = [p.name for p in output.glob("data/*/*.tmp-*")]
            os.kill(pid, signal.SIGKILL)
            assert wait_child(pid) == -signal.SIGKILL
            survived.append((kind, len(list(output.glob("data/*/*.parquet"))), partial))
        # the same command, now cold from the command line, finishes the store
        rerun = subprocess.run(
            [sys.executable, str(SAVE_SCRIPT), *argv], env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        reader.stop.set()
        reader.join()
    print(f"\nkill points survived: {len(survived)}")
    for kind, shards, partial in survived:
        print(f"  SIGKILL {kind:13s} with {shards:2d}/{NUM_SHARDS} shards done, temporary files {partial}")
    print(f"reader: {reader.polls} polls, {len(reader.verified)} read whole, {reader.temporaries_seen} temp files")
    assert len(survived) >= 5
    assert any(partial for kind, _, partial in survived if kind == "mid_write"), survived
    assert reader.errors == [], reader.errors[:5]
    assert reader.verified, "the reader never saw a shard"
    assert not list(output.rglob("*.tmp-*"))
    # byte for byte: every shard, metadata.json and the dataset card
    assert store_hashes(output) == store_hashes(reference)


@pytest.mark.multiprocess
def test_process_and_worker_counts_give_identical_stores(teacher_folder, reference, tmp_path):
    stores = {"1 process, 0 workers": reference}
    stores["1 process, 2 workers"] = tmp_path / "one-two"
    save_logits(save_args(teacher_folder, stores["1 process, 2 workers"], workers=2))
    stores["2 processes, 2 workers"] = tmp_path / "two-two"
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", str(free_port())]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, str(SAVE_SCRIPT)]
    command += save_args(teacher_folder, stores["2 processes, 2 workers"], workers=2)
    run = subprocess.run(
        command, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    writers = set(re.findall(r"rank (\d) wrote data/", run.stderr + run.stdout))
    assert writers == {"0", "1"}, (run.stderr + run.stdout)[-3000:]

    hashes = {name: store_hashes(path) for name, path in stores.items()}
    print("\nstore hashes (sha256 over every file's sha256):")
    for name, files in hashes.items():
        print(f"  {name:24s} {digest(files)}  ({len(files)} files)")
    # (2 processes, 0 workers) is tests/test_data_teacher.py::test_two_processes_write_the_same_store_as_one
    assert len({digest(files) for files in hashes.values()}) == 1, hashes
