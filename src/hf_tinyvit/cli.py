"""`hf-tinyvit`, the package's command line: `save-logits` (run a teacher once and store its sparse top-k
probabilities), `distill` (train a student with `DistillationTrainer`), `convert` (official, timm or fine-tuned
TinyViT / DeiT checkpoints to transformers folders), `export-deit` (a DeiT-distilled folder to stock
transformers DeiT), `inspect` (what a store or a model folder holds), `verify` (a store's integrity), and the
tools a store makes possible: `search` (students under a budget), `audit` (hard samples) and `similarity`
(class neighbours). Each subcommand also runs under
`accelerate launch -m hf_tinyvit.cli <subcommand> ...`; the scripts in examples/ and conversion/ are thin
wrappers over the same code. Results go to stdout, messages (`--verbosity`) to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import log

__all__ = ["COMMANDS", "main", "save_logits_parser", "verify_parser"]

RECIPES = ("tinyvit_pretrain", "deit", "digits")


def save_logits_parser(prog: str = "hf-tinyvit save-logits") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a teacher once over replayable augmented views and store its sparse top-k probabilities. "
        "Rerunning the same command resumes: complete shards are skipped. Any number of processes (one "
        "`accelerate launch`, on one machine or several) gives the same store; one saving run writes a store at a "
        "time (writer.lock), and --start_epoch/--end_epoch add epochs to it run after run.",
    )
    parser.add_argument("--teacher", required=True, help="transformers model folder or Hub id, or timm:<model_name>")
    parser.add_argument("--teacher_weights", default=None, help="safetensors or .pth state dict for a timm: teacher")
    parser.add_argument(
        "--dataset_name", default="digits", help="digits, imagefolder:<dir>, a save_to_disk folder or a Hub name"
    )
    parser.add_argument(
        "--split", default="train", help="which split of the dataset to run the teacher on (all of it: no hold-out)"
    )
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--recipe", default="tinyvit_pretrain", choices=RECIPES, help="augmentation preset")
    parser.add_argument("--image_size", type=int, default=224, help="the student's input resolution")
    parser.add_argument("--num_epochs", type=int, default=1, help="epochs the store is planned to hold")
    parser.add_argument("--start_epoch", type=int, default=0)
    parser.add_argument("--end_epoch", type=int, default=None, help="exclusive; default num_epochs")
    parser.add_argument(
        "--topk", type=int, default=10, help="probabilities kept per record (paper: 10 for 1k, 100 for 21k)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0, help="seeds every augmentation: (seed, epoch, sample_id)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--chunk_size", type=int, default=16384, help="samples per Parquet shard")
    parser.add_argument("--max_samples", type=int, default=None, help="use only the first N samples")
    parser.add_argument("--check_samples", type=int, default=0, help="replay N stored records and re-run the teacher")
    parser.add_argument("--cache_dir", default=None, help="datasets cache for reading the store back in the check")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="upload the store as a Hub dataset repo")
    parser.add_argument(
        "--lock_timeout", type=float, default=0.0,
        help="seconds to wait for another saving run that holds the store's writer.lock (default 0: fail at once)",
    )  # fmt: skip
    parser.add_argument(
        "--topk_encoding", default="float16", choices=("float16", "sqrt8"),
        help="how the top-k probabilities are stored: float16, or sqrt8 (8-bit codes of sqrt(p) with delta-coded "
        "class indices, about 0.6x the bytes; see the README's Performance section for the error it adds)",
    )  # fmt: skip
    parser.add_argument(
        "--streaming", action="store_true",
        help="stream the images (image folders, Parquet folders and Hub ids read from their files; each process and "
        "DataLoader worker reads only the source shards under its chunks) instead of loading the split: the same "
        "store, byte for byte; not with Mixup/CutMix",
    )  # fmt: skip
    parser.add_argument(
        "--stream_shards", type=int, default=8,
        help="shards an in-memory or saved dataset (digits, save_to_disk) is cut into when streamed",
    )
    return parser


def save_logits(argv: list[str] | None = None) -> str:
    """`hf-tinyvit save-logits`: returns the store's path."""
    from accelerate import Accelerator

    from .augment.recipe import AugmentationRecipe, check_image_size
    from .datasets import load_image_dataset, select_split
    from .store.writer import save_teacher_logits
    from .teachers import load_teacher

    parser = save_logits_parser()
    args = parser.parse_args(argv)
    try:  # settings a run checks later are checked here too, so a typo costs no dataset or teacher load
        check_image_size(args.image_size)
    except ValueError as error:
        parser.error(str(error))
    accelerator = Accelerator()
    # every rank reports the shards it wrote, so a launch can show that all of them took part
    log.get_logger("hf_tinyvit.store.writer").setLevel(logging.INFO)
    recipe = getattr(AugmentationRecipe, args.recipe)(args.image_size)
    # The teacher pass covers the whole split (no hold-out), so any student can train on all of it;
    # --seed drives the augmentation only.
    if args.streaming:
        from .training.distill import stream_image_dataset

        if args.stream_shards < 1:
            parser.error(f"--stream_shards {args.stream_shards} must be >= 1")
        dataset = stream_image_dataset(args.dataset_name, args.split, args.stream_shards)
    else:
        dataset = select_split(
            load_image_dataset(args.dataset_name, validation_split_percentage=0), args.split, repr(args.dataset_name)
        )
    teacher = load_teacher(args.teacher, weights=args.teacher_weights, input_mean=recipe.mean, input_std=recipe.std)
    path = save_teacher_logits(
        teacher,
        dataset,
        args.output_dir,
        recipe=recipe,
        topk=args.topk,
        num_epochs=args.num_epochs,
        start_epoch=args.start_epoch,
        end_epoch=args.end_epoch,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        chunk_size=args.chunk_size,
        max_samples=args.max_samples,
        check_samples=args.check_samples,
        image_column=args.image_column,
        accelerator=accelerator,
        cache_dir=args.cache_dir,
        lock_timeout=args.lock_timeout,
        topk_encoding=args.topk_encoding,
    )
    if args.push_to_hub and accelerator.is_main_process:
        from .store.reader import TeacherLogitStore

        TeacherLogitStore.open(path, cache_dir=args.cache_dir).push_to_hub(args.push_to_hub)
    return path


