"""Converting TinyViT checkpoints: pure state-dict maps from the reference layouts (microsoft/Cream, timm)
to ours (state dict in, state dict out), then the file-to-folder conversion that `hf-tinyvit convert` and
`conversion/convert_tinyvit_checkpoint.py` run."""

import re
from pathlib import Path

import torch

from ...hub import (
    check_state_dict,
    default_id2label,
    load_state_dict,
    write_model_card,
)
from .configuration_tinyvit import TINYVIT_PRESETS, TinyViTConfig
from .modeling_tinyvit import TinyViTBackbone, TinyViTForImageClassification, TinyViTModel
from .preprocessing_tinyvit import tinyvit_image_processor

_PAPER = "TinyViT: Fast Pretraining Distillation for Small Vision Transformers (Wu et al., ECCV 2022)"

# Cream keeps each patch merging at the end of the stage before it; timm (and we) put it at the start of
# the stage it feeds, hence the +1 below. Cream's conv+BN pairs name the convolution `c`.
_CREAM_TO_TIMM = [
    (r"^patch_embed\.seq\.0\.", "patch_embed.conv1."),
    (r"^patch_embed\.seq\.2\.", "patch_embed.conv2."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.c\.(weight|bias)$", r".conv.\1"),
    (r"^norm_head\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]
_TIMM_TO_CREAM = [
    (r"^patch_embed\.conv1\.", "patch_embed.seq.0."),
    (r"^patch_embed\.conv2\.", "patch_embed.seq.2."),
    (r"^stages\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample."),
    (r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks."),
    (r"\.conv\.(weight|bias)$", r".c.\1"),
    (r"^head\.norm\.", "norm_head."),
    (r"^head\.fc\.(weight|bias)$", r"head.\1"),
]
_TIMM_TO_HF = [
    (r"^patch_embed\.", "tinyvit.embeddings."),
    (r"^stages\.(\d+)\.blocks\.", r"tinyvit.encoder.stages.\1.layers."),
    (r"^stages\.(\d+)\.downsample\.", r"tinyvit.encoder.stages.\1.downsample."),
    (r"\.attn\.norm\.", ".attention.layernorm."),
    (r"\.attn\.qkv\.", ".attention.qkv."),
    (r"\.attn\.proj\.", ".attention.projection."),
    (r"\.attn\.attention_biases$", ".attention.attention_bias_table"),
    (r"\.mlp\.norm\.", ".mlp.layernorm."),
    (r"\.conv\.(weight|bias)$", r".convolution.\1"),
    (r"\.bn\.", ".batch_norm."),
    (r"^head\.norm\.", "tinyvit.layernorm."),
    (r"^head\.fc\.", "classifier."),
]
# Index buffers some reference checkpoints carry: rebuilt from the config, never loaded.
_DERIVED_BUFFER = re.compile(r"attention_bias_idxs$")
_QKV = re.compile(r"^stages\.(\d+)\.blocks\.\d+\.attn\.qkv\.(weight|bias)$")
_VARIANT = re.compile(r"^tiny_vit_(5m|11m|21m)_(224|384|512)(?:\.(\w+))?$")


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def cream_to_timm_key(key: str) -> str:
    return _rename(key, _CREAM_TO_TIMM)


def timm_to_cream_key(key: str) -> str:
    return _rename(key, _TIMM_TO_CREAM)


def timm_to_hf_key(key: str) -> str:
    return _rename(key, _TIMM_TO_HF)


def qkv_heads_interleaved_to_grouped(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder qkv rows from the reference's per-head (q, k, v) blocks to ours: all q, all k, all v.

    Cream and timm split `qkv(x).view(B, N, heads, 3 * head_dim)` per head; we split
    `view(B, N, 3, heads, head_dim)`, the usual transformers layout.
    """
    rows = tensor.shape[0]
    if rows % (3 * num_heads):
        raise ValueError(f"qkv with {rows} rows cannot hold 3 x num_heads={num_heads} equal blocks")
    head_dim = rows // (3 * num_heads)
    grouped = tensor.reshape(num_heads, 3, head_dim, *tensor.shape[1:]).transpose(0, 1)
    return grouped.reshape(tensor.shape).contiguous()


def qkv_heads_grouped_to_interleaved(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `qkv_heads_interleaved_to_grouped`."""
    head_dim = tensor.shape[0] // (3 * num_heads)
    interleaved = tensor.reshape(3, num_heads, head_dim, *tensor.shape[1:]).transpose(0, 1)
    return interleaved.reshape(tensor.shape).contiguous()


def detect_layout(state_dict) -> str:
    """"cream", "timm" or "hf" from the key names, or a ValueError that shows some of them."""
    keys = list(state_dict)
    if any(k.startswith(("layers.", "patch_embed.seq.")) for k in keys):
        return "cream"
    if any(k.startswith("stages.") for k in keys):
        return "timm"
    if any(k.startswith("tinyvit.") for k in keys):
        return "hf"
    raise ValueError(f"not a TinyViT checkpoint in Cream, timm or hf_tinyvit layout; first keys: {keys[:5]}")


def timm_to_hf_state_dict(state_dict, config: TinyViTConfig) -> dict[str, torch.Tensor]:
    """timm `TinyVit.state_dict()` -> `TinyViTForImageClassification` state dict (qkv rows regrouped)."""
    converted = {}
    for key, value in state_dict.items():
        if _DERIVED_BUFFER.search(key):
            continue
        match = _QKV.match(key)
        if match:
            value = qkv_heads_interleaved_to_grouped(value, config.num_heads[int(match[1])])
        converted[timm_to_hf_key(key)] = value
    return converted


def cream_to_timm_state_dict(state_dict) -> dict[str, torch.Tensor]:
    return {cream_to_timm_key(k): v for k, v in state_dict.items() if not _DERIVED_BUFFER.search(k)}


def timm_to_cream_state_dict(state_dict) -> dict[str, torch.Tensor]:
    return {timm_to_cream_key(k): v for k, v in state_dict.items()}


def to_hf_state_dict(state_dict, config: TinyViTConfig) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported layout -> ours; returns the converted dict and the detected layout."""
    layout = detect_layout(state_dict)
    if layout == "cream":
        state_dict = cream_to_timm_state_dict(state_dict)
    if layout == "hf":
        return dict(state_dict), layout
    return timm_to_hf_state_dict(state_dict, config), layout


def parse_variant(variant: str) -> tuple[str, str | None]:
    """timm name (`tiny_vit_21m_384`, optionally `.dist_in22k`-style tag) -> (preset name, tag)."""
    match = _VARIANT.match(variant)
    if not match:
        raise ValueError(
            f"unknown TinyViT variant {variant!r}; expected tiny_vit_{{5m,11m,21m}}_{{224,384,512}}[.tag], "
            "e.g. tiny_vit_5m_224 or tiny_vit_21m_224.dist_in22k"
        )
    preset = f"tinyvit-{match[1]}-{match[2]}"
    assert preset in TINYVIT_PRESETS
    return preset, match[3]


def num_classes_of(state_dict) -> int | None:
    """Classes of the classifier head in any supported layout; None for a head-less checkpoint."""
    for key in ("head.fc.weight", "head.weight", "classifier.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


# ---- file to folder ------------------------------------------------------------------------------------


def build_converted(state_dict, variant: str, *, id2label=None, what: str = "checkpoint"):
    """The model a mapped checkpoint fills, strictly loaded, in eval mode: `TinyViTForImageClassification` with
    as many classes as its head, or without a head `TinyViTModel` (final LayerNorm kept) or `TinyViTBackbone`
    (stages only). `id2label` names the classes (default: ImageNet names for 1,000 or 21,841 classes)."""
    preset, tag = parse_variant(variant)
    num_classes = num_classes_of(state_dict)
    if num_classes is None:
        if id2label is not None:
            raise ValueError(f"{what} has no classifier head (head.fc / head / classifier): no classes to name")
        config = TinyViTConfig.from_preset(preset)
    else:
        if tag and "in22k" in tag and "ft" not in tag and num_classes != 21841:
            raise ValueError(f"variant {variant!r} names an ImageNet-21k head but {what} has {num_classes} classes")
        if id2label is not None and len(id2label) != num_classes:
            raise ValueError(f"{len(id2label)} label names given but {what} has a head of {num_classes} classes")
        labels = dict(id2label) if id2label is not None else default_id2label(num_classes)
        names = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels else {}
        config = TinyViTConfig.from_preset(preset, num_labels=num_classes, **names)
    converted, layout = to_hf_state_dict(state_dict, config)
    if num_classes is None:
        has_norm = any(k.startswith("tinyvit.layernorm.") for k in converted)
        model_class = TinyViTModel if has_norm else TinyViTBackbone
        converted = {k.removeprefix("tinyvit."): v for k, v in converted.items()}
    else:
        model_class = TinyViTForImageClassification
    model = model_class(config).eval()
    check_state_dict(model.state_dict(), converted, f"{layout}-layout {what} for {variant} ({model_class.__name__})")
    model.load_state_dict(converted, strict=True)
    return model, layout


def convert(
    checkpoint: str | Path,
    variant: str,
    output_dir: str | Path,
    *,
    id2label=None,
    model_id: str | None = None,
    base_model: str | None = None,
):
    """Read, map, check and save; raises before writing anything if the checkpoint does not fit `variant`.

    Returns (model, image processor); see `build_converted` for which model a checkpoint gives.
    """
    preset, tag = parse_variant(variant)
    model, layout = build_converted(load_state_dict(checkpoint), variant, id2label=id2label, what=str(checkpoint))
    config = model.config

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor = tinyvit_image_processor(config.image_size)
    processor.save_pretrained(output_dir)
    head = {TinyViTModel: "model", TinyViTBackbone: "backbone"}.get(type(model), "classification")
    num_classes = config.num_labels if head == "classification" else None
    imagenet = {1000: "imagenet-1k", 21841: "imagenet-21k"}.get(num_classes) if id2label is None else None
    what = f"{num_classes} classes" if num_classes else f"no head, as a {type(model).__name__}"
    write_model_card(
        output_dir,
        model_id=model_id or output_dir.name,
        base_model=base_model or (f"timm/{variant}" if tag else None),
        datasets=[imagenet] if imagenet else [],
        eval_dataset=None,
        tags=["tinyvit", f"timm:{variant}"],
        description=(
            f"TinyViT `{preset}` ({what}) converted from a {layout}-layout checkpoint of timm's `{variant}`. "
            f"Paper: {_PAPER}. Evaluation preprocessing: bicubic resize, centre crop {config.image_size}, "
            "ImageNet mean/std."
        ),
        head=head,
    )
    return model, processor


__all__ = [
    "build_converted",
    "convert",
    "cream_to_timm_key",
    "cream_to_timm_state_dict",
    "detect_layout",
    "num_classes_of",
    "parse_variant",
    "qkv_heads_grouped_to_interleaved",
    "qkv_heads_interleaved_to_grouped",
    "timm_to_cream_key",
    "timm_to_cream_state_dict",
    "timm_to_hf_key",
    "timm_to_hf_state_dict",
    "to_hf_state_dict",
]
