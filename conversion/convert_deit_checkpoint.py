"""Convert distilled DeiT checkpoints (facebookresearch/deit `.pth` files or timm's weights, one key layout; any
head, or none) into hf_tinyvit folders: config with the class names, safetensors, reference preprocessing, the
remote-code files and a model card.

    python conversion/convert_deit_checkpoint.py --checkpoint deit_tiny_distilled_patch16_224-b40b3cf7.pth \
        --variant deit_tiny_distilled_patch16_224 --output-dir converted/deit-tiny-distilled \
        [--id2label names.txt] [--push-to-hub REPO_ID]

The same as `hf-tinyvit convert ...`; the maps live in `hf_tinyvit.models.deit_distilled.convert_deit_distilled`.
"""

import sys

from hf_tinyvit.cli import main

if __name__ == "__main__":
    main(["convert", *sys.argv[1:]])