def verify_parser(prog: str = "hf-tinyvit verify") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a whole teacher-logit store: its metadata (schema, bounds, its own checksum), every "
        "shard's size and sha256, every record (top-k rows, sample ids, seeds, Mixup partners), and, given the "
        "dataset, every image against the digest stored with its records. Files the metadata does not list are "
        "reported. Exits 0 when the store is OK, 1 when something is damaged (each damage named).",
    )
    parser.add_argument("store", help="store folder (or Hub dataset id)")
    parser.add_argument("--dataset_name", default=None, help="also check every image of this dataset (its --split)")
    parser.add_argument("--split", default="train", help="the dataset's split the store was saved from")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--max_samples", type=int, default=None, help="the store was saved with --max_samples N")
    return parser


def verify(argv: list[str] | None = None):
    """`hf-tinyvit verify`: prints the report; returns it, or exits with status 1 when the store is damaged."""
    from .store.verify import verify_store

    parser = verify_parser()
    args = parser.parse_args(argv)
    dataset = None
    if args.dataset_name is not None:
        from .datasets import load_image_dataset, select_split

        dataset = select_split(
            load_image_dataset(args.dataset_name, validation_split_percentage=0), args.split, repr(args.dataset_name)
        )
        if args.max_samples is not None:
            if args.max_samples < 1:
                parser.error(f"--max_samples {args.max_samples} must be >= 1")
            dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    report = verify_store(args.store, dataset=dataset, image_column=args.image_column)
    print(report.summary())
    if not report.ok:
        raise SystemExit(1)
    return report


