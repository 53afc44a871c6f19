"""Train a TinyViT, DeiT-distilled or any transformers image classifier with DistillationTrainer: TinyViT's
fast pretraining distillation from stored teacher logits, DeiT's hard/soft distillation, or fine-tuning.

    accelerate launch examples/distill.py --model_preset tinyvit-5m-224 --dataset_name digits \
        --image_size 32 --teacher_logits logits/digits-teacher --distillation_type stored \
        --output_dir out/tinyvit-5m --num_train_epochs 10

Every `TrainingArguments` option works (mixed precision, checkpoints, --resume_from_checkpoint,
--push_to_hub). One CPU process or many GPUs, the same command under `accelerate launch`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    set_seed,
)

import hf_tinyvit  # noqa: F401  (registers the model families with the Auto classes)
from hf_tinyvit.data import (
    AugmentationRecipe,
    AugmentedDataset,
    StoredLogitsDataset,
    TeacherLogitStore,
    load_image_dataset,
)
from hf_tinyvit.models.deit_distilled import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    deit_image_processor,
)
from hf_tinyvit.models.tinyvit import (
    TINYVIT_PRESETS,
    TinyViTConfig,
    TinyViTForImageClassification,
    eval_preprocessing,
    tinyvit_image_processor,
)
from hf_tinyvit.training import DistillationTrainer, DistillationTrainingArguments

# DeiT sizes (patch 16, depth 12) from the DeiT paper; the distillation token is always on.
DEIT_PRESETS = {
    "deit-tiny-distilled-224": {"hidden_size": 192, "num_attention_heads": 3},
    "deit-small-distilled-224": {"hidden_size": 384, "num_attention_heads": 6},
    "deit-base-distilled-224": {"hidden_size": 768, "num_attention_heads": 12},
}
EVAL_CROP_PCT = 0.875  # AugmentationRecipe.eval's crop; the saved image processor must match it


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
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation images."})
    augmentation: str = field(
        default="tinyvit",
        metadata={
            "help": "Online augmentation preset: tinyvit (RandAugment, erasing) or deit (+ Mixup/CutMix).",
            "choices": ["tinyvit", "deit", "none"],
        },
    )


def parse(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, DistillationTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


def build_model(model_args: ModelArguments, image_size: int, num_labels: int, id2label: dict[int, str]):
    if (model_args.model_preset is None) == (model_args.model_name_or_path is None):
        raise ValueError("pass exactly one of --model_preset (train from scratch) and --model_name_or_path")
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    preset = model_args.model_preset
    if preset in TINYVIT_PRESETS:
        config = TinyViTConfig.from_preset(preset, image_size=image_size, **labels, **overrides)
        return TinyViTForImageClassification(config)
    if preset in DEIT_PRESETS:
        fields = {"patch_size": 16, "num_hidden_layers": 12, **DEIT_PRESETS[preset]}
        fields["intermediate_size"] = 4 * fields["hidden_size"]
        config = DeiTDistilledConfig(image_size=image_size, **{**fields, **overrides}, **labels)
        return DeiTDistilledForImageClassification(config)
    if preset is not None:
        raise ValueError(f"model_preset={preset!r}; choose one of {sorted(TINYVIT_PRESETS) + sorted(DEIT_PRESETS)}")
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False, **labels, **overrides)
    # A new label space (21k -> 1k, ImageNet -> digits) replaces the head; everything else loads strictly.
    return AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True, trust_remote_code=False
    )


def build_image_processor(model, model_args: ModelArguments, image_size: int, recipe: AugmentationRecipe):
    """The evaluation transform saved with the model, matching AugmentationRecipe.eval at `image_size`."""
    normalisation = {"image_mean": list(recipe.mean), "image_std": list(recipe.std)}
    if isinstance(model, TinyViTForImageClassification):
        return tinyvit_image_processor(
            image_size, **{**eval_preprocessing(image_size, EVAL_CROP_PCT, "center"), **normalisation}
        )
    if isinstance(model, DeiTDistilledForImageClassification):
        processor = deit_image_processor(image_size, EVAL_CROP_PCT)
        processor.image_mean, processor.image_std = normalisation["image_mean"], normalisation["image_std"]
        return processor
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
    processor.image_mean, processor.image_std = normalisation["image_mean"], normalisation["image_std"]
    return processor


def main(argv: list[str] | None = None) -> DistillationTrainer:
    model_args, data_args, training_args = parse(argv)
    splits = load_image_dataset(data_args.dataset_name)  # the fixed split the logit saver also uses
    eval_name = "test" if "test" in splits else "validation"
    train_split, eval_split = splits["train"], splits[eval_name]
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
        model_size = None
        if model_args.model_preset in TINYVIT_PRESETS:
            model_size = TINYVIT_PRESETS[model_args.model_preset]["image_size"]
        image_size = data_args.image_size or model_size or 224
        if dataset_labels is None:
            raise ValueError(f"dataset {data_args.dataset_name!r} has no ClassLabel 'label' column to train on")
        num_labels, id2label = len(dataset_labels), dataset_labels
        preset = {
            "tinyvit": AugmentationRecipe.tinyvit_pretrain,
            "deit": AugmentationRecipe.deit,
            "none": AugmentationRecipe.eval,
        }[data_args.augmentation](image_size)
        # --mixup_alpha / --cutmix_alpha, when given, replace the preset's values.
        recipe = dataclasses.replace(
            preset,
            mixup_alpha=training_args.mixup_alpha or preset.mixup_alpha,
            cutmix_alpha=training_args.cutmix_alpha or preset.cutmix_alpha,
        )
        if model_args.model_name_or_path is not None:
            # A pretrained model keeps the input normalisation it was trained with.
            pretrained = AutoImageProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
            recipe = dataclasses.replace(recipe, mean=tuple(pretrained.image_mean), std=tuple(pretrained.image_std))
        train_dataset = AugmentedDataset(train_split, recipe, seed=training_args.seed, num_labels=num_labels)

    eval_recipe = dataclasses.replace(AugmentationRecipe.eval(image_size), mean=recipe.mean, std=recipe.std)
    eval_dataset = AugmentedDataset(eval_split, eval_recipe, seed=training_args.seed) if dataset_labels else None

    # DistillationTrainer checks the student's head against the store's classes before training.
    # transformers initialises weights from torch's global generator: seed it, or a rerun (or the run a
    # crashed one is compared with) starts from other weights. Trainer seeds only after the model exists.
    set_seed(training_args.seed)
    model = build_model(model_args, image_size, num_labels, id2label)
    processor = build_image_processor(model, model_args, image_size, recipe)

    trainer = DistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    # One line per process, so that a launcher (and its tests) can see every rank trained in lock-step.
    print(
        f"[distill] rank {training_args.process_index} of {training_args.world_size}: "
        f"{trainer.state.global_step} steps, train_loss {result.training_loss:.6f}, parameter checksum {checksum:.10e}",
        flush=True,
    )
    metrics = trainer.evaluate() if eval_dataset is not None else {}
    trainer.log_metrics("eval", metrics)
    # The card fields given here are remembered by the trainer for every later save and push.
    trainer.create_model_card(dataset=data_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name)  # saves the model first, then uploads the folder
    else:
        trainer.save_model()
    return trainer


if __name__ == "__main__":
    main()
