"""Never silently wrong, the store side: a poisoned row, a damaged shard, a changed image, a stray file, an
edited metadata file or a second writer each stop the run where they enter, naming the file, epoch and
record, and leave what the user saved unchanged; `hf-tinyvit verify` names each damage."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from hf_tinyvit import (
    AugmentationRecipe,
    StoredLogitsDataset,
    TeacherLogitStore,
    dataset_fingerprint,
    save_teacher_logits,
    sparse_to_dense,
)
from hf_tinyvit.store.format import FORMAT_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
SIZE = 16
RECIPE = AugmentationRecipe(image_size=SIZE, auto_augment=None, reprob=0.0)
NUM_IMAGES, CHUNK = 130, 40  # > 64 images, so the 64-probe fingerprint cannot see every image


class MeanColourTeacher(nn.Module):
    def __init__(self, num_labels=10, seed=0):
        super().__init__()
        self.num_labels = num_labels
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.linear = nn.Linear(3, num_labels)

    def forward(self, pixel_values):
        return self.linear(pixel_values.mean(dim=(2, 3))) * 4


def rgb(seed: int, size=(12, 12)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def image_dataset(images) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def save(dataset, path, **kwargs):
    options = dict(recipe=RECIPE, topk=3, num_epochs=2, seed=0, batch_size=20, chunk_size=CHUNK, progress=False)
    return save_teacher_logits(MeanColourTeacher(), dataset, str(path), **{**options, **kwargs})


def snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def images():
    return image_dataset([rgb(i) for i in range(NUM_IMAGES)])


@pytest.fixture(scope="module")
def store(images, tmp_path_factory):
    return Path(save(images, tmp_path_factory.mktemp("store") / "store"))


@pytest.fixture
def copy(store, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(store, target)
    return target


def v1_copy(tmp_path) -> Path:
    target = tmp_path / "v1"
    shutil.copytree(FIXTURES / "store_v1", target)
    return target


def reseal(path: Path, relpath: str) -> None:
    """Rewrite the metadata's line of a shard rewritten in place, as a buggy or foreign writer would: the
    checksums agree, so only the row checks stand between the file and a student."""
    from hf_tinyvit.store.format import seal_metadata

    metadata = json.loads((path / "metadata.json").read_text())
    data = (path / relpath).read_bytes()
    for entry in metadata["shards"]:
        if entry["path"] == relpath:
            entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (path / "metadata.json").write_text(json.dumps(seal_metadata(metadata), indent=2, sort_keys=True))


def poison(path: Path, relpath: str, row: int, values=None, indices=None) -> int:
    """Replace one row's top-k values and/or indices; returns that row's sample id."""
    table = pq.read_table(path / relpath)
    columns = {}
    for name, new in (("teacher_topk_values", values), ("teacher_topk_indices", indices)):
        column = table.column(name).combine_chunks()
        rows = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1).copy()
        if new is not None:
            rows[row] = np.asarray(new, dtype=rows.dtype)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])
    for name, array in columns.items():
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), array)
    pq.write_table(table, path / relpath)
    return int(table.column("sample_id")[row].as_py())


POISONS = {
    "NaN": ({"values": [0.5, float("nan"), 0.1]}, r"a probability is NaN or inf"),
    "negative": ({"values": [0.5, 0.2, -0.1]}, r"a probability lies outside \[0, 1\]"),
    "above one": ({"values": [1.5, 0.0, 0.0]}, r"a probability lies outside \[0, 1\]"),
    "mass above one": ({"values": [0.7, 0.3, 0.25]}, r"sum to more than 1 \+ 0\.001"),
    "not sorted": ({"values": [0.1, 0.6, 0.2]}, r"not in decreasing order"),
    "repeated class": ({"indices": [4, 4, 1]}, r"a class index appears twice"),
    "class out of range": ({"indices": [12, 4, 1]}, r"a class index lies outside \[0, 10\)"),
}


@pytest.mark.parametrize("kind", sorted(POISONS))
@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_poisoned_row_stops_the_read_naming_file_epoch_and_sample(kind, version, store, tmp_path):
    change, reason = POISONS[kind]
    path = tmp_path / f"v{version}"
    shutil.copytree({1: FIXTURES / "store_v1", 2: FIXTURES / "store_v2", 3: store}[version], path)
    relpath = "data/epoch_0001/chunk_000001.parquet"
    sample_id = poison(path, relpath, row=1, **change)
    if version >= 2:
        reseal(path, relpath)
    before = snapshot(path)
    opened = TeacherLogitStore.open(str(path))  # rows are checked where they are read, not at open
    where = rf"epoch 1: {relpath}: the record of sample_id={sample_id} is no teacher output: .*{reason}"
    with pytest.raises(ValueError, match=where):
        opened.targets(1, [sample_id])
    assert opened.targets(0, [sample_id])[0].shape == (1, 3)  # the other epoch's record is fine
    report = opened.verify()
    assert not report.ok and any(f"{relpath}: the record of sample_id={sample_id}" in p for p in report.problems)
    assert snapshot(path) == before


def test_the_whole_shard_checks_agree_with_the_row_by_row_ones():
    from hf_tinyvit.store import format as store_format

    rng = np.random.default_rng(0)
    for _ in range(400):
        k, num_labels, rows = int(rng.integers(1, 6)), int(rng.integers(6, 12)), int(rng.integers(1, 5))
        values, indices = store_format.topk_probabilities(torch.randn(rows, num_labels) * 3, k)
        values, indices = values.numpy().copy(), indices.numpy().astype(np.uint8)
        row, column, kind = int(rng.integers(rows)), int(rng.integers(k)), int(rng.integers(6))
        if kind == 1:
            values[row, column] = rng.choice([np.nan, np.inf, -np.inf, -0.25, 1.5])
        elif kind == 2 and k > 1:
            values[row] = values[row][::-1].copy()
        elif kind == 3:
            values[row, column] = min(1.0, float(values[row, column]) + 0.5)
        elif kind == 4 and k > 1:
            indices[row, (column + 1) % k] = indices[row, column]
        elif kind == 5:
            indices[row, column] = num_labels
        fast = store_format._rows_look_valid(values, indices, num_labels, 1e-3)
        assert fast == (store_format._first_bad_row(values, indices, num_labels, 1e-3) is None), (values, indices)
        if kind in (1, 5) or (kind == 4 and k > 1):
            assert not fast  # a poison that is always invalid is always seen


def test_sparse_to_dense_refuses_targets_no_teacher_gave():
    indices = torch.tensor([[0, 1], [2, 3]])
    for bad in (float("nan"), -0.2, 1.5):
        with pytest.raises(ValueError, match=r"top-k target row 1 .*must be finite in \[0, 1\]"):
            sparse_to_dense(torch.tensor([[0.6, 0.3], [0.5, bad]]), indices, 5)
    assert torch.allclose(sparse_to_dense(torch.tensor([[0.6, 0.3]]), indices[:1], 5).sum(), torch.tensor(1.0))


def flip_a_bit(file: Path, column: str | None = None) -> None:
    """Flip one bit: in the middle of the file, or inside `column`'s compressed data."""
    data = bytearray(file.read_bytes())
    position = len(data) // 2
    if column is not None:
        meta = pq.ParquetFile(file).metadata.row_group(0)
        chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith(column))
        position = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[position] ^= 0x10
    file.write_bytes(bytes(data))