def _push_folder(folder, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    print(f"pushed {folder} to https://huggingface.co/{repo_id}")


def _parameter_count(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"


def convert_parser(prog: str = "hf-tinyvit convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a TinyViT checkpoint (microsoft/Cream or timm layout) or a distilled DeiT checkpoint "
        "(facebookresearch/deit or timm layout) into a transformers folder: config with the class names, "
        "safetensors, reference preprocessing, the modeling code (it loads with trust_remote_code=True where "
        "hf_tinyvit is not installed) and a model card. The family follows from --variant; the class count "
        "from the checkpoint's head, so fine-tuned heads convert too; a checkpoint without a head becomes "
        "TinyViTModel / TinyViTBackbone (DeiT: its base model). Training checkpoints wrapped in model / "
        "state_dict / model_ema, or saved from DistributedDataParallel (module. prefixes), are unwrapped.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help=".pth/.pt/.bin (read with torch.load(weights_only=True)) or .safetensors"
    )
    parser.add_argument(
        "--variant",
        required=True,
        help="the architecture, by timm name: tiny_vit_{5m,11m,21m}_{224,384,512}[.tag] or "
        "deit_{tiny,small,base}_distilled_patch16_224, deit_base_distilled_patch16_384",
    )
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True, help="folder to write")
    parser.add_argument(
        "--id2label",
        default=None,
        metavar="FILE",
        help="class names: a JSON file (a list, or an object mapping class numbers to names) or a text file with "
        "one name per line; it must name as many classes as the head has. Default: ImageNet-1k / -21k names for "
        "1,000 / 21,841 classes, LABEL_<i> otherwise",
    )
    parser.add_argument(
        "--base-model",
        "--base_model",
        dest="base_model",
        default=None,
        metavar="HUB_ID",
        help="the Hub model the checkpoint was fine-tuned from, for the card's base_model (default: timm/<variant> "
        "when the variant carries a tag, timm/<variant>.fb_in1k for a 1,000-class DeiT)",
    )
    parser.add_argument(
        "--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID", default=None,
        help="also upload the folder to this Hub model repo (the card names it)",
    )  # fmt: skip
    return parser


def convert(argv: list[str] | None = None):
    """`hf-tinyvit convert`: returns the output folder."""
    from pathlib import Path

    import torch

    from .hub import read_id2label
    from .models.deit_distilled.convert_deit_distilled import VARIANTS as DEIT_VARIANTS
    from .models.tinyvit.convert_tinyvit import parse_variant

    parser = convert_parser()
    args = parser.parse_args(argv)
    is_tinyvit = args.variant.startswith("tiny_vit_")
    if is_tinyvit:
        try:
            parse_variant(args.variant)
        except ValueError as error:
            parser.error(str(error))
    elif args.variant not in DEIT_VARIANTS:
        parser.error(
            f"--variant {args.variant!r} is neither a TinyViT (tiny_vit_{{5m,11m,21m}}_{{224,384,512}}[.tag]) nor "
            f"one of the distilled DeiTs {sorted(DEIT_VARIANTS)}"
        )
    id2label = read_id2label(args.id2label) if args.id2label else None
    names = {"model_id": args.push_to_hub, "base_model": args.base_model}

    if is_tinyvit:
        from .models.tinyvit.convert_tinyvit import convert as convert_tinyvit

        with torch.no_grad():
            model, _ = convert_tinyvit(args.checkpoint, args.variant, args.output_dir, id2label=id2label, **names)
    else:
        from .models.deit_distilled.convert_deit_distilled import (
            convert_checkpoint,
            save_converted,
            verify_against_timm,
        )

        model = convert_checkpoint(args.checkpoint, args.variant, id2label=id2label)
        try:
            import timm  # noqa: F401  (part of the `conversion` extra; the check is skipped without it)
        except ImportError:
            logger.warning("timm is not installed: skipped the logit check against timm")
        else:
            difference = verify_against_timm(model, args.checkpoint, args.variant)
            print(f"max |difference| against timm on the same weights: {difference:.2e}")
            if difference > 1e-4:
                raise SystemExit(f"converted outputs differ from timm's by {difference:.2e} > 1e-4; nothing written")
        save_converted(model, args.variant, args.output_dir, **names)
    print(f"wrote {args.output_dir}: {type(model).__name__}, {_parameter_count(model)}")
    if args.push_to_hub:
        _push_folder(args.output_dir, args.push_to_hub)
    return Path(args.output_dir)


def export_deit_parser(prog: str = "hf-tinyvit export-deit") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a DeiT-distilled model (a folder or Hub id written by hf_tinyvit: save_pretrained, "
        "the trainer, the converter) to a folder that stock transformers loads with no remote code and no "
        "hf_tinyvit: DeiTForImageClassificationWithTeacher (inference: late fusion of the two heads), its image "
        "processor and a model card. The exported logits are checked against the source model's.",
    )
    parser.add_argument("--model", required=True, help="the DeiT-distilled model folder or Hub id")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True, help="folder to write")
    parser.add_argument(
        "--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID", default=None,
        help="also upload the folder to this Hub model repo (the card names it)",
    )  # fmt: skip
    return parser


