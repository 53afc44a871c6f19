"""Image datasets as `datasets` objects (scikit-learn's digits, image folders, saved or Hub datasets),
and a content fingerprint that ties a teacher-logit store to the exact dataset it was built from."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import datasets

__all__ = ["load_image_dataset", "digits_dataset", "dataset_fingerprint", "image_to_tensor"]

_DIGITS_TEST_SIZE = 600


def digits_dataset(seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's 1,797 real 8x8 handwritten digits as grayscale PIL images, split 1,197 / 600.

    The split is a seeded permutation, so it is the same on every machine for a given seed.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # pixel values are ink counts 0..16; stretch them to 0..255 grayscale
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pixels))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(indices: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(pixels[i], mode="L") for i in indices],
                "label": [int(digits.target[i]) for i in indices],
            },
            features=features,
        )

    return datasets.DatasetDict(
        {"train": split(order[_DIGITS_TEST_SIZE:]), "test": split(np.sort(order[:_DIGITS_TEST_SIZE]))}
    )


def load_image_dataset(name: str, *, seed: int = 0) -> datasets.DatasetDict:
    """Load an image classification dataset with splits "train" and "test" (or "validation").

    `name`: "digits" (the embedded default), "imagefolder:<dir>", a `save_to_disk` folder, or a
    Hub dataset name. A source with only a train split gets a seeded 10% test split.
    """
    if name == "digits":
        return digits_dataset(seed)
    if name.startswith("imagefolder:"):
        folder = name.split(":", 1)[1]
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"imagefolder directory {folder!r} does not exist")
        loaded = datasets.load_dataset("imagefolder", data_dir=folder)
    elif os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_dict.json"))
        or os.path.exists(os.path.join(name, "dataset_info.json"))
    ):
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"dataset {name!r} has splits {list(loaded)}; a 'train' split is required")
    if "test" not in loaded and "validation" not in loaded:
        split = loaded["train"].train_test_split(test_size=0.1, seed=seed)
        loaded = datasets.DatasetDict({"train": split["train"], "test": split["test"]})
    return loaded


def dataset_fingerprint(dataset: datasets.Dataset, image_column: str = "image", num_probes: int = 64) -> str:
    """A content hash of a dataset's images: its size and the pixels of up to `num_probes` of them.

    Only the images matter to a store (distillation needs no labels), and only their pixels:
    the same images kept as file paths (an image folder) or as embedded bytes (`save_to_disk`)
    hash alike. `Dataset._fingerprint` cannot serve: an in-memory dataset gets a random one.
    Hashing every image would cost a pass over ImageNet; evenly spaced probes catch a different
    dataset, split, order or subset at a constant cost.
    """
    size = len(dataset)
    digest = hashlib.sha256(str(size).encode())
    if size:
        probes = sorted({int(i) for i in np.linspace(0, size - 1, num=min(num_probes, size))})
        for image in dataset.select_columns([image_column])[probes][image_column]:
            pixels = image_to_tensor(image)
            digest.update(f"|{tuple(pixels.shape)}|".encode())
            digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()[:16]


def image_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) or an array/tensor as a uint8 RGB (3, H, W) tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    tensor = torch.as_tensor(np.asarray(image))
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(-1)
    if tensor.dim() != 3:
        raise ValueError(f"cannot read an image of shape {tuple(tensor.shape)}: expected (H, W) or (H, W, C)")
    if tensor.shape[-1] in (1, 3, 4) and tensor.shape[0] not in (1, 3):
        tensor = tensor.permute(2, 0, 1)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"array images must be uint8, got {tensor.dtype}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()
