"""TinyViT's image processors: transformers' ViT processors (torchvision and PIL backends) with the
reference centre crop (`image_processing_reference.py`). This file travels with saved checkpoints
(trust_remote_code): it imports only transformers and its own folder. The settings that make them do
TinyViT's evaluation preprocessing come from `preprocessing_tinyvit.py`.
"""

from transformers import ViTImageProcessor, ViTImageProcessorPil

from .image_processing_reference import ReferenceCentreCrop


class TinyViTImageProcessor(ReferenceCentreCrop, ViTImageProcessor):
    """ViT's torchvision-backend processor with the reference transforms' centre crop."""


class TinyViTImageProcessorPil(ReferenceCentreCrop, ViTImageProcessorPil):
    """ViT's PIL-backend processor with the reference transforms' centre crop."""


TinyViTImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["TinyViTImageProcessor", "TinyViTImageProcessorPil"]