def export_deit(argv: list[str] | None = None):
    """`hf-tinyvit export-deit`: returns the output folder."""
    from pathlib import Path

    import torch

    from .hub import public_name, write_model_card
    from .models.deit_distilled import DeiTDistilledForImageClassification

    args = export_deit_parser().parse_args(argv)
    model = DeiTDistilledForImageClassification.from_pretrained(args.model).eval()
    model.save_as_transformers_deit(args.output_dir)
    from transformers import DeiTForImageClassificationWithTeacher

    stock = DeiTForImageClassificationWithTeacher.from_pretrained(args.output_dir).eval()
    size = model.config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        difference = float((stock(pixels).logits - model(pixels).logits).abs().max())
    if difference > 1e-5:
        raise SystemExit(f"exported logits differ from the source model's by {difference:.2e}")
    write_model_card(
        args.output_dir,
        model_id=args.push_to_hub or Path(args.output_dir).name,
        base_model=args.model,
        tags=["deit", "knowledge-distillation"],
        description=(
            f"Stock transformers `DeiTForImageClassificationWithTeacher` exported by hf_tinyvit from the "
            f"DeiT-distilled model `{public_name(args.model)}` ({model.config.num_labels} classes): it loads with "
            "transformers alone, without remote code. It is for inference (logits average the class and "
            "distillation heads); fine-tune the source model with hf_tinyvit to train the distillation token."
        ),
    )
    print(f"wrote {args.output_dir}: DeiTForImageClassificationWithTeacher, max |logit difference| {difference:.1e}")
    if args.push_to_hub:
        _push_folder(args.output_dir, args.push_to_hub)
    return Path(args.output_dir)


def inspect_parser(prog: str = "hf-tinyvit inspect") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Describe a teacher-logit store (records, epochs, top-k, bytes per record, teacher, recipe, "
        "the histogram of the teacher's top-1 classes) or a model folder (family, preset, head, classes, "
        "parameters, remote code, preprocessing). Reads the files only: no model is built.",
    )
    parser.add_argument("path", help="a store folder or a store's Hub dataset id, or a model folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--top", type=int, default=20, help="classes shown in the text histogram (most frequent first; default 20)"
    )
    return parser


def inspect(argv: list[str] | None = None) -> dict:
    """`hf-tinyvit inspect`: returns the description it prints."""
    from .inspection import describe_model_folder, describe_store, format_description

    parser = inspect_parser()
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top {args.top} must be >= 1")
    path = args.path
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        description = describe_model_folder(path)
    elif os.path.isdir(path) and not os.path.isfile(os.path.join(path, "metadata.json")):
        parser.error(f"{path!r} holds neither a store (metadata.json) nor a model (config.json)")
    else:
        description = describe_store(path)
    print(json.dumps(description, indent=2) if args.json else format_description(description, top=args.top))
    return description


def distill(argv: list[str] | None = None):
    """`hf-tinyvit distill`: every `DistillationTrainingArguments` flag plus the model and data flags."""
    from .training.distill import distill as run
    from .training.distill import parse_distill_args

    return run(*parse_distill_args(argv))


def _store_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="a teacher-logit store (folder or Hub dataset id)")
    parser.add_argument(
        "--dataset", "--dataset_name", dest="dataset", default="digits",
        help="the dataset the store was built from: digits, imagefolder:<dir>, a save_to_disk folder or a Hub name",
    )  # fmt: skip
    parser.add_argument("--split", default="train", help="the split the teacher ran on")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--epochs", type=int, nargs="+", default=None, help="stored epochs to read (default: all)")
    parser.add_argument("--max_samples", type=int, default=None, help="the store was saved with --max_samples N")


def _store_source(args, parser: argparse.ArgumentParser):
    """(splits, the dataset the store was built from): the whole `--split` (a store's teacher pass holds nothing
    out), cut to `--max_samples` as save-logits cut it."""
    from .datasets import load_image_dataset, select_split

    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max_samples {args.max_samples} must be >= 1")
    splits = load_image_dataset(args.dataset, validation_split_percentage=0)
    dataset = select_split(splits, args.split, repr(args.dataset))
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    return splits, dataset


