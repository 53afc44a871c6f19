"""Model families: TinyViT and DeiT with a distillation token. Importing this registers both with
transformers' Auto classes."""

from . import deit_distilled, tinyvit

__all__ = ["deit_distilled", "tinyvit"]
