"""Hostile encodings, property-based: random and malformed augmentation seeds, AugmentationParams, recipe
dicts and store metadata either work (a view of the recipe's size) or raise a library error with a
message; nothing else escapes and nothing comes back the wrong size."""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_tinyvit import (
    AugmentationParams,
    AugmentationRecipe,
    StoredLogitsDataset,
    TeacherLogitStore,
    apply_augmentation,
    decode_augmentation,
    save_teacher_logits,
)
from hf_tinyvit.augment import RandAugmentOp
from hf_tinyvit.augment.sampling import LEVEL_TO_ARGUMENT

pytestmark = pytest.mark.fault
# derandomized: the same examples on every run and machine, so a failure reproduces
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
LIBRARY_ERRORS = (ValueError, TypeError, KeyError)
SIZE = 12
RECIPE = AugmentationRecipe(image_size=SIZE, recount=3, color_jitter=(0.2, 0.2, 0.2, 0.1))

junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5),
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 50), max_size=5),
)  # fmt: skip
small_ints = st.integers(-3, 40)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40))


def image(height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(height * 100 + width)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def assert_library_error(error: BaseException) -> None:
    assert isinstance(error, LIBRARY_ERRORS), f"{type(error).__name__}: {error}"
    assert str(error).strip(), f"{type(error).__name__} without a message"


def check_view(recipe: AugmentationRecipe, view: torch.Tensor) -> None:
    assert view.shape == (3, recipe.image_size, recipe.image_size) and view.dtype == torch.float32


@settings(max_examples=80, **SETTINGS)
@given(seed=st.one_of(st.integers(-(2**70), 2**70), junk), height=st.one_of(small_ints, junk), width=small_ints)
def test_decoding_any_seed_and_source_size(seed, height, width):
    try:
        params = decode_augmentation(RECIPE, seed, height, width)
    except BaseException as error:
        assert_library_error(error)
        return
    assert 0 <= seed < 2**32 and height >= 1 and width >= 1
    check_view(RECIPE, apply_augmentation(image(height, width), params, RECIPE))


boxes = st.one_of(st.tuples(small_ints, small_ints, small_ints, small_ints), junk)
ops = st.builds(
    RandAugmentOp,
    name=st.one_of(st.sampled_from(sorted(LEVEL_TO_ARGUMENT)), st.text(max_size=6)),
    magnitude=numbers,
    argument=st.one_of(st.none(), numbers, st.floats(-2, 300)),
)
params_strategy = st.builds(
    AugmentationParams,
    crop=st.one_of(st.none(), boxes),
    interpolation=st.one_of(st.sampled_from(["bilinear", "bicubic", "nearest"]), junk),
    hflip=st.one_of(st.booleans(), junk),
    ops=st.lists(ops, max_size=3).map(tuple),
    color_jitter=st.lists(
        st.tuples(st.sampled_from(["brightness", "contrast", "saturation", "hue", "gamma"]), numbers), max_size=3
    ).map(tuple),
    erase_boxes=st.lists(boxes, max_size=2).map(tuple),
    erase_seed=st.one_of(st.integers(-(2**70), 2**70), junk),
)


@settings(max_examples=150, **SETTINGS)
@given(params=params_strategy, height=st.integers(1, 30), width=st.integers(1, 30))
def test_applying_any_params(params, height, width):
    try:
        view = apply_augmentation(image(height, width), params, RECIPE)
    except BaseException as error:
        assert_library_error(error)
        return
    check_view(RECIPE, view)
    assert torch.isfinite(view).all()


FIELDS = [f.name for f in dataclasses.fields(AugmentationRecipe)]


@settings(max_examples=150, **SETTINGS)
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS + ["unknown_field"]), junk, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_recipe_dict(changes, seed):
    values = {**AugmentationRecipe.deit(SIZE).to_dict(), **changes}
    try:
        recipe = AugmentationRecipe.from_dict(values)
        # sizes are free; rendering stays small so that a huge but valid image_size cannot exhaust memory
        if recipe.image_size > 64:
            return
        view = apply_augmentation(image(9, 7), decode_augmentation(recipe, seed, 9, 7), recipe)
    except BaseException as error:
        assert_library_error(error)
        return
    check_view(recipe, view)
    assert torch.isfinite(view).all(), changes
    assert AugmentationRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


@pytest.fixture(scope="module")
def saved_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(6)]
    dataset = datasets.Dataset.from_dict({"image": images})

    def teacher(pixel_values):
        return pixel_values.mean(dim=(2, 3)) @ torch.arange(12.0).view(3, 4)

    root = tmp_path_factory.mktemp("store")
    save_teacher_logits(
        teacher, dataset, str(root / "store"), recipe=AugmentationRecipe.deit(SIZE), topk=2, num_epochs=1,
        chunk_size=2, teacher_name="linear", teacher_hash="h", progress=False,
    )  # fmt: skip
    return dataset, root / "store"


metadata_changes = st.dictionaries(
    st.sampled_from(
        ["format_version", "num_labels", "topk", "recipe", "recipe_fingerprint", "seed", "dataset_size",
         "chunk_size", "num_chunks", "epochs", "id2label", "dataset_fingerprint", "teacher_name"]
    ),
    st.one_of(junk, st.dictionaries(st.text(max_size=4), junk, max_size=2), st.lists(st.integers(-2, 3), max_size=3)),
    min_size=1,
    max_size=2,
)  # fmt: skip


@settings(max_examples=60, **SETTINGS)
@given(changes=st.one_of(metadata_changes, st.binary(max_size=20)))
def test_any_store_metadata(saved_store, changes):
    dataset, path = saved_store
    copy = path.parent / "hostile"  # one folder for every example: its shards stay in the datasets cache
    if not copy.exists():
        copy.mkdir()
        (copy / "data").symlink_to(path / "data")
    if isinstance(changes, bytes):
        (copy / "metadata.json").write_bytes(changes)
    else:
        metadata = json.loads((path / "metadata.json").read_text())
        (copy / "metadata.json").write_text(json.dumps({**metadata, **changes}))
    try:
        store = TeacherLogitStore.open(str(copy), cache_dir=str(copy.parent / "cache"))
        replay = StoredLogitsDataset(dataset, store, label_column=None)
        items = [replay[i] for i in range(len(dataset))]
    except FileNotFoundError as error:  # a shard the metadata promises is absent: named, like a KeyError
        assert str(copy) in str(error)
        return
    except BaseException as error:
        assert_library_error(error)
        return
    for item in items:
        check_view(replay.recipe, item["pixel_values"])
        assert item["teacher_topk_values"].shape == item["teacher_topk_indices"].shape == (store.topk,)
        values, indices = item["teacher_topk_values"], item["teacher_topk_indices"]
        assert torch.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
        assert ((indices >= 0) & (indices < store.num_labels)).all()
