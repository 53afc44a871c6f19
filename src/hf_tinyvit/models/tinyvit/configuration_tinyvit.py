"""TinyViT configuration: architecture hyper-parameters, the nine published presets, backbone outputs.

This file travels with saved checkpoints (trust_remote_code), so it imports only transformers and its
own folder (the one loss router, `losses.py`, whose problem-type check it uses).
"""

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

try:  # inside the hf_tinyvit package: the one loss router
    from hf_tinyvit.losses import check_problem_type
except ImportError:  # a saved folder loaded with trust_remote_code: the router's copy beside this file
    from .losses import check_problem_type

# Widths and heads of the three published sizes; depths, window contraction, MBConv expansion and MLP
# ratio are shared by all of them (TinyViT paper, Table 1 and section 4).
_SIZES = {
    "5m": {"embed_dims": [64, 128, 160, 320], "num_heads": [2, 4, 5, 10]},
    "11m": {"embed_dims": [64, 128, 256, 448], "num_heads": [2, 4, 8, 14]},
    "21m": {"embed_dims": [96, 192, 384, 576], "num_heads": [3, 6, 12, 18]},
}
_WINDOWS = {224: [7, 7, 14, 7], 384: [12, 12, 24, 12], 512: [16, 16, 32, 16]}
# Stochastic depth of the released 224 models (0 / 0.1 / 0.2); the 384 and 512 fine-tunes use 0.1.
_DROP_PATH_224 = {"5m": 0.0, "11m": 0.1, "21m": 0.2}

TINYVIT_PRESETS: dict[str, dict] = {
    f"tinyvit-{size}-{resolution}": {
        **_SIZES[size],
        "depths": [2, 2, 6, 2],
        "window_sizes": _WINDOWS[resolution],
        "image_size": resolution,
        "drop_path_rate": _DROP_PATH_224[size] if resolution == 224 else 0.1,
    }
    for size in _SIZES
    for resolution in _WINDOWS
}

# Not published: a 0.7M-parameter TinyViT for small inputs (32-64 px), trained by the digits demo and
# the ImageNet-photos example. Windows larger than a feature map are clipped to it.
SMALL_PRESETS: dict[str, dict] = {
    "tinyvit-micro": {
        "embed_dims": [32, 64, 96, 128],
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 2, 3, 4],
        "window_sizes": [4, 4, 4, 2],
        "image_size": 32,
        "drop_path_rate": 0.0,
    }
}


# MobileSAM's image encoder (Zhang et al., 2023, "Faster Segment Anything"): TinyViT-5M at 1024x1024 with
# the 224 window sizes, its last patch merging of stride 1 (so the last stage stays at stride 16, a 64x64
# map), then SAM's 256-channel neck. `TinyViTBackbone` returns the neck's map by default.
MOBILE_SAM_PRESETS: dict[str, dict] = {
    "tinyvit-5m-mobile-sam": {
        **_SIZES["5m"],
        "depths": [2, 2, 6, 2],
        "window_sizes": _WINDOWS[224],
        "image_size": 1024,
        "drop_path_rate": 0.0,
        "patch_merging_strides": [2, 2, 1],
        "neck_channels": 256,
    }
}


class TinyViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a TinyViT model (Wu et al., 2022).

    Args:
        num_channels: channels of the input image.
        image_size: resolution the model was built for (used by processors and benchmarks; the model
            itself accepts any size, padding feature maps to whole windows).
        embed_dims: channels of the four stages.
        depths: blocks per stage; stage 0 is made of MBConv blocks, the others of attention blocks.
        num_heads: attention heads per stage (the entry of stage 0 is unused).
        window_sizes: attention window side per stage (the entry of stage 0 is unused). A window larger
            than the feature map is clipped to the map.
        mlp_ratio: hidden width of the block MLP relative to the stage width.
        mbconv_expand_ratio: hidden width of the MBConv blocks relative to the stage width.
        local_conv_size: kernel of the depthwise convolution between attention and MLP.
        hidden_act: activation everywhere in the network.
        hidden_dropout_prob: dropout inside the MLPs.
        attention_probs_dropout_prob: dropout on attention probabilities.
        classifier_dropout_prob: dropout before the classifier.
        drop_path_rate: stochastic depth rate, increasing linearly over all blocks up to this value.
        layer_norm_eps: epsilon of the LayerNorms.
        batch_norm_eps: epsilon of the BatchNorms.
        initializer_range: standard deviation of the truncated normal of the linear layers.
        patch_merging_strides: stride of the patch merging in front of each attention stage (one entry per
            stage after the first); 2 halves the map (every published classifier), 1 keeps it (MobileSAM's
            last stage). None means 2 everywhere.
        neck_channels: when set, `TinyViTBackbone` adds MobileSAM's neck after the last stage (conv 1x1,
            LayerNorm2d, conv 3x3, LayerNorm2d, to this many channels) as a stage named "neck".
        neck_layer_norm_eps: epsilon of the neck's LayerNorms (SAM's 1e-6).
        problem_type: what `labels` mean for the classifier's loss (see `hf_tinyvit.losses.label_loss`);
            None lets the head decide (regression for one output, else classification). A forward never
            changes it.
        out_features / out_indices: stages returned by `TinyViTBackbone` (names "stem", "stage1".."stage4",
            and "neck" when `neck_channels` is set).
    """

    model_type = "tinyvit"

    def __init__(
        self,
        num_channels: int = 3,
        image_size: int = 224,
        embed_dims: list[int] = (64, 128, 160, 320),
        depths: list[int] = (2, 2, 6, 2),
        num_heads: list[int] = (2, 4, 5, 10),
        window_sizes: list[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        classifier_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        batch_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        patch_merging_strides: list[int] | None = None,
        neck_channels: int | None = None,
        neck_layer_norm_eps: float = 1e-6,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        **kwargs,
    ):
        self.num_channels = num_channels
        self.image_size = image_size
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.window_sizes = list(window_sizes)
        self.mlp_ratio = mlp_ratio
        self.mbconv_expand_ratio = mbconv_expand_ratio
        self.local_conv_size = local_conv_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout_prob = classifier_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.batch_norm_eps = batch_norm_eps
        self.initializer_range = initializer_range
        self.patch_merging_strides = (
            [2] * (len(self.depths) - 1) if patch_merging_strides is None else list(patch_merging_strides)
        )
        self.neck_channels = neck_channels
        self.neck_layer_norm_eps = neck_layer_norm_eps
        self._check_architecture()
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]
        if self.neck_channels:
            self.stage_names.append("neck")
        super().__init__(**kwargs)
        check_problem_type(self.problem_type)
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)

    def _check_architecture(self) -> None:
        lengths = {
            name: len(getattr(self, name)) for name in ("embed_dims", "depths", "num_heads", "window_sizes")
        }
        if len(set(lengths.values())) != 1:
            raise ValueError(f"embed_dims, depths, num_heads and window_sizes need one entry per stage; got {lengths}")
        if lengths["depths"] < 2:
            raise ValueError(f"TinyViT needs at least 2 stages (one convolutional, then attention); got {lengths['depths']}")
        for stage, (dim, heads, window) in enumerate(zip(self.embed_dims, self.num_heads, self.window_sizes)):
            if stage == 0:
                continue
            if heads < 1 or dim % heads:
                raise ValueError(f"embed_dims[{stage}]={dim} must be a multiple of num_heads[{stage}]={heads}")
            if window < 1:
                raise ValueError(f"window_sizes[{stage}]={window} must be a positive integer")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        strides = self.patch_merging_strides
        if len(strides) != lengths["depths"] - 1 or any(stride not in (1, 2) for stride in strides):
            raise ValueError(
                f"patch_merging_strides={strides} needs one stride per stage after the first "
                f"({lengths['depths'] - 1} here), each 1 or 2"
            )
        if self.neck_channels is not None and not (isinstance(self.neck_channels, int) and self.neck_channels > 0):
            raise ValueError(f"neck_channels={self.neck_channels!r} must be a positive integer or None")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "TinyViTConfig":
        """A published variant by name, e.g. `"tinyvit-21m-384"`, or one of `SMALL_PRESETS` and
        `MOBILE_SAM_PRESETS`; `kwargs` override any field (e.g. `num_labels`)."""
        presets = {**TINYVIT_PRESETS, **SMALL_PRESETS, **MOBILE_SAM_PRESETS}
        if name not in presets:
            raise ValueError(f"unknown TinyViT preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **kwargs})


TinyViTConfig.register_for_auto_class()

__all__ = ["MOBILE_SAM_PRESETS", "SMALL_PRESETS", "TINYVIT_PRESETS", "TinyViTConfig"]
