"""Inference throughput (images/s) of our models against timm's on the same weights, in one run.

Each case builds a timm model with random weights and our model from the converted state dict, checks
that the logits agree, then times timm, ours unfused ("eager") and ours fused. Prints a table with the
ratios to timm. CPU fp32 batch 16 by default; e.g. `--device cuda --dtype bfloat16 --batch-size 256`.
"""

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    """One row group: a timm model and a function that returns ours loaded with the same weights."""

    name: str
    timm_name: str
    image_size: int
    build_ours: Callable[[torch.nn.Module], torch.nn.Module]


def _tinyvit_from_timm(preset: str) -> Callable[[torch.nn.Module], torch.nn.Module]:
    def build(timm_model: torch.nn.Module) -> torch.nn.Module:
        from hf_tinyvit.models.tinyvit import (
            TinyViTConfig,
            TinyViTForImageClassification,
        )
        from hf_tinyvit.models.tinyvit.convert_tinyvit import timm_to_hf_state_dict

        config = TinyViTConfig.from_preset(preset, num_labels=timm_model.num_classes)
        model = TinyViTForImageClassification(config)
        model.load_state_dict(timm_to_hf_state_dict(timm_model.state_dict(), config), strict=True)
        return model

    return build


# DeiT rows are appended here by the DeiT family (same Case structure).
CASES = [
    Case("tinyvit-5m-224", "tiny_vit_5m_224", 224, _tinyvit_from_timm("tinyvit-5m-224")),
    Case("tinyvit-11m-224", "tiny_vit_11m_224", 224, _tinyvit_from_timm("tinyvit-11m-224")),
    Case("tinyvit-21m-224", "tiny_vit_21m_224", 224, _tinyvit_from_timm("tinyvit-21m-224")),
]


def _randomise_statistics(model: torch.nn.Module, seed: int) -> None:
    """BatchNorm statistics and bias tables start at constants; give them values so parity means something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.1
            if name.endswith("running_var"):
                tensor.copy_(1.0 + noise.abs())
            elif name.endswith(("running_mean", "attention_biases")) or ".bn." in name:
                tensor.add_(noise)


def _images_per_second(model, inputs, warmup: int, iterations: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(iterations):
            model(inputs)
        sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    images = inputs.shape[0] * iterations
    # CPU seconds of this process: on a machine shared with other jobs, less sensitive to their load.
    return images / elapsed, images / cpu


class _Logits(torch.nn.Module):
    """Our models return a ModelOutput; time them through the same call shape as timm's."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values).logits


def run_case(case: Case, args) -> list[dict]:
    import timm

    dtype = getattr(torch, args.dtype)
    timm_model = timm.create_model(case.timm_name, pretrained=False, num_classes=1000).eval()
    _randomise_statistics(timm_model, args.seed)
    ours = case.build_ours(timm_model).eval()
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.batch_size, 3, case.image_size, case.image_size, generator=generator)
    with torch.inference_mode():
        check = inputs[:2]
        parity = (timm_model(check) - ours(check).logits).abs().max().item()
    eager = _Logits(ours).to(args.device, dtype)
    fused = _Logits(case.build_ours(timm_model).eval().fuse()).to(args.device, dtype)
    timm_model = timm_model.to(args.device, dtype)
    inputs = inputs.to(args.device, dtype)
    rows = []
    for label, model in (("timm", timm_model), ("ours eager", eager), ("ours fused", fused)):
        # Alternate repeats so slow drifts of the machine's load hit every model alike; keep the best.
        rows.append({"case": case.name, "model": label, "model_obj": model, "best": 0.0, "best_cpu": 0.0})
    for _ in range(args.repeats):
        for row in rows:
            speed, cpu_speed = _images_per_second(row["model_obj"], inputs, args.warmup, args.iterations, args.device)
            row["best"], row["best_cpu"] = max(row["best"], speed), max(row["best_cpu"], cpu_speed)
    baseline, baseline_cpu = rows[0]["best"], rows[0]["best_cpu"]
    return [
        {"case": r["case"], "model": r["model"], "images_per_s": r["best"], "ratio": r["best"] / baseline,
         "images_per_cpu_s": r["best_cpu"], "cpu_ratio": r["best_cpu"] / baseline_cpu, "parity": parity}
        for r in rows
    ]  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cases", nargs="*", default=None, help=f"subset of {[c.name for c in CASES]}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    known = {case.name: case for case in CASES}
    unknown = sorted(set(args.cases or ()) - set(known))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(known)}")
    selected = [known[name] for name in args.cases] if args.cases else CASES

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# device={args.device} dtype={args.dtype} batch={args.batch_size} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} cpu={platform.processor() or platform.machine()} load1={load:.2f}"
    )
    print(f"{'case':<18} {'model':<12} {'images/s':>10} {'vs timm':>8} {'img/cpu-s':>10} {'vs timm':>8} {'max|dlogit|':>12}")
    for case in selected:
        for row in run_case(case, args):
            print(
                f"{row['case']:<18} {row['model']:<12} {row['images_per_s']:>10.1f} {row['ratio']:>7.2f}x "
                f"{row['images_per_cpu_s']:>10.1f} {row['cpu_ratio']:>7.2f}x {row['parity']:>12.2e}"
            )


if __name__ == "__main__":
    main()
