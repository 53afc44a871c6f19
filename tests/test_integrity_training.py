"""Never silently wrong, the training side: a NaN teacher, loss or gradient stops training at its step with
the sample ids and epoch, before anything is saved; resuming in another world is refused; every setting is
checked up front, naming the value and what is accepted, before any file is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tinyvit import (
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    TeacherModel,
    image_to_tensor,
    load_image_dataset,
    save_teacher_logits,
)
from hf_tinyvit.training import DistillationTrainer
from test_trainer_distillation import TRAIN_RECIPE, arguments, fit_teacher, tinyvit

NUM_TRAIN = 48


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")["train"].select(range(NUM_TRAIN))


@pytest.fixture(scope="module")
def teacher(digits):
    return fit_teacher(digits)


@pytest.fixture(scope="module")
def store(digits, teacher, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("store") / "digits")
    save_teacher_logits(teacher, digits, path, recipe=TRAIN_RECIPE, topk=3, num_epochs=2, seed=0, progress=False)
    return path


def saved_files(output_dir) -> list[str]:
    return sorted(str(p.relative_to(output_dir)) for p in Path(output_dir).rglob("*") if p.is_file())


class NaNForSample(torch.nn.Module):
    """A teacher whose output for one sample (recognised by its pixels) turns NaN."""

    def __init__(self, teacher, target: torch.Tensor):
        super().__init__()
        self.teacher, self.num_labels = teacher, teacher.num_labels
        self.register_buffer("target", target)

    def forward(self, pixel_values):
        logits = self.teacher(pixel_values).clone()
        hit = (pixel_values == self.target).flatten(1).all(dim=1)
        logits[hit] = float("nan")
        return logits


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_a_live_teacher_returning_nan_stops_training_naming_the_sample(mode, digits, teacher, tmp_path):
    views = AugmentedDataset(digits, TRAIN_RECIPE, seed=0)
    poisoned = NaNForSample(teacher, views.items([7], epoch=1)[0]["pixel_values"])
    trainer = DistillationTrainer(
        model=tinyvit(), args=arguments(tmp_path, distillation_type=mode, num_train_epochs=2, per_device_train_batch_size=16),
        train_dataset=views, teacher_model=poisoned,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"the teacher's output for sample_id=7 \(epoch 1\) contains NaN or inf"):
        trainer.train()
    assert 3 <= trainer.state.global_step < 6  # it stopped in epoch 1, at the batch holding sample 7
    assert saved_files(tmp_path) == []


def test_a_live_teacher_with_another_class_count_is_refused_per_batch(digits, teacher, tmp_path):
    class SevenClasses(torch.nn.Module):  # declares no num_labels: only its output can tell
        def forward(self, pixel_values):
            return teacher(pixel_values)[:, :7]

    trainer = DistillationTrainer(
        model=tinyvit(), args=arguments(tmp_path, distillation_type="soft", per_device_train_batch_size=16),
        train_dataset=AugmentedDataset(digits, TRAIN_RECIPE, seed=0), teacher_model=SevenClasses(),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"the teacher returned logits of shape \(16, 7\); expected \(16, 10\)"):
        trainer.train()
    assert saved_files(tmp_path) == []


class PoisonedViews(AugmentedDataset):
    """Views whose pixels turn NaN for one sample in one epoch: a corrupt input no check upstream caught."""

    def __init__(self, *args, bad_sample: int, bad_epoch: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_sample, self.bad_epoch = bad_sample, bad_epoch

    def items(self, sample_ids, epoch=None):
        items = super().items(sample_ids, epoch)
        for item in items:
            if int(item["sample_id"]) == self.bad_sample and self.epoch == self.bad_epoch:
                item["pixel_values"] = torch.full_like(item["pixel_values"], float("nan"))
        return items


def test_a_nan_loss_stops_training_at_its_step_naming_samples_and_epoch(digits, tmp_path):
    views = PoisonedViews(digits, TRAIN_RECIPE, seed=0, bad_sample=11, bad_epoch=1)
    args = arguments(tmp_path, num_train_epochs=3, per_device_train_batch_size=16, save_strategy="epoch")
    trainer = DistillationTrainer(model=tinyvit(), args=args, train_dataset=views)
    with pytest.raises(FloatingPointError, match=r"the training loss is nan at epoch 1, step \d+: stopped before the "
                                                 r"optimizer step.*sample_id=\[.*\b11\b.*\]"):  # fmt: skip
        trainer.train()
    # the checkpoint of epoch 0 is whole and finite; no final model was saved
    assert saved_files(tmp_path) and not (tmp_path / "model.safetensors").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_non_finite_gradient_stops_training_before_the_optimizer_takes_it(digits, tmp_path):
    model = tinyvit()
    calls = {"n": 0}

    def explode(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad  # the 2nd micro-batch of the first step

    model.classifier.weight.register_hook(explode)
    trainer = DistillationTrainer(
        model=model, args=arguments(tmp_path, per_device_train_batch_size=16, gradient_accumulation_steps=2),
        train_dataset=AugmentedDataset(digits, TRAIN_RECIPE, seed=0),
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    # the message names both accumulated micro-batches' samples: 2 x 16
    with pytest.raises(FloatingPointError, match=r"the gradients are not finite \(first in classifier\.weight\) at "
                                                 r"epoch 0, step 1: stopped before the optimizer step.*"
                                                 r"sample_id=\[(\d+, ){31}\d+\]"):  # fmt: skip
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # no weight took them
    assert saved_files(tmp_path) == []


# ---- resume refuses a different world ------------------------------------------------------------------


def stored_trainer(output_dir, store_path, digits, **kwargs):
    args = arguments(
        output_dir, distillation_type="stored", teacher_logits=store_path, num_train_epochs=2,
        per_device_train_batch_size=16, save_strategy="steps", save_steps=2, **kwargs,
    )  # fmt: skip
    return DistillationTrainer(model=tinyvit(), args=args, train_dataset=StoredLogitsDataset(digits, store_path))


def test_resuming_with_another_store_recipe_or_dataset_is_refused(digits, store, tmp_path):
    stored_run = tmp_path / "stored"
    stored_trainer(stored_run, store, digits, max_steps=2).train()
    checkpoint = str(stored_run / "checkpoint-2")
    record = json.loads((Path(checkpoint) / "distillation_run.json").read_text())
    assert record["store"]["identity"] == TeacherLogitStore.open(store).identity
    other = str(tmp_path / "other-store")  # the same dataset and recipe, another teacher
    save_teacher_logits(fit_teacher(digits.select(range(40))), digits, other, recipe=TRAIN_RECIPE, topk=3, num_epochs=2,
                        seed=0, progress=False)  # fmt: skip
    before = saved_files(stored_run)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-2: it was trained on another world; changed: "
                                         r"the teacher-logit store \(identity '\w+' -> '\w+': path"):  # fmt: skip
        stored_trainer(stored_run, other, digits).train(resume_from_checkpoint=checkpoint)
    assert saved_files(stored_run) == before  # nothing written by a refused resume
    stored_trainer(stored_run, store, digits).train(resume_from_checkpoint=True)  # the same world resumes

    online_run = tmp_path / "online"

    def online(dataset, recipe=TRAIN_RECIPE, **kwargs):
        args = arguments(online_run, num_train_epochs=2, per_device_train_batch_size=16, save_strategy="steps",
                         save_steps=2, **kwargs)  # fmt: skip
        return DistillationTrainer(model=tinyvit(), args=args, train_dataset=AugmentedDataset(dataset, recipe, seed=0))

    online(digits, max_steps=2).train()
    other_recipe = dataclasses.replace(TRAIN_RECIPE, scale=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"changed: the augmentation recipe \(recipe_fingerprint '\w+' -> '\w+'\)"):
        online(digits, other_recipe).train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"changed: the dataset's content \(dataset_fingerprint '\w+' -> '\w+'\)"):
        online(digits.shuffle(seed=1)).train(resume_from_checkpoint=True)


# ---- every setting checked up front --------------------------------------------------------------------


def test_training_settings_that_would_train_nothing_or_on_nan(tmp_path):
    for kwargs, message in [
        ({"num_train_epochs": 0}, r"num_train_epochs=0 with max_steps=-1 trains nothing"),
        ({"num_train_epochs": float("nan")}, r"num_train_epochs=nan with max_steps=-1 trains nothing"),
        ({"learning_rate": float("nan")}, r"learning_rate=nan must be a finite number >= 0"),
        ({"learning_rate": -1e-3}, r"learning_rate=-0\.001 must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            arguments(tmp_path / "out", **kwargs)
    assert arguments(tmp_path / "out", num_train_epochs=0, max_steps=3).max_steps == 3
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image_size", "0"], r"image_size=0 must be an integer in \[1, 4096\]"),
        (["--image_size", "100000"], r"image_size=100000 must be an integer in \[1, 4096\]"),
        (["--max_train_samples", "0"], r"max_train_samples=0 must be an integer >= 1"),
        (["--validation_split_percentage", "100"], r"validation_split_percentage=100\.0 must be a number in \[0, 100\)"),
        (["--config_overrides", "{depths: 1}"], r"config_overrides='\{depths: 1\}' is not valid JSON"),
        (["--config_overrides", "[1, 2]"], r"config_overrides='\[1, 2\]' holds a list; expected a JSON object"),
        (["--config_overrides", '{"image_size": 64}'], r"config_overrides sets \['image_size'\], which the run sets"),
        (["--model_preset", "tinyvit-6m-224"], r"model_preset='tinyvit-6m-224'; choose one of"),
        (["--num_train_epochs", "0"], r"num_train_epochs=0\.0 with max_steps=-1 trains nothing"),
    ],
)
def test_distill_flags_are_refused_before_anything_runs(argv, message, tmp_path):
    from hf_tinyvit.training.distill import parse_distill_args

    base = {"--model_preset": "tinyvit-5m-224", "--output_dir": str(tmp_path / "out")}
    flags = dict(zip(argv[::2], argv[1::2]))
    with pytest.raises(ValueError, match=message):
        parse_distill_args([arg for key, value in {**base, **flags}.items() for arg in (key, value)] + ["--use_cpu"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ('{"depth": [1, 1, 1, 1]}', r"config_overrides fields \['depth'\] are not fields of TinyViTConfig"),
        ('{"depths": [1, 1]}', r"config_overrides=\{\"depths\": \[1, 1\]\} do not make a valid TinyViTConfig"),
    ],
)
def test_config_overrides_a_config_would_take_silently_or_reject_rawly(overrides, message):
    from hf_tinyvit.training.distill import ModelArguments, build_model

    with pytest.raises(ValueError, match=message):
        build_model(ModelArguments(model_preset="tinyvit-5m-224", config_overrides=overrides), 32, 3, {0: "a", 1: "b", 2: "c"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"check_samples": -5}, r"check_samples=-5 must be >= 0"),
        ({"num_workers": -1}, r"num_workers=-1 must be >= 0"),
        ({"seed": -1}, r"seed=-1 must be >= 0"),
        ({"batch_size": 2.5}, r"batch_size=2\.5 must be >= 1 \(an integer\)"),
        ({"id2label": {0: "zero"}}, r"id2label has 1 entries .* returns 10 logits: give one name for each class 0\.\.9"),
        ({"lock_timeout": -1}, r"lock_timeout=-1 must be a number of seconds >= 0"),
    ],
)
def test_saving_settings_are_refused_before_any_file(kwargs, message, digits, teacher, tmp_path):
    output = tmp_path / "store"
    options = dict(recipe=TRAIN_RECIPE, topk=3, num_epochs=1, progress=False)
    with pytest.raises(ValueError, match=message):
        save_teacher_logits(teacher, digits, str(output), **{**options, **kwargs})
    assert not output.exists()


def test_save_logits_command_names_a_bogus_split_and_a_mistyped_store(tmp_path):
    from hf_tinyvit.cli import main as cli

    with pytest.raises(ValueError, match=r"split='bogus' is not a split of 'digits'; its splits are \['test', 'train'\] "):
        cli(["save-logits", "--teacher", str(tmp_path / "no-teacher"), "--split", "bogus", "--output_dir", str(tmp_path / "s")])
    with pytest.raises(SystemExit):
        cli(["save-logits", "--teacher", "x", "--image_size", "0", "--output_dir", str(tmp_path / "s")])
    for typo in ("logits/digits-top3", "./digits-top3", "logits\\digits"):
        with pytest.raises(FileNotFoundError, match=rf"no store folder {typo!r}".replace("\\", "\\\\")):
            TeacherLogitStore.open(typo)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; a teacher-logit store is a folder"):
        TeacherLogitStore.open(str(tmp_path / "a-file"))
    assert not (tmp_path / "s").exists()


def test_splits_join_with_a_plus():
    from hf_tinyvit.datasets import select_split

    splits = load_image_dataset("digits")
    assert len(select_split(splits, "train+test")) == 1797
    with pytest.raises(ValueError, match=r"split='train\+tset' is not a split of"):
        select_split(splits, "train+tset")


def test_numpy_images_are_read_channels_last_and_tensors_channels_first():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (3, 8, 3), dtype=np.uint8)  # 3 rows of 8 RGB pixels: looks channels-first
    assert torch.equal(image_to_tensor(hwc), torch.from_numpy(hwc).permute(2, 0, 1))
    assert torch.equal(image_to_tensor(torch.from_numpy(hwc).permute(2, 0, 1)), torch.from_numpy(hwc).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\): numpy arrays are channels-last"):
        image_to_tensor(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\): torch tensors are channels-first"):
        image_to_tensor(torch.zeros(8, 8, 3, dtype=torch.uint8))
    pil = Image.fromarray(hwc)
    assert torch.equal(image_to_tensor(pil), image_to_tensor(hwc))


def test_a_teacher_whose_labels_do_not_match_its_classes_is_refused():
    with pytest.raises(ValueError, match=r"id2label names classes \[0, 1, 2\]\.\.\. \(3 entries\); num_labels=5 needs"):
        TeacherModel(torch.nn.Identity(), name="t", weights_hash="h", num_labels=5, id2label={0: "a", 1: "b", 2: "c"})


def test_split_policy_teacher_pass_covers_the_whole_train_split(tmp_path):
    from hf_tinyvit.training.distill import DataArguments, _split

    folder = tmp_path / "images"
    for i in range(20):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), i * 10, dtype=np.uint8)).save(folder / f"class{i % 2}" / f"{i}.png")
    name = f"imagefolder:{folder}"
    assert list(load_image_dataset(name, validation_split_percentage=0)) == ["train"]
    assert len(load_image_dataset(name, validation_split_percentage=0)["train"]) == 20  # what save-logits runs on
    online = _split(DataArguments(dataset_name=name), replaying=False)
    assert (len(online["train"]), len(online["test"])) == (18, 2)  # the stated default: 10%
    assert len(_split(DataArguments(dataset_name=name, validation_split_percentage=25), replaying=False)["test"]) == 5
    replayed = _split(DataArguments(dataset_name=name), replaying=True)
    assert list(replayed) == ["train"] and len(replayed["train"]) == 20  # the store covers all 20
    with pytest.raises(ValueError, match=r"validation_split_percentage=10 applies to datasets without a test or "
                                         r"validation split; 'digits' has \['test', 'train'\]"):  # fmt: skip
        _split(DataArguments(dataset_name="digits", validation_split_percentage=10), replaying=False)


def test_save_logits_runs_the_teacher_on_every_training_image(tmp_path, monkeypatch):
    import hf_tinyvit.store.writer as writer
    from hf_tinyvit.cli import main as cli

    folder = tmp_path / "images"
    for i in range(20):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), i * 10, dtype=np.uint8)).save(folder / f"class{i % 2}" / f"{i}.png")
    seen = {}

    def record(teacher, dataset, output_dir, **kwargs):
        seen["size"] = len(dataset)
        return output_dir

    monkeypatch.setattr(writer, "save_teacher_logits", record)
    teacher = tmp_path / "teacher"
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                                        num_attention_heads=1, intermediate_size=8, num_labels=2)).save_pretrained(teacher)  # fmt: skip
    cli(["save-logits", "--teacher", str(teacher), "--dataset_name", f"imagefolder:{folder}", "--image_size", "16",
         "--output_dir", str(tmp_path / "store")])  # fmt: skip
    assert seen["size"] == 20  # not 18: nothing is held out of a teacher pass


def test_id2label_of_the_wrong_length_is_refused_when_building_a_student():
    from hf_tinyvit.training.distill import ModelArguments, build_model

    with pytest.raises(ValueError, match=r"id2label has 2 entries for num_labels=3"):
        build_model(ModelArguments(model_preset="tinyvit-5m-224"), 32, 3, {0: "a", 1: "b"})
