"""Reference preprocessing of DeiT (ImageNet mean/std, bicubic resize to size / 0.875, centre crop) as
stock transformers DeiT image processors, whose own default normalisation is 0.5/0.5."""

from __future__ import annotations

from transformers import DeiTImageProcessor, DeiTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

# facebookresearch/deit evaluates with --eval-crop-ratio 0.875 at every resolution (256 -> 224, 438 -> 384);
# timm's pretrained configs say 0.9 at 224 and 1.0 at 384 instead.
REFERENCE_CROP_PCT = 0.875

# Backend name -> stock class, the form AutoImageProcessor.register takes.
IMAGE_PROCESSOR_CLASSES = {"torchvision": DeiTImageProcessor, "pil": DeiTImageProcessorPil}


def reference_preprocessing(image_size: int = 224, crop_pct: float = REFERENCE_CROP_PCT) -> dict:
    """The keyword arguments of a DeiT image processor that reproduces the reference evaluation transform."""
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be >= 1")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct} must lie in (0, 1]")
    resize = int(image_size / crop_pct)
    return {
        "do_resize": True,
        "size": {"height": resize, "width": resize},
        "resample": PILImageResampling.BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_std": list(IMAGENET_DEFAULT_STD),
    }


def deit_image_processor(
    image_size: int = 224, crop_pct: float = REFERENCE_CROP_PCT, backend: str = "torchvision"
) -> DeiTImageProcessor | DeiTImageProcessorPil:
    """A stock transformers DeiT image processor with the reference settings written out explicitly, so
    that its saved `preprocessor_config.json` means the same thing to any transformers install."""
    if backend not in IMAGE_PROCESSOR_CLASSES:
        raise ValueError(f"backend={backend!r} must be one of {sorted(IMAGE_PROCESSOR_CLASSES)}")
    return IMAGE_PROCESSOR_CLASSES[backend](**reference_preprocessing(image_size, crop_pct))


__all__ = ["IMAGE_PROCESSOR_CLASSES", "REFERENCE_CROP_PCT", "deit_image_processor", "reference_preprocessing"]
