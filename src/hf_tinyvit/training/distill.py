"""One distillation or fine-tuning run from command-line style arguments: the image dataset, the student
(a TinyViT or DeiT preset, or a saved model), its training views (replayed from a store, or augmented
online), the evaluation transform it is saved with, and `DistillationTrainer`. `hf-tinyvit distill` and
`accelerate launch examples/distill.py` both run `distill`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

import datasets
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedModel,
    ViTImageProcessor,
    set_seed,
)

from ..augment.recipe import AugmentationRecipe, check_image_size
from ..augment.views import AugmentedDataset
from ..datasets import (
    DEFAULT_VALIDATION_SPLIT_PERCENTAGE,
    check_validation_split_percentage,
    has_eval_split,
    hold_out,
    load_image_dataset,
)
from ..log import follow_training_args, get_logger
from ..models.deit_distilled import (
    DEIT_PRESETS,
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    deit_image_processor,
)
from ..models.tinyvit import (
    SMALL_PRESETS,
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

__all__ = [
    "DataArguments",
    "ModelArguments",
    "build_model",
    "distill",
    "eval_transform",
    "parse_distill_args",
    "stream_image_dataset",
]

logger = get_logger(__name__)

# The TinyViT presets `--model_preset` builds: the published sizes and the small ones for 32-64 px inputs.
_TINYVIT_PRESETS = {**TINYVIT_PRESETS, **SMALL_PRESETS}
_PRESETS = sorted(_TINYVIT_PRESETS) + sorted(DEIT_PRESETS)

# Online augmentation presets of `--augmentation`.
AUGMENTATIONS = {
    "tinyvit": AugmentationRecipe.tinyvit_pretrain,
    "deit": AugmentationRecipe.deit,
    "digits": AugmentationRecipe.digits,
    "none": AugmentationRecipe.eval,
}


@dataclass
class ModelArguments:
    model_preset: str | None = field(
        default=None,
        metadata={"help": f"Train from scratch: one of {_PRESETS}."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from a saved model (folder or Hub id), e.g. to fine-tune 21k-distilled -> 1k."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of config fields to override, e.g. '{\"depths\": [1, 1, 1, 1]}'."},
    )

    def __post_init__(self):
        if (self.model_preset is None) == (self.model_name_or_path is None):
            raise ValueError("pass exactly one of --model_preset (train from scratch) and --model_name_or_path")
        if self.model_preset is not None and self.model_preset not in _PRESETS:
            raise ValueError(f"model_preset={self.model_preset!r}; choose one of {_PRESETS}")
        parse_config_overrides(self.config_overrides)


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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training images (datasets streaming: image folders, Parquet folders, Hub ids) instead "
            "of materialising them: split per process and DataLoader worker, shuffled in windows, resumable "
            "mid-epoch. The source needs a 'train' split in the store's order; Mixup/CutMix are not streamed."
        },
    )
    stream_shards: int = field(
        default=8,
        metadata={"help": "Shards an in-memory or saved dataset is cut into when streamed (digits, save_to_disk)."},
    )
    shuffle_buffer: int = field(default=1024, metadata={"help": "Rows shuffled together when streaming."})
    augmentation: str = field(
        default="tinyvit",
        metadata={
            "help": "Online augmentation preset: tinyvit (RandAugment, erasing), deit (+ Mixup/CutMix), digits (milder "
            "crops, no RandAugment or flips: small glyphs) or none.",
            "choices": sorted(AUGMENTATIONS),
        },
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata={
            "help": "For a dataset with no test or validation split: the percentage of its train split held out "
            f"for evaluation. Default: {DEFAULT_VALIDATION_SPLIT_PERCENTAGE:g} for online runs; 0 (no hold-out, no "
            "evaluation) with --teacher_logits, because hf-tinyvit save-logits runs the teacher on the whole train "
            "split. Refused for a dataset that has its own test or validation split."
        },
    )

    def __post_init__(self):
        if self.image_size is not None:
            check_image_size(self.image_size)
        if self.max_train_samples is not None and not (
            isinstance(self.max_train_samples, int) and self.max_train_samples >= 1
        ):
            raise ValueError(
                f"max_train_samples={self.max_train_samples!r} must be an integer >= 1 (or unset for all): "
                "nothing would be trained"
            )
        if self.max_eval_samples is not None and not (isinstance(self.max_eval_samples, int) and self.max_eval_samples >= 0):
            raise ValueError(
                f"max_eval_samples={self.max_eval_samples!r} must be an integer >= 0 (0: no evaluation; unset: all)"
            )
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation={self.augmentation!r}; choose one of {sorted(AUGMENTATIONS)}")
        if self.validation_split_percentage is not None:
            check_validation_split_percentage(self.validation_split_percentage)


def parse_distill_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, DistillationTrainingArguments) from flags or one JSON file."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, DistillationTrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        import os

        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


# Config fields the run sets itself (from the labels and --image_size): an override would contradict them.
_RUN_SET_FIELDS = ("num_labels", "id2label", "label2id", "image_size")


def parse_config_overrides(text: str | None) -> dict:
    """The one check of `--config_overrides`: a JSON object whose fields the run does not set itself."""
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except ValueError as error:
        raise ValueError(f"config_overrides={text!r} is not valid JSON ({error}); expected an object such as "
                         '\'{"depths": [1, 1, 1, 1]}\'') from None  # fmt: skip
    if not isinstance(overrides, dict):
        raise ValueError(f"config_overrides={text!r} holds a {type(overrides).__name__}; expected a JSON object")
    clash = sorted(set(overrides) & set(_RUN_SET_FIELDS))
    if clash:
        raise ValueError(
            f"config_overrides sets {clash}, which the run sets from the dataset's labels and --image_size; "
            "pass --image_size instead, and leave the labels to the dataset or store"
        )
    return overrides


def _configured(make, overrides: dict, known: set[str], what: str):
    """Build a config from `make()`, refusing override fields the config does not have (transformers would
    keep a misspelt one as an inert attribute) and naming the overrides when the config rejects a value."""
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"config_overrides fields {unknown} are not fields of {what}; its fields include {sorted(known)[:40]}"
        )
    try:
        return make()
    except (TypeError, ValueError) as error:
        raise ValueError(f"config_overrides={json.dumps(overrides)} do not make a valid {what}: {error}") from None


def build_model(model_args: ModelArguments, image_size: int, num_labels: int, id2label: dict[int, str]) -> PreTrainedModel:
    """The student: a preset built from scratch, or a saved model whose head is resized to the labels."""
    if (model_args.model_preset is None) == (model_args.model_name_or_path is None):
        raise ValueError("pass exactly one of --model_preset (train from scratch) and --model_name_or_path")
    overrides = parse_config_overrides(model_args.config_overrides)
    if len(id2label) != num_labels or sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label has {len(id2label)} entries for num_labels={num_labels}; expected one per class")
    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    preset = model_args.model_preset
    if preset in _TINYVIT_PRESETS:
        config = _configured(
            lambda: TinyViTConfig.from_preset(preset, image_size=image_size, **labels, **overrides), overrides,
            set(TinyViTConfig().to_dict()), f"TinyViTConfig ({preset})",
        )  # fmt: skip
        return TinyViTForImageClassification(config)
    if preset in DEIT_PRESETS:
        config = _configured(
            lambda: DeiTDistilledConfig.from_preset(preset, **{"image_size": image_size, **overrides}, **labels),
            overrides, set(DeiTDistilledConfig().to_dict()), f"DeiTDistilledConfig ({preset})",
        )  # fmt: skip
        return DeiTDistilledForImageClassification(config)
    if preset is not None:
        raise ValueError(f"model_preset={preset!r}; choose one of {_PRESETS}")
    saved = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
    config = _configured(
        lambda: AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False, **labels, **overrides),
        overrides, set(saved.to_dict()), f"{type(saved).__name__} of {model_args.model_name_or_path}",
    )  # fmt: skip
    if getattr(config, "model_type", None) == "timm_wrapper":
        # A timm config saves its classes as `label_names`, and keeps the loaded ones (ImageNet's) over new ones.
        config.label_names = [id2label[i] for i in range(num_labels)]
    # A new label space (21k -> 1k, ImageNet -> digits) replaces the head; everything else loads strictly.
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True, trust_remote_code=False
    )
    saved_size = getattr(model.config, "image_size", None)
    if isinstance(model, DeiTDistilledForImageClassification) and saved_size not in (image_size, [image_size] * 2):
        # fine-tuning at another resolution (DeiT 224 -> 384): position embeddings interpolated once
        logger.info("resizing the position embeddings of %s from %s to %d", model_args.model_name_or_path,
                    saved_size, image_size)  # fmt: skip
        model.resize_position_embeddings(image_size)
    return model


def _pretrained_preprocessing(model_name_or_path: str | None) -> dict | None:
    """The input settings (`teachers.processor_preprocessing`) of a saved model's image processor, or None
    for a preset or a folder without one."""
    if model_name_or_path is None:
        return None
    from transformers import AutoImageProcessor

    from ..teachers import processor_preprocessing

    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    return processor_preprocessing(processor)


def _default_image_size(model_args: ModelArguments) -> int:
    """The resolution a run trains at without --image_size: a preset's, a saved model's own (its config's
    `image_size`, else its image processor's), else 224."""
    if model_args.model_preset is not None:
        return {**_TINYVIT_PRESETS, **DEIT_PRESETS}[model_args.model_preset].get("image_size", 224)
    saved = getattr(AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=False), "image_size", None)
    if isinstance(saved, int):
        return saved
    pretrained = _pretrained_preprocessing(model_args.model_name_or_path)
    size = pretrained and pretrained["size"]
    return int(size[0]) if size and size[0] == size[1] else 224


