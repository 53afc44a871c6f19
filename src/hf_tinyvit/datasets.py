"""Image datasets as `datasets` objects (scikit-learn's digits, image folders, saved or Hub datasets) and
their split policy, writing one as an image folder, reading their images as uint8 tensors, a content
fingerprint that ties a teacher-logit store to the exact dataset it was built from, and wrong labels made
on purpose."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

__all__ = [
    "DEFAULT_VALIDATION_SPLIT_PERCENTAGE",
    "check_validation_split_percentage",
    "corrupt_labels",
    "dataset_fingerprint",
    "describe_sample",
    "digits_dataset",
    "has_eval_split",
    "hold_out",
    "image_digest",
    "image_to_tensor",
    "load_image_dataset",
    "select_split",
    "write_imagefolder",
]

_DIGITS_TEST_SIZE = 600
# The split folders datasets' imagefolder builder recognises by name (it reads other names as classes).
IMAGEFOLDER_SPLITS = ("train", "validation", "test")
# Share of a train-only source held out for evaluation when nothing else is asked for.
DEFAULT_VALIDATION_SPLIT_PERCENTAGE = 10.0


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


def check_validation_split_percentage(value) -> float:
    """The one check of `validation_split_percentage`: a number in [0, 100) (0: no hold-out)."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (numeric and math.isfinite(value) and 0 <= value < 100):
        raise ValueError(
            f"validation_split_percentage={value!r} must be a number in [0, 100): the share of a train-only "
            "dataset held out for evaluation (0: none)"
        )
    return float(value)


def select_split(splits: datasets.DatasetDict, split: str, name: str = "the dataset") -> datasets.Dataset:
    """`splits[split]`, or several splits joined by "+" (`train+test`: all of digits' 1,797 images), in
    that order; an unknown split is an error that lists the splits there are."""
    parts = split.split("+")
    unknown = [part for part in parts if part not in splits]
    if unknown or not split:
        raise ValueError(
            f"split={split!r} is not a split of {name}; its splits are {sorted(splits)} (join several with '+')"
        )
    if len(parts) == 1:
        return splits[split]
    return datasets.concatenate_datasets([splits[part] for part in parts])


def load_image_dataset(
    name: str, *, seed: int = 0, validation_split_percentage: float = DEFAULT_VALIDATION_SPLIT_PERCENTAGE
) -> datasets.DatasetDict:
    """Load an image classification dataset with its splits ("train", and "test" or "validation").

    `name`: "digits" (the embedded default), "imagefolder:<dir>", a `save_to_disk` folder, or a
    Hub dataset name. Split policy: a source's own test or validation split is kept as it is; a
    source with only a train split gets a seeded hold-out of `validation_split_percentage` percent
    of it as "test" (default 10), taken out of "train"; 0 keeps the train split whole (what a
    teacher pass uses: it covers every training image, so any student can train on all of them).
    """
    validation_split_percentage = check_validation_split_percentage(validation_split_percentage)
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
        # datasets cannot load a saved split of zero rows (an IndexError deep in its table code): name it here
        for state in glob.glob(os.path.join(glob.escape(name), "**", "state.json"), recursive=True):
            with open(state) as handle:
                if not json.load(handle).get("_data_files", True):
                    split = os.path.relpath(os.path.dirname(state), name)
                    raise ValueError(
                        f"dataset {name!r} has an empty {split!r} split: there is nothing to train on or save"
                    )
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"dataset {name!r} has splits {list(loaded)}; a 'train' split is required")
    if len(loaded["train"]) == 0:
        raise ValueError(f"dataset {name!r} has an empty 'train' split: there is nothing to train on or save")
    return hold_out(loaded, validation_split_percentage, seed=seed)


