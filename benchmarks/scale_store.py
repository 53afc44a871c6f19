"""Teacher-logit stores at ImageNet scale: one ImageNet-1k-size epoch (1,281,167 records, k = 10 of 1,000
classes) and one ImageNet-21k-shaped epoch slice (1,048,576 records, k = 100 of 21,841 classes), written
with the store's own helpers (`shard_table`, `write_shard`, the metadata fields `save_teacher_logits`
writes) from synthetic peaked teacher outputs, then read back in place in fresh processes.

Figures: write time, bytes per record, open time (metadata + the sample-id index), random lookups/s and
sequential records/s through `TeacherLogitStore.targets`, peak RSS of the reading process (at 1/8 of the
records and at all of them, to see how it grows), extra disk beyond the shards, and projected totals for
1k x 300 and 21k x 90 epochs beside the paper's 16 GB and 481 GB.

    python benchmarks/scale_store.py [--quick] [--output benchmarks/results/scale-store-<machine>.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import current_rss_mib, machine_info, machine_slug, peak_rss_mib, reset_peak_rss  # noqa: E402

IMAGENET_1K_IMAGES = 1_281_167
# The paper's 481 GB at 4 + 4k = 404 bytes per record over 90 epochs implies 13.2M images; the full fall 2011
# release has 14,197,122. Projections use the release.
IMAGENET_21K_IMAGES = 14_197_122
PAPER_GB = {"in1k": 16.0, "in21k": 481.0}
CONFIGS = {
    "in1k": {"records": IMAGENET_1K_IMAGES, "k": 10, "num_labels": 1000, "epochs": 300, "images": IMAGENET_1K_IMAGES},
    "in21k": {"records": 1 << 20, "k": 100, "num_labels": 21841, "epochs": 90, "images": IMAGENET_21K_IMAGES},
}
QUICK_RECORDS = {"in1k": 40_000, "in21k": 20_000}
CHUNK_SIZE = 16384
EPOCH, SEED = 0, 0


def store_metadata(records: int, k: int, num_labels: int, chunk_size: int) -> dict:
    """The metadata `save_teacher_logits` writes, for a synthetic teacher over `records` samples."""
    from hf_tinyvit import AugmentationRecipe
    from hf_tinyvit.store.format import FORMAT_VERSION

    recipe = AugmentationRecipe.tinyvit_pretrain(224)
    return {
        "format_version": FORMAT_VERSION,
        "teacher_name": f"synthetic-peaked-{num_labels}",
        "teacher_hash": "0" * 16,
        "num_labels": num_labels,
        "id2label": {str(i): str(i) for i in range(num_labels)},
        "topk": k,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": SEED,
        "dataset_fingerprint": "synthetic",
        "dataset_size": records,
        "chunk_size": chunk_size,
        "num_chunks": -(-records // chunk_size),
        "num_epochs": 1,
        "epochs": [EPOCH],
    }


def write_store(path: str, records: int, k: int, num_labels: int, chunk_size: int = CHUNK_SIZE) -> dict:
    """Write one epoch; returns seconds spent making teacher outputs and seconds spent storing them."""
    from hf_tinyvit import augmentation_seed, topk_probabilities
    from hf_tinyvit.store.format import shard_relpath, shard_table, store_features
    from hf_tinyvit.store.writer import write_json_atomic, write_shard
    from teacher_logits import teacher_like_logits

    generator = torch.Generator().manual_seed(k)
    features = store_features(k, num_labels, with_partner=False)
    synth = store = 0.0
    for chunk, start in enumerate(range(0, records, chunk_size)):
        ids = np.arange(start, min(start + chunk_size, records))
        begin = time.perf_counter()
        # slices keep a 16384 x 21841 float32 logit matrix (1.4 GB) from ever existing at once
        parts = [
            topk_probabilities(teacher_like_logits(generator, len(s), num_labels), k)
            for s in np.array_split(ids, -(-len(ids) // 2048))
        ]
        values, indices = torch.cat([v for v, _ in parts]).numpy(), torch.cat([i for _, i in parts]).numpy()
        synth += time.perf_counter() - begin
        begin = time.perf_counter()
        seeds = np.array([augmentation_seed(SEED, EPOCH, i) for i in ids], dtype=np.uint32)
        write_shard(os.path.join(path, shard_relpath(EPOCH, chunk)), shard_table(features, ids, EPOCH, seeds, values, indices))
        store += time.perf_counter() - begin
    write_json_atomic(os.path.join(path, "metadata.json"), store_metadata(records, k, num_labels, chunk_size))
    return {"synthesis_s": synth, "write_s": store}


def probe(path: str, random_records: int, batch: int) -> dict:
    """Read figures of one store, measured in this (fresh) process."""
    from hf_tinyvit import TeacherLogitStore

    rss_start = current_rss_mib()  # torch, pyarrow and datasets imported: what any reader process holds
    reset_peak_rss()
    begin = time.perf_counter()
    store = TeacherLogitStore.open(path)
    store.rows(EPOCH).missing()  # builds the sample-id -> (shard, row) index from every shard's id column
    open_s = time.perf_counter() - begin
    n = store.dataset_size
    generator = np.random.default_rng(0)
    random_ids = generator.integers(0, n, size=(max(1, random_records // batch), batch))
    begin = time.perf_counter()
    for ids in random_ids:
        store.targets(EPOCH, ids)
    random_s = time.perf_counter() - begin
    begin = time.perf_counter()
    for start in range(0, n, 1024):
        store.targets(EPOCH, range(start, min(start + 1024, n)))
    sequential_s = time.perf_counter() - begin
    return {
        "records": n,
        "open_s": open_s,
        "random_records_per_s": random_ids.size / random_s,
        "random_batch": batch,
        "sequential_records_per_s": n / sequential_s,
        "rss_start_mib": rss_start,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_probe(path: str, random_records: int, batch: int) -> dict:
    """`probe` in a fresh interpreter, one thread, so its peak memory is the reader's alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.abspath(__file__), "--probe", path, "--random-records", str(random_records),
               "--batch", str(batch)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"probe of {path} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def disk_figures(path: str) -> dict:
    shards = total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            size = os.path.getsize(os.path.join(folder, name))
            total += size
            shards += size if name.endswith(".parquet") else 0
    return {"shard_bytes": shards, "total_bytes": total, "extra_fraction": (total - shards) / shards}


