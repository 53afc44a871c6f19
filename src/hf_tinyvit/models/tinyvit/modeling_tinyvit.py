"""TinyViT (Wu et al., 2022) as a transformers model: body, image classifier and backbone.

This file travels with saved checkpoints (trust_remote_code): it imports only torch, transformers and
its own folder. The loss comes from hf_tinyvit's one loss router (`losses.py`), which a saved folder
carries beside this file.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_tinyvit import TinyViTConfig

try:  # inside the hf_tinyvit package: the one loss router
    from hf_tinyvit.losses import DistillationMode, distillation_loss
except ImportError:  # a saved folder loaded with trust_remote_code: the router's copy beside this file
    from .losses import DistillationMode, distillation_loss


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch and rescale the kept ones.

    Like `nn.Dropout`, it draws from torch's default generator; it is only active in training.
    """
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


class TinyViTDropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class TinyViTBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose scale starts at `weight_init` (1, or 0 for MBConv's last one).

    A class of its own so that `_init_weights` initialises it by its own branch: transformers visits
    every module, but marks one without parameters of its own (such as `TinyViTConvNorm`) as done
    without calling `_init_weights` on it, so a parent could not initialise its BatchNorm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, weight_init: float = 1.0):
        super().__init__(num_features, eps=eps)
        self.weight_init = weight_init


class TinyViTConvNorm(nn.Module):
    """Convolution without bias followed by BatchNorm; `fuse_()` folds the two for inference."""

    def __init__(self, config, in_channels, out_channels, kernel_size=1, stride=1, groups=1, bn_weight_init=1.0):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        # MBConv's last BatchNorm starts at zero so each block starts as the identity (paper, section 3.2).
        self.batch_norm = TinyViTBatchNorm2d(out_channels, eps=config.batch_norm_eps, weight_init=bn_weight_init)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.batch_norm(self.convolution(hidden_states))

    @torch.no_grad()
    def fuse_(self) -> None:
        if isinstance(self.batch_norm, nn.Identity):
            return
        conv, bn = self.convolution, self.batch_norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            groups=conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.convolution = fused
        self.batch_norm = nn.Identity()


class TinyViTEmbeddings(nn.Module):
    """Stride-4 stem: two stride-2 3x3 convolutions with BatchNorm, GELU between them."""

    def __init__(self, config: TinyViTConfig):
        super().__init__()
        dim = config.embed_dims[0]
        self.conv1 = TinyViTConvNorm(config, config.num_channels, dim // 2, kernel_size=3, stride=2)
        self.activation = ACT2FN[config.hidden_act]
        self.conv2 = TinyViTConvNorm(config, dim // 2, dim, kernel_size=3, stride=2)
        # Set by `fuse()`: oneDNN's convolutions are faster on channels-last maps, and the attention
        # stages' (B, H, W, C) tokens already are channels-last maps, so no layout copies remain.
        self.channels_last = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.conv1.convolution.in_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels; the config expects "
                f"num_channels={self.conv1.convolution.in_channels}"
            )
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.conv2(self.activation(self.conv1(pixel_values)))


class TinyViTMBConvLayer(GradientCheckpointingLayer):
    """Inverted residual block of stage 0: 1x1 expand, depthwise 3x3, 1x1 project, residual."""

    def __init__(self, config: TinyViTConfig, dim: int, drop_path_rate: float):
        super().__init__()
        hidden = int(dim * config.mbconv_expand_ratio)
        self.conv1 = TinyViTConvNorm(config, dim, hidden)
        self.conv2 = TinyViTConvNorm(config, hidden, hidden, kernel_size=3, groups=hidden)
        self.conv3 = TinyViTConvNorm(config, hidden, dim, bn_weight_init=0.0)
        self.activation = ACT2FN[config.hidden_act]
        self.drop_path = TinyViTDropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.activation(self.conv1(hidden_states))
        hidden_states = self.activation(self.conv2(hidden_states))
        hidden_states = self.conv3(hidden_states)
        return self.activation(residual + self.drop_path(hidden_states))


class TinyViTPatchMerging(nn.Module):
    """Downsampling between stages: 1x1 conv, depthwise 3x3 conv of stride 2 (1 in MobileSAM's last
    merging, which only widens the channels), 1x1 conv."""

    def __init__(self, config: TinyViTConfig, in_dim: int, out_dim: int, stride: int = 2):
        super().__init__()
        self.conv1 = TinyViTConvNorm(config, in_dim, out_dim)
        self.conv2 = TinyViTConvNorm(config, out_dim, out_dim, kernel_size=3, stride=stride, groups=out_dim)
        self.conv3 = TinyViTConvNorm(config, out_dim, out_dim)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.conv1(hidden_states))
        hidden_states = self.activation(self.conv2(hidden_states))
        return self.conv3(hidden_states)


