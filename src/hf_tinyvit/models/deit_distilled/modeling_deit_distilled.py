"""DeiT with a distillation token that trains: transformers' DeiT body and heads with DeiT's hard and soft
distillation losses, the paper's initialisation, layer-wise lr decay ids and export to stock transformers.

The loss comes from hf_tinyvit's one loss router (`losses.py`), which a saved folder carries beside this file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.deit.modeling_deit import (
    DeiTEmbeddings,
    DeiTModel,
    DeiTPreTrainedModel,
)
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_deit_distilled import DeiTDistilledConfig

try:  # inside the hf_tinyvit package: the one loss router
    from hf_tinyvit.losses import (
        DistillationMode,
        LossOutput,
        StudentHeads,
        TeacherTarget,
        distillation_loss,
    )
except ImportError:  # a saved folder loaded with trust_remote_code: the router's copy beside this file
    from .losses import (
        DistillationMode,
        LossOutput,
        StudentHeads,
        TeacherTarget,
        distillation_loss,
    )

# The class token and the distillation token come before the patch tokens, in that order.
NUM_PREFIX_TOKENS = 2


def deit_distilled_loss(
    config: DeiTDistilledConfig,
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    labels: torch.Tensor | None,
    distillation_labels: torch.Tensor | None = None,
    teacher_probs: torch.Tensor | None = None,
) -> LossOutput:
    """The loss of a two-headed DeiT student, through the loss router, with the mode chosen by which
    targets are given and by `config`:

    - `labels` alone: mode `none`, cross-entropy on both heads, averaged, so that plain fine-tuning
      trains the distillation head too (timm fine-tunes the averaged logits, facebookresearch/deit's
      `none` mode only the class head, leaving the distillation half of the late fusion untrained);
    - `distillation_labels` (teacher top-1 classes): mode `hard`;
    - `teacher_probs` (a teacher distribution at temperature 1): `config.distillation_type`
      (`hard` when unset): `hard` on the teacher's argmax, `soft`, or `stored`.
    `labels` may be class indices or distributions (Mixup/CutMix); `stored` may go without them.
    """
    if distillation_labels is not None and teacher_probs is not None:
        raise ValueError("pass either distillation_labels (hard teacher classes) or teacher_probs, not both")
    if distillation_labels is not None:
        mode, teacher = DistillationMode.HARD, TeacherTarget(hard_labels=distillation_labels)
    elif teacher_probs is not None:
        mode = DistillationMode.parse(config.distillation_type or DistillationMode.HARD)
        if mode is DistillationMode.NONE:
            raise ValueError(
                "teacher_probs were given but config.distillation_type='none'; set it to hard, soft or stored"
            )
        teacher = TeacherTarget(probs=teacher_probs)
    else:
        mode, teacher = DistillationMode.NONE, None
    if labels is None and mode is not DistillationMode.STORED:
        given = "distillation_labels" if distillation_labels is not None else "teacher_probs"
        raise ValueError(f"labels are required for the class head's loss; got only {given}")
    return distillation_loss(
        mode,
        StudentHeads(cls_logits, distillation_logits),
        labels,
        teacher,
        alpha=0.5 if config.distillation_alpha is None else config.distillation_alpha,
        tau=1.0 if config.distillation_tau is None else config.distillation_tau,
        label_smoothing=config.label_smoothing or 0.0,
        problem_type=config.problem_type,
    )


def interpolate_position_embeddings(
    position_embeddings: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = NUM_PREFIX_TOKENS
) -> torch.Tensor:
    """Resample `(1, prefix + h*w, dim)` position embeddings of a square grid to `grid_size` patches.

    Bicubic with antialiasing, as timm resizes DeiT checkpoints for fine-tuning at another
    resolution (224 -> 384); the class and distillation entries are kept as they are.
    """
    num_patches = position_embeddings.shape[1] - num_prefix_tokens
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch position embeddings do not form a square grid")
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    if tuple(grid_size) == (side, side):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    grid = grid.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(grid_size), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(position_embeddings.dtype)
    return torch.cat([prefix, grid], dim=1)


@dataclass
class DeiTDistilledImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        The distillation or fine-tuning loss, when targets were given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Late fusion of the two heads (the average of their logits), what inference and pipelines use.
    cls_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Class-token head, trained on the ground truth.
    distillation_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Distillation-token head, trained on the teacher.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class DeiTDistilledPreTrainedModel(DeiTPreTrainedModel):
    """Shared by our DeiT classes: initialisation, parameter groups for the trainer, resolution changes."""

    config: DeiTDistilledConfig
    config_class = DeiTDistilledConfig
    base_model_prefix = "deit"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference initialisation: truncated normal 0.02 for linear layers, tokens and position
        embeddings (transformers' DeiT zeroes the tokens and position embeddings instead)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DeiTEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.trunc_normal_(module.distillation_token, mean=0.0, std=std)
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)

    def no_weight_decay(self) -> set[str]:
        """Full names of the tokens and position embeddings, which DeiT trains without weight decay."""
        names = set()
        for module_name, module in self.named_modules():
            if isinstance(module, DeiTEmbeddings):
                prefix = f"{module_name}." if module_name else ""
                names.update(prefix + name for name, _ in module.named_parameters(recurse=False))
        return names

    def get_num_layers_for_lr_decay(self) -> int:
        """Layer ids run from 0 (embeddings) to `num_hidden_layers + 1` (final norm and heads)."""
        return self.config.num_hidden_layers + 2

    def get_layer_id_for_lr_decay(self, name: str) -> int:
        """Layer id of a parameter given its full name, as in BEiT's and DeiT III's layer-wise lr decay."""
        parts = name.split(".")
        if parts[0] == self.base_model_prefix:
            parts = parts[1:]
        if parts[0] == "embeddings":
            return 0
        if parts[0] == "layers":
            return int(parts[1]) + 1
        return self.config.num_hidden_layers + 1

    def resize_position_embeddings(self, image_size: int | tuple[int, int]) -> None:
        """Interpolate the position embeddings once, in place, to train or run at `image_size` without
        passing `interpolate_pos_encoding` on every call (fine-tuning 224 -> 384). Updates the config."""
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch}")
        embeddings = next(m for m in self.modules() if isinstance(m, DeiTEmbeddings))
        old = embeddings.position_embeddings
        resized = interpolate_position_embeddings(old.data, (height // patch, width // patch))
        embeddings.position_embeddings = nn.Parameter(resized, requires_grad=old.requires_grad)
        embeddings.image_size = (height, width)
        embeddings.patch_embeddings.image_size = (height, width)
        embeddings.patch_embeddings.num_patches = (height // patch) * (width // patch)
        self.config.image_size = image_size if isinstance(image_size, int) else [height, width]


class DeiTDistilledModel(DeiTDistilledPreTrainedModel, DeiTModel):
    """transformers' DeiT body (embeddings with both tokens, encoder, final norm) under our config and init.

    The tanh pooler of transformers' `DeiTModel` is a BERT relic that DeiT does not have, so it is off.
    """

    def __init__(self, config: DeiTDistilledConfig, add_pooling_layer: bool = False, use_mask_token: bool = False):
        DeiTModel.__init__(self, config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)


class DeiTDistilledForImageClassification(DeiTDistilledPreTrainedModel):
    """DeiT with a class head and a distillation head that trains, in the parameter layout of transformers'
    `DeiTForImageClassificationWithTeacher` (so stock checkpoints load one to one)."""

    def __init__(self, config: DeiTDistilledConfig):
        super().__init__(config)
        if config.num_labels < 1:
            raise ValueError(f"num_labels={config.num_labels} must be >= 1: the two heads need classes")
        self.num_labels = config.num_labels
        self.deit = DeiTDistilledModel(config)
        self.cls_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.distillation_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        distillation_labels: torch.Tensor | None = None,
        teacher_probs: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> DeiTDistilledImageClassifierOutput:
        r"""
        labels (`(batch,)` class indices or `(batch, num_labels)` distributions, *optional*):
            Ground truth for the class head (and for the distillation head when no teacher target is given).
        distillation_labels (`(batch,)` class indices, *optional*):
            The teacher's top-1 classes: DeiT's hard distillation.
        teacher_probs (`(batch, num_labels)`, *optional*):
            The teacher's distribution at temperature 1 (a softmax, or one rebuilt from stored top-k
            probabilities): soft or hard distillation as `config.distillation_type` says.

        `labels` are read by `config.problem_type` (single-label, multi-label or regression, see
        `hf_tinyvit.losses.label_loss`). `return_dict=False` gives the output's fields as a tuple.
        """
        # The body answers in a dataclass even under `config.return_dict=False`; `can_return_tuple` converts ours.
        outputs = self.deit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            return_dict=True,
            **kwargs,
        )
        sequence_output = outputs.last_hidden_state
        cls_logits = self.cls_classifier(sequence_output[:, 0])
        distillation_logits = self.distillation_classifier(sequence_output[:, 1])

        loss = None
        if labels is not None or distillation_labels is not None or teacher_probs is not None:
            loss = deit_distilled_loss(
                self.config, cls_logits, distillation_logits, labels, distillation_labels, teacher_probs
            ).loss
        return DeiTDistilledImageClassifierOutput(
            loss=loss,
            logits=(cls_logits + distillation_logits) / 2,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def to_transformers_deit(self) -> DeiTForImageClassificationWithTeacher:
        """The same weights in a stock transformers `DeiTForImageClassificationWithTeacher` (inference)."""
        stock_fields = set(DeiTConfig().to_dict())
        config_dict = {k: v for k, v in self.config.to_dict().items() if k in stock_fields}
        config_dict.pop("model_type", None)
        config_dict.pop("architectures", None)
        stock = DeiTForImageClassificationWithTeacher(DeiTConfig(**config_dict))
        # Same parameter names on both sides, so a strict load proves the layouts agree.
        stock.load_state_dict(self.state_dict(), strict=True)
        return stock.to(dtype=self.dtype).eval()

    def save_as_transformers_deit(self, save_directory: str | os.PathLike, image_processor=None, **kwargs) -> None:
        """Write a folder that stock transformers loads with `DeiTForImageClassificationWithTeacher`,
        `AutoModelForImageClassification`, `AutoImageProcessor` and `pipeline("image-classification")`,
        without hf_tinyvit and without remote code: model type "deit", stock weight names, a stock processor.

        The processor is `image_processor` when given, else the one saved beside the weights this model was
        loaded from (it keeps the normalisation the model was trained with), else DeiT's reference
        evaluation preprocessing at `config.image_size`.
        """
        processor = image_processor if image_processor is not None else _saved_or_reference_processor(self.config)
        self.to_transformers_deit().save_pretrained(save_directory, **kwargs)
        _as_stock_processor(processor).save_pretrained(save_directory)


def _as_stock_processor(processor):
    """`processor`'s settings in transformers' own DeiT processor class, which needs no remote code. Its centre
    crop floors the offset: one pixel away from the reference's on images whose margin is 3 mod 4."""
    from transformers import DeiTImageProcessor, DeiTImageProcessorPil

    if type(processor).__module__.startswith("transformers."):
        return processor
    stock = DeiTImageProcessorPil if isinstance(processor, DeiTImageProcessorPil) else DeiTImageProcessor
    settings = {k: v for k, v in processor.to_dict().items() if k not in ("image_processor_type", "auto_map")}
    return stock.from_dict(settings)


