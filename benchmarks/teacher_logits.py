"""Teacher-logit store figures: bytes per record on disk against the official `4 + 4k`, the cost of
saving over a bare teacher forward, and replay throughput against timm's augmentation, per core.

    python benchmarks/teacher_logits.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import datasets
import numpy as np
import torch

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    augmentation_seed,
    collate_views,
    save_teacher_logits,
)
from hf_tinyvit.store.codec import encode_topk
from hf_tinyvit.store.format import (
    row_group_rows,
    seeds_checksum,
    shard_relpath,
    shard_table,
    store_features,
    teacher_topk,
)
from hf_tinyvit.store.writer import write_shard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians  # noqa: E402


def teacher_like_logits(generator: torch.Generator, batch: int, num_labels: int) -> torch.Tensor:
    """Synthetic logits shaped like a trained teacher's: one confident class over a Gaussian floor.

    Real teacher outputs would be better; none can be downloaded here. Peaked distributions are
    what makes top-k storage meaningful, and what the float16 values compress like.
    """
    logits = torch.randn(batch, num_labels, generator=generator) * 2.0
    winners = torch.randint(0, num_labels, (batch,), generator=generator)
    logits[torch.arange(batch), winners] += 8.0 + 4.0 * torch.rand(batch, generator=generator)
    return logits


def bytes_per_record(
    k: int, num_labels: int, num_records: int, chunk_size: int, with_digest: bool = True, *, with_seed: bool = False,
    encoding: str = "float16",
) -> float:
    """Shard bytes per record as the writer lays them out: `with_digest`, the per-record image digest column
    (formats 2 and 3); `with_seed`, the per-record augmentation seed (formats 1 and 2); `encoding` of the top-k
    (format 3: float16 or sqrt8, with its row groups; row groups of whole shards when `with_seed`)."""
    generator = torch.Generator().manual_seed(k)
    features = store_features(k, num_labels, with_partner=False, with_digest=with_digest, topk_encoding=encoding,
                              with_seed=with_seed)  # fmt: skip
    group_rows = None if with_seed else row_group_rows(k, num_labels, encoding, chunk_size)
    folder = tempfile.mkdtemp()
    try:
        for chunk in range(0, num_records, chunk_size):
            ids = np.arange(chunk, min(chunk + chunk_size, num_records))
            # Slices keep a 16384 x 21841 float32 logit matrix (1.4 GB) from ever existing at once.
            slices = np.array_split(ids, -(-len(ids) // 2048))
            parts = [teacher_topk(teacher_like_logits(generator, len(s), num_labels), k) for s in slices]
            values, indices = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
            seeds = np.array([augmentation_seed(0, 3, i) for i in ids], dtype=np.uint32) if with_seed else None
            # image digests are CRC-32s of distinct images: random 32-bit words, incompressible
            digests = torch.randint(0, 2**32, (len(ids),), generator=generator, dtype=torch.int64).numpy()
            digests = digests if with_digest else None
            columns = encode_topk(values.numpy(), indices.numpy(), num_labels, encoding)
            table = shard_table(features, ids, 3, columns, aug_seeds=seeds, digests=digests)
            write_shard(os.path.join(folder, shard_relpath(3, chunk // chunk_size)), table, row_group_size=group_rows)
        total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    finally:
        shutil.rmtree(folder)
    return total / num_records


def photo_dataset(count: int, short_side: int | None = None) -> datasets.Dataset:
    """`count` real photos (scikit-image's four), optionally resized so their shorter side is `short_side`."""
    from PIL import Image
    from skimage import data as skimage_data

    arrays = (skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket())
    photos = [Image.fromarray(array) for array in arrays]
    if short_side is not None:
        scales = [short_side / min(p.size) for p in photos]
        photos = [p.resize((round(p.width * f), round(p.height * f)), Image.BICUBIC) for p, f in zip(photos, scales)]
    images = [photos[i % len(photos)] for i in range(count)]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def replay_throughput(dataset, recipe: AugmentationRecipe, repeats: int, stored=None) -> dict[str, float]:
    """Images/s of our augmentation (AugmentedDataset), timm's PIL pipeline of the same recipe and, when
    given, a StoredLogitsDataset (augmentation replay + store lookup), in interleaved passes over `dataset`."""
    import timm.data

    ours = AugmentedDataset(dataset, recipe, seed=0, label_column=None)
    timm_transform = timm.data.create_transform(
        recipe.image_size, is_training=True, auto_augment=recipe.auto_augment, re_prob=recipe.reprob,
        re_mode=recipe.remode, interpolation=recipe.interpolation, mean=recipe.mean, std=recipe.std,
        scale=recipe.scale, ratio=recipe.ratio, hflip=recipe.hflip, color_jitter=None,
    )  # fmt: skip
    n = len(dataset)
    passes = {
        "ours": lambda: [ours.items([i], 0) for i in range(n)],
        "timm": lambda: [timm_transform(dataset[i]["image"]) for i in range(n)],
    }
    if stored is not None:
        passes["stored"] = lambda: [stored.items([i]) for i in range(n)]
    timings = interleaved_medians(passes, repeats=repeats, warmup=1)
    return {name: n / timing["median_s"] for name, timing in timings.items()}


def saving_overhead(dataset, recipe: AugmentationRecipe, batches: int, batch_size: int) -> dict[str, float]:
    import timm

    teacher = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    views = AugmentedDataset(dataset, recipe, seed=0, label_column=None)
    order = [list(range(b * batch_size, (b + 1) * batch_size)) for b in range(batches)]
    pixel_batches = [collate_views(views.items([i % len(views) for i in ids]))["pixel_values"] for ids in order]
    with torch.inference_mode():
        teacher(pixel_batches[0])
        start = time.perf_counter()
        outputs = [teacher(x) for x in pixel_batches]
        forward = time.perf_counter() - start
    features = store_features(10, 1000, with_partner=False, with_digest=True, with_seed=False)
    folder = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        values, indices = zip(*(teacher_topk(logits, 10) for logits in outputs))
        ids = np.arange(batches * batch_size)
        digests = np.arange(len(ids), dtype=np.uint32)  # computed per image while rendering, not here
        columns = encode_topk(torch.cat(values).numpy(), torch.cat(indices).numpy(), 1000, "float16")
        table = shard_table(features, ids, 0, columns, digests=digests)
        write_shard(os.path.join(folder, shard_relpath(0, 0)), table, row_group_size=row_group_rows(10, 1000, "float16", len(ids)))
        seeds_checksum(0, 0, ids)
        storing = time.perf_counter() - start
    finally:
        shutil.rmtree(folder)
    return {"forward_s": forward, "storing_s": storing, "records": batches * batch_size}


def end_to_end(dataset, recipe: AugmentationRecipe, batch_size: int, repeats: int = 2) -> dict:
    """save_teacher_logits (augment + forward + store) against augment + forward alone, same teacher;
    then replay throughput of the store just written against the plain pipelines."""
    import timm

    teacher = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    views = AugmentedDataset(dataset, recipe, seed=0, label_column=None)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(views), batch_size):
            teacher(collate_views(views.items(range(b, min(b + batch_size, len(views)))))["pixel_values"])
    bare = time.perf_counter() - start
    folder = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        save_teacher_logits(
            teacher, dataset, folder, recipe=recipe, topk=10, batch_size=batch_size, teacher_name="resnet18",
            progress=False, cache_dir=os.path.join(folder, "cache"),
        )  # fmt: skip
        saved = time.perf_counter() - start
        store = TeacherLogitStore.open(folder, cache_dir=os.path.join(folder, "cache"))
        replay = StoredLogitsDataset(dataset, store, label_column=None)
        rates = replay_throughput(dataset, recipe, repeats, stored=replay)
    finally:
        shutil.rmtree(folder)
    return {"bare_s": bare, "save_s": saved, "replay_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records and images")
    args = parser.parse_args()
    torch.set_num_threads(1)  # figures are per core
    records = 16384 if args.quick else 65536

    print("== bytes per record on disk (Parquet, zstd; synthetic peaked teacher outputs) ==")
    for k, num_labels in ((10, 1000), (100, 21841)):
        measured = bytes_per_record(k, num_labels, records, chunk_size=16384)
        official = 4 + 4 * k
        print(
            f"k={k:3d} C={num_labels:5d}: {measured:7.2f} B/record vs official 4+4k = {official} B  (ratio {measured / official:.3f})"
        )

    recipe = AugmentationRecipe.tinyvit_pretrain(224)
    dataset = photo_dataset(16 if args.quick else 32)

    print("== saving overhead over a bare teacher forward (resnet18, 224 px, batch 32, 1 core) ==")
    figures = saving_overhead(dataset, recipe, batches=2 if args.quick else 4, batch_size=32)
    print(
        f"forward {figures['forward_s']:.3f} s, top-k + encoding + Parquet write {figures['storing_s']:.4f} s "
        f"for {figures['records']} records: overhead {100 * figures['storing_s'] / figures['forward_s']:.2f}%"
    )
    e2e = end_to_end(dataset, recipe, batch_size=16, repeats=2 if args.quick else 4)
    print(
        f"end to end on {len(dataset)} images: augment+forward {e2e['bare_s']:.2f} s, save_teacher_logits {e2e['save_s']:.2f} s "
        f"(+{100 * (e2e['save_s'] / e2e['bare_s'] - 1):.1f}%, includes the probe forward and metadata)"
    )

    print("== replay throughput per core, tinyvit_pretrain recipe at 224 px, real photos ==")
    rates = e2e["replay_per_s"]
    print(
        f"ours (torchvision v2 on uint8 tensors) {rates['ours']:.1f} img/s, "
        f"timm PIL pipeline {rates['timm']:.1f} img/s: ratio {rates['ours'] / rates['timm']:.2f}x; "
        f"StoredLogitsDataset (replay + store lookup) {rates['stored']:.1f} img/s "
        f"({rates['stored'] / rates['timm']:.2f}x timm)"
    )


if __name__ == "__main__":
    main()
