import pytest
import torch
from huggingface_hub import ModelCard

from hf_tinyvit.hub import (
    check_state_dict,
    imagenet_id2label,
    load_state_dict,
    map_state_dict_by_order,
    read_id2label,
    unwrap_state_dict,
    write_model_card,
)


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


def _conv_bn(prefix_conv: str, prefix_bn: str, counters: bool) -> dict:
    state = {f"{prefix_conv}.weight": torch.randn(4, 3, 3, 3)}
    state.update({f"{prefix_bn}.{k}": torch.randn(4) for k in ("weight", "bias", "running_mean", "running_var")})
    if counters:
        state[f"{prefix_bn}.num_batches_tracked"] = torch.tensor(7)
    state["head.weight"] = torch.randn(10, 4)
    return state


def test_map_state_dict_by_order_renames_and_keeps_the_targets_counters():
    target = _conv_bn("conv_stem", "bn1", counters=True)
    target["bn1.num_batches_tracked"] = torch.tensor(0)
    source = _conv_bn("_conv_stem", "_bn0", counters=False)  # an exporter that dropped the counters
    source["_fc.weight"] = source.pop("head.weight")
    mapped = map_state_dict_by_order(target, source)
    assert list(mapped) == list(target)
    assert mapped["bn1.running_var"] is source["_bn0.running_var"] and mapped["head.weight"] is source["_fc.weight"]
    assert mapped["bn1.num_batches_tracked"].item() == 0


def test_map_state_dict_by_order_lists_every_mismatch():
    target = _conv_bn("conv", "bn", counters=True)
    short = dict(list(_conv_bn("c", "b", counters=True).items())[1:])  # lost the conv weight: all shifted
    with pytest.raises(ValueError) as err:
        map_state_dict_by_order(target, short, what="ckpt.pth")
    text = str(err.value)
    assert "ckpt.pth cannot be mapped onto the model by order" in text
    assert "5 tensors against the model's 6 (num_batches_tracked not counted)" in text
    assert "#0 b.weight (4,) -> conv.weight (4, 3, 3, 3)" in text

    swapped = _conv_bn("c", "b", counters=True)
    order = ["c.weight", "b.bias", "b.weight", "b.running_mean", "b.running_var", "head.weight"]
    swapped = {k: swapped[k] for k in order}
    with pytest.raises(ValueError, match=r"#1 b.bias \(4,\) -> bn.weight \(4,\)"):
        map_state_dict_by_order(target, swapped)  # same shapes, but a bias would land on a weight
    assert map_state_dict_by_order(target, swapped, check_leaf_names=False)["bn.weight"] is swapped["b.bias"]


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
    assert "custom_code" in card.data.tags and "## Framework versions" in card.text


def test_unwrap_state_dict_takes_the_usual_wrappers_and_names_what_it_found():
    weights = {"w": torch.ones(2), "b": torch.zeros(1)}
    assert unwrap_state_dict(weights) == weights
    # nested wrappers, a step counter beside them, DistributedDataParallel prefixes
    wrapped = {"state_dict": {"model": {f"module.{k}": v for k, v in weights.items()}}, "epoch": 3}
    assert unwrap_state_dict(wrapped) == weights
    # the trained weights win over their moving average when both are there
    both = {"model": weights, "model_ema": {"w": torch.full((2,), 9.0)}, "optimizer": {"state": {}}}
    assert unwrap_state_dict(both)["w"].tolist() == [1.0, 1.0]
    assert unwrap_state_dict({"model_ema": weights, "epoch": 1}) == weights
    with pytest.raises(ValueError, match=r"top-level keys are: 'encoder' \(dict\), 'step' \(int\)"):
        unwrap_state_dict({"encoder": {"w": torch.ones(1)}, "step": 3}, "ckpt.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        unwrap_state_dict({"model": {}})
    only_some = {"module.a": torch.ones(1), "b": torch.ones(1)}  # not every key: a real name, kept
    assert set(unwrap_state_dict(only_some)) == {"module.a", "b"}


def test_read_id2label_from_json_or_lines(tmp_path):
    (tmp_path / "list.json").write_text('["cat", "dog"]')
    (tmp_path / "map.json").write_text('{"1": "dog", "0": "cat"}')
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    for name in ("list.json", "map.json", "names.txt"):
        assert read_id2label(tmp_path / name, 2) == {0: "cat", 1: "dog"}
    (tmp_path / "gap.json").write_text('{"0": "cat", "2": "dog"}')
    with pytest.raises(ValueError, match="must number its classes 0..1 without gaps"):
        read_id2label(tmp_path / "gap.json")
    with pytest.raises(ValueError, match="names 2 classes but the checkpoint's head has 3"):
        read_id2label(tmp_path / "names.txt", 3)
    with pytest.raises(FileNotFoundError, match="label file"):
        read_id2label(tmp_path / "missing.txt")
