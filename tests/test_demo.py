"""A shortened run of `make demo`'s exact path: teacher, stored logits, every student mode, results,
plot, the audit and similarity outputs and the Hub-ready folder classified through `pipeline`."""

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
    expected |= {f"hard samples/{label}" for _, _, label in demo.RELABEL_MODES}
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
    for name in ("accuracy.png", "audit_suspects.png", "audit_precision_recall.png", "similarity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    audit = summary["audit"]
    assert audit["wrong"] == summary["flipped_labels"] and 0.0 <= audit["precision"] <= 1.0
    assert 0 <= audit["relabelled_to_truth"] <= audit["relabelled"] <= audit["suspects"]
    # a relabel to the true class fixes a wrong label; any other relabel leaves or makes one wrong
    assert audit["wrong_after_relabel"] >= audit["wrong_before"] - audit["relabelled_to_truth"]
    assert audit["wrong_before"] == summary["flipped_labels"]
    assert len(audit["nearest"]) == 10 and "## Hard-sample audit" in (out / "results.md").read_text()
    assert (out / "audit_suspects.csv").read_text().startswith("rank,sample_id,label")
    assert (out / "teacher-logits" / "metadata.json").is_file()  # kept for the hf-tinyvit tools

    folder = out / "tinyvit-digits-distilled"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (folder / name).is_file(), name
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results[0].metric_value == pytest.approx(summary["runs"]["clean/TinyViT, stored logits (no teacher)"]["accuracy_mean"])
    assert not (out / "work").exists()  # scratch space is cleaned up
