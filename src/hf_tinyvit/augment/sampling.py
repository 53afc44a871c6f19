"""Augmentation parameters sampled from a per-record seed: pure functions of (recipe, seed, source
size), so a 4-byte seed rebuilds the exact view a teacher saw, in any process, on any machine."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .recipe import (
    LEVEL_DENOM,
    AugmentationRecipe,
    RandAugmentSpec,
    is_int,
    parse_rand_augment,
)

__all__ = [
    "LEVEL_TO_ARGUMENT",
    "OPS_INCREASING",
    "OPS_PLAIN",
    "AugmentationParams",
    "RandAugmentOp",
    "augmentation_seed",
    "decode_augmentation",
    "rand_augment_op_names",
    "sample_augmentation",
    "seed_from",
]


def seed_from(*parts: int | str) -> int:
    """A uint32 seed from a tuple of integers and tags, stable across processes, platforms and runs.

    Python's `hash` is salted per process and so cannot be used; blake2b is fast and well mixed.
    """
    payload = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=4).digest(), "little")


def augmentation_seed(seed: int, epoch: int, sample_id: int) -> int:
    """The per-record uint32 seed that the store keeps as the augmentation encoding."""
    return seed_from("aug", int(seed), int(epoch), int(sample_id))


# ---- RandAugment ops, with timm's magnitude-to-argument rules --------------------------------------


def _signed(value: float, negate: bool) -> float:
    return -value if negate else value


# name -> function(level, negate) returning the op's argument, or None for argument-free ops
LEVEL_TO_ARGUMENT = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": lambda level, neg: _signed(level / LEVEL_DENOM * 30.0, neg),
    "Posterize": lambda level, neg: int(level / LEVEL_DENOM * 4),
    "PosterizeIncreasing": lambda level, neg: 4 - int(level / LEVEL_DENOM * 4),
    "Solarize": lambda level, neg: min(256, int(level / LEVEL_DENOM * 256)),
    "SolarizeIncreasing": lambda level, neg: 256 - min(256, int(level / LEVEL_DENOM * 256)),
    "SolarizeAdd": lambda level, neg: min(128, int(level / LEVEL_DENOM * 110)),
    "ShearX": lambda level, neg: _signed(level / LEVEL_DENOM * 0.3, neg),
    "ShearY": lambda level, neg: _signed(level / LEVEL_DENOM * 0.3, neg),
    "TranslateXRel": lambda level, neg: _signed(level / LEVEL_DENOM * 0.45, neg),
    "TranslateYRel": lambda level, neg: _signed(level / LEVEL_DENOM * 0.45, neg),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    LEVEL_TO_ARGUMENT[_name] = lambda level, neg: level / LEVEL_DENOM * 1.8 + 0.1
    # "increasing" variants move away from the identity factor 1.0 as the magnitude grows
    LEVEL_TO_ARGUMENT[_name + "Increasing"] = lambda level, neg: max(
        0.1, 1.0 + _signed(level / LEVEL_DENOM * 0.9, neg)
    )
del _name

OPS_PLAIN = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
OPS_INCREASING = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


def rand_augment_op_names(auto_augment: str) -> tuple[str, ...]:
    """The ops RandAugment chooses from for a timm config string (the `inc1` set or the plain one)."""
    return OPS_INCREASING if parse_rand_augment(auto_augment).increasing else OPS_PLAIN



@dataclass(frozen=True)
class RandAugmentOp:
    name: str
    magnitude: float
    argument: float | None


@dataclass(frozen=True)
class AugmentationParams:
    """The explicit parameters of one view; `sample_augmentation` derives them from a uint32 seed."""

    crop: tuple[int, int, int, int] | None  # (top, left, height, width) in source pixels; None = evaluation crop
    interpolation: str
    hflip: bool = False
    ops: tuple[RandAugmentOp, ...] = ()  # the RandAugment ops that fired, in order
    color_jitter: tuple[tuple[str, float], ...] = ()  # (adjustment, factor) in application order
    erase_boxes: tuple[tuple[int, int, int, int], ...] = ()  # (top, left, height, width) in output pixels
    erase_seed: int = 0  # seeds the erasing noise (modes rand and pixel)


class _Uniforms:
    """Hands out uniforms drawn from a seeded torch.Generator in blocks.

    One call per block rather than per number: torch's per-call overhead would dominate the
    few dozen numbers a view needs.
    """

    def __init__(self, seed: int, block: int = 64):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.block = block
        self.values: list[float] = []
        self.normals: list[float] = []

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        if not self.values:
            self.values = torch.rand(self.block, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return low + (high - low) * self.values.pop()

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high], both included."""
        return min(high, low + int(self.uniform() * (high - low + 1)))

    def normal(self, mean: float, std: float) -> float:
        if not self.normals:
            self.normals = torch.randn(8, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return mean + std * self.normals.pop()



def _random_resized_crop(draws: _Uniforms, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = draws.uniform(*scale) * area
        aspect = math.exp(draws.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return draws.integer(0, height - h), draws.integer(0, width - w), h, w
    # same fallback as torchvision/timm: the largest centred crop within the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _sample_rand_augment(draws: _Uniforms, spec: RandAugmentSpec, names: tuple[str, ...]) -> tuple[RandAugmentOp, ...]:
    fired = []
    for _ in range(spec.num_layers):
        name = names[draws.integer(0, len(names) - 1)]  # with replacement, as timm's RandAugment
        applies = draws.uniform() <= spec.prob
        magnitude = spec.magnitude
        if spec.magnitude_std == math.inf:
            magnitude = draws.uniform(0.0, magnitude)
        elif spec.magnitude_std > 0:
            magnitude = draws.normal(magnitude, spec.magnitude_std)
        magnitude = max(0.0, min(magnitude, spec.magnitude_max))
        negate = draws.uniform() > 0.5
        if applies:
            level_fn = LEVEL_TO_ARGUMENT[name]
            fired.append(RandAugmentOp(name, magnitude, None if level_fn is None else level_fn(magnitude, negate)))
    return tuple(fired)


def _sample_color_jitter(draws: _Uniforms, ranges: tuple[float, ...]) -> tuple[tuple[str, float], ...]:
    names = ("brightness", "contrast", "saturation", "hue")
    factors = []
    for name, amount in zip(names, ranges):
        if amount <= 0:
            continue
        factor = draws.uniform(-amount, amount) if name == "hue" else draws.uniform(max(0.0, 1 - amount), 1 + amount)
        factors.append((name, factor))
    # torchvision's ColorJitter applies its adjustments in a random order
    keys = [draws.uniform() for _ in factors]
    return tuple(f for _, f in sorted(zip(keys, factors), key=lambda pair: pair[0]))


def _sample_erasing(draws: _Uniforms, recipe: AugmentationRecipe) -> tuple[tuple[int, int, int, int], ...]:
    if draws.uniform() >= recipe.reprob:
        return ()
    size = recipe.image_size
    area = size * size
    count = draws.integer(1, recipe.recount)
    log_aspect = (math.log(0.3), math.log(1 / 0.3))  # timm's defaults: area 2%..33%, aspect 0.3..3.3
    boxes = []
    for _ in range(count):
        for _ in range(10):
            target_area = draws.uniform(0.02, 1 / 3) * area / count
            aspect = math.exp(draws.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < w < size and 0 < h < size:
                boxes.append((draws.integer(0, size - h), draws.integer(0, size - w), h, w))
                break
    return tuple(boxes)



def sample_augmentation(recipe: AugmentationRecipe, aug_seed: int, height: int, width: int) -> AugmentationParams:
    """Draw the parameters of one view of a `height` x `width` source image from its uint32 seed.

    Pure: the same recipe, seed and source size give the same parameters in any process.
    """
    if not (is_int(aug_seed) and 0 <= aug_seed < 2**32):
        raise ValueError(f"aug_seed={aug_seed!r} must be an integer in [0, 2**32)")
    if not (is_int(height) and is_int(width) and height >= 1 and width >= 1):
        raise ValueError(f"source size {height!r} x {width!r} must be positive integers")
    if recipe.crop_mode != "random_resized":  # the evaluation transforms draw nothing
        return AugmentationParams(crop=None, interpolation=recipe.interpolation)
    draws = _Uniforms(aug_seed)
    crop = _random_resized_crop(draws, height, width, recipe.scale, recipe.ratio)
    interpolation = recipe.interpolation
    if interpolation == "random":
        interpolation = "bilinear" if draws.uniform() < 0.5 else "bicubic"
    hflip = draws.uniform() < recipe.hflip
    ops: tuple[RandAugmentOp, ...] = ()
    if recipe.auto_augment:
        ops = _sample_rand_augment(
            draws, parse_rand_augment(recipe.auto_augment), rand_augment_op_names(recipe.auto_augment)
        )
    jitter = _sample_color_jitter(draws, recipe._jitter_ranges())
    boxes = _sample_erasing(draws, recipe) if recipe.reprob > 0 else ()
    erase_seed = int(draws.uniform() * 2**32) if boxes and recipe.remode != "const" else 0
    return AugmentationParams(crop, interpolation, hflip, ops, jitter, boxes, erase_seed)


def decode_augmentation(recipe: AugmentationRecipe, aug_seed: int, height: int, width: int) -> AugmentationParams:
    """Decode a stored per-record seed into the explicit parameters of its view, for inspection."""
    return sample_augmentation(recipe, aug_seed, height, width)