def attention_bias_index(window_height: int, window_width: int, table_side: int) -> torch.Tensor:
    """(N, N) index into a per-head bias table of `table_side**2` entries, N = window_height * window_width.

    The table holds one learned bias per absolute offset (|dy|, |dx|) at position |dy| * table_side + |dx|,
    which is the order in which LeViT/TinyViT enumerate offsets; a window clipped to a small feature
    map reads the sub-table of the offsets it has.
    """
    rows = torch.arange(window_height).repeat_interleave(window_width)
    cols = torch.arange(window_width).repeat(window_height)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * table_side + dx


def resize_attention_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Bicubic resampling of a (num_heads, side**2) bias table to (num_heads, window_size**2).

    The 224 -> 384 -> 512 fine-tuning path of the paper; same interpolation as the reference
    (bicubic with antialiasing on the offset grid).
    """
    num_heads, entries = table.shape
    side = math.isqrt(entries)
    if side * side != entries:
        raise ValueError(f"attention bias table with {entries} entries per head is not a square window")
    if side == window_size:
        return table
    grid = table.float().reshape(1, num_heads, side, side)
    resized = F.interpolate(grid, size=(window_size, window_size), mode="bicubic", antialias=True)
    return resized.reshape(num_heads, window_size * window_size).to(table.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class TinyViTAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned per-head bias per absolute offset.

    The bias goes to transformers' attention interface as an additive mask, so eager and SDPA share
    one code path. `qkv` rows are ordered (q | k | v) x heads x head_dim.
    """

    def __init__(self, config: TinyViTConfig, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.window_size = window_size
        self.is_causal = False
        self.dropout = config.attention_probs_dropout_prob
        self.layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.attention_bias_table = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            "attention_bias_index", attention_bias_index(window_size, window_size, window_size), persistent=False
        )
        # Set by `TinyViTPreTrainedModel.fuse()`: the gathered (1, heads, N, N) bias for full windows;
        # a buffer so that `.to(device, dtype)` moves it with the weights.
        self.register_buffer("cached_bias", None, persistent=False)

    def attention_bias(self, window_height: int, window_width: int, dtype: torch.dtype) -> torch.Tensor:
        full = (window_height, window_width) == (self.window_size, self.window_size)
        if full and self.cached_bias is not None:
            return self.cached_bias.to(dtype)
        if full:
            index = self.attention_bias_index
        else:
            index = attention_bias_index(window_height, window_width, self.window_size)
            index = index.to(self.attention_bias_table.device)
        return self.attention_bias_table[:, index].unsqueeze(0).to(dtype)

    def forward(
        self, hidden_states: torch.Tensor, window_height: int, window_width: int, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, dim = hidden_states.shape
        qkv = self.qkv(self.layernorm(hidden_states))
        query, key, value = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.attention_bias(window_height, window_width, query.dtype)
        # SDPA cannot return probabilities, so a request for them takes the eager path for this call.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query, key, value, bias,
            scaling=self.scaling, dropout=self.dropout if self.training else 0.0,
        )  # fmt: skip
        attn_output = self.projection(attn_output.reshape(batch, length, dim))
        return attn_output, attn_weights if output_attentions else None


class TinyViTMLP(nn.Module):
    def __init__(self, config: TinyViTConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.fc1(self.layernorm(hidden_states))))
        return self.dropout(self.fc2(hidden_states))


