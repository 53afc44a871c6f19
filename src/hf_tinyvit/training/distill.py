"""One distillation or fine-tuning run from command-line style arguments: the image dataset, the student
(a TinyViT or DeiT preset, or a saved model), its training views (replayed from a store, or augmented
online), the evaluation transform it is saved with, and `DistillationTrainer`. `hf-tinyvit distill` and
`accelerate launch examples/distill.py` both run `distill`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedModel,
    ViTImageProcessor,
    set_seed,
)

from ..augment.recipe import AugmentationRecipe
from ..augment.views import AugmentedDataset
from ..datasets import load_image_dataset
from ..log import follow_training_args, get_logger
from ..models.deit_distilled import (
    DEIT_PRESETS,
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    deit_image_processor,
)
from ..models.tinyvit import (
    TINYVIT_PRESETS,
    TinyViTConfig,
    TinyViTForImageClassification,
    eval_recipe,
    tinyvit_image_processor,
)
from ..replay import StoredLogitsDataset
from ..store.reader import TeacherLogitStore
from .arguments import DistillationTrainingArguments
from .trainer import DistillationTrainer

__all__ = ["DataArguments", "ModelArguments", "build_model", "distill", "eval_transform", "parse_distill_args"]

logger = get_logger(__name__)

# Online augmentation presets of `--augmentation`.
AUGMENTATIONS = {
    "tinyvit": AugmentationRecipe.tinyvit_pretrain,
    "deit": AugmentationRecipe.deit,
    "none": AugmentationRecipe.eval,
}


@dataclass
class ModelArguments:
    model_preset: str | None = field(
        default=None,
        metadata={"help": f"Train from scratch: one of {sorted(TINYVIT_PRESETS) + sorted(DEIT_PRESETS)}."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from a saved model (folder or Hub id), e.g. to fine-tune 21k-distilled -> 1k."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of config fields to override, e.g. '{\"depths\": [1, 1, 1, 1]}'."},
    )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="digits",
        metadata={"help": "digits (built in), imagefolder:<dir>, a save_to_disk folder, or a Hub dataset name."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Training resolution (default: the model's, or the stored logits' recipe)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training images."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep the first N evaluation images (0: no evaluation)."}
    )
    augmentation: str = field(
        default="tinyvit",
        metadata={
            "help": "Online augmentation preset: tinyvit (RandAugment, erasing) or deit (+ Mixup/CutMix).",
            "choices": sorted(AUGMENTATIONS),
        },
    )


def parse_distill_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, DistillationTrainingArguments) from flags or one JSON file."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, DistillationTrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        import os

        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


def build_model(model_args: ModelArguments, image_size: int, num_labels: int, id2label: dict[int, str]) -> PreTrainedModel:
    """The student: a preset built from scratch, or a saved model whose head is resized to the labels."""
    if (model_args.model_preset is None) == (model_args.model_name_or_path is None):
        raise ValueError("pass exactly one of --model_preset (train from scratch) and --model_name_or_path")
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    preset = model_args.model_preset
    if preset in TINYVIT_PRESETS:
        return TinyViTForImageClassification(TinyViTConfig.from_preset(preset, image_size=image_size, **labels, **overrides))
    if preset in DEIT_PRESETS:
        config = DeiTDistilledConfig.from_preset(preset, **{"image_size": image_size, **overrides}, **labels)
        return DeiTDistilledForImageClassification(config)
    if preset is not None:
        raise ValueError(f"model_preset={preset!r}; choose one of {sorted(TINYVIT_PRESETS) + sorted(DEIT_PRESETS)}")
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False, **labels, **overrides)
    # A new label space (21k -> 1k, ImageNet -> digits) replaces the head; everything else loads strictly.
    return AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True, trust_remote_code=False
    )


def eval_transform(model: PreTrainedModel, image_size: int, mean, std):
    """(evaluation recipe, image processor) of a student: its family's reference evaluation transform at
    `image_size` with the training normalisation. The processor saved with the model is built from the
    same recipe the evaluation views are rendered with, so both resize and crop alike."""
    if isinstance(model, TinyViTForImageClassification):
        recipe = eval_recipe(image_size, mean=mean, std=std)
        return recipe, tinyvit_image_processor(image_size, **_crop(recipe), mean=mean, std=std)
    recipe = AugmentationRecipe.eval(image_size, mean=mean, std=std)
    if isinstance(model, DeiTDistilledForImageClassification):
        return recipe, deit_image_processor(image_size, recipe.crop_pct, mean=mean, std=std)
    return recipe, ViTImageProcessor(**recipe.image_processor_kwargs())


def _crop(recipe: AugmentationRecipe) -> dict:
    return {"crop_pct": recipe.crop_pct, "crop_mode": recipe.crop_mode}


def distill(
    model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments
) -> DistillationTrainer:
    """Train, evaluate and save (or push) one student; returns the trainer."""
    follow_training_args(training_args)
    if training_args.distillation_type == "stored" and training_args.teacher_logits is None:
        raise ValueError("distillation_type='stored' needs --teacher_logits (a store folder or Hub dataset id)")
    splits = load_image_dataset(data_args.dataset_name)  # the fixed split the logit saver also uses
    eval_name = "test" if "test" in splits else "validation"
    train_split, eval_split = splits["train"], splits[eval_name]
    if data_args.max_train_samples is not None and data_args.max_train_samples < 1:
        raise ValueError(f"max_train_samples={data_args.max_train_samples} must be >= 1: nothing would be trained")
    if data_args.max_eval_samples is not None and data_args.max_eval_samples < 0:
        raise ValueError(f"max_eval_samples={data_args.max_eval_samples} must be >= 0 (0: no evaluation)")
    if data_args.max_train_samples is not None:
        train_split = train_split.select(range(min(data_args.max_train_samples, len(train_split))))
    if data_args.max_eval_samples is not None:
        eval_split = eval_split.select(range(min(data_args.max_eval_samples, len(eval_split))))
    label_feature = train_split.features.get("label")
    dataset_labels = (
        {i: name for i, name in enumerate(label_feature.names)} if hasattr(label_feature, "names") else None
    )

    if training_args.teacher_logits is not None:
        store = TeacherLogitStore.open(training_args.teacher_logits)
        recipe = AugmentationRecipe.from_dict(store.metadata["recipe"])
        if data_args.image_size not in (None, recipe.image_size):
            raise ValueError(
                f"image_size={data_args.image_size} differs from the stored views' {recipe.image_size}: the student "
                "trains on the views the teacher saw"
            )
        image_size = recipe.image_size
        num_labels = store.num_labels
        id2label = {int(k): v for k, v in store.metadata["id2label"].items()}
        # Ground truth only helps when it lives in the teacher's label space (hard/soft, DeiT class heads).
        same_space = dataset_labels is not None and len(dataset_labels) == num_labels
        train_dataset = StoredLogitsDataset(train_split, store, label_column="label" if same_space else None)
    else:
        model_size = TINYVIT_PRESETS.get(model_args.model_preset, DEIT_PRESETS.get(model_args.model_preset, {}))
        image_size = data_args.image_size if data_args.image_size is not None else model_size.get("image_size", 224)
        if dataset_labels is None:
            raise ValueError(f"dataset {data_args.dataset_name!r} has no ClassLabel 'label' column to train on")
        num_labels, id2label = len(dataset_labels), dataset_labels
        preset = AUGMENTATIONS[data_args.augmentation](image_size)
        # An explicit --mixup_alpha / --cutmix_alpha (0 included) replaces the preset's value.
        recipe = dataclasses.replace(
            preset,
            mixup_alpha=preset.mixup_alpha if training_args.mixup_alpha is None else training_args.mixup_alpha,
            cutmix_alpha=preset.cutmix_alpha if training_args.cutmix_alpha is None else training_args.cutmix_alpha,
        )
        if model_args.model_name_or_path is not None:
            from transformers import AutoImageProcessor

            # A pretrained model keeps the input normalisation it was trained with.
            pretrained = AutoImageProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
            recipe = dataclasses.replace(recipe, mean=tuple(pretrained.image_mean), std=tuple(pretrained.image_std))
        train_dataset = AugmentedDataset(train_split, recipe, seed=training_args.seed, num_labels=num_labels)

    # transformers initialises weights from torch's global generator: seed it, or a rerun (or the run a
    # crashed one is compared with) starts from other weights. Trainer seeds only after the model exists.
    set_seed(training_args.seed)
    model = build_model(model_args, image_size, num_labels, id2label)
    evaluation, processor = eval_transform(model, image_size, recipe.mean, recipe.std)
    # --max_eval_samples 0 means no evaluation, as an explicit 0 says
    evaluate = dataset_labels is not None and len(eval_split) > 0
    eval_dataset = AugmentedDataset(eval_split, evaluation, seed=training_args.seed) if evaluate else None

    trainer = DistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    # One line per process: a launch (and its tests) can see that every rank trained, in lock-step.
    logger.info(
        "[distill] rank %d of %d: %d steps, train_loss %.6f, parameter checksum %.10e",
        training_args.process_index, training_args.world_size, trainer.state.global_step, result.training_loss,
        checksum,
    )  # fmt: skip
    metrics = trainer.evaluate() if eval_dataset is not None else {}
    if metrics:
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    # The card fields given here are remembered by the trainer for every later save and push.
    card = {"dataset": data_args.dataset_name, "eval_split": eval_name if eval_dataset is not None else None}
    trainer.create_model_card(**card)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)  # saves the model first, then uploads the folder
    else:
        trainer.save_model()
    return trainer
