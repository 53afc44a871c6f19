"""TinyViT's evaluation preprocessing: timm's tiny_vit settings (crop_pct 0.95 at 224; 1.0 at 384; a
'squash' resize at 512) as image-processor settings and processors. The geometry itself is
`AugmentationRecipe.eval`, the one evaluation transform that datasets and both model families share.
"""

from ...augment.recipe import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AugmentationRecipe,
)
from .image_processing_tinyvit import TinyViTImageProcessor, TinyViTImageProcessorPil

# timm's pretrained_cfg for the released tiny_vit weights: (crop_pct, crop_mode) per resolution.
REFERENCE_CROP = {224: (0.95, "center"), 384: (1.0, "center"), 512: (1.0, "squash")}
BACKENDS = {"torchvision": TinyViTImageProcessor, "pil": TinyViTImageProcessorPil}


def eval_recipe(
    image_size: int = 224,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
) -> AugmentationRecipe:
    """TinyViT's reference evaluation transform at `image_size`.

    `crop_pct`/`crop_mode` default to timm's values for 224/384/512 and to (0.95, "center") elsewhere.
    """
    default_pct, default_mode = REFERENCE_CROP.get(image_size, (0.95, "center"))
    return AugmentationRecipe.eval(
        image_size,
        default_pct if crop_pct is None else crop_pct,
        default_mode if crop_mode is None else crop_mode,
        mean=mean,
        std=std,
    )


def eval_preprocessing(image_size: int = 224, crop_pct: float | None = None, crop_mode: str | None = None) -> dict:
    """Image-processor settings that reproduce timm's eval transform for `image_size` (see `eval_recipe`).

    "center": shorter side to floor(image_size / crop_pct), then centre crop; "squash": both sides to
    floor(image_size / crop_pct), then centre crop.
    """
    return eval_recipe(image_size, crop_pct, crop_mode).image_processor_kwargs()


def tinyvit_image_processor(
    image_size: int = 224,
    backend: str = "torchvision",
    *,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    **overrides,
):
    """A transformers image processor doing TinyViT's reference evaluation preprocessing.

    `backend`: "torchvision" (tensor ops, batched) or "pil"; `overrides` replace any processor setting.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {sorted(BACKENDS)}")
    settings = eval_recipe(image_size, crop_pct, crop_mode, mean, std).image_processor_kwargs()
    return BACKENDS[backend](**{**settings, **overrides})


__all__ = ["BACKENDS", "REFERENCE_CROP", "eval_preprocessing", "eval_recipe", "tinyvit_image_processor"]
