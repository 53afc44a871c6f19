"""The bad-input table: real-world image files, labels, stores and settings that go wrong. Each row is
either handled as documented or refused with an error that names the sample or value and what is
accepted, before any shard or checkpoint is written."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    collate_views,
    image_to_tensor,
    load_image_dataset,
    save_teacher_logits,
)
from hf_tinyvit.training import DistillationTrainer
from test_trainer_distillation import arguments, deit

pytestmark = pytest.mark.fault
SIZE = 16
RECIPE = AugmentationRecipe(image_size=SIZE, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25)


class TinyTeacher(nn.Module):
    """Mean colour -> linear logits: enough of a teacher to save a store from."""

    def __init__(self, num_labels=5, seed=0, bias=0.0):
        super().__init__()
        self.num_labels = num_labels
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.linear = nn.Linear(3, num_labels)
        with torch.no_grad():
            self.linear.bias.add_(bias)

    def forward(self, pixel_values):
        return self.linear(pixel_values.mean(dim=(2, 3)))


def save(dataset, output, teacher=None, **kwargs):
    options = dict(recipe=RECIPE, topk=3, num_epochs=1, seed=0, batch_size=4, chunk_size=4, progress=False)
    return save_teacher_logits(teacher or TinyTeacher(), dataset, str(output), **{**options, **kwargs})


def rgb(seed, size=(20, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def bomb_png(width=20000, height=20000) -> bytes:
    """A valid PNG header that claims 400 M pixels; Pillow refuses it on open, before decoding anything."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def sixteen_bit() -> bytes:
    ramp = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 137).astype(np.uint16)
    return encoded(Image.fromarray(ramp), "PNG")


# name -> (file name, bytes) of the odd image dropped into an image folder of good ones
ODD_FILES = {
    "truncated JPEG": ("odd.jpg", lambda: encoded(rgb(9), "JPEG")[:300]),
    "zero-byte file": ("odd.png", lambda: b""),
    "decompression bomb": ("odd.png", bomb_png),
    "grayscale": ("odd.png", lambda: encoded(rgb(9).convert("L"), "PNG")),
    "RGBA": ("odd.png", lambda: encoded(rgb(9).convert("RGBA"), "PNG")),
    "CMYK": ("odd.jpg", lambda: encoded(rgb(9).convert("CMYK"), "JPEG")),
    "palette with transparency": ("odd.png", lambda: encoded(rgb(9).convert("P"), "PNG", transparency=0)),
    "16-bit grayscale": ("odd.png", sixteen_bit),
    "smaller than the crop (2x3)": ("odd.png", lambda: encoded(rgb(9, size=(2, 3)), "PNG")),
}
REFUSED = {
    "truncated JPEG": r"cannot read the image of sample_id=\d+ \(.*odd\.jpg\).*[Tt]runcated",
    "zero-byte file": r"cannot read the image of sample_id=\d+ \(.*odd\.png\).*cannot identify image file",
    "decompression bomb": r"cannot read the image of sample_id=\d+ \(.*odd\.png\).*exceeds limit of \d+ pixels",
}


def image_folder(root: Path, odd: str) -> Path:
    for i in range(5):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"good{i}.png").write_bytes(encoded(rgb(i), "PNG"))
    name, payload = ODD_FILES[odd]
    (root / "a" / name).write_bytes(payload())
    return root


@pytest.mark.parametrize("odd", sorted(ODD_FILES))
def test_image_files(odd, tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    folder = image_folder(tmp_path / "images", odd)
    train = load_image_dataset(f"imagefolder:{folder}")["train"]
    # the fixed 10% test split may take the odd file: save from every image there is
    everything = datasets.concatenate_datasets([train, load_image_dataset(f"imagefolder:{folder}")["test"]])
    output = tmp_path / "store"
    if odd in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[odd]):
            save(everything, output)
        assert not (output / "data").exists()  # refused before the teacher ran
        with pytest.raises(ValueError, match=REFUSED[odd]):
            AugmentedDataset(everything, RECIPE, seed=0).items(range(len(everything)))
    else:
        save(everything, output)
        store = TeacherLogitStore.open(str(output), cache_dir=str(tmp_path / "cache"))
        replay = StoredLogitsDataset(everything, store, label_column="label")
        batch = collate_views(replay.items(range(len(everything))))
        assert batch["pixel_values"].shape == (len(everything), 3, SIZE, SIZE)
        assert torch.isfinite(batch["pixel_values"]).all()
        evaluation = AugmentedDataset(everything, AugmentationRecipe.eval(SIZE), seed=0)
        assert evaluation.items(range(len(everything)))[0]["pixel_values"].shape == (3, SIZE, SIZE)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's bomb check stays on