def test_a_truncated_shard_is_refused_at_open_and_a_bit_flip_where_it_is_read(store, copy):
    truncated = copy / "data/epoch_0000/chunk_000002.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    before = snapshot(copy)
    with pytest.raises(ValueError, match=r"epoch 0: data/epoch_0000/chunk_000002\.parquet: it holds \d+ bytes; the "
                                         r"metadata says \d+: the shard is damaged"):  # fmt: skip
        TeacherLogitStore.open(str(copy))
    assert snapshot(copy) == before
    shutil.copy(store / "data/epoch_0000/chunk_000002.parquet", truncated)
    # a flipped bit keeps the size: the store opens (the cheap check) and the shard is refused when read
    flipped = "data/epoch_0001/chunk_000000.parquet"
    flip_a_bit(copy / flipped, column="teacher_topk_values")
    opened = TeacherLogitStore.open(str(copy))
    ids = pq.read_table(store / flipped).column("sample_id").to_pylist()
    opened.targets(1, [i for i in range(NUM_IMAGES) if i not in ids][:5])  # the other shards read
    with pytest.raises(ValueError, match=rf"epoch 1: {flipped}: its sha256 .* differs from the metadata's .*: the "
                                         r"shard is damaged"):  # fmt: skip
        opened.targets(1, ids[:2])


