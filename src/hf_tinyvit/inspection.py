"""What a teacher-logit store or a saved model folder holds, read from its files (`hf-tinyvit inspect`):
plain dictionaries for scripts and tests, and their text rendering."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["describe_model_folder", "describe_store", "format_description", "teacher_top1_histogram"]

# The size fields that name a preset (the rest, e.g. drop_path_rate, is training detail).
_TINYVIT_SHAPE = ("embed_dims", "depths", "num_heads", "window_sizes", "image_size")
_DEIT_SHAPE = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size", "image_size"
)  # fmt: skip
_FAMILIES = {"tinyvit": "TinyViT", "deit_distilled": "DeiT-distilled", "deit": "DeiT (stock transformers)"}


def teacher_top1_histogram(store) -> np.ndarray:
    """How often each class is the teacher's top-1 over every stored record, `(num_labels,)` int64; reads
    only the index column of each shard."""
    import pyarrow.parquet as pq

    from .store.codec import TOP1_COLUMN

    counts = np.zeros(store.num_labels, dtype=np.int64)
    for epoch in store.epochs:
        for file in store.shard_files(epoch):
            column = pq.read_table(file, columns=[TOP1_COLUMN[store.topk_encoding]]).column(0).combine_chunks()
            top1 = column.flatten().to_numpy().reshape(len(column), store.topk)[:, 0]
            counts += np.bincount(top1.astype(np.int64), minlength=store.num_labels)
    return counts


def describe_store(path_or_hub_id: str) -> dict[str, Any]:
    """Records, epochs, top-k, bytes per record, teacher, recipe and the teacher's top-1 histogram."""
    from .hub import public_name
    from .store.reader import TeacherLogitStore

    store = TeacherLogitStore.open(path_or_hub_id)
    metadata = store.metadata
    records = store.dataset_size * len(store.epochs)
    size = sum(os.path.getsize(f) for e in store.epochs for f in store.shard_files(e))
    counts = teacher_top1_histogram(store)
    names = metadata.get("id2label") or {}
    return {
        "kind": "store",
        "path": store.path,
        "source": store.source,
        "format_version": metadata["format_version"],
        "teacher": public_name(metadata["teacher_name"]),
        "teacher_hash": metadata["teacher_hash"],
        "num_labels": store.num_labels,
        "topk": store.topk,
        "topk_encoding": store.topk_encoding,
        "images": store.dataset_size,
        "epochs": store.epochs,
        "planned_epochs": metadata["num_epochs"],
        "records": records,
        "shard_bytes": size,
        "bytes_per_record": size / records if records else None,
        "official_bytes_per_record": 4 + 4 * store.topk,
        "seed": metadata["seed"],
        "recipe_fingerprint": metadata["recipe_fingerprint"],
        "recipe": metadata["recipe"],
        "top1_histogram": {names.get(i, str(i)): int(n) for i, n in enumerate(counts)},
    }


def _preset(config: dict) -> str | None:
    from .models.deit_distilled import DEIT_PRESETS
    from .models.tinyvit import SMALL_PRESETS, TINYVIT_PRESETS

    families = {
        "tinyvit": ({**TINYVIT_PRESETS, **SMALL_PRESETS}, _TINYVIT_SHAPE),
        "deit_distilled": (DEIT_PRESETS, _DEIT_SHAPE),
        "deit": (DEIT_PRESETS, _DEIT_SHAPE),
    }
    presets, fields = families.get(config.get("model_type"), ({}, ()))
    for name, preset in presets.items():
        if all(list(np.atleast_1d(config.get(f))) == list(np.atleast_1d(preset.get(f))) for f in fields):
            return name
    return None