def measure(name: str, records: int, scratch: str, random_records: int) -> dict:
    config = CONFIGS[name]
    row = {"name": name, "k": config["k"], "num_labels": config["num_labels"], "records": records}
    small = max(CHUNK_SIZE, records // 8)
    for label, count in (("small", small), ("full", records)):
        path = os.path.join(scratch, f"{name}-{count}")
        timings = write_store(path, count, config["k"], config["num_labels"])
        reads = run_probe(path, random_records, batch=256)
        disk = disk_figures(path)
        row[label] = {**timings, **reads, **disk, "bytes_per_record": disk["shard_bytes"] / count}
        print(f"  {name} {count:>9,d} records: {json.dumps(row[label])}", flush=True)
        shutil.rmtree(path)  # disk is limited: each store goes as soon as it is measured
    full = row["full"]
    official = 4 + 4 * config["k"]
    row["official_bytes"] = official
    row["ratio_to_official"] = full["bytes_per_record"] / official
    row["projected_gb"] = full["bytes_per_record"] * config["images"] * config["epochs"] / 1e9
    row["official_projected_gb"] = official * config["images"] * config["epochs"] / 1e9
    row["paper_gb"] = PAPER_GB[name]
    row["images"], row["epochs"] = config["images"], config["epochs"]
    return row


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        "# Teacher-logit stores at ImageNet scale",
        "",
        f"`{results['command']}` on {info['cpu']} ({info['cpu_count']} cores, shared), torch {info['torch']}, "
        f"load average at start {info['load_average']}; {results['seconds']:.0f} s in all. Synthetic peaked teacher "
        "outputs (benchmarks/teacher_logits.py `teacher_like_logits`), written with `shard_table` + `write_shard` "
        f"in chunks of {CHUNK_SIZE:,} records (zstd 9); reads through `TeacherLogitStore` (in place, no Arrow cache) "
        "in a fresh one-thread process per store; its RSS growth is the peak over the reads minus its RSS after "
        "imports. Extra disk is metadata.json (it carries id2label for every class). Random lookups: batches of 256 uniformly random sample ids; "
        "sequential: batches of 1,024 ids in order.",
        "",
        "| store | records | write s (storing only) | bytes/record | official 4 + 4k | open s | random lookups/s | "
        "sequential records/s | reader RSS growth MiB, 1/8 of the records -> all (peak) | extra disk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        full, small = row["full"], row["small"]
        lines.append(
            f"| {row['name']} (k = {row['k']}, {row['num_labels']:,} classes) | {row['records']:,} | "
            f"{full['write_s']:.1f} | {full['bytes_per_record']:.1f} | {row['official_bytes']} | {full['open_s']:.2f} | "
            f"{full['random_records_per_s']:,.0f} | {full['sequential_records_per_s']:,.0f} | "
            f"{small['peak_rss_mib'] - small['rss_start_mib']:.0f} ({small['records']:,}) -> "
            f"{full['peak_rss_mib'] - full['rss_start_mib']:.0f} ({full['peak_rss_mib']:.0f}) | "
            f"{100 * full['extra_fraction']:.3f}% |"
        )
    lines += [
        "",
        "Projected totals (measured bytes per record x images x epochs):",
        "",
        "| dataset | images x epochs | ours | official format (4 + 4k) | the paper reports |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['name']} | {row['images']:,} x {row['epochs']} | {row['projected_gb']:.1f} GB | "
            f"{row['official_projected_gb']:.1f} GB | {row['paper_gb']:.0f} GB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS} records instead of the full sizes")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    parser.add_argument("--scratch", default=None, help="folder for the temporary stores (default: a temp dir)")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--random-records", type=int, default=262_144, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        torch.set_num_threads(1)
        print(json.dumps(probe(args.probe, args.random_records, args.batch)))
        return None
    torch.set_num_threads(1)
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(dir=args.scratch)
    rows = []
    try:
        for name in CONFIGS:
            records = QUICK_RECORDS[name] if args.quick else CONFIGS[name]["records"]
            rows.append(measure(name, records, scratch, random_records=16_384 if args.quick else 262_144))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "command": "python benchmarks/scale_store.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    text = markdown(results)
    print(text)
    if args.output or not args.quick:
        output = args.output or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", f"scale-store-{machine_slug(results['machine'])}.md"
        )
        with open(output, "w") as handle:
            handle.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
