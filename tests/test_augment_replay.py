"""Replayable augmentation: timm parity of every RandAugment op, bitwise replay on real images
(digits and a scikit-image photo), and independence from workers, batches, order and start epoch."""

import dataclasses

import datasets
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from skimage import data as skimage_data
from torch.utils.data import DataLoader

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    apply_augmentation,
    augmentation_seed,
    collate_views,
    image_to_tensor,
    load_image_dataset,
    sample_augmentation,
)
from hf_tinyvit.augment import mix_partners, sample_mix
from hf_tinyvit.augment.render import apply_rand_augment_op
from hf_tinyvit.augment.sampling import LEVEL_TO_ARGUMENT, OPS_INCREASING, OPS_PLAIN

ALL_OPS = sorted(set(OPS_PLAIN) | set(OPS_INCREASING))


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")["train"]


@pytest.fixture(scope="module")
def astronaut():
    return torch.from_numpy(skimage_data.astronaut().copy()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def photo_dataset(astronaut):
    # a few real photo crops of different sizes, so crop boxes and op arguments vary
    crops = [astronaut[:, :300, :200], astronaut[:, 100:400, 50:450], astronaut[:, 256:, 256:]]
    images = [Image.fromarray(c.permute(1, 2, 0).numpy()) for c in crops]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


# -- parity with timm's PIL RandAugment ops ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_OPS)
def test_rand_augment_op_matches_timm(name, astronaut):
    from timm.data.auto_augment import AugmentOp

    crop = astronaut[:, 100:228, 150:278].contiguous()
    fill = [124.0, 116.0, 104.0]
    reference = AugmentOp(
        name, prob=1.0, magnitude=9, hparams={"img_mean": (124, 116, 104), "interpolation": Image.BILINEAR}
    )
    level_fn = LEVEL_TO_ARGUMENT[name]
    for negate in (False, True):
        argument = None if level_fn is None else level_fn(9.0, negate)
        ours = apply_rand_augment_op(crop, name, argument, fill).float()
        expected = reference.aug_fn(
            TF.to_pil_image(crop), *(() if argument is None else (argument,)), **reference.kwargs
        )
        expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float()
        difference = (ours - expected).abs()
        if name.startswith(("Rotate", "Shear", "Translate")):
            # same geometry; only border pixels differ between PIL's and torchvision's resamplers
            assert difference.mean() < 1.5, (name, negate, difference.mean())
        else:
            assert difference.max() <= 1, (name, negate, difference.max())
        assert not torch.equal(ours, crop.float()) or name == "AutoContrast", f"{name} left the image unchanged"


# -- bitwise replay -----------------------------------------------------------------------------------------


def _first_epoch_with_op(recipe, seed, sample_id, height, width, op):
    for epoch in range(2000):
        params = sample_augmentation(recipe, augmentation_seed(seed, epoch, sample_id), height, width)
        if any(o.name == op for o in params.ops):
            return epoch
    raise AssertionError(f"no epoch in 2000 draws {op}")


@pytest.mark.parametrize("source", ["digits", "photo"])
def test_every_recipe_op_replays_bitwise(source, digits, photo_dataset):
    dataset = digits.select(range(3)) if source == "digits" else photo_dataset
    recipe = AugmentationRecipe(
        image_size=48, interpolation="random", color_jitter=(0.4, 0.4, 0.4, 0.1), reprob=0.5, remode="pixel", recount=2
    )
    first = AugmentedDataset(dataset, recipe, seed=7, label_column=None)
    second = AugmentedDataset(dataset, recipe, seed=7, label_column=None)
    seen = set()
    for op in OPS_INCREASING:  # the default recipe is timm's rand-m9-mstd0.5-inc1
        sample_id = len(seen) % len(dataset)
        height, width = first._read(sample_id)[0].shape[-2:]
        epoch = _first_epoch_with_op(recipe, 7, sample_id, height, width, op)
        params = sample_augmentation(recipe, augmentation_seed(7, epoch, sample_id), height, width)
        seen.update(o.name for o in params.ops)
        seen.update(name for name, _ in params.color_jitter)
        seen.add(f"erase:{len(params.erase_boxes)}")
        seen.add(f"hflip:{params.hflip}")
        seen.add(params.interpolation)
        first.set_epoch(epoch)
        a = first[sample_id]["pixel_values"]
        b = second.items([sample_id], epoch)[0]["pixel_values"]
        assert torch.equal(a, b), (op, epoch)
        assert a.dtype == torch.float32 and a.shape == (3, 48, 48)
    # the walk went through every op of the recipe, flips both ways, both interpolations, erasing
    assert set(OPS_INCREASING) <= seen
    assert {"brightness", "contrast", "saturation", "hue", "hflip:True", "hflip:False", "bilinear", "bicubic"} <= seen
    assert any(s.startswith("erase:") and s != "erase:0" for s in seen)


def test_pixel_erasing_replays_its_noise_and_erases(astronaut):
    recipe = AugmentationRecipe(image_size=64, auto_augment=None, reprob=1.0, remode="pixel", recount=3)
    params = sample_augmentation(recipe, 99, *astronaut.shape[-2:])
    assert params.erase_boxes
    erased = apply_augmentation(astronaut, params, recipe)
    clean = apply_augmentation(astronaut, dataclasses.replace(params, erase_boxes=()), recipe)
    top, left, h, w = params.erase_boxes[0]
    box = erased[:, top : top + h, left : left + w]
    assert not torch.equal(box, clean[:, top : top + h, left : left + w])
    assert 0.5 < box.std() < 1.5  # standard normal noise in normalised space, as timm's pixel mode
    assert torch.equal(erased, apply_augmentation(astronaut, params, recipe))


def test_params_depend_only_on_seed_and_source_size():
    recipe = AugmentationRecipe.deit(32)
    a = sample_augmentation(recipe, augmentation_seed(3, 5, 11), 40, 50)
    assert a == sample_augmentation(recipe, augmentation_seed(3, 5, 11), 40, 50)
    assert a != sample_augmentation(recipe, augmentation_seed(3, 6, 11), 40, 50)
    top, left, h, w = a.crop
    assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
    assert augmentation_seed(0, 0, 0) != augmentation_seed(0, 0, 1) and 0 <= augmentation_seed(1, 2, 3) < 2**32


def test_eval_recipe_is_deterministic_resize_and_centre_crop(astronaut):
    recipe = AugmentationRecipe.eval(64)
    params = sample_augmentation(recipe, 1, *astronaut.shape[-2:])
    assert params.crop is None and not params.ops and not params.erase_boxes
    out = apply_augmentation(astronaut, params, recipe)
    resized = TF.resize(astronaut, [73], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    expected = TF.normalize(
        TF.to_dtype(TF.center_crop(resized, [64, 64]), torch.float32, scale=True), list(recipe.mean), list(recipe.std)
    )
    assert torch.equal(out, expected)


def _render_all(dataset, loader_kwargs, epochs):
    out = {}
    loader = DataLoader(dataset, collate_fn=dataset.collate_fn, **loader_kwargs)
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for batch in loader:
            for sid, pixels in zip(batch["sample_id"].tolist(), batch["pixel_values"]):
                out[(epoch, sid)] = pixels
    return out


def test_replay_ignores_workers_batches_order_and_start_epoch(digits):
    subset = digits.select(range(10))
    recipe = AugmentationRecipe.tinyvit_pretrain(24)
    reference = _render_all(AugmentedDataset(subset, recipe, seed=1), {"batch_size": 4}, [0, 1, 2])
    # two persistent workers, another batch size, a shuffled order, starting at epoch 1:
    # set_epoch in this process must reach the workers that already exist
    other = AugmentedDataset(subset, recipe, seed=1)
    generator = torch.Generator().manual_seed(5)
    kwargs = {"batch_size": 3, "num_workers": 2, "persistent_workers": True, "shuffle": True, "generator": generator}
    replayed = _render_all(other, kwargs, [2, 1])
    assert set(replayed) == {k for k in reference if k[0] in (1, 2)}
    for key, pixels in replayed.items():
        assert torch.equal(pixels, reference[key]), key
    assert not torch.equal(reference[(1, 0)], reference[(2, 0)])
    # another seed gives other views
    assert not torch.equal(AugmentedDataset(subset, recipe, seed=2).items([0], 1)[0]["pixel_values"], reference[(1, 0)])


# -- Mixup / CutMix ------------------------------------------------------------------------------------------


def test_partners_are_symmetric_and_an_odd_sample_stays_unmixed():
    recipe = AugmentationRecipe.deit(16)
    partner = mix_partners(recipe, seed=0, epoch=3, num_samples=11)
    assert (partner == -1).sum() == 1
    paired = np.flatnonzero(partner >= 0)
    assert np.array_equal(partner[partner[paired]], paired)
    assert not np.array_equal(partner, mix_partners(recipe, seed=0, epoch=4, num_samples=11))
    for i in paired:
        mine, theirs = sample_mix(recipe, 0, 3, i, partner[i]), sample_mix(recipe, 0, 3, partner[i], i)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert (mine.mode, mine.lam, mine.box) == (theirs.mode, theirs.lam, theirs.box)
    assert np.all(mix_partners(AugmentationRecipe.tinyvit_pretrain(16), 0, 3, 11) == -1)


def test_mixed_batches_decode_each_image_once_and_match_single_items(digits, monkeypatch):
    subset = digits.select(range(9))
    recipe = dataclasses.replace(AugmentationRecipe.deit(16), reprob=0.0)
    dataset = AugmentedDataset(subset, recipe, seed=3)
    dataset.set_epoch(2)
    reads = []
    original = AugmentedDataset._read
    monkeypatch.setattr(AugmentedDataset, "_read", lambda self, i: reads.append(i) or original(self, i))
    loader = DataLoader(dataset, batch_size=4, sampler=dataset.train_sampler(seed=0), collate_fn=dataset.collate_fn)
    batches = list(loader)
    assert sorted(reads) == list(range(9))  # partners adjacent, even batches: one decode per image
    assert [len(b["sample_id"]) for b in batches] == [4, 4, 1]  # the odd last batch still works
    partner = mix_partners(recipe, 3, 2, 9)
    modes = set()
    for batch in batches:
        labels_of_batch = batch["labels"]
        if labels_of_batch.dtype == torch.int64:  # a batch of unmixed samples keeps class indices
            assert all(sample_mix(recipe, 3, 2, s, partner[s]) is None for s in batch["sample_id"].tolist())
            labels_of_batch = torch.nn.functional.one_hot(labels_of_batch, 10).float()
        assert labels_of_batch.shape[1] == 10
        torch.testing.assert_close(labels_of_batch.sum(1), torch.ones(len(labels_of_batch)))
        for sid, pixels, labels in zip(batch["sample_id"].tolist(), batch["pixel_values"], labels_of_batch):
            single = dataset[sid]  # alone, it decodes its partner too; the result must be the same
            assert torch.equal(single["pixel_values"], pixels)
            mix = sample_mix(recipe, 3, 2, sid, partner[sid])
            if mix is None:
                assert torch.equal(labels, torch.nn.functional.one_hot(single["labels"], 10).float())
                continue
            modes.add(mix.mode)
            own, _ = dataset.render(sid)
            other, _ = dataset.render(int(partner[sid]))
            if mix.mode == "mixup":
                torch.testing.assert_close(pixels, own * mix.lam + other * (1 - mix.lam))
            else:
                top, left, h, w = mix.box
                assert torch.equal(pixels[:, top : top + h, left : left + w], other[:, top : top + h, left : left + w])
            assert labels[subset[sid]["label"]] >= mix.lam - 1e-6
    assert modes  # at least one pair was mixed


def test_collate_turns_integer_labels_into_distributions_only_when_needed():
    items = [
        {"labels": torch.tensor(2), "x": torch.zeros(2)},
        {"labels": torch.tensor([0.5, 0.5, 0.0]), "x": torch.ones(2)},
    ]
    batch = collate_views(items)
    assert torch.equal(batch["labels"], torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]))
    assert collate_views(items[:1])["labels"].dtype == torch.int64