def _saved_or_reference_processor(config: DeiTDistilledConfig):
    from transformers import AutoImageProcessor

    source = getattr(config, "_name_or_path", "") or ""
    if source and os.path.isfile(os.path.join(source, "preprocessor_config.json")):
        return AutoImageProcessor.from_pretrained(source)
    try:  # inside the hf_tinyvit package: the reference preprocessing
        from hf_tinyvit.models.deit_distilled.preprocessing_deit_distilled import deit_image_processor
    except ImportError:  # a folder loaded with trust_remote_code carries no processor code
        raise ValueError(
            "save_as_transformers_deit needs an image processor: pass image_processor= (e.g. "
            "AutoImageProcessor.from_pretrained(<the folder this model came from>))"
        ) from None
    return deit_image_processor(config.image_size)


# Remote code: saved folders carry this file, the configuration file and the loss router (see
# configuration_deit_distilled.AUTO_MAP). transformers renames DeiT weights between the files (Hub layout:
# encoder.layer.N.attention.attention.query ...) and the modules (layers.N.attention.q_proj ...) on load and
# save, but only for its own model types; registering the same renaming for ours, here where the model is
# defined, makes our files and stock files interchangeable with or without hf_tinyvit installed.
register_checkpoint_conversion_mapping(
    DeiTDistilledConfig.model_type, get_checkpoint_conversion_mapping("DeiTModel"), overwrite=True
)
DeiTDistilledModel.register_for_auto_class("AutoModel")
DeiTDistilledForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "DeiTDistilledForImageClassification",
    "DeiTDistilledImageClassifierOutput",
    "DeiTDistilledModel",
    "DeiTDistilledPreTrainedModel",
    "deit_distilled_loss",
    "interpolate_position_embeddings",
]