_LABEL_FIX = (
    "Fine-tune the teacher on this dataset's classes first (hf-tinyvit distill --model_name_or_path <teacher> "
    "--distillation_type none --dataset_name <this dataset>) and save its logits again, or pass the dataset the "
    "teacher was fine-tuned on."
)


def _store_label_column(store, dataset_labels, data_args: DataArguments, training_args) -> str | None:
    """The dataset's label column when its classes are the store's (names and order), else None.

    The student learns the teacher's classes. Labels of other classes (another order, other names or count)
    cannot train a class head next to the teacher's targets: refused for every mode that reads labels. A
    stored-logit run reads none, so it trains on the store's classes and skips the evaluation on labels
    that are not its own."""
    from ..teachers import label_mismatch, numbered_only

    if dataset_labels is None:
        return None
    store_labels = {int(k): v for k, v in store.metadata["id2label"].items()}
    teacher = f"the store {store.source!r}"
    dataset = f"the dataset {data_args.dataset_name!r}"
    mismatch = label_mismatch(store_labels, dataset_labels, teacher=teacher, student=dataset)
    if mismatch is not None and training_args.distillation_type != "stored":
        raise ValueError(
            f"distillation_type={training_args.distillation_type!r} trains a head on the dataset's labels next to "
            f"the targets of teacher {store.metadata.get('teacher_name')!r}, but {mismatch}. {_LABEL_FIX}"
        )
    if mismatch is not None:
        logger.warning(
            "%s. The stored-logit student learns the store's classes from its targets alone; no evaluation runs on "
            "the dataset's labels", mismatch,
        )  # fmt: skip
        return None
    if numbered_only(store_labels) != numbered_only(dataset_labels):
        logger.warning("%s or %s names its classes by number only: the order of the labels cannot be checked",
                       teacher, dataset)  # fmt: skip
    return "label"


