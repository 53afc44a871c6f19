"""Evaluation preprocessing of both families against the reference, timm's
`create_transform(**resolve_data_config(...))` for the same model (what Cream's TinyViT and
facebookresearch/deit evaluate with), on real non-square photos: both image-processor backends and the
evaluation views of `AugmentedDataset`, all built from `AugmentationRecipe.eval`.

Differences are measured in 8-bit pixel levels (|difference after normalisation| x std x 255)."""

import pytest
import torch
from PIL import Image

from hf_tinyvit.augment.recipe import AugmentationRecipe
from hf_tinyvit.augment.views import AugmentedDataset
from hf_tinyvit.models.deit_distilled import deit_image_processor
from hf_tinyvit.models.tinyvit import tinyvit_image_processor

timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

# 400x600, 300x451 and 427x640: three aspect ratios, odd and even sides.
PHOTOS = {name: Image.fromarray(getattr(skimage_data, name)()) for name in ("coffee", "chelsea", "rocket")}
# timm's pretrained configs: TinyViT crop 0.95 at 224, 1.0 at 384, a squash at 512; DeiT 0.9 at 224, 1.0 at 384.
MODELS = {
    "tiny_vit_5m_224.dist_in22k_ft_in1k": "tinyvit",
    "tiny_vit_21m_384.dist_in22k_ft_in1k": "tinyvit",
    "tiny_vit_21m_512.dist_in22k_ft_in1k": "tinyvit",
    "deit_tiny_distilled_patch16_224": "deit",
    "deit_base_distilled_patch16_384": "deit",
}
# Tensor bicubic (torchvision, one rounding at the end) against PIL's (fixed point, a rounding after each
# pass): at most a level or two apart; measured 1 on these photos, 2 for chelsea squashed to 512.
TENSOR_KERNEL_LEVELS = 2.0


def data_config(variant: str) -> dict:
    from timm.data import resolve_data_config

    return resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(variant).to_dict())


def facebook_deit_config() -> dict:
    """facebookresearch/deit's own evaluation: shorter side to int(224 / 0.875) = 256, bicubic, centre crop."""
    return {**data_config("deit_tiny_distilled_patch16_224"), "crop_pct": 0.875}


def reference(config: dict, floor_crop: bool = False):
    """timm's transform; with `floor_crop`, its centre crop puts an odd margin's extra pixel at the
    bottom/right, as transformers' processors do (torchvision's CenterCrop rounds half to even)."""
    from timm.data import create_transform
    from torchvision import transforms

    steps = []
    for step in create_transform(**config).transforms:
        if floor_crop and isinstance(step, transforms.CenterCrop):
            height, width = step.size

            def step(image, height=height, width=width):
                top, left = (image.height - height) // 2, (image.width - width) // 2
                return image.crop((left, top, left + width, top + height))

        steps.append(step)
    return transforms.Compose(steps)