class TinyViTLayer(GradientCheckpointingLayer):
    """Window attention, depthwise 3x3 conv on the token map, MLP; works on (batch, height, width, channels)."""

    def __init__(self, config: TinyViTConfig, dim: int, num_heads: int, window_size: int, drop_path_rate: float):
        super().__init__()
        self.window_size = window_size
        self.attention = TinyViTAttention(config, dim, num_heads, window_size)
        self.drop_path = TinyViTDropPath(drop_path_rate)
        self.local_conv = TinyViTConvNorm(config, dim, dim, kernel_size=config.local_conv_size, groups=dim)
        self.mlp = TinyViTMLP(config, dim)

    def window_attention(self, hidden_states: torch.Tensor, output_attentions: bool) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        # Clipping a window to a smaller map attends to exactly the map's tokens; the reference pads
        # instead, adding zero tokens that take part in the softmax.
        window_h, window_w = min(self.window_size, height), min(self.window_size, width)
        if (window_h, window_w) == (height, width):
            output, _ = self.attention(
                hidden_states.reshape(batch, height * width, channels), window_h, window_w, output_attentions
            )
            return output.view(batch, height, width, channels)
        pad_b, pad_r = -height % window_h, -width % window_w
        if pad_b or pad_r:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad_r, 0, pad_b))
        padded_h, padded_w = height + pad_b, width + pad_r
        rows, cols = padded_h // window_h, padded_w // window_w
        windows = hidden_states.view(batch, rows, window_h, cols, window_w, channels).transpose(2, 3)
        windows = windows.reshape(batch * rows * cols, window_h * window_w, channels)
        output, _ = self.attention(windows, window_h, window_w, output_attentions)
        output = output.view(batch, rows, cols, window_h, window_w, channels).transpose(2, 3)
        output = output.reshape(batch, padded_h, padded_w, channels)
        if pad_b or pad_r:
            output = output[:, :height, :width].contiguous()
        return output

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        attn_output = self.window_attention(hidden_states, output_attentions)
        hidden_states = hidden_states + self.drop_path(attn_output)
        hidden_states = self.local_conv(hidden_states.permute(0, 3, 1, 2))
        hidden_states = hidden_states.reshape(batch, channels, height * width).transpose(1, 2)
        hidden_states = hidden_states + self.drop_path(self.mlp(hidden_states))
        return hidden_states.view(batch, height, width, channels)


class TinyViTConvStage(nn.Module):
    def __init__(self, config: TinyViTConfig, drop_path_rates: list[float]):
        super().__init__()
        dim = config.embed_dims[0]
        self.layers = nn.ModuleList(TinyViTMBConvLayer(config, dim, rate) for rate in drop_path_rates)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class TinyViTStage(nn.Module):
    """Patch merging from the previous stage, then attention blocks; maps in and out are (B, C, H, W)."""

    def __init__(self, config: TinyViTConfig, index: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.embed_dims[index]
        stride = config.patch_merging_strides[index - 1]
        self.downsample = TinyViTPatchMerging(config, config.embed_dims[index - 1], dim, stride)
        self.layers = nn.ModuleList(
            TinyViTLayer(config, dim, config.num_heads[index], config.window_sizes[index], rate)
            for rate in drop_path_rates
        )

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        hidden_states = self.downsample(hidden_states).permute(0, 2, 3, 1)
        for layer in self.layers:
            hidden_states = layer(hidden_states, output_attentions)
        return hidden_states.permute(0, 3, 1, 2)


class TinyViTEncoder(nn.Module):
    def __init__(self, config: TinyViTConfig):
        super().__init__()
        # On the CPU explicitly: `.tolist()` needs data, and models are also built under `torch.device("meta")`.
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:index]) for index in range(len(config.depths))]
        stages = [TinyViTConvStage(config, rates[: config.depths[0]])]
        for index in range(1, len(config.depths)):
            stages.append(TinyViTStage(config, index, rates[starts[index] : starts[index] + config.depths[index]]))
        self.stages = nn.ModuleList(stages)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, ...]:
        """The map after each stage, (B, C, H, W) each. A request for attentions makes the attention
        layers return their probabilities, which `capture_outputs` records."""
        maps = []
        for stage in self.stages:
            hidden_states = stage(hidden_states, output_attentions)
            maps.append(hidden_states)
        return tuple(maps)


class TinyViTLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, as SAM's neck normalises."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TinyViTNeck(nn.Module):
    """MobileSAM's neck after the last stage: conv 1x1, LayerNorm2d, conv 3x3, LayerNorm2d, all without
    bias, mapping the last stage's channels to `config.neck_channels` (SAM's 256-channel image embedding)."""

    def __init__(self, config: TinyViTConfig):
        super().__init__()
        channels = config.neck_channels
        self.conv1 = nn.Conv2d(config.embed_dims[-1], channels, kernel_size=1, bias=False)
        self.norm1 = TinyViTLayerNorm2d(channels, eps=config.neck_layer_norm_eps)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = TinyViTLayerNorm2d(channels, eps=config.neck_layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(hidden_states))))


