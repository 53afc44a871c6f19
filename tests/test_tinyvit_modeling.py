"""TinyViT model family: parity with timm, attention paths, fused inference, training features, loading."""


import pytest
import torch
import torch.nn.functional as F

import hf_tinyvit.models.tinyvit as tinyvit
from compat import enable_checkpointing
from hf_tinyvit.models.tinyvit import (
    TINYVIT_PRESETS,
    TinyViTBackbone,
    TinyViTConfig,
    TinyViTForImageClassification,
    TinyViTModel,
    attention_bias_index,
    resize_attention_bias_table,
)
from hf_tinyvit.models.tinyvit.convert_tinyvit import timm_to_hf_state_dict

timm = pytest.importorskip("timm")


def tiny_config(**overrides) -> TinyViTConfig:
    """Four stages at 32x32: maps 8, 4, 2, 1, so stage-2 windows pad (4 -> 3x3 windows) and later ones clip."""
    values = dict(
        embed_dims=[8, 16, 16, 24], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 3], window_sizes=[7, 3, 4, 2],
        num_labels=5, image_size=32,
    )  # fmt: skip
    return TinyViTConfig(**{**values, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm statistics, zero-initialised BN weights and bias tables non-trivial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            # Small statistics: a running mean larger than the activations would wash the input out.
            if name.endswith("running_var"):
                tensor.copy_(0.1 + 0.1 * noise.abs())
            elif name.endswith("running_mean"):
                tensor.copy_(0.02 * noise)
            elif name.endswith(("attention_biases", "attention_bias_table")):
                tensor.copy_(noise)
            elif name.endswith("weight") and (".bn." in name or "batch_norm" in name):
                tensor.copy_(1.0 + 0.2 * noise)
            elif name in ("head.fc.weight", "classifier.weight"):
                tensor.copy_(0.2 * noise)
    return model


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ours_from_timm(timm_model, config: TinyViTConfig) -> TinyViTForImageClassification:
    model = TinyViTForImageClassification(config).eval()
    model.load_state_dict(timm_to_hf_state_dict(timm_model.state_dict(), config), strict=True)
    return model


# Real widths, heads and windows of each size; depth cut to one block per stage to keep the suite fast.
@pytest.mark.parametrize("variant", ["tiny_vit_5m_224", "tiny_vit_11m_224", "tiny_vit_21m_224", "tiny_vit_21m_384"])
def test_logits_match_timm_on_the_same_weights(variant):
    depths = [1, 1, 1, 1]
    reference = randomise(timm.create_model(variant, pretrained=False, num_classes=10, depths=depths)).eval()
    _, size, resolution = variant.rsplit("_", 2)
    config = TinyViTConfig.from_preset(f"tinyvit-{size}-{resolution}", num_labels=10, depths=depths)
    ours = ours_from_timm(reference, config)
    pixels = images(2, int(resolution))
    with torch.no_grad():
        expected_features = reference.forward_features(pixels)
        expected = reference.forward_head(expected_features)
        outputs = ours(pixels, output_hidden_states=True)
    assert outputs.logits.shape == (2, 10)
    assert (outputs.logits - expected).abs().max().item() <= 1e-4
    # Features reach |x| ~ 15 at 21M: float32 reductions in another order differ by a few ulps of that,
    # so the bound is relative to the features' scale (1e-4 absolute failed at 1.07e-4 on one machine).
    scale = expected_features.abs().max().item()
    assert (outputs.hidden_states[-1] - expected_features).abs().max().item() <= 2e-5 * scale
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the outputs depend on the input


def test_padded_windows_match_timm():
    # 64x64 input: maps 16, 8, 4, 2 with windows 3, 3, 2 -> the reference pads 8 -> 9 and 4 -> 6.
    kwargs = dict(embed_dims=[8, 16, 16, 24], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 3], window_sizes=[3, 3, 3, 2])
    reference = randomise(timm.models.tiny_vit.TinyVit(num_classes=4, **kwargs)).eval()
    config = TinyViTConfig(num_labels=4, **kwargs)
    ours = ours_from_timm(reference, config)
    pixels = images(2, 64)
    with torch.no_grad():
        assert (ours(pixels).logits - reference(pixels)).abs().max().item() <= 1e-5


def test_clipped_window_reads_the_matching_sub_table():
    # A window of 7 on a 4x4 map is clipped to 4x4 and must equal a model built with window 4 whose
    # table holds the same per-offset biases.
    wide = randomise(TinyViTForImageClassification(tiny_config(window_sizes=[7, 7, 7, 7]))).eval()
    narrow = TinyViTForImageClassification(tiny_config(window_sizes=[7, 4, 2, 1])).eval()
    state = wide.state_dict()
    for name, value in narrow.state_dict().items():
        if name.endswith("attention_bias_table"):
            side = int(value.shape[1] ** 0.5)
            offsets = torch.tensor([dy * 7 + dx for dy in range(side) for dx in range(side)])
            state[name] = state[name][:, offsets]
    narrow.load_state_dict(state, strict=True)
    pixels = images(2, 32)
    with torch.no_grad():
        assert torch.allclose(wide(pixels).logits, narrow(pixels).logits, atol=1e-6)


def test_bias_index_follows_reference_offset_order():
    # LeViT/TinyViT number offsets in the order they first appear scanning query then key positions.
    side = 4
    points = [(y, x) for y in range(side) for x in range(side)]
    seen, expected = {}, []
    for p in points:
        for q in points:
            offset = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            expected.append(seen.setdefault(offset, len(seen)))
    assert torch.equal(attention_bias_index(side, side, side).flatten(), torch.tensor(expected))


def test_eager_and_sdpa_agree(tmp_path):
    randomise(TinyViTForImageClassification(tiny_config())).save_pretrained(tmp_path)
    eager = TinyViTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = TinyViTForImageClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    pixels = images(2, 40)
    with torch.no_grad():
        assert (eager(pixels).logits - sdpa(pixels).logits).abs().max().item() <= 1e-5


def test_fused_model_matches_unfused_and_refuses_training():
    model = randomise(TinyViTForImageClassification(tiny_config())).eval()
    pixels = images(3, 48)
    with torch.no_grad():
        expected = model(pixels).logits
        fused = model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert (fused(pixels).logits - expected).abs().max().item() <= 1e-5
    with pytest.raises(RuntimeError, match="fused"):
        fused.train()


def test_save_and_load_round_trip_rebuilds_index_buffers(tmp_path):
    model = randomise(TinyViTForImageClassification(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    loaded = TinyViTForImageClassification.from_pretrained(tmp_path).eval()
    for (name, buffer), (_, original) in zip(loaded.named_buffers(), model.named_buffers()):
        assert torch.equal(buffer, original), name
    pixels = images(2, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixels).logits, model(pixels).logits, atol=1e-6)


def test_auto_classes_resolve_to_tinyvit(tmp_path):
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
    )

    tiny_config().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, TinyViTConfig)
    assert isinstance(AutoModel.from_config(config), TinyViTModel)
    assert isinstance(AutoModelForImageClassification.from_config(config), TinyViTForImageClassification)
    assert isinstance(AutoBackbone.from_config(config), TinyViTBackbone)


