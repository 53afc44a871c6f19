"""`DistillationTrainer`: a transformers `Trainer` for TinyViT's fast pretraining distillation from stored
sparse teacher logits, DeiT's hard and soft distillation from a live or stored teacher, and plain fine-tuning."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import Trainer

from ..data.sparse import sparse_to_dense, teacher_hard_labels
from ..losses import cross_entropy, deit_hard_distillation_loss, deit_soft_distillation_loss
from .arguments import DistillationTrainingArguments
from .metrics import IGNORE_INDEX, compute_classification_metrics

__all__ = [
    "DistillationTrainer",
    "TeacherSignal",
    "distillation_loss",
    "layer_decay_parameter_groups",
    "student_heads",
]

logger = logging.getLogger(__name__)

# Batch keys that carry targets rather than model inputs; the collator must keep them and the
# model must not receive them.
TEACHER_KEYS = ("teacher_topk_values", "teacher_topk_indices", "teacher_labels")
TARGET_KEYS = ("labels", "label", "label_ids", *TEACHER_KEYS)
NON_MODEL_KEYS = (*TARGET_KEYS, "sample_id")


@dataclass
class TeacherSignal:
    """What the teacher says about a batch: its distribution at temperature 1 (needed by the soft and
    stored losses) and its top-1 class (the hard loss, and the agreement metric)."""

    probs: torch.Tensor | None
    hard_labels: torch.Tensor


def student_heads(outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-head logits, distillation-head logits). A single-head student returns its logits twice,
    so it takes both the label term and the teacher term on its one head."""
    cls_logits = getattr(outputs, "cls_logits", None)
    distillation_logits = getattr(outputs, "distillation_logits", None)
    if cls_logits is not None and distillation_logits is not None:
        return cls_logits, distillation_logits
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
    return logits, logits


