"""TinyViT's evaluation preprocessing expressed with transformers' ViT image processors.

TinyViT needs no processor class of its own: transformers' ViT processors (torchvision and PIL
backends) do bicubic resize, centre crop and normalisation once given timm's tiny_vit settings
(crop_pct 0.95 at 224; 1.0 at 384; a 'squash' resize at 512). Saved folders therefore name a
built-in processor and load anywhere, with or without hf_tinyvit.
"""

import math

from transformers import ViTImageProcessor, ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

# timm's pretrained_cfg for the released tiny_vit weights: (crop_pct, crop_mode) per resolution.
REFERENCE_CROP = {224: (0.95, "center"), 384: (1.0, "center"), 512: (1.0, "squash")}
BACKENDS = {"torchvision": ViTImageProcessor, "pil": ViTImageProcessorPil}


def eval_preprocessing(image_size: int = 224, crop_pct: float | None = None, crop_mode: str | None = None) -> dict:
    """Image-processor settings that reproduce timm's eval transform for `image_size`.

    `crop_pct`/`crop_mode` default to the reference values for 224/384/512 and to (0.95, "center")
    elsewhere. "center": shorter side to floor(image_size / crop_pct), then centre crop;
    "squash": both sides to floor(image_size / crop_pct), then centre crop.
    """
    default_pct, default_mode = REFERENCE_CROP.get(image_size, (0.95, "center"))
    crop_pct = default_pct if crop_pct is None else crop_pct
    crop_mode = default_mode if crop_mode is None else crop_mode
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct} must be in (0, 1]")
    scale = math.floor(image_size / crop_pct)
    if crop_mode == "center":
        size = {"shortest_edge": scale}
    elif crop_mode == "squash":
        size = {"height": scale, "width": scale}
    else:
        raise ValueError(f"crop_mode={crop_mode!r}; accepted: 'center', 'squash'")
    return {
        "do_resize": True,
        "size": size,
        "resample": PILImageResampling.BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
    }


def tinyvit_image_processor(image_size: int = 224, backend: str = "torchvision", **overrides):
    """A transformers image processor doing TinyViT's reference evaluation preprocessing.

    `backend`: "torchvision" (tensor ops, batched) or "pil"; `overrides` replace any setting.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {sorted(BACKENDS)}")
    return BACKENDS[backend](**{**eval_preprocessing(image_size), **overrides})


__all__ = ["BACKENDS", "REFERENCE_CROP", "eval_preprocessing", "tinyvit_image_processor"]
