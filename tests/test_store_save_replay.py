"""The teacher-logit store: save -> replay -> teacher check, the Parquet layout read back with
`datasets`, resuming an interrupted run, epoch cycling, and every refusal before work is lost."""

import filecmp
import json
import os
import shutil
import zlib

import datasets
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    ViewCache,
    augmentation_seed,
    check_student_compatible,
    check_teacher_logits,
    load_image_dataset,
    save_teacher_logits,
    sparse_to_dense,
    topk_probabilities,
)

RECIPE = AugmentationRecipe.tinyvit_pretrain(16)


class TinyTeacher(nn.Module):
    def __init__(self, num_labels=10, seed=0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, num_labels)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        self.num_labels = num_labels
        self.calls = 0

    def forward(self, pixel_values):
        self.calls += 1
        return self.head(self.body(pixel_values)) * 3.0


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")["train"].select(range(40))


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    teacher = TinyTeacher()
    kwargs = dict(
        recipe=RECIPE,
        topk=3,
        num_epochs=3,
        end_epoch=2,
        chunk_size=16,
        batch_size=8,
        progress=False,
        teacher_name="tiny-teacher",
    )
    path = save_teacher_logits(
        teacher, digits, str(root / "clean"), cache_dir=str(root / "cache"), check_samples=16, **kwargs
    )
    return {"path": path, "teacher": teacher, "kwargs": kwargs, "root": root, "cache": str(root / "cache")}


def _shards(path):
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(os.path.join(path, "data")) for f in fs
    )


def test_store_layout_metadata_and_datasets_loading(saved, digits):
    path = saved["path"]
    assert _shards(path) == [f"data/epoch_{e:04d}/chunk_{c:06d}.parquet" for e in (0, 1) for c in range(3)]
    with open(os.path.join(path, "metadata.json")) as handle:
        metadata = json.load(handle)
    assert metadata["epochs"] == [0, 1] and metadata["num_epochs"] == 3 and metadata["topk"] == 3
    assert metadata["num_labels"] == 10 and metadata["dataset_size"] == 40 and metadata["recipe"] == RECIPE.to_dict()
    assert metadata["recipe_fingerprint"] == RECIPE.fingerprint() and metadata["seed"] == 0
    for key in ("teacher_name", "teacher_hash", "dataset_fingerprint", "id2label", "format_version"):
        assert metadata[key]
    store = TeacherLogitStore.open(path, cache_dir=saved["cache"])
    loaded = datasets.load_dataset("parquet", data_files=store.data_files(), cache_dir=saved["cache"])
    assert sorted(loaded) == ["epoch_0", "epoch_1"]
    epoch1 = loaded["epoch_1"]
    assert epoch1.num_rows == 40 and sorted(epoch1["sample_id"]) == list(range(40)) and set(epoch1["epoch"]) == {1}
    assert epoch1.features["teacher_topk_values"].feature.dtype == "float16"
    assert epoch1.features["teacher_topk_indices"].feature.dtype == "uint8"  # 10 classes fit in a byte
    # the augmentation encoding is the per-record seed, derived from (seed, epoch, sample_id) alone: format 3 keeps
    # no copy per record, only a CRC-32 of each shard's derived seeds in its metadata line
    assert "aug_seed" not in epoch1.features and metadata["topk_encoding"] == "float16"
    for entry in metadata["shards"]:
        ids = range(entry["chunk"] * 16, min(40, entry["chunk"] * 16 + 16))
        seeds = np.array([augmentation_seed(0, entry["epoch"], i) for i in ids], dtype="<u4")
        assert entry["aug_seeds"] == zlib.crc32(seeds.tobytes())
    values = np.array(epoch1["teacher_topk_values"], dtype=np.float32)
    assert values.shape == (40, 3) and np.all(np.diff(values, axis=1) <= 0) and np.all(values.sum(1) <= 1.001)
    streamed = next(iter(store.load([1], streaming=True)["epoch_1"]))
    assert streamed["sample_id"] == epoch1[0]["sample_id"] and len(streamed["teacher_topk_values"]) == 3
    # the dataset card maps one split per epoch, so the folder (or its Hub repo) loads by name
    by_card = datasets.load_dataset(path, cache_dir=saved["cache"])
    assert sorted(by_card) == ["epoch_0", "epoch_1"]
    assert by_card["epoch_0"]["teacher_topk_values"] == loaded["epoch_0"]["teacher_topk_values"]


