"""DeiT-distilled model: losses against hand computations, both heads learning their own targets, the
paper's initialisation, lr-decay ids and position-embedding interpolation (against timm)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_tinyvit.models.deit_distilled import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    DeiTDistilledImageClassifierOutput,
    DeiTDistilledModel,
    deit_distilled_loss,
    interpolate_position_embeddings,
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


def make_model(seed=0, **overrides):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DeiTDistilledForImageClassification(DeiTDistilledConfig(**{**TINY, **overrides}))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hand_ce(logits, labels):
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    return -log_probs[torch.arange(len(labels)), labels].mean()


def loss_of(cls, dist, labels, distillation_labels=None, teacher_probs=None, **config):
    """The model's loss function under a config with the given distillation settings."""
    return deit_distilled_loss(
        DeiTDistilledConfig(**TINY, **config), cls, dist, labels, distillation_labels, teacher_probs
    ).loss


def test_labels_alone_train_both_heads():
    cls, dist = randn(4, 5, seed=1), randn(4, 5, seed=2)
    labels = torch.tensor([0, 3, 4, 1])
    loss = loss_of(cls, dist, labels)
    assert torch.allclose(loss, 0.5 * hand_ce(cls, labels) + 0.5 * hand_ce(dist, labels), atol=1e-6)


def test_mixed_labels_are_distributions():
    """Mixup/CutMix labels arrive as distributions; the class head's term becomes a soft cross-entropy."""
    cls, dist = randn(4, 5, seed=1), randn(4, 5, seed=2)
    mixed = 0.7 * F.one_hot(torch.tensor([0, 3, 4, 1]), 5) + 0.3 * F.one_hot(torch.tensor([2, 2, 0, 0]), 5)
    teacher = torch.tensor([2, 2, 0, 1])
    soft_ce = -(mixed * torch.log_softmax(cls, -1)).sum(-1).mean()
    expected = 0.5 * soft_ce + 0.5 * hand_ce(dist, teacher)
    got = loss_of(cls, dist, mixed.float(), distillation_labels=teacher)
    assert torch.allclose(got, expected, atol=1e-6)


