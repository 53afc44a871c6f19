"""What a store's integrity checks cost, measured side by side in one run:

1. reading a shard (16,384 records, the default chunk) with the checks (its sha256 against the metadata,
   its columns, every top-k row) and without them, at k=10 of 1,000 classes and k=100 of 21,841;
2. the stored-logit training step (`DistillationTrainer`, stored mode) with its batch's targets read from
   the store with and without the checks, each record read (and checked) once, as in an epoch;
3. `hf-tinyvit verify` on a healthy 1,797-image digits store of 8 epochs, and on damaged copies of it.

    python benchmarks/row_checks.py [--quick] [--repeats 9] [--pairs tiny-32 tinyvit-21m-to-5m-224]

Writes benchmarks/results/row-checks-<machine>.md (and prints the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians, machine_info, machine_slug, torch_threads  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def plain_decode(source, metadata, epoch, where, store_path="", schema=None):
    """The reader's decoding before the checks (hf_tinyvit 0.1.0): Parquet to numpy, nothing checked."""
    table = pq.read_table(pa.BufferReader(source) if isinstance(source, bytes) else source, memory_map=True)
    shard = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            shard[name] = column.flatten().to_numpy().reshape(len(column), -1)
        else:
            shard[name] = column.to_numpy()
    return shard


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class ChecksOff:
    """Within the block, the store reader reads shards as it does, without the checks: the same row groups read
    and decoded, no sha256, no schema, layout, id, seed or row checks. Only the checks differ between the two
    sides."""

    def __enter__(self):
        from hf_tinyvit.store import reader

        self.saved = (reader.decode_shard, reader._EpochReader._verify, reader._check_rows)
        reader.decode_shard = plain_decode
        reader._EpochReader._verify = lambda self, number, data: None
        reader._check_rows = lambda *args: None

    def __exit__(self, *exc):
        from hf_tinyvit.store import reader

        reader.decode_shard, reader._EpochReader._verify, reader._check_rows = self.saved


def synthetic_shard(folder: str, rows: int, topk: int, num_labels: int, seed: int = 0):
    """One shard of `rows` records of real top-k teacher probabilities (softmax of random logits)."""
    from hf_tinyvit import AugmentationRecipe
    from hf_tinyvit.store.codec import encode_topk
    from hf_tinyvit.store.format import (
        FORMAT_VERSION,
        metadata_features,
        row_group_rows,
        shard_entry,
        shard_table,
        teacher_topk,
    )
    from hf_tinyvit.store.writer import write_shard

    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, num_labels, generator=generator) * 3
    values, indices = teacher_topk(logits, topk)
    ids = np.arange(rows)
    metadata = {"topk": topk, "num_labels": num_labels, "format_version": FORMAT_VERSION, "topk_encoding": "float16",
                "recipe": AugmentationRecipe(image_size=32).to_dict()}  # fmt: skip
    columns = encode_topk(values.numpy(), indices.numpy(), num_labels, "float16")
    table = shard_table(metadata_features(metadata), ids, 0, columns, digests=np.arange(rows, dtype=np.uint32))
    path = os.path.join(folder, f"k{topk}.parquet")
    sha256, size = write_shard(path, table, row_group_size=row_group_rows(topk, num_labels, "float16", rows))
    return path, metadata, shard_entry(path, 0, 0, rows, sha256=sha256, size=size)


def storage_costs(records: int) -> list[dict]:
    """Bytes per record of format 1 and format 2 (the image digest column) on the same synthetic teacher
    outputs as benchmarks/teacher_logits.py, and the metadata bytes each shard's line adds."""
    from hf_tinyvit.store.format import shard_entry
    from teacher_logits import bytes_per_record

    entry = shard_entry("data/epoch_0299/chunk_000077.parquet", 299, 77, 16384, sha256="0" * 64, size=531794)
    line = len(json.dumps([entry], indent=2, sort_keys=True)) - 4  # one entry of the list, as the writer indents it
    return [
        {
            "topk": k, "num_labels": num_labels, "official": 4 + 4 * k, "metadata_per_record": line / 16384,
            "format1": bytes_per_record(k, num_labels, records, 16384, with_digest=False, with_seed=True),
            "format2": bytes_per_record(k, num_labels, records, 16384, with_digest=True, with_seed=True),
        }  # fmt: skip
        for k, num_labels in ((10, 1000), (100, 21841))
    ]