def audit_parser(prog: str = "hf-tinyvit audit") -> argparse.ArgumentParser:
    from .tools.audit import DEFAULT_AUDIT_THRESHOLD, DEFAULT_MIN_TOPK_FRACTION

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Hard-sample audit: flag the labels the stored teacher keeps disagreeing with across epochs "
        "(mean probability below --threshold, or outside the stored top-k in most epochs), ranked by the teacher's "
        "confidence in another class. Writes suspects.csv, suspects.png and audit.json; runs no teacher.",
    )
    _store_dataset_arguments(parser)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--threshold", type=float, default=DEFAULT_AUDIT_THRESHOLD,
                        help="flag labels whose mean stored teacher probability is below this")  # fmt: skip
    parser.add_argument(
        "--min_topk_fraction", type=float, default=DEFAULT_MIN_TOPK_FRACTION,
        help="flag labels found in the stored top-k in fewer than this share of the epochs",
    )  # fmt: skip
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--top", type=int, default=16, help="suspects shown in suspects.png")
    parser.add_argument(
        "--corrupt_labels", type=float, default=None, metavar="FRACTION",
        help="measure the audit: first make this share of the labels wrong (hf_tinyvit.corrupt_labels), then "
        "report precision and recall against them and write precision_recall.png",
    )  # fmt: skip
    parser.add_argument("--corrupt_seed", type=int, default=0, help="seed of --corrupt_labels")
    parser.add_argument(
        "--relabel", default=None, metavar="DIR",
        help="write a copy of the dataset (save_to_disk) whose confident suspects carry the teacher's class",
    )  # fmt: skip
    parser.add_argument("--relabel_confidence", type=float, default=0.5,
                        help="relabel a suspect when the teacher's mean probability of its class is at least this")  # fmt: skip
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG files (no matplotlib needed)")
    return parser


def audit(argv: list[str] | None = None):
    """`hf-tinyvit audit`: returns the `LabelAudit`."""
    import json
    from pathlib import Path

    from .datasets import corrupt_labels
    from .store.reader import TeacherLogitStore
    from .tools.audit import audit_labels

    parser = audit_parser()
    args = parser.parse_args(argv)
    if args.corrupt_labels is not None and not 0.0 < args.corrupt_labels < 1.0:
        parser.error(f"--corrupt_labels {args.corrupt_labels} must lie in (0, 1)")
    if args.top < 1:
        parser.error(f"--top {args.top} must be >= 1")
    if args.relabel and ("+" in args.split or args.max_samples is not None):
        parser.error("--relabel writes the whole dataset with its --split relabelled: drop --max_samples and joined splits")
    store = TeacherLogitStore.open(args.store)
    splits, dataset = _store_source(args, parser)
    wrong = None
    if args.corrupt_labels is not None:
        dataset, wrong = corrupt_labels(dataset, args.corrupt_labels, args.corrupt_seed, label_column=args.label_column)
    result = audit_labels(
        store, dataset, label_column=args.label_column, image_column=args.image_column, threshold=args.threshold,
        min_topk_fraction=args.min_topk_fraction, epochs=args.epochs,
    )  # fmt: skip
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    result.to_csv(output / "suspects.csv")
    summary = {
        "store": store.path, "dataset": args.dataset, "split": args.split, "samples": len(result),
        "threshold": args.threshold, "min_topk_fraction": args.min_topk_fraction,
        "suspects": int(result.suspect.sum()), "unjudged (mixed records only)": int((~result.counted).sum()),
    }  # fmt: skip
    if wrong is not None:
        summary.update(corrupt_labels=args.corrupt_labels, corrupt_seed=args.corrupt_seed,
                       **result.precision_recall(wrong))  # fmt: skip
    if args.relabel:
        relabelled, changed = result.relabelled(dataset, args.relabel_confidence, label_column=args.label_column)
        splits[args.split] = relabelled
        splits.save_to_disk(args.relabel)
        summary.update(relabelled=len(changed), relabel_confidence=args.relabel_confidence, relabel_dir=args.relabel)
    if not args.no_plots:
        from .tools.plots import plot_precision_recall, plot_suspects

        plot_suspects(result, dataset, output / "suspects.png", count=args.top, wrong_ids=wrong,
                      image_column=args.image_column)  # fmt: skip
        if wrong is not None:
            point = {**result.precision_recall(wrong), "threshold": args.threshold}
            plot_precision_recall(result.precision_recall_curve(wrong), output / "precision_recall.png",
                                  operating_point=point)  # fmt: skip
    (output / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(result.table().select(range(min(10, int(result.suspect.sum())))).to_pandas().to_string(index=False))
    return result


def similarity_parser(prog: str = "hf-tinyvit similarity") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Class similarity from a store: the teacher's mean distribution over each class's stored views "
        "(a heatmap) and each class's nearest classes. With --dataset a record's class is its label; with "
        "--dataset none, the teacher's own top-1. Writes similarity.png, similarity.md and similarity.json.",
    )
    _store_dataset_arguments(parser)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--nearest", type=int, default=2, help="nearest classes listed per class")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG file (no matplotlib needed)")
    return parser