# -- recipe ---------------------------------------------------------------------------------------------------


def test_recipe_round_trips_and_fingerprints_every_field():
    recipe = AugmentationRecipe.deit(32)
    assert AugmentationRecipe.from_dict(recipe.to_dict()) == recipe
    assert AugmentationRecipe.from_dict(recipe.to_dict()).fingerprint() == recipe.fingerprint()
    for field in dataclasses.fields(AugmentationRecipe):
        value = getattr(recipe, field.name)
        if isinstance(value, tuple):
            changed = tuple(v * 0.5 for v in value)
        elif isinstance(value, float):
            changed = value * 0.5 if value else 0.1
        elif isinstance(value, int):
            changed = value + 1
        elif field.name == "auto_augment":
            changed = "rand-m7-mstd0.5-inc1"
        elif field.name == "interpolation":
            changed = "bilinear"
        elif field.name == "remode":
            changed = "const"
        else:
            assert field.name == "crop_mode", f"no change defined for {field.name}"
            evaluation = AugmentationRecipe.eval(32)
            assert dataclasses.replace(evaluation, crop_mode="random_resized").fingerprint() != evaluation.fingerprint()
            continue
        assert dataclasses.replace(recipe, **{field.name: changed}).fingerprint() != recipe.fingerprint(), field.name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"auto_augment": "rand-m9-x3"}, "unknown section 'x3'"),
        ({"auto_augment": "augmix-m5"}, "only RandAugment"),
        ({"scale": (0.5, 0.1)}, "scale=(0.5, 0.1)"),
        ({"remode": "noise"}, "remode='noise'"),
        ({"hflip": 1.5}, "hflip=1.5"),
        ({"interpolation": "lanczos"}, "interpolation='lanczos'"),
        ({"color_jitter": (0.1, 0.2)}, "color_jitter"),
        ({"crop_mode": "center"}, "turn off"),
    ],
)
def test_recipe_rejects_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AugmentationRecipe(**kwargs)


def test_unreadable_image_names_the_sample_and_empty_dataset_is_refused(digits):
    good = digits.select(range(2)).cast_column("image", datasets.Image(decode=False))
    rows = good.to_list()
    rows[1]["image"] = {"bytes": b"not an image at all", "path": None}
    broken = datasets.Dataset.from_list(rows, features=good.features).cast_column("image", datasets.Image())
    dataset = AugmentedDataset(broken, AugmentationRecipe.tinyvit_pretrain(16), seed=0)
    dataset[0]
    with pytest.raises(ValueError, match="sample_id=1"):
        dataset[1]
    with pytest.raises(ValueError, match="empty"):
        AugmentedDataset(digits.select([]), AugmentationRecipe.tinyvit_pretrain(16), seed=0)


def test_image_to_tensor_reads_grayscale_and_arrays(digits):
    gray = image_to_tensor(digits[0]["image"])
    assert gray.shape == (3, 8, 8) and gray.dtype == torch.uint8 and torch.equal(gray[0], gray[2])
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert torch.equal(image_to_tensor(array), torch.from_numpy(array).permute(2, 0, 1))
