"""Teacher-logit stores at ImageNet scale: one ImageNet-1k-size epoch (1,281,167 records, k = 10 of 1,000
classes) and one ImageNet-21k-shaped epoch slice (1,048,576 records, k = 100 of 21,841 classes), written in the
current store format with the writer's own helpers (`encode_topk`, `shard_table`, `write_shard`, the metadata and
shard lines `save_teacher_logits` writes: sha256, seed CRC) from synthetic peaked teacher outputs, in both top-k
encodings (float16 and sqrt8, from the same outputs), then read back in place in fresh processes.

Figures: write time, bytes per record, open time, the first read of every shard (sha256, layout, sample ids and
seed CRC, once per process), random lookups/s and sequential records/s through `TeacherLogitStore.targets`, the
peak RSS of a reading process over a sequential pass and over random lookups (at 1/8 of the records and at all of
them, to see how it grows), extra disk beyond the shards, and projected totals for 1k x 300 and 21k x 90 epochs
beside the paper's 16 GB and 481 GB.

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
    "in1k": {"records": IMAGENET_1K_IMAGES, "k": 10, "num_labels": 1000, "epochs": 300, "images": IMAGENET_1K_IMAGES,
             "random_records": 262_144},
    "in21k": {"records": 1 << 20, "k": 100, "num_labels": 21841, "epochs": 90, "images": IMAGENET_21K_IMAGES,
              "random_records": 32_768},
}  # fmt: skip
QUICK_RECORDS = {"in1k": 40_000, "in21k": 20_000}
ENCODINGS = ("float16", "sqrt8")
CHUNK_SIZE = 16384
EPOCH, SEED = 0, 0


def store_metadata(records: int, k: int, num_labels: int, chunk_size: int, encoding: str) -> dict:
    """The metadata `save_teacher_logits` writes, for a synthetic teacher over `records` samples (shards added
    as they are written)."""
    from hf_tinyvit import AugmentationRecipe
    from hf_tinyvit.store.format import FORMAT_VERSION, IMAGE_DIGEST

    recipe = AugmentationRecipe.tinyvit_pretrain(224)
    return {
        "format_version": FORMAT_VERSION,
        "teacher_name": f"synthetic-peaked-{num_labels}",
        "teacher_hash": "0" * 16,
        "num_labels": num_labels,
        "id2label": {str(i): str(i) for i in range(num_labels)},
        "topk": k,
        "topk_encoding": encoding,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": SEED,
        "dataset_fingerprint": "synthetic",
        "dataset_size": records,
        "chunk_size": chunk_size,
        "num_chunks": -(-records // chunk_size),
        "num_epochs": 1,
        "image_digest": IMAGE_DIGEST,
        "epochs": [EPOCH],
        "shards": [],
    }


def write_stores(paths: dict[str, str], records: int, k: int, num_labels: int, chunk_size: int = CHUNK_SIZE) -> dict:
    """Write one epoch in each encoding from the same synthetic teacher outputs; returns the seconds spent making
    the outputs and, per encoding, the seconds spent storing them (encoding, table, Parquet, sha256, seed CRC)."""
    from hf_tinyvit.store.codec import encode_topk
    from hf_tinyvit.store.format import (
        metadata_features,
        row_group_rows,
        seal_metadata,
        seeds_checksum,
        shard_entry,
        shard_relpath,
        shard_table,
        teacher_topk,
    )
    from hf_tinyvit.store.writer import write_json_atomic, write_shard
    from teacher_logits import teacher_like_logits

    generator = torch.Generator().manual_seed(k)
    digest_generator = np.random.default_rng(k)
    metadata = {e: store_metadata(records, k, num_labels, chunk_size, e) for e in paths}
    synth, store = 0.0, dict.fromkeys(paths, 0.0)
    for chunk, start in enumerate(range(0, records, chunk_size)):
        ids = np.arange(start, min(start + chunk_size, records))
        begin = time.perf_counter()
        # slices keep a 16384 x 21841 float32 logit matrix (1.4 GB) from ever existing at once
        parts = [teacher_topk(teacher_like_logits(generator, len(s), num_labels), k) for s in np.array_split(ids, -(-len(ids) // 2048))]
        values, indices = torch.cat([v for v, _ in parts]).numpy(), torch.cat([i for _, i in parts]).numpy()
        digests = digest_generator.integers(0, 2**32, size=len(ids), dtype=np.uint64).astype(np.uint32)
        synth += time.perf_counter() - begin
        for encoding, path in paths.items():
            begin = time.perf_counter()
            columns = encode_topk(values, indices, num_labels, encoding)
            table = shard_table(metadata_features(metadata[encoding]), ids, EPOCH, columns, digests=digests)
            relpath = shard_relpath(EPOCH, chunk)
            rows = row_group_rows(k, num_labels, encoding, chunk_size)
            sha256, size = write_shard(os.path.join(path, relpath), table, row_group_size=rows)
            metadata[encoding]["shards"].append(shard_entry(relpath, EPOCH, chunk, len(ids), sha256=sha256, size=size,
                                                            aug_seeds=seeds_checksum(SEED, EPOCH, ids)))  # fmt: skip
            store[encoding] += time.perf_counter() - begin
    for encoding, path in paths.items():
        write_json_atomic(os.path.join(path, "metadata.json"), seal_metadata(metadata[encoding]))
    return {"synthesis_s": synth, "write_s": store}


def probe(path: str, pattern: str, random_records: int, batch: int) -> dict:
    """Read figures of one store, measured in this (fresh) process: a sequential pass, or random lookups."""
    from hf_tinyvit import TeacherLogitStore

    rss_start = current_rss_mib()  # torch, pyarrow and datasets imported: what any reader process holds
    reset_peak_rss()
    begin = time.perf_counter()
    store = TeacherLogitStore.open(path)
    open_s = time.perf_counter() - begin
    n = store.dataset_size
    result = {"records": n, "open_s": open_s, "rss_start_mib": rss_start}
    if pattern == "sequential":
        begin = time.perf_counter()
        for start in range(0, n, 1024):
            store.targets(EPOCH, range(start, min(start + 1024, n)))
        result["sequential_records_per_s"] = n / (time.perf_counter() - begin)
    else:
        begin = time.perf_counter()
        store.rows(EPOCH).missing()  # the first read of every shard: sha256, layout, ids, seed CRC
        result["first_read_s"] = time.perf_counter() - begin
        generator = np.random.default_rng(0)
        random_ids = generator.integers(0, n, size=(max(1, random_records // batch), batch))
        begin = time.perf_counter()
        for ids in random_ids:
            store.targets(EPOCH, ids)
        result["random_records_per_s"] = random_ids.size / (time.perf_counter() - begin)
        result["random_batch"] = batch
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def run_probe(path: str, pattern: str, random_records: int, batch: int) -> dict:
    """`probe` in a fresh interpreter, one thread, so its peak memory is the reader's alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.abspath(__file__), "--probe", path, "--pattern", pattern, "--random-records",
               str(random_records), "--batch", str(batch)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=7200)
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


