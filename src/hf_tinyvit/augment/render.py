"""Rendering a view: explicit augmentation parameters applied to a uint8 source image with
torchvision's functional kernels. Pure and deterministic; parameters no seed could produce are refused."""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from .recipe import AugmentationRecipe, eval_resize_size, is_int, is_real
from .sampling import LEVEL_TO_ARGUMENT, AugmentationParams, RandAugmentOp

__all__ = ["apply_augmentation", "apply_rand_augment_op", "check_params"]

_MODES = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def apply_rand_augment_op(image: torch.Tensor, name: str, argument: float | None, fill: list[float]) -> torch.Tensor:
    """Apply one op to a uint8 (3, H, W) tensor with torchvision's functional kernels.

    Geometric ops use bilinear sampling: torchvision's tensor affine kernels offer nearest and
    bilinear only, where timm's PIL ops pick bilinear or bicubic at random.
    """
    base = name.removesuffix("Increasing")
    bilinear = InterpolationMode.BILINEAR
    if base == "AutoContrast":
        return TF.autocontrast(image)
    if base == "Equalize":
        return TF.equalize(image)
    if base == "Invert":
        return TF.invert(image)
    if base == "Rotate":
        return TF.rotate(image, argument, interpolation=bilinear, fill=fill)
    if base == "Posterize":
        return image if argument >= 8 else TF.posterize(image, int(argument))
    if base == "Solarize":
        # PIL inverts pixels >= threshold; a threshold of 256 leaves the image as it is
        return image if argument >= 256 else TF.solarize(image, float(argument))
    if base == "SolarizeAdd":
        # torchvision has no "add then solarize" kernel: brighten the pixels below 128 by `argument`
        brighter = (image.to(torch.int16) + int(argument)).clamp_(max=255).to(torch.uint8)
        return torch.where(image < 128, brighter, image)
    if base == "Color":
        return TF.adjust_saturation(image, argument)
    if base == "Contrast":
        return TF.adjust_contrast(image, argument)
    if base == "Brightness":
        return TF.adjust_brightness(image, argument)
    if base == "Sharpness":
        return TF.adjust_sharpness(image, argument)
    if base in ("ShearX", "ShearY"):
        # timm shears about the top-left corner by a factor; torchvision takes an angle in degrees
        angle = math.degrees(math.atan(argument))
        shear = [angle, 0.0] if base == "ShearX" else [0.0, angle]
        return TF.affine(image, 0.0, [0.0, 0.0], 1.0, shear, interpolation=bilinear, fill=fill, center=[0.0, 0.0])
    if base in ("TranslateXRel", "TranslateYRel"):
        height, width = image.shape[-2:]
        shift = [-argument * width, 0.0] if base == "TranslateXRel" else [0.0, -argument * height]
        return TF.affine(image, 0.0, shift, 1.0, [0.0, 0.0], interpolation=bilinear, fill=fill)
    raise ValueError(f"unknown RandAugment op {name!r}; accepted: {sorted(LEVEL_TO_ARGUMENT)}")



def _check_box(box, height: int, width: int, what: str) -> None:
    if not (isinstance(box, (tuple, list)) and len(box) == 4 and all(is_int(v) for v in box)):
        raise ValueError(f"{what}={box!r} must be four integers (top, left, height, width)")
    top, left, h, w = box
    if not (h >= 1 and w >= 1 and 0 <= top and top + h <= height and 0 <= left and left + w <= width):
        raise ValueError(f"{what}={tuple(box)} does not fit a {height} x {width} image")


# Argument ranges the kernels accept; a decoded seed always lands inside them.
_ARGUMENT_RANGES = {
    "Posterize": (0, 8), "Solarize": (0, 256), "SolarizeAdd": (0, 255), "Color": (0, math.inf),
    "Contrast": (0, math.inf), "Brightness": (0, math.inf), "Sharpness": (0, math.inf),
}  # fmt: skip
_JITTER_RANGES = {
    "brightness": (0, math.inf), "contrast": (0, math.inf), "saturation": (0, math.inf), "hue": (-0.5, 0.5),
}  # fmt: skip


