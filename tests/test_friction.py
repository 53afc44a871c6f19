"""What a new user trips over, fixed: explicit zeros are honoured, the trainer takes the store from its
dataset and refuses a second one, a dataset of the wrong type is refused saying what to pass, stores print
usefully, DeiT sizes are presets, and the package speaks through loggers (no prints) at the verbosity its
caller sets."""

import ast
import logging
import shutil
from pathlib import Path

import datasets
import pytest
from transformers.utils import logging as transformers_logging

import hf_tinyvit
from hf_tinyvit import (
    DEIT_PRESETS,
    AugmentationRecipe,
    AugmentedDataset,
    DeiTDistilledConfig,
    DistillationTrainer,
    DistillationTrainingArguments,
    StoredLogitsDataset,
    TeacherLogitStore,
    load_image_dataset,
)
from hf_tinyvit.cli import main as cli
from hf_tinyvit.log import get_logger, set_verbosity
from test_distill_script import TINY
from test_trainer_distillation import SIZE, TRAIN_RECIPE, fit_teacher, tinyvit

SOURCE = Path(hf_tinyvit.__file__).parent
NUM_TRAIN = 32


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits")["train"].select(range(NUM_TRAIN))


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("store") / "top3")
    hf_tinyvit.save_teacher_logits(
        fit_teacher(digits), digits, path, recipe=TRAIN_RECIPE, topk=3, num_epochs=1, seed=0, progress=False
    )
    return TeacherLogitStore.open(path)


def arguments(tmp_path, **kwargs):
    return DistillationTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kwargs)


def test_explicit_zeros_disable_mixing_and_evaluation(tmp_path):
    assert AugmentationRecipe.deit(SIZE).mixes  # the preset mixes; explicit zeros turn both off
    trainer = cli(
        ["distill", "--model_preset", "tinyvit-5m-224", "--config_overrides", TINY, "--dataset_name", "digits",
         "--image_size", str(SIZE), "--augmentation", "deit", "--mixup_alpha", "0", "--cutmix_alpha", "0",
         "--max_train_samples", "16", "--max_eval_samples", "0", "--output_dir", str(tmp_path / "out"),
         "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--save_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true", "--use_cpu"]
    )  # fmt: skip
    recipe = trainer.train_dataset.recipe
    assert (recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mixes) == (0.0, 0.0, False)
    assert trainer.eval_dataset is None and not any("eval_loss" in e for e in trainer.state.log_history)
    with pytest.raises(ValueError, match="max_train_samples=0 must be an integer >= 1"):
        cli(["distill", "--model_preset", "tinyvit-5m-224", "--max_train_samples", "0", "--output_dir",
             str(tmp_path / "none"), "--report_to", "none", "--use_cpu"])  # fmt: skip


def test_trainer_takes_the_store_from_its_dataset_and_refuses_another(digits, store, tmp_path):
    views = StoredLogitsDataset(digits, store)
    # no teacher_logits argument: the dataset brings its store
    args = arguments(tmp_path, distillation_type="stored")
    trainer = DistillationTrainer(model=tinyvit(), args=args, train_dataset=views)
    assert trainer.train_dataset.store is store
    # the same store by path, or a copy of it, is the same store
    DistillationTrainer(
        model=tinyvit(), args=arguments(tmp_path, distillation_type="stored", teacher_logits=store.path),
        train_dataset=views,
    )  # fmt: skip
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    DistillationTrainer(
        model=tinyvit(), args=arguments(tmp_path, distillation_type="stored", teacher_logits=str(copy)),
        train_dataset=views,
    )  # fmt: skip
    other = tmp_path / "other"
    hf_tinyvit.save_teacher_logits(
        fit_teacher(digits), digits, str(other), recipe=TRAIN_RECIPE, topk=2, num_epochs=1, seed=0, progress=False
    )
    with pytest.raises(ValueError, match=r"two different stores: teacher_logits=.*other.* \(topk: 2 != 3"):
        DistillationTrainer(
            model=tinyvit(), args=arguments(tmp_path, distillation_type="stored", teacher_logits=str(other)),
            train_dataset=views,
        )  # fmt: skip
    with pytest.raises(ValueError, match="two different stores: teacher_logits='me/logits'"):
        DistillationTrainer(
            model=tinyvit(), args=arguments(tmp_path, distillation_type="soft", teacher_logits="me/logits"),
            train_dataset=views,
        )  # fmt: skip


