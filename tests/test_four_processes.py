"""More than two processes: `save-logits` under 4 CPU processes writes the byte-identical store one process
writes, and stored-logit training of a BatchNorm-free student under 4 processes (batch 4 each) ends on the
weights one process reaches with batch 16, every rank asserted to have worked. 4 processes on 2 cores are
slow: a tiny teacher and student, 48 images, a few steps."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_distill_script import SCRIPT as DISTILL_SCRIPT
from test_faults_saving import (
    SAVE_SCRIPT,
    SUBPROCESS_ENV,
    digest,
    free_port,
    save_args,
    save_logits,
    store_hashes,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
# LayerNorm only (BatchNorm statistics would depend on the per-process batch) and SGD (Adam's first step
# divides by |g|, which would turn last-bit differences of all-reduced gradients into lr-sized ones).
STUDENT = json.dumps(
    {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 8}
)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A tiny random 10-class ViT saved as a transformers folder (the digits' classes, so the trained
    student's evaluation on labelled digits runs)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=10, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)},
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("teacher")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def launch(script, argv, processes: int, cwd) -> str:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", str(script), *argv]  # fmt: skip
    run = subprocess.run(
        command, env={**SUBPROCESS_ENV, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=1200,
        cwd=cwd,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


def train_args(store, output_dir, batch_size: int) -> list[str]:
    options = {
        "model_preset": "deit-tiny-distilled-224", "config_overrides": STUDENT, "dataset_name": "digits",
        "max_train_samples": 48, "max_eval_samples": 8, "teacher_logits": store, "distillation_type": "stored",
        "output_dir": output_dir, "num_train_epochs": 2, "per_device_train_batch_size": batch_size, "optim": "sgd",
        "learning_rate": 0.05, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": "true",
        "seed": 0, "log_level": "info", "log_level_replica": "info",
    }  # fmt: skip
    return [a for key, value in options.items() for a in (f"--{key}", str(value))] + ["--use_cpu"]


def test_four_processes_save_the_same_store_and_train_the_same_weights_as_one(teacher_folder, tmp_path):
    from hf_tinyvit.cli import main as cli

    one = tmp_path / "one"
    save_logits(save_args(teacher_folder, one))
    four = tmp_path / "four"
    output = launch(SAVE_SCRIPT, save_args(teacher_folder, four), 4, tmp_path)
    # 48 samples in chunks of 6 over 2 epochs: 16 shards, dealt round-robin, so every rank writes some
    assert set(re.findall(r"rank (\d) wrote data/", output)) == {"0", "1", "2", "3"}, output[-3000:]
    assert digest(store_hashes(four)) == digest(store_hashes(one)), (store_hashes(one), store_hashes(four))

    cli(["distill", *train_args(str(one), str(tmp_path / "train-one"), 16)])
    output = launch(DISTILL_SCRIPT, train_args(str(four), str(tmp_path / "train-four"), 4), 4, tmp_path)
    lines = re.findall(r"\[distill\] rank (\d) of (\d): (\d+) steps, train_loss [\d.]+, parameter checksum (\S+)", output)
    assert sorted(line[0] for line in lines) == ["0", "1", "2", "3"], output[-3000:]
    # 48 samples / (4 per process x 4) x 2 epochs = 6 steps everywhere; equal checksums: gradients all-reduced
    assert {line[1] for line in lines} == {"4"} and {line[2] for line in lines} == {"6"}
    assert len({line[3] for line in lines}) == 1
    single = load_file(tmp_path / "train-one" / "model.safetensors")
    parallel = load_file(tmp_path / "train-four" / "model.safetensors")
    assert single.keys() == parallel.keys()
    # the same samples in every global batch: only the order of the gradient reductions differs
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