def distillation_loss(
    distillation_type: str,
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    labels: torch.Tensor | None,
    teacher: TeacherSignal | None,
    *,
    alpha: float = 0.5,
    tau: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Route one batch to the loss its mode defines; the numerics live in `hf_tinyvit.losses`.

    - none: cross-entropy on labels (both heads of a DeiT student, so its fused output stays sound);
    - hard / soft: DeiT's losses, labels on the class head and the teacher on the distillation head;
    - stored: cross-entropy against the teacher distribution; a DeiT student with labels puts them on
      its class head, without labels both of its heads learn the teacher distribution.
    """
    if distillation_type in ("none", "hard", "soft") and labels is None:
        raise ValueError(f"distillation_type={distillation_type!r} needs 'labels' in every batch; none were given")
    if distillation_type != "none" and teacher is None:
        raise ValueError(
            f"distillation_type={distillation_type!r} needs a teacher signal: batches with teacher_topk_values / "
            "teacher_topk_indices (a StoredLogitsDataset) or a live teacher"
        )
    if distillation_type == "none":
        if cls_logits is distillation_logits:
            return cross_entropy(cls_logits, labels, label_smoothing)
        return deit_hard_distillation_loss(
            cls_logits, distillation_logits, labels, labels, label_smoothing, label_smoothing
        )
    if distillation_type == "hard":
        return deit_hard_distillation_loss(
            cls_logits, distillation_logits, labels, teacher.hard_labels, label_smoothing
        )
    if distillation_type == "soft":
        return deit_soft_distillation_loss(
            cls_logits, distillation_logits, labels, teacher.probs, alpha, tau, label_smoothing
        )
    if distillation_type == "stored":
        if cls_logits is distillation_logits:
            return cross_entropy(distillation_logits, teacher.probs)
        # cross_entropy takes class indices or distributions, so the hard loss's two-head split serves here.
        class_target = labels if labels is not None else teacher.probs
        return deit_hard_distillation_loss(
            cls_logits, distillation_logits, class_target, teacher.probs, label_smoothing if labels is not None else 0.0
        )
    raise ValueError(f"distillation_type={distillation_type!r} must be one of none, hard, soft, stored")


def layer_decay_parameter_groups(
    model: nn.Module,
    decay_parameter_names: set[str] | list[str],
    *,
    learning_rate: float,
    weight_decay: float,
    layer_lr_decay: float,
) -> list[dict[str, Any]]:
    """Optimizer groups with layer-wise lr decay: a parameter at depth `d` of `L` gets
    `learning_rate * layer_lr_decay ** (L - 1 - d)` (embeddings at 0, the head at `L - 1` keeps the full
    rate, as in Cream TinyViT and BEiT-style fine-tuning), split by weight decay.

    Groups are ordered by (depth, decay) so that the optimizer state of a checkpoint lines up on resume.
    """
    if not (hasattr(model, "get_num_layers_for_lr_decay") and hasattr(model, "get_layer_id_for_lr_decay")):
        raise ValueError(
            f"layer_lr_decay={layer_lr_decay} needs a model with get_num_layers_for_lr_decay() and "
            f"get_layer_id_for_lr_decay(name); {type(model).__name__} has neither (use layer_lr_decay=1)"
        )
    num_layers = int(model.get_num_layers_for_lr_decay())
    decay_parameter_names = set(decay_parameter_names)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = int(model.get_layer_id_for_lr_decay(name))
        if not 0 <= layer_id < num_layers:
            raise ValueError(
                f"{type(model).__name__}.get_layer_id_for_lr_decay({name!r}) = {layer_id} lies outside "
                f"[0, {num_layers - 1}] (get_num_layers_for_lr_decay() = {num_layers})"
            )
        decays = name in decay_parameter_names
        group = groups.setdefault(
            (layer_id, decays),
            {
                "params": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr": learning_rate * layer_lr_decay ** (num_layers - 1 - layer_id),
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def _freeze_batchnorm(model: nn.Module) -> None:
    # Running statistics stay those of pretraining; the affine weights still train (Cream's EVAL_BN_WHEN_TRAINING).
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _batch_size(batch: Mapping[str, Any]) -> int:
    for key in ("pixel_values", "labels", "teacher_topk_indices"):
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


def _num_labels(module: nn.Module | None) -> int | None:
    if module is None:
        return None
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "num_labels", None) is not None:
        return int(config.num_labels)
    value = getattr(module, "num_labels", None)
    return int(value) if value is not None else None


class DistillationTrainer(Trainer):
    """`Trainer` whose `compute_loss` wires a student to its targets for `args.distillation_type`.

    `teacher_model` is a module or a spec string (model folder, Hub id, `timm:<name>`) loaded with
    `hf_tinyvit.data.load_teacher`; when omitted, `args.teacher` is used. The teacher is prepared by the
    trainer's accelerator in evaluation mode, runs under `torch.inference_mode` and never enters the
    optimizer. Datasets providing `collate_fn` / `train_sampler` get them used, and the train dataset's
    `set_epoch` is called at every epoch (resumed ones included), so stored logits follow the epoch.
    Without `compute_metrics`, evaluation reports top-1 (through `evaluate`), top-5 and, when a teacher
    signal is available, the student's agreement with the teacher. `compute_loss_func` is not taken:
    the loss is this trainer's job.
    """

    # compute_loss returns the batch mean rescaled by batch_size / num_items_in_batch, i.e. already
    # normalised over the whole accumulated step (see get_batch_samples).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: DistillationTrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        teacher_model: nn.Module | str | None = None,
    ):
        if args is None:
            args = DistillationTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, DistillationTrainingArguments):
            raise TypeError(
                f"args must be DistillationTrainingArguments, got {type(args).__name__}; its distillation fields "
                "(distillation_type, teacher, teacher_logits, ...) are what this trainer reads"
            )
        mode = args.distillation_type
        if teacher_model is not None and args.teacher is not None:
            given = teacher_model if isinstance(teacher_model, str) else type(teacher_model).__name__
            raise ValueError(
                f"teacher given twice: teacher_model={given!r} and args.teacher={args.teacher!r}; pass one"
            )
        teacher_model = teacher_model if teacher_model is not None else args.teacher
        if teacher_model is not None and mode not in ("hard", "soft"):
            raise ValueError(
                f"a live teacher is only used by distillation_type 'hard' or 'soft', got {mode!r} "
                "(stored runs replay the teacher's saved outputs instead)"
            )
        if mode in ("hard", "soft") and teacher_model is None and args.teacher_logits is None:
            raise ValueError(
                f"distillation_type={mode!r} needs a teacher: teacher_model / --teacher (a live model) or "
                "--teacher_logits (a stored-logit store)"
            )
        self._user_data_collator = data_collator
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics if compute_metrics is not None else compute_classification_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # We call the model without labels and compute the loss here, so the model never takes
        # num_items_in_batch; get_batch_samples counts samples for the accumulation scaling instead.
        self.model_accepts_loss_kwargs = False
        self._check_student(train_dataset)
        self.teacher = None
        if teacher_model is not None:
            self.teacher = self._prepare_teacher(teacher_model, train_dataset, processing_class)

    # ---- set-up checks -------------------------------------------------------------------------

    def _check_student(self, train_dataset: Any) -> None:
        student = self.accelerator.unwrap_model(self.model)
        num_labels = _num_labels(student)
        store = getattr(train_dataset, "store", None)
        if store is not None and num_labels is not None:
            from ..data import check_student_compatible

            check_student_compatible(store, num_labels)
        if self.args.layer_lr_decay < 1.0 and not (
            hasattr(student, "get_num_layers_for_lr_decay") and hasattr(student, "get_layer_id_for_lr_decay")
        ):
            raise ValueError(
                f"layer_lr_decay={self.args.layer_lr_decay} needs a model with get_num_layers_for_lr_decay() and "
                f"get_layer_id_for_lr_decay(name); {type(student).__name__} has neither (use layer_lr_decay=1)"
            )
        if self.args.freeze_batchnorm and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()
        ):
            logger.warning("freeze_batchnorm=True but %s has no BatchNorm layer", type(student).__name__)

    def _prepare_teacher(self, teacher: nn.Module | str, train_dataset: Any, processing_class: Any) -> nn.Module:
        if isinstance(teacher, str):
            from ..data import load_teacher

            mean, std = _student_normalisation(train_dataset, processing_class)
            teacher = load_teacher(teacher, weights=self.args.teacher_weights, input_mean=mean, input_std=std)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher_model must be an nn.Module or a spec string, got {type(teacher).__name__}")
        student_labels = _num_labels(self.accelerator.unwrap_model(self.model))
        teacher_labels = _num_labels(teacher)
        if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
            raise ValueError(
                f"the teacher predicts {teacher_labels} classes but the student's head has "
                f"num_labels={student_labels}; DeiT's losses compare them class by class"
            )
        teacher.requires_grad_(False)
        teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        teacher.eval()
        return teacher

    # ---- data ------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        # Trainer keeps only the model's forward arguments; our targets must survive that pruning,
        # for datasets.Dataset columns and torch-dataset dict items alike, without touching args.
        super()._set_signature_columns_if_needed()
        self._signature_columns += [key for key in TARGET_KEYS if key not in self._signature_columns]

    def _get_dataloader(
        self, dataset, description, batch_size, sampler_fn=None, is_training=False, dataloader_key=None
    ):
        # A dataset that knows how to batch itself (e.g. mixed and unmixed labels) brings a collate_fn;
        # Trainer only looks at self.data_collator, so swap it in for this loader.
        dataset_collate = getattr(dataset, "collate_fn", None)
        if self._user_data_collator is not None or not callable(dataset_collate):
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        default_collator = self.data_collator
        self.data_collator = dataset_collate
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = default_collator

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        provided = getattr(train_dataset, "train_sampler", None)
        # The dataset's sampler replaces the default shuffle only; an explicit strategy is the user's call.
        if provided is None or self.args.train_sampling_strategy != "random":
            return super()._get_train_sampler(train_dataset)
        if isinstance(provided, torch.utils.data.Sampler):
            return provided
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return provided(seed=seed)

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # accelerate's DataLoaderShard.set_epoch reaches the dataset only when the sampler has no set_epoch,
        # which a seedable random sampler has; the stored logits must follow the epoch regardless.
        set_epoch = getattr(self.train_dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        num_samples = sum(_batch_size(batch) for batch in batch_samples)
        return batch_samples, (num_samples or None)

    # ---- optimizer -------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Parent's choice (no norms, no biases) minus every 1-d parameter and `model.no_weight_decay()`
        (tokens, position embeddings, attention-bias tables)."""
        unwrapped = self.accelerator.unwrap_model(model)
        skip = set(unwrapped.no_weight_decay()) if hasattr(unwrapped, "no_weight_decay") else set()
        names = dict(model.named_parameters())
        unknown = sorted(skip - set(names))
        if unknown:
            logger.warning("no_weight_decay() names parameters the model does not have: %s", unknown[:5])
        parent = set(super().get_decay_parameter_names(model))
        return [name for name, param in names.items() if name in parent and param.ndim > 1 and name not in skip]

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.layer_lr_decay == 1.0:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = layer_decay_parameter_groups(
            self.accelerator.unwrap_model(opt_model),
            self.get_decay_parameter_names(opt_model),
            learning_rate=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            layer_lr_decay=self.args.layer_lr_decay,
        )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if special:
            raise ValueError(
                f"optim={self.args.optim!r} builds its own parameter groups ({sorted(special)}), which layer_lr_decay="
                f"{self.args.layer_lr_decay} cannot split; use an AdamW/SGD-style optimizer or layer_lr_decay=1"
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ---- loss --------------------------------------------------------------------------------------

    def _teacher_signal(self, model_inputs: dict[str, Any], batch: Mapping[str, Any], num_labels: int):
        if self.teacher is not None:
            with torch.inference_mode():
                teacher_logits = self.teacher(model_inputs["pixel_values"])
                teacher_logits = getattr(teacher_logits, "logits", teacher_logits)
                probs = torch.softmax(teacher_logits.float(), dim=-1)
            # Inference tensors cannot be saved for backward; a clone outside the mode is an ordinary tensor.
            probs = probs.clone()
            return TeacherSignal(probs=probs, hard_labels=probs.argmax(dim=-1))
        indices = batch.get("teacher_topk_indices")
        if indices is not None:
            values = batch.get("teacher_topk_values")
            probs = sparse_to_dense(values, indices, num_labels) if values is not None else None
            return TeacherSignal(probs=probs, hard_labels=teacher_hard_labels(indices))
        if batch.get("teacher_labels") is not None:
            return TeacherSignal(probs=None, hard_labels=batch["teacher_labels"].long())
        return None

    def _forward(self, model: nn.Module, batch: Mapping[str, Any], training: bool):
        """Run the student (and teacher) on one batch; returns (loss or None, outputs, teacher signal)."""
        model_inputs = {key: value for key, value in batch.items() if key not in NON_MODEL_KEYS}
        labels = batch.get("labels")
        if training and self.args.freeze_batchnorm:
            _freeze_batchnorm(model)
        outputs = model(**model_inputs)
        cls_logits, distillation_logits = student_heads(outputs)
        mode = self.args.distillation_type
        teacher = self._teacher_signal(model_inputs, batch, distillation_logits.shape[-1])
        if training:
            if mode in ("soft", "stored") and teacher is not None and teacher.probs is None:
                raise ValueError(
                    f"distillation_type={mode!r} needs teacher_topk_values in each batch, not only top-1 labels"
                )
            if mode in ("hard", "soft", "stored") and teacher is None:
                raise ValueError(
                    f"distillation_type={mode!r} needs teacher_topk_values / teacher_topk_indices in every batch "
                    f"(a StoredLogitsDataset) or a live teacher; the batch has keys {sorted(batch)}"
                )
        usable = (
            mode == "none"
            or (mode == "hard" and teacher is not None)
            or (mode in ("soft", "stored") and teacher is not None and teacher.probs is not None)
        )
        if usable and (labels is not None or mode == "stored"):
            loss = distillation_loss(
                mode,
                cls_logits,
                distillation_logits,
                labels,
                teacher,
                alpha=self.args.alpha,
                tau=self.args.tau,
                label_smoothing=self.args.label_smoothing_factor,
            )
        elif labels is not None:
            # Evaluation without the training target (e.g. a stored run scored on a labelled test split).
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
            loss = cross_entropy(logits, labels)
        elif training:
            raise ValueError(
                f"distillation_type={mode!r} needs 'labels' in every batch; the batch has keys {sorted(batch)}"
            )
        else:
            loss = None
        return loss, outputs, teacher

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs, _ = self._forward(model, inputs, training=model.training)
        if num_items_in_batch is not None:
            # Batch mean -> share of the accumulated step's mean, exact for uneven last batches.
            loss = loss * (_batch_size(inputs) / num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs, teacher = self._forward(model, inputs, training=False)
        if loss is not None:
            loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = (outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]).detach()
        labels = inputs.get("labels")
        if teacher is None:
            return loss, logits, labels
        if labels is None:
            labels = torch.full_like(teacher.hard_labels, IGNORE_INDEX)
        return loss, logits, (labels, teacher.hard_labels)

    # ---- saving ------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            from .cards import write_trainer_model_card

            output_dir = output_dir if output_dir is not None else self.args.output_dir
            # Trainer pickles the whole TrainingArguments into training_args.bin, which only an unsafe
            # torch.load reads and which nothing reads on resume: keep the same record as JSON instead,
            # so that a model folder holds safetensors and JSON only.
            pickled = os.path.join(output_dir, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)
            with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
                handle.write(self.args.to_json_string())
            write_trainer_model_card(self, output_dir)

    def create_model_card(
        self,
        language=None,
        license=None,
        tags=None,
        model_name=None,
        finetuned_from=None,
        tasks=None,
        dataset_tags=None,
        dataset=None,
        dataset_args=None,
        **kwargs,
    ):
        """Write README.md through `hf_tinyvit.hub.write_model_card` (called by `push_to_hub`), saying how
        the model was distilled; `dataset`, `tags` and `finetuned_from` go into the card's metadata."""
        if not self.is_world_process_zero():
            return
        from .cards import write_trainer_model_card

        write_trainer_model_card(
            self,
            self.args.output_dir,
            model_name=model_name,
            dataset=dataset,
            tags=tags,
            finetuned_from=finetuned_from,
            license=license,
        )


def _student_normalisation(train_dataset: Any, processing_class: Any) -> tuple[tuple, tuple]:
    """Mean and std the student's pixel_values were normalised with, so a loaded teacher can undo them."""
    recipe = getattr(train_dataset, "recipe", None)
    if recipe is not None and getattr(recipe, "mean", None) is not None:
        return tuple(recipe.mean), tuple(recipe.std)
    if processing_class is not None and getattr(processing_class, "image_mean", None) is not None:
        return tuple(processing_class.image_mean), tuple(processing_class.image_std)
    raise ValueError(
        "loading a teacher from a spec string needs the student's input normalisation: give a train_dataset with "
        "a .recipe (AugmentedDataset / StoredLogitsDataset) or a processing_class with image_mean / image_std"
    )