def measure(name: str, records: int, scratch: str, random_records: int) -> list[dict]:
    config = CONFIGS[name]
    rows = {e: {"name": name, "encoding": e, "k": config["k"], "num_labels": config["num_labels"], "records": records}
            for e in ENCODINGS}  # fmt: skip
    small = max(CHUNK_SIZE, records // 8)
    for label, count in (("small", small), ("full", records)):
        paths = {e: os.path.join(scratch, f"{name}-{e}-{count}") for e in ENCODINGS}
        timings = write_stores(paths, count, config["k"], config["num_labels"])
        for encoding, path in paths.items():
            sequential = run_probe(path, "sequential", random_records, batch=256)
            random = run_probe(path, "random", random_records, batch=256)
            disk = disk_figures(path)
            rows[encoding][label] = {
                "synthesis_s": timings["synthesis_s"], "write_s": timings["write_s"][encoding],
                "open_s": min(sequential["open_s"], random["open_s"]),
                "sequential_records_per_s": sequential["sequential_records_per_s"],
                "first_read_s": random["first_read_s"], "random_records_per_s": random["random_records_per_s"],
                "rss_start_mib": sequential["rss_start_mib"],
                "sequential_rss_growth_mib": sequential["peak_rss_mib"] - sequential["rss_start_mib"],
                "random_rss_growth_mib": random["peak_rss_mib"] - random["rss_start_mib"],
                **disk, "bytes_per_record": disk["shard_bytes"] / count, "records": count,
            }  # fmt: skip
            print(f"  {name} {encoding} {count:>9,d} records: {json.dumps(rows[encoding][label])}", flush=True)
            shutil.rmtree(path)  # disk is limited: each store goes as soon as it is measured
    for row in rows.values():
        full = row["full"]
        official = 4 + 4 * config["k"]
        row["official_bytes"] = official
        row["ratio_to_official"] = full["bytes_per_record"] / official
        row["projected_gb"] = full["bytes_per_record"] * config["images"] * config["epochs"] / 1e9
        row["official_projected_gb"] = official * config["images"] * config["epochs"] / 1e9
        row["paper_gb"] = PAPER_GB[name]
        row["images"], row["epochs"] = config["images"], config["epochs"]
    return list(rows.values())


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        "# Teacher-logit stores at ImageNet scale",
        "",
        f"`{results['command']}` on {info['cpu']} ({info['cpu_count']} cores, shared), torch {info['torch']}, "
        f"load average at start {info['load_average']}; {results['seconds']:.0f} s in all. Store format "
        f"{results['format_version']}. Synthetic peaked teacher outputs (benchmarks/teacher_logits.py "
        "`teacher_like_logits`), written as `save_teacher_logits` writes them (`encode_topk`, `shard_table`, "
        f"`write_shard`: chunks of {CHUNK_SIZE:,} records, zstd 9, row groups of about 1 MiB of top-k data, page "
        "checksums; each shard's sha256 and seed CRC in the metadata; a random 4-byte image digest per record), "
        "both encodings from the same outputs. Reads through `TeacherLogitStore` (in place, no Arrow cache) in "
        "fresh one-thread processes: one for a sequential pass (batches of 1,024 ids in order), one for the first "
        "read of every shard (sha256, layout, sample ids, seed CRC: once per process) followed by random lookups "
        "(batches of 256 uniformly random ids; decoded row groups cached up to the default 256 MiB). RSS growth: "
        "the process's peak minus its RSS after imports. Extra disk is metadata.json (it carries id2label for every "
        "class and a line per shard).",
        "",
        "| store | encoding | records | write s (storing only) | bytes/record | official 4 + 4k | open s | first read "
        "of every shard s | random lookups/s | sequential records/s | RSS growth MiB, sequential pass: 1/8 of the "
        "records -> all | RSS growth MiB, random lookups: 1/8 -> all | extra disk |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        full, small = row["full"], row["small"]
        lines.append(
            f"| {row['name']} (k = {row['k']}, {row['num_labels']:,} classes) | {row['encoding']} | {row['records']:,} "
            f"| {full['write_s']:.1f} | {full['bytes_per_record']:.1f} | {row['official_bytes']} | {full['open_s']:.3f} "
            f"| {full['first_read_s']:.1f} | {full['random_records_per_s']:,.0f} | "
            f"{full['sequential_records_per_s']:,.0f} | {small['sequential_rss_growth_mib']:.0f} ({small['records']:,}) "
            f"-> {full['sequential_rss_growth_mib']:.0f} | {small['random_rss_growth_mib']:.0f} -> "
            f"{full['random_rss_growth_mib']:.0f} | {100 * full['extra_fraction']:.3f}% |"
        )
    lines += [
        "",
        "Projected totals (measured bytes per record x images x epochs):",
        "",
        "| dataset | images x epochs | float16 | sqrt8 | official format (4 + 4k) | the paper reports |",
        "|---|---|---|---|---|---|",
    ]
    by_name: dict[str, dict] = {}
    for row in results["rows"]:
        by_name.setdefault(row["name"], {})[row["encoding"]] = row
    for name, rows in by_name.items():
        first = next(iter(rows.values()))
        lines.append(
            f"| {name} | {first['images']:,} x {first['epochs']} | {rows['float16']['projected_gb']:.1f} GB "
            f"({rows['float16']['ratio_to_official']:.2f}x) | {rows['sqrt8']['projected_gb']:.1f} GB "
            f"({rows['sqrt8']['ratio_to_official']:.2f}x) | {first['official_projected_gb']:.1f} GB | "
            f"{first['paper_gb']:.0f} GB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS} records instead of the full sizes")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    parser.add_argument("--scratch", default=None, help="folder for the temporary stores (default: a temp dir)")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pattern", default="sequential", help=argparse.SUPPRESS)
    parser.add_argument("--random-records", type=int, default=262_144, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe:
        print(json.dumps(probe(args.probe, args.pattern, args.random_records, args.batch)))
        return None
    from hf_tinyvit.store.format import FORMAT_VERSION

    start = time.perf_counter()
    scratch = tempfile.mkdtemp(dir=args.scratch)
    rows = []
    try:
        for name, config in CONFIGS.items():
            records = QUICK_RECORDS[name] if args.quick else config["records"]
            random_records = 8_192 if args.quick else config["random_records"]
            rows += measure(name, records, scratch, random_records=random_records)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "command": "python benchmarks/scale_store.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "format_version": FORMAT_VERSION,
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
