"""`hf-tinyvit`, the package's command line: `save-logits` (run a teacher once and store its sparse top-k
probabilities), `distill` (train a student with `DistillationTrainer`) and `convert` (official or timm
TinyViT / DeiT checkpoints to transformers folders). Each subcommand also runs under
`accelerate launch -m hf_tinyvit.cli <subcommand> ...`; the scripts in examples/ and conversion/ are
thin wrappers over the same code."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main", "save_logits_parser"]

RECIPES = ("tinyvit_pretrain", "deit", "digits")


def save_logits_parser(prog: str = "hf-tinyvit save-logits") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a teacher once over replayable augmented views and store its sparse top-k probabilities. "
        "Rerunning the same command resumes: complete shards are skipped. Any number of processes gives the same "
        "store, and --start_epoch/--end_epoch let several machines split the epochs.",
    )
    parser.add_argument("--teacher", required=True, help="transformers model folder or Hub id, or timm:<model_name>")
    parser.add_argument("--teacher_weights", default=None, help="safetensors or .pth state dict for a timm: teacher")
    parser.add_argument(
        "--dataset_name", default="digits", help="digits, imagefolder:<dir>, a save_to_disk folder or a Hub name"
    )
    parser.add_argument("--split", default="train", help="which split of the dataset to run the teacher on")
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
    return parser


def save_logits(argv: list[str] | None = None) -> str:
    """`hf-tinyvit save-logits`: returns the store's path."""
    from accelerate import Accelerator

    from .augment.recipe import AugmentationRecipe
    from .datasets import load_image_dataset
    from .store.writer import save_teacher_logits
    from .teachers import load_teacher

    args = save_logits_parser().parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(
        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING, format="%(message)s"
    )
    # every rank reports the shards it wrote, so a launch can show that all of them took part
    logging.getLogger("hf_tinyvit.store.writer").setLevel(logging.INFO)
    recipe = getattr(AugmentationRecipe, args.recipe)(args.image_size)
    # The split is fixed (split seed 0), as in `distill`: --seed drives the augmentation only, so a store
    # saved with any --seed matches the dataset a student trains on.
    dataset = load_image_dataset(args.dataset_name)[args.split]
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
    )
    if args.push_to_hub and accelerator.is_main_process:
        from .store.reader import TeacherLogitStore

        TeacherLogitStore.open(path, cache_dir=args.cache_dir).push_to_hub(args.push_to_hub)
    return path


def convert_parser(prog: str = "hf-tinyvit convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an official or timm checkpoint (TinyViT: microsoft/Cream or timm layout; DeiT: "
        "facebookresearch/deit or timm) into a transformers folder: config with labels, safetensors, reference "
        "preprocessing and a model card. The family follows from --variant.",
    )
    parser.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin (torch.load weights_only) or .safetensors")
    parser.add_argument(
        "--variant",
        required=True,
        help="timm name: tiny_vit_{5m,11m,21m}_{224,384,512}[.tag] or deit_{tiny,small,base}_distilled_patch16_{224,384}",
    )
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    parser.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID", default=None)
    return parser


