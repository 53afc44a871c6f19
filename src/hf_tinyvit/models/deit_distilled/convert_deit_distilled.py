"""Converting distilled DeiT checkpoints (facebookresearch/deit `.pth` files or timm's weights, one key
layout) into hf_tinyvit folders: the pure state-dict map first, then the file-to-folder conversion (config
with the head's class count and names, safetensors, reference preprocessing, model card) that
`hf-tinyvit convert` and `conversion/convert_deit_checkpoint.py` run. Any head converts (its class count is
read from the checkpoint); a head-less checkpoint becomes the base `DeiTDistilledModel`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...hub import (
    check_state_dict,
    default_id2label,
    imagenet_id2label,
    load_state_dict,
    write_model_card,
)
from .configuration_deit_distilled import DeiTDistilledConfig
from .modeling_deit_distilled import DeiTDistilledForImageClassification, DeiTDistilledModel
from .preprocessing_deit_distilled import REFERENCE_CROP_PCT, deit_image_processor

# The four released distilled DeiTs (timm / facebookresearch/deit names) and their preset.
VARIANTS = {
    "deit_tiny_distilled_patch16_224": "deit-tiny-distilled-224",
    "deit_small_distilled_patch16_224": "deit-small-distilled-224",
    "deit_base_distilled_patch16_224": "deit-base-distilled-224",
    "deit_base_distilled_patch16_384": "deit-base-distilled-384",
}

# timm / facebookresearch/deit name -> ours, for everything but the fused qkv projection.
_RENAMES = [
    (r"^cls_token$", "deit.embeddings.cls_token"),
    (r"^dist_token$", "deit.embeddings.distillation_token"),
    (r"^pos_embed$", "deit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "deit.embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"deit.layers.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"deit.layers.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.norm2\.", r"deit.layers.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"deit.layers.\1.mlp.fc\2."),
    (r"^norm\.", "deit.layernorm."),
    (r"^head\.", "cls_classifier."),
    (r"^head_dist\.", "distillation_classifier."),
]
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def variant_config(variant: str, **overrides) -> DeiTDistilledConfig:
    """The hf_tinyvit config of a named variant, with ImageNet-1k labels and the reference LayerNorm eps."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {sorted(VARIANTS)}")
    if "id2label" not in overrides and "num_labels" not in overrides:
        overrides["id2label"] = imagenet_id2label(1000)
    if "id2label" in overrides:
        overrides.setdefault("label2id", {name: i for i, name in overrides["id2label"].items()})
    fields = {"layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_act": "gelu", **overrides}
    return DeiTDistilledConfig.from_preset(VARIANTS[variant], **fields)


