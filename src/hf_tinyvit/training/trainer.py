"""`DistillationTrainer`: a transformers `Trainer` for TinyViT's fast pretraining distillation from stored
sparse teacher logits, DeiT's hard and soft distillation from a live or stored teacher, and plain fine-tuning.

It extends `Trainer` through its public hooks (`compute_loss`, `prediction_step`, `get_batch_samples`,
`save_model`, the optimizer hooks, a data collator and a callback) and one private one,
`_get_train_sampler`, pinned by a test (see `PINNED_PRIVATE_HOOKS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from transformers import Trainer

from ..augment.views import DistillationDataset, IterableAugmentedDataset
from ..log import get_logger
from ..losses import (
    DistillationMode,
    TeacherTarget,
    distillation_loss,
    reconcile_setting,
    student_heads,
)
from ..store.format import sparse_to_dense, teacher_hard_labels
from .arguments import DistillationTrainingArguments
from .callbacks import FiniteTrainingGuard, ReplayEpochCallback, RunRecordCallback, check_resume
from .metrics import IGNORE_INDEX, compute_classification_metrics

__all__ = ["PINNED_PRIVATE_HOOKS", "DistillationTrainer", "layer_decay_parameter_groups"]

logger = get_logger(__name__)

# Private Trainer methods this trainer overrides; tests/test_trainer_core.py fails with a clear message
# when the installed transformers no longer has one, instead of training with the default silently.
# `_get_train_sampler`: the only way to hand Trainer's dataloader the dataset's own shuffle, which keeps
# Mixup/CutMix partners in one batch (each image decoded once) and depends on (seed, epoch) alone.
PINNED_PRIVATE_HOOKS = ("_get_train_sampler",)

# Batch keys that carry targets or bookkeeping rather than model inputs.
TEACHER_KEYS = ("teacher_topk_values", "teacher_topk_indices", "teacher_labels")
NON_MODEL_KEYS = ("labels", "label", "label_ids", *TEACHER_KEYS, "sample_id", "image_digest")
# Config fields of a two-headed student (DeiTDistilledConfig) that the training arguments also set.
_SHARED_SETTINGS = (
    ("distillation_type", "distillation_type"),
    ("distillation_alpha", "alpha"),
    ("distillation_tau", "tau"),
    ("label_smoothing", "label_smoothing_factor"),
)


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


def heads_logits(outputs: Any) -> torch.Tensor:
    """The logits inference uses (a DeiT's late fusion of its two heads)."""
    return outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]


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


def _id2label(module: Any) -> Mapping | None:
    """The class names a model carries: a `TeacherModel`'s, or its config's."""
    names = getattr(module, "id2label", None)
    return names if names is not None else getattr(getattr(module, "config", None), "id2label", None)


def _name(teacher: nn.Module) -> str:
    return str(getattr(teacher, "name", None) or getattr(getattr(teacher, "config", None), "_name_or_path", "")
               or type(teacher).__name__)  # fmt: skip


def _check_labels(teacher_labels: Mapping | None, student: nn.Module, teacher: str) -> None:
    """Refuse a teacher (live or stored) whose classes differ from the student's by name or order
    (`teachers.check_same_labels`): the teacher's targets would train the student's heads on other classes."""
    from ..teachers import check_same_labels, numbered_only

    student_labels = _id2label(student)
    checked = check_same_labels(
        teacher_labels, student_labels, teacher=teacher, student="the student (config.id2label)",
        fix="Build the student with the teacher's id2label, or fine-tune the teacher on the student's classes "
        "first (hf-tinyvit distill --model_name_or_path <teacher> --distillation_type none --dataset_name <the "
        "student's dataset>); hf-tinyvit distill names the student's classes after the dataset's.",
    )  # fmt: skip
    if not checked and teacher_labels and student_labels and numbered_only(teacher_labels) != numbered_only(student_labels):
        logger.warning("%s or the student names its classes by number only: their order cannot be checked", teacher)


