"""DeiT-distilled's image processors: transformers' DeiT processors (torchvision and PIL backends) with the
reference centre crop (`image_processing_reference.py`). This file travels with saved checkpoints
(trust_remote_code): it imports only transformers and its own folder. The reference settings come from
`preprocessing_deit_distilled.py`.
"""

from transformers import DeiTImageProcessor, DeiTImageProcessorPil

from .image_processing_reference import ReferenceCentreCrop


class DeiTDistilledImageProcessor(ReferenceCentreCrop, DeiTImageProcessor):
    """DeiT's torchvision-backend processor with the reference transforms' centre crop."""


class DeiTDistilledImageProcessorPil(ReferenceCentreCrop, DeiTImageProcessorPil):
    """DeiT's PIL-backend processor with the reference transforms' centre crop."""


DeiTDistilledImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["DeiTDistilledImageProcessor", "DeiTDistilledImageProcessorPil"]
