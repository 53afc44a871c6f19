"""The main job (`make demo`): TinyViT's fast pretraining distillation end to end on real data, the
1,797 handwritten digits that ship with scikit-learn, with the evidence written to `--output_dir`.

1. A convnet teacher (timm's test_resnet through transformers' TimmWrapper) learns the clean labels.
2. It runs once over several augmented epochs; its top-3 probabilities and each view's encoding
   are stored as Parquet `datasets` columns.
3. One small TinyViT student trains three ways with the same budget, initialisation and views:
   labels only, from the stored logits (no teacher in memory) and online from the live teacher;
   a small DeiT student trains on labels only and with hard distillation through its
   distillation token from the store. Every student replays the stored views (labels-only and
   online runs ignore the stored targets), so the modes of a family differ in their target only.
4. Twice: on the clean labels, and with 20% of the students' training labels replaced by a wrong
   class ("hard samples"), while the teacher keeps standing for outside knowledge.
5. From the store alone: a hard-sample audit of the wrong labels (precision and recall against the
   known flipped ids), labels-only students retrained on the audit's relabelled copy, and the
   teacher's class similarity.

Writes results.md / results.json / accuracy.png, the audit's figures and suspects table, the
similarity heatmap, the store (teacher-logits/, for `hf-tinyvit audit / similarity / search`) and a
Hub-ready student folder, and classifies a few test digits with `pipeline("image-classification")`
loaded from that folder.

    python examples/demo.py --output_dir outputs/demo            # one seed, about 5 minutes on 2 cores
    python examples/demo.py --output_dir outputs/demo --seeds 3  # mean and std over three seeds
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    HfArgumentParser,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    pipeline,
    set_seed,
)

from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    DistillationTrainer,
    DistillationTrainingArguments,
    StoredLogitsDataset,
    TeacherLogitStore,
    TinyViTConfig,
    TinyViTForImageClassification,
    ViewCache,
    audit_labels,
    class_similarity,
    corrupt_labels,
    load_image_dataset,
    plot_class_similarity,
    plot_precision_recall,
    plot_suspects,
    save_teacher_logits,
    tinyvit_image_processor,
    write_model_card,
)

# timm's smallest real ResNet (0.37M parameters): a convnet teacher, as DeiT recommends, that a 2-core
# CPU trains in about a minute (a resnet10t step costs five times as much here).
TEACHER_ARCHITECTURE = "test_resnet"
SETTINGS = ("clean", "hard samples")
# (model family, distillation mode) pairs trained in each setting; "label" is what the table shows.
MODES = (
    ("tinyvit", "none", "TinyViT, labels only"),
    ("tinyvit", "stored", "TinyViT, stored logits (no teacher)"),
    ("tinyvit", "online", "TinyViT, online teacher"),
    ("deit", "none", "DeiT, labels only"),
    ("deit", "hard", "DeiT, hard distillation (stored)"),
)
# Modes whose loss never reads the ground-truth labels give the same run in both settings.
LABEL_FREE = {("tinyvit", "stored"), ("tinyvit", "online")}
# Labels-only students trained again on the hard-samples labels after the audit relabelled its confident suspects.
RELABEL_MODES = (
    ("tinyvit", "none", "TinyViT, labels only, audit-relabelled"),
    ("deit", "none", "DeiT, labels only, audit-relabelled"),
)
# Relabel a suspect when the teacher's mean probability of its own class is at least this.
RELABEL_CONFIDENCE = 0.5


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where results, plot and model folder go."})
    seeds: int = field(default=1, metadata={"help": "Seeds to run; students are paired across modes per seed."})
    epochs: int = field(default=8, metadata={"help": "Student epochs (the same budget for every mode)."})
    teacher_epochs: int = field(default=8, metadata={"help": "Epochs of the teacher's supervised training."})
    stored_epochs: int = field(default=8, metadata={"help": "Augmented epochs of teacher logits to store."})
    topk: int = field(default=3, metadata={"help": "Teacher probabilities kept per view (of 10 classes)."})
    noise: float = field(default=0.2, metadata={"help": "Share of training labels made wrong in the hard-samples setting."})
    image_size: int = field(default=32, metadata={"help": "Training and evaluation resolution."})
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size for every run."})
    tinyvit_lr: float = field(default=2e-3, metadata={"help": "TinyViT student learning rate (AdamW)."})
    deit_lr: float = field(default=2e-3, metadata={"help": "DeiT student learning rate (AdamW)."})
    # A ViT has no convolutional prior: on 1,197 images it needs three times TinyViT's epochs to level off
    # (24 epochs replay each of the 8 stored epochs three times).
    deit_epochs: int = field(default=24, metadata={"help": "DeiT student epochs (both DeiT modes get the same)."})
    deit_patch_size: int = field(default=8, metadata={"help": "DeiT student patch size (32 / 8 = a 4x4 token grid)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split (CI's short run)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the test split (CI's short run)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers per run."})
    topk_encoding: str = field(
        default="float16", metadata={"help": "How the store encodes the top-k: float16, or the quantised sqrt8."}
    )

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")
        for name in ("epochs", "deit_epochs", "teacher_epochs", "stored_epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 1 <= self.topk <= 10:
            raise ValueError(f"topk={self.topk} must lie in [1, 10] (digits have 10 classes)")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise={self.noise} must lie in [0, 1)")


def eval_recipe(image_size: int) -> AugmentationRecipe:
    # Digits fill their frame: evaluate on the whole image rather than a centre crop of it.
    return AugmentationRecipe.eval(image_size, crop_pct=1.0)


def tinyvit_student(image_size: int, id2label: dict) -> TinyViTForImageClassification:
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    return TinyViTForImageClassification(TinyViTConfig.from_preset("tinyvit-micro", image_size=image_size, **labels))


def deit_student(image_size: int, patch_size: int, id2label: dict) -> DeiTDistilledForImageClassification:
    config = DeiTDistilledConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return DeiTDistilledForImageClassification(config)


def teacher_model(id2label: dict) -> TimmWrapperForImageClassification:
    config = TimmWrapperConfig(architecture=TEACHER_ARCHITECTURE, num_labels=len(id2label), id2label=id2label)
    return TimmWrapperForImageClassification(config)


def training_args(output_dir: Path, demo: DemoArguments, *, seed: int, epochs: int, lr: float, **distillation):
    return DistillationTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=lr,
        weight_decay=0.05,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=seed,
        dataloader_num_workers=demo.num_workers,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **distillation,
    )


def run(name: str, model, args, train_dataset, eval_dataset, teacher=None) -> dict:
    """Train one model; return its final and per-epoch test accuracy, wall time and step time."""
    trainer = DistillationTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, teacher_model=teacher
    )
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    evaluations = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    history = [entry["eval_accuracy"] for entry in evaluations]
    metrics = evaluations[-1]  # the last epoch's evaluation is the final model's
    steps = max(result.global_step, 1)
    print(f"  {name:<40s} test accuracy {metrics['eval_accuracy']:.4f}  ({wall:.1f} s)", flush=True)
    return {
        "accuracy": metrics["eval_accuracy"],
        "agreement": metrics.get("eval_teacher_agreement"),
        "history": history,
        "wall_s": wall,
        "step_ms": 1000.0 * wall / steps,
        "trainer": trainer,
    }


def run_seed(seed: int, demo: DemoArguments, data, work: Path) -> dict:
    train, test = data["train"], data["test"]
    id2label = {i: name for i, name in enumerate(train.features["label"].names)}
    recipe, evaluation = AugmentationRecipe.digits(demo.image_size), eval_recipe(demo.image_size)
    # The evaluation transform has no randomness: render the test views once for every run.
    test_views = AugmentedDataset(test, evaluation, seed=seed)
    test_views = test_views.__getitems__(list(range(len(test_views))))
    out: dict = {"seed": seed, "runs": {}}
    # Teacher training, logit saving and every student see the same views of the same 8 epochs: each is
    # rendered once and kept (views are pure functions of (seed, epoch, sample_id); nothing changes).
    views = ViewCache()

    print(f"[seed {seed}] teacher: test_resnet trained on the clean labels", flush=True)
    set_seed(seed)
    teacher = teacher_model(id2label)
    teacher_run = run(
        "teacher (test_resnet, labels)",
        teacher,
        training_args(work / "teacher", demo, seed=seed, epochs=demo.teacher_epochs, lr=2e-3),
        AugmentedDataset(train, recipe, seed=seed, view_cache=views),
        test_views,
    )
    out["teacher_accuracy"] = teacher_run["accuracy"]
    teacher = teacher_run.pop("trainer").model.eval()

    print(f"[seed {seed}] saving top-{demo.topk} teacher probabilities for {demo.stored_epochs} epochs", flush=True)
    store_dir = work / "teacher-logits"
    start = time.perf_counter()
    save_teacher_logits(
        teacher, train, str(store_dir), recipe=recipe, topk=demo.topk, num_epochs=demo.stored_epochs,
        seed=seed, batch_size=256, teacher_name="test_resnet-digits", id2label=id2label, progress=False,
        view_cache=views, topk_encoding=demo.topk_encoding,
    )
    out["logit_saving_s"] = time.perf_counter() - start
    out["store_bytes"] = sum(f.stat().st_size for f in store_dir.rglob("*.parquet"))
    out["store_records"] = len(train) * demo.stored_epochs
    store = TeacherLogitStore.open(str(store_dir))

    noisy_train, flipped = corrupt_labels(train, demo.noise, seed)
    out["flipped_labels"] = len(flipped)
    students = {"demo": demo, "seed": seed, "store": store, "store_dir": store_dir, "views": views,
                "test_views": test_views, "teacher": teacher, "work": work, "id2label": id2label}  # fmt: skip
    for setting in SETTINGS:
        labelled = train if setting == "clean" else noisy_train
        print(f"[seed {seed}] students, {setting} labels", flush=True)
        for family, mode, label in MODES:
            key = f"{setting}/{label}"
            if setting != "clean" and (family, mode) in LABEL_FREE:
                # These losses never read the labels: the clean run is this run, bit for bit.
                out["runs"][key] = out["runs"][f"clean/{label}"]
                continue
            result = train_student(key, family, mode, labelled, **students)
            trainer = result.pop("trainer")
            if setting == "clean" and family == "tinyvit" and mode == "stored":
                out["stored_student"] = trainer
            out["runs"][key] = result
    audit_and_relabel(out, train, noisy_train, flipped, students)
    return out


def train_student(key: str, family: str, mode: str, labelled, *, demo: DemoArguments, seed: int, store, store_dir: Path,
                  views, test_views, teacher, work: Path, id2label: dict) -> dict:  # fmt: skip
    """One student of `family` trained in `mode` on the `labelled` dataset's labels (or none, for the
    label-free modes), replaying the store's views."""
    set_seed(seed)  # the same initialisation for every mode of a family
    if family == "tinyvit":
        model, lr, epochs = tinyvit_student(demo.image_size, id2label), demo.tinyvit_lr, demo.epochs
    else:
        model, lr, epochs = deit_student(demo.image_size, demo.deit_patch_size, id2label), demo.deit_lr, demo.deit_epochs
    # Every mode replays the stored views, cycling them when a family trains longer than the store
    # holds; labels-only and online runs leave the stored targets unread.
    train_views = StoredLogitsDataset(labelled, store, view_cache=views)
    live_teacher = None
    if mode == "none":
        distillation = {"distillation_type": "none"}
    elif mode in ("stored", "hard"):
        distillation = {"distillation_type": mode, "teacher_logits": str(store_dir)}
    else:  # online: the live teacher's full distribution on the same views, no labels (alpha = 1)
        distillation = {"distillation_type": "soft", "alpha": 1.0, "tau": 1.0}
        live_teacher = teacher
    return run(
        key,
        model,
        training_args(work / "students" / key.replace("/", "_").replace(" ", "-"), demo, seed=seed,
                      epochs=epochs, lr=lr, **distillation),
        train_views,
        test_views,
        teacher=live_teacher,
    )