class DistillationTrainer(Trainer):
    """`Trainer` whose `compute_loss` wires a student to its targets for `args.distillation_type`, through
    the one loss router (`hf_tinyvit.losses.distillation_loss`).

    `teacher_model` is a module or a spec string (model folder, Hub id, `timm:<name>`) loaded with
    `hf_tinyvit.load_teacher`; when omitted, `args.teacher` is used. The teacher is prepared by the
    trainer's accelerator in evaluation mode, runs under `torch.inference_mode` and never enters the
    optimizer; its logits are checked per batch. A `DistillationDataset` (`AugmentedDataset`,
    `StoredLogitsDataset`) brings its collate function, its shuffle and its epoch, which a callback
    sets at every epoch (resumed ones included), so stored logits follow the epoch. A two-headed
    student's config settings (`distillation_type`, alpha, tau, label smoothing) must agree with the
    arguments; unset ones take the arguments' values, so the saved config says how it was trained.
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
        mode = DistillationMode.parse(args.distillation_type)
        if teacher_model is not None and args.teacher is not None:
            given = teacher_model if isinstance(teacher_model, str) else type(teacher_model).__name__
            raise ValueError(
                f"teacher given twice: teacher_model={given!r} and args.teacher={args.teacher!r}; pass one"
            )
        teacher_model = teacher_model if teacher_model is not None else args.teacher
        if teacher_model is not None and mode not in (DistillationMode.HARD, DistillationMode.SOFT):
            raise ValueError(
                f"a live teacher is only used by distillation_type 'hard' or 'soft', got {mode.value!r} "
                "(stored runs replay the teacher's saved outputs instead)"
            )
        store = _stored_targets_source(args, train_dataset)
        if mode in (DistillationMode.HARD, DistillationMode.SOFT) and teacher_model is None and store is None:
            raise ValueError(
                f"distillation_type={mode.value!r} needs a teacher: teacher_model / --teacher (a live model) or "
                "stored logits (train_dataset=StoredLogitsDataset(dataset, store), or --teacher_logits)"
            )
        if mode is DistillationMode.STORED and store is None:
            raise ValueError(
                "distillation_type='stored' needs stored logits: pass train_dataset=StoredLogitsDataset(dataset, "
                "TeacherLogitStore.open(path)) (or --teacher_logits with `hf-tinyvit distill`)"
            )
        _check_train_dataset(mode, train_dataset, live_teacher=teacher_model is not None, collator=data_collator)
        if data_collator is None and isinstance(train_dataset, DistillationDataset):
            # Mixed (distribution) and unmixed (index) labels batch together only through the dataset's collate.
            data_collator = train_dataset.collate_fn
        callbacks = list(callbacks or [])
        if isinstance(train_dataset, DistillationDataset):
            callbacks.append(ReplayEpochCallback(train_dataset))
        # a NaN/inf loss or gradient stops the run at its step; checkpoints record what they were trained on
        self._finite_guard = FiniteTrainingGuard(train_dataset)
        self._run_record = RunRecordCallback(train_dataset)
        callbacks += [self._finite_guard, self._run_record]
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
        self.mode = mode
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
        store = train_dataset.store if isinstance(train_dataset, DistillationDataset) else None
        if store is not None and num_labels is not None:
            from ..store.reader import check_student_compatible

            check_student_compatible(store, num_labels)
            _check_labels(store.metadata.get("id2label"), student, f"the store {getattr(store, 'source', store)!r}")
        self._reconcile_config(getattr(student, "config", None))
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

    def _reconcile_config(self, config: Any) -> None:
        """A student config that carries distillation settings (DeiT-distilled) must agree with the
        arguments; the values it leaves unset are written in, so a saved config says how it was trained.
        Plain fine-tuning (`none`) leaves a distilled model's settings as they are."""
        if config is None or self.mode is DistillationMode.NONE:
            return
        for config_name, args_name in _SHARED_SETTINGS:
            if not hasattr(config, config_name):
                continue
            value = reconcile_setting(config_name, getattr(config, config_name), args_name, getattr(self.args, args_name))
            if getattr(config, config_name) is None:
                logger.info("setting the student's config.%s = %r from the training arguments", config_name, value)
                setattr(config, config_name, value)

    def _prepare_teacher(self, teacher: nn.Module | str, train_dataset: Any, processing_class: Any) -> nn.Module:
        if isinstance(teacher, str):
            from ..teachers import load_teacher

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
        _check_labels(_id2label(teacher), self.accelerator.unwrap_model(self.model), f"the teacher {_name(teacher)!r}")
        teacher.requires_grad_(False)
        teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        teacher.eval()
        return teacher

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, refusing first to resume from a checkpoint trained on another store, recipe or
        dataset (see `callbacks.check_resume`)."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)  # None: the parent says there is none
        if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
            check_resume(str(checkpoint), self._run_record.record(self.args))
        # remembered for get_resumed_dataloader, which Trainer hands only the number of batches to skip
        self._resumed_checkpoint = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else None
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    # ---- data ------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        # Pinned private hook (see PINNED_PRIVATE_HOOKS): the dataset's own shuffle replaces the default
        # random sampler only; an explicit train_sampling_strategy is the user's call.
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(train_dataset, DistillationDataset) or self.args.train_sampling_strategy != "random":
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return train_dataset.train_sampler(seed=seed)

    # -- streamed datasets: a stateful DataLoader per rank, its position saved in every checkpoint ---------

    def get_train_dataloader(self):
        dataset = self.train_dataset
        if not isinstance(dataset, IterableAugmentedDataset):
            return super().get_train_dataloader()
        from accelerate.data_loader import DataLoaderShard

        # The dataset splits itself among ranks and workers (split_dataset_by_node, equal items per node):
        # accelerate's own sharding of an iterable (every rank reading the whole stream, or rank 0
        # dispatching it) must stay out, so the loader is built here rather than by accelerator.prepare.
        dataset.configure_loader(self.args.train_batch_size, self.args.dataloader_num_workers)
        workers = self.args.dataloader_num_workers
        return DataLoaderShard(
            dataset,
            device=self.args.device,
            use_stateful_dataloader=True,
            batch_size=self.args.train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers if workers else False,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
        )

    def get_resumed_dataloader(self, dataloader, num_batches):
        """A streamed run resumes mid-epoch from the DataLoader state its checkpoint holds; others skip batches."""
        if not isinstance(self.train_dataset, IterableAugmentedDataset):
            return super().get_resumed_dataloader(dataloader, num_batches)
        import json

        from .callbacks import STREAM_STATE_NAME

        path = os.path.join(
            getattr(self, "_resumed_checkpoint", None) or "", STREAM_STATE_NAME.format(rank=self.args.process_index)
        )
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resuming a streamed run mid-epoch needs {path}, the DataLoader position saved with the checkpoint "
                f"({num_batches} batches into the epoch); it is missing"
            )
        with open(path) as handle:
            dataloader.load_state_dict(json.load(handle))
        return dataloader

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

    def _teacher_target(self, pixel_values: torch.Tensor, batch: Mapping[str, Any], num_labels: int):
        """The teacher's target for a batch: the live teacher's checked logits, or the stored top-k
        rebuilt into a distribution (or only stored top-1 labels); None without a teacher signal."""
        if self.teacher is not None:
            from ..teachers import checked_teacher_logits

            sample_ids = batch.get("sample_id")
            if sample_ids is None:
                sample_ids = torch.arange(pixel_values.shape[0])
            with torch.inference_mode():
                epoch = int(self.state.epoch or 0)
                logits = checked_teacher_logits(self.teacher, pixel_values, sample_ids, epoch, num_labels)
                probs = torch.softmax(logits, dim=-1)
            # Inference tensors cannot be saved for backward; a clone outside the mode is an ordinary tensor.
            return TeacherTarget(probs=probs.clone())
        indices = batch.get("teacher_topk_indices")
        if indices is not None:
            values = batch.get("teacher_topk_values")
            probs = sparse_to_dense(values, indices, num_labels) if values is not None else None
            return TeacherTarget(probs=probs, hard_labels=teacher_hard_labels(indices))
        if batch.get("teacher_labels") is not None:
            return TeacherTarget(hard_labels=batch["teacher_labels"].long())
        return None

    def _forward(self, model: nn.Module, batch: Mapping[str, Any], training: bool):
        """Run the student (and teacher) on one batch; returns (loss or None, outputs, teacher target)."""
        model_inputs = {key: value for key, value in batch.items() if key not in NON_MODEL_KEYS}
        labels = batch.get("labels")
        if training and self.args.freeze_batchnorm:
            _freeze_batchnorm(model)
        outputs = model(**model_inputs)
        heads = student_heads(outputs)
        teacher = self._teacher_target(model_inputs["pixel_values"], batch, heads.distillation.shape[-1])
        problem_type = getattr(getattr(self.accelerator.unwrap_model(model), "config", None), "problem_type", None)
        settings = {"alpha": self.args.alpha, "tau": self.args.tau, "problem_type": problem_type}
        if training:  # the router refuses a batch that lacks what the mode needs, naming it
            return (
                distillation_loss(
                    self.mode, heads, labels, teacher, label_smoothing=self.args.label_smoothing_factor, **settings
                ).loss,
                outputs,
                teacher,
            )
        has_target = teacher is not None and (self.mode is DistillationMode.HARD or teacher.probs is not None)
        if (not self.mode.needs_teacher or has_target) and (labels is not None or not self.mode.needs_labels):
            loss = distillation_loss(
                self.mode, heads, labels, teacher, label_smoothing=self.args.label_smoothing_factor, **settings
            ).loss
        elif labels is not None:
            # Evaluation without the training target (e.g. a stored run scored on a labelled test split):
            # the plain label loss of the fused logits.
            loss = distillation_loss(DistillationMode.NONE, student_heads(heads_logits(outputs)), labels, **settings).loss
        else:
            loss = None
        return loss, outputs, teacher

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs, _ = self._forward(model, inputs, training=model.training)
        if model.training:
            self._finite_guard.check_loss(loss, inputs)
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
        logits = heads_logits(outputs).detach()
        labels = inputs.get("labels")
        if teacher is None:
            return loss, logits, labels
        if labels is None:
            labels = torch.full_like(teacher.hard_labels, IGNORE_INDEX)
        return loss, logits, (labels, teacher.hard_labels)

    # ---- saving ------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, then the folder is made Hub-ready: the pickled `training_args.bin` is
        replaced by `training_args.json` and a model card says how the model was distilled."""
        loader = getattr(self.callback_handler, "train_dataloader", None)
        if _internal_call and output_dir is not None and isinstance(self.train_dataset, IterableAugmentedDataset):
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            from .callbacks import write_stream_state

            if os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR) and loader is not None:
                # a checkpoint: every rank keeps its stream position there, before Trainer writes
                # trainer_state.json (the file that marks a checkpoint complete)
                write_stream_state(loader, output_dir, self.args.process_index)
        super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            from .cards import write_trainer_model_card

            # Trainer pickles the whole TrainingArguments into training_args.bin, which only an unsafe
            # torch.load reads and which nothing reads on resume: keep the same record as JSON instead,
            # so that a model folder holds safetensors and JSON only.
            pickled = os.path.join(output_dir, "training_args.bin")
            if os.path.exists(pickled):
                os.remove(pickled)
            with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
                handle.write(self.args.to_json_string())
            write_trainer_model_card(self, output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

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
            eval_split=kwargs.get("eval_split"),
        )


def _stored_targets_source(args: DistillationTrainingArguments, train_dataset: Any):
    """The store the run reads its teacher from: the train dataset's (a StoredLogitsDataset brings its own),
    else `args.teacher_logits`. Both given must be the same store: a second, different one is refused."""
    store = getattr(train_dataset, "store", None) if isinstance(train_dataset, DistillationDataset) else None
    if store is None or args.teacher_logits is None:
        return store if store is not None else args.teacher_logits
    given = str(args.teacher_logits)
    if given in (getattr(store, "source", None), store.path) or (
        os.path.isdir(given) and os.path.realpath(given) == os.path.realpath(store.path)
    ):
        return store
    if os.path.isdir(given):
        from ..store.format import identity_mismatches, read_metadata

        mismatches = identity_mismatches(store.metadata, read_metadata(given))
        if not mismatches:  # a copy of the same store
            return store
        detail = "; ".join(mismatches)
    else:
        detail = "the dataset's store was not opened from that Hub id"
    raise ValueError(
        f"two different stores: teacher_logits={given!r} but train_dataset replays {store!r} ({detail}); the "
        "trainer reads the train dataset's store, so leave teacher_logits unset or point it at that same store"
    )


def _check_train_dataset(mode: DistillationMode, train_dataset: Any, *, live_teacher: bool, collator) -> None:
    """Refuse, before any work, a train dataset that cannot give the model `pixel_values` or the mode its
    targets, saying which type to pass and how to build it."""
    reads_store = mode.needs_teacher and not live_teacher
    if train_dataset is None or isinstance(train_dataset, DistillationDataset):
        if isinstance(train_dataset, DistillationDataset) and getattr(train_dataset, "store", None) is None:
            if reads_store:
                raise TypeError(
                    f"distillation_type={mode.value!r} without a live teacher reads stored targets, but train_dataset "
                    f"is a {type(train_dataset).__name__} with no store: pass StoredLogitsDataset(dataset, "
                    "TeacherLogitStore.open(path)) built from the same image dataset"
                )
        return
    import datasets

    if not isinstance(train_dataset, datasets.Dataset) or collator is not None or train_dataset.format["type"]:
        return  # a transform, a collator or a custom dataset may produce what the model needs
    columns = set(train_dataset.column_names)
    targets = {"teacher_topk_indices", "teacher_labels"} & columns
    if "pixel_values" not in columns:
        raise TypeError(
            f"train_dataset is a datasets.Dataset with columns {sorted(columns)} and no 'pixel_values': "
            + (
                "replay the stored views with StoredLogitsDataset(dataset, TeacherLogitStore.open(path))"
                if reads_store
                else "render its images with AugmentedDataset(dataset, "
                "AugmentationRecipe.tinyvit_pretrain(image_size), seed=0) (or StoredLogitsDataset(dataset, store) to "
                "replay stored teacher logits)"
            )
            + " (from hf_tinyvit), or give it a transform that returns pixel_values"
        )
    if reads_store and not targets:
        raise TypeError(
            f"distillation_type={mode.value!r} without a live teacher needs stored teacher targets, but train_dataset "
            f"is a datasets.Dataset with columns {sorted(columns)}: pass StoredLogitsDataset(dataset, "
            "TeacherLogitStore.open(path)), which replays each view with its stored top-k"
        )


def _student_normalisation(train_dataset: Any, processing_class: Any) -> tuple[tuple, tuple]:
    """Mean and std the student's pixel_values were normalised with, so a loaded teacher can undo them."""
    if isinstance(train_dataset, DistillationDataset):
        return tuple(train_dataset.recipe.mean), tuple(train_dataset.recipe.std)
    if processing_class is not None and getattr(processing_class, "image_mean", None) is not None:
        return tuple(processing_class.image_mean), tuple(processing_class.image_std)
    raise ValueError(
        "loading a teacher from a spec string needs the student's input normalisation: give a train_dataset with "
        "a recipe (AugmentedDataset / StoredLogitsDataset) or a processing_class with image_mean / image_std"
    )
