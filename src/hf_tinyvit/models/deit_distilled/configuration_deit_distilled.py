"""Configuration of DeiT with a distillation token: transformers' `DeiTConfig` under its own model type,
plus the distillation loss settings the model's forward uses."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig

DISTILLATION_TYPES = ("hard", "soft")


@strict
class DeiTDistilledConfig(DeiTConfig):
    r"""
    Every `DeiTConfig` field, with the reference value of `layer_norm_eps` (1e-6, as in
    facebookresearch/deit and timm; transformers' DeiT default of 1e-12 came from BERT), plus:

    distillation_type (`str`, defaults to `"hard"`):
        What the distillation head learns when the forward gets `teacher_probs`: `"hard"` trains it
        on the teacher's top-1 class (DeiT's better variant), `"soft"` on the teacher distribution
        tempered by `distillation_tau`. `distillation_labels` always select the hard loss.
    distillation_alpha (`float`, defaults to 0.5):
        Weight of the teacher term in the soft loss, `(1 - alpha) CE + alpha tau^2 KL`. The hard loss
        weighs both heads 1/2 as the paper does.
    distillation_tau (`float`, defaults to 1.0):
        Temperature of the soft loss (the official recipe uses 1.0).
    label_smoothing (`float`, defaults to 0.0):
        Label smoothing of the class head's cross-entropy on index labels.
    """

    # transformers 5 refuses to register new heads on its built-in "deit" type, hence a type of our own.
    model_type = "deit_distilled"

    layer_norm_eps: float = 1e-6
    distillation_type: str = "hard"
    distillation_alpha: float | int = 0.5
    distillation_tau: float | int = 1.0
    label_smoothing: float | int = 0.0

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read stock transformers DeiT configs (`facebook/deit-*-distilled-*`) as ours, without the
        model-type mismatch warning: their fields are a subset of ours and their weights map one to one."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == DeiTConfig.model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def validate_distillation(self):
        """Part of `@strict` validation: the loss settings are checked when the config is built."""
        if self.distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type={self.distillation_type!r} must be one of {DISTILLATION_TYPES}")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha={self.distillation_alpha} must lie in [0, 1]")
        if self.distillation_tau <= 0:
            raise ValueError(f"distillation_tau={self.distillation_tau} must be > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must lie in [0, 1)")


__all__ = ["DeiTDistilledConfig"]
