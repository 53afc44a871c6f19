"""Student search: a constrained local search over TinyViT's contraction factors (stage widths, depths,
heads at a fixed head width, window sizes, MLP ratio, MBConv expansion) under a parameter budget and
a measured throughput floor, each candidate scored by a short distillation from a stored teacher.

What the store makes cheap: no teacher runs during the search; every candidate replays the same
stored views and targets, so candidates differ in their architecture only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..log import get_logger
from ..models.tinyvit import TINYVIT_PRESETS, TinyViTConfig, TinyViTForImageClassification
from ..models.tinyvit.configuration_tinyvit import SMALL_PRESETS

__all__ = [
    "ProxySettings",
    "SearchCandidate",
    "SearchSpace",
    "StudentArchitecture",
    "StudentCost",
    "StudentSearch",
    "count_macs",
    "feature_map_sizes",
    "measure_student",
    "measure_throughput",
    "pareto_front",
    "search_students",
]

logger = get_logger(__name__)

# Settings a candidate inherits from the seed configuration (everything that is not searched).
_INHERITED = (
    "num_channels",
    "local_conv_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout_prob",
    "drop_path_rate",
    "layer_norm_eps",
    "batch_norm_eps",
    "initializer_range",
)


def feature_map_sizes(image_size: int, num_stages: int) -> list[int]:
    """Side of each stage's feature map: the stem halves twice, each later stage once (3x3 stride-2
    convolutions with padding 1 round up)."""
    side = math.ceil(math.ceil(image_size / 2) / 2)
    sizes = [side]
    for _ in range(num_stages - 1):
        side = math.ceil(side / 2)
        sizes.append(side)
    return sizes


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Bool mask of the points no other point dominates, every column to be maximised.

    A point is dominated when another is at least as good in every column and better in one.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be (n, objectives), got shape {points.shape}")
    front = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        others = np.delete(points, i, axis=0)
        front[i] = not np.any(np.all(others >= point, axis=1) & np.any(others > point, axis=1))
    return front


@dataclass(frozen=True)
class StudentArchitecture:
    """The searched factors of a TinyViT; heads follow from the widths at a fixed head width."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    window_sizes: tuple[int, ...]
    mlp_ratio: float
    mbconv_expand_ratio: float

    def num_heads(self, head_dim: int) -> tuple[int, ...]:
        # stage 0 is convolutional: its entry is unused, kept at width / head_dim like the presets'
        return tuple(max(1, dim // head_dim) for dim in self.embed_dims)

    def describe(self) -> str:
        def dashed(values):
            return "-".join(str(v) for v in values)

        return (
            f"dims {dashed(self.embed_dims)} depths {dashed(self.depths)} windows {dashed(self.window_sizes[1:])} "
            f"mlp {self.mlp_ratio:g} mbconv {self.mbconv_expand_ratio:g}"
        )

    def to_config(self, head_dim: int, **settings) -> TinyViTConfig:
        return TinyViTConfig(
            embed_dims=list(self.embed_dims),
            depths=list(self.depths),
            num_heads=list(self.num_heads(head_dim)),
            window_sizes=list(self.window_sizes),
            mlp_ratio=self.mlp_ratio,
            mbconv_expand_ratio=self.mbconv_expand_ratio,
            **settings,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class SearchSpace:
    """Where the search may move, one factor at a time: a stage's width by `width_step` (heads follow at
    `head_dim`, widths never decrease from stage to stage), a stage's depth by one, an attention stage's
    window to the next size in `window_sizes` (windows larger than their feature map are clipped to it, as
    the model does at run time), and the MLP ratio or MBConv expansion to the next value in their lists."""

    head_dim: int = 32
    width_step: int = 32
    min_width: int = 32
    max_width: int = 1024
    max_depth: int = 8
    window_sizes: tuple[int, ...] = (1, 2, 4, 7, 8, 14, 16, 24, 32)
    mlp_ratios: tuple[float, ...] = (2.0, 3.0, 4.0)
    mbconv_expand_ratios: tuple[float, ...] = (2.0, 3.0, 4.0)

    def __post_init__(self):
        for name in ("head_dim", "width_step", "min_width", "max_width", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("width_step", "min_width"):
            if getattr(self, name) % self.head_dim:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be a multiple of head_dim={self.head_dim}, "
                    "so that every width splits into whole heads"
                )
        if self.max_width < self.min_width:
            raise ValueError(f"max_width={self.max_width} is below min_width={self.min_width}")
        for name in ("window_sizes", "mlp_ratios", "mbconv_expand_ratios"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name}={values} must be a non-empty list of positive values")

    def architecture(self, config: TinyViTConfig, image_size: int | None = None) -> StudentArchitecture:
        """The searched factors of `config`, windows clipped to the feature maps at `image_size`
        (default the config's). Attention stages must have `width / head_dim` heads."""
        image_size = image_size or config.image_size
        expected = [max(1, d // self.head_dim) for d in config.embed_dims]
        for stage in range(1, len(config.depths)):
            dim, heads = config.embed_dims[stage], config.num_heads[stage]
            if dim % self.head_dim or heads != expected[stage]:
                raise ValueError(
                    f"stage {stage} has embed_dims={dim} and num_heads={heads}; the search keeps heads of "
                    f"head_dim={self.head_dim} channels (num_heads = embed_dims / {self.head_dim}): pass a seed "
                    f"that does, or another head_dim"
                )
        maps = feature_map_sizes(image_size, len(config.depths))
        windows = [config.window_sizes[0]] + [min(w, m) for w, m in zip(config.window_sizes[1:], maps[1:])]
        return StudentArchitecture(
            tuple(config.embed_dims),
            tuple(config.depths),
            tuple(windows),
            float(config.mlp_ratio),
            float(config.mbconv_expand_ratio),
        )

    def neighbours(self, arch: StudentArchitecture, image_size: int) -> list[tuple[str, StudentArchitecture]]:
        """Every architecture one move away, with a description of the move, in a fixed order."""
        moves: list[tuple[str, StudentArchitecture]] = []
        dims = arch.embed_dims
        for stage in range(len(dims)):
            for step in (-self.width_step, self.width_step):
                new = dims[stage] + step
                lower = dims[stage - 1] if stage else self.min_width
                upper = dims[stage + 1] if stage + 1 < len(dims) else self.max_width
                if max(lower, self.min_width) <= new <= min(upper, self.max_width):
                    moves.append((f"embed_dims[{stage}] {dims[stage]}->{new}", _replace(arch, "embed_dims", stage, new)))
        for stage, depth in enumerate(arch.depths):
            for new in (depth - 1, depth + 1):
                if 1 <= new <= self.max_depth:
                    moves.append((f"depths[{stage}] {depth}->{new}", _replace(arch, "depths", stage, new)))
        maps = feature_map_sizes(image_size, len(arch.depths))
        for stage in range(1, len(arch.window_sizes)):
            window = arch.window_sizes[stage]
            allowed = sorted({w for w in self.window_sizes if w <= maps[stage]} | {maps[stage], window})
            position = allowed.index(window)
            for new in allowed[max(position - 1, 0) : position] + allowed[position + 1 : position + 2]:
                moves.append((f"window_sizes[{stage}] {window}->{new}", _replace(arch, "window_sizes", stage, new)))
        for name, choices in (("mlp_ratio", self.mlp_ratios), ("mbconv_expand_ratio", self.mbconv_expand_ratios)):
            current = getattr(arch, name)
            allowed = sorted(set(choices) | {current})
            position = allowed.index(current)
            for new in allowed[max(position - 1, 0) : position] + allowed[position + 1 : position + 2]:
                moves.append((f"{name} {current:g}->{new:g}", dataclasses.replace(arch, **{name: float(new)})))
        return moves


def _replace(arch: StudentArchitecture, name: str, stage: int, value: int) -> StudentArchitecture:
    values = list(getattr(arch, name))
    values[stage] = value
    return dataclasses.replace(arch, **{name: tuple(values)})


# ---- cost: parameters, MACs, measured throughput ---------------------------------------------------


@dataclass(frozen=True)
class StudentCost:
    parameters: int
    macs: int  # multiply-accumulates of one image, counted by torch.utils.flop_counter
    images_per_second: float  # measured on `device` at `batch_size` and `image_size`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_macs(config: TinyViTConfig, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image, counted by `torch.utils.flop_counter`.

    The count runs the eager attention: the flop counter does not see inside the CPU SDPA kernel, and
    eager attention does the same matrix products (the published 1.3G / 2.0G / 4.3G of TinyViT-5M /
    11M / 21M at 224 come out as 1.26G / 2.02G / 4.25G).
    """
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageClassification.from_config(copy.deepcopy(config), attn_implementation="eager")
    model.eval()
    pixels = torch.zeros(1, config.num_channels, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=pixels)
    return int(counter.get_total_flops()) // 2


def measure_throughput(
    model: torch.nn.Module,
    *,
    batch_size: int,
    image_size: int,
    device: torch.device,
    repeats: int = 5,
    warmup: int = 2,
    min_seconds: float = 0.5,
) -> float:
    """Images per second of `model`'s forward in inference mode, from the fastest of at least `repeats`
    timed batches and `min_seconds` of timing. The fastest batch, as `timeit` advises, is the one least
    slowed by other jobs on a shared machine; the time floor gives fast models enough batches to find it."""
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, model.config.num_channels, image_size, image_size, generator=generator).to(device)

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(pixel_values=pixels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        warm = [timed() for _ in range(warmup)]
        while warmup and sum(warm) < min_seconds / 2:  # the first batches of a process also set up kernels
            warm.append(timed())
        times = [timed() for _ in range(repeats)]
        while sum(times) < min_seconds:
            times.append(timed())
    return batch_size / min(times)


def measure_student(
    config: TinyViTConfig,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    repeats: int = 5,
    warmup: int = 2,
    min_seconds: float = 1.0,
) -> StudentCost:
    """Parameters, MACs per image and measured images/s of a TinyViT classifier built from `config`
    (the fastest of at least `repeats` batches and `min_seconds` of timing, after `warmup` batches)."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size={batch_size} and repeats={repeats} must be >= 1, warmup={warmup} >= 0")
    image_size = int(image_size or config.image_size)
    device = _device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyViTForImageClassification(config)
    parameters = sum(p.numel() for p in model.parameters())
    speed = measure_throughput(
        model, batch_size=batch_size, image_size=image_size, device=device, repeats=repeats, warmup=warmup,
        min_seconds=min_seconds,
    )  # fmt: skip
    return StudentCost(parameters, count_macs(config, image_size), speed)


def _cpu_threads() -> str:
    threads = torch.get_num_threads()
    return f"cpu, {threads} thread{'s' if threads != 1 else ''}"


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---- the proxy score: a short distillation from the store ------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """The fixed budget every candidate trains with: `epochs` passes over `train_samples` stored samples
    (each pass replaying the next stored epoch), AdamW with a warm-up and cosine decay, then top-1
    agreement with the teacher's stored top-1 on the stored views of `eval_samples` other samples."""

    train_samples: int = 768
    eval_samples: int = 256
    epochs: int = 6
    batch_size: int = 64
    # a large step for short runs: on digits 72 steps at 4e-3 reach 82% agreement, at 2e-3 74%
    learning_rate: float = 4e-3
    warmup_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("train_samples", "eval_samples", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must lie in [0, 1)")


class ProxyScorer:
    """Trains candidates on a fixed subset of a store and scores them on held-out stored samples.

    A plain loop over the package's pieces (`StoredLogitsDataset.items`, `collate_views`, the loss
    router) rather than `DistillationTrainer`. Not for speed (on digits the Trainer's set-up takes
    0.05 s and its 72 steps as long as these): a store replays only on the whole dataset it was built
    from, so a proxy subset is a choice of sample ids, which the Trainer's dataset contract (epochs,
    collate, shuffle) does not take; and a candidate here leaves no files and no global RNG state.
    Views are rendered once and kept in a `ViewCache`, so every candidate only trains.
    """

    def __init__(self, store, dataset, settings: ProxySettings, *, device=None, image_column: str = "image"):
        from ..augment.views import ViewCache
        from ..replay import StoredLogitsDataset

        self.settings = settings
        self.device = _device(device)
        self.stored = StoredLogitsDataset(dataset, store, image_column=image_column, label_column=None,
                                          view_cache=ViewCache(max_bytes=1 << 30))  # fmt: skip
        self.store = self.stored.store
        size = self.store.dataset_size
        if settings.train_samples + settings.eval_samples > size:
            raise ValueError(
                f"train_samples={settings.train_samples} + eval_samples={settings.eval_samples} exceed the store's "
                f"{size} samples"
            )
        order = np.random.Generator(np.random.PCG64(settings.seed)).permutation(size)
        self.train_ids = np.sort(order[: settings.train_samples])
        self.eval_ids = np.sort(order[settings.train_samples : settings.train_samples + settings.eval_samples])
        self._eval_batch = self._batch(self.eval_ids, self.store.epochs[0])
        for epoch, ids in self._orders():  # render every training view once, before any candidate is timed
            self._batch(ids, epoch)

    def _batch(self, sample_ids: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        from ..augment.views import collate_views

        self.stored.set_epoch(epoch)
        return collate_views(self.stored.items([int(i) for i in sample_ids]))

    def _orders(self) -> list[tuple[int, np.ndarray]]:
        """(stored epoch, shuffled sample ids) of each training pass: the same for every candidate."""
        epochs = self.store.epochs
        orders = []
        for e in range(self.settings.epochs):
            rng = np.random.Generator(np.random.PCG64([self.settings.seed, e]))
            orders.append((epochs[e % len(epochs)], rng.permutation(self.train_ids)))
        return orders

    def score(self, config: TinyViTConfig) -> tuple[float, float]:
        """Train a fresh student from `config` with the fixed budget; return (agreement, seconds)."""
        from transformers import get_cosine_schedule_with_warmup

        from ..losses import DistillationMode, TeacherTarget, distillation_loss
        from ..store.format import sparse_to_dense

        s = self.settings
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(s.seed)  # the same initialisation stream for every candidate
            model = TinyViTForImageClassification(config).to(self.device)
            # No weight decay: a proxy run is a few dozen steps, too short for it to matter.
            optimizer = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.0)
            batches = [
                (epoch, ids[i : i + s.batch_size]) for epoch, ids in self._orders() for i in range(0, len(ids), s.batch_size)
            ]
            scheduler = get_cosine_schedule_with_warmup(optimizer, int(s.warmup_ratio * len(batches)), len(batches))
            model.train()
            for epoch, ids in batches:
                batch = self._batch(ids, epoch)
                probs = sparse_to_dense(batch["teacher_topk_values"], batch["teacher_topk_indices"], config.num_labels)
                outputs = model(pixel_values=batch["pixel_values"].to(self.device))
                target = TeacherTarget(probs=probs.to(self.device))
                loss = distillation_loss(DistillationMode.STORED, outputs, None, target).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            agree = 0
            with torch.inference_mode():
                pixels = self._eval_batch["pixel_values"]
                teacher_top1 = self._eval_batch["teacher_topk_indices"][:, 0]
                for i in range(0, len(pixels), 256):
                    logits = model(pixel_values=pixels[i : i + 256].to(self.device)).logits
                    agree += int((logits.argmax(-1).cpu() == teacher_top1[i : i + 256]).sum())
        return agree / len(self.eval_ids), time.perf_counter() - start


# ---- the search -----------------------------------------------------------------------------------


@dataclass
class SearchCandidate:
    index: int
    architecture: StudentArchitecture
    change: str  # "seed", or the move from its parent
    parent: int | None
    cost: StudentCost
    status: str  # "scored", "over parameter budget" or "below throughput floor"
    proxy_accuracy: float | None = None
    train_seconds: float | None = None

    @property
    def feasible(self) -> bool:
        return self.status == "scored"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "architecture": self.architecture.to_dict(),
            "change": self.change,
            "parent": self.parent,
            **self.cost.to_dict(),
            "status": self.status,
            "proxy_accuracy": self.proxy_accuracy,
            "train_seconds": self.train_seconds,
        }


@dataclass
class StudentSearch:
    """A finished search: every candidate measured, the scored ones' proxy accuracy, and the best."""

    candidates: list[SearchCandidate]
    settings: dict[str, Any]
    head_dim: int
    config_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> SearchCandidate:
        scored = [c for c in self.candidates if c.feasible]
        # the highest proxy accuracy; among equals, the smaller model
        return max(scored, key=lambda c: (c.proxy_accuracy, -c.cost.parameters))

    def best_config(self) -> TinyViTConfig:
        return self.best.architecture.to_config(self.head_dim, **self.config_settings)

    def frontier(self) -> np.ndarray:
        """Candidates on the parameters-vs-throughput frontier: none has both more parameters and more img/s."""
        points = np.array([[c.cost.parameters, c.cost.images_per_second] for c in self.candidates])
        return pareto_front(points)

    def to_markdown(self) -> str:
        s = self.settings
        on_front = self.frontier()
        best = self.best.index
        lines = [
            f"Seed `{s['seed_name']}`; budget {s['max_params'] / 1e6:.3g}M parameters, floor "
            f"{s['min_throughput']:g} img/s (batch {s['batch_size']}, {s['image_size']}x{s['image_size']}, "
            f"{s['device']}); proxy: {s['proxy']['epochs']} epochs over {s['proxy']['train_samples']} stored "
            f"samples, scored on {s['proxy']['eval_samples']} held-out ones (top-1 agreement with the stored "
            f"teacher). {sum(c.feasible for c in self.candidates)} candidates scored, "
            f"{len(self.candidates)} measured, in {s['wall_seconds']:.0f} s.",
            "",
            "| # | change | architecture | params (M) | MACs (M) | img/s | proxy accuracy (%) | train (s) | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.candidates:
            accuracy = "" if c.proxy_accuracy is None else f"{100 * c.proxy_accuracy:.1f}"
            train = "" if c.train_seconds is None else f"{c.train_seconds:.1f}"
            status = c.status + (", best" if c.index == best else "") + (", frontier" if on_front[c.index] else "")
            lines.append(
                f"| {c.index} | {c.change} | {c.architecture.describe()} | {c.cost.parameters / 1e6:.3f} | "
                f"{c.cost.macs / 1e6:.1f} | {c.cost.images_per_second:.0f} | {accuracy} | {train} | {status} |"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "head_dim": self.head_dim,
            "best": self.best.index,
            "frontier": [int(i) for i in np.flatnonzero(self.frontier())],
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def save(self, output_dir: str | os.PathLike, *, plot: bool = True) -> Path:
        """Write search.md, search.json, the best config as a `TinyViTConfig` folder (best-config/)
        and, with `plot`, search.png (needs matplotlib)."""
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "search.md").write_text(self.to_markdown())
        (output / "search.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.best_config().save_pretrained(str(output / "best-config"))
        if plot:
            from .plots import plot_search

            plot_search(self, output / "search.png")
        return output


def _seed_config(seed: TinyViTConfig | str) -> tuple[TinyViTConfig, str]:
    if isinstance(seed, TinyViTConfig):
        return seed, "custom config"
    presets = {**TINYVIT_PRESETS, **SMALL_PRESETS}
    if seed in presets:
        return TinyViTConfig.from_preset(seed), seed
    if os.path.isdir(str(seed)):
        return TinyViTConfig.from_pretrained(str(seed)), str(seed)
    raise ValueError(f"seed {seed!r} is neither a TinyViT preset ({sorted(presets)}) nor a config folder")


def search_students(
    store,
    dataset,
    *,
    seed: TinyViTConfig | str = "tinyvit-micro",
    max_params: float,
    min_throughput: float = 0.0,
    num_candidates: int = 6,
    space: SearchSpace | None = None,
    proxy: ProxySettings | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    image_column: str = "image",
    max_measured: int | None = None,
    throughput_seconds: float = 1.0,
) -> StudentSearch:
    """Search TinyViT students for `store` (the teacher's stored views of `dataset`'s images).

    From `seed` (a preset name, a config folder or a `TinyViTConfig`), a first-improvement hill climb:
    one move at a time in a seeded random order, a candidate over `max_params` or under
    `min_throughput` images/s (measured on `device` at `batch_size` and the store's resolution) is
    recorded and skipped; a feasible one is trained with the fixed `proxy` budget, and becomes the
    current architecture when it scores higher. When a neighbourhood is used up the climb restarts
    from the best scored candidate with moves left. Stops after `num_candidates` scored candidates
    (the seed included) or `max_measured` measured ones (default 10x that). Each throughput is the
    fastest batch of at least `throughput_seconds` of timing (see `measure_student`).
    """
    from ..store.reader import TeacherLogitStore

    store = store if isinstance(store, TeacherLogitStore) else TeacherLogitStore.open(store)
    space = space or SearchSpace()
    proxy = proxy or ProxySettings()
    if num_candidates < 1:
        raise ValueError(f"num_candidates={num_candidates} must be >= 1")
    if not max_params > 0:
        raise ValueError(f"max_params={max_params} must be > 0")
    if min_throughput < 0:
        raise ValueError(f"min_throughput={min_throughput} must be >= 0")
    max_measured = max_measured if max_measured is not None else 10 * num_candidates
    seed_config, seed_name = _seed_config(seed)
    image_size = store.recipe.image_size
    id2label = store.metadata.get("id2label") or {i: str(i) for i in range(store.num_labels)}
    settings = {name: getattr(seed_config, name) for name in _INHERITED}
    settings.update(
        image_size=image_size,
        num_labels=store.num_labels,
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
    )
    start = time.perf_counter()
    device = _device(device)
    seed_arch = space.architecture(seed_config, image_size)

    def config_of(arch: StudentArchitecture) -> TinyViTConfig:
        return arch.to_config(space.head_dim, **settings)

    def measure(arch: StudentArchitecture) -> tuple[StudentCost, str]:
        cost = measure_student(config_of(arch), batch_size=batch_size, image_size=image_size, device=device,
                               min_seconds=throughput_seconds)  # fmt: skip
        if cost.parameters > max_params:
            return cost, "over parameter budget"
        if cost.images_per_second < min_throughput:
            return cost, "below throughput floor"
        return cost, "scored"

    measure(seed_arch)  # the first measurement in a process also pays one-off set-up (allocator, kernels)
    seed_cost, seed_status = measure(seed_arch)
    if seed_status != "scored":
        raise ValueError(
            f"the seed {seed_name!r} ({seed_cost.parameters / 1e6:.3f}M parameters, "
            f"{seed_cost.images_per_second:.0f} img/s) is itself {seed_status} (max_params={max_params:g}, "
            f"min_throughput={min_throughput:g}): start from a seed that satisfies the constraints"
        )
    scorer = ProxyScorer(store, dataset, proxy, device=device, image_column=image_column)
    candidates: list[SearchCandidate] = []

    def record(arch, change, parent, cost, status) -> SearchCandidate:
        candidate = SearchCandidate(len(candidates), arch, change, parent, cost, status)
        if status == "scored":
            candidate.proxy_accuracy, candidate.train_seconds = scorer.score(config_of(arch))
        candidates.append(candidate)
        logger.info(
            "candidate %d (%s): %s, %.3fM params, %.0f img/s%s",
            candidate.index, change, arch.describe(), cost.parameters / 1e6, cost.images_per_second,
            "" if candidate.proxy_accuracy is None else f", proxy accuracy {100 * candidate.proxy_accuracy:.1f}%",
        )  # fmt: skip
        return candidate

    current = record(seed_arch, "seed", None, seed_cost, seed_status)
    seen = {seed_arch}
    rng = np.random.Generator(np.random.PCG64(proxy.seed))
    exhausted: set[int] = set()

    def scored_count() -> int:
        return sum(c.feasible for c in candidates)

    while scored_count() < num_candidates and len(candidates) < max_measured:
        moves = [(change, arch) for change, arch in space.neighbours(current.architecture, image_size) if arch not in seen]
        if not moves:
            exhausted.add(current.index)
            remaining = [c for c in candidates if c.feasible and c.index not in exhausted]
            if not remaining:
                break
            current = max(remaining, key=lambda c: c.proxy_accuracy)
            continue
        change, arch = moves[int(rng.integers(len(moves)))]
        seen.add(arch)
        cost, status = measure(arch)
        candidate = record(arch, change, current.index, cost, status)
        if candidate.feasible and candidate.proxy_accuracy > current.proxy_accuracy:
            current = candidate
    settings_out = {
        "seed_name": seed_name,
        "max_params": float(max_params),
        "min_throughput": float(min_throughput),
        "num_candidates": num_candidates,
        "batch_size": batch_size,
        "image_size": image_size,
        "throughput_seconds": throughput_seconds,
        "device": str(device) if device.type != "cpu" else _cpu_threads(),
        "proxy": dataclasses.asdict(proxy),
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(space).items()},
        "store": store.path,
        "wall_seconds": time.perf_counter() - start,
    }
    return StudentSearch(candidates, settings_out, space.head_dim, settings)
