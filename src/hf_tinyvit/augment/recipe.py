"""The augmentation recipe: every setting of the training (and evaluation) transform, timm's
RandAugment spec strings, the presets of the papers, and the evaluation geometry that image
processors share. A recipe's fingerprint identifies the views a teacher-logit store holds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "INTERPOLATIONS",
    "LEVEL_DENOM",
    "AugmentationRecipe",
    "MAX_IMAGE_SIZE",
    "RandAugmentSpec",
    "check_image_size",
    "eval_resize_size",
    "is_int",
    "is_real",
    "parse_rand_augment",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# Interpolation names a recipe accepts, with PIL's resampling codes for image processors.
INTERPOLATIONS = {"nearest": 0, "bilinear": 2, "bicubic": 3}
_ERASE_MODES = ("const", "rand", "pixel")
# "center" and "squash" are the deterministic evaluation transforms (see AugmentationRecipe.eval).
_CROP_MODES = ("random_resized", "center", "squash")
_EVAL_CROP_MODES = ("center", "squash")
# timm's RandAugment scale: magnitude M maps to a fraction M / 10 of each op's full range.
LEVEL_DENOM = 10.0
# Caps on counts a hostile recipe could make endless: erasing boxes per view, RandAugment layers.
_MAX_ERASE_COUNT = 64
_MAX_RAND_AUGMENT_LAYERS = 64
# The largest view side a recipe renders: 8x TinyViT's largest published resolution (512). A view of
# that size is 200 MB of float32; a recipe from a store's metadata must not ask for unbounded memory.
MAX_IMAGE_SIZE = 4096


def check_image_size(value, name: str = "image_size") -> int:
    """The one check of a view's side in pixels: an integer in [1, MAX_IMAGE_SIZE]."""
    if not (is_int(value) and 1 <= value <= MAX_IMAGE_SIZE):
        raise ValueError(f"{name}={value!r} must be an integer in [1, {MAX_IMAGE_SIZE}] (pixels)")
    return int(value)


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return numeric and math.isfinite(value)


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False


def parse_rand_augment(spec: str) -> RandAugmentSpec:
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
    return RandAugmentSpec(
        magnitude=values.get("m", LEVEL_DENOM),
        num_layers=int(values.get("n", 2)),
        prob=values.get("p", 0.5),
        # timm reads a std above 100 as "uniform in [0, magnitude]"
        magnitude_std=math.inf if mstd > 100 else mstd,
        magnitude_max=values.get("mmax", LEVEL_DENOM),
        increasing=bool(values.get("inc", 0)),
    )



