"""examples/distill.py end to end on digits: one process (saved folder loads through `pipeline`, its card
parses, the push uploads that folder) and two real gloo processes under `accelerate launch`."""

import fnmatch
import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers.trainer
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_tinyvit import load_image_dataset, save_teacher_logits
from hf_tinyvit.cli import main as cli
from test_trainer_distillation import TRAIN_RECIPE, fit_teacher

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "distill.py"
NUM_TRAIN = 64
TINY = json.dumps(
    {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_sizes": [2, 2, 2, 2]}
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Two stored epochs for the first 64 training digits, as `--max_train_samples 64` selects them."""
    train = load_image_dataset("digits")["train"].select(range(NUM_TRAIN))
    path = str(tmp_path_factory.mktemp("logits") / "digits-top3")
    save_teacher_logits(
        fit_teacher(train),
        train,
        path,
        recipe=TRAIN_RECIPE,
        topk=3,
        num_epochs=2,
        seed=0,
        teacher_name="digits-logistic",
        progress=False,
    )
    return path


def script_args(store_path, output_dir, *extra):
    options = {
        "model_preset": "tinyvit-5m-224",
        "config_overrides": TINY,
        "dataset_name": "digits",
        "max_train_samples": NUM_TRAIN,
        "max_eval_samples": 40,
        "teacher_logits": store_path,
        "distillation_type": "stored",
        "output_dir": output_dir,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "logging_steps": 2,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
    }
    return [arg for key, value in options.items() for arg in (f"--{key}", str(value))] + ["--use_cpu", *extra]


class RecordingHubApi:
    """Stands in for huggingface_hub's HfApi: records what a push would create and upload."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(
        self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False, **kwargs
    ):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        files = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in ignore_patterns or ())]
        card = Path(folder_path) / "README.md"
        self.uploads.append(
            {
                "repo_id": repo_id,
                "files": files,
                "path_in_repo": path_in_repo,
                "ignore_patterns": ignore_patterns,
                "card": card.read_text() if card.is_file() else None,
            }
        )
        commit = SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/{len(self.uploads)}")
        if not run_as_future:
            return commit
        future = Future()  # checkpoint pushes run in the background; Trainer waits on these
        future.set_result(commit)
        return future


def test_one_process_run_pushes_a_pipeline_ready_model_with_a_parsing_card(store_path, tmp_path, monkeypatch):
    hub = RecordingHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    output_dir = tmp_path / "out"
    trainer = cli(
        ["distill", *script_args(
            store_path,
            output_dir,
            "--push_to_hub",
            "--hub_model_id",
            "me/tinyvit-digits",
            "--save_strategy",
            "steps",
            "--save_steps",
            "8",
            "--hub_strategy",
            "checkpoint",
        )]
    )

    assert hub.repos == ["me/tinyvit-digits"]
    assert {u["repo_id"] for u in hub.uploads} == {"me/tinyvit-digits"}
    # 16 steps, a checkpoint every 8: each save pushes the model files and the resumable last checkpoint.
    checkpoints = [u for u in hub.uploads if u["path_in_repo"] == "last-checkpoint"]
    assert len(checkpoints) == 2
    assert {"optimizer.pt", "trainer_state.json", "model.safetensors"} <= set(checkpoints[-1]["files"])
    upload = hub.uploads[-1]  # the final push of the trained model
    assert upload["path_in_repo"] is None and not any(f.startswith("checkpoint-") for f in upload["files"])
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert name in upload["files"], upload["files"]

    card = ModelCard(upload["card"])
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"tinyvit", "distillation-stored", "knowledge-distillation"} <= set(card.data.tags)
    assert card.data.datasets is None  # the built-in digits and a local store have no Hub id to list
    (result,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    final_eval = [e for e in trainer.state.log_history if "eval_accuracy" in e][-1]
    assert result.metric_value == pytest.approx(final_eval["eval_accuracy"])
    assert (result.dataset_name, result.dataset_split) == ("digits (scikit-learn's handwritten digits)", "test")
    assert "top-3 of 10 classes, stored for epochs [0, 1]" in card.text
    assert "`digits-logistic`" in card.text and "`digits-top3`" in card.text  # the store by name, not its path
    assert str(store_path) not in card.content and str(tmp_path) not in card.content
    # The custom-code note is there exactly when the modeling code travels with the weights.
    assert ("trust_remote_code=True" in card.text) == any(f.startswith("modeling_") for f in upload["files"])
    assert ModelCard.load(output_dir / "README.md").data.to_dict() == card.data.to_dict()

    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    image = load_image_dataset("digits")["test"][0]["image"].convert("RGB")
    predictions = classifier(image, top_k=3)
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= {str(d) for d in range(10)}


@pytest.mark.multiprocess
def test_two_gloo_processes_train_in_lock_step(store_path, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with socket.socket() as probe:  # other suites may start process groups at the same time: no fixed port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", str(port)]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, str(SCRIPT)]
    command += script_args(store_path, tmp_path / "out", "--log_level", "info", "--log_level_replica", "info")
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = re.findall(
        r"\[distill\] rank (\d) of (\d): (\d+) steps, train_loss ([\d.]+), parameter checksum (\d\.\d+e[+-]\d+)",
        run.stderr,  # hf_tinyvit's messages go where transformers' do
    )
    assert sorted(line[0] for line in lines) == ["0", "1"], run.stderr[-3000:]
    assert {line[1] for line in lines} == {"2"}
    # 64 samples / (8 per device x 2 processes) x 2 epochs; equal checksums: gradients were all-reduced.
    assert {line[2] for line in lines} == {"8"}
    assert len({line[4] for line in lines}) == 1
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "README.md").is_file()
    # The card the main process wrote parses, and its model-index reads back the run's final evaluation.
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    evaluated = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    name, results = model_index_to_eval_results(metadata_load(tmp_path / "out" / "README.md")["model-index"])
    (accuracy,) = [r for r in results if r.metric_type == "accuracy"]
    assert name == "out" and accuracy.task_type == "image-classification" and accuracy.dataset_split == "test"
    assert accuracy.metric_value == pytest.approx(evaluated["eval_accuracy"])
    assert ModelCard.load(tmp_path / "out" / "README.md").data.eval_results[0].metric_value == accuracy.metric_value
