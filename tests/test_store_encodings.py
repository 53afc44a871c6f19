"""Top-k encodings in a store (format 3): a sqrt8 store replays exactly the decoded codes of the teacher's float32
top-k, records its encoding (metadata, card, resume), refuses hostile codes and slots by name, and the reader's
seed, layout and metadata checks hold for every format."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    check_teacher_logits,
    collate_views,
    load_image_dataset,
    save_teacher_logits,
    sparse_to_dense,
)
from hf_tinyvit.store.codec import decode_sqrt8, encode_sqrt8, topk_mass_tolerance
from hf_tinyvit.store.format import seal_metadata, teacher_topk
from test_store_save_replay import TinyTeacher

RECIPE = AugmentationRecipe.tinyvit_pretrain(16)
NUM, CHUNK, BATCH = 40, 16, 8
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")["train"].select(range(NUM))


def save(dataset, path, **kwargs):
    options = dict(recipe=RECIPE, topk=3, num_epochs=2, chunk_size=CHUNK, batch_size=BATCH, progress=False,
                   teacher_name="tiny-teacher")  # fmt: skip
    return save_teacher_logits(TinyTeacher(), dataset, str(path), **{**options, **kwargs})


@pytest.fixture(scope="module")
def stores(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("encodings")
    return {encoding: Path(save(digits, root / encoding, topk_encoding=encoding)) for encoding in ("float16", "sqrt8")}


def test_a_sqrt8_store_replays_the_decoded_codes_of_the_teachers_float32_topk(stores, digits):
    store = TeacherLogitStore.open(stores["sqrt8"])
    float16 = TeacherLogitStore.open(stores["float16"])
    assert store.topk_encoding == "sqrt8" and store.metadata["topk_encoding"] == "sqrt8"
    teacher = TinyTeacher()
    views = AugmentedDataset(digits, RECIPE, seed=0, label_column=None)
    for epoch in (0, 1):
        replay = StoredLogitsDataset(digits, store, epoch=epoch, label_column=None)
        for start in range(0, NUM, CHUNK):  # the saving run's batches: BATCH-sized slices of each chunk
            for first in range(start, min(start + CHUNK, NUM), BATCH):
                ids = list(range(first, min(first + BATCH, start + CHUNK, NUM)))
                with torch.inference_mode():
                    values, indices = teacher_topk(teacher(collate_views(views.items(ids, epoch))["pixel_values"]), 3)
                expected = decode_sqrt8(*encode_sqrt8(values.numpy(), indices.numpy(), 10))
                got = store.targets(epoch, ids)
                assert torch.equal(got[0], torch.from_numpy(expected[0])) and torch.equal(got[1], torch.from_numpy(expected[1]))
                items = replay.items(ids)
                assert torch.equal(torch.stack([i["teacher_topk_values"] for i in items]), got[0])
                # against the float16 store of the same run: the same top-1, probabilities within sqrt8's error
                reference = float16.targets(epoch, ids)
                assert torch.equal(got[1][:, 0], reference[1][:, 0])
                dense, exact = sparse_to_dense(*got, 10), sparse_to_dense(*reference, 10)
                assert (dense - exact).abs().max() < 0.02
    report = check_teacher_logits(teacher, digits, store, num_samples=16, batch_size=BATCH, epoch=1)
    assert report["max_abs_diff"] == 0 and report["index_mismatches"] == 0  # compared after the same encoding
    assert check_teacher_logits(TinyTeacher(seed=1), digits, store, num_samples=8, batch_size=8)["max_abs_diff"] > 1e-3
    assert store.verify(digits).ok


def test_the_encoding_is_recorded_and_resuming_with_another_is_refused(stores, digits, tmp_path):
    path = stores["sqrt8"]
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["format_version"] == 3 and metadata["topk_encoding"] == "sqrt8"
    card = (path / "README.md").read_text()
    assert "top-k encoding: `sqrt8`" in card and "teacher_topk_codes" in card
    loaded = datasets.load_dataset(str(path), "epoch_1", cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.column_names == ["sample_id", "epoch", "teacher_topk_slots", "teacher_topk_codes", "image_digest"]
    assert loaded.features["teacher_topk_codes"].feature.dtype == "uint8"
    before = {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    with pytest.raises(ValueError, match=r"built differently .*topk_encoding: 'float16' != 'sqrt8'"):
        save(digits, path)  # the float16 default into the sqrt8 store
    with pytest.raises(ValueError, match=r"topk_encoding='int4'; accepted: \['float16', 'sqrt8'\]"):
        save(digits, tmp_path / "other", topk_encoding="int4")
    assert {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} == before


def test_a_flat_teacher_keeps_its_top1_above_zero_and_the_mass_within_the_tolerance():
    # the top-1 decodes as 1 - leftover - others: many small probabilities rounded up must not push it to 0
    for num_labels, k, p in ((1000, 10, 0.001), (10, 10, 0.1), (21841, 100, 1 / 21841)):
        values, indices = np.full((1, k), p), np.arange(k)[None]
        decoded, classes = decode_sqrt8(*encode_sqrt8(values, indices, num_labels))
        assert decoded[0, 0] >= decoded[0, 1:].max() > 0 and classes[0, 0] == 0
        assert decoded.sum() <= 1 + topk_mass_tolerance("sqrt8", k)
    rng = np.random.default_rng(0)
    for _ in range(200):  # honest rows of any shape never pass the tolerance the reader applies
        num_labels, k = int(rng.integers(2, 400)), int(rng.integers(1, 40))
        k = min(k, num_labels)
        probs = rng.dirichlet(np.full(num_labels, float(rng.choice([0.01, 0.3, 5.0]))), size=8)
        indices = np.argsort(-probs, axis=1)[:, :k]
        values = np.take_along_axis(probs, indices, axis=1)
        decoded, _ = decode_sqrt8(*encode_sqrt8(values, indices, num_labels))
        assert (decoded.sum(1) <= 1 + topk_mass_tolerance("sqrt8", k)).all()


def poison_sqrt8(path: Path, relpath: str, row: int, slots=None, codes=None) -> int:
    table = pq.read_table(path / relpath)
    for name, new in (("teacher_topk_slots", slots), ("teacher_topk_codes", codes)):
        if new is None:
            continue
        column = table.column(name).combine_chunks()
        rows = column.flatten().to_numpy().reshape(len(column), -1).copy()
        rows[row] = np.asarray(new, dtype=rows.dtype)
        array = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), array)
    pq.write_table(table, path / relpath)
    reseal(path, relpath)
    return int(table.column("sample_id")[row].as_py())


def reseal(path: Path, relpath: str) -> None:
    """A buggy or foreign writer's shard: its metadata line agrees, so only the row checks stand in the way."""
    metadata = json.loads((path / "metadata.json").read_text())
    data = (path / relpath).read_bytes()
    for entry in metadata["shards"]:
        if entry["path"] == relpath:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (path / "metadata.json").write_text(json.dumps(seal_metadata(metadata), indent=2, sort_keys=True))


