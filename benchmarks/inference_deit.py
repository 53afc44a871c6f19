"""Inference throughput of distilled DeiT-Ti/S: hf_tinyvit vs timm vs transformers'
DeiTForImageClassificationWithTeacher on the same (random) weights, medians of interleaved calls.

    python benchmarks/inference_deit.py [--variants tiny small] [--batch-size 16] [--iterations 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_tinyvit.models.deit_distilled import DeiTDistilledForImageClassification

VARIANTS = {
    "tiny": "deit_tiny_distilled_patch16_224",
    "small": "deit_small_distilled_patch16_224",
    "base": "deit_base_distilled_patch16_224",
}


def images_per_second(forwards: dict, pixel_values: torch.Tensor, warmup: int, iterations: int) -> dict[str, float]:
    """Images per second of each `forward(pixel_values)` from the median of interleaved calls, so that
    load from other processes on the machine falls on every implementation alike."""
    from _common import interleaved_medians

    sync = torch.cuda.synchronize if pixel_values.is_cuda else None
    with torch.inference_mode():
        timings = interleaved_medians(
            {name: (lambda f=forward: f(pixel_values)) for name, forward in forwards.items()},
            repeats=iterations, warmup=warmup, sync=sync,
        )  # fmt: skip
    return {name: pixel_values.shape[0] / timing["median_s"] for name, timing in timings.items()}


def benchmark_deit(
    variants=("tiny", "small"),
    batch_size: int = 16,
    warmup: int = 2,
    iterations: int = 10,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """One row per variant and implementation: images/s at 224 (CPU fp32 by default), with the largest
    logit difference to timm (in fp32, before the cast) so that the three are known to compute the same
    function."""
    import timm

    from hf_tinyvit.models.deit_distilled import convert_deit_distilled as convert

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants {unknown} are not among {sorted(VARIANTS)}")
    rows = []
    for variant in variants:
        name = VARIANTS[variant]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            reference = timm.create_model(name, pretrained=False).eval()
        ours = DeiTDistilledForImageClassification(convert.variant_config(name, num_labels=1000))
        ours.load_state_dict(convert.convert_timm_state_dict(reference.state_dict()), strict=True)
        ours.eval()
        stock = ours.to_transformers_deit()
        pixel_values = torch.randn(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
        implementations = {
            "timm": reference,
            "hf_tinyvit": lambda x: ours(x).logits,
            "transformers": lambda x: stock(x).logits,
        }
        with torch.inference_mode():
            expected = reference(pixel_values)
            differences = {
                impl: float((forward(pixel_values) - expected).abs().max()) for impl, forward in implementations.items()
            }
        for module in (reference, ours, stock):
            module.to(device, dtype)
        throughput = images_per_second(implementations, pixel_values.to(device, dtype), warmup, iterations)
        for implementation in implementations:
            rows.append(
                dict(
                    model=name,
                    implementation=implementation,
                    batch_size=batch_size,
                    images_per_second=round(throughput[implementation], 1),
                    max_abs_logit_difference_to_timm=differences[implementation],
                    threads=torch.get_num_threads(),
                    device=device,
                    dtype=str(dtype).removeprefix("torch."),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "small"], choices=sorted(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = benchmark_deit(args.variants, args.batch_size, args.warmup, args.iterations, device=args.device, dtype=dtype)
    print(f"{'model':<36}{'implementation':<16}{'images/s':>10}{'max |dlogit|':>14}")
    for row in rows:
        print(
            f"{row['model']:<36}{row['implementation']:<16}{row['images_per_second']:>10.1f}"
            f"{row['max_abs_logit_difference_to_timm']:>14.1e}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
