"""Model cards for `DistillationTrainer` outputs: Hub metadata plus a section saying how the model was
distilled (mode, teacher, top-k, epochs of stored logits, augmentation recipe)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..augment.views import DistillationDataset

__all__ = ["distillation_summary", "write_trainer_model_card"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CARD_METRICS = ("accuracy", "top5_accuracy", "teacher_agreement")


def _looks_like_hub_id(name: str | None) -> bool:
    # A local path in `base_model` / `datasets` makes the Hub reject the metadata.
    return bool(name) and not os.path.exists(name) and ":" not in name and bool(_REPO_ID.match(name))


def _store_metadata(trainer: Any) -> dict | None:
    # Read from the StoredLogitsDataset the trainer already holds; opening args.teacher_logits here could
    # mean a Hub download during a checkpoint save.
    dataset = trainer.train_dataset
    store = dataset.store if isinstance(dataset, DistillationDataset) else None
    return dict(store.metadata) if store is not None else None


def _recipe_dict(trainer: Any, metadata: dict | None) -> dict | None:
    if metadata is not None and metadata.get("recipe") is not None:
        return metadata["recipe"]
    dataset = trainer.train_dataset
    return dataset.recipe.to_dict() if isinstance(dataset, DistillationDataset) else None


def distillation_summary(trainer: Any) -> tuple[str, list[str], dict | None]:
    """(markdown describing the distillation, extra tags, stored-logit metadata or None)."""
    args = trainer.args
    mode = args.distillation_type
    metadata = _store_metadata(trainer)
    lines = [f"- distillation type: `{mode}`"]
    tags = [f"distillation-{mode}"] if mode != "none" else []
    if mode != "none":
        tags.append("knowledge-distillation")
    if mode == "soft":
        lines.append(f"- soft loss: alpha = {args.alpha}, tau = {args.tau}")
    if trainer.teacher is not None:
        name = getattr(trainer.teacher, "name", None) or args.teacher or type(trainer.teacher).__name__
        lines.append(f"- teacher (live, run under inference_mode): `{name}`")
        weights_hash = getattr(trainer.teacher, "weights_hash", None)
        if weights_hash:
            lines.append(f"- teacher weights hash: `{weights_hash}`")
    if args.teacher_logits is not None:
        lines.append(f"- stored teacher logits: `{args.teacher_logits}`")
        if metadata is not None:
            lines.append(f"- teacher: `{metadata.get('teacher_name')}` (weights hash `{metadata.get('teacher_hash')}`)")
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
):
    """Write README.md for the trainer's model in `output_dir` through `hf_tinyvit.hub.write_model_card`.

    Dataset, tags and base model given once (e.g. by `push_to_hub(dataset=...)`) are remembered for
    later saves. Returns the `huggingface_hub.ModelCard`.
    """
    from ..hub import write_model_card

    remembered = trainer.__dict__.setdefault("_card_fields", {})
    for key, value in (("dataset", dataset), ("tags", tags), ("finetuned_from", finetuned_from), ("license", license)):
        if value is not None:
            remembered[key] = value
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
    hub_datasets = [d for d in datasets if _looks_like_hub_id(d)]
    description = (
        f"A {model_type or type(model).__name__} image classifier trained with hf_tinyvit's `DistillationTrainer`"
        + (f" on {', '.join(datasets)}." if datasets else ".")
    )
    kwargs = {"license": remembered["license"]} if remembered.get("license") else {}
    return write_model_card(
        output_dir,
        model_id=model_id,
        base_model=base_model if _looks_like_hub_id(base_model) else None,
        datasets=hub_datasets,
        tags=[t for t in (model_type, *distill_tags, *user_tags) if t],
        description=description,
        eval_results=eval_results or None,
        eval_dataset=(hub_datasets[0], hub_datasets[0]) if hub_datasets else None,
        # The trust_remote_code note holds only where save_pretrained copied the modeling code (TinyViT does).
        custom_code=any(Path(output_dir).glob("modeling_*.py")),
        extra_sections=[("Training", body)],
        **kwargs,
    )