class TinyViTPreTrainedModel(PreTrainedModel):
    config_class = TinyViTConfig
    base_model_prefix = "tinyvit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["TinyViTLayer", "TinyViTMBConvLayer"]
    # `get_input_embeddings()`: the convolutional stem, where `enable_input_require_grads` hooks in.
    _input_embed_layer = "embeddings"
    # What `capture_outputs` records when asked: the stem's map, then each stage's map (B, C, H, W);
    # each attention block's probabilities (B * windows, heads, N, N).
    _can_record_outputs = {
        "hidden_states": [OutputRecorder(TinyViTConvStage, index=0), OutputRecorder(TinyViTStage, index=0)],
        "attentions": OutputRecorder(TinyViTAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # torch's own default for convolutions, which the reference keeps.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            # `transformers.initialization` skips tensors a checkpoint filled, so a checkpoint missing
            # only some of these gets the defined values for exactly those.
            init.constant_(module.weight, getattr(module, "weight_init", 1.0))
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, TinyViTAttention):
            init.zeros_(module.attention_bias_table)
            # Non-persistent, so never in a checkpoint: it must be rebuilt here or stay uninitialised.
            init.copy_(
                module.attention_bias_index,
                attention_bias_index(module.window_size, module.window_size, module.window_size),
            )

    # ---- optimiser helpers shared with the DeiT family (see the trainer) ----

    def no_weight_decay(self) -> set[str]:
        """Full names of the attention-bias tables (norms and biases are added by the trainer)."""
        return {name for name, _ in self.named_parameters() if name.endswith("attention_bias_table")}

    def get_num_layers_for_lr_decay(self) -> int:
        return sum(self.config.depths)

    def get_layer_id_for_lr_decay(self, name: str) -> int:
        """Layer id as in the reference fine-tuning: the stem shares id 0 with the first block, each
        patch merging shares the id of the block before it, and the head shares the last id."""
        depths = self.config.depths
        parts = name.split(".")
        if parts[0] == self.base_model_prefix:
            parts = parts[1:]
        if parts[0] == "embeddings":
            return 0
        if parts[0] == "encoder" and len(parts) > 3:
            stage = int(parts[2])
            if parts[3] == "layers":
                return sum(depths[:stage]) + int(parts[4])
            if parts[3] == "downsample":
                return sum(depths[:stage]) - 1
        return sum(depths) - 1

    # ---- inference fast path ----

    @torch.no_grad()
    def fuse(self) -> "TinyViTPreTrainedModel":
        """Fold every BatchNorm into its convolution, cache the gathered attention biases and switch
        the convolutions to channels-last memory.

        Inference only: the model is put in eval mode and can no longer be trained or saved.
        """
        self.eval()
        for module in self.modules():
            if isinstance(module, TinyViTConvNorm):
                module.fuse_()
            elif isinstance(module, TinyViTAttention):
                module.cached_bias = module.attention_bias_table[:, module.attention_bias_index].unsqueeze(0)
            elif isinstance(module, TinyViTEmbeddings):
                module.channels_last = True
        self.to(memory_format=torch.channels_last)
        self.is_fused = True
        return self

    def train(self, mode: bool = True):
        if mode and getattr(self, "is_fused", False):
            raise RuntimeError("this TinyViT was fused for inference (BatchNorm folded); reload it to train")
        return super().train(mode)

    def save_pretrained(self, *args, **kwargs):
        if getattr(self, "is_fused", False):
            raise RuntimeError("a fused TinyViT has no BatchNorm parameters to save; save the unfused model")
        return super().save_pretrained(*args, **kwargs)

    # ---- loading into other window sizes ----

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus: attention-bias tables saved for other window sizes
        (e.g. a 224 checkpoint loaded with a 384 config) are resized instead of rejected."""
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args,
            ignore_mismatched_sizes=True, output_loading_info=True, **kwargs,
        )  # fmt: skip
        tables, others = [], []
        for mismatch in info["mismatched_keys"]:
            (tables if mismatch[0].endswith("attention_bias_table") else others).append(mismatch)
        if others and not ignore_mismatched_sizes:
            listing = ", ".join(f"{key}: checkpoint {tuple(old)} vs model {tuple(new)}" for key, old, new in others)
            raise RuntimeError(
                f"checkpoint {pretrained_model_name_or_path} does not fit this config ({listing}); "
                "pass ignore_mismatched_sizes=True to re-initialise these weights"
            )
        if tables:
            saved = _read_checkpoint_tensors(pretrained_model_name_or_path, [key for key, _, _ in tables], kwargs)
            with torch.no_grad():
                for key, _, _ in tables:
                    parameter = model.get_parameter(key)
                    window = math.isqrt(parameter.shape[1])
                    parameter.copy_(resize_attention_bias_table(saved[key], window))
            info["mismatched_keys"] = others
        return (model, info) if output_loading_info else model


def _read_checkpoint_tensors(name_or_path, keys: list[str], kwargs: dict) -> dict[str, torch.Tensor]:
    """The named tensors of a saved single-file checkpoint, matched with or without the base-model prefix."""
    from transformers.modeling_utils import load_state_dict
    from transformers.utils import SAFE_WEIGHTS_NAME, cached_file

    hub_keys = ("cache_dir", "revision", "token", "local_files_only", "subfolder")
    path = cached_file(name_or_path, SAFE_WEIGHTS_NAME, **{k: kwargs[k] for k in hub_keys if k in kwargs})
    stored = load_state_dict(path)
    found = {}
    for key in keys:
        candidates = [key, f"tinyvit.{key}", key.removeprefix("tinyvit.")]
        match = next((c for c in candidates if c in stored), None)
        if match is None:
            raise KeyError(f"{key} is mismatched but absent from {path}")
        found[key] = stored[match]
    return found


class TinyViTModel(TinyViTPreTrainedModel):
    """TinyViT body: last feature map, pooled and normalised features, per-stage maps, attentions."""

    def __init__(self, config: TinyViTConfig):
        super().__init__(config)
        self.embeddings = TinyViTEmbeddings(config)
        self.encoder = TinyViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.embed_dims[-1], eps=config.layer_norm_eps)
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """`last_hidden_state` (B, C, H/32, W/32 at the published strides); `pooler_output` (B, C) =
        LayerNorm(mean over positions). `output_hidden_states`: the stem's map, then each stage's;
        `output_attentions`: one (B * windows, heads, N, N) per attention block (computed eagerly for that
        call). `capture_outputs` records both and turns the output into a tuple for `return_dict=False`."""
        maps = self.encoder(self.embeddings(pixel_values), _wants_attentions(self.config, output_attentions))
        pooled = self.layernorm(maps[-1].mean(dim=(2, 3)))
        return BaseModelOutputWithPooling(last_hidden_state=maps[-1], pooler_output=pooled)


def _wants_attentions(config: TinyViTConfig, output_attentions: bool | None) -> bool:
    return bool(config.output_attentions if output_attentions is None else output_attentions)


def _requested(**flags) -> dict:
    """The output flags a caller set: passing an unset one on as None would override the config's value."""
    return {name: value for name, value in flags.items() if value is not None}


class TinyViTForImageClassification(TinyViTPreTrainedModel):
    def __init__(self, config: TinyViTConfig):
        super().__init__(config)
        self.tinyvit = TinyViTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = (
            nn.Linear(config.embed_dims[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput:
        """`labels`, read by `config.problem_type` (see `hf_tinyvit.losses.label_loss`): class indices (B,) or
        target distributions (B, num_labels); multi-hot vectors; regression targets. `config.problem_type` is
        never changed by a forward: unset, it means regression for one output and classification otherwise."""
        # The body answers in a dataclass even under `config.return_dict=False`; `can_return_tuple` converts ours.
        flags = _requested(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        outputs = self.tinyvit(pixel_values, return_dict=True, **flags)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = distillation_loss(
                DistillationMode.NONE, logits, labels, problem_type=self.config.problem_type
            ).loss
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class TinyViTBackbone(BackboneMixin, TinyViTPreTrainedModel):
    """Feature maps of the stages named in `config.out_features` ("stem", "stage1".."stage4", and "neck"
    when `config.neck_channels` is set), for detection and segmentation heads. Strides 4, 4, 8, 16, 32 for
    the published models; a patch merging of stride 1 keeps its input's stride (MobileSAM: 4, 4, 8, 16, 16,
    and the neck at 16)."""

    def __init__(self, config: TinyViTConfig):
        super().__init__(config)
        self.embeddings = TinyViTEmbeddings(config)
        self.encoder = TinyViTEncoder(config)
        self.neck = TinyViTNeck(config) if config.neck_channels else None
        self.num_features = [config.embed_dims[0]] + list(config.embed_dims)
        if self.neck is not None:
            self.num_features.append(config.neck_channels)
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput:
        """`feature_maps`: one (B, C, H, W) map per name in `config.out_features`. `hidden_states` (the
        stem's and each stage's map, never the neck's) and `attentions` as for `TinyViTModel`."""
        embeddings = self.embeddings(pixel_values)
        maps = (embeddings,) + self.encoder(embeddings, _wants_attentions(self.config, output_attentions))
        if self.neck is not None and "neck" in self.out_features:
            maps += (self.neck(maps[-1]),)
        named = dict(zip(self.stage_names, maps))
        return BackboneOutput(feature_maps=tuple(named[name] for name in self.out_features))


TinyViTModel.register_for_auto_class("AutoModel")
TinyViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
TinyViTBackbone.register_for_auto_class("AutoBackbone")

__all__ = [
    "TinyViTBackbone",
    "TinyViTForImageClassification",
    "TinyViTModel",
    "TinyViTNeck",
    "TinyViTPreTrainedModel",
    "attention_bias_index",
    "resize_attention_bias_table",
]