def similarity(argv: list[str] | None = None):
    """`hf-tinyvit similarity`: returns the `ClassSimilarity`."""
    import json
    from pathlib import Path

    from .store.reader import TeacherLogitStore
    from .tools.similarity import class_similarity

    parser = similarity_parser()
    args = parser.parse_args(argv)
    if args.nearest < 1:
        parser.error(f"--nearest {args.nearest} must be >= 1")
    store = TeacherLogitStore.open(args.store)
    dataset = None if args.dataset == "none" else _store_source(args, parser)[1]
    result = class_similarity(store, dataset, label_column=args.label_column, image_column=args.image_column,
                              epochs=args.epochs)  # fmt: skip
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table = result.to_markdown(args.nearest)
    (output / "similarity.md").write_text(table)
    payload = {
        "grouped_by": result.grouped_by,
        "records": result.records.tolist(),
        "matrix": [[None if v != v else float(v) for v in row] for row in result.matrix],
        "nearest": [[[c, p] for c, p in row] for row in result.nearest(args.nearest)],
        "pairs": [[a, b, p] for a, b, p in result.pairs(10)],
    }
    (output / "similarity.json").write_text(json.dumps(payload, indent=2) + "\n")
    if not args.no_plots:
        from .tools.plots import plot_class_similarity

        plot_class_similarity(result, output / "similarity.png")
    print(table)
    print("most confused pairs: " + ", ".join(f"{result.name(a)}/{result.name(b)} ({100 * p:.1f}%)"
                                               for a, b, p in result.pairs(6)))  # fmt: skip
    return result


def search_parser(prog: str = "hf-tinyvit search") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Student search: a local search over TinyViT's contraction factors (widths, depths, heads at "
        "--head_dim, windows, MLP ratio, MBConv expansion) from a seed architecture, under a parameter budget and a "
        "throughput floor measured on this device, each candidate scored by a short distillation from the store "
        "(no teacher runs). Writes search.md, search.json, search.png and best-config/.",
    )
    _store_dataset_arguments(parser)
    parser.add_argument("--seed_config", default="tinyvit-micro", help="a TinyViT preset name or config folder")
    parser.add_argument("--max_params", type=float, required=True, help="parameter budget, e.g. 1e6")
    parser.add_argument("--min_throughput", type=float, default=0.0, help="images/s floor on this device")
    parser.add_argument("--candidates", type=int, default=6, help="candidates to score, the seed included")
    parser.add_argument("--max_measured", type=int, default=None, help="stop after measuring this many (10x)")
    parser.add_argument("--batch_size", type=int, default=64, help="batch of the throughput measurement")
    parser.add_argument("--throughput_seconds", type=float, default=1.0,
                        help="timing per candidate; its fastest batch gives the img/s")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--head_dim", type=int, default=32, help="channels per attention head")
    parser.add_argument("--train_samples", type=int, default=None, help="stored samples each candidate trains on")
    parser.add_argument("--eval_samples", type=int, default=None, help="held-out stored samples it is scored on")
    parser.add_argument("--proxy_epochs", type=int, default=None, help="passes over the training samples")
    parser.add_argument("--proxy_batch_size", type=int, default=None)
    parser.add_argument("--proxy_learning_rate", type=float, default=None)
    parser.add_argument("--proxy_seed", type=int, default=None, help="seeds the subset, the order and the inits")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--no_plots", action="store_true", help="skip search.png (no matplotlib needed)")
    return parser


