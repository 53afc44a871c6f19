"""The centre crop of the reference evaluation transforms, for transformers' image processors.

timm's and facebookresearch/deit's eval transform crop with torchvision's `CenterCrop`, whose offset
`round((size - crop) / 2)` rounds half to even; transformers' processors floor it instead, so an odd
margin of 3 mod 4 (TinyViT-224: 235 -> 224 on the shorter side) puts their crop one pixel away from the
reference's, on every such image. Each model family's processors mix this in; the family folders hold a
link to this one file, so saved checkpoints carry it (it imports nothing but transformers' base classes'
own machinery).
"""

__all__ = ["ReferenceCentreCrop", "reference_crop_offsets"]


def reference_crop_offsets(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """(top, left) of a centre crop as torchvision's `CenterCrop` places it: half the margin, rounded half to even."""
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


class ReferenceCentreCrop:
    """Mixin for a transformers image processor (torchvision or PIL backend, channels-first images): the centre
    crop of the reference transforms. Images smaller than the crop are padded by the backend, as before."""

    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height is None or size.width is None or size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top, left = reference_crop_offsets(height, width, size.height, size.width)
        return image[..., top : top + size.height, left : left + size.width]
