"""Checkpoint and Hub helpers shared by the converters, the trainer and the CLI: safe state-dict loading
and unwrapping, strict key checks, renaming by order between ports, label maps, public names of models and
stores, and model cards the Hub reads."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = [
    "check_state_dict",
    "framework_versions",
    "imagenet_id2label",
    "load_state_dict",
    "map_state_dict_by_order",
    "public_name",
    "read_id2label",
    "unwrap_state_dict",
    "write_model_card",
]

_WRAPPER_KEYS = ("model", "state_dict", "model_ema")
# BatchNorm's step counter: a 0-d buffer some exporters drop, and one that would align with any other 0-d tensor.
_BATCH_COUNTER = "num_batches_tracked"
# How cards name the metrics DistillationTrainer's evaluation reports.
_METRIC_NAMES = {
    "accuracy": "Top-1 accuracy",
    "top5_accuracy": "Top-5 accuracy",
    "teacher_agreement": "Agreement with the teacher",
}


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without executing pickled code.

    `.safetensors` files are read directly; anything else goes through `torch.load(weights_only=True)`,
    which refuses pickled objects. The usual training wrappers are unwrapped: a `model`, `state_dict` or
    `model_ema` entry (nested ones too), and a `module.` prefix on every key (DistributedDataParallel).
    Anything else fails naming the top-level keys found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others; name the file and the rule
        raise ValueError(
            f"could not load {str(path)!r} with torch.load(weights_only=True): only plain tensor state dicts are "
            f"accepted, never pickled objects ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint object: `model` / `state_dict` / `model_ema` wrappers taken in that order
    (the trained weights before their moving average), a `module.` prefix shared by every key removed."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} holds a {type(obj).__name__}, not a state dict of tensors")
    while not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            found = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:12])
            raise ValueError(
                f"{what} is not a state dict of tensors and has none of the wrappers {list(_WRAPPER_KEYS)}; "
                f"its top-level keys are: {found}{' ...' if len(obj) > 12 else ''}"
            )
        obj = obj[wrapper]
    if not obj:
        raise ValueError(f"{what} holds no tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def check_state_dict(
    expected: Mapping[str, torch.Tensor | torch.Size | Sequence[int]],
    got: Mapping[str, torch.Tensor],
    what: str = "checkpoint",
) -> None:
    """Raise one ValueError that lists every missing, unexpected and mis-shaped tensor.

    A partial load silently leaves random weights behind; conversion must fail loudly instead.
    """

    def shape(value) -> tuple[int, ...]:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(
        f"{k}: expected {shape(expected[k])}, got {shape(got[k])}"
        for k in set(expected) & set(got)
        if shape(expected[k]) != shape(got[k])
    )
    if missing or unexpected or misshaped:
        parts = [f"{what} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"  {len(items)} {title}: " + ", ".join(items))
        raise ValueError("\n".join(parts))


def map_state_dict_by_order(
    target: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    what: str = "checkpoint",
    *,
    check_leaf_names: bool = True,
) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s keys by position: the i-th tensor becomes the i-th key.

    For ports of one architecture whose modules are named differently but registered in the same
    order (e.g. the `efficientnet_pytorch` layout -> timm). BatchNorm `num_batches_tracked`
    counters are left out of the alignment on both sides, since some exporters drop them, and
    the target's own counters are kept. The order assumption is then checked, not trusted: the
    counts must agree, every shape must match and, with `check_leaf_names`, so must each key's
    last component (`weight`, `bias`, `running_mean`, ...). One ValueError lists the mismatches.
    """

    def aligned(state: Mapping[str, torch.Tensor]) -> list[str]:
        return [k for k in state if k.rsplit(".", 1)[-1] != _BATCH_COUNTER]

    target_keys, source_keys = aligned(target), aligned(source)
    problems = []
    if len(target_keys) != len(source_keys):
        counts = f"{len(source_keys)} tensors against the model's {len(target_keys)}"
        problems.append(f"{counts} ({_BATCH_COUNTER} not counted)")
    for i, (t_key, s_key) in enumerate(zip(target_keys, source_keys)):
        t_shape, s_shape = tuple(target[t_key].shape), tuple(source[s_key].shape)
        leaf_differs = check_leaf_names and t_key.rsplit(".", 1)[-1] != s_key.rsplit(".", 1)[-1]
        if t_shape != s_shape or leaf_differs:
            problems.append(f"#{i} {s_key} {s_shape} -> {t_key} {t_shape}")
    if problems:
        shown, hidden = problems[:12], len(problems) - 12
        raise ValueError(
            f"{what} cannot be mapped onto the model by order:\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {hidden} more" if hidden > 0 else "")
        )
    mapped = {t_key: source[s_key] for t_key, s_key in zip(target_keys, source_keys)}
    mapped.update({k: v for k, v in target.items() if k not in mapped})  # the BatchNorm counters
    return {k: mapped[k] for k in target}  # in the target's order


