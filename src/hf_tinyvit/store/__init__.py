"""The teacher-logit store: its format (`format`: sparse top-k code, schema, metadata, versions),
writing it (`writer`, one writer at a time: `lock`), reading it in place (`reader`) and checking it
(`verify`)."""

from .format import (
    FORMAT_VERSION,
    index_dtype,
    sparse_to_dense,
    teacher_hard_labels,
    topk_probabilities,
)
from .lock import StoreLockedError
from .reader import TeacherLogitStore, check_student_compatible
from .verify import VerifyReport, check_teacher_logits, verify_store
from .writer import save_teacher_logits

__all__ = [
    "FORMAT_VERSION",
    "StoreLockedError",
    "TeacherLogitStore",
    "VerifyReport",
    "check_student_compatible",
    "check_teacher_logits",
    "index_dtype",
    "save_teacher_logits",
    "sparse_to_dense",
    "teacher_hard_labels",
    "topk_probabilities",
    "verify_store",
]
