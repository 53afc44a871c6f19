"""Reference preprocessing of DeiT (ImageNet mean/std; the shorter side resized to size / 0.875 with
bicubic, keeping the aspect ratio; centre crop) as processor settings and processors; transformers' own
DeiT defaults differ (0.5/0.5 normalisation, both sides squashed to 256, a floored crop offset). The
geometry is `AugmentationRecipe.eval`, shared with datasets and TinyViT.
"""

from __future__ import annotations

from ...augment.recipe import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AugmentationRecipe,
)
from .image_processing_deit_distilled import DeiTDistilledImageProcessor, DeiTDistilledImageProcessorPil

# facebookresearch/deit evaluates with --eval-crop-ratio 0.875 at every resolution (256 -> 224, 438 -> 384);
# timm's pretrained configs say 0.9 at 224 and 1.0 at 384 instead.
REFERENCE_CROP_PCT = 0.875

# Backend name -> class, the form AutoImageProcessor.register takes.
IMAGE_PROCESSOR_CLASSES = {"torchvision": DeiTDistilledImageProcessor, "pil": DeiTDistilledImageProcessorPil}


def reference_preprocessing(
    image_size: int = 224, crop_pct: float = REFERENCE_CROP_PCT, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD
) -> dict:
    """The keyword arguments of a DeiT image processor that reproduces the reference evaluation transform."""
    return AugmentationRecipe.eval(image_size, crop_pct, mean=mean, std=std).image_processor_kwargs()


def deit_image_processor(
    image_size: int = 224,
    crop_pct: float = REFERENCE_CROP_PCT,
    backend: str = "torchvision",
    *,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
) -> DeiTDistilledImageProcessor | DeiTDistilledImageProcessorPil:
    """A DeiT image processor with the reference settings written out explicitly and the reference centre crop."""
    if backend not in IMAGE_PROCESSOR_CLASSES:
        raise ValueError(f"backend={backend!r} must be one of {sorted(IMAGE_PROCESSOR_CLASSES)}")
    return IMAGE_PROCESSOR_CLASSES[backend](**reference_preprocessing(image_size, crop_pct, mean, std))


__all__ = ["IMAGE_PROCESSOR_CLASSES", "REFERENCE_CROP_PCT", "deit_image_processor", "reference_preprocessing"]