def shard_read_costs(repeats: int, rows: int) -> list[dict]:
    from hf_tinyvit.store.reader import decode_shard

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for topk, num_labels in ((10, 1000), (100, 21841)):
            path, metadata, entry = synthetic_shard(folder, rows, topk, num_labels)

            def checked():
                data = read_bytes(path)
                assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
                return decode_shard(data, metadata, 0, path)

            times = interleaved_medians(
                {
                    "0.1.0": lambda: plain_decode(path, metadata, 0, path),  # memory-mapped, as 0.1.0 read it
                    "without": lambda: plain_decode(read_bytes(path), metadata, 0, path),
                    "with": checked,
                },
                repeats=repeats, warmup=2,
            )  # fmt: skip
            plain, with_checks = times["without"]["median_s"], times["with"]["median_s"]
            results.append({
                "topk": topk, "num_labels": num_labels, "rows": rows, "bytes": entry["bytes"], "plain_s": plain,
                "checked_s": with_checks, "extra_us_per_record": 1e6 * (with_checks - plain) / rows,
                "mmap_s": times["0.1.0"]["median_s"],
            })  # fmt: skip
    return results


def step_costs(pair_names: list[str], repeats: int, quick: bool) -> list[dict]:
    """The stored-logit step with its batch's targets read from the store, checks on and off, interleaved.

    The store's chunk is the batch, and every step opens a fresh reader: each step reads and checks
    exactly the records it trains on, once, as an epoch does (a whole shard's checks are spent on the
    batches that read it)."""
    from hf_tinyvit import TeacherLogitStore
    from training_step import (
        PAIRS,
        TOPK,
        build_model,
        labelled_photos,
        make_trainer,
        render_batches,
        stored_dataset,
        train_on,
    )

    results = []
    for name in pair_names:
        pair = PAIRS[name]
        batch_size, count = pair.cpu_batch_size, (2 if quick else 4)
        folder = tempfile.mkdtemp(prefix="row-checks-")
        try:
            from hf_tinyvit import AugmentationRecipe, save_teacher_logits

            num_images = batch_size * count
            images = labelled_photos(num_images, pair)
            save_teacher_logits(
                build_model(pair, "teacher", seed=1), images, folder, recipe=AugmentationRecipe.tinyvit_pretrain(
                    pair.image_size), topk=TOPK, batch_size=batch_size, chunk_size=batch_size,
                teacher_name=f"{pair.name}-teacher", progress=False,
            )  # fmt: skip
            dataset = stored_dataset(pair, folder, num_images)
            batches = render_batches(dataset, batch_size, count)
            trainer = make_trainer("stored", pair, dataset, os.path.join(folder, "out"), "cpu", batch_size)
            calls = {"n": 0}

            metadata = TeacherLogitStore.open(folder).metadata

            def targets():
                i = calls["n"] % count
                store = TeacherLogitStore(folder, metadata)  # a fresh reader: nothing decoded (or checked) yet
                return i, store.targets(0, batches[i]["sample_id"].tolist())

            def step():
                i, (values, indices) = targets()
                batch = {**batches[i], "teacher_topk_values": values, "teacher_topk_indices": indices}
                train_on(trainer, batch, "cpu")
                calls["n"] += 1

            def off(function):
                def run():
                    with ChecksOff():
                        return function()

                return run

            fetch = interleaved_medians({"without": off(targets), "with": targets}, repeats=4 * repeats, warmup=2)
            # steps are long and the machine may be shared: twice the repeats for a steadier median
            steps = interleaved_medians({"without": off(step), "with": step}, repeats=2 * repeats, warmup=1)
            results.append({
                "pair": name, "batch": batch_size, "image_size": pair.image_size, "topk": TOPK,
                "num_labels": pair.num_labels, "step_without_s": steps["without"]["median_s"],
                "step_with_s": steps["with"]["median_s"], "fetch_without_s": fetch["without"]["median_s"],
                "fetch_with_s": fetch["with"]["median_s"],
            })  # fmt: skip
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def verify_digits(folder: str, epochs: int) -> dict:
    """Save a store over all 1,797 digits (train+test) for `epochs` epochs, then time `hf-tinyvit verify`
    on it, with and without the dataset, and on damaged copies."""
    from torch import nn

    from hf_tinyvit import AugmentationRecipe, load_image_dataset, save_teacher_logits
    from hf_tinyvit.datasets import select_split

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.head = nn.Linear(32, 10)

        def forward(self, pixel_values):
            return self.head(self.body(pixel_values))

    digits = select_split(load_image_dataset("digits"), "train+test")
    store = os.path.join(folder, "digits")
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = Teacher()
    save_teacher_logits(teacher, digits, store, recipe=AugmentationRecipe.digits(32), topk=3, num_epochs=epochs,
                        batch_size=256, teacher_name="digits-conv", progress=False)  # fmt: skip
    saving = time.perf_counter() - started
    command = [sys.executable, "-m", "hf_tinyvit.cli", "verify"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*arguments):
        started = time.perf_counter()
        done = subprocess.run([*command, *arguments], capture_output=True, text=True, env=env, timeout=600)
        return time.perf_counter() - started, done.returncode, done.stdout.strip()

    # the interpreter and its imports alone, for reference
    imports = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hf_tinyvit.cli, hf_tinyvit.store.verify"], env=env, check=True)
    imports = time.perf_counter() - imports
    healthy = run(store)
    with_images = run(store, "--dataset_name", "digits", "--split", "train+test")
    damaged = {}
    data = os.path.join(store, "data", f"epoch_{epochs - 1:04d}", "chunk_000000.parquet")
    for kind in ("truncated", "bit flip", "edited metadata", "stray file", "changed image"):
        copy = os.path.join(folder, kind.replace(" ", "-"))
        shutil.copytree(store, copy)
        target = data.replace(store, copy)
        if kind == "truncated":
            open(target, "wb").write(open(data, "rb").read()[:-64])
        elif kind == "bit flip":
            raw = bytearray(open(data, "rb").read())
            raw[len(raw) // 2] ^= 0x01
            open(target, "wb").write(bytes(raw))
        elif kind == "edited metadata":
            metadata = json.load(open(os.path.join(copy, "metadata.json")))
            metadata["num_labels"] = 11
            json.dump(metadata, open(os.path.join(copy, "metadata.json"), "w"))
        elif kind == "stray file":  # a copy of an epoch's folder left beside it
            shutil.copytree(os.path.dirname(target), os.path.dirname(target) + ".bak")
        if kind == "changed image":
            # the same 1,797 digits in another order (test+train): only --dataset_name sees it
            damaged[kind] = run(copy, "--dataset_name", "digits", "--split", "test+train")
        else:
            damaged[kind] = run(copy)
    return {"images": len(digits), "epochs": epochs, "saving_s": saving, "imports_s": imports, "healthy": healthy,
            "with_images": with_images, "damaged": damaged}  # fmt: skip


def report(info, storage, shards, steps, verify, command: str) -> str:
    lines = [
        "# Integrity checks: what they cost",
        "",
        f"`{command}` on {info['cpu']} ({info['cpu_count']} cores, torch {info['torch']}, {info['torch_threads']} "
        f"thread(s)); load average at start {info['load_average']}. Times are medians of interleaved repeats.",
        "",
        "## Bytes per record: format 1 and format 2",
        "",
        "Format 2 adds a uint32 image digest per record (random bits: 4 bytes) and, per shard, a line in "
        "metadata.json (path, epoch, chunk, rows, bytes, sha256). Synthetic peaked teacher outputs, zstd.",
        "",
        "| k of classes | format 1 (B/record) | format 2 (B/record) | digest | metadata line per record (B) "
        "| official 4 + 4k |",
        "|---|---|---|---|---|---|",
    ]
    for r in storage:
        lines.append(
            f"| {r['topk']} of {r['num_labels']} | {r['format1']:.2f} | {r['format2']:.2f} | "
            f"{r['format2'] - r['format1']:+.2f} | {r['metadata_per_record']:.4f} | {r['official']} |"
        )
    lines += [
        "",
        "## Reading one shard: with and without the checks",
        "",
        "Checks: the file's sha256 against the metadata's, its columns against the schema, and every top-k row "
        "(finite, in [0, 1], decreasing, mass <= 1 + 1e-3, class indices in range and distinct).",
        "",
        "| k of classes | records | bytes | read as 0.1.0 did (ms) | read, no checks (ms) | read, checked (ms) "
        "| checks per record (us) | checks / read |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in shards:
        lines.append(
            f"| {r['topk']} of {r['num_labels']} | {r['rows']} | {r['bytes']} | {1e3 * r['mmap_s']:.2f} | "
            f"{1e3 * r['plain_s']:.2f} | {1e3 * r['checked_s']:.2f} | {r['extra_us_per_record']:.3f} | "
            f"{100 * (r['checked_s'] / r['plain_s'] - 1):+.0f}% |"
        )
    lines += [
        "",
        "## The stored-logit training step, its targets read with and without the checks",
        "",
        "Each step reads its batch's records from the store (a fresh reader, one shard per batch) and trains "
        "on them: every record is read and checked once, as in an epoch. `fetch` is the target read alone; the "
        "checks' share is (fetch checked - fetch unchecked) / step, and lies within timing noise where negative.",
        "",
        "| pair | batch | step, no checks (s) | step, checked (s) | ratio | fetch, no checks (ms) | fetch, checked (ms) "
        "| checks' share of the step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        share = (r["fetch_with_s"] - r["fetch_without_s"]) / r["step_with_s"]
        lines.append(
            f"| {r['pair']} ({r['image_size']} px, top-{r['topk']} of {r['num_labels']}) | {r['batch']} | "
            f"{r['step_without_s']:.4f} | {r['step_with_s']:.4f} | {r['step_with_s'] / r['step_without_s']:.3f}x | "
            f"{1e3 * r['fetch_without_s']:.2f} | {1e3 * r['fetch_with_s']:.2f} | **{100 * share:.2f}%** |"
        )
    for r in shards:
        for s in steps:
            per_step = r["extra_us_per_record"] * 1e-6 * s["batch"]
            lines.append(
                f"\nAt k={r['topk']} with 16,384-record shards (checks spent once per record): "
                f"{1e3 * per_step:.3f} ms per batch of {s['batch']}, {100 * per_step / s['step_with_s']:.3f}% of the "
                f"{s['pair']} step."
            )
    if verify is not None:
        elapsed, code, out = verify["healthy"]
        lines += [
            "",
            f"## `hf-tinyvit verify` on a {verify['images']:,}-image digits store ({verify['epochs']} epochs)",
            "",
            f"Saving it took {verify['saving_s']:.1f} s. Wall time of the command, interpreter start and imports "
            f"included ({verify['imports_s']:.1f} s of it for the imports alone):",
            "",
            "| store | wall (s) | exit | first lines of the report |",
            "|---|---|---|---|",
        ]
        rows = [("healthy", verify["healthy"]), ("healthy, every image checked too", verify["with_images"])]
        rows += [(kind, result) for kind, result in verify["damaged"].items()]
        for kind, (elapsed, code, out) in rows:
            text = " / ".join(out.splitlines()[:2]).replace("|", "\\|")
            lines.append(f"| {kind} | {elapsed:.1f} | {code} | {text[:400]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, the tiny pair only")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--pairs", nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the digits store verify reads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 9)
    pairs = args.pairs or (["tiny-32"] if args.quick else ["tiny-32", "tinyvit-21m-to-5m-224"])
    with torch_threads(1):
        info = machine_info("cpu")
        storage = storage_costs(16384 if args.quick else 65536)
        shards = shard_read_costs(repeats=3 * repeats, rows=16384)
        steps = step_costs(pairs, repeats, args.quick)
        with tempfile.TemporaryDirectory() as folder:
            verify = verify_digits(folder, args.epochs)
    command = "python benchmarks/row_checks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(info, storage, shards, steps, verify, command.strip())
    print(text)
    if not args.no_write:
        path = os.path.join(RESULTS, f"row-checks-{machine_slug(info)}.md")
        with open(path, "w") as handle:
            handle.write(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
