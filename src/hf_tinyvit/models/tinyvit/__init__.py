"""TinyViT as a transformers model family."""