def test_backbone_feature_maps():
    config = tiny_config(out_features=["stem", "stage1", "stage2", "stage3", "stage4"])
    backbone = TinyViTBackbone(config).eval()
    assert backbone.channels == [8, 8, 16, 16, 24]
    with torch.no_grad():
        maps = backbone(images(2, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 8, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4), (2, 24, 2, 2)]
    default = TinyViTBackbone(tiny_config()).eval()
    assert default.out_features == ["stage4"]


def test_model_outputs_hidden_states_and_attentions():
    model = TinyViTModel(tiny_config()).eval()
    with torch.no_grad():
        out = model(images(2, 32), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 24, 1, 1) and out.pooler_output.shape == (2, 24)
    assert [h.shape[-1] for h in out.hidden_states] == [8, 8, 4, 2, 1]
    # stage 2: 4x4 map in padded 3x3 windows -> 4 windows; stage 3: clipped 2x2; stage 4: 1x1.
    assert [tuple(a.shape) for a in out.attentions] == [(8, 2, 9, 9), (2, 2, 4, 4), (2, 2, 4, 4), (2, 3, 1, 1)]
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(8, 2, 9))


def test_loss_accepts_indices_and_distributions():
    model = TinyViTForImageClassification(tiny_config()).eval()
    pixels = images(4, 32)
    labels = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        hard = model(pixels, labels=labels)
        soft = model(pixels, labels=F.one_hot(labels, 5).float())
        mixed_targets = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), -1)
        mixed = model(pixels, labels=mixed_targets)
    assert torch.allclose(hard.loss, F.cross_entropy(hard.logits, labels))
    assert torch.allclose(soft.loss, hard.loss)
    expected = -(mixed_targets * torch.log_softmax(mixed.logits, -1)).sum(-1).mean()
    assert torch.allclose(mixed.loss, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"targets of shape \(4, 3\) and dtype torch.float32 do not fit logits"):
        model(pixels, labels=torch.zeros(4, 3))


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    torch.manual_seed(0)  # initialisation only; both copies share the weights below
    config = tiny_config()
    plain = randomise(TinyViTForImageClassification(config)).train()
    checkpointed = TinyViTForImageClassification(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    enable_checkpointing(checkpointed)
    calls = []
    # torch stops a recompute once it has what backward needs, so watch the block's first matmul.
    checkpointed.tinyvit.encoder.stages[2].layers[0].attention.qkv.register_forward_hook(lambda *a: calls.append(1))
    pixels, labels = images(4, 32), torch.tensor([0, 1, 2, 3])
    plain(pixels, labels=labels).loss.backward()
    checkpointed(pixels, labels=labels).loss.backward()
    assert len(calls) == 2  # forward, then recomputed in backward
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_drop_path_is_identity_in_eval_and_random_in_training():
    model = TinyViTForImageClassification(tiny_config(drop_path_rate=0.5))
    pixels = images(8, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(pixels).logits, model(pixels).logits)
        model.train()
        torch.manual_seed(0)
        first = model(pixels).logits
        assert not torch.equal(first, model(pixels).logits)


def test_bias_tables_are_resized_when_loading_other_window_sizes(tmp_path):
    model = randomise(TinyViTForImageClassification(tiny_config(window_sizes=[7, 3, 4, 2])))
    model.save_pretrained(tmp_path)
    bigger = tiny_config(window_sizes=[7, 5, 6, 3])
    loaded = TinyViTForImageClassification.from_pretrained(tmp_path, config=bigger)
    for name, table in model.state_dict().items():
        if name.endswith("attention_bias_table"):
            side = int(loaded.state_dict()[name].shape[1] ** 0.5)
            assert torch.equal(loaded.state_dict()[name], resize_attention_bias_table(table, side)), name
    # Any other mismatch is still an error unless the caller accepts it.
    with pytest.raises(RuntimeError, match="classifier.weight"):
        TinyViTForImageClassification.from_pretrained(tmp_path, config=tiny_config(num_labels=7))


def test_bias_table_resize_matches_timm():
    from timm.layers import resize_rel_pos_bias_table_levit

    table = torch.randn(3, 7 * 7, generator=torch.Generator().manual_seed(0))
    expected = resize_rel_pos_bias_table_levit(table.T, (12 * 12, 3)).T
    assert torch.allclose(resize_attention_bias_table(table, 12), expected, atol=1e-6)


def test_optimiser_helpers_follow_the_reference_layer_decay():
    model = TinyViTForImageClassification(tiny_config())
    names = [name for name, _ in model.named_parameters()]
    assert model.no_weight_decay() == {n for n in names if n.endswith("attention_bias_table")}
    assert len(model.no_weight_decay()) == 4  # one table per attention block
    depth = model.get_num_layers_for_lr_decay()
    assert depth == 5
    ids = {name: model.get_layer_id_for_lr_decay(name) for name in names}
    assert ids["tinyvit.embeddings.conv1.convolution.weight"] == 0
    assert ids["tinyvit.encoder.stages.0.layers.0.conv1.convolution.weight"] == 0
    assert ids["tinyvit.encoder.stages.2.downsample.conv1.convolution.weight"] == 1  # last block of stage 1
    assert ids["tinyvit.encoder.stages.2.layers.1.mlp.fc1.weight"] == 3
    assert ids["classifier.weight"] == ids["tinyvit.layernorm.weight"] == depth - 1
    assert sorted(set(ids.values())) == list(range(depth))


def test_presets_cover_the_nine_published_variants():
    assert len(TINYVIT_PRESETS) == 9
    config = TinyViTConfig.from_preset("tinyvit-21m-512", num_labels=3)
    assert config.window_sizes == [16, 16, 32, 16] and config.embed_dims == [96, 192, 384, 576]
    assert config.num_labels == 3 and config.image_size == 512
    with pytest.raises(ValueError, match="unknown TinyViT preset 'tinyvit-7m-224'"):
        TinyViTConfig.from_preset("tinyvit-7m-224")
    with pytest.raises(ValueError, match="embed_dims\\[1\\]=30 must be a multiple of num_heads\\[1\\]=4"):
        TinyViTConfig(embed_dims=[8, 30, 16, 24], num_heads=[1, 4, 2, 3])


def test_published_parameter_counts():
    counts = {}
    for size in ("5m", "11m", "21m"):
        with torch.device("meta"):
            model = TinyViTForImageClassification(TinyViTConfig.from_preset(f"tinyvit-{size}-224", num_labels=1000))
        counts[size] = sum(p.numel() for p in model.parameters()) / 1e6
    assert 5.3 < counts["5m"] < 5.5 and 10.9 < counts["11m"] < 11.1 and 21.1 < counts["21m"] < 21.3


def test_package_exports():
    assert tinyvit.__all__ and all(hasattr(tinyvit, name) for name in tinyvit.__all__)