def _split(data_args: DataArguments, replaying: bool):
    """The dataset's splits under the split policy (`hf_tinyvit.datasets.hold_out`): a train-only source
    gives up `validation_split_percentage` of its train split for evaluation, except when replaying a
    store, whose teacher pass covered the whole train split."""
    percentage = data_args.validation_split_percentage
    splits = load_image_dataset(data_args.dataset_name, validation_split_percentage=0)
    if percentage and has_eval_split(splits):
        raise ValueError(
            f"validation_split_percentage={percentage:g} applies to datasets without a test or validation split; "
            f"{data_args.dataset_name!r} has {sorted(splits)}, whose own split is used for evaluation: leave it unset"
        )
    # A store saved by hf-tinyvit save-logits covers the whole train split: replaying one holds nothing out
    # unless asked (a store of 0.1.0 saved from a train-only source covers its 90% share: pass 10).
    if percentage is None:
        percentage = 0 if replaying else DEFAULT_VALIDATION_SPLIT_PERCENTAGE
    splits = hold_out(splits, percentage)
    if not has_eval_split(splits):
        logger.info("dataset %r has no test or validation split and none is held out: no evaluation",
                    data_args.dataset_name)  # fmt: skip
    return splits


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
    if getattr(model.config, "model_type", None) == "timm_wrapper":
        return recipe, _timm_processor(model, recipe)
    return recipe, ViTImageProcessor(**recipe.image_processor_kwargs())


