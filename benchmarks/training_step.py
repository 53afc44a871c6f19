"""What a distillation training step costs: the same student, batches and data trained three ways
through DistillationTrainer (labels only, stored top-k teacher logits, live teacher), with peak memory.

    python benchmarks/training_step.py [--pairs tiny-32 tinyvit-21m-to-5m-224] [--repeats 5]

Step = `DistillationTrainer.training_step` (forward, loss, backward) + optimizer step. Batches are
rendered once by StoredLogitsDataset, so data loading is outside the step; its share of a real
loop through the trainer's DataLoader is measured separately. Peak memory is read in a fresh
process per mode, over the steps only (VmHWM reset after set-up on Linux CPU; max allocated on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    current_rss_mib,
    interleaved_medians,
    peak_rss_mib,
    reset_peak_rss,
    run_probes,
)

MODES = ("labels", "stored", "online")
TEACHER_KEYS = ("teacher_topk_values", "teacher_topk_indices")
TOPK = 10


@dataclass(frozen=True)
class Pair:
    """A student and its teacher at one resolution, with the batch size a CPU step runs in seconds."""

    name: str
    student: dict
    teacher: dict
    image_size: int
    num_labels: int
    cpu_batch_size: int
    gpu_batch_size: int

    def config(self, which: str):
        from hf_tinyvit.models.tinyvit import TinyViTConfig

        spec = dict(self.student if which == "student" else self.teacher)
        preset = spec.pop("preset", None)
        if preset is not None:
            return TinyViTConfig.from_preset(preset, num_labels=self.num_labels, **spec)
        return TinyViTConfig(image_size=self.image_size, num_labels=self.num_labels, **spec)


_TINY = dict(depths=[1, 1, 2, 1], window_sizes=[2, 2, 2, 2])
PAIRS = {
    pair.name: pair
    for pair in (
        Pair(
            "tinyvit-21m-to-5m-224",
            student={"preset": "tinyvit-5m-224"},
            teacher={"preset": "tinyvit-21m-224"},
            image_size=224,
            num_labels=1000,
            cpu_batch_size=8,
            gpu_batch_size=128,
        ),
        # Same shape of problem at 32x32: the teacher ~4x the student's compute, as 21M is to 5M.
        Pair(
            "tiny-32",
            student=dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 1, 2, 2], **_TINY),
            teacher=dict(embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], **_TINY),
            image_size=32,
            num_labels=100,
            cpu_batch_size=32,
            gpu_batch_size=256,
        ),
    )
}


def build_model(pair: Pair, which: str, seed: int):
    from hf_tinyvit.models.tinyvit import TinyViTForImageClassification

    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        return TinyViTForImageClassification(pair.config(which))


def labelled_photos(count: int, pair: Pair):
    """Real photos (scikit-image's, shipped with the package) with a class label each; their shorter side
    is 1.5x the crop, about what ImageNet's average photo is to 224."""
    num_labels, short_side = pair.num_labels, round(1.5 * pair.image_size)
    import datasets

    from teacher_logits import photo_dataset

    photos = photo_dataset(count, short_side=short_side).add_column("label", [i % num_labels for i in range(count)])
    return photos.cast_column("label", datasets.ClassLabel(num_classes=num_labels))


def save_store(pair: Pair, folder: str, num_images: int, device: str) -> str:
    """Run the teacher once over one epoch of augmented views and keep its top-k, as a user would."""
    from hf_tinyvit import AugmentationRecipe, save_teacher_logits

    teacher = build_model(pair, "teacher", seed=1)
    save_teacher_logits(
        teacher,
        labelled_photos(num_images, pair),
        folder,
        recipe=AugmentationRecipe.tinyvit_pretrain(pair.image_size),
        topk=TOPK,
        batch_size=16,
        teacher_name=f"{pair.name}-teacher",
        progress=False,
        cache_dir=os.path.join(folder, "cache"),
    )
    return folder


def stored_dataset(pair: Pair, store: str, num_images: int):
    from hf_tinyvit import StoredLogitsDataset, TeacherLogitStore

    opened = TeacherLogitStore.open(store, cache_dir=os.path.join(store, "cache"))
    return StoredLogitsDataset(labelled_photos(num_images, pair), opened)


def make_trainer(mode: str, pair: Pair, train_dataset, output_dir: str, device: str, batch_size: int, workers: int = 0):
    """A DistillationTrainer for one mode; online mode gets its own teacher and DeiT's soft loss at
    alpha=1, tau=1, i.e. cross-entropy to the teacher's full distribution, the stored loss's target."""
    from hf_tinyvit.training import DistillationTrainer, DistillationTrainingArguments

    kind = {"labels": "none", "stored": "stored", "online": "soft"}[mode]
    args = DistillationTrainingArguments(
        output_dir=output_dir, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu",
        per_device_train_batch_size=batch_size, learning_rate=1e-4, distillation_type=kind, alpha=1.0, tau=1.0,
        dataloader_num_workers=workers, seed=0, teacher_logits=train_dataset.store.path if mode == "stored" else None,
    )  # fmt: skip
    teacher = build_model(pair, "teacher", seed=1) if mode == "online" else None
    trainer = DistillationTrainer(
        model=build_model(pair, "student", seed=0), args=args, train_dataset=train_dataset, teacher_model=teacher
    )
    trainer.create_optimizer()
    return trainer


def mode_batch(mode: str, batch: dict) -> dict:
    """Every mode sees the same pixels and labels; only the stored mode carries the teacher's top-k."""
    return batch if mode == "stored" else {k: v for k, v in batch.items() if k not in TEACHER_KEYS}


def train_on(trainer, batch: dict, device: str) -> None:
    """One optimisation step: the trainer's own training_step, then the optimizer."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    with autocast:
        trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def step_function(trainer, batches: list[dict], mode: str, device: str):
    """One step per call, cycling through the batches (moved to the device once, outside the timing)."""
    prepared = [{k: v.to(device) for k, v in mode_batch(mode, b).items()} for b in batches]
    calls = iter(range(sys.maxsize))
    return lambda: train_on(trainer, prepared[next(calls) % len(prepared)], device)


def render_batches(dataset, batch_size: int, count: int) -> list[dict]:
    from hf_tinyvit import collate_views

    return [collate_views(dataset.items(range(b * batch_size, (b + 1) * batch_size))) for b in range(count)]


def loader_share(trainer, steps: int, device: str) -> dict[str, float]:
    """Share of wall time a real loop through the trainer's DataLoader spends waiting for batches."""
    loader = trainer.get_train_dataloader()
    waiting = computing = 0.0
    done = 0
    while done < steps:
        iterator = iter(loader)
        while done < steps:
            start = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                break
            fetched = time.perf_counter()
            train_on(trainer, batch, device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            waiting += fetched - start
            computing += time.perf_counter() - fetched
            done += 1
    return {
        "workers": trainer.args.dataloader_num_workers,
        "data_s_per_step": waiting / steps,
        "compute_s_per_step": computing / steps,
        "data_share": waiting / (waiting + computing),
    }


def probe_memory(pair: Pair, mode: str, store: str, num_images: int, steps: int, device: str, batch_size: int) -> dict:
    """Run inside a fresh process: set up one mode, take `steps` steps, report memory figures."""
    dataset = stored_dataset(pair, store, num_images)
    batches = render_batches(dataset, batch_size, max(1, num_images // batch_size))
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(mode, pair, dataset, output_dir, device, batch_size)
        step = step_function(trainer, batches, mode, device)
        step()  # optimizer state and autograd buffers exist from the first step on
        before = current_rss_mib()
        reset = reset_peak_rss()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        peak = peak_rss_mib()
        figures = {"mode": mode, "rss_before_steps_mib": before, "peak_rss_mib": peak, "peak_is_of_steps": reset}
        figures["step_rss_growth_mib"] = peak - before if reset else float("nan")
        if device.startswith("cuda"):
            figures["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def benchmark_pair(
    pair: Pair,
    *,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    batch_size: int | None = None,
    num_batches: int = 2,
    loader_steps: int = 4,
    memory_steps: int = 2,
    workers: int = 0,
    memory_probes: bool = True,
) -> dict:
    """Median step time of each mode over interleaved repeats, their ratios, the loader's share of a
    stored-logit step and each mode's peak memory from its own process."""
    batch_size = batch_size or (pair.gpu_batch_size if device.startswith("cuda") else pair.cpu_batch_size)
    num_images = batch_size * max(num_batches, loader_steps)
    with tempfile.TemporaryDirectory() as folder:
        store = save_store(pair, os.path.join(folder, "store"), num_images, device)
        dataset = stored_dataset(pair, store, num_images)
        batches = render_batches(dataset, batch_size, num_batches)
        trainers = {
            mode: make_trainer(mode, pair, dataset, os.path.join(folder, mode), device, batch_size, workers)
            for mode in MODES
        }
        steps = {mode: step_function(trainers[mode], batches, mode, device) for mode in MODES}
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
        timings = interleaved_medians(steps, repeats=repeats, warmup=warmup, sync=sync)
        loader = loader_share(trainers["stored"], loader_steps, device)
        del trainers, steps
        if memory_probes:
            probes = run_probes(
                os.path.abspath(__file__),
                [["--probe", mode, "--pairs", pair.name, "--store", store, "--num-images", str(num_images),
                  "--steps", str(memory_steps), "--device", device, "--batch-size", str(batch_size)] for mode in MODES],
            )  # fmt: skip
        else:  # a smoke run: no fresh process per mode
            probes = [{"peak_rss_mib": float("nan"), "cuda_max_allocated_mib": float("nan")} for _ in MODES]
        memory = dict(zip(MODES, probes))
    median = {mode: timings[mode]["median_s"] for mode in MODES}
    peak_key = "cuda_max_allocated_mib" if device.startswith("cuda") else "peak_rss_mib"
    return {
        "pair": pair.name,
        "image_size": pair.image_size,
        "batch_size": batch_size,
        "topk": TOPK,
        "repeats": repeats,
        "device": device,
        "step_s": median,
        "step_samples_s": {mode: timings[mode]["samples_s"] for mode in MODES},
        "images_per_s": {mode: batch_size / median[mode] for mode in MODES},
        "stored_over_labels": median["stored"] / median["labels"],
        "online_over_stored": median["online"] / median["stored"],
        "memory": memory,
        "peak_memory_key": peak_key,
        "stored_memory_over_labels": memory["stored"][peak_key] / memory["labels"][peak_key],
        "online_memory_over_stored": memory["online"][peak_key] / memory["stored"][peak_key],
        "loader": loader,
    }


def format_rows(result: dict) -> list[str]:
    key = result["peak_memory_key"]
    lines = [f"{'mode':<8} {'step s':>8} {'img/s':>8} {'peak MiB':>9}"]
    for mode in MODES:
        step, speed, peak = result["step_s"][mode], result["images_per_s"][mode], result["memory"][mode][key]
        lines.append(f"{mode:<8} {step:>8.3f} {speed:>8.1f} {peak:>9.0f}")
    lines.append(
        f"stored/labels {result['stored_over_labels']:.3f}x, online/stored {result['online_over_stored']:.2f}x, "
        f"peak memory stored/labels {result['stored_memory_over_labels']:.3f}x; DataLoader "
        f"({result['loader']['workers']} workers) {100 * result['loader']['data_share']:.1f}% of a stored step"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=sorted(PAIRS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the loader-share loop")
    parser.add_argument("--probe", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num-images", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        pair = PAIRS[args.pairs[0]]
        figures = probe_memory(pair, args.probe, args.store, args.num_images, args.steps, args.device, args.batch_size)
        print(json.dumps(figures))
        return
    for name in args.pairs:
        result = benchmark_pair(
            PAIRS[name], repeats=args.repeats, device=args.device, batch_size=args.batch_size, workers=args.workers
        )
        print(f"== {name}: batch {result['batch_size']} at {result['image_size']} px on {args.device} ==")
        print("\n".join(format_rows(result)))


if __name__ == "__main__":
    main()
