"""hf_tinyvit: TinyViT and DeiT's distillation token as transformers models, and TinyViT's fast
pretraining distillation from stored teacher logits.

Importing the package registers its model families with transformers' Auto classes. The model classes
load with it; everything else (augmentation, the store, datasets, teachers, the trainer) is imported
on first use, so `import hf_tinyvit` pulls in neither `datasets`, `accelerate` nor timm.
"""

import importlib

from .models.deit_distilled import (
    DEIT_PRESETS,
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    DeiTDistilledModel,
    DeiTDistilledPreTrainedModel,
    deit_image_processor,
)
from .models.tinyvit import (
    TINYVIT_PRESETS,
    TinyViTBackbone,
    TinyViTConfig,
    TinyViTForImageClassification,
    TinyViTModel,
    TinyViTPreTrainedModel,
    tinyvit_image_processor,
)

__version__ = "0.2.0"

# public name -> the module that defines it, imported when the name is first used
_LAZY = {
    # the one loss router
    "DistillationMode": ".losses",
    "TeacherTarget": ".losses",
    "distillation_loss": ".losses",
    "label_loss": ".losses",
    # augmentation
    "AugmentationParams": ".augment",
    "AugmentationRecipe": ".augment",
    "MixParams": ".augment",
    "apply_augmentation": ".augment",
    "augmentation_seed": ".augment",
    "decode_augmentation": ".augment",
    "sample_augmentation": ".augment",
    # image datasets
    "corrupt_labels": ".datasets",
    "dataset_fingerprint": ".datasets",
    "digits_dataset": ".datasets",
    "image_to_tensor": ".datasets",
    "load_image_dataset": ".datasets",
    "write_imagefolder": ".datasets",
    # rendered views, and views with their stored targets
    "AugmentedDataset": ".augment.views",
    "IterableAugmentedDataset": ".augment.views",
    "IterableStoredLogitsDataset": ".replay",
    "DistillationDataset": ".augment.views",
    "PairedSampler": ".augment.views",
    "StoredLogitsDataset": ".replay",
    "ViewCache": ".augment.views",
    "collate_views": ".augment.views",
    # the teacher-logit store
    "TeacherLogitStore": ".store",
    "check_student_compatible": ".store",
    "check_teacher_logits": ".store",
    "save_teacher_logits": ".store",
    "sparse_to_dense": ".store",
    "topk_probabilities": ".store",
    # teachers
    "TeacherModel": ".teachers",
    "check_same_labels": ".teachers",
    "efficientnet_lite0_folder": ".teachers",
    "efficientnet_lite0_weights": ".teachers",
    "load_teacher": ".teachers",
    "state_dict_hash": ".teachers",
    "timm_teacher_folder": ".teachers",
    # training
    "DistillationTrainer": ".training",
    "DistillationTrainingArguments": ".training",
    # checkpoints and the Hub
    "load_state_dict": ".hub",
    "write_model_card": ".hub",
    # what the stored teacher makes possible: student search, hard-sample audit, class similarity
    "ClassSimilarity": ".tools",
    "LabelAudit": ".tools",
    "ProxySettings": ".tools",
    "SearchSpace": ".tools",
    "StudentSearch": ".tools",
    "audit_labels": ".tools",
    "class_similarity": ".tools",
    "measure_student": ".tools",
    "pareto_front": ".tools",
    "plot_class_similarity": ".tools",
    "plot_precision_recall": ".tools",
    "plot_search": ".tools",
    "plot_suspects": ".tools",
    "precision_recall_curve": ".tools",
    "search_students": ".tools",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEIT_PRESETS",
    "TINYVIT_PRESETS",
    "DeiTDistilledConfig",
    "DeiTDistilledForImageClassification",
    "DeiTDistilledModel",
    "DeiTDistilledPreTrainedModel",
    "TinyViTBackbone",
    "TinyViTConfig",
    "TinyViTForImageClassification",
    "TinyViTModel",
    "TinyViTPreTrainedModel",
    "deit_image_processor",
    "tinyvit_image_processor",
    *sorted(_LAZY),
]
