"""MobileSAM's image encoder as a TinyViT backbone: a patch merging of stride 1, SAM's neck, the preset,
and the key map from a MobileSAM checkpoint (checked on a checkpoint built from our own tensors by the
inverse map; the comparison with MobileSAM's own code runs outside the suite, see the README)."""

import pytest
import torch

from hf_tinyvit.models.tinyvit import MOBILE_SAM_PRESETS, TinyViTBackbone, TinyViTConfig
from hf_tinyvit.models.tinyvit.convert_mobile_sam import (
    backbone_to_mobile_sam_state_dict,
    convert_mobile_sam,
    mobile_sam_config,
    mobile_sam_to_backbone_state_dict,
)


def small_sam_config(**overrides) -> TinyViTConfig:
    """MobileSAM's shape at 1024 (windows 7, 7, 14, 7; last merging of stride 1; 256-channel neck) with tiny
    widths and one block per stage."""
    values = dict(
        embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 3], window_sizes=[7, 7, 14, 7],
        image_size=1024, patch_merging_strides=[2, 2, 1], neck_channels=256,
        out_features=["stage2", "stage3", "stage4", "neck"],
    )  # fmt: skip
    return TinyViTConfig(**{**values, **overrides})


def random_backbone(config: TinyViTConfig, seed: int = 0) -> TinyViTBackbone:
    model = TinyViTBackbone(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(0.5 + 0.5 * noise.abs() if name.endswith("running_var") else 0.3 * noise)
    return model


def sam_checkpoint(backbone: TinyViTBackbone) -> dict[str, torch.Tensor]:
    """A whole-SAM state dict in MobileSAM's layout around our encoder's tensors: the encoder by the inverse
    map, Cream's classifier that MobileSAM keeps but never runs, and pieces of the other two SAM parts."""
    generator = torch.Generator().manual_seed(7)
    state = backbone_to_mobile_sam_state_dict(backbone.state_dict(), backbone.config)
    width = backbone.config.embed_dims[-1]
    state["image_encoder.norm_head.weight"] = torch.ones(width)
    state["image_encoder.norm_head.bias"] = torch.zeros(width)
    state["image_encoder.head.weight"] = torch.randn(1000, width, generator=generator)
    state["image_encoder.head.bias"] = torch.zeros(1000)
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128, generator=generator)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 256, generator=generator)
    return state


def test_stride_one_merging_keeps_the_map_and_the_neck_gives_sams_embedding():
    backbone = random_backbone(small_sam_config())
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4", "neck"]
    assert backbone.channels == [16, 16, 24, 256]
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
    # strides 8, 16, 16 (no downsampling into stage 4), and the neck at 16: SAM's 64x64 image embedding
    assert [tuple(m.shape) for m in maps] == [(1, 16, 128, 128), (1, 16, 64, 64), (1, 24, 64, 64), (1, 256, 64, 64)]
    merging = backbone.encoder.stages[3].downsample.conv2.convolution
    assert merging.stride == (1, 1) and backbone.encoder.stages[2].downsample.conv2.convolution.stride == (2, 2)
    # SAM's LayerNorm2d: each position normalised over the channels, (x - mean) / sqrt(var + 1e-6), then scaled
    norm = backbone.neck.norm1
    features = torch.randn(2, 256, 5, 3, generator=torch.Generator().manual_seed(3))
    mean, var = features.mean(1, keepdim=True), features.var(1, unbiased=False, keepdim=True)
    expected = norm.weight[:, None, None] * (features - mean) / torch.sqrt(var + 1e-6) + norm.bias[:, None, None]
    with torch.no_grad():
        assert torch.allclose(norm(features), expected, atol=1e-5)