def test_replay_gives_the_teacher_its_own_targets_back(saved, digits):
    teacher = saved["teacher"]
    store = TeacherLogitStore.open(saved["path"], cache_dir=saved["cache"])
    replay = StoredLogitsDataset(digits, store, epoch=1)
    assert replay.num_labels == 10 and replay.recipe == RECIPE
    batch = replay.collate_fn(replay.__getitems__([5, 0, 33]))
    assert batch["teacher_topk_values"].dtype == torch.float32 and batch["teacher_topk_indices"].dtype == torch.int64
    with torch.inference_mode():
        values, indices = topk_probabilities(teacher(batch["pixel_values"]), 3)
    assert torch.equal(indices, batch["teacher_topk_indices"])
    assert (values.float() - batch["teacher_topk_values"]).abs().max() <= 1e-3  # float16 storage, other batch
    dense = sparse_to_dense(batch["teacher_topk_values"], batch["teacher_topk_indices"], replay.num_labels)
    torch.testing.assert_close(dense.sum(1), torch.ones(3))
    report = check_teacher_logits(teacher, digits, store, num_samples=16, batch_size=8, epoch=1)
    assert report["num_checked"] == 16 and report["index_mismatches"] == 0
    assert report["max_abs_diff"] <= 1e-5


def test_check_catches_a_teacher_that_changed(saved, digits):
    store = TeacherLogitStore.open(saved["path"], cache_dir=saved["cache"])
    report = check_teacher_logits(TinyTeacher(seed=1), digits, store, num_samples=8, batch_size=8)
    assert report["max_abs_diff"] > 1e-3


def test_epochs_follow_workers_and_cycle_past_the_saved_ones(saved, digits):
    store = TeacherLogitStore.open(saved["path"], cache_dir=saved["cache"])
    replay = StoredLogitsDataset(digits, store, epoch=0)
    loader = DataLoader(replay, batch_size=16, num_workers=2, persistent_workers=True, collate_fn=replay.collate_fn)
    seen = {}
    for epoch in (0, 1, 2):
        if epoch == 2:
            with pytest.warns(UserWarning, match="epoch 2 was not saved"):
                replay.set_epoch(epoch)
        else:
            replay.set_epoch(epoch)
        seen[epoch] = torch.cat([b["teacher_topk_values"] for b in loader])
    expected = {
        e: torch.from_numpy(store.lookup(e, range(40))["teacher_topk_values"].astype(np.float32)) for e in (0, 1)
    }
    assert torch.equal(seen[0], expected[0]) and torch.equal(seen[1], expected[1])
    assert replay.replay_epoch == 0 and torch.equal(seen[2], expected[0])  # epoch 2 replays saved epoch 2 % 2
    assert not torch.equal(expected[0], expected[1])


@pytest.mark.fault
def test_interrupted_run_resumes_to_the_same_bytes(saved, digits, tmp_path):
    class Interrupted(TinyTeacher):
        def forward(self, pixel_values):
            if self.calls >= 4:  # the probe, then three batches: chunk 0 of epoch 0 is complete
                raise KeyboardInterrupt
            return super().forward(pixel_values)

    target = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        save_teacher_logits(Interrupted(), digits, target, **saved["kwargs"])
    assert _shards(target) == ["data/epoch_0000/chunk_000000.parquet"]  # nothing partial is visible
    assert json.load(open(os.path.join(target, "metadata.json")))["epochs"] == []
    stale = os.path.join(target, "data/epoch_0000/chunk_000001.parquet.tmp-99999")  # as a killed writer leaves it
    open(stale, "wb").write(b"PAR1 half a shard")
    resumed = TinyTeacher()
    save_teacher_logits(resumed, digits, target, **saved["kwargs"])
    assert resumed.calls == 1 + 3 + 5  # the probe, epoch 0's chunks 1 and 2 (2 + 1 batches), all of epoch 1
    assert _shards(target) == _shards(saved["path"])
    for name in _shards(saved["path"]) + ["metadata.json", "README.md"]:
        assert filecmp.cmp(os.path.join(target, name), os.path.join(saved["path"], name), shallow=False), name
    again = TinyTeacher()
    save_teacher_logits(again, digits, target, **saved["kwargs"])
    assert again.calls == 1  # a complete store only costs the probe


