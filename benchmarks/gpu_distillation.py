"""On a GPU, in bf16: the stored-logit against the online-teacher training step for a TinyViT-21M teacher and
a TinyViT-5M student at 224 (through DistillationTrainer, as benchmarks/training_step.py measures it), and
TinyViT-5M/11M/21M inference against timm's (benchmarks/inference.py), printing the ratios.

    python benchmarks/gpu_distillation.py                 # cuda, bf16; writes benchmarks/results/gpu-<device>.md
    python benchmarks/gpu_distillation.py --smoke         # tiny pair and batches on CPU: checks the script runs

Nothing else in the project needs a GPU; `--smoke` is run by the test suite so the script is known to work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inference  # noqa: E402
import training_step  # noqa: E402
from _common import machine_info, machine_slug  # noqa: E402


def settings(smoke: bool, device: str) -> dict:
    if smoke:
        return {"pair": "tiny-32", "train_batch": 4, "repeats": 1, "cases": ["tinyvit-5m-224"], "infer_batch": 2,
                "dtype": "float32", "iterations": 1, "warmup": 1, "infer_repeats": 1}  # fmt: skip
    return {"pair": "tinyvit-21m-to-5m-224", "train_batch": 128, "repeats": 7,
            "cases": ["tinyvit-5m-224", "tinyvit-11m-224", "tinyvit-21m-224"], "infer_batch": 256,
            "dtype": "bfloat16", "iterations": 20, "warmup": 5, "infer_repeats": 3}  # fmt: skip


def run(smoke: bool, device: str) -> dict:
    config = settings(smoke, device)
    start = time.perf_counter()
    training = training_step.benchmark_pair(
        training_step.PAIRS[config["pair"]], repeats=config["repeats"], warmup=1, device=device,
        batch_size=config["train_batch"], num_batches=1 if smoke else 2, loader_steps=1 if smoke else 4,
        memory_steps=1 if smoke else 2, memory_probes=not smoke,
    )  # fmt: skip
    args = SimpleNamespace(
        device=device, dtype=config["dtype"], batch_size=config["infer_batch"], warmup=config["warmup"],
        iterations=config["iterations"], repeats=config["infer_repeats"], seed=0,
    )  # fmt: skip
    cases = {case.name: case for case in inference.CASES}
    rows = [row for name in config["cases"] for row in inference.run_case(cases[name], args)]
    return {
        "command": "python benchmarks/gpu_distillation.py" + (" --smoke" if smoke else f" --device {device}"),
        "machine": machine_info(device),
        "settings": config,
        "seconds": time.perf_counter() - start,
        "training": {k: v for k, v in training.items() if k != "step_samples_s"},
        "inference": rows,
    }


def markdown(results: dict) -> str:
    info, t = results["machine"], results["training"]
    device = info.get("gpu") or info["cpu"]
    lines = [
        f"# Distillation step and inference on {device}",
        "",
        f"`{results['command']}`, torch {info['torch']}, transformers {info['transformers']}, timm {info['timm']}; "
        f"{results['seconds']:.0f} s.",
        "",
        f"Training step ({t['pair']}, batch {t['batch_size']} at {t['image_size']} px, top-{t['topk']}, "
        f"{'bf16 autocast' if t['device'].startswith('cuda') else 'fp32'}):",
        "",
        "| mode | step s | images/s | peak memory MiB |",
        "|---|---|---|---|",
    ]
    key = t["peak_memory_key"]
    for mode in training_step.MODES:
        lines.append(f"| {mode} | {t['step_s'][mode]:.4f} | {t['images_per_s'][mode]:.0f} | {t['memory'][mode][key]:.0f} |")
    lines += [
        "",
        f"online / stored step: **{t['online_over_stored']:.2f}x**; stored / labels only: {t['stored_over_labels']:.3f}x; "
        f"peak memory stored / labels {t['stored_memory_over_labels']:.3f}x, online / stored "
        f"{t['online_memory_over_stored']:.3f}x.",
        "",
        f"Inference ({results['settings']['dtype']}, batch {results['settings']['infer_batch']}):",
        "",
        "| model | ours | images/s | vs timm |",
        "|---|---|---|---|",
    ]
    for row in results["inference"]:
        lines.append(f"| {row['case']} | {row['model']} | {row['images_per_s']:.0f} | {row['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny pair and batches on CPU (what the tests run)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on a GPU machine, or pass --smoke for the CPU check")
    results = run(args.smoke, device)
    text = markdown(results)
    print(text)
    if not args.smoke or args.output:
        output = args.output or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", f"{machine_slug(results['machine'])}-distillation.md"
        )
        with open(output, "w") as handle:
            handle.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as handle:
            json.dump(results, handle, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
