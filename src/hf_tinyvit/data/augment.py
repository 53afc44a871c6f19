"""Replayable training augmentation: every random choice is drawn from a generator seeded by
`(seed, epoch, sample_id)`, so a 4-byte per-record seed rebuilds the exact view a teacher saw."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

__all__ = [
    "AugmentationRecipe",
    "AugmentationParams",
    "RandAugmentOp",
    "MixParams",
    "augmentation_seed",
    "sample_augmentation",
    "apply_augmentation",
    "decode_augmentation",
    "mix_partners",
    "pairing_order",
    "sample_mix",
    "mix_images",
    "mix_labels",
    "rand_augment_op_names",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
_ERASE_MODES = ("const", "rand", "pixel")
_CROP_MODES = ("random_resized", "center")
# timm's RandAugment scale: magnitude M maps to a fraction M / 10 of each op's full range.
_LEVEL_DENOM = 10.0
# Caps on counts a hostile recipe could make endless: erasing boxes per view, RandAugment layers.
_MAX_ERASE_COUNT = 64
_MAX_RAND_AUGMENT_LAYERS = 64


def _seed_from(*parts: int | str) -> int:
    """A uint32 seed from a tuple of integers and tags, stable across processes, platforms and runs.

    Python's `hash` is salted per process and so cannot be used; blake2b is fast and well mixed.
    """
    payload = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=4).digest(), "little")


def augmentation_seed(seed: int, epoch: int, sample_id: int) -> int:
    """The per-record uint32 seed that the store keeps as the augmentation encoding."""
    return _seed_from("aug", int(seed), int(epoch), int(sample_id))


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False


def _parse_rand_augment(spec: str) -> _RandAugmentSpec:
    """Parse timm's RandAugment string, e.g. `rand-m9-mstd0.5-inc1` (sections m, n, p, mstd, mmax, inc)."""
    sections = spec.split("-")
    if sections[0] != "rand":
        raise ValueError(f"auto_augment={spec!r} is not supported: only RandAugment strings 'rand-...' are")
    values: dict[str, Any] = {}
    for section in sections[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)([\d.]+)", section)
        if match is None:
            raise ValueError(
                f"auto_augment={spec!r}: unknown section {section!r}; accepted: m<int>, n<int>, p<float>, "
                "mstd<float>, mmax<int>, inc<0|1>"
            )
        key, value = match.groups()
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"auto_augment={spec!r}: section {section!r} does not hold a number") from None
    if not 0 <= values.get("n", 2) <= _MAX_RAND_AUGMENT_LAYERS or values.get("n", 2) != int(values.get("n", 2)):
        raise ValueError(f"auto_augment={spec!r}: n must be an integer in [0, {_MAX_RAND_AUGMENT_LAYERS}]")
    mstd = values.get("mstd", 0.0)
    return _RandAugmentSpec(
        magnitude=values.get("m", _LEVEL_DENOM),
        num_layers=int(values.get("n", 2)),
        prob=values.get("p", 0.5),
        # timm reads a std above 100 as "uniform in [0, magnitude]"
        magnitude_std=math.inf if mstd > 100 else mstd,
        magnitude_max=values.get("mmax", _LEVEL_DENOM),
        increasing=bool(values.get("inc", 0)),
    )