def _timm_processor(model: PreTrainedModel, recipe: AugmentationRecipe):
    """A timm model's image processor lives in its config.json: transformers builds `TimmWrapperImageProcessor`
    from `pretrained_cfg` for a timm folder and never reads a preprocessor_config.json there. The evaluation
    transform is written into `pretrained_cfg`, so the saved folder preprocesses as the run evaluated (timm's
    eval transform: shorter side to size / crop_pct, bicubic, centre crop)."""
    from transformers import TimmWrapperImageProcessor

    size = recipe.image_size
    model.config.pretrained_cfg = {
        **(getattr(model.config, "pretrained_cfg", None) or {}),
        "input_size": [3, size, size], "mean": list(recipe.mean), "std": list(recipe.std),
        "crop_pct": recipe.crop_pct, "crop_mode": recipe.crop_mode, "interpolation": recipe.interpolation,
    }  # fmt: skip
    return TimmWrapperImageProcessor(pretrained_cfg=model.config.pretrained_cfg, architecture=model.config.architecture)


def _crop(recipe: AugmentationRecipe) -> dict:
    return {"crop_pct": recipe.crop_pct, "crop_mode": recipe.crop_mode}


def open_store(training_args: DistillationTrainingArguments) -> TeacherLogitStore:
    """The run's teacher-logit store; from the Hub, only the epochs its training epochs replay are fetched (every
    epoch when `max_steps` sets the length)."""
    import math

    from ..replay import replayed_epoch

    store = TeacherLogitStore.open(training_args.teacher_logits, epochs=())
    if training_args.max_steps is not None and training_args.max_steps > 0:
        store.fetch(store.epochs)
    elif store.epochs:
        store.fetch({replayed_epoch(store, e) for e in range(max(1, math.ceil(training_args.num_train_epochs)))})
    return store


