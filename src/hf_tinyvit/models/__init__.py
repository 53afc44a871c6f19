"""Model families: TinyViT and DeiT with a distillation token."""