def test_mobile_sam_keys_map_to_ours_and_back():
    config = small_sam_config()
    backbone = random_backbone(config)
    checkpoint = sam_checkpoint(backbone)
    # MobileSAM's own names (Cream's layout under image_encoder., SAM's neck as a Sequential)
    for key in (
        "image_encoder.patch_embed.seq.0.c.weight",
        "image_encoder.patch_embed.seq.2.bn.running_var",
        "image_encoder.layers.0.blocks.0.conv3.bn.weight",
        "image_encoder.layers.2.downsample.conv2.c.weight",  # the stride-1 merging, at the end of stage 2
        "image_encoder.layers.3.blocks.0.attn.attention_biases",
        "image_encoder.layers.1.blocks.0.local_conv.bn.bias",
        "image_encoder.neck.0.weight",
        "image_encoder.neck.3.bias",
    ):
        assert key in checkpoint, key
    converted, unused = mobile_sam_to_backbone_state_dict(checkpoint, config)
    assert unused == [
        "image_encoder.head.bias", "image_encoder.head.weight", "image_encoder.norm_head.bias",
        "image_encoder.norm_head.weight", "mask_decoder.iou_token.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ]  # fmt: skip
    assert converted.keys() == backbone.state_dict().keys()
    for key, value in backbone.state_dict().items():
        assert torch.equal(converted[key], value), key
    # an encoder-only state dict (no image_encoder. prefix) maps the same way
    bare = {k.removeprefix("image_encoder."): v for k, v in checkpoint.items() if k.startswith("image_encoder.")}
    assert mobile_sam_to_backbone_state_dict(bare, config)[0].keys() == converted.keys()


def test_qkv_rows_go_back_to_per_head_blocks():
    config = small_sam_config()
    backbone = random_backbone(config)
    checkpoint = backbone_to_mobile_sam_state_dict(backbone.state_dict(), config)
    ours = backbone.state_dict()["encoder.stages.1.layers.0.attention.qkv.weight"]  # 2 heads, head_dim 8
    theirs = checkpoint["image_encoder.layers.1.blocks.0.attn.qkv.weight"]
    # Cream splits qkv(x).view(B, N, heads, 3 * head_dim): head h's q, k, v rows follow each other
    head_dim = 8
    for head in range(2):
        for part in range(3):  # q, k, v
            block = theirs[(3 * head + part) * head_dim : (3 * head + part + 1) * head_dim]
            assert torch.equal(block, ours[(part * 2 + head) * head_dim : (part * 2 + head + 1) * head_dim])


def test_convert_writes_a_backbone_folder_with_sams_processor(tmp_path):
    from transformers import AutoImageProcessor, SamImageProcessor

    config = small_sam_config()
    backbone = random_backbone(config)
    torch.save(sam_checkpoint(backbone), tmp_path / "mobile_sam.pt")
    model, unused = convert_mobile_sam(tmp_path / "mobile_sam.pt", tmp_path / "out", config=config)
    assert len(unused) == 6
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    # (AutoBackbone.from_pretrained asks the Hub whether a local folder is a repository, and fails offline)
    loaded = TinyViTBackbone.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.patch_merging_strides == [2, 2, 1] and loaded.config.neck_channels == 256
    processor = AutoImageProcessor.from_pretrained(str(tmp_path / "out"))
    assert isinstance(processor, SamImageProcessor)
    image = torch.randint(0, 256, (3, 300, 500), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    pixels = processor(image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 1024, 1024)  # longest side to 1024, padded
    with torch.no_grad():
        expected = backbone(pixels).feature_maps
        got = loaded(pixels).feature_maps
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert got[-1].shape == (1, 256, 64, 64)


def test_convert_refuses_what_does_not_fit_and_writes_nothing(tmp_path):
    config = small_sam_config()
    checkpoint = sam_checkpoint(random_backbone(config))
    torch.save({k: v for k, v in checkpoint.items() if not k.startswith("image_encoder.")}, tmp_path / "parts.pt")
    with pytest.raises(ValueError, match="not a MobileSAM checkpoint: no 'image_encoder.\\*' keys"):
        convert_mobile_sam(tmp_path / "parts.pt", tmp_path / "out", config=config)
    # the real 5M encoder's widths against this tiny checkpoint: every mis-shaped tensor is listed
    torch.save(checkpoint, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"for preset tinyvit-5m-mobile-sam does not match the model:(.|\n)*mis-shaped"):
        convert_mobile_sam(tmp_path / "tiny.pt", tmp_path / "out")
    with pytest.raises(ValueError, match="needs neck_channels"):
        convert_mobile_sam(tmp_path / "tiny.pt", tmp_path / "out", config=small_sam_config(neck_channels=None, out_features=None))
    assert not (tmp_path / "out").exists()


def test_preset_is_mobile_sams_encoder():
    assert set(MOBILE_SAM_PRESETS) == {"tinyvit-5m-mobile-sam"}
    config = mobile_sam_config()
    assert config.embed_dims == [64, 128, 160, 320] and config.num_heads == [2, 4, 5, 10]
    assert config.window_sizes == [7, 7, 14, 7] and config.image_size == 1024
    assert config.patch_merging_strides == [2, 2, 1] and config.neck_channels == 256
    assert config.out_features == ["neck"]
    with torch.device("meta"):
        encoder = TinyViTBackbone(config)
    # MobileSAM's encoder (build_sam_vit_t) has 6,065,532 parameters, 321,640 of them in the classifier it
    # never runs (norm_head, head): counted on the reference code.
    assert sum(p.numel() for p in encoder.parameters()) == 6_065_532 - 321_640
