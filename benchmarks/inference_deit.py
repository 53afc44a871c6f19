"""Inference throughput of distilled DeiT-Ti/S: hf_tinyvit vs timm vs transformers'
DeiTForImageClassificationWithTeacher on the same (random) weights, one timed run each.

    python benchmarks/inference_deit.py [--variants tiny small] [--batch-size 16] [--iterations 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from hf_tinyvit.models.deit_distilled import DeiTDistilledForImageClassification

_CONVERTER = Path(__file__).resolve().parents[1] / "conversion" / "convert_deit_checkpoint.py"
VARIANTS = {
    "tiny": "deit_tiny_distilled_patch16_224",
    "small": "deit_small_distilled_patch16_224",
    "base": "deit_base_distilled_patch16_224",
}


def _converter():
    # The key map lives with the conversion script, outside the package.
    spec = importlib.util.spec_from_file_location("convert_deit_checkpoint", _CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images_per_second(forwards: dict, pixel_values: torch.Tensor, warmup: int, iterations: int) -> dict[str, float]:
    """Images per second of each `forward(pixel_values)`, timed in interleaved rounds so that load from
    other processes on the machine falls on every implementation alike."""
    elapsed = dict.fromkeys(forwards, 0.0)
    with torch.inference_mode():
        for _ in range(warmup):
            for forward in forwards.values():
                forward(pixel_values)
        for _ in range(iterations):
            for name, forward in forwards.items():
                start = time.perf_counter()
                forward(pixel_values)
                elapsed[name] += time.perf_counter() - start
    return {name: pixel_values.shape[0] * iterations / seconds for name, seconds in elapsed.items()}


def benchmark_deit(
    variants=("tiny", "small"), batch_size: int = 16, warmup: int = 2, iterations: int = 10, seed: int = 0
) -> list[dict]:
    """One row per variant and implementation: images/s on CPU in fp32 at 224, with the largest logit
    difference to timm so that the three are known to compute the same function."""
    import timm

    convert = _converter()
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
        throughput = images_per_second(implementations, pixel_values, warmup, iterations)
        for implementation in implementations:
            rows.append(
                dict(
                    model=name,
                    implementation=implementation,
                    batch_size=batch_size,
                    images_per_second=round(throughput[implementation], 1),
                    max_abs_logit_difference_to_timm=differences[implementation],
                    threads=torch.get_num_threads(),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny", "small"], choices=sorted(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = benchmark_deit(args.variants, args.batch_size, args.warmup, args.iterations)
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
