import pytest
import torch
from huggingface_hub import ModelCard

from hf_tinyvit.hub import check_state_dict, imagenet_id2label, load_state_dict, write_model_card


class _NotATensor:
    pass


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    good = {"w": torch.arange(3.0)}
    torch.save({"model": good}, tmp_path / "ok.pth")
    assert torch.equal(load_state_dict(tmp_path / "ok.pth")["w"], good["w"])
    torch.save({"w": torch.ones(1), "evil": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_state_dict(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict(tmp_path / "nope.pth")


def test_load_state_dict_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2, 2)}, str(tmp_path / "m.safetensors"))
    assert load_state_dict(tmp_path / "m.safetensors")["a"].shape == (2, 2)


def test_check_state_dict_lists_every_problem():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    got = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    with pytest.raises(ValueError) as err:
        check_state_dict(expected, got, "test.pth")
    text = str(err.value)
    assert "1 missing: c" in text and "1 unexpected: d" in text and "b: expected (3,), got (4,)" in text
    check_state_dict(expected, {k: torch.zeros(v.shape) for k, v in expected.items()})


def test_imagenet_label_maps():
    assert imagenet_id2label(1000)[0].startswith("tench")
    assert len(imagenet_id2label(21841)) == 21841
    with pytest.raises(ValueError, match="num_classes=10 has no ImageNet label map"):
        imagenet_id2label(10)


def test_model_card_metadata_parses(tmp_path):
    write_model_card(
        tmp_path, model_id="me/tiny", base_model="timm/tiny_vit_5m_224.in1k", datasets=["digits"],
        tags=["tinyvit"], description="A test.", eval_results={"accuracy": 0.9}, custom_code=True,
        extra_sections=[("Distillation", "teacher: resnet10t, k=3")],
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.library_name == "transformers"
    assert card.data.eval_results[0].metric_value == pytest.approx(0.9)
    assert "trust_remote_code=True" in card.text and "teacher: resnet10t" in card.text