def check_params(params: AugmentationParams, height: int, width: int, size: int) -> None:
    """Refuse parameters that no seed decodes to (hand-made or corrupt), naming the bad field.

    Without this, torchvision would fail deep in a kernel, or silently pad a crop that lies outside
    the image, and a replay would not be the teacher's view.
    """
    if not isinstance(params, AugmentationParams):
        raise TypeError(f"params must be AugmentationParams, got {type(params).__name__}")
    if params.crop is not None:
        _check_box(params.crop, height, width, "crop")
    if params.interpolation not in _MODES:
        raise ValueError(f"interpolation={params.interpolation!r} must be one of {tuple(_MODES)}")
    if not isinstance(params.hflip, (bool, np.bool_)):
        raise ValueError(f"hflip={params.hflip!r} must be a bool")
    for op in params.ops:
        if not isinstance(op, RandAugmentOp) or op.name not in LEVEL_TO_ARGUMENT:
            raise ValueError(f"RandAugment op {op!r} is not one of {sorted(LEVEL_TO_ARGUMENT)}")
        needs_argument = LEVEL_TO_ARGUMENT[op.name] is not None
        if needs_argument != (op.argument is not None) or (needs_argument and not is_real(op.argument)):
            takes = "a finite number" if needs_argument else "none"
            raise ValueError(f"op {op.name} has argument={op.argument!r}; it takes {takes}")
        low, high = _ARGUMENT_RANGES.get(op.name.removesuffix("Increasing"), (-math.inf, math.inf))
        if needs_argument and not low <= op.argument <= high:
            raise ValueError(f"op {op.name} has argument={op.argument}; accepted: [{low}, {high}]")
    for entry in params.color_jitter:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and entry[0] in _JITTER_RANGES):
            raise ValueError(
                f"color_jitter entry {entry!r} must be (name, factor) with a name in {tuple(_JITTER_RANGES)}"
            )
        low, high = _JITTER_RANGES[entry[0]]
        if not (is_real(entry[1]) and low <= entry[1] <= high):
            raise ValueError(f"color_jitter {entry[0]}={entry[1]!r}; accepted: [{low}, {high}]")
    for box in params.erase_boxes:
        _check_box(box, size, size, "erase box")
    if not (is_int(params.erase_seed) and 0 <= params.erase_seed < 2**63):
        raise ValueError(f"erase_seed={params.erase_seed!r} must be an integer in [0, 2**63)")



def apply_augmentation(image: torch.Tensor, params: AugmentationParams, recipe: AugmentationRecipe) -> torch.Tensor:
    """Render one view: uint8 (3, H, W) source -> normalised float32 (3, S, S). Pure and deterministic."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    size = recipe.image_size
    check_params(params, image.shape[1], image.shape[2], size)
    mode = _MODES[params.interpolation]
    if params.crop is None:  # the evaluation transform of AugmentationRecipe.eval
        resize = eval_resize_size(size, recipe.crop_pct)
        # a single int resizes the shorter side keeping the aspect ratio; a pair squashes both sides
        target = [resize] if recipe.crop_mode != "squash" else [resize, resize]
        image = TF.resize(image, target, interpolation=mode, antialias=True)
        image = TF.center_crop(image, [size, size])
    else:
        top, left, h, w = params.crop
        image = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
    if params.hflip:
        image = TF.horizontal_flip(image)
    if params.ops:
        fill = recipe._fill()
        for op in params.ops:
            image = apply_rand_augment_op(image, op.name, op.argument, fill)
    for name, factor in params.color_jitter:
        adjust = {
            "brightness": TF.adjust_brightness,
            "contrast": TF.adjust_contrast,
            "saturation": TF.adjust_saturation,
            "hue": TF.adjust_hue,
        }[name]
        image = adjust(image, factor)
    pixels = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(recipe.mean), list(recipe.std))
    if params.erase_boxes:
        noise = torch.Generator().manual_seed(params.erase_seed)
        for top, left, h, w in params.erase_boxes:
            if recipe.remode == "pixel":
                value = torch.randn((3, h, w), generator=noise)
            elif recipe.remode == "rand":
                value = torch.randn((3, 1, 1), generator=noise)
            else:
                value = torch.zeros((3, 1, 1))
            pixels = TF.erase(pixels, top, left, h, w, value)
    return pixels