def _parameter_count(folder: str, config_dict: dict) -> int | None:
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from . import models  # noqa: F401  (registers our families, so AutoConfig reads their configs)
    from .models import deit_distilled, tinyvit

    architecture = (config_dict.get("architectures") or [None])[0]
    model_class = next(
        (getattr(m, architecture) for m in (tinyvit, deit_distilled, transformers) if hasattr(m, architecture or "")),
        None,
    )
    if model_class is None:
        return None
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with init_empty_weights():  # parameters on the meta device: shapes only, nothing allocated or initialised
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def describe_model_folder(folder: str) -> dict[str, Any]:
    """Family, preset, head, classes, parameters, remote code and preprocessing of a saved model folder."""
    from .hub import is_remote_code_folder

    config = json.loads((Path(folder) / "config.json").read_text())
    model_type = config.get("model_type")
    id2label = config.get("id2label") or {}
    processor_file = Path(folder) / "preprocessor_config.json"
    processor = json.loads(processor_file.read_text()) if processor_file.is_file() else None
    weights = sorted(Path(folder).glob("*.safetensors"))
    return {
        "kind": "model",
        "path": str(folder),
        "family": _FAMILIES.get(model_type, model_type),
        "model_type": model_type,
        "architecture": (config.get("architectures") or [None])[0],
        "preset": _preset(config),
        "image_size": config.get("image_size"),
        "num_labels": len(id2label) or config.get("num_labels"),
        "labels": [id2label[k] for k in sorted(id2label, key=int)][:10],
        "parameters": _parameter_count(folder, config),
        "weights_bytes": sum(f.stat().st_size for f in weights),
        "remote_code": is_remote_code_folder(folder),
        "auto_map": sorted(config.get("auto_map") or {}),
        "processor": None
        if processor is None
        else {
            key: processor.get(key)
            for key in ("image_processor_type", "size", "crop_size", "resample", "image_mean", "image_std")
        },
        "card": (Path(folder) / "README.md").is_file(),
    }


def format_description(description: dict[str, Any], *, top: int = 20) -> str:
    """The text `hf-tinyvit inspect` prints."""
    d = description
    if d["kind"] == "model":
        params = f"{d['parameters'] / 1e6:.2f}M" if d["parameters"] is not None else "unknown"
        lines = [
            f"model folder {d['path']}",
            f"  family        {d['family']} ({d['architecture']})",
            f"  preset        {d['preset'] or 'none (custom sizes)'}",
            f"  image size    {d['image_size']}",
            f"  classes       {d['num_labels']}: {', '.join(map(str, d['labels']))}"
            + (" ..." if (d["num_labels"] or 0) > len(d["labels"]) else ""),
            f"  parameters    {params} ({d['weights_bytes'] / 1e6:.1f} MB of safetensors)",
            f"  remote code   {'yes: ' + ', '.join(d['auto_map']) if d['remote_code'] else 'no'}",
        ]
        if d["processor"]:
            p = d["processor"]
            lines.append(f"  processor     {p['image_processor_type']}, size {p['size']}, crop {p['crop_size']}")
        lines.append(f"  model card    {'README.md' if d['card'] else 'none'}")
        return "\n".join(lines)
    histogram = sorted(d["top1_histogram"].items(), key=lambda item: -item[1])
    never = sum(1 for _, n in histogram if n == 0)
    recipe = d["recipe"]
    per_record = f"{d['bytes_per_record']:.1f}" if d["bytes_per_record"] is not None else "-"
    lines = [
        f"teacher-logit store {d['source']}" + (f" ({d['path']})" if d["source"] != d["path"] else ""),
        f"  teacher       {d['teacher']} (weights hash {d['teacher_hash']})",
        f"  records       {d['records']:,} = {d['images']:,} images x {len(d['epochs'])} epochs {d['epochs']}"
        + (f" of {d['planned_epochs']} planned" if d["planned_epochs"] != len(d["epochs"]) else ""),
        f"  top-k         {d['topk']} of {d['num_labels']} classes, {d.get('topk_encoding', 'float16')}",
        f"  size          {d['shard_bytes']:,} bytes, {per_record} bytes/record "
        f"(the official format: {d['official_bytes_per_record']})",
        f"  recipe        {recipe.get('image_size')} px, {recipe.get('auto_augment') or 'no RandAugment'}, "
        f"mixup {recipe.get('mixup_alpha')}, cutmix {recipe.get('cutmix_alpha')}, erasing {recipe.get('reprob')} "
        f"(fingerprint {d['recipe_fingerprint']}), seed {d['seed']}",
        f"  teacher top-1 over all records ({min(top, len(histogram))} most frequent of {len(histogram)} classes"
        + (f", {never} never top-1" if never else "")
        + "):",
    ]
    width = max((len(str(name)) for name, _ in histogram[:top]), default=0)
    total = max(1, d["records"])
    for name, count in histogram[:top]:
        lines.append(f"    {str(name):<{width}s} {count:>10,} {100 * count / total:5.1f}%")
    return "\n".join(lines)