def audit_and_relabel(out: dict, train, noisy_train, flipped, students: dict) -> None:
    """What else the store gives: the hard-sample audit of the wrong labels (measured against the known
    flipped ids), labels-only students on the audit's relabelled copy, and the teacher's class similarity."""
    seed, store = students["seed"], students["store"]
    print(f"[seed {seed}] hard-sample audit of the {len(flipped)} wrong labels, from the store alone", flush=True)
    start = time.perf_counter()
    audit = audit_labels(store, noisy_train)
    relabelled, changed = audit.relabelled(noisy_train, min_confidence=RELABEL_CONFIDENCE)
    truth, noisy = np.array(train["label"]), np.array(noisy_train["label"])
    out["audit"] = {
        "seconds": time.perf_counter() - start,
        "threshold": audit.threshold,
        "min_topk_fraction": audit.min_topk_fraction,
        "suspects": int(audit.suspect.sum()),
        "relabelled": len(changed),
        "relabelled_to_truth": int((np.array(relabelled["label"])[changed] == truth[changed]).sum()),
        "wrong_after_relabel": int((np.array(relabelled["label"]) != truth).sum()),
        "wrong_before": int((noisy != truth).sum()),
        **(audit.precision_recall(flipped) if len(flipped) else {}),
    }
    out["audit_result"], out["audited_dataset"], out["flipped"] = audit, noisy_train, flipped
    out["similarity"] = class_similarity(store, train)
    print(f"[seed {seed}] students on the audit's relabelled labels", flush=True)
    for family, mode, label in RELABEL_MODES:
        key = f"hard samples/{label}"
        result = train_student(key, family, mode, relabelled, **students)
        result.pop("trainer")
        out["runs"][key] = result