def test_sixteen_bit_images_are_scaled_not_clipped():
    image = Image.open(io.BytesIO(sixteen_bit()))
    assert image.mode.startswith("I")
    expected = np.rint(np.asarray(image).astype(np.float64) / 257).astype(np.uint8)
    pixels = image_to_tensor(image)
    assert pixels.shape == (3, 20, 24) and torch.equal(pixels[0], torch.from_numpy(expected))
    assert 0 < pixels.float().mean() < 255  # PIL's own conversion would have saturated it


def labelled(labels, features=None):
    images = [rgb(i, size=(8, 8)) for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.mark.parametrize("labels", [[0, 1, 10, 2], [0, -1, 3, 2]], ids=["too large", "negative"])
def test_labels_out_of_range(labels):
    bad = next(i for i, label in enumerate(labels) if not 0 <= label < 10)
    message = rf"sample_id={bad} has label={labels[bad]}; accepted: 0\.\.9"
    with pytest.raises(ValueError, match=message):
        AugmentedDataset(labelled(labels), RECIPE, seed=0, num_labels=10)  # at construction, before training
    as_list = [{"image": r["image"], "label": r["label"]} for r in labelled(labels)]  # a plain list is read lazily
    dataset = AugmentedDataset(as_list, RECIPE, seed=0, num_labels=10)
    with pytest.raises(ValueError, match=message):
        dataset.items([bad])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    dataset = labelled([i % 5 for i in range(12)])
    save(dataset, root / "store", num_epochs=3, end_epoch=1)
    save(dataset, root / "store", num_epochs=3, start_epoch=2, end_epoch=3)  # epoch 1 never saved
    return dataset, root / "store"


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher": TinyTeacher(seed=1)}, r"teacher_hash: '\w+' != '\w+'"),
        ({"teacher": TinyTeacher(num_labels=7)}, r"num_labels: 7 != 5"),
        ({"recipe": AugmentationRecipe.tinyvit_pretrain(SIZE + 4)}, r"recipe_fingerprint"),
        ({"dataset": "shuffled"}, r"dataset_fingerprint"),
        ({"dataset": "shorter"}, r"dataset_size: 11 != 12"),
        ({"topk": 4}, r"topk: 4 != 3"),
    ],
    ids=["other teacher", "other class count", "other recipe", "other dataset", "other dataset size", "other k"],
)
def test_resuming_into_a_store_built_differently(store, change, message):
    dataset, path = store
    before = snapshot(path)
    change = dict(change)
    if change.get("dataset") == "shuffled":
        change["dataset"] = dataset.shuffle(seed=0)
    elif change.get("dataset") == "shorter":
        change["dataset"] = dataset.select(range(11))
    dataset = change.pop("dataset", dataset)
    with pytest.raises(ValueError, match=rf"holds a store built differently \(this run != stored\): .*{message}"):
        save(dataset, path, num_epochs=3, **change)
    assert snapshot(path) == before  # nothing of the existing store touched


def test_replaying_a_store_with_another_dataset_or_recipe(store, tmp_path):
    dataset, path = store
    saved = TeacherLogitStore.open(str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="11 samples but store .* was built from 12"):
        StoredLogitsDataset(dataset.select(range(11)), saved)
    with pytest.raises(ValueError, match="fingerprint .* another dataset"):
        StoredLogitsDataset(dataset.shuffle(seed=3), saved)
    with pytest.raises(ValueError, match=r"differs from the store's .*image_size"):
        StoredLogitsDataset(dataset, saved, recipe=AugmentationRecipe.tinyvit_pretrain(SIZE + 4))
    # a student head of another class count: tests/test_trainer_distillation.py::test_student_head_must_match_...