def test_refusals_before_work_is_lost(saved, digits, tmp_path):
    kwargs = dict(saved["kwargs"])
    with pytest.raises(ValueError, match="topk=11 exceeds the teacher's num_labels=10"):
        save_teacher_logits(TinyTeacher(), digits, str(tmp_path / "a"), **{**kwargs, "topk": 11})

    class Broken(TinyTeacher):
        def forward(self, pixel_values):
            logits = super().forward(pixel_values)
            if self.calls > 1:
                logits[2, 4] = float("nan")
            return logits

    with pytest.raises(ValueError, match=r"sample_id=\d+ \(epoch 0\) contains NaN or inf"):
        save_teacher_logits(Broken(), digits, str(tmp_path / "b"), **kwargs)
    assert not os.path.exists(tmp_path / "b" / "data")
    with pytest.raises(ValueError, match="teacher_hash"):
        save_teacher_logits(TinyTeacher(), digits, saved["path"], **{**kwargs, "teacher_hash": "another"})
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        save_teacher_logits(TinyTeacher(), digits.shuffle(seed=0), saved["path"], **kwargs)
    with pytest.raises(ValueError, match="recipe_fingerprint"):
        save_teacher_logits(
            TinyTeacher(), digits, saved["path"], **{**kwargs, "recipe": AugmentationRecipe.tinyvit_pretrain(20)}
        )
    with pytest.raises(ValueError, match="empty"):
        save_teacher_logits(TinyTeacher(), digits.select([]), str(tmp_path / "c"), **kwargs)
    with pytest.raises(ValueError, match="plain callable: pass teacher_hash"):
        save_teacher_logits(lambda x: TinyTeacher()(x), digits, str(tmp_path / "e"), **{**kwargs, "teacher_name": None})
    with pytest.raises(ValueError, match="chunk_size=15 must be even"):
        save_teacher_logits(
            TinyTeacher(),
            digits,
            str(tmp_path / "d"),
            **{**kwargs, "recipe": AugmentationRecipe.deit(16), "chunk_size": 15},
        )

    store = TeacherLogitStore.open(saved["path"], cache_dir=saved["cache"])
    check_student_compatible(store, 10)
    with pytest.raises(ValueError, match="student num_labels=21841 differs from the store's num_labels=10"):
        check_student_compatible(store, 21841)
    with pytest.raises(ValueError, match="39 samples but store .* was built from 40"):
        StoredLogitsDataset(digits.select(range(39)), store)
    with pytest.raises(ValueError, match="fingerprint .* another dataset"):
        StoredLogitsDataset(digits.shuffle(seed=1), store)
    with pytest.raises(ValueError, match="differs from the store's"):
        StoredLogitsDataset(digits, store, recipe=AugmentationRecipe.deit(16))
    with pytest.raises(KeyError, match=r"epoch 7 is not in store .* saved epochs: \[0, 1\]"):
        store.lookup(7, [0])
    with pytest.raises(IndexError, match="sample_id=40 is outside"):
        store.lookup(0, [40])