def rounding_differs(config: dict, image: Image.Image) -> bool:
    """Whether torchvision's centre crop and a floor crop pick different offsets for this image."""
    from timm.data import create_transform
    from torchvision import transforms

    resized = image
    for step in create_transform(**config).transforms:
        if isinstance(step, transforms.CenterCrop):
            margins = (resized.height - step.size[0], resized.width - step.size[1])
            return any(int(round(m / 2.0)) != m // 2 for m in margins)
        resized = step(resized)
    return False


def levels(got: torch.Tensor, expected: torch.Tensor, config: dict) -> float:
    std = torch.tensor(config["std"])[:, None, None]
    return ((got - expected).abs() * std * 255).max().item()


def processor(family: str, config: dict, backend: str):
    size = config["input_size"][-1]
    if family == "tinyvit":
        return tinyvit_image_processor(
            size, backend=backend, crop_pct=config["crop_pct"], crop_mode=config["crop_mode"]
        )
    assert config["crop_mode"] == "center"
    return deit_image_processor(size, crop_pct=config["crop_pct"], backend=backend)


CASES = list(MODELS.items()) + [("facebookresearch/deit", "deit")]


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize(("variant", "family"), CASES, ids=[v for v, _ in CASES])
def test_processors_reproduce_the_reference(variant, family, backend):
    config = facebook_deit_config() if variant == "facebookresearch/deit" else data_config(variant)
    bound = 1e-3 if backend == "pil" else TENSOR_KERNEL_LEVELS  # PIL: the reference's own resize, exactly
    ours = processor(family, config, backend)
    exact_reference = reference(config)
    for name, photo in PHOTOS.items():
        got = ours(photo, return_tensors="pt")["pixel_values"][0]
        assert got.shape == (3, *config["input_size"][1:])
        # Equal to the reference up to the resampling kernel, the centre crop included (it rounds as
        # torchvision's CenterCrop does, see image_processing_reference.py).
        assert levels(got, exact_reference(photo), config) <= bound, name


def test_the_reference_crop_is_what_stock_processors_miss():
    """The one-pixel crop shift the family processors fix: stock transformers processors with the same settings
    floor the crop offset, and differ from the reference on the photos whose margin is 3 mod 4."""
    from transformers import ViTImageProcessor

    config = data_config("tiny_vit_5m_224.dist_in22k_ft_in1k")  # 235 -> 224: every photo's short side
    ours = processor("tinyvit", config, "pil")
    stock = ViTImageProcessor(**{k: v for k, v in ours.to_dict().items() if k not in ("image_processor_type",)})
    exact, floor = reference(config), reference(config, floor_crop=True)
    shifted = [name for name, photo in PHOTOS.items() if rounding_differs(config, photo)]
    assert shifted == list(PHOTOS)
    for name, photo in PHOTOS.items():
        mine = ours(photo, return_tensors="pt")["pixel_values"][0]
        theirs = stock(photo, return_tensors="pt")["pixel_values"][0]
        assert levels(theirs, floor(photo), config) <= TENSOR_KERNEL_LEVELS < levels(theirs, exact(photo), config)
        assert levels(mine, exact(photo), config) <= 1e-3, name


@pytest.mark.parametrize(("variant", "family"), CASES, ids=[v for v, _ in CASES])
def test_dataset_eval_views_reproduce_the_reference(variant, family):
    """`AugmentedDataset` under `AugmentationRecipe.eval` crops as torchvision does: the reference exactly,
    up to the tensor bicubic kernel, for the centre crop and the squash alike."""
    config = facebook_deit_config() if variant == "facebookresearch/deit" else data_config(variant)
    recipe = AugmentationRecipe.eval(config["input_size"][-1], config["crop_pct"], config["crop_mode"])
    expected = reference(config)
    views = AugmentedDataset([{"image": photo} for photo in PHOTOS.values()], recipe, seed=0, label_column=None)
    for index, (name, photo) in enumerate(PHOTOS.items()):
        assert levels(views[index]["pixel_values"], expected(photo), config) <= TENSOR_KERNEL_LEVELS, name


def test_deit_keeps_the_aspect_ratio():
    """Defect 7: DeiT's processor resizes the shorter side (the reference), never squashes a 3:2 photo."""
    settings = deit_image_processor(224).to_dict()
    assert settings["size"] == {"shortest_edge": 256} and settings["crop_size"] == {"height": 224, "width": 224}
    squashed = deit_image_processor(224).__class__(**{**settings, "size": {"height": 256, "width": 256}})
    photo, config = PHOTOS["coffee"], facebook_deit_config()
    expected = reference(config)(photo)
    ours = deit_image_processor(224, backend="torchvision")(photo, return_tensors="pt")["pixel_values"][0]
    wrong = squashed(photo, return_tensors="pt")["pixel_values"][0]
    assert levels(ours, expected, config) <= TENSOR_KERNEL_LEVELS < levels(wrong, expected, config)