def imagenet_id2label(num_classes: int) -> dict[int, str]:
    """Class names of ImageNet-1k (1000) or ImageNet-21k (21841), from the label files timm ships."""
    subsets = {1000: "imagenet-1k", 21841: "imagenet-22k"}
    if num_classes not in subsets:
        raise ValueError(f"num_classes={num_classes} has no ImageNet label map; expected one of {sorted(subsets)}")
    try:
        from timm.data import ImageNetInfo
    except ImportError as err:
        raise ImportError("ImageNet label names come from timm: pip install 'hf_tinyvit[conversion]'") from err
    info = ImageNetInfo(subsets[num_classes])
    if info.num_classes() != num_classes:
        raise ValueError(f"timm's {subsets[num_classes]} info has {info.num_classes()} classes, not {num_classes}")
    return {i: info.index_to_description(i) for i in range(num_classes)}


def read_id2label(path: str | os.PathLike, num_classes: int | None = None) -> dict[int, str]:
    """Class names from a file: JSON (`{"0": "cat", ...}` or `["cat", ...]`) or text with one name per line.

    With `num_classes`, the file must name exactly that many classes, numbered 0..num_classes-1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            loaded = json.loads(text)
        except ValueError as err:
            raise ValueError(f"label file {str(path)!r} is not valid JSON ({err})") from err
        if isinstance(loaded, list):
            loaded = dict(enumerate(loaded))
        if not isinstance(loaded, dict) or not all(str(k).isdigit() and isinstance(v, str) for k, v in loaded.items()):
            raise ValueError(
                f"label file {str(path)!r} must hold a list of names or an object mapping class numbers to names"
            )
        id2label = {int(k): v for k, v in loaded.items()}
    else:
        id2label = dict(enumerate(line.strip() for line in text.splitlines() if line.strip()))
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"label file {str(path)!r} must number its classes 0..{len(id2label) - 1} without gaps")
    if num_classes is not None and len(id2label) != num_classes:
        raise ValueError(
            f"label file {str(path)!r} names {len(id2label)} classes but the checkpoint's head has {num_classes}"
        )
    return id2label


def default_id2label(num_classes: int) -> dict[int, str] | None:
    """ImageNet-1k / -21k names for 1,000 / 21,841 classes; None (transformers' LABEL_i) for any other head."""
    return imagenet_id2label(num_classes) if num_classes in (1000, 21841) else None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def public_name(spec: str | os.PathLike | None) -> str | None:
    """How a model card or dataset card names a teacher, a store or a dataset: a Hub id or a `timm:` name as
    it is, anything on the local disk (or shaped like a path) by its last component only, never by its path.

    A name that exists on this machine is a local path even when it looks like a Hub id (`outputs/teacher`).
    """
    if spec is None or not str(spec):
        return None
    spec = str(spec)
    if spec.startswith("timm:"):
        return spec
    if spec.startswith("imagefolder:"):
        spec = spec.split(":", 1)[1]
    if os.path.exists(spec) or not _HUB_ID.match(spec) or spec.startswith((".", "~")):
        return Path(spec.rstrip("/\\")).name or spec
    return spec


def hub_id(spec: str | os.PathLike | None) -> str | None:
    """`spec` when it names a Hub repository (see `public_name`), else None."""
    name = public_name(spec)
    return name if name is not None and name == str(spec) and not name.startswith("timm:") else None


def framework_versions() -> dict[str, str]:
    """Versions of the libraries a model folder was written with, for its card."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    found = {"hf_tinyvit": __version__}  # the code running, whichever way it was installed
    for package in ("transformers", "torch", "datasets", "accelerate", "huggingface_hub", "timm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def is_remote_code_folder(folder: str | os.PathLike) -> bool:
    """Whether a saved folder carries modeling code that its config's `auto_map` points to."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    entries = (config.get("auto_map") or {}).values()
    return any((folder / f"{str(ref).split('--')[-1].split('.')[0]}.py").is_file() for ref in entries)


def how_to_use(model_id: str, custom_code: bool, head: str = "classification") -> str:
    """The card's "How to use" snippet, which runs as written with or without hf_tinyvit installed.

    `head`: "classification" (a pipeline), "model" (pooled features) or "backbone" (stage feature maps).
    """
    remote = ", trust_remote_code=True" if custom_code else ""
    if head == "classification":
        return (
            "```python\n"
            "from PIL import Image\n"
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{model_id}"{remote})\n'
            'image = Image.open("image.jpg").convert("RGB")\n'
            "print(classifier(image, top_k=3))\n"
            "```"
        )
    auto, show = {
        "model": ("AutoModel", "outputs.last_hidden_state.shape"),
        "backbone": ("AutoBackbone", "[tuple(m.shape) for m in outputs.feature_maps]"),
    }[head]
    return (
        "```python\n"
        "from PIL import Image\n"
        f"from transformers import AutoImageProcessor, {auto}\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{model_id}"{remote})\n'
        f'model = {auto}.from_pretrained("{model_id}"{remote}).eval()\n'
        'image = Image.open("image.jpg").convert("RGB")\n'
        'outputs = model(**processor(image, return_tensors="pt"))\n'
        f"print({show})\n"
        "```"
    )


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    model_id: str,
    base_model: str | None = None,
    datasets: Iterable[str] = (),
    tags: Iterable[str] = (),
    description: str = "",
    eval_results: Mapping[str, float] | None = None,
    eval_dataset: tuple[str, str] | None = None,
    eval_split: str | None = None,
    custom_code: bool | None = None,
    extra_sections: Iterable[tuple[str, str]] = (),
    license: str = "apache-2.0",
    head: str = "classification",
):
    """Write `README.md` in `output_dir` with Hub metadata that huggingface_hub parses back.

    `eval_results` maps metric names (e.g. `accuracy`) to values; they go into a `model-index` entry for
    `eval_dataset` = (dataset id or name, display name) and `eval_split`. `custom_code` (by default: whether
    the folder carries the modeling code its config points to) adds the `custom_code` tag and
    `trust_remote_code=True` to the "How to use" snippet. `base_model` and `datasets` keep Hub ids only: a
    local path never reaches the metadata. `head` ("classification", "model", "backbone") picks the pipeline
    tag and the snippet. Returns the `ModelCard`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if head not in ("classification", "model", "backbone"):
        raise ValueError(f"head={head!r}; accepted: 'classification', 'model', 'backbone'")
    pipeline_tag = "image-classification" if head == "classification" else "image-feature-extraction"
    if custom_code is None:
        custom_code = is_remote_code_folder(output_dir)
    datasets = [d for d in dict.fromkeys(datasets) if hub_id(d)]
    base_model = hub_id(base_model)
    results = None
    if eval_results:
        dataset_id, dataset_name = eval_dataset or ((datasets[0], datasets[0]) if datasets else ("custom", "custom"))
        results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                dataset_split=eval_split,
                metric_type=name,
                metric_name=_METRIC_NAMES.get(name, name),
                metric_value=float(value),
            )
            for name, value in eval_results.items()
        ]
    extra_tags = {"custom_code"} if custom_code else set()
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license,
        tags=sorted({"hf_tinyvit", "vision", pipeline_tag, *extra_tags, *tags}),
        datasets=datasets or None,
        base_model=base_model,
        model_name=model_id,
        eval_results=results,
    )
    sections = [f"# {model_id}", description.strip()]
    sections += ["## How to use", how_to_use(model_id, custom_code, head)]
    if custom_code:
        sections.append(
            "`trust_remote_code=True` runs the configuration and modeling code stored in this repository "
            "(`configuration_*.py`, `modeling_*.py`, `losses.py`), so hf_tinyvit need not be installed. With "
            "hf_tinyvit installed and imported, the Auto classes load the package's own classes without it."
        )
    if eval_results:
        split = f" ({eval_split} split)" if eval_split else ""
        rows = "\n".join(f"| {_METRIC_NAMES.get(n, n)} | {float(v):.4f} |" for n, v in eval_results.items())
        sections += [f"## Evaluation{split}", "| metric | value |\n|---|---|\n" + rows]
    for title, body in extra_sections:
        sections += [f"## {title}", body.strip()]
    versions = "\n".join(f"- {name} {number}" for name, number in framework_versions().items())
    sections += ["## Framework versions", versions]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    card = ModelCard(content)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    card.save(Path(output_dir) / "README.md")
    return card

