"""DistillationTrainer wiring: loss routing, teacher handling, optimizer groups, gradient accumulation,
frozen BatchNorm, kept columns, metrics and set-up errors, on tiny random models and real digits."""

import copy

import datasets
import evaluate
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTForImageClassification

from hf_tinyvit.models.deit_distilled import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
)
from hf_tinyvit.models.tinyvit import TinyViTConfig, TinyViTForImageClassification
from hf_tinyvit.store.format import topk_probabilities
from hf_tinyvit.training import (
    DistillationTrainer,
    DistillationTrainingArguments,
    accuracy_metric,
    classification_metrics,
    layer_decay_parameter_groups,
)

SIZE = 16


def tiny_vit(seed=0, num_labels=10):
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        config = ViTConfig(
            image_size=SIZE,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=num_labels,
        )
        return ViTForImageClassification(config)


def tiny_tinyvit(seed=0, num_labels=10):
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        config = TinyViTConfig(
            image_size=32,
            embed_dims=[8, 16, 16, 16],
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_sizes=[2, 2, 2, 2],
            num_labels=num_labels,
        )
        return TinyViTForImageClassification(config)


def tiny_deit(seed=0, num_labels=10):
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(seed)
        config = DeiTDistilledConfig(
            image_size=SIZE,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=num_labels,
        )
        return DeiTDistilledForImageClassification(config)


class DigitViews(torch.utils.data.Dataset):
    """Real digits at SIZE x SIZE, normalised; optional stored top-k teacher targets (a stand-in for the
    store's item layout, used where the replay itself is not under test)."""

    def __init__(self, count, offset=0, size=SIZE, teacher=None, topk=3):
        digits = load_digits()
        images = torch.tensor(digits.images[offset : offset + count], dtype=torch.float32)[:, None] / 16.0
        images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
        self.pixels = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1)
        self.labels = torch.tensor(digits.target[offset : offset + count])
        self.topk = None
        if teacher is not None:
            with torch.no_grad():
                self.topk = topk_probabilities(teacher(self.pixels).logits, topk)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        item = {"pixel_values": self.pixels[index], "labels": self.labels[index], "sample_id": torch.tensor(index)}
        if self.topk is not None:
            item["teacher_topk_values"] = self.topk[0][index].float()
            item["teacher_topk_indices"] = self.topk[1][index]
        return item


def arguments(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        num_train_epochs=1,
        logging_steps=1,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    return DistillationTrainingArguments(**{**defaults, **kwargs})


# ---- loss routing --------------------------------------------------------------------------------


def test_live_teacher_runs_in_eval_mode_outside_the_optimizer_and_stays_unchanged(tmp_path):
    teacher = tiny_vit(seed=1)
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    trainer = DistillationTrainer(
        model=tiny_deit(),
        args=arguments(tmp_path, distillation_type="hard"),
        train_dataset=DigitViews(32),
        teacher_model=teacher,
    )
    assert not trainer.teacher.training
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_must_match_the_student_classes_and_mode(tmp_path):
    with pytest.raises(ValueError, match="teacher predicts 7 classes but the student's head has num_labels=10"):
        DistillationTrainer(
            model=tiny_vit(),
            args=arguments(tmp_path, distillation_type="soft"),
            train_dataset=DigitViews(8),
            teacher_model=tiny_vit(num_labels=7),
        )
    with pytest.raises(ValueError, match="distillation_type='hard' needs a teacher"):
        DistillationTrainer(
            model=tiny_vit(), args=arguments(tmp_path, distillation_type="hard"), train_dataset=DigitViews(8)
        )
    with pytest.raises(ValueError, match="only used by distillation_type 'hard' or 'soft', got 'none'"):
        DistillationTrainer(
            model=tiny_vit(), args=arguments(tmp_path), train_dataset=DigitViews(8), teacher_model=tiny_vit()
        )
    with pytest.raises(TypeError, match="args must be DistillationTrainingArguments"):
        from transformers import TrainingArguments

        DistillationTrainer(model=tiny_vit(), args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))


def test_stored_mode_without_stored_targets_fails_on_the_first_batch(tmp_path):
    trainer = DistillationTrainer(
        model=tiny_vit(),
        args=arguments(tmp_path, distillation_type="stored", teacher_logits="s"),
        train_dataset=DigitViews(8),
    )
    with pytest.raises(ValueError, match="needs a teacher signal"):
        trainer.train()


# ---- optimizer -----------------------------------------------------------------------------------