def test_hard_loss_matches_hand_computation():
    cls, dist = randn(4, 5, seed=1), randn(4, 5, seed=2)
    labels, teacher = torch.tensor([0, 3, 4, 1]), torch.tensor([2, 2, 0, 1])
    expected = 0.5 * hand_ce(cls, labels) + 0.5 * hand_ce(dist, teacher)
    assert torch.allclose(loss_of(cls, dist, labels, distillation_labels=teacher), expected, atol=1e-6)
    # With a teacher distribution and distillation_type="hard", the target is the teacher's argmax.
    teacher_probs = torch.softmax(randn(4, 5, seed=3) * 3, dim=-1)
    expected = 0.5 * hand_ce(cls, labels) + 0.5 * hand_ce(dist, teacher_probs.argmax(-1))
    got = loss_of(cls, dist, labels, teacher_probs=teacher_probs, distillation_type="hard")
    # unset, the type is hard too
    assert torch.allclose(loss_of(cls, dist, labels, teacher_probs=teacher_probs), expected, atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("alpha, tau", [(0.5, 1.0), (0.3, 3.0)])
def test_soft_loss_matches_hand_computation(alpha, tau):
    cls, dist, teacher_logits = randn(4, 5, seed=1), randn(4, 5, seed=2), randn(4, 5, seed=3)
    labels = torch.tensor([0, 3, 4, 1])
    p_teacher = torch.softmax(teacher_logits / tau, dim=-1)
    log_q = torch.log_softmax(dist / tau, dim=-1)
    kl = (p_teacher * (p_teacher.log() - log_q)).sum(-1).mean()
    expected = (1 - alpha) * hand_ce(cls, labels) + alpha * tau**2 * kl
    got = loss_of(
        cls, dist, labels, teacher_probs=torch.softmax(teacher_logits, -1),
        distillation_type="soft", distillation_alpha=alpha, distillation_tau=tau,
    )
    assert torch.allclose(got, expected, atol=1e-5)


def test_forward_loss_uses_config_and_one_output_type():
    model = make_model(distillation_type="soft", distillation_alpha=0.25, distillation_tau=2.0)
    pixels, labels = randn(3, 3, 32, 32), torch.tensor([1, 0, 4])
    teacher_probs = torch.softmax(randn(3, 5, seed=5), dim=-1)
    model.train()
    train_out = model(pixels, labels=labels, teacher_probs=teacher_probs)
    model.eval()
    eval_out = model(pixels)
    assert type(train_out) is type(eval_out) is DeiTDistilledImageClassifierOutput
    assert eval_out.loss is None and train_out.loss.shape == ()
    expected = loss_of(
        train_out.cls_logits, train_out.distillation_logits, labels, teacher_probs=teacher_probs,
        distillation_type="soft", distillation_alpha=0.25, distillation_tau=2.0,
    )
    assert torch.allclose(train_out.loss, expected)
    assert torch.allclose(eval_out.logits, (eval_out.cls_logits + eval_out.distillation_logits) / 2)


def test_target_errors_name_the_problem():
    model = make_model()
    pixels = randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="labels are required"):
        model(pixels, distillation_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not both"):
        model(pixels, labels=torch.tensor([0, 1]), distillation_labels=torch.tensor([0, 1]),
              teacher_probs=torch.full((2, 5), 0.2))
    with pytest.raises(ValueError, match=r"teacher_probs of shape \(2, 7\)"):
        model(pixels, labels=torch.tensor([0, 1]), teacher_probs=torch.full((2, 7), 1 / 7))
    with pytest.raises(Exception, match="distillation_type='medium'"):
        DeiTDistilledConfig(**TINY, distillation_type="medium")
    with pytest.raises(Exception, match="distillation_alpha=1.5"):
        DeiTDistilledConfig(**TINY, distillation_alpha=1.5)


def test_heads_learn_their_own_targets():
    """The class head fits the labels and the distillation head different teacher classes on the
    same images, with a plain optimizer loop."""
    model = make_model(seed=1, hidden_size=48, num_attention_heads=3, intermediate_size=96)
    pixels = randn(8, 3, 32, 32, seed=7)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    teacher = (labels + 2) % 5  # never the label
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(40):
        loss = model(pixels, labels=labels, distillation_labels=teacher).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(pixels)
    assert torch.equal(out.cls_logits.argmax(-1), labels)
    assert torch.equal(out.distillation_logits.argmax(-1), teacher)
    assert loss.item() < 0.1


def test_initialisation_follows_the_paper():
    model = make_model(hidden_size=64, num_attention_heads=4, image_size=128, patch_size=8)
    embeddings = model.deit.embeddings
    tokens = torch.cat([embeddings.cls_token.flatten(), embeddings.distillation_token.flatten()])
    positions = embeddings.position_embeddings.detach().flatten()
    for values in (tokens.detach(), positions, model.cls_classifier.weight.detach().flatten()):
        assert abs(values.std().item() - 0.02) < 0.004  # ~0.0199 after truncation at +-2
        assert abs(values.mean().item()) < 0.005
    # Nearly orthogonal tokens at the start, as the paper observes (cosine 0.06 after training begins).
    cosine = F.cosine_similarity(embeddings.cls_token.flatten(), embeddings.distillation_token.flatten(), dim=0)
    assert abs(cosine.item()) < 0.5
    assert torch.all(model.cls_classifier.bias == 0)
    assert torch.all(model.deit.layers[0].layernorm_before.weight == 1)


def test_no_weight_decay_and_layer_ids():
    model = make_model()
    assert model.no_weight_decay() == {
        "deit.embeddings.cls_token", "deit.embeddings.distillation_token", "deit.embeddings.position_embeddings"
    }
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)
    assert model.get_num_layers_for_lr_decay() == 4
    ids = {name: model.get_layer_id_for_lr_decay(name) for name in names}
    assert ids["deit.embeddings.patch_embeddings.projection.weight"] == 0
    assert ids["deit.layers.0.mlp.fc1.weight"] == 1 and ids["deit.layers.1.attention.q_proj.bias"] == 2
    assert ids["deit.layernorm.weight"] == ids["cls_classifier.weight"] == ids["distillation_classifier.bias"] == 3
    base = model.deit
    assert base.get_layer_id_for_lr_decay("layers.1.mlp.fc2.weight") == 2
    assert base.no_weight_decay() == {
        "embeddings.cls_token", "embeddings.distillation_token", "embeddings.position_embeddings"
    }


