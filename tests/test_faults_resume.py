"""Fault test of `examples/distill.py`: SIGKILLed after a checkpoint and resumed from the command line
with --resume_from_checkpoint, it logs the uninterrupted run's losses and ends on its exact weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from test_distill_script import SCRIPT, script_args, store_path  # noqa: F401  (store_path is a fixture)
from test_faults_checkpoints import assert_only_safe_files
from test_faults_saving import SUBPROCESS_ENV, fork_script, wait_child

pytestmark = pytest.mark.fault
# 64 samples / batch 8 x 3 epochs = 24 steps, a checkpoint every 4: the kill lands after one of them
CHECKPOINTS = ["--num_train_epochs", "3", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "1"]
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime"}


def trajectory(log_history: list[dict]) -> list[dict]:
    """Every logged figure but wall-clock ones, which differ between any two runs."""
    return [
        {k: v for k, v in entry.items() if k not in TIMING_KEYS and not k.endswith("_per_second")}
        for entry in log_history
    ]


def complete_checkpoints(output_dir) -> list[int]:
    # Trainer writes trainer_state.json last: a checkpoint without it was cut short by the kill
    return sorted(
        int(p.parent.name.split("-")[1]) for p in output_dir.glob("checkpoint-*/trainer_state.json")
    )


def test_killed_training_resumes_to_the_uninterrupted_losses_and_weights(store_path, tmp_path):  # noqa: F811
    from hf_tinyvit.cli import main as cli

    cli(["distill", *script_args(store_path, tmp_path / "whole", *CHECKPOINTS)])

    generator = torch.Generator().manual_seed(2)
    first = 4 * int(torch.randint(1, 4, (1,), generator=generator))  # checkpoint 4, 8 or 12
    killed = tmp_path / "killed"
    argv = script_args(store_path, killed, *CHECKPOINTS)
    pid = fork_script(SCRIPT, argv, tmp_path / "killed.log")
    while not (killed / f"checkpoint-{first}" / "trainer_state.json").exists():
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.001)
    time.sleep(float(torch.rand((), generator=generator)) * 0.5)  # then somewhere in the following steps
    os.kill(pid, signal.SIGKILL)
    assert wait_child(pid) == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    resume_from = max(complete_checkpoints(killed))
    print(f"\nkilled after checkpoint-{first}; resuming from checkpoint-{resume_from} of 24 steps")

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--resume_from_checkpoint", str(killed / f"checkpoint-{resume_from}")],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    whole = json.loads((tmp_path / "whole" / "checkpoint-24" / "trainer_state.json").read_text())
    again = json.loads((killed / "checkpoint-24" / "trainer_state.json").read_text())
    assert len([e for e in again["log_history"] if "loss" in e]) == 24
    assert trajectory(again["log_history"]) == trajectory(whole["log_history"])
    expected = load_file(tmp_path / "whole" / "model.safetensors")
    got = load_file(killed / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"
    # what training writes: safetensors and JSON, plus resume state that loads with weights_only=True
    assert (killed / "training_args.json").is_file()
    assert_only_safe_files(killed)
    # TinyViT folders carry an auto_map for hosts without hf_tinyvit; with it installed no remote code runs
    assert type(AutoModelForImageClassification.from_pretrained(killed, trust_remote_code=False)).__name__ == (
        "TinyViTForImageClassification"
    )
