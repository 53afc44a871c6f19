"""Format stability: a store written by an older release (tests/fixtures/store_v1, hf_tinyvit 0.1.0,
format 1), one written in format 2 (tests/fixtures/store_v2) and two in format 3 (store_v3: float16,
store_v3_sqrt8: the quantised encoding) open with today's code, replay bitwise-identical views and read the
same targets; a store from a newer release is refused with a message that says so."""

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_tinyvit import StoredLogitsDataset, TeacherLogitStore
from hf_tinyvit.store.format import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_dataset() -> datasets.Dataset:
    images = FIXTURES / "store_v1_images"
    labels = json.loads((images / "labels.json").read_text())
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.open(images / f"{i}.png") for i in range(len(labels))], "label": labels}, features=features
    )


def test_a_version_1_store_replays_bitwise_and_reads_the_same_targets():
    assert 1 in SUPPORTED_FORMAT_VERSIONS
    store = TeacherLogitStore.open(FIXTURES / "store_v1")
    assert store.metadata["format_version"] == 1 and store.epochs == [0, 1]
    assert "mix_partner" in store.lookup(0, [0])  # the fixture exercises Mixup/CutMix partners
    expected = load_file(str(FIXTURES / "store_v1_expected.safetensors"))
    dataset = fixture_dataset()
    for epoch in store.epochs:
        items = StoredLogitsDataset(dataset, store, epoch=epoch).items(list(range(len(dataset))))
        pixels = torch.stack([item["pixel_values"] for item in items])
        assert torch.equal(pixels, expected[f"epoch{epoch}/pixel_values"]), f"epoch {epoch}: views differ"
        labels = torch.stack(
            [item["labels"] if item["labels"].dim() else torch.nn.functional.one_hot(item["labels"], 10).float()
             for item in items]
        )  # fmt: skip
        assert torch.equal(labels, expected[f"epoch{epoch}/labels"])
        for key in ("teacher_topk_values", "teacher_topk_indices"):
            assert torch.equal(torch.stack([item[key] for item in items]), expected[f"epoch{epoch}/{key}"])


def test_a_version_2_store_replays_bitwise_and_verifies_every_shard_and_image():
    assert 2 in SUPPORTED_FORMAT_VERSIONS
    store = TeacherLogitStore.open(FIXTURES / "store_v2")
    metadata = store.metadata
    assert metadata["format_version"] == 2 and store.epochs == [0, 1] and store.has_image_digests
    assert [e["path"] for e in metadata["shards"]] == [
        f"data/epoch_{e:04d}/chunk_{c:06d}.parquet" for e in (0, 1) for c in (0, 1)
    ]
    assert store.identity == metadata["metadata_sha256"]
    assert list(store.lookup(0, [0])) == [
        "sample_id", "epoch", "aug_seed", "teacher_topk_values", "teacher_topk_indices", "mix_partner", "image_digest"
    ]  # fmt: skip
    # the same images, teacher, recipe and seed as store_v1: the same views and targets, bit for bit
    expected = load_file(str(FIXTURES / "store_v1_expected.safetensors"))
    dataset = fixture_dataset()
    for epoch in store.epochs:
        items = StoredLogitsDataset(dataset, store, epoch=epoch).items(list(range(len(dataset))))
        for key in ("pixel_values", "teacher_topk_values", "teacher_topk_indices"):
            assert torch.equal(torch.stack([item[key] for item in items]), expected[f"epoch{epoch}/{key}"]), key
    report = store.verify(dataset)
    assert report.ok and (report.shards_checked, report.records_checked, report.images_checked) == (4, 12, 6)
    assert report.unlisted == [] and report.notes == []


@pytest.mark.parametrize("name, encoding", [("store_v3", "float16"), ("store_v3_sqrt8", "sqrt8")])
def test_a_version_3_store_replays_bitwise_in_either_encoding_and_verifies(name, encoding):
    assert FORMAT_VERSION == 3 and SUPPORTED_FORMAT_VERSIONS == (1, 2, 3)
    store = TeacherLogitStore.open(FIXTURES / name)
    metadata = store.metadata
    assert metadata["format_version"] == 3 and store.topk_encoding == encoding and store.has_image_digests
    columns = ("teacher_topk_values", "teacher_topk_indices") if encoding == "float16" else (
        "teacher_topk_slots", "teacher_topk_codes")  # fmt: skip
    assert list(store.lookup(0, [0])) == ["sample_id", "epoch", *columns, "mix_partner", "image_digest"]
    assert all(isinstance(entry["aug_seeds"], int) for entry in metadata["shards"])
    # the same images, teacher, recipe and seed as store_v1: the same views; float16 holds the same targets,
    # sqrt8 the decoded codes of the teacher's float32 top-k (recorded when the fixture was written)
    expected = load_file(str(FIXTURES / "store_v1_expected.safetensors"))
    if encoding == "sqrt8":
        expected.update(load_file(str(FIXTURES / "store_v3_sqrt8_expected.safetensors")))
    dataset = fixture_dataset()
    for epoch in store.epochs:
        items = StoredLogitsDataset(dataset, store, epoch=epoch).items(list(range(len(dataset))))
        for key in ("pixel_values", "teacher_topk_values", "teacher_topk_indices"):
            assert torch.equal(torch.stack([item[key] for item in items]), expected[f"epoch{epoch}/{key}"]), key
    report = store.verify(dataset)
    assert report.ok and (report.shards_checked, report.records_checked, report.images_checked) == (4, 12, 6)


def test_a_store_from_a_newer_release_is_refused_by_name(tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(FIXTURES / "store_v1", newer)
    metadata = json.loads((newer / "metadata.json").read_text())
    metadata["format_version"] = FORMAT_VERSION + 1
    (newer / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=rf"format_version={FORMAT_VERSION + 1}, written by a newer hf_tinyvit.*upgrade"):
        TeacherLogitStore.open(newer)
    metadata["format_version"] = 0
    (newer / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"format_version=0; this release reads"):
        TeacherLogitStore.open(newer)
