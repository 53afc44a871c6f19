"""benchmarks/gpu_distillation.py runs (in its tiny CPU `--smoke` setting), so the GPU figures can be taken
as soon as a GPU is lent: every mode trains a step, every model infers, the ratios are finite."""

import math
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_script_smoke_runs_every_row_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_distillation

    results = gpu_distillation.main(["--smoke", "--output", str(tmp_path / "smoke.md")])
    training = results["training"]
    assert set(training["step_s"]) == {"labels", "stored", "online"}
    assert all(value > 0 for value in training["step_s"].values())
    assert math.isfinite(training["online_over_stored"]) and training["online_over_stored"] > 0
    assert {row["model"] for row in results["inference"]} == {"timm", "ours eager", "ours fused"}
    assert all(row["parity"] < 1e-3 for row in results["inference"])  # our TinyViT matches timm's logits
    text = (tmp_path / "smoke.md").read_text()
    assert "online / stored step" in text and "vs timm" in text
    assert "gpu_distillation" in sys.modules
