"""Checkpoint and Hub helpers shared by the converters and the trainer: safe state-dict loading,
strict key checks, renaming by order between ports, ImageNet label maps and model cards."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["load_state_dict", "check_state_dict", "map_state_dict_by_order", "imagenet_id2label", "write_model_card"]

_WRAPPER_KEYS = ("model", "state_dict", "model_ema")
# BatchNorm's step counter: a 0-d buffer some exporters drop, and one that would align with any other 0-d tensor.
_BATCH_COUNTER = "num_batches_tracked"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without executing pickled code.

    `.safetensors` files are read directly; anything else goes through `torch.load(weights_only=True)`,
    which refuses pickled objects. Training checkpoints that wrap the weights in a `model`,
    `state_dict` or `model_ema` entry are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others; name the file and the rule
        raise ValueError(
            f"could not load {str(path)!r} with torch.load(weights_only=True): only plain tensor state dicts are "
            f"accepted, never pickled objects ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{str(path)!r} has non-tensor entries {not_tensors[:5]}; expected a state dict of tensors")
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
    custom_code: bool = False,
    extra_sections: Iterable[tuple[str, str]] = (),
    license: str = "apache-2.0",
):
    """Write `README.md` in `output_dir` with Hub metadata that huggingface_hub parses back.

    `eval_results` maps metric names (e.g. `accuracy`) to values; they go into a model-index entry for
    `eval_dataset` = (dataset id, dataset name). `custom_code` adds the `trust_remote_code` note for
    environments without hf_tinyvit installed. Returns the `ModelCard`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    datasets = list(datasets)
    results = None
    if eval_results:
        dataset_id, dataset_name = eval_dataset or ((datasets[0], datasets[0]) if datasets else ("custom", "custom"))
        results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id,
                dataset_name=dataset_name,
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in eval_results.items()
        ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=sorted({"hf_tinyvit", "image-classification", "vision", *tags}),
        datasets=datasets or None,
        base_model=base_model,
        model_name=model_id,
        eval_results=results,
    )
    sections = [f"# {model_id}", description.strip()]
    usage = (
        "```python\n"
        "import hf_tinyvit  # registers the model classes with transformers' Auto classes\n"
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{model_id}")\n'
        "```"
    )
    sections += ["## Usage", usage]
    if custom_code:
        sections.append(
            "Without hf_tinyvit installed, the modeling code stored in this repository loads with "
            f'`AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)`.'
        )
    if eval_results:
        rows = "\n".join(f"| {name} | {float(value):.4f} |" for name, value in eval_results.items())
        sections += ["## Evaluation", "| metric | value |\n|---|---|\n" + rows]
    for title, body in extra_sections:
        sections += [f"## {title}", body.strip()]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    card = ModelCard(content)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    card.save(Path(output_dir) / "README.md")
    return card