def test_missing_records_and_shards_are_named(saved, digits, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy = str(tmp_path / "copy")
    shutil.copytree(saved["path"], copy)
    shard = os.path.join(copy, "data/epoch_0001/chunk_000001.parquet")
    table = pq.read_table(shard)
    pq.write_table(table.filter(np.array(table.column("sample_id").to_pylist()) != 20), shard)
    # the shard's size no longer matches its line in the metadata: refused at open, file and epoch named
    with pytest.raises(ValueError, match=r"epoch 1: data/epoch_0001/chunk_000001\.parquet: it holds \d+ bytes; the "
                                         r"metadata says \d+: the shard is damaged"):  # fmt: skip
        TeacherLogitStore.open(copy, cache_dir=str(tmp_path / "cache"))
    # a format 1 store records no sizes: a shard that lacks a record of its chunk is refused when it is read,
    # naming the record; the other shards still read
    old = tmp_path / "v1"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "fixtures", "store_v1"), old)
    shard = old / "data/epoch_0001/chunk_000001.parquet"
    table = pq.read_table(shard)
    missing = table.column("sample_id")[0].as_py()
    pq.write_table(table.slice(1), shard)
    store = TeacherLogitStore.open(str(old))
    kept = [i for i in range(6) if i not in pq.read_table(shard).column("sample_id").to_pylist() and i != missing]
    store.lookup(1, kept)
    with pytest.raises(ValueError, match=rf"chunk_000001\.parquet: holds 1 records whose sample ids are not the 2 of "
                                         rf"chunk 1: no record for sample_id={missing} \(1 missing\)"):  # fmt: skip
        store.lookup(1, [missing])
    os.remove(os.path.join(copy, "data/epoch_0000/chunk_000002.parquet"))
    with pytest.raises(FileNotFoundError, match="epoch 0 but 1 shard"):
        TeacherLogitStore.open(copy)


def test_push_to_hub_uploads_metadata_card_and_complete_shards_only(saved, monkeypatch, tmp_path):
    import shutil

    from fake_hub import FakeHub

    copy = str(tmp_path / "copy")
    shutil.copytree(saved["path"], copy)
    open(os.path.join(copy, "data/epoch_0001/chunk_000009.parquet.tmp-123"), "w").close()
    open(os.path.join(copy, "data/epoch_0001/stray.parquet"), "w").close()
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    store = TeacherLogitStore.open(copy)
    store.push_to_hub("someone/digits-logits", private=True)
    assert hub.calls[0] == ("create_repo", {"repo_id": "someone/digits-logits", "repo_type": "dataset", "private": True})
    (commit,) = [args for name, args in hub.calls if name == "create_commit"]
    assert commit["repo_type"] == "dataset"
    assert sorted(commit["paths"]) == sorted(["README.md", "metadata.json"] + _shards(saved["path"]))
    card = (hub.repo_dir("someone/digits-logits", "dataset") / "README.md").read_text()
    assert "someone/digits-logits" in card and "license: other" in card


def test_a_hub_store_fetches_only_the_epochs_a_run_reads(saved, digits, monkeypatch, tmp_path):
    from fake_hub import FakeHub
    from hf_tinyvit.training.distill import open_store

    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    TeacherLogitStore.open(saved["path"]).push_to_hub("me/logits")

    def local_shards(store):
        return sorted(os.path.relpath(f, store.path) for e in (0, 1) for f in store.shard_files(e) if os.path.exists(f))

    store = TeacherLogitStore.open("me/logits", epochs=[1])
    assert local_shards(store) == [f"data/epoch_0001/chunk_{c:06d}.parquet" for c in range(3)]
    assert hub.calls[-1][1]["allow_patterns"] == ["metadata.json", "README.md", "data/epoch_0001/chunk_*.parquet"]
    assert StoredLogitsDataset(digits, store, epoch=1).items([3])[0]["teacher_topk_values"].shape == (3,)
    StoredLogitsDataset(digits, store, epoch=0).items([3])  # epoch 0 is fetched when first read
    assert len(local_shards(store)) == 6
    shutil.rmtree(tmp_path / "hub" / "downloads")  # a fresh cache: a one-epoch run fetches epoch 0 only
    args = type("Args", (), {"teacher_logits": "me/logits", "max_steps": -1, "num_train_epochs": 1.0})()
    assert local_shards(open_store(args)) == [f"data/epoch_0000/chunk_{c:06d}.parquet" for c in range(3)]


# ---- the view cache --------------------------------------------------------------------------------------


