"""A tiny store the tools' tests share: uniform grey squares whose grey level is their class, and a
teacher that reads the level, so its stored distributions are known in advance (classes 1 and 2 have
close levels and are each other's nearest class; the rest sit far apart)."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn

from hf_tinyvit import AugmentationRecipe, save_teacher_logits

LEVELS = (40, 80, 100, 200)  # grey level of each class, 0..255
# crops of a near-uniform image keep its level; no erasing or colour jitter to move it
RECIPE = AugmentationRecipe(image_size=16, scale=(0.5, 1.0), hflip=0.5, auto_augment=None, reprob=0.0)


def grey_dataset(num_samples: int = 32, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % len(LEVELS)
    rng.shuffle(labels)
    images = [
        Image.fromarray(np.clip(LEVELS[c] + rng.integers(-3, 4, size=(8, 8)), 0, 255).astype(np.uint8), mode="L")
        for c in labels
    ]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"grey{level}" for level in LEVELS])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


class GreyTeacher(nn.Module):
    """Logits from the distance between a view's mean (normalised) grey level and each class's."""

    def __init__(self, width: float = 0.1):
        super().__init__()
        mean, std = RECIPE.mean[0], RECIPE.std[0]
        self.register_buffer("centres", torch.tensor([(level / 255.0 - mean) / std for level in LEVELS]))
        self.width = width
        self.num_labels = len(LEVELS)

    def forward(self, pixel_values):
        level = pixel_values[:, 0].mean(dim=(1, 2))
        return -((level[:, None] - self.centres[None]) ** 2) / (2 * self.width**2)


def grey_store(path, dataset, *, num_epochs: int = 3, topk: int = 2, recipe: AugmentationRecipe = RECIPE) -> str:
    return save_teacher_logits(
        GreyTeacher(), dataset, str(path), recipe=recipe, topk=topk, num_epochs=num_epochs, chunk_size=16,
        batch_size=16, progress=False, teacher_name="grey-teacher", teacher_hash="grey-v1",
        id2label={i: name for i, name in enumerate(dataset.features["label"].names)},
    )  # fmt: skip
