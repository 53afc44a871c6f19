"""A shortened run of `make demo`'s exact path: teacher, stored logits, every student mode, results,
plot and the Hub-ready folder classified through `pipeline`."""

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import demo  # noqa: E402


@pytest.mark.slow
def test_demo_short_run_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    summary = demo.main([
        "--output_dir", str(out), "--epochs", "1", "--deit_epochs", "1", "--teacher_epochs", "1", "--stored_epochs", "2",
        "--max_train_samples", "96", "--max_eval_samples", "48", "--batch_size", "32",
    ])
    expected = {f"{setting}/{label}" for setting in demo.SETTINGS for _, _, label in demo.MODES}
    assert set(summary["runs"]) == expected
    for row in summary["runs"].values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and len(row["history_mean"]) == 1
    # the label-free modes really are one run shared by both settings
    assert summary["runs"]["hard samples/TinyViT, stored logits (no teacher)"] == summary["runs"]["clean/TinyViT, stored logits (no teacher)"]
    assert summary["store_records"] == 96 * 2 and summary["flipped_labels"] == round(0.2 * 96)
    assert summary["store_bytes"] > 0

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["runs"].keys() == summary["runs"].keys()
    assert "| clean | TinyViT, stored logits (no teacher) |" in (out / "results.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    folder = out / "tinyvit-digits-distilled"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (folder / name).is_file(), name
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results[0].metric_value == pytest.approx(summary["runs"]["clean/TinyViT, stored logits (no teacher)"]["accuracy_mean"])
    assert not (out / "work").exists()  # scratch space is cleaned up