def test_position_embedding_interpolation_matches_timm(tmp_path):
    """Fine-tuning at a higher resolution: our in-place resize equals timm's checkpoint resampling, and the
    resized model equals a timm model built at the new size from the same weights."""
    pytest.importorskip("timm")
    import timm
    from timm.layers import resample_abs_pos_embed

    position_embeddings = randn(1, 2 + 16, 8)
    ours = interpolate_position_embeddings(position_embeddings, (6, 6))
    theirs = resample_abs_pos_embed(position_embeddings, new_size=(6, 6), num_prefix_tokens=2)
    assert ours.shape == (1, 2 + 36, 8) and torch.allclose(ours, theirs, atol=1e-6)

    model = make_model(layer_norm_eps=1e-6).eval()
    timm_small = model_to_timm(model, img_size=32)
    model.resize_position_embeddings(48)
    assert model.config.image_size == 48 and model.deit.embeddings.position_embeddings.shape[1] == 2 + 36
    with torch.random.fork_rng():
        timm_large = timm.create_model(
            "deit_tiny_distilled_patch16_224", pretrained=False, img_size=48, patch_size=8, embed_dim=32,
            depth=2, num_heads=2, mlp_ratio=2, num_classes=5,
        ).eval()
    timm_large.load_state_dict(
        timm.models.vision_transformer.checkpoint_filter_fn(timm_small.state_dict(), timm_large), strict=True
    )
    pixels = randn(2, 3, 48, 48)
    with torch.no_grad():
        resized_logits = model(pixels).logits
    assert torch.allclose(resized_logits, timm_large(pixels), atol=1e-5)
    # The new resolution is part of the saved model.
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        reloaded_logits = DeiTDistilledForImageClassification.from_pretrained(tmp_path).eval()(pixels).logits
    assert torch.equal(reloaded_logits, resized_logits)
    with pytest.raises(ValueError, match="multiple of patch_size=8"):
        model.resize_position_embeddings(50)


def model_to_timm(model, img_size):
    """A timm distilled DeiT holding `model`'s weights (the inverse of the conversion key map)."""
    import timm

    config = model.config
    with torch.random.fork_rng():
        reference = timm.create_model(
            "deit_tiny_distilled_patch16_224", pretrained=False, img_size=img_size, patch_size=config.patch_size,
            embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / config.hidden_size, num_classes=config.num_labels,
        ).eval()
    ours = model.state_dict()
    state = {
        "cls_token": ours["deit.embeddings.cls_token"],
        "dist_token": ours["deit.embeddings.distillation_token"],
        "pos_embed": ours["deit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": ours["deit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": ours["deit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": ours["deit.layernorm.weight"],
        "norm.bias": ours["deit.layernorm.bias"],
        "head.weight": ours["cls_classifier.weight"],
        "head.bias": ours["cls_classifier.bias"],
        "head_dist.weight": ours["distillation_classifier.weight"],
        "head_dist.bias": ours["distillation_classifier.bias"],
    }
    for i in range(config.num_hidden_layers):
        layer = f"deit.layers.{i}."
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [ours[f"{layer}attention.{p}_proj.{kind}"] for p in "qkv"], dim=0
            )
            state[f"blocks.{i}.attn.proj.{kind}"] = ours[f"{layer}attention.o_proj.{kind}"]
            state[f"blocks.{i}.norm1.{kind}"] = ours[f"{layer}layernorm_before.{kind}"]
            state[f"blocks.{i}.norm2.{kind}"] = ours[f"{layer}layernorm_after.{kind}"]
            state[f"blocks.{i}.mlp.fc1.{kind}"] = ours[f"{layer}mlp.fc1.{kind}"]
            state[f"blocks.{i}.mlp.fc2.{kind}"] = ours[f"{layer}mlp.fc2.{kind}"]
    reference.load_state_dict(state, strict=True)
    return reference


def test_runtime_interpolation_and_base_model():
    model = make_model().eval()
    pixels = randn(1, 3, 48, 48)
    with pytest.raises(ValueError, match="doesn't match model"):
        model(pixels)
    with torch.no_grad():
        out = model(pixels, interpolate_pos_encoding=True)
    assert out.logits.shape == (1, 5)
    base = DeiTDistilledModel(model.config)
    assert base.pooler is None
    assert base(randn(2, 3, 32, 32)).last_hidden_state.shape == (2, 2 + 16, 32)
    assert math.isclose(model.config.layer_norm_eps, 1e-6)
