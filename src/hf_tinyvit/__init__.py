"""hf_tinyvit: TinyViT and DeiT's distillation token as transformers models, and TinyViT's fast
pretraining distillation from stored teacher logits.

Importing the package registers its model families with transformers' Auto classes.
"""

from . import models  # noqa: F401  (each family registers itself with the Auto classes on import)

__version__ = "0.1.0"