def test_weight_decay_spares_one_dimensional_parameters_and_no_weight_decay(tmp_path):
    model = tiny_tinyvit()
    trainer = DistillationTrainer(
        model=model, args=arguments(tmp_path, weight_decay=0.05), train_dataset=DigitViews(8, size=32)
    )
    decay = set(trainer.get_decay_parameter_names(model))
    names = dict(model.named_parameters())
    assert decay and all(names[n].ndim > 1 for n in decay)
    assert not decay & model.no_weight_decay() and model.no_weight_decay()
    assert {n for n, p in names.items() if p.ndim > 1} - model.no_weight_decay() == decay

    deit = tiny_deit()
    trainer = DistillationTrainer(model=deit, args=arguments(tmp_path, weight_decay=0.05), train_dataset=DigitViews(8))
    decay = set(trainer.get_decay_parameter_names(deit))
    assert {"deit.embeddings.cls_token", "deit.embeddings.distillation_token"} <= deit.no_weight_decay()
    assert not decay & deit.no_weight_decay()


def test_layer_lr_decay_scales_each_depth_and_keeps_the_head_rate(tmp_path):
    model = tiny_tinyvit()
    args = arguments(tmp_path, layer_lr_decay=0.5, learning_rate=1e-2, weight_decay=0.05)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=DigitViews(8, size=32))
    optimizer = trainer.create_optimizer()
    num_layers = model.get_num_layers_for_lr_decay()
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    decay = set(trainer.get_decay_parameter_names(model))
    for name, param in model.named_parameters():
        expected_lr = 1e-2 * 0.5 ** (num_layers - 1 - model.get_layer_id_for_lr_decay(name))
        assert lr_of[id(param)] == (pytest.approx(expected_lr), 0.05 if name in decay else 0.0), name
    assert lr_of[id(model.classifier.weight)][0] == pytest.approx(1e-2)
    assert min(lr for lr, _ in lr_of.values()) == pytest.approx(1e-2 * 0.5 ** (num_layers - 1))
    # The scheduler multiplies each group's own rate, so the ratios survive warm-up and decay.
    groups = layer_decay_parameter_groups(model, decay, learning_rate=1.0, weight_decay=0.0, layer_lr_decay=0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_lr_decay_on_a_model_without_layer_ids_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="layer_lr_decay=0.8 needs a model with get_num_layers_for_lr_decay"):
        DistillationTrainer(model=tiny_vit(), args=arguments(tmp_path, layer_lr_decay=0.8), train_dataset=DigitViews(8))


def test_gradient_accumulation_matches_one_large_batch_with_an_uneven_last_step(tmp_path):
    # 14 samples: batches of 8 and 6 versus accumulated steps of (4, 4) and (4, 2); a mean of batch means
    # would weigh the last 2 samples double, the per-sample mean must come out the same.
    def run(batch, accumulation):
        trainer = DistillationTrainer(
            model=tiny_vit(seed=3),
            args=arguments(
                tmp_path / f"{batch}",
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                train_sampling_strategy="sequential",
                optim="sgd",
                learning_rate=0.5,
                max_grad_norm=0.0,
            ),
            train_dataset=DigitViews(14),
        )
        trainer.train()
        return dict(trainer.model.named_parameters()), [h["loss"] for h in trainer.state.log_history if "loss" in h]

    one, losses_one = run(8, 1)
    accumulated, losses_accumulated = run(4, 2)
    for name, param in one.items():
        torch.testing.assert_close(param, accumulated[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses_one, losses_accumulated, rtol=1e-5)


def test_freeze_batchnorm_keeps_running_statistics_while_weights_train(tmp_path):
    def run(freeze):
        model = tiny_tinyvit()
        stats = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if "bn" in n or "batch_norm" in n}
        trainer = DistillationTrainer(
            model=model,
            args=arguments(tmp_path, freeze_batchnorm=freeze, max_steps=2),
            train_dataset=DigitViews(16, size=32),
        )
        trainer.train()
        moved = [n for n, b in model.named_buffers() if n in stats and not torch.equal(b, stats[n])]
        trained = [n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
        return stats, moved, trained

    stats, moved, trained = run(freeze=True)
    assert stats and not moved and trained
    _, moved, _ = run(freeze=False)
    assert moved


# ---- data handling ----------------------------------------------------------------------------------


def test_target_columns_survive_because_remove_unused_columns_is_off_and_refused_when_distilling(tmp_path):
    teacher = tiny_vit(seed=1)
    views = DigitViews(16, teacher=teacher)
    table = datasets.Dataset.from_dict({key: [views[i][key].tolist() for i in range(len(views))] for key in views[0]})
    table = table.add_column("unused", ["x"] * len(table)).with_format("torch")
    args = arguments(tmp_path, distillation_type="soft", teacher_logits="store")
    assert args.remove_unused_columns is False  # the arguments' own default, not something the trainer flips
    trainer = DistillationTrainer(model=tiny_vit(), args=args, train_dataset=table)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"pixel_values", "labels", "teacher_topk_values", "teacher_topk_indices"} <= set(batch)
    assert args.remove_unused_columns is False
    trainer.train()
    with pytest.raises(ValueError, match=r"remove_unused_columns=True would drop the teacher targets"):
        arguments(tmp_path, distillation_type="soft", teacher_logits="store", remove_unused_columns=True)


