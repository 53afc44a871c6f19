"""Streamed training data: sample ids attached before any split, items equal to the map-style ones bitwise
(from an in-memory dataset, local Parquet files and an image folder), the same samples for any number of
processes and DataLoader workers, a (seed, epoch) shuffle, and mid-epoch resumption through a stateful
DataLoader: a killed streamed `distill` run (1 process) and a resumed one (2 processes) retrace the
uninterrupted run's losses and weights."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image
from safetensors.torch import load_file
from torchdata.stateful_dataloader import StatefulDataLoader

from hf_tinyvit import AugmentationRecipe, TeacherLogitStore, load_image_dataset, save_teacher_logits
from hf_tinyvit.augment.views import IterableAugmentedDataset, collate_views, stream_shard_sizes, with_sample_ids
from hf_tinyvit.replay import IterableStoredLogitsDataset, StoredLogitsDataset
from test_distill_script import SCRIPT, TINY
from test_faults_resume import complete_checkpoints, trajectory
from test_faults_saving import SUBPROCESS_ENV, fork_script, free_port, wait_child
from test_trainer_distillation import TRAIN_RECIPE, fit_teacher

NUM_TRAIN, NUM_TEST = 64, 40
# RandAugment and erasing on: the views exercise every random draw the replay must reproduce
RECIPE = dataclasses.replace(AugmentationRecipe.tinyvit_pretrain(16), scale=(0.5, 1.0))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """64 training and 40 test digits saved to disk, and a 2-epoch store of the training ones."""
    root = tmp_path_factory.mktemp("streaming")
    splits = load_image_dataset("digits")
    data = datasets.DatasetDict(
        {"train": splits["train"].select(range(NUM_TRAIN)), "test": splits["test"].select(range(NUM_TEST))}
    )
    data.save_to_disk(str(root / "digits"))
    teacher = fit_teacher(data["train"])
    for name, recipe in (("store", RECIPE), ("store-cli", TRAIN_RECIPE)):
        save_teacher_logits(
            teacher, data["train"], str(root / name), recipe=recipe, topk=3, num_epochs=2, seed=0,
            teacher_name="digits-logistic", progress=False, chunk_size=16,
        )  # fmt: skip
    return root, data


def sample_ids(items) -> list[int]:
    return [int(item["sample_id"]) for item in items]


def assert_same_items(streamed, reference) -> None:
    by_id = {int(item["sample_id"]): item for item in reference}
    for item in streamed:
        expected = by_id[int(item["sample_id"])]
        assert item.keys() == expected.keys()
        for key in item:
            assert torch.equal(item[key], expected[key]), key


# ---- sample ids ---------------------------------------------------------------------------------------


def test_sample_ids_are_attached_per_source_shard_before_any_split():
    table = datasets.Dataset.from_dict({"value": list(range(30))})
    stream = table.to_iterable_dataset(num_shards=6)
    # what we must not do: `map(with_indices=True)` counts within each split, so ids restart per rank
    naive = split_dataset_by_node(stream.map(lambda row, i: {"sample_id": i}, with_indices=True), rank=1, world_size=2)
    assert any(row["value"] != row["sample_id"] for row in naive)

    sizes = stream_shard_sizes(stream)
    assert sizes == [5] * 6
    for order in (None, [5, 0, 3, 1, 4, 2]):
        ids = with_sample_ids(stream, sizes, order)
        for world in (1, 2, 3, 4):
            seen = []
            for rank in range(world):
                rows = list(split_dataset_by_node(ids, rank=rank, world_size=world))
                assert all(row["value"] == row["sample_id"] for row in rows)
                seen += [row["sample_id"] for row in rows]
            assert sorted(seen) == list(range(30))
    wrong = with_sample_ids(stream, [5, 5, 5, 5, 5, 4])
    with pytest.raises(ValueError, match="source shard 5 holds 5\\+ rows, but shard_sizes says 4"):
        list(wrong)
    with pytest.raises(ValueError, match="shard_sizes has 2 entries; the stream has 6 shards"):
        with_sample_ids(stream, [15, 15])


# ---- items ----------------------------------------------------------------------------------------------


def streams(root, data) -> dict[str, datasets.IterableDataset]:
    """The same 64 training digits streamed from memory, from Parquet files and from an image folder."""
    parquet = root / "parquet"
    if not parquet.exists():
        parquet.mkdir()
        for shard in range(4):
            data["train"].shard(4, shard, contiguous=True).to_parquet(str(parquet / f"train-{shard:05d}.parquet"))
        folder = root / "images" / "train"
        folder.mkdir(parents=True)
        for i, row in enumerate(data["train"]):  # names sort in sample order; no label directories
            row["image"].save(folder / f"{i:03d}.png")
    files = sorted(str(p) for p in parquet.glob("*.parquet"))
    return {
        "memory": data["train"].to_iterable_dataset(num_shards=4),
        "parquet": datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True),
        "imagefolder": datasets.load_dataset(
            "imagefolder", data_dir=str(root / "images"), split="train", streaming=True
        ),
    }


def test_streamed_items_equal_the_map_style_items_bitwise_for_every_source(digits):
    root, data = digits
    store = TeacherLogitStore.open(str(root / "store"))
    reference = StoredLogitsDataset(data["train"], store)
    for name, stream in streams(root, data).items():
        labels = "label" if "label" in stream.column_names else None
        streamed = IterableStoredLogitsDataset(stream, store, label_column=labels, shuffle_buffer=16)
        assert streamed.num_samples == NUM_TRAIN and streamed.fingerprint() == store.metadata["dataset_fingerprint"]
        for epoch in (0, 1):
            streamed.set_epoch(epoch)
            reference.set_epoch(epoch)
            items = list(streamed)
            assert sorted(sample_ids(items)) == list(range(NUM_TRAIN)), name
            expected = reference.items(range(NUM_TRAIN))
            if labels is None:
                expected = [{k: v for k, v in item.items() if k != "labels"} for item in expected]
            assert_same_items(items, expected)


def test_a_stream_of_other_images_is_refused_before_training(digits):
    root, data = digits
    store = TeacherLogitStore.open(str(root / "store"))
    reversed_order = data["train"].select(range(NUM_TRAIN - 1, -1, -1)).to_iterable_dataset(num_shards=4)
    with pytest.raises(ValueError, match="dataset fingerprint .* differs from the store's"):
        IterableStoredLogitsDataset(reversed_order, store)
    fewer = data["train"].select(range(60)).to_iterable_dataset(num_shards=4)
    with pytest.raises(ValueError, match="the dataset has 60 samples but store .* was built from 64"):
        IterableStoredLogitsDataset(fewer, store)
    mixing = dataclasses.replace(RECIPE, mixup_alpha=0.8)
    with pytest.raises(ValueError, match="Mixup/CutMix replay pairs samples by sample id"):
        IterableAugmentedDataset(data["train"].to_iterable_dataset(), mixing, seed=0)


def test_same_samples_and_items_for_any_process_and_worker_count_and_a_seeded_epoch_shuffle(digits):
    root, data = digits
    store = TeacherLogitStore.open(str(root / "store"))
    stream = data["train"].to_iterable_dataset(num_shards=8)
    reference = {}
    orders = {}
    for world in (1, 2, 4):
        for workers in (0, 2):
            seen, lengths = [], []
            for rank in range(world):
                views = IterableStoredLogitsDataset(stream, store, shuffle_buffer=8, rank=rank, world_size=world)
                views.configure_loader(batch_size=4, num_workers=workers)
                views.set_epoch(1)
                loader = torch.utils.data.DataLoader(
                    views, batch_size=4, num_workers=workers, collate_fn=collate_views
                )
                batches = list(loader)
                assert len(batches) == len(loader)  # every rank takes the same number of steps
                lengths.append(len(batches))
                for batch in batches:
                    seen += [
                        {key: value[j] for key, value in batch.items()} for j in range(len(batch["sample_id"]))
                    ]
                if world == 1:
                    orders[workers] = sample_ids(seen)
            assert len(set(lengths)) == 1
            assert sorted(sample_ids(seen)) == list(range(NUM_TRAIN)), (world, workers)
            if not reference:
                reference = {int(item["sample_id"]): item for item in seen}
            assert_same_items(seen, reference.values())
    # the order is a shuffle, drawn again for each epoch and the same on every run
    views = IterableStoredLogitsDataset(stream, store, shuffle_buffer=8)
    views.set_epoch(1)
    assert sample_ids(views) == orders[0] != list(range(NUM_TRAIN))
    views.set_epoch(0)
    assert sample_ids(views) != orders[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stateful_loader_resumes_mid_epoch_with_the_same_batches(digits, workers):
    root, data = digits
    store = TeacherLogitStore.open(str(root / "store"))
    stream = data["train"].to_iterable_dataset(num_shards=4)

    def loader():
        views = IterableStoredLogitsDataset(stream, store, shuffle_buffer=8)
        views.configure_loader(batch_size=4, num_workers=workers)
        views.set_epoch(1)
        return StatefulDataLoader(views, batch_size=4, num_workers=workers, collate_fn=collate_views)

    whole = [batch["sample_id"].tolist() for batch in loader()]
    first = loader()
    iterator = iter(first)
    head = [next(iterator)["sample_id"].tolist() for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps: plain JSON
    del iterator
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [batch["sample_id"].tolist() for batch in resumed]
    assert head + tail == whole


# ---- resumable training through `hf-tinyvit distill --streaming` --------------------------------------------


def streamed_args(root, output_dir, *extra):
    options = {
        "model_preset": "tinyvit-5m-224",
        "config_overrides": TINY,
        "dataset_name": str(root / "digits"),
        "max_eval_samples": 8,
        "teacher_logits": str(root / "store-cli"),
        "distillation_type": "stored",
        "output_dir": str(output_dir),
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "report_to": "none",
        "disable_tqdm": "true",
        "stream_shards": 8,
        "shuffle_buffer": 16,
    }
    return [a for key, value in options.items() for a in (f"--{key}", str(value))] + ["--streaming", "--use_cpu", *extra]


def final_state(output_dir) -> dict:
    last = max(complete_checkpoints(output_dir))
    return json.loads((output_dir / f"checkpoint-{last}" / "trainer_state.json").read_text())


@pytest.mark.fault
def test_a_killed_streamed_run_resumes_mid_epoch_to_the_uninterrupted_losses_and_weights(digits, tmp_path):
    from hf_tinyvit.cli import main as cli

    root, _ = digits
    extra = ["--dataloader_num_workers", "2"]  # worker states travel in the checkpoint too
    cli(["distill", *streamed_args(root, tmp_path / "whole", *extra)])  # 64 / 8 x 2 epochs = 16 steps
    killed = tmp_path / "killed"
    argv = streamed_args(root, killed, *extra)
    pid = fork_script(SCRIPT, argv, tmp_path / "killed.log")
    while not (killed / "checkpoint-3" / "trainer_state.json").exists():  # 3 of the epoch's 8 steps
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    resume_from = max(complete_checkpoints(killed))
    assert resume_from % 8, "the resumed checkpoint must fall inside an epoch"
    assert (killed / f"checkpoint-{resume_from}" / "stream_state_rank0.json").is_file()
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--resume_from_checkpoint", str(killed / f"checkpoint-{resume_from}")],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = final_state(tmp_path / "whole"), final_state(killed)
    assert len([e for e in again["log_history"] if "loss" in e]) == 16
    assert trajectory(again["log_history"]) == trajectory(whole["log_history"])
    expected, got = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"


@pytest.mark.multiprocess
def test_two_processes_stream_disjoint_halves_and_resume_mid_epoch_to_the_same_run(digits, tmp_path):
    root, _ = digits
    env = {**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "true"}

    def launch(output_dir, *extra):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
                   "--dynamo_backend", "no", str(SCRIPT)]  # fmt: skip
        command += streamed_args(root, output_dir, "--log_level", "info", "--log_level_replica", "info", *extra)
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        output = run.stdout + run.stderr  # the per-rank summary is a log line (stderr)
        lines = re.findall(r"\[distill\] rank (\d) of 2: (\d+) steps, train_loss [\d.]+, parameter checksum (\S+)", output)
        assert sorted(line[0] for line in lines) == ["0", "1"], output[-3000:]  # every rank trained
        assert {line[1] for line in lines} == {"8"} and len({line[2] for line in lines}) == 1
        return run

    launch(tmp_path / "whole")  # 64 / (8 x 2 ranks) x 2 epochs = 8 steps, checkpoints at 3 and 6
    for rank in (0, 1):
        assert (tmp_path / "whole" / "checkpoint-6" / f"stream_state_rank{rank}.json").is_file()
    # resuming from the mid-epoch checkpoint 6 (2 of the second epoch's 4 steps) retraces the rest
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-6", resumed / "checkpoint-6")
    launch(resumed, "--resume_from_checkpoint", str(resumed / "checkpoint-6"))
    whole, again = final_state(tmp_path / "whole"), final_state(resumed)
    assert trajectory(again["log_history"]) == trajectory(whole["log_history"])
    expected, got = load_file(tmp_path / "whole" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"


def test_streaming_flag_refuses_what_a_stream_cannot_do(digits, tmp_path):
    from hf_tinyvit.cli import main as cli

    root, _ = digits
    with pytest.raises(ValueError, match="--max_train_samples cannot cut a stream"):
        cli(["distill", *streamed_args(root, tmp_path / "out", "--max_train_samples", "32")])


def test_an_unequal_split_reads_every_row_once_for_evaluation(digits):
    root, data = digits
    views = IterableAugmentedDataset(
        data["test"].to_iterable_dataset(num_shards=3), AugmentationRecipe.eval(16), seed=0, shuffle_buffer=1,
        rank=0, world_size=1, equal_split=False,
    )  # fmt: skip
    assert len(views) == NUM_TEST
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(views, batch_size=8, num_workers=workers, collate_fn=collate_views)
        ids = sorted(i for batch in loader for i in batch["sample_id"].tolist())
        assert ids == list(range(NUM_TEST))


def test_a_streamed_image_changed_since_saving_is_refused_by_its_digest(digits):
    root, data = digits
    store = TeacherLogitStore.open(str(root / "store"))
    assert store.has_image_digests
    pixels = np.array(data["train"][5]["image"])
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel: the 64-image fingerprint of a 64-image set still sees it...
    changed = data["train"].map(
        lambda row, i: {"image": Image.fromarray(pixels) if i == 5 else row["image"]}, with_indices=True
    )
    # ...so skip that check, as for a remote stream, and let the per-record digest find the image
    streamed = IterableStoredLogitsDataset(changed.to_iterable_dataset(num_shards=4), store, check_fingerprint=False)
    with pytest.raises(ValueError, match="the image of sample_id=5 is not the one the teacher saw"):
        list(streamed)