@dataclass(frozen=True)
class AugmentationRecipe:
    """Every setting of the training augmentation; its fingerprint identifies a store's views.

    Pipeline (timm's ImageNet training order): random resized crop (`scale`, `ratio`,
    `interpolation`, where "random" picks bilinear or bicubic per sample) -> horizontal flip ->
    RandAugment (`auto_augment`, timm's string syntax) -> colour jitter -> float + normalise ->
    random erasing (`reprob`, `remode` const/rand/pixel, up to `recount` boxes) -> Mixup/CutMix
    between fixed partner pairs. `crop_mode="center"` / `"squash"` are the evaluation transforms
    (see `eval`), with no randomness at all.
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
            if not is_real(getattr(self, name)):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a finite number")
        for name in ("scale", "ratio", "mean", "std", "color_jitter"):
            value = getattr(self, name)
            if name == "color_jitter" and is_real(value):
                continue
            if not (isinstance(value, (tuple, list)) and all(is_real(v) for v in value)):
                raise TypeError(f"{name}={value!r} must be a list of finite numbers")
        for name in ("image_size", "recount"):
            if not is_int(getattr(self, name)):
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
        check_image_size(self.image_size)
        if self.crop_mode not in _CROP_MODES:
            raise ValueError(f"crop_mode={self.crop_mode!r} must be one of {_CROP_MODES}")
        if self.interpolation not in (*INTERPOLATIONS, "random"):
            raise ValueError(f"interpolation={self.interpolation!r} must be one of {(*INTERPOLATIONS, 'random')}")
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
            parse_rand_augment(self.auto_augment)
        if self.crop_mode in _EVAL_CROP_MODES:
            random_parts = {
                "hflip": self.hflip, "auto_augment": self.auto_augment, "color_jitter": max(jitter),
                "reprob": self.reprob, "mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha,
            }  # fmt: skip
            enabled = {k: v for k, v in random_parts.items() if v}
            if enabled:
                raise ValueError(
                    f"crop_mode={self.crop_mode!r} is the deterministic evaluation transform; turn off {enabled}"
                )

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
    def eval(
        cls,
        image_size: int = 224,
        crop_pct: float = 0.875,
        crop_mode: str = "center",
        *,
        interpolation: str = "bicubic",
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    ) -> "AugmentationRecipe":
        """The evaluation transform, the one definition that datasets and image processors share.

        `crop_mode="center"`: the shorter side resized to `floor(image_size / crop_pct)` keeping the
        aspect ratio, then a centre crop of `image_size` (timm's and facebookresearch/deit's eval
        transform). `"squash"`: both sides resized to `floor(image_size / crop_pct)`, then the
        centre crop (timm's TinyViT-512 setting). `image_processor_kwargs()` turns the result into
        transformers image-processor settings.
        """
        if crop_mode not in _EVAL_CROP_MODES:
            raise ValueError(f"crop_mode={crop_mode!r} is not an evaluation transform; accepted: {_EVAL_CROP_MODES}")
        return cls(
            image_size=image_size, crop_mode=crop_mode, crop_pct=crop_pct, interpolation=interpolation,
            hflip=0.0, auto_augment=None, reprob=0.0, mean=tuple(mean), std=tuple(std),
        )  # fmt: skip

    @classmethod
    def digits(cls, image_size: int = 32) -> "AugmentationRecipe":
        """TinyViT's recipe cut down for small grayscale glyphs such as scikit-learn's 8x8 digits.

        Milder random resized crops (scale 0.35-1) and random erasing 0.25; no flips (a mirrored 2
        is no 2) and no RandAugment: its m9 shears, rotations and posterisation on strokes two source
        pixels wide stalled a DeiT student (38% after 12 epochs against 67% without) and took half
        of the data path's time.
        """
        return cls(image_size=image_size, scale=(0.35, 1.0), hflip=0.0, auto_augment=None, reprob=0.25)

    # -- evaluation geometry ------------------------------------------------------------------

    def image_processor_kwargs(self) -> dict[str, Any]:
        """Settings of a transformers ViT/DeiT image processor that reproduce this evaluation recipe.

        The image processors of both model families are built from these, so a saved
        `preprocessor_config.json` and the evaluation views of `AugmentedDataset` resize and crop
        the same way (to within interpolation rounding: PIL and torchvision kernels differ).
        """
        if self.crop_mode not in _EVAL_CROP_MODES:
            raise ValueError(
                f"crop_mode={self.crop_mode!r} is a training transform; image processors take an evaluation "
                "recipe (AugmentationRecipe.eval)"
            )
        resize = eval_resize_size(self.image_size, self.crop_pct)
        size = {"shortest_edge": resize} if self.crop_mode == "center" else {"height": resize, "width": resize}
        return {
            "do_resize": True,
            "size": size,
            "resample": INTERPOLATIONS[self.interpolation],
            "do_center_crop": True,
            "crop_size": {"height": self.image_size, "width": self.image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }

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



def eval_resize_size(image_size: int, crop_pct: float) -> int:
    """The side an evaluation transform resizes to before its centre crop: `floor(image_size / crop_pct)`."""
    if not (is_real(crop_pct) and 0 < crop_pct <= 1):
        raise ValueError(f"crop_pct={crop_pct!r} must lie in (0, 1]")
    if not (is_int(image_size) and image_size >= 1):
        raise ValueError(f"image_size={image_size!r} must be a positive integer")
    return int(math.floor(image_size / crop_pct))
