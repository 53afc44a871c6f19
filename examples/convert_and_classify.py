"""Convert a TinyViT checkpoint and classify photos with transformers' pipeline.

No download is possible here, so the "official" checkpoint is a timm tiny_vit_5m_224 with random
weights saved in timm's layout; with real weights the same commands give real ImageNet labels.
"""

import argparse
from pathlib import Path

import torch

from hf_tinyvit.cli import main as hf_tinyvit_cli


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="outputs/convert_and_classify")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)  # timm's initialisers draw from the default generator; fix it for a repeatable demo
    teacher = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=1000)
    checkpoint = output / "tiny_vit_5m_224.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(checkpoint))

    converted = output / "tinyvit-5m-224"
    # `hf-tinyvit convert ...`, run in this process to skip a second interpreter start-up.
    hf_tinyvit_cli(["convert", "--checkpoint", str(checkpoint), "--variant", "tiny_vit_5m_224", "--output-dir", str(converted)])

    from PIL import Image
    from skimage import data
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(converted), device="cpu")
    for name in ("astronaut", "coffee", "chelsea"):
        image = Image.fromarray(getattr(data, name)())
        top = classifier(image, top_k=3)
        labels = ", ".join(f"{p['label'][:30]} ({p['score']:.3f})" for p in top)
        print(f"{name:<10} -> {labels}")
    print("(random weights: the labels are arbitrary; convert real Cream/timm weights for real predictions)")


if __name__ == "__main__":
    main()