def convert(argv: list[str] | None = None):
    """`hf-tinyvit convert`: returns the output folder."""
    from pathlib import Path

    import torch

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

    if is_tinyvit:
        from .models.tinyvit.convert_tinyvit import convert as convert_tinyvit

        with torch.no_grad():
            model, processor = convert_tinyvit(args.checkpoint, args.variant, args.output_dir)
        print(f"wrote {args.output_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
        if args.push_to_hub:
            model.push_to_hub(args.push_to_hub)
            processor.push_to_hub(args.push_to_hub)
            from huggingface_hub import upload_file

            upload_file(path_or_fileobj=str(Path(args.output_dir) / "README.md"), path_in_repo="README.md",
                        repo_id=args.push_to_hub)  # fmt: skip
            print(f"pushed to https://huggingface.co/{args.push_to_hub}")
        return Path(args.output_dir)

    from .models.deit_distilled.convert_deit_distilled import (
        convert_checkpoint,
        save_converted,
        verify_against_timm,
    )

    model = convert_checkpoint(args.checkpoint, args.variant)
    try:
        import timm  # noqa: F401  (part of the `conversion` extra; the check is skipped without it)
    except ImportError:
        print("timm is not installed: skipped the logit check against timm")
    else:
        difference = verify_against_timm(model, args.checkpoint, args.variant)
        print(f"max |logit difference| against timm: {difference:.2e}")
        if difference > 1e-4:
            raise SystemExit(f"converted logits differ from timm's by {difference:.2e} > 1e-4; nothing written")
    save_converted(model, args.variant, args.output_dir, model_id=args.push_to_hub)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=args.push_to_hub, folder_path=args.output_dir)
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    print(f"wrote {args.output_dir}")
    return Path(args.output_dir)


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

    from .datasets import corrupt_labels, load_image_dataset
    from .store.reader import TeacherLogitStore
    from .tools.audit import audit_labels

    parser = audit_parser()
    args = parser.parse_args(argv)
    if args.corrupt_labels is not None and not 0.0 < args.corrupt_labels < 1.0:
        parser.error(f"--corrupt_labels {args.corrupt_labels} must lie in (0, 1)")
    if args.top < 1:
        parser.error(f"--top {args.top} must be >= 1")
    store = TeacherLogitStore.open(args.store)
    splits = load_image_dataset(args.dataset)
    dataset = splits[args.split]
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

    from .datasets import load_image_dataset
    from .store.reader import TeacherLogitStore
    from .tools.similarity import class_similarity

    parser = similarity_parser()
    args = parser.parse_args(argv)
    if args.nearest < 1:
        parser.error(f"--nearest {args.nearest} must be >= 1")
    store = TeacherLogitStore.open(args.store)
    dataset = None if args.dataset == "none" else load_image_dataset(args.dataset)[args.split]
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

    from .datasets import load_image_dataset
    from .tools.search import ProxySettings, SearchSpace, search_students

    parser = search_parser()
    args = parser.parse_args(argv)
    if args.num_threads is not None:
        if args.num_threads < 1:
            parser.error(f"--num_threads {args.num_threads} must be >= 1")
        torch.set_num_threads(args.num_threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hf_tinyvit.tools.search").setLevel(logging.INFO)
    proxy_fields = {
        "train_samples": args.train_samples, "eval_samples": args.eval_samples, "epochs": args.proxy_epochs,
        "batch_size": args.proxy_batch_size, "learning_rate": args.proxy_learning_rate, "seed": args.proxy_seed,
    }  # fmt: skip
    try:
        proxy = ProxySettings(**{k: v for k, v in proxy_fields.items() if v is not None})
        space = SearchSpace(head_dim=args.head_dim, width_step=args.head_dim, min_width=args.head_dim)
    except ValueError as error:
        parser.error(str(error))
    dataset = load_image_dataset(args.dataset)[args.split]
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
    "convert": (convert, "convert an official or timm TinyViT / DeiT checkpoint"),
    "search": (search, "search student architectures under a budget, scored from a store"),
    "audit": (audit, "flag labels the stored teacher disagrees with (hard samples)"),
    "similarity": (similarity, "class-by-class mean teacher distribution and nearest classes"),
}


def main(argv: list[str] | None = None):
    """Run one subcommand; `argv` defaults to `sys.argv[1:]`. Returns what the subcommand returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12s} {summary}" for name, (_, summary) in COMMANDS.items()]
        usage = "usage: hf-tinyvit {" + ",".join(COMMANDS) + "} ...\n\nsubcommands:\n" + "\n".join(lines)
        usage += "\n\n`hf-tinyvit <subcommand> --help` lists a subcommand's flags."
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"hf-tinyvit: unknown subcommand {argv[0]!r}\n\n{usage}")
        print(usage)
        return None
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


def _console_main() -> None:
    main()


if __name__ == "__main__":
    main()
