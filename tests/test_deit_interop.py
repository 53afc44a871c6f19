"""DeiT-distilled interop: timm parity of the converted variants, the conversion CLI and its errors, stock
transformers checkpoints in both directions, Auto classes and the image-classification pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    pipeline,
)

from hf_tinyvit.models.deit_distilled import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
)

timm = pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
import hf_tinyvit.models.deit_distilled.convert_deit_distilled as convert  # noqa: E402
from hf_tinyvit.cli import main as cli  # noqa: E402
from hf_tinyvit.models.deit_distilled import DEIT_PRESETS  # noqa: E402

STOCK_TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
    num_labels=5, id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)},
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_timm(variant, seed=0, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(variant, pretrained=False, **kwargs).eval()


def file_keys(folder):
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("variant", sorted(convert.VARIANTS))
def test_timm_parity_per_variant(variant):
    """Each variant's width, heads and resolution at depth 1: the key map is the same for every block, and
    the full-depth DeiT-Ti is compared in the conversion test below."""
    reference = random_timm(variant, depth=1, num_classes=7)
    state_dict = convert.convert_timm_state_dict(reference.state_dict())
    model = DeiTDistilledForImageClassification(convert.variant_config(variant, num_hidden_layers=1, num_labels=7))
    model.eval().load_state_dict(state_dict, strict=True)
    size = DEIT_PRESETS[convert.VARIANTS[variant]]["image_size"]
    pixels = randn(1, 3, size, size)
    with torch.no_grad():
        tokens = reference.forward_features(pixels)
        expected = reference.forward_head(tokens)
        out = model(pixels)
    assert (out.logits - expected).abs().max() <= 1e-4
    assert (out.cls_logits - reference.head(tokens[:, 0])).abs().max() <= 1e-4
    assert (out.distillation_logits - reference.head_dist(tokens[:, 1])).abs().max() <= 1e-4


def test_key_map_is_a_bijection_onto_our_names():
    reference = random_timm("deit_tiny_distilled_patch16_224", depth=2, num_classes=7)
    state_dict = reference.state_dict()
    converted = convert.convert_timm_state_dict(state_dict)
    ours = DeiTDistilledForImageClassification(
        convert.variant_config("deit_tiny_distilled_patch16_224", num_hidden_layers=2, num_labels=7)
    ).state_dict()
    assert set(converted) == set(ours)
    # qkv is split in the order query, key, value.
    qkv = state_dict["blocks.1.attn.qkv.weight"]
    assert torch.equal(converted["deit.layers.1.attention.k_proj.weight"], qkv[192:384])
    assert convert.rename_timm_key("head_dist.bias") == "distillation_classifier.bias"
    assert convert.rename_timm_key("blocks.11.mlp.fc2.weight") == "deit.layers.11.mlp.fc2.weight"
    assert convert.rename_timm_key("not.a.key") == "not.a.key"


@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory):
    """The full-depth DeiT-Ti distilled, random weights saved as an official facebookresearch/deit
    checkpoint ({"model": state_dict}), converted by the CLI."""
    folder = tmp_path_factory.mktemp("deit_tiny")
    reference = random_timm("deit_tiny_distilled_patch16_224", seed=3)
    checkpoint = folder / "deit_tiny_distilled_patch16_224.pth"
    torch.save({"model": reference.state_dict(), "epoch": torch.tensor(299)}, checkpoint)
    output = folder / "converted"
    cli(["convert", "--checkpoint", str(checkpoint), "--variant", "deit_tiny_distilled_patch16_224",
         "--output-dir", str(output)])
    return reference, checkpoint, output


def test_cli_writes_a_complete_folder(converted_tiny):
    reference, _, output = converted_tiny
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "deit_distilled" and len(config["id2label"]) == 1000
    assert "goldfish" in config["id2label"]["1"]
    preprocessing = json.loads((output / "preprocessor_config.json").read_text())
    assert preprocessing["image_mean"] == [0.485, 0.456, 0.406] and preprocessing["image_std"] == [0.229, 0.224, 0.225]
    # the reference resizes the shorter side to 224 / 0.875 keeping the aspect ratio, then centre-crops
    assert preprocessing["size"] == {"shortest_edge": 256} and preprocessing["crop_size"]["height"] == 224
    assert preprocessing["resample"] == 3  # bicubic
    assert "deit" in (output / "README.md").read_text()
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert isinstance(model, DeiTDistilledForImageClassification)
    pixels = randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(pixels).logits - reference(pixels)).abs().max() <= 1e-4


def test_pipeline_on_converted_folder(converted_tiny):
    _, _, output = converted_tiny
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    classifier = pipeline("image-classification", model=str(output), device="cpu")
    predictions = classifier(image, top_k=3)
    # The pipeline must rank classes by the late-fusion logits of the reference preprocessing.
    model = DeiTDistilledForImageClassification.from_pretrained(output).eval()
    pixels = AutoImageProcessor.from_pretrained(output)(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        probs = model(pixels).logits.softmax(-1)[0]
    top = probs.topk(3)
    assert [p["label"] for p in predictions] == [model.config.id2label[int(i)] for i in top.indices]
    assert np.allclose([p["score"] for p in predictions], top.values.numpy(), atol=1e-5)


def test_cli_rejects_mismatched_checkpoints(tmp_path, converted_tiny):
    _, checkpoint, _ = converted_tiny
    state_dict = torch.load(checkpoint, weights_only=True)["model"]
    del state_dict["head_dist.weight"]
    state_dict["blocks.0.attn.extra"] = torch.zeros(3)
    state_dict["pos_embed"] = torch.zeros(1, 10, 192)
    broken = tmp_path / "broken.pth"
    torch.save(state_dict, broken)
    output = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        cli(["convert", "--checkpoint", str(broken), "--variant", "deit_tiny_distilled_patch16_224",
             "--output-dir", str(output)])
    message = str(error.value)
    assert "distillation_classifier.weight" in message and "blocks.0.attn.extra" in message
    assert "deit.embeddings.position_embeddings: expected (1, 198, 192), got (1, 10, 192)" in message
    assert not output.exists()  # nothing written
    with pytest.raises(SystemExit):
        cli(["convert", "--checkpoint", str(checkpoint), "--variant", "deit_huge", "--output-dir", str(output)])


def test_stock_transformers_folder_loads_into_ours(tmp_path):
    """A `facebook/deit-*-distilled-*` style folder (stock class, stock weight names) loads one to one."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        stock = DeiTForImageClassificationWithTeacher(DeiTConfig(**STOCK_TINY)).eval()
        # Stock init zeroes the tokens and position embeddings; give them values so the test can see them.
        for parameter in stock.deit.embeddings.parameters():
            parameter.data.normal_(0, 0.02)
    stock.save_pretrained(tmp_path / "stock")
    ours = DeiTDistilledForImageClassification.from_pretrained(tmp_path / "stock", attn_implementation="eager").eval()
    stock_eager = DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "stock", attn_implementation="eager")
    pixels = randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stock_eager.eval()(pixels, output_hidden_states=True, output_attentions=True)
        got = ours(pixels, output_hidden_states=True, output_attentions=True)
    for name in ("logits", "cls_logits", "distillation_logits"):
        assert torch.equal(getattr(got, name), getattr(expected, name))
    assert len(got.hidden_states) == len(expected.hidden_states) == 3 and len(got.attentions) == 2
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, expected.hidden_states))
    assert all(torch.equal(a, b) for a, b in zip(got.attentions, expected.attentions))
    # The stock layer norm eps (1e-12) travels with the stock config; our loss defaults are added.
    # unset distillation settings: the trainer fills them in, the forward defaults to hard
    assert ours.config.layer_norm_eps == 1e-12 and ours.config.distillation_type is None
    # Saved again, our folder keeps the stock weight names.
    ours.save_pretrained(tmp_path / "ours")
    assert file_keys(tmp_path / "ours") == file_keys(tmp_path / "stock")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "deit_distilled"


