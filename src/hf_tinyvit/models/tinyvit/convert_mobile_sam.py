"""MobileSAM's image encoder as a `TinyViTBackbone`: pure key maps between a MobileSAM checkpoint
(`mobile_sam.pt`, the whole SAM state dict, encoder under `image_encoder.`) and ours, both ways, then
the file-to-folder conversion.

MobileSAM's encoder is TinyViT in Cream's layout plus SAM's neck (`neck.0` conv 1x1, `neck.1`
LayerNorm2d, `neck.2` conv 3x3, `neck.3` LayerNorm2d). It keeps Cream's classifier (`norm_head`,
`head`) but never runs it, so those tensors are reported as unused, as are the prompt encoder's and
the mask decoder's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ...hub import check_state_dict, load_state_dict
from .configuration_tinyvit import MOBILE_SAM_PRESETS, TinyViTConfig
from .convert_tinyvit import (
    cream_to_timm_key,
    qkv_heads_grouped_to_interleaved,
    qkv_heads_interleaved_to_grouped,
    timm_to_cream_key,
    timm_to_hf_key,
)
from .modeling_tinyvit import TinyViTBackbone

ENCODER_PREFIX = "image_encoder."
# SAM's neck is an nn.Sequential; ours names its four modules.
_NECK_TO_OURS = {"neck.0.": "neck.conv1.", "neck.1.": "neck.norm1.", "neck.2.": "neck.conv2.", "neck.3.": "neck.norm2."}
# Parts of the encoder that MobileSAM's forward never runs, and index buffers rebuilt from the config.
_UNUSED_ENCODER = re.compile(r"^(norm_head|head)\.")
_DERIVED_BUFFER = re.compile(r"attention_bias_idxs$")
# Our backbone's names -> timm's, the inverse of convert_tinyvit's timm -> ours rules (tested as a bijection).
_OURS_TO_TIMM = [
    (r"^embeddings\.", "patch_embed."),
    (r"^encoder\.stages\.(\d+)\.layers\.", r"stages.\1.blocks."),
    (r"^encoder\.stages\.(\d+)\.downsample\.", r"stages.\1.downsample."),
    (r"\.attention\.layernorm\.", ".attn.norm."),
    (r"\.attention\.qkv\.", ".attn.qkv."),
    (r"\.attention\.projection\.", ".attn.proj."),
    (r"\.attention\.attention_bias_table$", ".attn.attention_biases"),
    (r"\.mlp\.layernorm\.", ".mlp.norm."),
    (r"\.convolution\.(weight|bias)$", r".conv.\1"),
    (r"\.batch_norm\.", ".bn."),
]
_OUR_QKV = re.compile(r"^encoder\.stages\.(\d+)\.layers\.\d+\.attention\.qkv\.(weight|bias)$")
_PAPER = "Faster Segment Anything: Towards Lightweight SAM for Mobile Applications (Zhang et al., 2023)"


def image_encoder_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The image encoder's tensors, without their `image_encoder.` prefix, and the keys left out (the
    prompt encoder's and the mask decoder's). A state dict of the encoder alone is returned as it is."""
    if not any(key.startswith(ENCODER_PREFIX) for key in state_dict):
        if any(key.startswith("patch_embed.seq.") for key in state_dict):
            return dict(state_dict), []
        raise ValueError(
            f"not a MobileSAM checkpoint: no '{ENCODER_PREFIX}*' keys and no bare Cream-layout encoder "
            f"(patch_embed.seq.*); first keys: {list(state_dict)[:5]}"
        )
    encoder = {k.removeprefix(ENCODER_PREFIX): v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    return encoder, sorted(k for k in state_dict if not k.startswith(ENCODER_PREFIX))


def mobile_sam_to_backbone_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: TinyViTConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MobileSAM (whole SAM or encoder-only) -> `TinyViTBackbone` state dict, and the keys not used.

    Cream's names go through timm's to ours (convert_tinyvit's key maps) and each qkv's rows are
    regrouped from per-head blocks to ours; the neck is renamed; Cream's unused classifier and SAM's
    other parts are reported. A qkv whose rows do not fit `config` is left as it is, for the caller's
    shape check to report with everything else that does not fit.
    """
    encoder, unused = image_encoder_state_dict(state_dict)
    converted = {}
    for key, value in encoder.items():
        if _UNUSED_ENCODER.match(key):
            unused.append(ENCODER_PREFIX + key)
        elif _DERIVED_BUFFER.search(key):
            continue
        elif key.startswith("neck."):
            prefix = key[: len("neck.0.")]
            if prefix not in _NECK_TO_OURS:
                raise ValueError(f"unknown neck tensor {ENCODER_PREFIX + key}; expected neck.0 to neck.3")
            converted[_NECK_TO_OURS[prefix] + key[len(prefix) :]] = value
        else:
            ours = timm_to_hf_key(cream_to_timm_key(key)).removeprefix("tinyvit.")
            match = _OUR_QKV.match(ours)
            if match and int(match[1]) < len(config.embed_dims):
                stage = int(match[1])
                if value.shape[0] == 3 * config.embed_dims[stage]:
                    value = qkv_heads_interleaved_to_grouped(value, config.num_heads[stage])
            converted[ours] = value
    return converted, sorted(unused)


def backbone_to_mobile_sam_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: TinyViTConfig, prefix: str = ENCODER_PREFIX
) -> dict[str, torch.Tensor]:
    """`TinyViTBackbone` state dict -> MobileSAM's image-encoder keys (the inverse map, qkv rows back in
    per-head blocks), under `prefix`; for loading our weights into MobileSAM's own code."""
    ours_to_neck = {ours: sam for sam, ours in _NECK_TO_OURS.items()}
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("neck."):
            head = key[: len("neck.conv1.")]
            converted[prefix + ours_to_neck[head] + key[len(head) :]] = value
            continue
        match = _OUR_QKV.match(key)
        if match:
            value = qkv_heads_grouped_to_interleaved(value, config.num_heads[int(match[1])])
        timm_key = key
        for pattern, replacement in _OURS_TO_TIMM:
            timm_key = re.sub(pattern, replacement, timm_key)
        converted[prefix + timm_to_cream_key(timm_key)] = value
    return converted


def mobile_sam_config(preset: str = "tinyvit-5m-mobile-sam", **overrides) -> TinyViTConfig:
    """The backbone config of a MobileSAM encoder preset; by default the backbone returns the neck's map."""
    if preset not in MOBILE_SAM_PRESETS:
        raise ValueError(f"unknown MobileSAM preset {preset!r}; choose one of {sorted(MOBILE_SAM_PRESETS)}")
    return TinyViTConfig.from_preset(preset, **{"out_features": ["neck"], **overrides})


# ---- file to folder ------------------------------------------------------------------------------------


def convert_mobile_sam(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    preset: str = "tinyvit-5m-mobile-sam",
    out_features: list[str] | None = None,
    config: TinyViTConfig | None = None,
) -> tuple[TinyViTBackbone, list[str]]:
    """Convert a MobileSAM checkpoint (`mobile_sam.pt`) into a `TinyViTBackbone` folder.

    Writes `config.json`, `model.safetensors`, SAM's image processor (`SamImageProcessor`: longest side
    to 1024, ImageNet mean/std, padding to 1024x1024) and a model card. `out_features` defaults to
    `["neck"]`, SAM's 256-channel image embedding. `config` replaces the preset (an encoder of another
    size; it must have `neck_channels`). Returns the backbone and the checkpoint keys left
    out (prompt encoder, mask decoder, the encoder's unused classifier). Raises, before writing anything,
    with every missing, unexpected or mis-shaped tensor if the checkpoint does not fit `preset`.
    """
    from transformers import SamImageProcessor

    what = f"preset {preset}" if config is None else "the given config"
    if config is None:
        config = mobile_sam_config(preset, **({"out_features": list(out_features)} if out_features else {}))
    elif out_features:
        raise ValueError("pass out_features inside config when giving a config")
    if not config.neck_channels:
        raise ValueError("a MobileSAM encoder has a neck: the config needs neck_channels (MobileSAM: 256)")
    converted, unused = mobile_sam_to_backbone_state_dict(load_state_dict(checkpoint), config)
    model = TinyViTBackbone(config).eval()
    check_state_dict(model.state_dict(), converted, f"MobileSAM checkpoint {checkpoint} for {what}")
    model.load_state_dict(converted, strict=True)

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    SamImageProcessor().save_pretrained(output_dir)
    _write_card(output_dir, config, preset, Path(checkpoint).name)
    return model, unused


def _write_card(output_dir: Path, config: TinyViTConfig, preset: str, source: str) -> None:
    # hub.write_model_card describes classifiers (its usage block runs an image-classification pipeline).
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license="apache-2.0",
        tags=["hf_tinyvit", "tinyvit", "mobile-sam", "backbone", "vision"],
        model_name=output_dir.name,
    )
    usage = (
        "```python\n"
        "from hf_tinyvit import TinyViTBackbone\n"
        "from transformers import AutoImageProcessor\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{output_dir.name}")\n'
        f'encoder = TinyViTBackbone.from_pretrained("{output_dir.name}")\n'
        "pixel_values = processor(image, return_tensors=\"pt\").pixel_values  # (1, 3, 1024, 1024)\n"
        "embedding = encoder(pixel_values).feature_maps[-1]  # (1, 256, 64, 64)\n"
        "```\n\n"
        "Without hf_tinyvit installed, `AutoBackbone.from_pretrained(repo_id, trust_remote_code=True)` loads "
        "the modeling code stored in the repository."
    )
    body = (
        f"# {output_dir.name}\n\nMobileSAM's image encoder (TinyViT `{preset}`: 1024x1024 input, last stage "
        f"kept at stride 16) as a `TinyViTBackbone`, converted from `{source}`. `feature_maps` holds "
        f"{config.out_features}; \"neck\" is SAM's 256-channel 64x64 image embedding. The prompt encoder and "
        f"mask decoder are not included.\n\n## Usage\n\n{usage}\n\nPaper: {_PAPER}.\n"
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(output_dir / "README.md")


__all__ = [
    "ENCODER_PREFIX",
    "backbone_to_mobile_sam_state_dict",
    "convert_mobile_sam",
    "image_encoder_state_dict",
    "mobile_sam_config",
    "mobile_sam_to_backbone_state_dict",
]
