"""Streamed saving: a teacher pass over a `datasets.IterableDataset` (in memory, local Parquet files, an image
folder) writes the byte-identical store a map-style pass writes (every shard, metadata.json and the card), for
1 and 2 processes and 0 and 2 DataLoader workers, in either top-k encoding and with --max_samples; a SIGKILLed
streamed run resumes to the uninterrupted bytes; shard sizes come from Parquet footers; Mixup is refused."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import datasets
import pytest
import torch

from hf_tinyvit import AugmentationRecipe, TeacherLogitStore, load_image_dataset, save_teacher_logits
from hf_tinyvit.augment.views import known_shard_sizes, stream_rows, stream_shard_sizes
from test_faults_saving import (
    SAVE_SCRIPT,
    SUBPROCESS_ENV,
    fork_script,
    free_port,
    store_hashes,
    teacher_folder,
    wait_child,
)
from test_store_save_replay import TinyTeacher

assert teacher_folder  # a fixture, imported for the command-line runs
NUM, CHUNK, BATCH = 40, 12, 5  # 4 chunks an epoch, the last one short; batches that do not divide the chunks
RECIPE = AugmentationRecipe.tinyvit_pretrain(16)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 40 digits in memory, as Parquet files (a folder with a train split) and as an image folder."""
    root = tmp_path_factory.mktemp("sources")
    data = load_image_dataset("digits")["train"].select(range(NUM))
    folder = root / "parquet"
    folder.mkdir()
    for shard, (start, stop) in enumerate([(0, 7), (7, 7), (7, 23), (23, 40)]):  # uneven, one empty
        data.select(range(start, stop)).to_parquet(str(folder / f"train-{shard:05d}-of-00004.parquet"))
    images = root / "images" / "train"
    images.mkdir(parents=True)
    for i, row in enumerate(data):
        row["image"].save(images / f"{i:03d}.png")
    return {"root": root, "data": data, "parquet": folder, "images": root / "images"}


def stream(sources, kind: str):
    if kind == "memory":
        return sources["data"].to_iterable_dataset(num_shards=3)
    if kind == "parquet":
        return datasets.load_dataset(str(sources["parquet"]), split="train", streaming=True)
    return datasets.load_dataset("imagefolder", data_dir=str(sources["images"]), split="train", streaming=True)


def save(dataset, path, **kwargs):
    options = dict(recipe=RECIPE, topk=3, num_epochs=2, chunk_size=CHUNK, batch_size=BATCH, progress=False,
                   teacher_name="tiny-teacher")  # fmt: skip
    return save_teacher_logits(TinyTeacher(), dataset, str(path), **{**options, **kwargs})


