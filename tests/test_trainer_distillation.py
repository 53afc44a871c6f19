"""Each distillation mode trains on real digits through the real data pieces (AugmentedDataset,
save_teacher_logits, StoredLogitsDataset): loss falls and accuracy beats chance; stored and live
teachers give the same loss on the same view; resuming reproduces the uninterrupted run."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    TeacherModel,
    load_image_dataset,
    save_teacher_logits,
)
from hf_tinyvit.models.deit_distilled import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
)
from hf_tinyvit.models.tinyvit import TinyViTConfig, TinyViTForImageClassification
from hf_tinyvit.training import DistillationTrainer, DistillationTrainingArguments

SIZE = 16
NUM_TRAIN, NUM_EVAL = 320, 150
# Digits are 8x8 and orientation matters: a mild crop, no flip, no RandAugment, so tiny models learn in seconds.
TRAIN_RECIPE = AugmentationRecipe(image_size=SIZE, scale=(0.7, 1.0), hflip=0.0, auto_augment=None, reprob=0.0)
EVAL_RECIPE = AugmentationRecipe.eval(SIZE)
CHANCE = 0.1


@pytest.fixture(scope="module")
def digits():
    splits = load_image_dataset("digits")
    return splits["train"].select(range(NUM_TRAIN)), splits["test"].select(range(NUM_EVAL))


def fit_teacher(train) -> TeacherModel:
    """A real classifier as teacher: logistic regression on the evaluation views, as a torch module."""
    views = AugmentedDataset(train, EVAL_RECIPE, seed=0)
    items = views.items(range(len(views)))
    pixels = torch.stack([item["pixel_values"] for item in items]).flatten(1).numpy()
    labels = np.array([int(item["labels"]) for item in items])
    fit = LogisticRegression(max_iter=300, C=0.1).fit(pixels, labels)
    linear = torch.nn.Linear(pixels.shape[1], 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fit.coef_).float())
        linear.bias.copy_(torch.from_numpy(fit.intercept_).float())
    return TeacherModel(
        torch.nn.Sequential(torch.nn.Flatten(), linear),
        name="digits-logistic",
        weights_hash="lr",
        num_labels=10,
        input_mean=TRAIN_RECIPE.mean,
        input_std=TRAIN_RECIPE.std,
        teacher_mean=TRAIN_RECIPE.mean,
        teacher_std=TRAIN_RECIPE.std,
    )


@pytest.fixture(scope="module")
def teacher(digits):
    return fit_teacher(digits[0])


@pytest.fixture(scope="module")
def store(digits, teacher, tmp_path_factory):
    """Two epochs of top-3 teacher probabilities for the training views."""
    path = str(tmp_path_factory.mktemp("store") / "digits-top3")
    save_teacher_logits(
        teacher, digits[0], path, recipe=TRAIN_RECIPE, topk=3, num_epochs=2, seed=0, batch_size=120, progress=False
    )
    return TeacherLogitStore.open(path)


def tinyvit(seed=0):
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return TinyViTForImageClassification(
            TinyViTConfig(
                image_size=SIZE,
                embed_dims=[16, 16, 32, 32],
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 2, 2],
                window_sizes=[2, 2, 2, 2],
                num_labels=10,
            )
        )


def deit(seed=0):
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return DeiTDistilledForImageClassification(
            DeiTDistilledConfig(
                image_size=SIZE,
                patch_size=4,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=10,
            )
        )


def resnet(seed=0):
    """A stock transformers classifier: any AutoModelForImageClassification with one head trains."""
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        return ResNetForImageClassification(
            ResNetConfig(
                embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], downsample_in_first_stage=False, num_labels=10
            )
        )


def arguments(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        per_device_train_batch_size=32,
        learning_rate=1e-2,
        num_train_epochs=3,
        logging_steps=3,
        warmup_steps=3,
        dataloader_num_workers=0,
    )
    return DistillationTrainingArguments(**{**defaults, **kwargs})


def train_and_score(trainer):
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, trainer.evaluate()


def assert_learned(losses, metrics, ratio=0.8):
    assert np.mean(losses[-3:]) < ratio * np.mean(losses[:3]), losses
    # 150 test digits: chance is 0.1 with a standard deviation of about 0.025.
    assert metrics["eval_accuracy"] > 2.5 * CHANCE, metrics


# ---- each mode trains ----------------------------------------------------------------------------------


def test_none_mode_fine_tunes_tinyvit_on_labels(digits, tmp_path):
    train, test = digits
    trainer = DistillationTrainer(
        model=tinyvit(),
        # 4 epochs: MBConv blocks start as the identity (zero-initialised last BatchNorm, as in the paper)
        args=arguments(tmp_path, weight_decay=0.05, num_train_epochs=4),
        train_dataset=AugmentedDataset(train, TRAIN_RECIPE, seed=0),
        eval_dataset=AugmentedDataset(test, EVAL_RECIPE, seed=0),
    )
    losses, metrics = train_and_score(trainer)
    assert_learned(losses, metrics)
    assert "eval_teacher_agreement" not in metrics


def test_hard_mode_trains_a_single_head_student_from_a_live_teacher_on_mixed_views(digits, teacher, tmp_path):
    train, test = digits
    mixing = dataclasses.replace(TRAIN_RECIPE, mixup_alpha=0.8, cutmix_alpha=1.0)
    trainer = DistillationTrainer(
        model=tinyvit(),
        args=arguments(tmp_path, distillation_type="hard", num_train_epochs=4),
        train_dataset=AugmentedDataset(train, mixing, seed=0, num_labels=10),
        eval_dataset=AugmentedDataset(test, EVAL_RECIPE, seed=0),
        teacher_model=teacher,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].shape == (32, 10)  # Mixup/CutMix labels, collated by the dataset's collate_fn
    losses, metrics = train_and_score(trainer)
    assert_learned(losses, metrics, ratio=0.9)  # mixed targets keep the loss floor high
    assert metrics["eval_teacher_agreement"] > 2.5 * CHANCE


def test_soft_mode_trains_a_stock_transformers_resnet_from_stored_logits(digits, store, tmp_path):
    train, test = digits
    trainer = DistillationTrainer(
        model=resnet(),
        args=arguments(
            tmp_path, distillation_type="soft", teacher_logits=store.path, alpha=0.5, tau=2.0, num_train_epochs=4
        ),
        train_dataset=StoredLogitsDataset(train, store),
        eval_dataset=AugmentedDataset(test, EVAL_RECIPE, seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # epochs 2 and 3 replay saved epochs 0 and 1
        losses, metrics = train_and_score(trainer)
    assert_learned(losses, metrics)


def test_stored_mode_trains_tinyvit_without_labels(digits, store, tmp_path):
    train, test = digits
    train_dataset = StoredLogitsDataset(train, store, label_column=None)
    assert "labels" not in train_dataset[0]
    trainer = DistillationTrainer(
        model=tinyvit(),
        args=arguments(tmp_path, distillation_type="stored", teacher_logits=store.path, num_train_epochs=4),
        train_dataset=train_dataset,
        eval_dataset=AugmentedDataset(test, EVAL_RECIPE, seed=0),
    )
    with pytest.warns(UserWarning, match=r"epoch [23] was not saved"):
        losses, metrics = train_and_score(trainer)
    assert_learned(losses, metrics)


# ---- the stored path -------------------------------------------------------------------------------------


def test_stored_and_live_teacher_give_the_same_loss_on_the_same_view(digits, teacher, tmp_path):
    train, _ = digits
    full = str(tmp_path / "top10")  # k = num_labels: the stored distribution is the teacher's softmax in float16
    save_teacher_logits(
        teacher, train.select(range(64)), full, recipe=TRAIN_RECIPE, topk=10, num_epochs=1, seed=0, progress=False
    )
    views = StoredLogitsDataset(train.select(range(64)), full)
    for mode, tolerance in (("hard", 0.0), ("soft", 2e-3)):
        student = deit()
        live = DistillationTrainer(
            model=student, args=arguments(tmp_path, distillation_type=mode), train_dataset=views, teacher_model=teacher
        )
        stored = DistillationTrainer(
            model=student, args=arguments(tmp_path, distillation_type=mode, teacher_logits=full), train_dataset=views
        )
        batch = next(iter(stored.get_train_dataloader()))
        with torch.no_grad():
            live_loss = live.compute_loss(student.eval(), dict(batch))
            stored_loss = stored.compute_loss(student.eval(), dict(batch))
        torch.testing.assert_close(stored_loss, live_loss, rtol=0, atol=tolerance if tolerance else 1e-6)


def test_student_head_must_match_the_store_classes(digits, store, tmp_path):
    with pytest.raises(ValueError, match="student num_labels=7 differs from the store's num_labels=10"):
        DistillationTrainer(
            model=ViTForImageClassification(
                ViTConfig(
                    image_size=SIZE,
                    patch_size=4,
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=1,
                    intermediate_size=16,
                    num_labels=7,
                )
            ),
            args=arguments(tmp_path, distillation_type="stored", teacher_logits=store.path),
            train_dataset=StoredLogitsDataset(digits[0], store, label_column=None),
        )


class RecordEpochs(TrainerCallback):
    def __init__(self, dataset):
        self.dataset, self.seen = dataset, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.append((self.dataset.epoch, self.dataset.replay_epoch))


def test_resume_reproduces_the_uninterrupted_run_with_the_same_stored_epochs(digits, teacher, tmp_path):
    train = digits[0].select(range(96))
    small = str(tmp_path / "store")
    save_teacher_logits(teacher, train, small, recipe=TRAIN_RECIPE, topk=3, num_epochs=2, seed=0, progress=False)

    def run(output_dir, resume=None, **kwargs):
        dataset = StoredLogitsDataset(train, small, label_column=None)
        recorder = RecordEpochs(dataset)
        trainer = DistillationTrainer(
            model=tinyvit(seed=1),
            train_dataset=dataset,
            callbacks=[recorder],
            args=arguments(
                output_dir,
                distillation_type="stored",
                teacher_logits=small,
                num_train_epochs=3,
                per_device_train_batch_size=16,
                logging_steps=1,
                save_strategy="steps",
                save_steps=8,
                **kwargs,
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # epoch 2 cycles back to saved epoch 0
            trainer.train(resume_from_checkpoint=resume)
        losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        return losses, recorder.seen

    full_losses, full_epochs = run(tmp_path / "full")
    assert full_epochs == [(0, 0)] * 6 + [(1, 1)] * 6 + [(2, 0)] * 6
    # Checkpoint 8 lies inside epoch 1: resuming must skip its first two batches and replay saved epoch 1.
    resumed_losses, resumed_epochs = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-8"))
    assert resumed_epochs == [(1, 1)] * 4 + [(2, 0)] * 6
    assert set(range(9, 19)) <= set(resumed_losses)
    np.testing.assert_allclose(
        [resumed_losses[s] for s in range(9, 19)], [full_losses[s] for s in range(9, 19)], rtol=1e-5, atol=1e-6
    )
