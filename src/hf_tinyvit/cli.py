"""`hf-tinyvit`, the package's command line: `save-logits` (run a teacher once and store its sparse top-k
probabilities), `distill` (train a student with `DistillationTrainer`) and `convert` (official or timm
TinyViT / DeiT checkpoints to transformers folders). Each subcommand also runs under
`accelerate launch -m hf_tinyvit.cli <subcommand> ...`; the scripts in examples/ and conversion/ are
thin wrappers over the same code."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main", "save_logits_parser", "verify_parser"]

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
    logging.basicConfig(
        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING, format="%(message)s"
    )
    # every rank reports the shards it wrote, so a launch can show that all of them took part
    logging.getLogger("hf_tinyvit.store.writer").setLevel(logging.INFO)
    recipe = getattr(AugmentationRecipe, args.recipe)(args.image_size)
    # The teacher pass covers the whole split (no hold-out), so any student can train on all of it;
    # --seed drives the augmentation only.
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


COMMANDS = {
    "save-logits": (save_logits, "run a teacher once and store its sparse top-k probabilities"),
    "distill": (distill, "train a student: stored-logit, hard/soft distillation or fine-tuning"),
    "convert": (convert, "convert an official or timm TinyViT / DeiT checkpoint"),
    "verify": (verify, "check every byte, record and (given the dataset) image of a teacher-logit store"),
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
