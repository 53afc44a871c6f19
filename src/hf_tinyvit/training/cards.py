"""Model cards for `DistillationTrainer` outputs (final folders, checkpoints, pushes): Hub metadata (datasets,
base model, tags, a model-index with the last evaluation) plus a section saying how the model was distilled
(mode, teacher, store, top-k, epochs of stored logits, augmentation recipe). Teachers, stores and datasets are
named by Hub id or by name, never by a local path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..augment.views import DistillationDataset
from ..hub import hub_id, public_name

__all__ = ["dataset_reference", "distillation_summary", "write_trainer_model_card"]

_CARD_METRICS = ("accuracy", "top5_accuracy", "teacher_agreement")
# Dataset names `load_image_dataset` resolves itself, with what a card calls them.
_BUILT_IN_DATASETS = {"digits": "digits (scikit-learn's handwritten digits)"}


def dataset_reference(name: str | None) -> tuple[str | None, str | None]:
    """(Hub id or None, display name) of a dataset as `hf-tinyvit distill --dataset_name` takes it."""
    if name is None:
        return None, None
    if name in _BUILT_IN_DATASETS:
        return None, _BUILT_IN_DATASETS[name]
    return hub_id(name), public_name(name)


def _store(trainer: Any):
    # The StoredLogitsDataset the trainer already holds; opening args.teacher_logits here could mean a Hub
    # download during a checkpoint save.
    dataset = trainer.train_dataset
    return getattr(dataset, "store", None) if isinstance(dataset, DistillationDataset) else None


def store_reference(store) -> str | None:
    """A store's public name: the Hub id it was opened from, else its folder's name."""
    if store is None:
        return None
    return public_name(getattr(store, "source", None) or store.path)


def _markdown_name(name: str | None, kind: str = "model") -> str:
    repo = hub_id(name)
    if repo is None or "/" not in repo:  # a bare name may be a Hub id or just a name: no link to guess at
        return f"`{name}`"
    prefix = "datasets/" if kind == "dataset" else ""
    return f"[`{repo}`](https://huggingface.co/{prefix}{repo})"


def _recipe_dict(trainer: Any, metadata: dict | None) -> dict | None:
    if metadata is not None and metadata.get("recipe") is not None:
        return metadata["recipe"]
    dataset = trainer.train_dataset
    return dataset.recipe.to_dict() if isinstance(dataset, DistillationDataset) else None


def distillation_summary(trainer: Any) -> tuple[str, list[str], dict | None]:
    """(markdown describing the distillation, extra tags, stored-logit metadata or None)."""
    args = trainer.args
    mode = args.distillation_type
    store = _store(trainer)
    metadata = dict(store.metadata) if store is not None else None
    lines = [f"- distillation type: `{mode}`"]
    tags = [f"distillation-{mode}"] if mode != "none" else []
    if mode != "none":
        tags.append("knowledge-distillation")
    if mode == "soft":
        lines.append(f"- soft loss: alpha = {args.alpha}, tau = {args.tau}")
    if trainer.teacher is not None:
        name = getattr(trainer.teacher, "name", None) or args.teacher or type(trainer.teacher).__name__
        lines.append(f"- teacher (live, run under inference_mode): {_markdown_name(public_name(name))}")
        weights_hash = getattr(trainer.teacher, "weights_hash", None)
        if weights_hash:
            lines.append(f"- teacher weights hash: `{weights_hash}`")
    if store is not None:
        lines.append(f"- stored teacher logits: {_markdown_name(store_reference(store), 'dataset')}")
        if metadata is not None:
            teacher = _markdown_name(public_name(metadata.get("teacher_name")))
            lines.append(f"- teacher: {teacher} (weights hash `{metadata.get('teacher_hash')}`)")
            lines.append(
                f"- sparse soft labels: top-{metadata.get('topk')} of {metadata.get('num_labels')} classes, "
                f"stored for epochs {metadata.get('epochs')}"
            )
            if metadata.get("recipe_fingerprint"):
                lines.append(f"- augmentation recipe fingerprint: `{metadata['recipe_fingerprint']}`")
    lines.append(
        f"- {args.num_train_epochs:g} epochs, learning rate {args.learning_rate:g}, "
        f"weight decay {args.weight_decay:g}, "
        f"batch size {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
        f"accumulation x {args.world_size} processes"
    )
    if args.layer_lr_decay < 1.0:
        lines.append(f"- layer-wise learning-rate decay {args.layer_lr_decay:g}")
    if args.freeze_batchnorm:
        lines.append("- BatchNorm kept in eval mode")
    if args.label_smoothing_factor:
        lines.append(f"- label smoothing {args.label_smoothing_factor:g}")
    recipe = _recipe_dict(trainer, metadata)
    body = "\n".join(lines)
    if recipe is not None:
        body += (
            "\n\nAugmentation recipe:\n\n```json\n"
            + json.dumps(recipe, indent=2, sort_keys=True, default=str)
            + "\n```"
        )
    return body, tags, metadata


def _latest_eval_results(trainer: Any) -> dict[str, float]:
    for entry in reversed(trainer.state.log_history):
        found = {name: float(entry[f"eval_{name}"]) for name in _CARD_METRICS if f"eval_{name}" in entry}
        if found:
            return found
    return {}


def write_trainer_model_card(
    trainer: Any,
    output_dir: str | os.PathLike,
    *,
    model_name: str | None = None,
    dataset: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    license: str | None = None,
    eval_split: str | None = None,
):
    """Write README.md for the trainer's model in `output_dir` through `hf_tinyvit.hub.write_model_card`.

    Dataset, tags, base model and evaluation split given once (e.g. by `push_to_hub(dataset=...)`) are
    remembered for later saves. Returns the `huggingface_hub.ModelCard`.
    """
    from ..hub import write_model_card

    remembered = trainer.__dict__.setdefault("_card_fields", {})
    given = {"dataset": dataset, "tags": tags, "finetuned_from": finetuned_from, "license": license}
    remembered.update({key: value for key, value in {**given, "eval_split": eval_split}.items() if value is not None})
    dataset = remembered.get("dataset")
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    user_tags = remembered.get("tags")
    user_tags = [user_tags] if isinstance(user_tags, str) else list(user_tags or [])

    model = trainer.accelerator.unwrap_model(trainer.model)
    config = getattr(model, "config", None)
    base_model = remembered.get("finetuned_from") or getattr(config, "_name_or_path", None)
    model_type = getattr(config, "model_type", None)
    model_id = trainer.args.hub_model_id or model_name or Path(trainer.args.output_dir).name

    body, distill_tags, _ = distillation_summary(trainer)
    eval_results = _latest_eval_results(trainer)
    references = [dataset_reference(d) for d in datasets]
    hub_datasets = [repo for repo, _ in references if repo]
    store = _store(trainer)
    store_id = hub_id(getattr(store, "source", None)) if store is not None else None
    named = ", ".join(name for _, name in references)
    description = (
        f"A {model_type or type(model).__name__} image classifier trained with hf_tinyvit's `DistillationTrainer`"
        + (f" on {named}." if named else ".")
    )
    eval_dataset = None
    if references:  # model-index: the dataset's id (its Hub id, else its short name) and its display name
        repo, name = references[0]
        eval_dataset = (repo or public_name(datasets[0]), name)
    kwargs = {"license": remembered["license"]} if remembered.get("license") else {}
    return write_model_card(
        output_dir,
        model_id=model_id,
        base_model=base_model,
        datasets=[*hub_datasets, *([store_id] if store_id else [])],
        tags=[t for t in (model_type, *distill_tags, *user_tags) if t],
        description=description,
        eval_results=eval_results or None,
        eval_dataset=eval_dataset,
        eval_split=remembered.get("eval_split"),
        extra_sections=[("Training", body)],
        **kwargs,
    )