def test_every_damage_is_named_by_verify(store, tmp_path, capsys):
    from hf_tinyvit.cli import main as cli

    report = cli(["verify", str(store)])
    assert report.ok and report.records_checked == 2 * NUM_IMAGES and report.shards_checked == 8
    assert capsys.readouterr().out.startswith(
        f"OK: store {str(store)!r} (format {FORMAT_VERSION}): checked 8 shards, 260 records"
    )
    damages = {
        "truncated": (lambda f: f.write_bytes(f.read_bytes()[:-7]), r"holds \d+ bytes; the metadata says"),
        "bit flip": (flip_a_bit, r"its sha256 .* differs from the metadata's"),
        "deleted": (os.remove, r"is missing or unreadable"),
        "replaced by another epoch's": (
            lambda f: shutil.copy(f.parents[1] / "epoch_0000" / f.name, f), r"its sha256 .* differs|holds \d+ bytes"
        ),
    }
    for name, (damage, message) in damages.items():
        path = tmp_path / name.replace(" ", "-")
        shutil.copytree(store, path)
        damage(path / "data/epoch_0001/chunk_000003.parquet")
        with pytest.raises(SystemExit) as exit_code:
            cli(["verify", str(path)])
        out = capsys.readouterr().out
        assert exit_code.value.code == 1 and out.startswith("DAMAGED"), name
        assert "epoch 1: data/epoch_0001/chunk_000003.parquet" in out, (name, out)
        assert re.search(message, out), (name, out)


def test_a_version_1_store_is_verified_row_by_row_and_says_what_it_cannot_check(tmp_path):
    path = v1_copy(tmp_path)
    report = TeacherLogitStore.open(str(path)).verify()
    assert report.ok and report.records_checked == 12 and report.unlisted == []
    assert any(note.startswith("no checksums: written by format 1") for note in report.notes)
    truncated = path / "data/epoch_0001/chunk_000001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-50])
    store = TeacherLogitStore.open(str(path))  # format 1 records no sizes: it opens
    with pytest.raises(ValueError, match=r"epoch 1: data/epoch_0001/chunk_000001\.parquet: its sample ids cannot "
                                         r"be read .*the shard is damaged"):  # fmt: skip
        store.targets(1, range(6))
    assert any("epoch 1: data/epoch_0001/chunk_000001.parquet" in p for p in store.verify().problems)


@pytest.mark.parametrize("change", ["replaced", "swapped", "re-encoded as JPEG"])
def test_a_changed_image_is_caught_at_its_record(change, images, store, tmp_path):
    probes = {int(i) for i in np.linspace(0, NUM_IMAGES - 1, 64)}
    first, second = [i for i in range(40, NUM_IMAGES) if i not in probes][:2]  # images the fingerprint never reads
    pictures = [images[i]["image"] for i in range(NUM_IMAGES)]
    if change == "replaced":
        pictures[first] = rgb(10_000)
    elif change == "swapped":
        pictures[first], pictures[second] = pictures[second], pictures[first]
    else:
        buffer = io.BytesIO()
        pictures[first].save(buffer, "JPEG", quality=70)
        pictures[first] = Image.open(io.BytesIO(buffer.getvalue()))
    changed = image_dataset(pictures)
    opened = TeacherLogitStore.open(str(store))
    assert dataset_fingerprint(changed) == opened.metadata["dataset_fingerprint"]  # the 64 probes see nothing
    replay = StoredLogitsDataset(changed, opened, label_column=None, epoch=1)
    replay.items([0, 1, 2])
    with pytest.raises(ValueError, match=rf"the image of sample_id={first} is not the one the teacher saw .*epoch 1"):
        replay.items([3, first])
    report = opened.verify(changed)
    assert not report.ok and f"sample_id=[{first}" in report.problems[0]


def test_a_losslessly_re_encoded_image_gives_the_same_views_and_passes(images, store):
    pictures = [images[i]["image"] for i in range(NUM_IMAGES)]
    buffer = io.BytesIO()
    pictures[41].save(buffer, "PNG", compress_level=1)
    pictures[41] = Image.open(io.BytesIO(buffer.getvalue()))
    replay = StoredLogitsDataset(image_dataset(pictures), str(store), label_column=None)
    assert len(replay.items(range(NUM_IMAGES))) == NUM_IMAGES