def stream_image_dataset(name: str, split: str, num_shards: int = 8):
    """A split of `load_image_dataset`'s sources as a `datasets.IterableDataset`, in the map-style order: image
    folders, Parquet folders and Hub ids stream from their files; digits and `save_to_disk` folders (already
    in memory or on disk) are cut into `num_shards` shards."""
    import os

    import datasets

    if name == "digits" or (os.path.isdir(name) and not name.startswith("imagefolder:") and (
        os.path.exists(os.path.join(name, "dataset_dict.json")) or os.path.exists(os.path.join(name, "dataset_info.json"))
    )):  # fmt: skip
        splits = load_image_dataset(name, validation_split_percentage=0)
        if split not in splits:
            raise ValueError(f"dataset {name!r} has splits {list(splits)}; cannot stream {split!r}")
        return splits[split].to_iterable_dataset(num_shards=min(num_shards, len(splits[split])))
    if name.startswith("imagefolder:"):
        stream = datasets.load_dataset("imagefolder", data_dir=name.split(":", 1)[1], streaming=True)
    else:
        stream = datasets.load_dataset(name, streaming=True)
    if "train" not in stream:
        raise ValueError(f"dataset {name!r} has splits {list(stream)}; streaming needs a 'train' split")
    if split not in stream:
        raise ValueError(
            f"dataset {name!r} has splits {list(stream)}; streaming cannot cut a {split!r} split out of 'train' "
            "(the map-style loader would shuffle it): give the source its own split"
        )
    return stream[split]


def _streamed_datasets(data_args: DataArguments, training_args: DistillationTrainingArguments):
    """(train stream, eval stream or None, dataset label names or None) for --streaming."""
    if data_args.max_train_samples is not None:
        raise ValueError(
            "--max_train_samples cannot cut a stream (its sample ids would no longer match a store's): save the "
            "subset as its own dataset"
        )
    train = stream_image_dataset(data_args.dataset_name, "train", data_args.stream_shards)
    evaluation = None
    for name in ("test", "validation"):
        try:
            evaluation = stream_image_dataset(data_args.dataset_name, name, data_args.stream_shards)
            break
        except ValueError:
            continue
    if evaluation is not None and data_args.max_eval_samples is not None:
        # a few evaluation images are kept in memory (a cut stream has no sample ids to stream them by)
        rows = list(evaluation.take(data_args.max_eval_samples))
        evaluation = datasets.Dataset.from_list(rows, features=evaluation.features)
    label_feature = (train.features or {}).get("label")
    labels = {i: name for i, name in enumerate(label_feature.names)} if hasattr(label_feature, "names") else None
    return train, evaluation, labels


def distill(
    model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments
) -> DistillationTrainer:
    """Train, evaluate and save (or push) one student; returns the trainer."""
    follow_training_args(training_args)
    if training_args.distillation_type == "stored" and training_args.teacher_logits is None:
        raise ValueError("distillation_type='stored' needs --teacher_logits (a store folder or Hub dataset id)")
    if data_args.streaming:
        return _distill_streamed(model_args, data_args, training_args)
    splits = _split(data_args, replaying=training_args.teacher_logits is not None)
    eval_name = "test" if "test" in splits else "validation" if "validation" in splits else None
    train_split = splits["train"]
    eval_split = splits[eval_name] if eval_name is not None else None
    if data_args.max_train_samples is not None:
        train_split = train_split.select(range(min(data_args.max_train_samples, len(train_split))))
    if data_args.max_eval_samples is not None and eval_split is not None:
        eval_split = eval_split.select(range(min(data_args.max_eval_samples, len(eval_split))))
    label_feature = train_split.features.get("label")
    dataset_labels = (
        {i: name for i, name in enumerate(label_feature.names)} if hasattr(label_feature, "names") else None
    )

    if training_args.teacher_logits is not None:
        store = open_store(training_args)
        recipe = AugmentationRecipe.from_dict(store.metadata["recipe"])
        if data_args.image_size not in (None, recipe.image_size):
            raise ValueError(
                f"image_size={data_args.image_size} differs from the stored views' {recipe.image_size}: the student "
                "trains on the views the teacher saw"
            )
        image_size = recipe.image_size
        num_labels = store.num_labels
        id2label = {int(k): v for k, v in store.metadata["id2label"].items()}
        label_column = _store_label_column(store, dataset_labels, data_args, training_args)
        if label_column is None:
            dataset_labels = None  # not the student's classes: no labels to train or evaluate on
        train_dataset = StoredLogitsDataset(train_split, store, label_column=label_column)
    else:
        pretrained = _pretrained_preprocessing(model_args.model_name_or_path)
        image_size = data_args.image_size if data_args.image_size is not None else _default_image_size(model_args)
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
        if pretrained is not None:
            # A pretrained model keeps the input normalisation it was trained with.
            recipe = dataclasses.replace(recipe, mean=pretrained["mean"], std=pretrained["std"])
        train_dataset = AugmentedDataset(train_split, recipe, seed=training_args.seed, num_labels=num_labels)

    return _train(
        model_args, data_args, training_args, train_dataset, image_size, num_labels, id2label, recipe,
        # --max_eval_samples 0 means no evaluation, as an explicit 0 says
        lambda evaluation: (
            AugmentedDataset(eval_split, evaluation, seed=training_args.seed)
            if dataset_labels and eval_split is not None and len(eval_split) > 0
            else None
        ),
        eval_name,
    )  # fmt: skip