def rename_timm_key(key: str) -> str:
    """Our parameter name for a timm / facebookresearch/deit one; unknown keys come back unchanged so that
    the state-dict check lists them under their own names."""
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def convert_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm / facebookresearch/deit distilled DeiT weights -> ours (transformers' DeiT names).

    The fused `qkv` projection, rows ordered query | key | value, is split into three.
    """
    converted = {}
    for key, value in state_dict.items():
        match = _QKV.match(key)
        if match:
            layer, kind = match.groups()
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not a multiple of 3 (query, key, value)")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"deit.layers.{layer}.attention.{name}.{kind}"] = part.clone()
        else:
            converted[rename_timm_key(key)] = value
    return converted


def convert_checkpoint(
    checkpoint: str | Path, variant: str, *, id2label: Mapping[int, str] | None = None
) -> DeiTDistilledForImageClassification | DeiTDistilledModel:
    """Load and convert one checkpoint into our model, in eval mode; nothing is written.

    The class count comes from the checkpoint's head (`head.weight`); `id2label` names the classes (default:
    ImageNet-1k / -21k names for 1,000 / 21,841 classes, else transformers' LABEL_i). A checkpoint without
    heads gives the base `DeiTDistilledModel`.
    """
    state_dict = convert_timm_state_dict(load_state_dict(checkpoint))
    heads = [k for k in ("cls_classifier.weight", "distillation_classifier.weight") if k in state_dict]
    if not heads:
        if id2label is not None:
            raise ValueError(f"{checkpoint} has no classifier heads (head, head_dist): there are no classes to name")
        model = DeiTDistilledModel(variant_config(variant, num_labels=2), add_pooling_layer=False)
        state_dict = {k.removeprefix("deit."): v for k, v in state_dict.items()}
    else:
        num_classes = int(state_dict[heads[0]].shape[0])
        if id2label is not None and len(id2label) != num_classes:
            raise ValueError(f"{len(id2label)} label names given but {checkpoint} has a head of {num_classes} classes")
        labels = dict(id2label) if id2label is not None else default_id2label(num_classes)
        config = variant_config(variant, **({"id2label": labels} if labels else {"num_labels": num_classes}))
        model = DeiTDistilledForImageClassification(config)
    # A partial load would leave random weights behind: list every missing, extra or mis-shaped tensor.
    check_state_dict(model.state_dict(), state_dict, what=f"{checkpoint} as {variant} ({type(model).__name__})")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_converted(
    model: DeiTDistilledForImageClassification | DeiTDistilledModel,
    variant: str,
    output_dir: str | Path,
    model_id: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write the model, its reference preprocessing and a model card to `output_dir`."""
    output_dir = Path(output_dir)
    image_size = model.config.image_size
    model.save_pretrained(output_dir)
    deit_image_processor(image_size).save_pretrained(output_dir)
    classifier = isinstance(model, DeiTDistilledForImageClassification)
    num_classes = model.config.num_labels if classifier else None
    imagenet_names = classifier and model.config.id2label == default_id2label(num_classes)
    imagenet = {1000: "imagenet-1k", 21841: "imagenet-21k"}.get(num_classes) if imagenet_names else None
    if base_model is None and imagenet == "imagenet-1k":
        base_model = f"timm/{variant}.fb_in1k"  # the released weights these names come with
    what = f"{num_classes} classes" if classifier else "no heads, as the base `DeiTDistilledModel`"
    write_model_card(
        output_dir,
        model_id=model_id or output_dir.name,
        base_model=base_model,
        datasets=[imagenet] if imagenet else [],
        tags=["deit", "knowledge-distillation"],
        head="classification" if classifier else "model",
        description=(
            f"`{variant}` ({what}) in the layout of facebookresearch/deit (Touvron et al., 2021, *Training "
            "data-efficient image transformers & distillation through attention*), converted to hf_tinyvit's "
            "`DeiTDistilledForImageClassification`, which trains the distillation token: the forward takes "
            "`labels` and a teacher's `distillation_labels` or `teacher_probs` and returns DeiT's loss. "
            "`logits` average the class and distillation heads as the paper does at inference. "
            "`model.save_as_transformers_deit(dir)` (or `hf-tinyvit export-deit`) writes a folder that stock "
            "transformers loads with `DeiTForImageClassificationWithTeacher`."
        ),
        extra_sections=[
            (
                "Preprocessing",
                f"Bicubic resize to {int(image_size / REFERENCE_CROP_PCT)}, centre crop {image_size}, "
                "ImageNet mean/std normalisation, as facebookresearch/deit evaluates.",
            )
        ],
    )
    return output_dir


def verify_against_timm(
    model: DeiTDistilledForImageClassification | DeiTDistilledModel, checkpoint: str | Path, variant: str
) -> float:
    """Largest difference between the converted model and timm on the original weights: logits, or the
    final normalised tokens of a head-less model."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    classifier = isinstance(model, DeiTDistilledForImageClassification)
    num_classes = model.config.num_labels if classifier else 0
    reference = timm.create_model(variant, pretrained=False, num_classes=num_classes).eval()
    reference.load_state_dict(checkpoint_filter_fn(load_state_dict(checkpoint), reference), strict=True)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, model.config.image_size, model.config.image_size, generator=generator)
    with torch.inference_mode():
        if classifier:
            expected, got = reference(pixel_values), model(pixel_values).logits
        else:
            expected, got = reference.forward_features(pixel_values), model(pixel_values).last_hidden_state
    return float((expected - got).abs().max())


__all__ = [
    "VARIANTS",
    "convert_checkpoint",
    "convert_timm_state_dict",
    "rename_timm_key",
    "save_converted",
    "variant_config",
    "verify_against_timm",
]
