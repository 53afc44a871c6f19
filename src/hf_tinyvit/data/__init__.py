"""Data for fast pretraining distillation: replayable augmentation, sparse teacher targets and the
stored-logit dataset."""

from .augment import (
    AugmentationParams,
    AugmentationRecipe,
    MixParams,
    RandAugmentOp,
    apply_augmentation,
    augmentation_seed,
    decode_augmentation,
    mix_partners,
    pairing_order,
    sample_augmentation,
    sample_mix,
)
from .images import dataset_fingerprint, digits_dataset, image_to_tensor, load_image_dataset
from .replay import AugmentedDataset, PairedSampler, StoredLogitsDataset, ViewCache, collate_views
from .saving import check_teacher_logits, save_teacher_logits
from .sparse import index_dtype, sparse_to_dense, teacher_hard_labels, topk_probabilities
from .store import TeacherLogitStore, check_student_compatible
from .teacher import TeacherModel, load_teacher, state_dict_hash

__all__ = [
    "AugmentationParams",
    "AugmentationRecipe",
    "AugmentedDataset",
    "MixParams",
    "PairedSampler",
    "RandAugmentOp",
    "StoredLogitsDataset",
    "TeacherLogitStore",
    "TeacherModel",
    "ViewCache",
    "apply_augmentation",
    "augmentation_seed",
    "check_student_compatible",
    "check_teacher_logits",
    "collate_views",
    "dataset_fingerprint",
    "decode_augmentation",
    "digits_dataset",
    "image_to_tensor",
    "index_dtype",
    "load_image_dataset",
    "load_teacher",
    "mix_partners",
    "pairing_order",
    "sample_augmentation",
    "sample_mix",
    "save_teacher_logits",
    "sparse_to_dense",
    "state_dict_hash",
    "teacher_hard_labels",
    "topk_probabilities",
]