def _epoch_items(dataset, epoch):
    dataset.set_epoch(epoch)
    return dataset.__getitems__(list(range(len(dataset))))


def test_view_cache_changes_no_pixel_and_serves_cycled_epochs(saved, digits):
    store = TeacherLogitStore.open(saved["path"], cache_dir=saved["cache"])
    cache = ViewCache()
    plain = StoredLogitsDataset(digits, store)
    cached = StoredLogitsDataset(digits, store, view_cache=cache)
    with pytest.warns(UserWarning, match="epoch 2 was not saved"):
        for epoch in (0, 1, 2, 3):  # 2 and 3 replay the two saved epochs: the second time round is all hits
            expected = _epoch_items(plain, epoch)
            got = _epoch_items(cached, epoch)
            for want, item in zip(expected, got):
                assert want.keys() == item.keys()
                for key in want:
                    assert torch.equal(want[key], item[key]), (epoch, key)
    assert (cache.misses, cache.hits, len(cache)) == (2 * len(digits), 2 * len(digits), 2 * len(digits))
    view = cache.get(next(iter(cache._views)))
    assert cache.nbytes == len(cache) * view.numel() * 4


def test_view_cache_keys_follow_images_recipe_and_seed_not_labels(digits):
    cache = ViewCache()
    relabelled = digits.remove_columns("label").add_column(
        "label", [(y + 1) % 10 for y in digits["label"]], feature=digits.features["label"]
    )
    first = _epoch_items(AugmentedDataset(digits, RECIPE, seed=0, view_cache=cache), 0)
    shared = _epoch_items(AugmentedDataset(relabelled, RECIPE, seed=0, view_cache=cache), 0)
    assert cache.hits == len(digits)  # the same images and recipe: every view is reused ...
    for a, b, y in zip(first, shared, relabelled["label"]):
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert int(b["labels"]) == y  # ... with the other dataset's own labels
    others = load_image_dataset("digits")["train"].select(range(40, 80))
    for dataset, recipe, seed in ((others, RECIPE, 0), (digits, RECIPE, 1), (digits, AugmentationRecipe.deit(16), 0)):
        hits = cache.hits
        got = _epoch_items(AugmentedDataset(dataset, recipe, seed=seed, view_cache=cache), 0)
        want = _epoch_items(AugmentedDataset(dataset, recipe, seed=seed), 0)
        assert cache.hits == hits  # another dataset, seed or recipe never reads a kept view
        assert all(torch.equal(w["pixel_values"], g["pixel_values"]) for w, g in zip(want, got))


def test_view_cache_is_bounded_and_hands_out_copies(digits):
    view_bytes = 3 * 16 * 16 * 4
    cache = ViewCache(max_bytes=5 * view_bytes)
    dataset = AugmentedDataset(digits, RECIPE, seed=0, view_cache=cache)
    first = _epoch_items(dataset, 0)
    assert len(cache) == 5 and cache.nbytes == 5 * view_bytes
    first[0]["pixel_values"].zero_()  # a caller writing into its batch must not reach the kept view
    again = dataset[0]
    assert cache.hits == 1 and again["pixel_values"].abs().sum() > 0
    with pytest.raises(ValueError, match="max_bytes=-1"):
        ViewCache(max_bytes=-1)


def test_saving_through_a_filled_view_cache_writes_the_same_shards(saved, digits, tmp_path):
    cache = ViewCache()
    _epoch_items(AugmentedDataset(digits, RECIPE, seed=0, view_cache=cache), 0)  # e.g. a teacher trained on these
    kwargs = {**saved["kwargs"], "end_epoch": 1}
    path = save_teacher_logits(saved["teacher"], digits, str(tmp_path / "cached"), view_cache=cache, **kwargs)
    assert cache.misses == len(digits) and cache.hits >= len(digits)  # (plus the saver's first probe view)
    shards = [s for s in _shards(path) if "epoch_0" in s or "epoch=0" in s or "00000" in s]
    assert shards and all(filecmp.cmp(os.path.join(path, s), os.path.join(saved["path"], s), shallow=False) for s in shards)