def test_store_missing_an_epoch_replays_a_saved_one_with_a_warning(store, tmp_path):
    dataset, path = store
    saved = TeacherLogitStore.open(str(path), cache_dir=str(tmp_path / "cache"))
    assert saved.epochs == [0, 2]
    replay = StoredLogitsDataset(dataset, saved, label_column=None)
    with pytest.warns(UserWarning, match=r"epoch 1 was not saved .* \(saved: \[0, 2\]\); replaying saved epoch 2"):
        replay.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per dataset, not once per unsaved epoch of a long run
        replay.set_epoch(3)
    assert replay.replay_epoch == 2
    replay.set_epoch(1)
    item = replay[3]
    stored = torch.from_numpy(saved.lookup(2, [3])["teacher_topk_values"][0]).float()
    assert torch.equal(item["teacher_topk_values"], stored)
    with pytest.raises(KeyError, match=r"epoch 1 is not in store .* saved epochs: \[0, 2\]"):
        saved.lookup(1, [0])
    metadata = json.loads((path / "metadata.json").read_text())
    broken = tmp_path / "lists-an-unsaved-epoch"
    broken.mkdir()
    (broken / "data").symlink_to(path / "data")
    (broken / "metadata.json").write_text(json.dumps({**metadata, "epochs": [0, 1, 2]}))
    with pytest.raises(ValueError, match=r"metadata.json does not match its own checksum .* edited"):
        TeacherLogitStore.open(str(broken))
    # an incomplete copy: the metadata is intact, epoch 2's shards did not come along
    incomplete = tmp_path / "incomplete-copy"
    (incomplete / "data").mkdir(parents=True)
    (incomplete / "data" / "epoch_0000").symlink_to(path / "data" / "epoch_0000")
    (incomplete / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(FileNotFoundError, match=r"lists epoch 2 but 3 shard\(s\) are missing"):
        TeacherLogitStore.open(str(incomplete))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"topk": 6}, r"topk=6 exceeds the teacher's num_labels=5"),
        ({"teacher": TinyTeacher(bias=float("nan"))}, r"sample_id=0 \(epoch 0\) contains NaN or inf"),
        ({"teacher": TinyTeacher(bias=float("inf"))}, r"sample_id=0 \(epoch 0\) contains NaN or inf"),
        ({"max_samples": 0}, r"max_samples=0 must be >= 1"),
        ({"dataset": "empty"}, r"the dataset is empty"),
    ],
    ids=["k > num_labels", "NaN teacher", "inf teacher", "no samples", "empty dataset"],
)
def test_saving_refuses_before_any_shard(kwargs, message, tmp_path):
    kwargs = dict(kwargs)
    dataset = labelled([0, 1, 2, 3])
    if kwargs.pop("dataset", None) == "empty":
        dataset = dataset.select([])
    with pytest.raises(ValueError, match=message):
        save(dataset, tmp_path / "store", **kwargs)
    assert not (tmp_path / "store" / "data").exists()


def test_empty_dataset_folder_is_named(tmp_path):
    empty = datasets.Dataset.from_dict(
        {"image": [], "label": []},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])}),
    )
    datasets.DatasetDict({"train": empty}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"has an empty 'train' split"):
        load_image_dataset(str(tmp_path / "saved"))


def test_batch_size_one_with_mixup_trains_on_mixed_pairs(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    dataset = labelled([i % 10 for i in range(8)], features=features)
    views = AugmentedDataset(dataset, AugmentationRecipe.deit(SIZE), seed=0)
    singles = [collate_views(views.items([i])) for i in range(len(views))]
    pairs = collate_views(views.items(range(len(views))))
    for i, single in enumerate(singles):  # a lone sample still gets its partner's half: same as in a full batch
        assert torch.equal(single["pixel_values"][0], pairs["pixel_values"][i])
        assert torch.allclose(single["labels"][0], pairs["labels"][i])
        assert single["labels"].shape == (1, 10) and float(single["labels"].sum()) == pytest.approx(1.0)
    trainer = DistillationTrainer(
        model=deit(),  # LayerNorm only: tiny TinyViT at 16 px ends on 1x1 maps, where BatchNorm needs batch > 1
        args=arguments(tmp_path, distillation_type="none", per_device_train_batch_size=1, max_steps=3, logging_steps=1),
        train_dataset=views,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
