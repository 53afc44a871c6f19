"""TinyViT checkpoint conversion: key maps, qkv layout, layout detection, the CLI on Cream and timm files."""

import json
from pathlib import Path

import pytest
import torch

from hf_tinyvit.models.tinyvit import TinyViTConfig, TinyViTForImageClassification
from hf_tinyvit.models.tinyvit.convert_tinyvit import (
    cream_to_timm_key,
    detect_layout,
    parse_variant,
    qkv_heads_grouped_to_interleaved,
    qkv_heads_interleaved_to_grouped,
    timm_to_cream_key,
    timm_to_cream_state_dict,
    timm_to_hf_key,
)

timm = pytest.importorskip("timm")

_SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "convert_tinyvit_checkpoint.py"


def convert_cli(argv):
    from hf_tinyvit.cli import main

    return main(["convert", *argv])


@pytest.fixture(scope="module")
def timm_5m():
    """timm's tiny_vit_5m_224 with random weights and non-trivial BatchNorm statistics and bias tables."""
    model = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=1000).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else None
            if name.endswith("running_var"):
                tensor.copy_(0.1 + 0.1 * noise.abs())
            elif name.endswith("running_mean"):
                tensor.copy_(0.02 * noise)
            elif name.endswith("attention_biases"):
                tensor.copy_(noise)
            elif name.endswith("bn.weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif name == "head.fc.weight":
                tensor.copy_(0.2 * noise)
    return model


def test_cream_keys_map_to_timm_keys():
    # Cream keeps the patch merging at the end of the previous stage and calls conv+BN's conv `c`.
    assert cream_to_timm_key("patch_embed.seq.2.c.weight") == "patch_embed.conv2.conv.weight"
    assert cream_to_timm_key("layers.0.downsample.conv2.bn.running_var") == "stages.1.downsample.conv2.bn.running_var"
    assert cream_to_timm_key("layers.2.blocks.5.local_conv.c.weight") == "stages.2.blocks.5.local_conv.conv.weight"
    assert cream_to_timm_key("layers.3.blocks.1.attn.attention_biases") == "stages.3.blocks.1.attn.attention_biases"
    assert cream_to_timm_key("norm_head.weight") == "head.norm.weight"
    assert cream_to_timm_key("head.bias") == "head.fc.bias"


def test_timm_keys_map_to_ours():
    assert timm_to_hf_key("patch_embed.conv1.bn.weight") == "tinyvit.embeddings.conv1.batch_norm.weight"
    assert timm_to_hf_key("stages.0.blocks.1.conv3.conv.weight") == "tinyvit.encoder.stages.0.layers.1.conv3.convolution.weight"
    assert timm_to_hf_key("stages.2.blocks.0.attn.proj.bias") == "tinyvit.encoder.stages.2.layers.0.attention.projection.bias"
    assert timm_to_hf_key("stages.2.blocks.0.attn.norm.weight") == "tinyvit.encoder.stages.2.layers.0.attention.layernorm.weight"
    assert timm_to_hf_key("stages.1.blocks.0.mlp.norm.bias") == "tinyvit.encoder.stages.1.layers.0.mlp.layernorm.bias"
    assert timm_to_hf_key("head.norm.bias") == "tinyvit.layernorm.bias"
    assert timm_to_hf_key("head.fc.weight") == "classifier.weight"


def test_every_timm_key_round_trips_through_cream_and_lands_on_a_parameter_of_ours(timm_5m):
    timm_keys = list(timm_5m.state_dict())
    assert [cream_to_timm_key(timm_to_cream_key(k)) for k in timm_keys] == timm_keys
    ours = TinyViTForImageClassification(TinyViTConfig.from_preset("tinyvit-5m-224", num_labels=1000))
    assert sorted(timm_to_hf_key(k) for k in timm_keys) == sorted(ours.state_dict())


def test_qkv_rows_are_regrouped_from_per_head_blocks():
    # Two heads of width 1: reference rows q0 k0 v0 q1 k1 v1 -> ours q0 q1 k0 k1 v0 v1.
    reference = torch.tensor([10.0, 20.0, 30.0, 11.0, 21.0, 31.0])
    assert qkv_heads_interleaved_to_grouped(reference, 2).tolist() == [10.0, 11.0, 20.0, 21.0, 30.0, 31.0]
    weight = torch.randn(3 * 4 * 5, 7)
    assert torch.equal(qkv_heads_grouped_to_interleaved(qkv_heads_interleaved_to_grouped(weight, 4), 4), weight)
    with pytest.raises(ValueError, match="num_heads=4"):
        qkv_heads_interleaved_to_grouped(torch.zeros(10, 2), 4)


def test_layout_detection_and_variant_names(timm_5m):
    timm_state = timm_5m.state_dict()
    assert detect_layout(timm_state) == "timm"
    assert detect_layout(timm_to_cream_state_dict(timm_state)) == "cream"
    with pytest.raises(ValueError, match="first keys"):
        detect_layout({"encoder.weight": torch.zeros(1)})
    assert parse_variant("tiny_vit_21m_384") == ("tinyvit-21m-384", None)
    assert parse_variant("tiny_vit_5m_224.dist_in22k") == ("tinyvit-5m-224", "dist_in22k")
    with pytest.raises(ValueError, match="unknown TinyViT variant 'tiny_vit_7m_224'"):
        parse_variant("tiny_vit_7m_224")


def test_cli_converts_cream_pth_and_timm_safetensors_to_the_same_model(timm_5m, tmp_path):
    from safetensors.torch import save_file
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        pipeline,
    )

    timm_state = timm_5m.state_dict()
    # The official release wraps Cream-layout weights in {"model": ...} and carries the index buffers.
    cream_state = timm_to_cream_state_dict(timm_state)
    cream_state["layers.1.blocks.0.attn.attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"model": cream_state}, tmp_path / "cream.pth")
    save_file({k: v.contiguous() for k, v in timm_state.items()}, str(tmp_path / "timm.safetensors"))

    convert_cli(["--checkpoint", str(tmp_path / "cream.pth"), "--variant", "tiny_vit_5m_224",
                 "--output-dir", str(tmp_path / "from_cream")])  # fmt: skip
    convert_cli(["--checkpoint", str(tmp_path / "timm.safetensors"), "--variant", "tiny_vit_5m_224",
                 "--output-dir", str(tmp_path / "from_timm")])  # fmt: skip

    folder = tmp_path / "from_cream"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert len(config["id2label"]) == 1000 and config["id2label"]["281"].startswith("tabby")
    assert "trust_remote_code" in (folder / "README.md").read_text()

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    from_timm = AutoModelForImageClassification.from_pretrained(tmp_path / "from_timm").eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea())
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        expected = timm_5m(pixels)
        logits = model(pixels).logits
        assert (logits - expected).abs().max().item() <= 1e-4
        assert torch.equal(from_timm(pixels).logits, logits)

    classifier = pipeline("image-classification", model=str(folder), device="cpu")
    top = classifier(image, top_k=3)
    assert top[0]["label"] == config["id2label"][str(int(logits.argmax()))]
    assert top[0]["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-3)


def test_cli_rejects_checkpoints_that_do_not_fit_and_writes_nothing(timm_5m, tmp_path):
    from hf_tinyvit.models.tinyvit.convert_tinyvit import convert

    state = dict(timm_5m.state_dict())
    del state["stages.1.blocks.0.mlp.fc1.bias"]
    state["stages.9.extra.weight"] = torch.zeros(1)
    state["stages.2.blocks.0.attn.proj.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "broken.pth")
    output = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        convert(tmp_path / "broken.pth", "tiny_vit_5m_224", output)
    message = str(error.value)
    assert "1 missing: tinyvit.encoder.stages.1.layers.0.mlp.fc1.bias" in message
    assert "1 unexpected: stages.9.extra.weight" in message  # unmapped keys keep their source names
    assert "tinyvit.encoder.stages.2.layers.0.attention.projection.weight: expected (160, 160), got (3, 3)" in message
    assert not output.exists()
    with pytest.raises(ValueError, match="ImageNet-21k head but .* has 1000 classes"):
        convert(tmp_path / "broken.pth", "tiny_vit_5m_224.dist_in22k", output)
