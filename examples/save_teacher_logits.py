"""Run a teacher once over replayable augmented views and store its sparse top-k probabilities.

    accelerate launch examples/save_teacher_logits.py --teacher PATH_OR_ID --dataset_name digits \
        --image_size 32 --num_epochs 10 --topk 3 --output_dir logits/digits-teacher

Rerunning the same command resumes: complete shards are skipped. Any number of processes gives
the same store, and `--start_epoch/--end_epoch` let several machines split the epochs.
"""

from __future__ import annotations

import argparse
import logging

from accelerate import Accelerator

from hf_tinyvit.data import AugmentationRecipe, load_image_dataset, load_teacher, save_teacher_logits

RECIPES = {"tinyvit_pretrain": AugmentationRecipe.tinyvit_pretrain, "deit": AugmentationRecipe.deit}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="transformers model folder or Hub id, or timm:<model_name>")
    parser.add_argument("--teacher_weights", default=None, help="safetensors or .pth state dict for a timm: teacher")
    parser.add_argument(
        "--dataset_name", default="digits", help="digits, imagefolder:<dir>, a save_to_disk folder or a Hub name"
    )
    parser.add_argument("--split", default="train", help="which split of the dataset to run the teacher on")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--recipe", default="tinyvit_pretrain", choices=sorted(RECIPES), help="augmentation preset")
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
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    logging.basicConfig(
        level=logging.INFO if accelerator.is_local_main_process else logging.WARNING, format="%(message)s"
    )
    # every rank reports the shards it wrote, so a launch can show that all of them took part
    logging.getLogger("hf_tinyvit.data.saving").setLevel(logging.INFO)
    recipe = RECIPES[args.recipe](args.image_size)
    # The split is fixed (split seed 0), as in distill.py: --seed drives the augmentation only, so a store
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
        from hf_tinyvit.data import TeacherLogitStore

        TeacherLogitStore.open(path, cache_dir=args.cache_dir).push_to_hub(args.push_to_hub)


if __name__ == "__main__":
    main()