HOSTILE = {  # 10 classes, k = 3: slots are (top-1, first other, gap), codes (leftover, other, other)
    "top-1 class past the last": ({"slots": [12, 1, 2]}, r"a class index lies outside \[0, 10\)"),
    "gaps past the last class": ({"slots": [0, 6, 5]}, r"a class index lies outside \[0, 10\)"),
    "a gap of zero": ({"slots": [0, 4, 0]}, r"a class index appears twice"),
    "the top-1 among the others": ({"slots": [4, 4, 1]}, r"a class index appears twice"),
    "codes worth more than one": ({"codes": [10, 250, 250]}, r"sum to more than 1 \+ 0\.0"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_codes_and_slots_are_refused_by_name(kind, stores, tmp_path):
    change, reason = HOSTILE[kind]
    path = tmp_path / "copy"
    shutil.copytree(stores["sqrt8"], path)
    relpath = "data/epoch_0001/chunk_000001.parquet"
    sample_id = poison_sqrt8(path, relpath, row=2, **change)
    store = TeacherLogitStore.open(path)
    with pytest.raises(ValueError, match=rf"epoch 1: {relpath}: the record of sample_id={sample_id} is no teacher "
                                         rf"output: .*{reason}.*stored slots"):  # fmt: skip
        store.targets(1, [sample_id])
    assert store.targets(0, [sample_id])[0].shape == (1, 3)
    report = store.verify()
    assert not report.ok and any(f"the record of sample_id={sample_id}" in p for p in report.problems)


def test_a_seed_derivation_that_changed_is_refused_where_the_shard_is_first_read(stores, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(stores["float16"], path)
    metadata = json.loads((path / "metadata.json").read_text())
    entry = next(e for e in metadata["shards"] if e["epoch"] == 1 and e["chunk"] == 2)
    entry["aug_seeds"] ^= 1  # as if this release derived other seeds than the writer did
    (path / "metadata.json").write_text(json.dumps(seal_metadata(metadata)))
    store = TeacherLogitStore.open(path)
    store.targets(1, range(32))  # chunks 0 and 1
    with pytest.raises(ValueError, match=r"chunk_000002\.parquet: the augmentation seeds this release derives from "
                                         r"seed=0 .* are not those it was saved with"):  # fmt: skip
        store.targets(1, [35])
    assert any("augmentation seeds this release derives" in p for p in store.verify().problems)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("topk_encoding"), r"topk_encoding=None; expected one of \['float16', 'sqrt8'\]"),
        (lambda m: m.update(topk_encoding="int4"), r"topk_encoding='int4'; expected one of"),
        (lambda m: m["shards"][0].pop("aug_seeds"), r"a shard entry .*expected an object with .*'aug_seeds'"),
        (lambda m: m["shards"][0].update(aug_seeds=2**32), r"a shard entry"),
        (lambda m: m.update(format_version=2), r"topk_encoding='sqrt8'; expected one of \['float16'\] \(format_version=2"),
    ],
)
def test_format_3_metadata_is_held_to_its_fields(edit, message, stores, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(stores["sqrt8"], path)
    metadata = json.loads((path / "metadata.json").read_text())
    edit(metadata)
    (path / "metadata.json").write_text(json.dumps(seal_metadata(metadata)))
    with pytest.raises(ValueError, match=message):
        TeacherLogitStore.open(path)


def test_a_format_2_store_claiming_sqrt8_is_refused(tmp_path):
    path = tmp_path / "v2"
    shutil.copytree(FIXTURES / "store_v2", path)
    metadata = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps(seal_metadata({**metadata, "topk_encoding": "sqrt8"})))
    with pytest.raises(ValueError, match=r"topk_encoding='sqrt8'; expected one of \['float16'\] \(format_version=2"):
        TeacherLogitStore.open(path)