def search(argv: list[str] | None = None):
    """`hf-tinyvit search`: returns the `StudentSearch`."""
    import torch

    from .tools.search import ProxySettings, SearchSpace, search_students

    parser = search_parser()
    args = parser.parse_args(argv)
    if args.num_threads is not None:
        if args.num_threads < 1:
            parser.error(f"--num_threads {args.num_threads} must be >= 1")
        torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.get_logger("hf_tinyvit.tools.search").setLevel(logging.INFO)
    proxy_fields = {
        "train_samples": args.train_samples, "eval_samples": args.eval_samples, "epochs": args.proxy_epochs,
        "batch_size": args.proxy_batch_size, "learning_rate": args.proxy_learning_rate, "seed": args.proxy_seed,
    }  # fmt: skip
    try:
        proxy = ProxySettings(**{k: v for k, v in proxy_fields.items() if v is not None})
        space = SearchSpace(head_dim=args.head_dim, width_step=args.head_dim, min_width=args.head_dim)
    except ValueError as error:
        parser.error(str(error))
    dataset = _store_source(args, parser)[1]
    result = search_students(
        args.store, dataset, seed=args.seed_config, max_params=args.max_params, min_throughput=args.min_throughput,
        num_candidates=args.candidates, space=space, proxy=proxy, batch_size=args.batch_size, device=args.device,
        image_column=args.image_column, max_measured=args.max_measured, throughput_seconds=args.throughput_seconds,
    )  # fmt: skip
    result.save(args.output_dir, plot=not args.no_plots)
    print(result.to_markdown())
    print(f"best: candidate {result.best.index} ({result.best.architecture.describe()}); wrote {args.output_dir}")
    return result


COMMANDS = {
    "save-logits": (save_logits, "run a teacher once and store its sparse top-k probabilities"),
    "distill": (distill, "train a student: stored-logit, hard/soft distillation or fine-tuning"),
    "convert": (convert, "convert a Cream / timm / deit TinyViT or DeiT checkpoint, any head, to a folder"),
    "export-deit": (export_deit, "export a DeiT-distilled folder to stock transformers DeiT (no remote code)"),
    "inspect": (inspect, "describe a teacher-logit store or a model folder"),
    "verify": (verify, "check every byte, record and (given the dataset) image of a teacher-logit store"),
    "search": (search, "search student architectures under a budget, scored from a store"),
    "audit": (audit, "flag labels the stored teacher disagrees with (hard samples)"),
    "similarity": (similarity, "class-by-class mean teacher distribution and nearest classes"),
}

logger = log.get_logger(__name__)


def _usage() -> str:
    lines = [f"  {name:<12s} {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: hf-tinyvit [--verbosity {" + ",".join(log.LEVELS) + "}] {" + ",".join(COMMANDS) + "} ...\n\n"
        "subcommands:\n" + "\n".join(lines) + "\n\n"
        "options:\n"
        "  -h, --help    show this message and exit\n"
        "  --version     print hf_tinyvit's version and exit\n"
        "  --verbosity   messages shown on stderr: hf_tinyvit's and transformers' (default: hf_tinyvit at info,\n"
        "                transformers unchanged; `distill` follows --log_level / --log_level_replica)\n\n"
        "`hf-tinyvit <subcommand> --help` lists a subcommand's flags."
    )


def main(argv: list[str] | None = None):
    """Run one subcommand; `argv` defaults to `sys.argv[1:]`. Returns what the subcommand returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbosity = None
    while argv and argv[0].startswith("--verbosity"):
        option = argv.pop(0)
        value = option.split("=", 1)[1] if "=" in option else (argv.pop(0) if argv else "")
        if value not in log.LEVELS:
            raise SystemExit(f"hf-tinyvit: --verbosity {value!r}; accepted: {', '.join(log.LEVELS)}\n\n{_usage()}")
        verbosity = value
    if argv and argv[0] == "--version":
        from . import __version__

        print(f"hf-tinyvit {__version__}")
        return None
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"hf-tinyvit: unknown subcommand {argv[0]!r}\n\n{_usage()}")
        print(_usage())
        return None
    log.enable_console()
    if verbosity is not None:
        log.set_verbosity(verbosity)
    else:
        log.set_verbosity(logging.INFO, transformers=False)
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


def _console_main() -> None:
    main()


if __name__ == "__main__":
    main()
