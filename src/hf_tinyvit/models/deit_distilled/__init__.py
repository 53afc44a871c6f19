"""DeiT with a distillation token that trains."""