def test_stray_files_are_ignored_by_the_reader_and_the_saver_and_reported_by_verify(images, tmp_path):
    path = Path(save(images, tmp_path / "store", num_epochs=3, end_epoch=2))
    shutil.copytree(path / "data/epoch_0001", path / "data/epoch_0001.bak")
    shutil.copy(path / "data/epoch_0000/chunk_000000.parquet", path / "data/epoch_0000/extra.parquet")
    shutil.copy(path / "data/epoch_0000/chunk_000000.parquet", path / "data/epoch_0000/chunk_000099.parquet")
    (path / "notes.txt").write_text("mine")
    strays = {k: v for k, v in snapshot(path).items() if ".bak" in k or "extra" in k or "99" in k or "notes" in k}
    store = TeacherLogitStore.open(str(path))
    assert store.data_files() == {
        f"epoch_{e}": [str(path / f"data/epoch_{e:04d}/chunk_{c:06d}.parquet") for c in range(4)] for e in (0, 1)
    }
    StoredLogitsDataset(images, store, label_column=None).items(range(NUM_IMAGES))
    save(images, path, num_epochs=3, start_epoch=2, end_epoch=3)  # the saver resumes past them
    assert TeacherLogitStore.open(str(path)).epochs == [0, 1, 2]
    assert {k: v for k, v in snapshot(path).items() if k in strays} == strays  # untouched
    report = TeacherLogitStore.open(str(path)).verify()
    assert report.ok and sorted(report.unlisted) == sorted(strays)


@pytest.mark.parametrize(
    "field, value",
    [("num_labels", 12), ("topk", 2), ("recipe.image_size", 100_000), ("epochs", [0]), ("seed", 1)],
)
def test_hand_edited_metadata_is_refused(field, value, copy):
    metadata = json.loads((copy / "metadata.json").read_text())
    target, key = (metadata["recipe"], "image_size") if field == "recipe.image_size" else (metadata, field)
    target[key] = value
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"metadata.json does not match its own checksum .* edited or damaged"):
        TeacherLogitStore.open(str(copy))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["recipe"].update(image_size=100_000), r"image_size=100000 must be an integer in \[1, 4096\]"),
        (lambda m: m.update(num_labels=12), r"id2label=.*; expected one name for each class 0\.\.11"),
        (lambda m: m.update(num_labels=1 << 30, id2label=None), r"num_labels=1073741824; expected at most 1048576"),
        (lambda m: m.update(topk=11), r"topk=11; expected at most num_labels=10"),
        (lambda m: m.update(teacher_name=[[[[[[[[[["deep"]]]]]]]]]]), r"nests deeper than 8 levels"),
        (lambda m: m.update(extra_field=1), r"fields \['extra_field'\] that format_version=1 does not define"),
    ],
    ids=["huge image size", "num_labels without names", "huge class count", "topk > num_labels", "deep", "unknown"],
)
def test_version_1_metadata_is_held_to_its_schema_and_bounds(edit, message, tmp_path):
    path = v1_copy(tmp_path)
    metadata = json.loads((path / "metadata.json").read_text())
    edit(metadata)
    (path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=message):
        TeacherLogitStore.open(str(path))


def test_metadata_nested_past_the_interpreter_stack_is_a_clear_error(tmp_path):
    path = v1_copy(tmp_path)
    (path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"metadata.json is not valid JSON \(nests deeper than JSON decoding allows\)"):
        TeacherLogitStore.open(str(path))


def test_an_epoch_copied_over_another_is_named(tmp_path):
    path = v1_copy(tmp_path)  # format 1: no checksum to catch it first
    for chunk in ("chunk_000000.parquet", "chunk_000001.parquet"):
        shutil.copy(path / "data/epoch_0000" / chunk, path / "data/epoch_0001" / chunk)
    store = TeacherLogitStore.open(str(path))
    with pytest.raises(ValueError, match=r"epoch 1: data/epoch_0001/chunk_000000\.parquet: the shard holds records "
                                         r"of epoch 0; it sits where epoch 1 belongs"):  # fmt: skip
        store.lookup(1, range(6))


