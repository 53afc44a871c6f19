"""TinyViT preprocessing: transformers' processors configured as timm evaluates tiny_vit, both backends."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tinyvit.models.tinyvit import (
    TinyViTConfig,
    eval_preprocessing,
    tinyvit_image_processor,
)

timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")


def reference_transform(variant: str):
    """timm's eval transform for `variant`, its torchvision centre crop included (the processors round the
    crop offset as it does: see models/image_processing_reference.py)."""
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(variant, pretrained=False, num_classes=0, depths=[1, 1, 1, 1])
    return create_transform(**resolve_data_config({}, model=model))


@pytest.mark.parametrize(("variant", "size"), [("tiny_vit_5m_224", 224), ("tiny_vit_21m_384", 384), ("tiny_vit_21m_512", 512)])
def test_both_backends_reproduce_timm_eval_transform(variant, size):
    image = Image.fromarray(skimage_data.astronaut()[:, 40:])  # non-square, so crop mode matters
    expected = reference_transform(variant)(image)
    pil = tinyvit_image_processor(size, backend="pil")(image, return_tensors="pt")["pixel_values"][0]
    tensor = tinyvit_image_processor(size, backend="torchvision")(image, return_tensors="pt")["pixel_values"][0]
    assert pil.shape == tensor.shape == expected.shape == (3, size, size)
    # Same PIL resampling as timm: equal up to float rounding.
    assert (pil - expected).abs().max().item() < 1e-4
    # Tensor bicubic with antialiasing differs from PIL's by interpolation round-off only.
    assert (tensor - expected).abs().mean().item() < 0.03


def test_settings_are_explicit_and_validated():
    settings = eval_preprocessing(224)
    assert settings["size"] == {"shortest_edge": 235} and settings["crop_size"] == {"height": 224, "width": 224}
    assert eval_preprocessing(512)["size"] == {"height": 512, "width": 512}
    assert eval_preprocessing(32)["size"] == {"shortest_edge": 33}
    with pytest.raises(ValueError, match="crop_pct=1.5"):
        eval_preprocessing(224, crop_pct=1.5)
    with pytest.raises(ValueError, match="backend='cv2'"):
        tinyvit_image_processor(224, backend="cv2")


def test_auto_image_processor_is_registered_for_tinyvit(tmp_path):
    from transformers import AutoImageProcessor

    TinyViTConfig(image_size=32).save_pretrained(tmp_path)
    tinyvit_image_processor(32).save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.zeros((50, 40, 3), dtype=np.uint8) + 128)
    out = loaded(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out, tinyvit_image_processor(32)(image, return_tensors="pt")["pixel_values"])
