"""Teachers: a transformers folder/Hub id or a timm model with a weights file, wrapped so it takes the
student's normalised views and applies its own preprocessing, and the checked signal it gives."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment.recipe import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["TeacherModel", "checked_teacher_logits", "load_teacher", "state_dict_hash", "teacher_logits"]


def state_dict_hash(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A hash of a model's tensors (names, dtypes, shapes, bytes): equal weights, equal hash."""
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_logits(output: Any) -> torch.Tensor:
    """Logits from what a teacher returns: a tensor, a ModelOutput with `.logits`, or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a teacher output of type {type(output).__name__}")


def checked_teacher_logits(
    teacher, pixel_values: torch.Tensor, sample_ids: torch.Tensor, epoch: int, num_labels: int | None = None
) -> torch.Tensor:
    """Run `teacher` on a batch and return float32 logits `(batch, num_labels)`, refusing a wrong shape
    (another class count than `num_labels`, when given) or a NaN/inf row with the sample id and epoch
    that produced it: a wrong target must stop the run where it enters, not train a student (or fill a
    store) with it."""
    logits = teacher_logits(teacher(pixel_values)).float()
    expected = "num_labels" if num_labels is None else num_labels
    if (
        logits.dim() != 2
        or logits.shape[0] != pixel_values.shape[0]
        or (num_labels is not None and logits.shape[1] != num_labels)
    ):
        raise ValueError(
            f"the teacher returned logits of shape {tuple(logits.shape)}; expected ({pixel_values.shape[0]}, {expected})"
        )
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        bad = int(sample_ids[(~finite).nonzero()[0]].item())
        raise ValueError(
            f"the teacher's output for sample_id={bad} (epoch {epoch}) contains NaN or inf; refusing to use it"
        )
    return logits


class TeacherModel(nn.Module):
    """An eval-mode teacher taking views normalised with `input_mean/std`, at any size.

    The forward undoes the student's normalisation, resizes to the teacher's resolution when it
    differs and applies the teacher's own mean/std, so a teacher sees what its preprocessing
    would have given it for the same crop.
    """

    def __init__(
        self,
        model: nn.Module | Callable,
        *,
        name: str,
        weights_hash: str,
        num_labels: int,
        id2label: Mapping[int, str] | None = None,
        input_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        input_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        teacher_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        teacher_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        teacher_size: tuple[int, int] | None = None,
        interpolation: str = "bicubic",
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.weights_hash = weights_hash
        self.num_labels = int(num_labels)
        self.id2label = {int(k): v for k, v in (id2label or {i: str(i) for i in range(self.num_labels)}).items()}
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(
                f"teacher {name!r}: id2label names classes {sorted(self.id2label)[:5]}... ({len(self.id2label)} "
                f"entries); num_labels={self.num_labels} needs one name for each class 0..{self.num_labels - 1}"
            )
        self.teacher_size = None if teacher_size is None else tuple(int(s) for s in teacher_size)
        self.interpolation = interpolation
        self.same_normalisation = tuple(input_mean) == tuple(teacher_mean) and tuple(input_std) == tuple(teacher_std)
        for key, values in (
            ("input_mean", input_mean),
            ("input_std", input_std),
            ("teacher_mean", teacher_mean),
            ("teacher_std", teacher_std),
        ):
            self.register_buffer(key, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        resize = self.teacher_size is not None and tuple(pixel_values.shape[-2:]) != self.teacher_size
        if resize or not self.same_normalisation:
            pixels = pixel_values * self.input_std + self.input_mean
            if resize:
                pixels = F.interpolate(
                    pixels, size=self.teacher_size, mode=self.interpolation, antialias=self.interpolation != "nearest"
                )
            pixel_values = (pixels - self.teacher_mean) / self.teacher_std
        return teacher_logits(self.model(pixel_values)).float()


def _load_timm(name: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    import timm
    from timm.data import resolve_model_data_config

    from .hub import check_state_dict, imagenet_id2label, load_state_dict

    if weights is None:
        raise ValueError(
            f"teacher 'timm:{name}' needs a weights file (--teacher_weights): a random teacher teaches nothing"
        )
    model = timm.create_model(name, pretrained=False)
    state = load_state_dict(weights)
    classifier = model.pretrained_cfg.get("classifier", "head")
    head = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    if f"{head}.weight" in state and state[f"{head}.weight"].shape[0] != model.num_classes:
        model.reset_classifier(int(state[f"{head}.weight"].shape[0]))
    check_state_dict(model.state_dict(), state, what=f"timm:{name} weights {weights}")
    model.load_state_dict(state)
    config = resolve_model_data_config(model)
    return model, {
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "size": tuple(config["input_size"][-2:]),
        "interpolation": config.get("interpolation", "bicubic"),
        "num_labels": model.num_classes,
        "id2label": imagenet_id2label(model.num_classes) if model.num_classes in (1000, 21841) else None,
    }


def _load_transformers(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from . import models  # noqa: F401  (registers our model families with the Auto classes)

    model = AutoModelForImageClassification.from_pretrained(spec)
    mean, std, size = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError):
        processor = None
    if processor is not None:
        mean = tuple(getattr(processor, "image_mean", None) or mean)
        std = tuple(getattr(processor, "image_std", None) or std)
        dims = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        dims = dims or getattr(processor, "size", None) or {}
        dims = dict(dims) if not isinstance(dims, dict) else dims
        if "height" in dims and "width" in dims:
            size = (int(dims["height"]), int(dims["width"]))
        elif "shortest_edge" in dims:
            size = (int(dims["shortest_edge"]),) * 2
    if size is None and isinstance(getattr(model.config, "image_size", None), int):
        size = (model.config.image_size,) * 2
    return model, {
        "mean": mean,
        "std": std,
        "size": size,
        "interpolation": "bicubic",
        "num_labels": model.config.num_labels,
        "id2label": model.config.id2label,
    }


def load_teacher(
    spec: str,
    *,
    weights: str | None = None,
    input_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    input_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    device: str | torch.device | None = None,
) -> TeacherModel:
    """Load a teacher: a transformers model folder or Hub id, or "timm:<model_name>" + `weights`.

    `weights` is a safetensors file or a `.pth` state dict (read with weights_only=True) in
    timm's layout; its head size sets the teacher's class count. The returned module takes views
    normalised with `input_mean/std` and returns logits (batch, teacher num_labels).
    """
    if spec.startswith("timm:"):
        model, info = _load_timm(spec.split(":", 1)[1], weights)
    else:
        if weights is not None:
            raise ValueError(f"weights={weights!r} is only for 'timm:<name>' teachers; {spec!r} carries its own")
        model, info = _load_transformers(spec)
    teacher = TeacherModel(
        model.eval(),
        name=spec,
        weights_hash=state_dict_hash(model),
        num_labels=info["num_labels"],
        id2label=info["id2label"],
        input_mean=input_mean,
        input_std=input_std,
        teacher_mean=info["mean"],
        teacher_std=info["std"],
        teacher_size=info["size"],
        interpolation=info["interpolation"]
        if info["interpolation"] in ("bilinear", "bicubic", "nearest")
        else "bicubic",
    )
    if device is not None:
        teacher.to(device)
    return teacher