def test_a_dataset_of_the_wrong_type_is_refused_saying_what_to_pass(digits, tmp_path):
    expected = r"columns \['image', 'label'\] and no 'pixel_values': replay the stored views with StoredLogitsDataset"
    with pytest.raises(TypeError, match=expected):
        DistillationTrainer(
            model=tinyvit(), args=arguments(tmp_path, distillation_type="stored", teacher_logits="store"),
            train_dataset=digits,
        )  # fmt: skip
    with pytest.raises(TypeError, match=r"render its images with AugmentedDataset\(dataset, "):
        DistillationTrainer(model=tinyvit(), args=arguments(tmp_path), train_dataset=digits)
    views = AugmentedDataset(digits, TRAIN_RECIPE, seed=0)
    with pytest.raises(TypeError, match="is a AugmentedDataset with no store: pass StoredLogitsDataset"):
        DistillationTrainer(
            model=tinyvit(), args=arguments(tmp_path, distillation_type="hard", teacher_logits="store"),
            train_dataset=views,
        )  # fmt: skip
    with pytest.raises(ValueError, match="distillation_type='stored' needs stored logits: pass train_dataset="):
        DistillationTrainer(model=tinyvit(), args=arguments(tmp_path, distillation_type="stored"), train_dataset=views)
    table = datasets.Dataset.from_dict({"pixel_values": [[[[0.0]]]], "labels": [0]})
    with pytest.raises(TypeError, match="needs stored teacher targets"):
        DistillationTrainer(
            model=tinyvit(), args=arguments(tmp_path, distillation_type="soft", teacher_logits="store"),
            train_dataset=table,
        )  # fmt: skip
    # a transform may make pixel_values on the fly: nothing to refuse up front
    DistillationTrainer(model=tinyvit(), args=arguments(tmp_path), train_dataset=digits.with_transform(lambda b: b))


def test_store_repr_is_one_informative_line(store):
    text = repr(store)
    assert "\n" not in text and store.path in text
    for part in ("teacher='digits-logistic'", "top-3 of 10 classes", f"{NUM_TRAIN} samples x epochs [0]", "16 px"):
        assert part in text, text


def test_deit_presets_cover_tiny_small_base_at_224_and_384():
    assert set(DEIT_PRESETS) == {f"deit-{s}-distilled-{r}" for s in ("tiny", "small", "base") for r in (224, 384)}
    config = DeiTDistilledConfig.from_preset("deit-small-distilled-384", num_labels=3)
    assert (config.hidden_size, config.num_attention_heads, config.image_size, config.num_labels) == (384, 6, 384, 3)


def test_no_prints_outside_the_command_line():
    for path in SOURCE.rglob("*.py"):
        if path.name == "cli.py":  # a command line prints its results
            continue
        calls = [
            node.lineno
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        ]
        assert not calls, f"print() in {path.relative_to(SOURCE)} at lines {calls}: use hf_tinyvit.log.get_logger"
        assert "logging.getLogger(" not in path.read_text() or path.name == "log.py", path


def test_messages_follow_the_verbosity_set_once(caplog):
    logger = get_logger("hf_tinyvit.training.cards")  # a logger no command sets a level of its own on
    before = logging.getLogger("hf_tinyvit").level, transformers_logging.get_verbosity()
    try:
        with caplog.at_level(logging.DEBUG):  # caplog's handler sees whatever passes the package's level
            set_verbosity("warning")
            logger.info("hidden")
            assert transformers_logging.get_verbosity() == logging.WARNING
            set_verbosity("info")
            logger.info("shown")
        assert "shown" in caplog.text and "hidden" not in caplog.text
    finally:
        logging.getLogger("hf_tinyvit").setLevel(before[0])
        transformers_logging.set_verbosity(before[1])