@pytest.fixture(scope="module")
def references(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("references")
    data = sources["data"]
    return {
        "float16": store_hashes(root / "float16") if save(data, root / "float16") else None,
        "sqrt8": store_hashes(root / "sqrt8") if save(data, root / "sqrt8", topk_encoding="sqrt8") else None,
        "first 30": store_hashes(root / "first30") if save(data, root / "first30", max_samples=30) else None,
    }


@pytest.mark.parametrize(
    "kind, workers, encoding",
    [("memory", 0, "float16"), ("parquet", 2, "sqrt8"), ("imagefolder", 0, "float16"), ("parquet", 0, "first 30")],
)
def test_a_streamed_save_writes_the_map_style_bytes(kind, workers, encoding, sources, references, tmp_path):
    options = {"max_samples": 30} if encoding == "first 30" else {"topk_encoding": encoding}
    path = tmp_path / "store"
    save(stream(sources, kind), path, num_workers=workers, **options)
    hashes = store_hashes(path)
    assert sorted(hashes) == sorted(references[encoding]) and len(hashes) == 2 + (6 if options.get("max_samples") else 8)
    assert hashes == references[encoding]


def test_shard_sizes_come_from_parquet_footers_and_rows_are_read_where_asked(sources):
    parquet = stream(sources, "parquet")
    assert known_shard_sizes(parquet) == [7, 0, 16, 17]  # from the footers: no pass over the rows
    assert known_shard_sizes(stream(sources, "memory")) == [14, 13, 13]
    assert known_shard_sizes(stream(sources, "imagefolder")) is None  # counted instead
    assert stream_shard_sizes(stream(sources, "imagefolder")) == [NUM]
    assert known_shard_sizes(parquet.shuffle(seed=0)) is None
    rows = list(stream_rows(parquet, [7, 0, 16, 17], [(5, 9), (30, 32)]))
    assert [i for i, _ in rows] == [5, 6, 7, 8, 30, 31]
    expected = sources["data"].cast_column("image", datasets.Image(decode=False))
    assert [row["image"]["bytes"] for _, row in rows] == [expected[i]["image"]["bytes"] for i in (5, 6, 7, 8, 30, 31)]
    with pytest.raises(ValueError, match=r"source shard 3 holds 17 rows, but shard_sizes says 18"):
        list(stream_rows(parquet, [7, 0, 16, 18], [(35, 41)]))
    with pytest.raises(ValueError, match=r"source shard 2 holds more than 15 rows, but shard_sizes says 15"):
        list(stream_rows(parquet, [7, 0, 15, 18], [(20, 23)]))


def test_what_a_stream_cannot_save_is_refused_before_any_work(sources, tmp_path):
    with pytest.raises(ValueError, match=r"a Mixup/CutMix store cannot be saved from a stream: .*partner image"):
        save(stream(sources, "memory"), tmp_path / "mixed", recipe=AugmentationRecipe.deit(16), chunk_size=12)
    assert not (tmp_path / "mixed").exists()
    from hf_tinyvit import ViewCache

    with pytest.raises(ValueError, match="view_cache serves map-style datasets"):
        save(stream(sources, "memory"), tmp_path / "cached", view_cache=ViewCache())


def cli_args(teacher, dataset_name: str, output, *extra: str) -> list[str]:
    options = {
        "teacher": teacher, "dataset_name": dataset_name, "image_size": 16, "num_epochs": 2, "topk": 3,
        "chunk_size": 6, "batch_size": 4, "seed": 0, "output_dir": output,
    }  # fmt: skip
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))] + list(extra)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_with_two_workers_stream_the_one_process_bytes(teacher_folder, sources, tmp_path):
    from hf_tinyvit.cli import main as cli

    one = tmp_path / "one"
    cli(["save-logits", *cli_args(teacher_folder, str(sources["parquet"]), one, "--topk_encoding", "sqrt8")])
    two = tmp_path / "two"
    argv = cli_args(teacher_folder, str(sources["parquet"]), two, "--topk_encoding", "sqrt8", "--streaming",
                    "--num_workers", "2")  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", str(SAVE_SCRIPT), *argv]  # fmt: skip
    run = subprocess.run(command, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                         text=True, timeout=1200, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    # 40 samples in chunks of 6 over 2 epochs: 14 shards dealt round-robin, so both ranks write some
    assert set(re.findall(r"rank (\d) wrote data/", run.stdout + run.stderr)) == {"0", "1"}, run.stderr[-3000:]
    assert store_hashes(two) == store_hashes(one)
    assert TeacherLogitStore.open(two).topk_encoding == "sqrt8"


@pytest.mark.fault
@pytest.mark.slow
def test_a_sigkilled_streamed_save_resumes_to_the_uninterrupted_bytes(teacher_folder, sources, tmp_path):
    from hf_tinyvit.cli import main as cli

    reference = tmp_path / "reference"
    cli(["save-logits", *cli_args(teacher_folder, str(sources["parquet"]), reference)])
    output = tmp_path / "killed"
    argv = cli_args(teacher_folder, str(sources["parquet"]), output, "--streaming")
    pid = fork_script(SAVE_SCRIPT, argv, tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(output.glob("data/epoch_*/chunk_*.parquet"))) < 3:
        time.sleep(0.002)
    try:
        import os

        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert wait_child(pid) in (-signal.SIGKILL, 0)
    shards = list(output.glob("data/epoch_*/chunk_*.parquet"))
    assert 3 <= len(shards) < 14 and json.loads((output / "metadata.json").read_text())["epochs"] != [0, 1]
    cli(["save-logits", *argv])
    assert store_hashes(output) == store_hashes(reference)
    stored = TeacherLogitStore.open(output)
    assert stored.epochs == [0, 1] and stored.verify().ok
    assert torch.equal(stored.targets(1, range(40))[1], TeacherLogitStore.open(reference).targets(1, range(40))[1])