@dataclass(frozen=True)
class AugmentationRecipe:
    """Every setting of the training augmentation; its fingerprint identifies a store's views.

    Pipeline (timm's ImageNet training order): random resized crop (`scale`, `ratio`,
    `interpolation`, where "random" picks bilinear or bicubic per sample) -> horizontal flip ->
    RandAugment (`auto_augment`, timm's string syntax) -> colour jitter -> float + normalise ->
    random erasing (`reprob`, `remode` const/rand/pixel, up to `recount` boxes) -> Mixup/CutMix
    between fixed partner pairs. `crop_mode="center"` is the evaluation transform: resize to
    `image_size / crop_pct` and centre-crop, with no randomness at all.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bicubic"
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float | tuple[float, ...] = 0.0
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_mode: str = "random_resized"
    crop_pct: float = 0.875

    def __post_init__(self):
        # Recipes also arrive as JSON from a store's metadata: check types before any arithmetic on them.
        for name in ("hflip", "reprob", "mixup_alpha", "cutmix_alpha", "mixup_prob", "switch_prob", "crop_pct"):
            if not _is_real(getattr(self, name)):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a finite number")
        for name in ("scale", "ratio", "mean", "std", "color_jitter"):
            value = getattr(self, name)
            if name == "color_jitter" and _is_real(value):
                continue
            if not (isinstance(value, (tuple, list)) and all(_is_real(v) for v in value)):
                raise TypeError(f"{name}={value!r} must be a list of finite numbers")
        for name in ("image_size", "recount"):
            if not _is_int(getattr(self, name)):
                raise TypeError(f"{name}={getattr(self, name)!r} must be an integer")
        for name in ("interpolation", "remode", "crop_mode"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a string")
        if self.auto_augment is not None and not isinstance(self.auto_augment, str):
            raise TypeError(
                f"auto_augment={self.auto_augment!r} must be a RandAugment string such as 'rand-m9-mstd0.5' or None"
            )
        # JSON round trips turn tuples into lists; normalise so equal recipes compare and hash equal.
        for name in ("scale", "ratio", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not isinstance(self.color_jitter, (int, float)):
            object.__setattr__(self, "color_jitter", tuple(float(v) for v in self.color_jitter))
        if int(self.image_size) != self.image_size or self.image_size < 1:
            raise ValueError(f"image_size={self.image_size} must be a positive integer")
        if self.crop_mode not in _CROP_MODES:
            raise ValueError(f"crop_mode={self.crop_mode!r} must be one of {_CROP_MODES}")
        if self.interpolation not in (*_INTERPOLATIONS, "random"):
            raise ValueError(f"interpolation={self.interpolation!r} must be one of {(*_INTERPOLATIONS, 'random')}")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale={self.scale} must be (low, high) with 0 < low <= high <= 1")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio={self.ratio} must be (low, high) with 0 < low <= high")
        for name in ("hflip", "reprob", "mixup_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.remode not in _ERASE_MODES:
            raise ValueError(f"remode={self.remode!r} must be one of {_ERASE_MODES}")
        if not 1 <= self.recount <= _MAX_ERASE_COUNT:
            raise ValueError(f"recount={self.recount} must lie in [1, {_MAX_ERASE_COUNT}]")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha={self.mixup_alpha} and cutmix_alpha={self.cutmix_alpha} must be >= 0")
        jitter = self._jitter_ranges()
        if any(v < 0 for v in jitter) or (len(jitter) == 4 and jitter[3] > 0.5):
            raise ValueError(f"color_jitter={self.color_jitter} must be >= 0 (hue <= 0.5), as 1, 3 or 4 values")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean={self.mean} and std={self.std} must hold 3 values, std > 0")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct} must lie in (0, 1]")
        if self.auto_augment:
            _parse_rand_augment(self.auto_augment)
        if self.crop_mode == "center":
            random_parts = {
                "hflip": self.hflip, "auto_augment": self.auto_augment, "color_jitter": max(jitter),
                "reprob": self.reprob, "mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha,
            }  # fmt: skip
            enabled = {k: v for k, v in random_parts.items() if v}
            if enabled:
                raise ValueError(f"crop_mode='center' is the deterministic evaluation transform; turn off {enabled}")

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def tinyvit_pretrain(cls, image_size: int = 224) -> "AugmentationRecipe":
        """TinyViT's ImageNet-21k distillation recipe: RandAugment m9 mstd0.5, erasing 0.25, no Mixup/CutMix.

        Colour jitter is off because timm disables it whenever RandAugment is on.
        """
        return cls(image_size=image_size)

    @classmethod
    def deit(cls, image_size: int = 224) -> "AugmentationRecipe":
        """DeiT's recipe: RandAugment m9 mstd0.5, erasing 0.25, Mixup 0.8 and CutMix 1.0 (switch 0.5).

        DeiT passes colour jitter 0.3, which timm ignores when RandAugment is on; so does this preset.
        """
        return cls(image_size=image_size, mixup_alpha=0.8, cutmix_alpha=1.0)

    @classmethod
    def eval(cls, image_size: int = 224) -> "AugmentationRecipe":
        """Evaluation transform: resize to image_size / 0.875 and centre-crop; no randomness."""
        return cls(
            image_size=image_size, crop_mode="center", hflip=0.0, auto_augment=None, reprob=0.0, interpolation="bicubic"
        )

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentationRecipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; accepted: {sorted(known)}")
        return cls(**values)

    def fingerprint(self) -> str:
        """A short stable hash of the recipe (its JSON with sorted keys)."""
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    # -- derived ------------------------------------------------------------------------------

    @property
    def mixes(self) -> bool:
        """Whether Mixup or CutMix can touch a sample, which makes samples come in partner pairs."""
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _jitter_ranges(self) -> tuple[float, ...]:
        if isinstance(self.color_jitter, (int, float)):
            return (float(self.color_jitter),) * 3
        if len(self.color_jitter) not in (3, 4):
            raise ValueError(f"color_jitter={self.color_jitter} must be one value or 3 or 4 values")
        return tuple(self.color_jitter)

    def _fill(self) -> list[float]:
        # timm fills the corners uncovered by geometric ops with the dataset mean in 0..255
        return [float(min(255, round(255 * m))) for m in self.mean]


# ---------------------------------------------------------------------------------------------
# RandAugment ops, with timm's magnitude-to-argument rules
# ---------------------------------------------------------------------------------------------


def _signed(value: float, negate: bool) -> float:
    return -value if negate else value


# name -> function(level, negate) returning the op's argument, or None for argument-free ops
_LEVEL_TO_ARGUMENT = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": lambda level, neg: _signed(level / _LEVEL_DENOM * 30.0, neg),
    "Posterize": lambda level, neg: int(level / _LEVEL_DENOM * 4),
    "PosterizeIncreasing": lambda level, neg: 4 - int(level / _LEVEL_DENOM * 4),
    "Solarize": lambda level, neg: min(256, int(level / _LEVEL_DENOM * 256)),
    "SolarizeIncreasing": lambda level, neg: 256 - min(256, int(level / _LEVEL_DENOM * 256)),
    "SolarizeAdd": lambda level, neg: min(128, int(level / _LEVEL_DENOM * 110)),
    "ShearX": lambda level, neg: _signed(level / _LEVEL_DENOM * 0.3, neg),
    "ShearY": lambda level, neg: _signed(level / _LEVEL_DENOM * 0.3, neg),
    "TranslateXRel": lambda level, neg: _signed(level / _LEVEL_DENOM * 0.45, neg),
    "TranslateYRel": lambda level, neg: _signed(level / _LEVEL_DENOM * 0.45, neg),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    _LEVEL_TO_ARGUMENT[_name] = lambda level, neg: level / _LEVEL_DENOM * 1.8 + 0.1
    # "increasing" variants move away from the identity factor 1.0 as the magnitude grows
    _LEVEL_TO_ARGUMENT[_name + "Increasing"] = lambda level, neg: max(
        0.1, 1.0 + _signed(level / _LEVEL_DENOM * 0.9, neg)
    )
del _name

_OPS_PLAIN = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
_OPS_INCREASING = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


def rand_augment_op_names(auto_augment: str) -> tuple[str, ...]:
    """The ops RandAugment chooses from for a timm config string (the `inc1` set or the plain one)."""
    return _OPS_INCREASING if _parse_rand_augment(auto_augment).increasing else _OPS_PLAIN


def _apply_rand_augment_op(image: torch.Tensor, name: str, argument: float | None, fill: list[float]) -> torch.Tensor:
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
    raise ValueError(f"unknown RandAugment op {name!r}; accepted: {sorted(_LEVEL_TO_ARGUMENT)}")


# ---------------------------------------------------------------------------------------------
# Parameters: sampled from the seed, then applied by a pure function
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandAugmentOp:
    name: str
    magnitude: float
    argument: float | None


@dataclass(frozen=True)
class AugmentationParams:
    """The explicit parameters of one view; `sample_augmentation` derives them from a uint32 seed."""

    crop: tuple[int, int, int, int] | None  # (top, left, height, width) in source pixels; None = centre crop
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


def _sample_rand_augment(draws: _Uniforms, spec: _RandAugmentSpec, names: tuple[str, ...]) -> tuple[RandAugmentOp, ...]:
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
            level_fn = _LEVEL_TO_ARGUMENT[name]
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


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return numeric and math.isfinite(value)


def _check_box(box, height: int, width: int, what: str) -> None:
    if not (isinstance(box, (tuple, list)) and len(box) == 4 and all(_is_int(v) for v in box)):
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


def _check_params(params: AugmentationParams, height: int, width: int, size: int) -> None:
    """Refuse parameters that no seed decodes to (hand-made or corrupt), naming the bad field.

    Without this, torchvision would fail deep in a kernel, or silently pad a crop that lies outside
    the image, and a replay would not be the teacher's view.
    """
    if not isinstance(params, AugmentationParams):
        raise TypeError(f"params must be AugmentationParams, got {type(params).__name__}")
    if params.crop is not None:
        _check_box(params.crop, height, width, "crop")
    if params.interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation={params.interpolation!r} must be one of {tuple(_INTERPOLATIONS)}")
    if not isinstance(params.hflip, (bool, np.bool_)):
        raise ValueError(f"hflip={params.hflip!r} must be a bool")
    for op in params.ops:
        if not isinstance(op, RandAugmentOp) or op.name not in _LEVEL_TO_ARGUMENT:
            raise ValueError(f"RandAugment op {op!r} is not one of {sorted(_LEVEL_TO_ARGUMENT)}")
        needs_argument = _LEVEL_TO_ARGUMENT[op.name] is not None
        if needs_argument != (op.argument is not None) or (needs_argument and not _is_real(op.argument)):
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
        if not (_is_real(entry[1]) and low <= entry[1] <= high):
            raise ValueError(f"color_jitter {entry[0]}={entry[1]!r}; accepted: [{low}, {high}]")
    for box in params.erase_boxes:
        _check_box(box, size, size, "erase box")
    if not (_is_int(params.erase_seed) and 0 <= params.erase_seed < 2**63):
        raise ValueError(f"erase_seed={params.erase_seed!r} must be an integer in [0, 2**63)")


def sample_augmentation(recipe: AugmentationRecipe, aug_seed: int, height: int, width: int) -> AugmentationParams:
    """Draw the parameters of one view of a `height` x `width` source image from its uint32 seed.

    Pure: the same recipe, seed and source size give the same parameters in any process.
    """
    if not (_is_int(aug_seed) and 0 <= aug_seed < 2**32):
        raise ValueError(f"aug_seed={aug_seed!r} must be an integer in [0, 2**32)")
    if not (_is_int(height) and _is_int(width) and height >= 1 and width >= 1):
        raise ValueError(f"source size {height!r} x {width!r} must be positive integers")
    if recipe.crop_mode == "center":
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
            draws, _parse_rand_augment(recipe.auto_augment), rand_augment_op_names(recipe.auto_augment)
        )
    jitter = _sample_color_jitter(draws, recipe._jitter_ranges())
    boxes = _sample_erasing(draws, recipe) if recipe.reprob > 0 else ()
    erase_seed = int(draws.uniform() * 2**32) if boxes and recipe.remode != "const" else 0
    return AugmentationParams(crop, interpolation, hflip, ops, jitter, boxes, erase_seed)


def decode_augmentation(recipe: AugmentationRecipe, aug_seed: int, height: int, width: int) -> AugmentationParams:
    """Decode a stored per-record seed into the explicit parameters of its view, for inspection."""
    return sample_augmentation(recipe, aug_seed, height, width)


def apply_augmentation(image: torch.Tensor, params: AugmentationParams, recipe: AugmentationRecipe) -> torch.Tensor:
    """Render one view: uint8 (3, H, W) source -> normalised float32 (3, S, S). Pure and deterministic."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    size = recipe.image_size
    _check_params(params, image.shape[1], image.shape[2], size)
    mode = _INTERPOLATIONS[params.interpolation]
    if params.crop is None:
        image = TF.resize(image, [int(math.floor(size / recipe.crop_pct))], interpolation=mode, antialias=True)
        image = TF.center_crop(image, [size, size])
    else:
        top, left, h, w = params.crop
        image = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
    if params.hflip:
        image = TF.horizontal_flip(image)
    if params.ops:
        fill = recipe._fill()
        for op in params.ops:
            image = _apply_rand_augment_op(image, op.name, op.argument, fill)
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


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix between fixed partner pairs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixParams:
    """How a sample is mixed with its partner; both members of a pair share `mode`, `lam` and `box`."""

    partner: int
    mode: str  # "mixup" or "cutmix"
    lam: float  # weight of the sample's own image and label
    box: tuple[int, int, int, int] | None = field(default=None)  # cutmix: (top, left, h, w) taken from the partner


