"""Configuration of DeiT with a distillation token: transformers' `DeiTConfig` under its own model type,
the published sizes as presets, and the distillation settings the model's forward uses.

This file travels with saved checkpoints (trust_remote_code): it imports only transformers,
huggingface_hub and its own folder (the one loss router, `losses.py`, whose checks it uses).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig

try:  # inside the hf_tinyvit package: the one loss router
    from hf_tinyvit.losses import (
        DistillationMode,
        check_alpha,
        check_label_smoothing,
        check_problem_type,
        check_tau,
    )
except ImportError:  # a saved folder loaded with trust_remote_code: the router's copy beside this file
    from .losses import DistillationMode, check_alpha, check_label_smoothing, check_problem_type, check_tau

# The DeiT sizes (patch 16, depth 12, MLP ratio 4; Touvron et al., 2021, Table 1) at the two published
# resolutions. The distillation token is always on.
_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
DEIT_PRESETS: dict[str, dict] = {
    f"deit-{size}-distilled-{resolution}": {
        "hidden_size": width,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "num_hidden_layers": 12,
        "patch_size": 16,
        "image_size": resolution,
    }
    for size, (width, heads) in _SIZES.items()
    for resolution in (224, 384)
}


@strict
class DeiTDistilledConfig(DeiTConfig):
    r"""
    Every `DeiTConfig` field, with the reference value of `layer_norm_eps` (1e-6, as in
    facebookresearch/deit and timm; transformers' DeiT default of 1e-12 came from BERT), plus the
    distillation settings. Each may be left None (unset): `DistillationTrainer` then fills in its
    own arguments' value, and refuses a run whose arguments contradict a value set here.

    distillation_type (`str`, *optional*):
        One of `hf_tinyvit.losses.DistillationMode`: what the distillation head learns when the
        forward gets `teacher_probs`. `"hard"` (the default when unset) trains it on the teacher's
        top-1 class (DeiT's better variant), `"soft"` on the teacher distribution tempered by
        `distillation_tau`, `"stored"` on the teacher distribution by cross-entropy.
        `distillation_labels` always select the hard loss.
    distillation_alpha (`float`, *optional*, 0.5 when unset):
        Weight of the teacher term in the soft loss, `(1 - alpha) CE + alpha tau^2 KL`. The hard loss
        weighs both heads 1/2 as the paper does.
    distillation_tau (`float`, *optional*, 1.0 when unset):
        Temperature of the soft loss (the official recipe uses 1.0).
    label_smoothing (`float`, *optional*, 0.0 when unset):
        Label smoothing of the ground-truth cross-entropy.
    """

    # transformers 5 refuses to register new heads on its built-in "deit" type, hence a type of our own.
    model_type = "deit_distilled"

    layer_norm_eps: float = 1e-6
    distillation_type: str | None = None
    distillation_alpha: float | int | None = None
    distillation_tau: float | int | None = None
    label_smoothing: float | int | None = None

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read stock transformers DeiT configs (`facebook/deit-*-distilled-*`) as ours, without the
        model-type mismatch warning: their fields are a subset of ours and their weights map one to one."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == DeiTConfig.model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DeiTDistilledConfig":
        """A published DeiT size by name, e.g. `"deit-small-distilled-224"`; `kwargs` override any field."""
        if name not in DEIT_PRESETS:
            raise ValueError(f"unknown DeiT preset {name!r}; choose one of {sorted(DEIT_PRESETS)}")
        return cls(**{**DEIT_PRESETS[name], **kwargs})

    def validate_distillation(self):
        """Part of `@strict` validation: the loss settings are checked when the config is built, by the
        same checks the training arguments use."""
        if self.distillation_type is not None:
            DistillationMode.parse(self.distillation_type)
        if self.distillation_alpha is not None:
            check_alpha(self.distillation_alpha, "distillation_alpha")
        if self.distillation_tau is not None:
            check_tau(self.distillation_tau, "distillation_tau")
        if self.label_smoothing is not None:
            check_label_smoothing(self.label_smoothing)
        # The heads' loss reads it (see `hf_tinyvit.losses.label_loss`); a forward never changes it.
        check_problem_type(self.problem_type)


__all__ = ["DEIT_PRESETS", "DeiTDistilledConfig"]
