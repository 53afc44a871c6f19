"""Convert an official TinyViT checkpoint (microsoft/Cream or timm layout) into a transformers folder.

    python conversion/convert_tinyvit_checkpoint.py --checkpoint tiny_vit_5m_22kto1k_distill.pth \
        --variant tiny_vit_5m_224 --output-dir converted/tinyvit-5m-224 [--push-to-hub USER/REPO]

Writes config.json (ImageNet id2label), model.safetensors, preprocessor_config.json, the modeling code
(so the folder also loads with trust_remote_code=True) and a README.md model card.
"""

import argparse
from pathlib import Path

import torch

from hf_tinyvit.hub import check_state_dict, imagenet_id2label, load_state_dict, write_model_card
from hf_tinyvit.models.tinyvit import TinyViTConfig, TinyViTForImageClassification, tinyvit_image_processor
from hf_tinyvit.models.tinyvit.conversion_tinyvit import num_classes_of, parse_variant, to_hf_state_dict

_PAPER = "TinyViT: Fast Pretraining Distillation for Small Vision Transformers (Wu et al., ECCV 2022)"


def convert(checkpoint: str | Path, variant: str, output_dir: str | Path):
    """Read, map, check and save; raises before writing anything if the checkpoint does not fit `variant`."""
    preset, tag = parse_variant(variant)
    state_dict = load_state_dict(checkpoint)
    num_classes = num_classes_of(state_dict)
    if tag and "in22k" in tag and "ft" not in tag and num_classes != 21841:
        raise ValueError(f"variant {variant!r} names an ImageNet-21k head but {checkpoint} has {num_classes} classes")
    id2label = imagenet_id2label(num_classes) if num_classes in (1000, 21841) else None
    config = TinyViTConfig.from_preset(
        preset, num_labels=num_classes, **({"id2label": id2label} if id2label else {})
    )
    converted, layout = to_hf_state_dict(state_dict, config)
    model = TinyViTForImageClassification(config).eval()
    check_state_dict(model.state_dict(), converted, f"{layout}-layout checkpoint {checkpoint} for {variant}")
    model.load_state_dict(converted, strict=True)

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor = tinyvit_image_processor(config.image_size)
    processor.save_pretrained(output_dir)
    dataset = "imagenet-21k" if num_classes == 21841 else "imagenet-1k"
    write_model_card(
        output_dir,
        model_id=output_dir.name,
        datasets=[dataset] if id2label else [],
        tags=["tinyvit", f"timm:{variant}"],
        description=(
            f"TinyViT `{preset}` ({num_classes} classes) converted from a {layout}-layout checkpoint of timm's "
            f"`{variant}`. Paper: {_PAPER}. Evaluation preprocessing: bicubic resize, centre crop "
            f"{config.image_size}, ImageNet mean/std."
        ),
        custom_code=True,
    )
    return model, processor


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin (torch.load weights_only) or .safetensors")
    parser.add_argument("--variant", required=True, help="timm name, e.g. tiny_vit_21m_384 or tiny_vit_5m_224.dist_in22k")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    args = parser.parse_args(argv)
    with torch.no_grad():
        model, processor = convert(args.checkpoint, args.variant, args.output_dir)
    print(f"wrote {args.output_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        processor.push_to_hub(args.push_to_hub)
        from huggingface_hub import upload_file

        upload_file(path_or_fileobj=str(Path(args.output_dir) / "README.md"), path_in_repo="README.md",
                    repo_id=args.push_to_hub)  # fmt: skip
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
