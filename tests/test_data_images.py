"""Image dataset loading (digits, image folders, saved datasets) and the content fingerprint that ties
a store to its dataset."""

import numpy as np
import pytest
from PIL import Image

from hf_tinyvit import dataset_fingerprint, load_image_dataset


def test_digits_are_scikit_learns_with_a_fixed_split():
    from sklearn.datasets import load_digits

    digits = load_image_dataset("digits")
    assert (len(digits["train"]), len(digits["test"])) == (1197, 600)
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    again = load_image_dataset("digits")
    assert dataset_fingerprint(digits["train"]) == dataset_fingerprint(again["train"])
    assert dataset_fingerprint(digits["train"]) != dataset_fingerprint(load_image_dataset("digits", seed=1)["train"])
    # every image is one of scikit-learn's, stretched from 0..16 to 0..255
    sk = load_digits()
    stretched = {
        np.clip(np.rint(img * (255 / 16)), 0, 255).astype(np.uint8).tobytes(): int(t)
        for img, t in zip(sk.images, sk.target)
    }
    for row in digits["test"].select(range(20)):
        assert row["image"].size == (8, 8)
        assert stretched[np.asarray(row["image"]).tobytes()] == row["label"]


def test_image_folder_and_saved_datasets(tmp_path):
    generator = np.random.Generator(np.random.PCG64(0))
    for label in ("cat", "dog"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(10):
            pixels = generator.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / label / f"{i}.png")
    loaded = load_image_dataset(f"imagefolder:{tmp_path / 'folder'}")
    assert set(loaded) == {"train", "test"} and len(loaded["train"]) + len(loaded["test"]) == 20
    assert loaded["train"].features["label"].names == ["cat", "dog"]
    loaded.save_to_disk(str(tmp_path / "saved"))
    reloaded = load_image_dataset(str(tmp_path / "saved"))
    assert dataset_fingerprint(reloaded["train"]) == dataset_fingerprint(loaded["train"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