def _distill_streamed(
    model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments
) -> DistillationTrainer:
    """`distill` over streamed images: stored-logit training (`IterableStoredLogitsDataset`) or online
    augmentation (`IterableAugmentedDataset`)."""
    from ..augment.views import IterableAugmentedDataset
    from ..replay import IterableStoredLogitsDataset

    train_stream, eval_stream, dataset_labels = _streamed_datasets(data_args, training_args)
    buffer = data_args.shuffle_buffer
    if training_args.teacher_logits is not None:
        store = open_store(training_args)
        recipe = store.recipe
        if data_args.image_size not in (None, recipe.image_size):
            raise ValueError(
                f"image_size={data_args.image_size} differs from the stored views' {recipe.image_size}: the student "
                "trains on the views the teacher saw"
            )
        image_size, num_labels = recipe.image_size, store.num_labels
        id2label = {int(k): v for k, v in store.metadata["id2label"].items()}
        label_column = _store_label_column(store, dataset_labels, data_args, training_args)
        dataset_labels = dataset_labels if label_column else None  # other classes: nothing to evaluate on
        train_dataset = IterableStoredLogitsDataset(
            train_stream, store, label_column=label_column, shuffle_buffer=buffer
        )
    else:
        if dataset_labels is None:
            raise ValueError(f"dataset {data_args.dataset_name!r} has no ClassLabel 'label' column to train on")
        image_size = data_args.image_size or _default_image_size(model_args)
        num_labels, id2label = len(dataset_labels), dataset_labels
        recipe = AUGMENTATIONS[data_args.augmentation](image_size)
        train_dataset = IterableAugmentedDataset(
            train_stream, recipe, seed=training_args.seed, num_labels=num_labels, shuffle_buffer=buffer
        )

    def eval_dataset(evaluation):
        if eval_stream is None or dataset_labels is None:
            return None
        if isinstance(eval_stream, datasets.Dataset):
            return AugmentedDataset(eval_stream, evaluation, seed=training_args.seed)
        # rank 0 reads the whole evaluation stream and accelerate dispatches its batches
        return IterableAugmentedDataset(
            eval_stream, evaluation, seed=training_args.seed, shuffle_buffer=1, rank=0, world_size=1, equal_split=False
        )

    eval_name = None if eval_stream is None else str(getattr(eval_stream, "split", None) or "test")
    return _train(
        model_args, data_args, training_args, train_dataset, image_size, num_labels, id2label, recipe, eval_dataset,
        eval_name,
    )  # fmt: skip


def _train(
    model_args, data_args, training_args, train_dataset, image_size, num_labels, id2label, recipe, make_eval, eval_name
):
    # transformers initialises weights from torch's global generator: seed it, or a rerun (or the run a
    # crashed one is compared with) starts from other weights. Trainer seeds only after the model exists.
    set_seed(training_args.seed)
    model = build_model(model_args, image_size, num_labels, id2label)
    evaluation, processor = eval_transform(model, image_size, recipe.mean, recipe.std)
    eval_dataset = make_eval(evaluation)

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
