"""TinyViT as a transformers model family; importing it registers the Auto classes."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_tinyvit import MOBILE_SAM_PRESETS, SMALL_PRESETS, TINYVIT_PRESETS, TinyViTConfig
from .image_processing_tinyvit import TinyViTImageProcessor, TinyViTImageProcessorPil
from .modeling_tinyvit import (
    TinyViTBackbone,
    TinyViTForImageClassification,
    TinyViTModel,
    TinyViTNeck,
    TinyViTPreTrainedModel,
    attention_bias_index,
    resize_attention_bias_table,
)
from .preprocessing_tinyvit import BACKENDS, eval_preprocessing, eval_recipe, tinyvit_image_processor

AutoConfig.register(TinyViTConfig.model_type, TinyViTConfig, exist_ok=True)
AutoModel.register(TinyViTConfig, TinyViTModel, exist_ok=True)
AutoModelForImageClassification.register(TinyViTConfig, TinyViTForImageClassification, exist_ok=True)
AutoBackbone.register(TinyViTConfig, TinyViTBackbone, exist_ok=True)
AutoImageProcessor.register(TinyViTConfig, image_processor_classes=dict(BACKENDS), exist_ok=True)

__all__ = [
    "MOBILE_SAM_PRESETS",
    "SMALL_PRESETS",
    "TINYVIT_PRESETS",
    "TinyViTBackbone",
    "TinyViTConfig",
    "TinyViTForImageClassification",
    "TinyViTImageProcessor",
    "TinyViTImageProcessorPil",
    "TinyViTModel",
    "TinyViTNeck",
    "TinyViTPreTrainedModel",
    "attention_bias_index",
    "eval_preprocessing",
    "eval_recipe",
    "resize_attention_bias_table",
    "tinyvit_image_processor",
]