def test_export_loads_in_stock_transformers(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ours = DeiTDistilledForImageClassification(DeiTDistilledConfig(**STOCK_TINY, distillation_type="soft"))
    # Train a step so that the exported weights are not the initial ones.
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    loss = ours(randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]), teacher_probs=torch.full((4, 5), 0.2)).loss
    loss.backward()
    optimizer.step()
    ours.eval()
    ours.save_as_transformers_deit(tmp_path / "export")

    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == "deit" and config["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    assert "auto_map" not in config and not any(key.startswith("distillation_") for key in config)
    stock_reference = DeiTForImageClassificationWithTeacher(DeiTConfig(**STOCK_TINY))
    stock_reference.save_pretrained(tmp_path / "reference")
    assert file_keys(tmp_path / "export") == file_keys(tmp_path / "reference")

    # Only stock transformers classes read the folder back.
    stock = AutoModelForImageClassification.from_pretrained(tmp_path / "export").eval()
    assert type(stock) is DeiTForImageClassificationWithTeacher
    pixels = randn(2, 3, 32, 32, seed=4)
    with torch.no_grad():
        expected, got = ours(pixels), stock(pixels)
    for name in ("logits", "cls_logits", "distillation_logits"):
        assert torch.equal(getattr(got, name), getattr(expected, name))
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "export")).__module__.startswith("transformers.")
