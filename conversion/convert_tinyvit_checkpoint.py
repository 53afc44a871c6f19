"""Convert a TinyViT checkpoint (microsoft/Cream or timm layout; official, fine-tuned on any classes, or
head-less) into a transformers folder.

    python conversion/convert_tinyvit_checkpoint.py --checkpoint tiny_vit_5m_22kto1k_distill.pth \
        --variant tiny_vit_5m_224 --output-dir converted/tinyvit-5m-224 [--id2label names.txt] [--push-to-hub USER/REPO]

The same as `hf-tinyvit convert ...`: writes config.json (class names: --id2label, or ImageNet's), model.safetensors,
preprocessor_config.json, the modeling code (so the folder also loads with trust_remote_code=True)
and a README.md model card. The maps live in `hf_tinyvit.models.tinyvit.convert_tinyvit`.
"""

import sys

from hf_tinyvit.cli import main

if __name__ == "__main__":
    main(["convert", *sys.argv[1:]])
