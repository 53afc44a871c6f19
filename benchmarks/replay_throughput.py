"""Replay throughput per CPU core at 224 px: TinyViT's recipe (random resized crop, flip, RandAugment m9-mstd0.5,
random erasing 0.25) rendered by our replay against timm's training transform of the same recipe, in one
run on real photos (scikit-image's, shorter side 336 px, PNG-decoded per image in every pipeline), and the
cores it takes to feed a TinyViT-5M training step at the paper's V100 rate.

Pipelines (one thread, images/s, interleaved passes, medians): `AugmentedDataset` (decode + augment),
`StoredLogitsDataset` (+ stored top-10 targets, map-style), `IterableStoredLogitsDataset` (the streamed
path: Parquet-free in-memory stream, sample ids, shuffle window, targets), and timm's `create_transform`.

    python benchmarks/replay_throughput.py [--quick] [--output benchmarks/results/replay-<machine>.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians, machine_info, machine_slug  # noqa: E402
from teacher_logits import photo_dataset  # noqa: E402

# BRIEF.md: TinyViT-5M infers 3,060 img/s on one V100. A training step (forward + backward, the backward
# about twice the forward's FLOPs) runs at about a third of that: ~1,020 img/s is the rate to feed.
V100_INFERENCE = 3060
V100_TRAINING = V100_INFERENCE / 3


class RandomTeacher(torch.nn.Module):
    """Stands in for a 1000-class teacher: the store's content does not change replay speed."""

    num_labels = 1000

    def forward(self, pixel_values):
        generator = torch.Generator().manual_seed(int(pixel_values.flatten()[0].abs().mul(1e4)))
        return torch.randn(pixel_values.shape[0], 1000, generator=generator) * 3


def measure(images: int, repeats: int) -> dict:
    import timm.data

    from hf_tinyvit import (
        AugmentationRecipe,
        AugmentedDataset,
        StoredLogitsDataset,
        TeacherLogitStore,
        save_teacher_logits,
    )
    from hf_tinyvit.replay import IterableStoredLogitsDataset

    recipe = AugmentationRecipe.tinyvit_pretrain(224)
    dataset = photo_dataset(images, short_side=336)
    folder = tempfile.mkdtemp()
    save_teacher_logits(
        RandomTeacher(), dataset, folder, recipe=recipe, topk=10, teacher_name="random", teacher_hash="0",
        progress=False, batch_size=16,
    )  # fmt: skip
    store = TeacherLogitStore.open(folder)
    augmented = AugmentedDataset(dataset, recipe, seed=0, label_column=None)
    stored = StoredLogitsDataset(dataset, store, label_column=None)
    streamed = IterableStoredLogitsDataset(
        dataset.to_iterable_dataset(num_shards=4), store, label_column=None, shuffle_buffer=64
    )
    timm_transform = timm.data.create_transform(
        recipe.image_size, is_training=True, auto_augment=recipe.auto_augment, re_prob=recipe.reprob,
        re_mode=recipe.remode, interpolation=recipe.interpolation, mean=recipe.mean, std=recipe.std,
        scale=recipe.scale, ratio=recipe.ratio, hflip=recipe.hflip, color_jitter=None,
    )  # fmt: skip
    n = len(dataset)

    def timm_view(image):
        # timm's PosterizeIncreasing reaches 0 bits at magnitude 10, which today's Pillow refuses: redraw
        try:
            return timm_transform(image)
        except ValueError:
            return timm_transform(image)

    passes = {
        "timm create_transform": lambda: [timm_view(dataset[i]["image"]) for i in range(n)],
        "AugmentedDataset": lambda: [augmented.items([i], 0) for i in range(n)],
        "StoredLogitsDataset": lambda: [stored.items([i]) for i in range(n)],
        "IterableStoredLogitsDataset (streamed)": lambda: list(streamed),
    }
    timings = interleaved_medians(passes, repeats=repeats, warmup=1)
    rates = {name: n / t["median_s"] for name, t in timings.items()}
    timm_rate = rates["timm create_transform"]
    return {
        "images": n,
        "repeats": repeats,
        "rates": rates,
        "ratios_to_timm": {name: rate / timm_rate for name, rate in rates.items()},
        "cores_for_v100_training": {name: V100_TRAINING / rate for name, rate in rates.items()},
        "cores_for_v100_inference_rate": {name: V100_INFERENCE / rate for name, rate in rates.items()},
    }


def markdown(results: dict) -> str:
    info, figures = results["machine"], results["figures"]
    lines = [
        "# Replay throughput per CPU core (TinyViT recipe at 224 px, real photos)",
        "",
        f"`{results['command']}` on {info['cpu']} ({info['cpu_count']} cores, shared; load average at start "
        f"{info['load_average']}), torch {info['torch']}, timm {info['timm']}, one thread; {figures['images']} "
        f"photos x {figures['repeats']} interleaved passes (medians), {results['seconds']:.0f} s.",
        "",
        f"Cores to feed TinyViT-5M: its V100 inference rate is {V100_INFERENCE:,} img/s (BRIEF.md); a training step "
        f"(forward + backward, the backward about twice the forward) runs near a third of it, "
        f"{V100_TRAINING:,.0f} img/s, the rate assumed here. The inference rate is the upper bound.",
        "",
        "| pipeline | images/s per core | vs timm | cores for 5M training at the V100 rate | cores at 3,060 img/s |",
        "|---|---|---|---|---|",
    ]
    for name, rate in figures["rates"].items():
        lines.append(
            f"| {name} | {rate:.1f} | {figures['ratios_to_timm'][name]:.2f}x | "
            f"{figures['cores_for_v100_training'][name]:.1f} | {figures['cores_for_v100_inference_rate'][name]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer photos and passes")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # figures are per core
    start = time.perf_counter()
    figures = measure(images=16 if args.quick else 64, repeats=2 if args.quick else 9)
    results = {
        "command": "python benchmarks/replay_throughput.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "figures": figures,
    }
    text = markdown(results)
    print(text)
    if args.output or not args.quick:
        output = args.output or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", f"replay-{machine_slug(results['machine'])}.md"
        )
        with open(output, "w") as handle:
            handle.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