def write_imagefolder(
    splits: datasets.DatasetDict | Mapping[str, datasets.Dataset],
    folder: str | os.PathLike,
    *,
    image_column: str = "image",
    label_column: str = "label",
) -> Path:
    """Write an image classification dataset as an image folder, `<folder>/<split>/<class name>/<row>.png`,
    the layout a user's own data comes in and `load_image_dataset("imagefolder:<folder>")` reads.

    PNG keeps the pixels exactly. The folder is written under a temporary name and renamed when complete,
    and an existing one is never written into. Read back, the classes come in sorted order (datasets'
    imagefolder sorts the folder names), which need not be the source's order; the rows of a split come
    class by class.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{str(folder)!r} already exists and is not an empty folder; choose a new one")
    unknown = [name for name in splits if name not in IMAGEFOLDER_SPLITS]
    if unknown or not splits:
        raise ValueError(
            f"cannot write splits {unknown or list(splits)} as an image folder: datasets' imagefolder recognises "
            f"split folders named {list(IMAGEFOLDER_SPLITS)} (and reads any other name as a class)"
        )
    names = None
    for split, dataset in splits.items():
        feature = dataset.features.get(label_column)
        if not isinstance(feature, datasets.ClassLabel) or image_column not in dataset.features:
            raise ValueError(
                f"split {split!r} needs an {image_column!r} column and a ClassLabel {label_column!r} column; "
                f"it has {dict(dataset.features)}"
            )
        if names is not None and feature.names != names:
            raise ValueError(f"split {split!r} names its classes {feature.names}, another split {names}")
        names = feature.names
    bad = [name for name in names if not name.strip() or name in (".", "..") or "/" in name or "\\" in name]
    if bad:
        raise ValueError(f"class names {bad} cannot be folder names (empty, '.', '..', or holding a slash)")
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from a killed run with this pid
    for split, dataset in splits.items():
        for name in names:
            (partial / split / name).mkdir(parents=True)
        width = len(str(max(len(dataset) - 1, 0)))
        rows = dataset.select_columns([image_column, label_column])
        for index, row in enumerate(rows):
            if not 0 <= row[label_column] < len(names):
                shutil.rmtree(partial, ignore_errors=True)
                raise ValueError(f"row {index} of split {split!r} has label {row[label_column]}: an image folder "
                                 f"needs one of the {len(names)} classes for every image")  # fmt: skip
            image = row[image_column]
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
                image = image.convert("RGB")  # modes PNG cannot hold (CMYK, YCbCr, ...)
            image.save(partial / split / names[row[label_column]] / f"{index:0{width}d}.png")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        folder.rmdir()  # empty, checked above
    partial.rename(folder)
    return folder


def has_eval_split(splits: datasets.DatasetDict) -> bool:
    return "test" in splits or "validation" in splits


def hold_out(splits: datasets.DatasetDict, validation_split_percentage: float, *, seed: int = 0) -> datasets.DatasetDict:
    """The split policy: a source's own test or validation split is kept; a train-only source gives up a
    seeded `validation_split_percentage` percent of its train split as "test" (0: train kept whole)."""
    validation_split_percentage = check_validation_split_percentage(validation_split_percentage)
    if has_eval_split(splits) or validation_split_percentage == 0:
        return splits
    split = splits["train"].train_test_split(test_size=validation_split_percentage / 100, seed=seed)
    return datasets.DatasetDict({"train": split["train"], "test": split["test"]})


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
        column = dataset.select_columns([image_column])
        for index in probes:
            try:
                pixels = image_to_tensor(column[index][image_column])
            except Exception as error:  # PIL, datasets and numpy raise their own types; name the sample
                where = describe_sample(dataset, image_column, index)
                raise ValueError(f"cannot read the image of {where}: {error}") from error
            digest.update(f"|{tuple(pixels.shape)}|".encode())
            digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()[:16]


def image_digest(pixels: torch.Tensor) -> int:
    """A uint32 digest of a decoded image (`image_to_tensor`'s uint8 RGB (3, H, W)): its shape and pixels.

    Stored with each record of a teacher-logit store, so that a replay notices an image replaced,
    swapped or re-encoded with loss since the teacher saw it; a lossless re-encoding gives the same
    pixels, hence the same views, and passes. CRC-32 runs at several GB/s: a 500x375 photo costs
    about 0.1 ms, a few percent of decoding it.
    """
    header = f"{tuple(pixels.shape)}|{pixels.dtype}|".encode()
    return zlib.crc32(pixels.contiguous().numpy().tobytes(), zlib.crc32(header))


def describe_sample(dataset, image_column: str, index: int) -> str:
    """`sample_id=N`, plus the image file when the dataset keeps one (an image folder), for error messages."""
    path = None
    try:
        raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        path = raw[int(index)][image_column].get("path")
    except Exception:  # an in-memory or non-`datasets` source has no file to name
        pass
    return f"sample_id={index}" + (f" ({path})" if path else "")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16-bit samples scaled to 8 bits; PIL's own conversion clips them, turning most of an image white."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype in (np.uint16, np.int32, np.int16, np.dtype(">u2"), np.dtype("<u2")):
        return np.rint(np.clip(pixels.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)
    raise ValueError(f"cannot read {pixels.dtype} pixels; accepted: 8-bit images (any PIL mode) and 16-bit ones")


def image_to_tensor(image) -> torch.Tensor:
    """A PIL image or an array/tensor as a uint8 RGB (3, H, W) tensor.

    Every 8-bit PIL mode (L, LA, P, RGBA, CMYK, YCbCr, ...) goes through PIL's RGB conversion, alpha
    dropped; 16-bit grayscale (I;16, or I holding 0..65535 as PNG gives it) is scaled to 0..255.
    Arrays follow their library's layout, never a guess from the shape: numpy arrays (and lists) are
    channels-last (H, W[, C]), as PIL and `datasets`' numpy format give them; torch tensors are
    channels-first ([C,] H, W), as torchvision and `datasets`' torch format give them.
    """
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":
            if image.mode == "F":
                raise ValueError("cannot read a floating-point (mode F) image; accepted: 8-bit and 16-bit images")
            gray = _to_uint8(np.asarray(image))
            return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
        if image.mode != "RGB":
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    channels_first = isinstance(image, torch.Tensor)
    array = image.detach().cpu().numpy() if channels_first else np.asarray(image)
    tensor = torch.as_tensor(array if array.dtype != np.uint16 else _to_uint8(array))
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0 if channels_first else -1)
    layout = "torch tensors are channels-first: (C, H, W) or (H, W)" if channels_first else (
        "numpy arrays are channels-last: (H, W, C) or (H, W)"
    )  # fmt: skip
    channels = tensor.shape[0] if channels_first else tensor.shape[-1] if tensor.dim() == 3 else None
    if tensor.dim() != 3 or channels not in (1, 3, 4):
        raise ValueError(
            f"cannot read an image array of shape {tuple(tensor.shape)}: {layout}, with C in (1, 3, 4); "
            "transpose it, or pass a PIL image"
        )
    if not channels_first:
        tensor = tensor.permute(2, 0, 1)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"array images must be uint8, got {tensor.dtype}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()


def corrupt_labels(dataset: datasets.Dataset, fraction: float, seed: int, label_column: str = "label"):
    """A copy of `dataset` with `fraction` of its labels replaced by another class, and the ids changed.

    Each chosen label moves to a different class drawn uniformly from an explicit generator: the
    "hard samples" setting of TinyViT's argument (wrong labels a teacher's soft targets correct),
    with the ground truth of which samples are wrong, for measuring a hard-sample audit.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1)")
    feature = dataset.features[label_column]
    num_classes = getattr(feature, "num_classes", None)
    if num_classes is None or num_classes < 2:
        raise ValueError(f"column {label_column!r} must be a ClassLabel of at least 2 classes, got {feature}")
    rng = np.random.default_rng(seed)
    labels = np.array(dataset[label_column])
    chosen = rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))  # never 0: the new class always differs
    labels[chosen] = (labels[chosen] + shift) % num_classes
    noisy = dataset.remove_columns(label_column).add_column(label_column, labels.tolist(), feature=feature)
    return noisy, np.sort(chosen)