def test_a_distillation_dataset_brings_its_collate_shuffle_and_epoch(tmp_path):
    from hf_tinyvit import DistillationDataset

    class Recording(DigitViews, DistillationDataset):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.epochs, self.collated, self.sampler_seeds = [], 0, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def collate_fn(self, items):
            self.collated += 1
            return torch.utils.data.default_collate(items)

        def train_sampler(self, seed=0):
            self.sampler_seeds.append(seed)
            return torch.utils.data.RandomSampler(self, generator=torch.Generator().manual_seed(seed))

    train = Recording(16)
    trainer = DistillationTrainer(
        model=tiny_vit(), args=arguments(tmp_path, num_train_epochs=3, seed=5), train_dataset=train
    )
    trainer.train()
    assert train.collated == 6
    assert sorted(set(train.epochs)) == [0, 1, 2]
    assert train.sampler_seeds and set(train.sampler_seeds) == {5}

    # Anything else is not probed for look-alike attributes: the typed base class is the contract.
    class LookAlike(DigitViews):
        collated = 0

        def collate_fn(self, items):
            LookAlike.collated += 1
            return torch.utils.data.default_collate(items)

    DistillationTrainer(model=tiny_vit(), args=arguments(tmp_path / "plain"), train_dataset=LookAlike(16)).train()
    assert LookAlike.collated == 0


def test_the_pinned_private_trainer_hooks_still_exist():
    """DistillationTrainer overrides exactly one private Trainer method; an upgrade that drops or renames it
    must fail here, loudly, rather than train with Trainer's default sampler."""
    import inspect

    from transformers import Trainer

    from hf_tinyvit.training import PINNED_PRIVATE_HOOKS

    assert PINNED_PRIVATE_HOOKS == ("_get_train_sampler",)
    for name in PINNED_PRIVATE_HOOKS:
        assert hasattr(Trainer, name), (
            f"transformers {__import__('transformers').__version__} has no Trainer.{name}: DistillationTrainer "
            "overrides it to hand the dataloader the dataset's own shuffle; port that override to the new hook"
        )
        assert list(inspect.signature(getattr(Trainer, name)).parameters)[:2] == ["self", "train_dataset"], (
            f"Trainer.{name} changed its signature; check DistillationTrainer.{name} against it"
        )
    overridden = {
        name for name, value in vars(DistillationTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }  # fmt: skip
    assert overridden == set(PINNED_PRIVATE_HOOKS), f"unpinned private Trainer overrides: {overridden}"


# ---- metrics --------------------------------------------------------------------------------------------


def test_classification_metrics_top1_top5_and_teacher_agreement():
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(50, 10))
    labels = generator.integers(0, 10, 50)
    labels[:5] = -100  # no ground truth for these rows
    teacher = generator.integers(0, 10, 50)
    metrics = classification_metrics(logits, labels, teacher)
    known = labels != -100
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1)[known] == labels[known]))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert metrics["top5_accuracy"] == pytest.approx(np.mean([y in top for y, top in zip(labels[known], top5[known])]))
    assert metrics["teacher_agreement"] == pytest.approx(np.mean(logits.argmax(1) == teacher))
    # evaluate.load("accuracy") needs the Hub script; offline the bundled evaluate module stands in.
    assert isinstance(accuracy_metric(), evaluate.EvaluationModule)
    assert accuracy_metric().compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 0]) == {"accuracy": 0.5}


def test_evaluate_reports_accuracy_and_agreement_with_the_live_teacher(tmp_path):
    teacher = tiny_vit(seed=1)
    trainer = DistillationTrainer(
        model=tiny_vit(),
        args=arguments(tmp_path, distillation_type="soft"),
        train_dataset=DigitViews(8),
        eval_dataset=DigitViews(40, offset=100),
        teacher_model=teacher,
    )
    metrics = trainer.evaluate()
    views = DigitViews(40, offset=100)
    with torch.no_grad():
        student = trainer.model.eval()(views.pixels).logits
        expected_teacher = teacher(views.pixels).logits.argmax(-1)
    assert metrics["eval_teacher_agreement"] == pytest.approx(
        (student.argmax(-1) == expected_teacher).float().mean().item()
    )
    assert metrics["eval_accuracy"] == pytest.approx((student.argmax(-1) == views.labels).float().mean().item())
    assert "eval_top5_accuracy" in metrics and np.isfinite(metrics["eval_loss"])