def summarise(results: list[dict], demo: DemoArguments) -> dict:
    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    table = {}
    for key in results[0]["runs"]:
        runs = [r["runs"][key] for r in results]
        mean, std = stats([r["accuracy"] for r in runs])
        table[key] = {
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracies": [r["accuracy"] for r in runs],
            "teacher_agreement_mean": stats([r["agreement"] for r in runs])[0],
            "wall_s_mean": stats([r["wall_s"] for r in runs])[0],
            "step_ms_mean": stats([r["step_ms"] for r in runs])[0],
            "history_mean": np.mean([r["history"] for r in runs], axis=0).tolist(),
        }
    teacher_mean, teacher_std = stats([r["teacher_accuracy"] for r in results])
    return {
        "settings": dataclasses.asdict(demo),
        "seeds": [r["seed"] for r in results],
        "teacher_accuracy_mean": teacher_mean,
        "teacher_accuracy_std": teacher_std,
        "logit_saving_s_mean": stats([r["logit_saving_s"] for r in results])[0],
        "store_bytes": results[0]["store_bytes"],
        "store_records": results[0]["store_records"],
        "store_bytes_per_record": results[0]["store_bytes"] / results[0]["store_records"],
        "flipped_labels": results[0]["flipped_labels"],
        "runs": table,
        "audit": summarise_audit(results),
    }