def pairing_order(recipe: AugmentationRecipe, seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """Sample ids in the epoch's pairing order: positions (0, 1), (2, 3), ... are Mixup/CutMix partners.

    Without mixing it is simply 0..n-1. A seeded permutation makes the pairs independent of
    batch composition, process count and sampler order; an odd last sample stays unmixed.
    """
    if not recipe.mixes:
        return np.arange(num_samples, dtype=np.int64)
    generator = torch.Generator().manual_seed(_seed_from("pairs", int(seed), int(epoch)))
    return torch.randperm(num_samples, generator=generator).numpy().astype(np.int64)


def mix_partners(recipe: AugmentationRecipe, seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """`partner[sample_id]`: the sample it is mixed with this epoch, or -1 when unpaired or not mixing."""
    partner = np.full(num_samples, -1, dtype=np.int64)
    if recipe.mixes:
        order = pairing_order(recipe, seed, epoch, num_samples)
        paired = num_samples - num_samples % 2
        partner[order[0:paired:2]] = order[1:paired:2]
        partner[order[1:paired:2]] = order[0:paired:2]
    return partner


def sample_mix(recipe: AugmentationRecipe, seed: int, epoch: int, sample_id: int, partner: int) -> MixParams | None:
    """Draw the Mixup/CutMix parameters of a pair, identical for both members; None = left unmixed."""
    if partner < 0 or not recipe.mixes:
        return None
    first, second = sorted((int(sample_id), int(partner)))
    # torch has no seeded Beta sampler; a numpy Generator is just as explicit and local.
    rng = np.random.Generator(np.random.PCG64(_seed_from("mix", int(seed), int(epoch), first, second)))
    if rng.uniform() >= recipe.mixup_prob:
        return None
    if recipe.mixup_alpha > 0 and recipe.cutmix_alpha > 0:
        cutmix = rng.uniform() < recipe.switch_prob
    else:
        cutmix = recipe.cutmix_alpha > 0
    alpha = recipe.cutmix_alpha if cutmix else recipe.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not cutmix:
        return MixParams(int(partner), "mixup", lam)
    size = recipe.image_size
    cut = int(size * math.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(0, size)), int(rng.integers(0, size))
    top, bottom = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    left, right = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    # timm's correct_lam: the label weight is the area actually kept, after clipping the box
    lam = 1.0 - (bottom - top) * (right - left) / float(size * size)
    return MixParams(int(partner), "cutmix", lam, (top, left, bottom - top, right - left))


def mix_images(own: torch.Tensor, partner: torch.Tensor, mix: MixParams) -> torch.Tensor:
    if mix.mode == "mixup":
        return own * mix.lam + partner * (1.0 - mix.lam)
    top, left, h, w = mix.box
    mixed = own.clone()
    mixed[:, top : top + h, left : left + w] = partner[:, top : top + h, left : left + w]
    return mixed


def mix_labels(own: int, partner: int, mix: MixParams, num_labels: int) -> torch.Tensor:
    target = torch.zeros(num_labels, dtype=torch.float32)
    target[int(partner)] += 1.0 - mix.lam
    target[int(own)] += mix.lam
    return target