def test_a_sample_recorded_twice_is_named(tmp_path):
    path = v1_copy(tmp_path)  # format 1: no checksum to catch it first
    relpath = "data/epoch_0001/chunk_000000.parquet"
    table = pq.read_table(path / relpath)
    twice = table.column("sample_id")[0].as_py()
    pq.write_table(pa.concat_tables([table.slice(0, 1), table.slice(0, 1), table.slice(2)]), path / relpath)
    with pytest.raises(ValueError, match=rf"epoch 1: data/epoch_0001/chunk_000000\.parquet: holds 4 records whose "
                                         rf"sample ids are not the 4 of chunk 0: no record for sample_id=\d+ \(1 "
                                         rf"missing\); sample_id={twice} has a record in two places"):  # fmt: skip
        TeacherLogitStore.open(str(path)).lookup(1, range(6))


# ---- one writer at a time ------------------------------------------------------------------------------


def test_a_second_saver_fails_naming_the_holder_and_changes_nothing(images, store, tmp_path):
    from hf_tinyvit.store import StoreLockedError
    from hf_tinyvit.store.lock import WriterLock

    path = tmp_path / "store"
    shutil.copytree(store, path)
    before = snapshot(path)
    holder = WriterLock(str(path)).acquire()
    try:
        message = rf"store .* is being written by pid {os.getpid()} on host '{socket.gethostname()}'.*one saver at a time"
        with pytest.raises(StoreLockedError, match=message):
            save(images, path, num_epochs=3)
        assert {k: v for k, v in snapshot(path).items() if k != "writer.lock"} == before
        # a saver that may wait gets the store once the holder is done
        threading.Timer(1.0, holder.release).start()
        save(images, path, num_epochs=3, lock_timeout=60)
    finally:
        holder.release()
    assert TeacherLogitStore.open(str(path)).epochs == [0, 1, 2] and not (path / "writer.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(images, store, tmp_path, caplog):
    path = tmp_path / "store"
    shutil.copytree(store, path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (path / "writer.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    with caplog.at_level(logging.WARNING, logger="hf_tinyvit.store.lock"):
        save(images, path, num_epochs=3)
    assert f"taking over the writer lock of pid {dead.pid}" in caplog.text
    assert TeacherLogitStore.open(str(path)).epochs == [0, 1, 2] and not (path / "writer.lock").exists()


def test_temp_cleanup_touches_only_temps_of_processes_that_are_gone(images, store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(store, path)
    shard = "data/epoch_0001/chunk_000002.parquet"
    os.remove(path / shard)
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    temps = {
        "live": path / f"{shard}.tmp-{live.pid}-{host}",
        "dead": path / f"{shard}.tmp-{dead.pid}-{host}",
        "dead, format 1 name": path / f"{shard}.tmp-{dead.pid}",
        "live, metadata": path / f"metadata.json.tmp-{live.pid}-{host}",
    }
    for file in temps.values():
        file.write_bytes(b"PAR1 half written")
    try:
        save(images, path)  # resumes: rewrites the missing shard
    finally:
        live.kill()
        live.wait()
    assert temps["live"].exists() and temps["live, metadata"].exists()
    assert not temps["dead"].exists() and not temps["dead, format 1 name"].exists()
    assert snapshot(path)[shard] == snapshot(store)[shard]


def test_resuming_refuses_a_damaged_shard_a_killed_run_left_unlisted(images, tmp_path):
    path = Path(save(images, tmp_path / "store", num_epochs=2, end_epoch=1))
    complete = Path(save(images, tmp_path / "complete", num_epochs=2))
    leftover = "data/epoch_0001/chunk_000000.parquet"
    (path / leftover).parent.mkdir(parents=True)
    shutil.copy(complete / leftover, path / leftover)
    poison(path, leftover, row=0, values=[0.9, 0.2, 0.1])  # a complete file, but no teacher output
    before = snapshot(path)
    with pytest.raises(ValueError, match=rf"epoch 1: {leftover}: the record of sample_id=\d+ is no teacher output: .*"
                                         r"delete it so that this command rewrites it"):  # fmt: skip
        save(images, path, num_epochs=2)
    assert snapshot(path) == before
    # an intact leftover is checked and kept, not rewritten
    shutil.copy(complete / leftover, path / leftover)
    save(images, path, num_epochs=2)
    assert snapshot(path) == snapshot(complete)