def summarise_audit(results: list[dict]) -> dict:
    """The audit's figures (mean over seeds, std of precision and recall) and seed 0's class similarity."""
    audits = [r["audit"] for r in results]
    summary = {key: statistics.fmean([a[key] for a in audits]) for key in audits[0]}
    for key in ("precision", "recall"):
        if key in summary:
            values = [a[key] for a in audits]
            summary[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    similarity = results[0]["similarity"]
    summary["nearest"] = {
        similarity.name(c): [[similarity.name(k), p] for k, p in row] for c, row in enumerate(similarity.nearest(2))
    }
    summary["pairs"] = [[similarity.name(a), similarity.name(b), p] for a, b, p in similarity.pairs(6)]
    return summary


def tools_markdown(summary: dict, similarity_table: str) -> str:
    """results.md's sections on the hard-sample audit and the class similarity."""
    a, n = summary["audit"], len(summary["seeds"])

    def pct(key: str) -> str:
        return f"{100 * a[key]:.1f}%" + (f" ± {100 * a[key + '_std']:.1f}" if n > 1 else "")

    lines = ["## Hard-sample audit (from the store alone)", ""]
    if "precision" in a:
        lines.append(
            f"{a['wrong']:.0f} of the training labels were made wrong. The audit (a label's mean teacher probability over "
            f"the {summary['settings']['stored_epochs']} stored epochs below {a['threshold']:g}, or the label outside the "
            f"stored top-{summary['settings']['topk']} in most of them) flagged {a['flagged']:.0f}: precision "
            f"{pct('precision')}, recall {pct('recall')}{' (mean ± std over seeds)' if n > 1 else ''}, in "
            f"{a['seconds']:.2f} s."
        )
    lines += [
        "",
        f"Relabelling the suspects whose teacher class has at least {100 * RELABEL_CONFIDENCE:.0f}% mean probability "
        f"changed {a['relabelled']:.0f} labels, {a['relabelled_to_truth']:.0f} of them to the true class: wrong "
        f"training labels {a['wrong_before']:.0f} -> {a['wrong_after_relabel']:.0f}. The table's audit-relabelled rows "
        "are labels-only students trained on that copy. Figures: audit_precision_recall.png, audit_suspects.png "
        "(all suspects in audit_suspects.csv).",
        "",
        "## Class similarity (the teacher's mean distribution over each digit's stored views)",
        "",
        similarity_table.rstrip(),
        "",
        "Most confused pairs: " + ", ".join(f"{x}/{y} ({100 * p:.1f}%)" for x, y, p in a["pairs"]) + ". Heatmap: "
        "similarity.png.",
        "",
    ]
    return "\n".join(lines)


def write_tool_outputs(result: dict, output_dir: Path) -> None:
    """Seed 0's audit figures and suspects table, and its class-similarity heatmap."""
    audit, flipped = result["audit_result"], result["flipped"]
    audit.to_csv(output_dir / "audit_suspects.csv")
    plot_suspects(audit, result["audited_dataset"], output_dir / "audit_suspects.png", wrong_ids=flipped)
    if len(flipped):
        plot_precision_recall(
            audit.precision_recall_curve(flipped), output_dir / "audit_precision_recall.png",
            operating_point={**audit.precision_recall(flipped), "threshold": audit.threshold},
            title="digits: audit of 20% flipped labels, from the stored teacher",
        )  # fmt: skip
    plot_class_similarity(result["similarity"], output_dir / "similarity.png")


def markdown_table(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [
        f"Digits (1,197 train / 600 test, {summary['settings']['image_size']}x{summary['settings']['image_size']}), "
        f"{summary['settings']['epochs']} TinyViT / {summary['settings']['deit_epochs']} DeiT epochs, "
        f"{n} seed{'s' if n > 1 else ''}"
        + (" (mean ± std)" if n > 1 else "")
        + f". Teacher test_resnet: {100 * summary['teacher_accuracy_mean']:.1f}%"
        + (f" ± {100 * summary['teacher_accuracy_std']:.1f}" if n > 1 else "")
        + f". Stored logits: top-{summary['settings']['topk']} of 10, {summary['settings']['stored_epochs']} epochs, "
        f"{summary['store_bytes']:,} bytes ({summary['store_bytes_per_record']:.1f} B/record).",
        "",
        "| setting | student | test accuracy (%) | agreement with teacher (%) | step (ms) | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in summary["runs"].items():
        setting, label = key.split("/", 1)
        acc = f"{100 * row['accuracy_mean']:.1f}" + (f" ± {100 * row['accuracy_std']:.1f}" if n > 1 else "")
        agreement = "" if row["teacher_agreement_mean"] is None else f"{100 * row['teacher_agreement_mean']:.1f}"
        reused = setting != "clean" and label in {lab for fam, mode, lab in MODES if (fam, mode) in LABEL_FREE}
        label = label + (" (uses no labels: same run as clean)" if reused else "")
        lines.append(f"| {setting} | {label} | {acc} | {agreement} | {row['step_ms_mean']:.0f} | {row['wall_s_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, setting in zip(axes, SETTINGS):
        for key, row in summary["runs"].items():
            if key.startswith(setting + "/"):
                history = row["history_mean"]
                ax.plot(range(1, len(history) + 1), [100 * a for a in history], marker="o", label=key.split("/", 1)[1])
        ax.axhline(100 * summary["teacher_accuracy_mean"], color="k", linestyle="--", label="teacher")
        ax.set_title("clean labels" if setting == "clean" else f"hard samples: {100 * summary['settings']['noise']:.0f}% wrong labels")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")  # the corner no curve reaches
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_student(trainer, summary: dict, folder: Path, demo: DemoArguments) -> None:
    """The stored-logit TinyViT as a Hub-ready folder: config, safetensors, processor, card with results."""
    trainer.save_model(str(folder))
    # The same whole-image evaluation as eval_recipe: resize to the training size, no crop margin.
    processor = tinyvit_image_processor(demo.image_size, crop_pct=1.0)
    processor.save_pretrained(str(folder))
    row = summary["runs"]["clean/TinyViT, stored logits (no teacher)"]
    write_model_card(
        folder,
        model_id="hf_tinyvit/tinyvit-digits-distilled",
        datasets=["sklearn-digits"],
        tags=["tinyvit", "knowledge-distillation", "fast-pretraining-distillation"],
        description=(
            f"A {trainer.model.num_parameters() / 1e6:.2f}M-parameter TinyViT trained on scikit-learn's handwritten digits "
            "only from a test_resnet teacher's "
            "stored top-3 probabilities (TinyViT's fast pretraining distillation: no teacher in memory, no labels)."
        ),
        eval_results={"accuracy": row["accuracy_mean"]},
        eval_dataset=("sklearn-digits", "scikit-learn digits (600 test images)"),
        custom_code=True,
        extra_sections=[("Demo results", markdown_table(summary))],
    )


def main(argv=None) -> dict:
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    output_dir = Path(demo.output_dir)
    work = output_dir / "work"
    if work.exists():
        shutil.rmtree(work)  # our own scratch space from an earlier run; never the user's files
    data = load_image_dataset("digits")
    if demo.max_train_samples:
        data["train"] = data["train"].select(range(min(demo.max_train_samples, len(data["train"]))))
    if demo.max_eval_samples:
        data["test"] = data["test"].select(range(min(demo.max_eval_samples, len(data["test"]))))

    start = time.perf_counter()
    with warnings.catch_warnings():
        # DeiT trains past the stored epochs on purpose; each of its runs would warn that it cycles them.
        warnings.filterwarnings("ignore", message="epoch .* was not saved in store")
        results = [run_seed(seed, demo, data, work / f"seed{seed}") for seed in range(demo.seeds)]
    summary = summarise(results, demo)
    summary["total_wall_s"] = time.perf_counter() - start

    output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary)
    tools = tools_markdown(summary, results[0]["similarity"].to_markdown(2))
    (output_dir / "results.md").write_text(
        "# hf_tinyvit demo: fast pretraining distillation on digits\n\n" + table + "\n" + tools
    )
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    plot(summary, output_dir / "accuracy.png")
    write_tool_outputs(results[0], output_dir)
    # Seed 0's store stays, so that `hf-tinyvit audit / similarity / search --store` can run on it.
    kept_store = output_dir / "teacher-logits"
    shutil.rmtree(kept_store, ignore_errors=True)
    shutil.copytree(work / "seed0" / "teacher-logits", kept_store)

    folder = output_dir / "tinyvit-digits-distilled"
    save_student(results[0]["stored_student"], summary, folder, demo)
    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    examples = data["test"].select(range(4))
    print("\npipeline('image-classification') on the saved student:")
    for image, label in zip(examples["image"], examples["label"]):
        best = classifier(image.convert("RGB"), top_k=1)[0]
        print(f"  true {label}  predicted {best['label']} ({best['score']:.2f})")
    print("\n" + table + "\n" + tools)
    print(
        f"Wrote {output_dir}/results.md, results.json, accuracy.png, the audit and similarity figures, "
        f"teacher-logits/ and {folder}/ in {summary['total_wall_s']:.0f} s"
    )
    shutil.rmtree(work, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