def test_row_groups_are_read_one_at_a_time_and_a_page_changed_under_a_reader_is_named(digits, tmp_path, monkeypatch):
    import hf_tinyvit.store.reader as reader
    import hf_tinyvit.store.writer as writer

    # k = 3 of 10 classes is too small a record for more than one group per chunk: make the groups small
    for module in (writer, reader):
        monkeypatch.setattr(module, "row_group_rows", lambda *args: 4)
    path = tmp_path / "store"
    save(digits, path, num_epochs=1)
    store = TeacherLogitStore.open(path)
    assert pq.ParquetFile(path / "data/epoch_0000/chunk_000000.parquet").num_row_groups == 4
    epoch = store.rows(0)
    store.lookup(0, [5, 21])
    assert sorted(epoch._groups) == [(0, 1), (1, 1)]  # one group of each shard decoded, not the shards
    reference = {i: store.targets(0, [i]) for i in range(NUM)}
    shuffled = np.random.default_rng(0).permutation(NUM)
    values, indices = store.targets(0, shuffled)
    for row, i in enumerate(shuffled):
        assert torch.equal(values[row], reference[i][0][0]) and torch.equal(indices[row], reference[i][1][0])
    # a shard checked once and held open, then changed in place: its page checksums catch the change
    relpath = "data/epoch_0000/chunk_000002.parquet"
    meta = pq.ParquetFile(path / relpath).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if "values" in meta.column(i).path_in_schema)
    with open(path / relpath, "r+b") as handle:
        handle.seek(chunk.data_page_offset + chunk.total_compressed_size - 3)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x10]))
    epoch._groups.clear()
    with pytest.raises(ValueError, match=rf"{relpath}: row group 0 cannot be read .*the shard is damaged"):
        store.targets(0, [32])
    # a row-group layout other than the format's is refused when a shard is first read
    monkeypatch.undo()
    relpath = "data/epoch_0000/chunk_000001.parquet"
    pq.write_table(pq.read_table(path / relpath), path / relpath, row_group_size=8)
    reseal(path, relpath)
    with pytest.raises(ValueError, match=rf"{relpath}: its row groups hold \[8, 8\]\.\.\. rows; the format writes "
                                         r"\[16\]"):  # fmt: skip
        TeacherLogitStore.open(path).targets(0, [16])
    problems = TeacherLogitStore.open(path).verify().problems
    assert any(f"{relpath}: its row groups hold [8, 8]" in p for p in problems), problems
