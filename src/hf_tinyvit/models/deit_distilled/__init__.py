"""DeiT with a distillation token that trains; importing this registers it with transformers' Auto classes
(the modeling file registers the stock DeiT weight-name conversion, so stock checkpoints and ours share one
layout)."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_deit_distilled import DEIT_PRESETS, DeiTDistilledConfig
from .image_processing_deit_distilled import DeiTDistilledImageProcessor, DeiTDistilledImageProcessorPil
from .modeling_deit_distilled import (
    DeiTDistilledForImageClassification,
    DeiTDistilledImageClassifierOutput,
    DeiTDistilledModel,
    DeiTDistilledPreTrainedModel,
    deit_distilled_loss,
    interpolate_position_embeddings,
)
from .preprocessing_deit_distilled import (
    IMAGE_PROCESSOR_CLASSES,
    REFERENCE_CROP_PCT,
    deit_image_processor,
    reference_preprocessing,
)

AutoConfig.register(DeiTDistilledConfig.model_type, DeiTDistilledConfig, exist_ok=True)
AutoModel.register(DeiTDistilledConfig, DeiTDistilledModel, exist_ok=True)
AutoModelForImageClassification.register(DeiTDistilledConfig, DeiTDistilledForImageClassification, exist_ok=True)
AutoImageProcessor.register(DeiTDistilledConfig, image_processor_classes=IMAGE_PROCESSOR_CLASSES, exist_ok=True)

__all__ = [
    "DEIT_PRESETS",
    "IMAGE_PROCESSOR_CLASSES",
    "REFERENCE_CROP_PCT",
    "DeiTDistilledConfig",
    "DeiTDistilledForImageClassification",
    "DeiTDistilledImageProcessor",
    "DeiTDistilledImageProcessorPil",
    "DeiTDistilledImageClassifierOutput",
    "DeiTDistilledModel",
    "DeiTDistilledPreTrainedModel",
    "deit_distilled_loss",
    "deit_image_processor",
    "interpolate_position_embeddings",
    "reference_preprocessing",
]
