"""Replayable augmentation: the recipe (`recipe`), parameters sampled from a per-record seed
(`sampling`), rendering them into pixels (`render`), Mixup/CutMix between fixed pairs (`mix`), and the
rendered views as torch datasets (`views`)."""

from .mix import (
    MixParams,
    mix_images,
    mix_labels,
    mix_partners,
    pairing_order,
    sample_mix,
)
from .recipe import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    AugmentationRecipe,
    eval_resize_size,
)
from .render import apply_augmentation
from .sampling import (
    AugmentationParams,
    RandAugmentOp,
    augmentation_seed,
    decode_augmentation,
    rand_augment_op_names,
    sample_augmentation,
)

# The torch datasets read images through hf_tinyvit.datasets (and so the `datasets` library): imported on
# first use, so that the recipe can serve the image processors without loading the data stack.
_VIEWS = ("AugmentedDataset", "DistillationDataset", "PairedSampler", "ViewCache", "collate_views")


def __getattr__(name: str):
    if name in _VIEWS:
        from . import views

        return getattr(views, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentedDataset",
    "DistillationDataset",
    "PairedSampler",
    "ViewCache",
    "collate_views",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "AugmentationParams",
    "AugmentationRecipe",
    "MixParams",
    "RandAugmentOp",
    "apply_augmentation",
    "augmentation_seed",
    "decode_augmentation",
    "eval_resize_size",
    "mix_images",
    "mix_labels",
    "mix_partners",
    "pairing_order",
    "rand_augment_op_names",
    "sample_augmentation",
    "sample_mix",
]
