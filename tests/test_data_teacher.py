"""Teachers for logit saving (timm with a weights file, a transformers folder), the example script,
and a store saved by two Accelerate processes being byte-identical to a one-process store."""

import filecmp
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from hf_tinyvit import (
    AugmentationRecipe,
    StoredLogitsDataset,
    TeacherLogitStore,
    check_teacher_logits,
    load_image_dataset,
    load_teacher,
    save_teacher_logits,
    state_dict_hash,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT_MEAN, STUDENT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    folder = tmp_path_factory.mktemp("timm")
    save_file(model.state_dict(), str(folder / "resnet10t.safetensors"))
    torch.save({"state_dict": model.state_dict()}, str(folder / "resnet10t.pth"))
    return model.eval(), folder


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=5, id2label={i: f"class{i}" for i in range(5)}, label2id={f"class{i}": i for i in range(5)},
    )  # fmt: skip
    model = ViTForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("vit")
    model.save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(folder)
    return model, folder


def _uint8_views(seed=0, size=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 3, size, size), generator=generator, dtype=torch.uint8).float() / 255


def _normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_teacher_applies_its_own_normalisation(timm_weights, suffix):
    model, folder = timm_weights
    teacher = load_teacher(
        "timm:resnet10t", weights=str(folder / f"resnet10t.{suffix}"), input_mean=STUDENT_MEAN, input_std=STUDENT_STD
    )
    assert teacher.num_labels == 10 and teacher.name == "timm:resnet10t"
    assert teacher.teacher_size == tuple(model.pretrained_cfg["input_size"][-2:])
    assert teacher.weights_hash == state_dict_hash(model)
    teacher.teacher_size = None  # compare at the views' own size: only the normalisation changes
    raw = _uint8_views()
    with torch.inference_mode():
        expected = model(_normalise(raw, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
        got = teacher(_normalise(raw, STUDENT_MEAN, STUDENT_STD))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_teacher_resizes_views_to_its_resolution(timm_weights):
    model, folder = timm_weights
    teacher = load_teacher("timm:resnet10t", weights=str(folder / "resnet10t.safetensors"))
    seen = []
    model_forward = teacher.model.forward
    teacher.model.forward = lambda x: seen.append(tuple(x.shape)) or model_forward(x)
    with torch.inference_mode():
        assert teacher(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert seen == [(2, 3, *model.pretrained_cfg["input_size"][-2:])]


def test_timm_teacher_errors(timm_weights, tmp_path):
    _, folder = timm_weights
    with pytest.raises(ValueError, match="needs a weights file"):
        load_teacher("timm:resnet10t")
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(10, 512)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_teacher("timm:resnet10t", weights=str(tmp_path / "partial.safetensors"))


def test_transformers_folder_teacher(vit_folder):
    model, folder = vit_folder
    teacher = load_teacher(str(folder), input_mean=STUDENT_MEAN, input_std=STUDENT_STD)
    assert teacher.num_labels == 5 and teacher.id2label[3] == "class3" and teacher.teacher_size == (32, 32)
    raw = _uint8_views()
    with torch.inference_mode():
        expected = model(pixel_values=_normalise(raw, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))).logits
        got = teacher(_normalise(raw, STUDENT_MEAN, STUDENT_STD))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mixup_store_replays_mixed_views_for_the_teacher(vit_folder, tmp_path):
    digits = load_image_dataset("digits")["train"].select(range(21))  # odd: one sample stays unmixed
    recipe = AugmentationRecipe.deit(32)
    teacher = load_teacher(str(vit_folder[1]), input_mean=recipe.mean, input_std=recipe.std)
    path = save_teacher_logits(
        teacher, digits, str(tmp_path / "mix"), recipe=recipe, topk=5, chunk_size=8, batch_size=4, progress=False
    )
    store = TeacherLogitStore.open(path, cache_dir=str(tmp_path / "cache"))
    assert "mix_partner" in store.load()["epoch_0"].column_names
    report = check_teacher_logits(teacher, digits, store, num_samples=8, batch_size=4)
    assert report["max_abs_diff"] <= 1e-5 and report["index_mismatches"] == 0
    replay = StoredLogitsDataset(digits, store)
    assert replay[0]["labels"].shape in {(), (10,)}


def _save_logits(argv):
    from hf_tinyvit.cli import main

    return main(["save-logits", *argv])


def _example_args(teacher_folder, output_dir, cache_dir):
    return [
        "--teacher", str(teacher_folder), "--dataset_name", "digits",
        "--image_size", "32", "--num_epochs", "2", "--topk", "3", "--max_samples", "48", "--chunk_size", "16",
        "--batch_size", "8", "--check_samples", "8", "--output_dir", str(output_dir), "--cache_dir", str(cache_dir),
    ]  # fmt: skip


def test_example_script_saves_a_checked_store(vit_folder, tmp_path, caplog):
    with caplog.at_level("INFO"):
        _save_logits(_example_args(vit_folder[1], tmp_path / "one", tmp_path / "cache"))
    assert re.search(r"largest difference 0(\.0+)?\b", caplog.text)
    store = TeacherLogitStore.open(str(tmp_path / "one"))
    assert store.epochs == [0, 1] and store.metadata["teacher_name"] == str(vit_folder[1]) and store.topk == 3
    assert store.metadata["id2label"][4] == "class4"


@pytest.mark.multiprocess
def test_two_processes_write_the_same_store_as_one(vit_folder, tmp_path):
    weights = vit_folder[1]
    _save_logits(_example_args(weights, tmp_path / "one", tmp_path / "cache"))
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with socket.socket() as probe:  # a free port, so a concurrent launch elsewhere cannot collide with ours
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
        os.path.join(REPO, "examples", "save_teacher_logits.py"),
        *_example_args(weights, tmp_path / "two", tmp_path / "cache2"),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # chunks are dealt round-robin: 48 samples / 16 = 3 chunks per epoch, rank 1 owns chunk 1
    assert re.search(r"rank 0 wrote data/epoch_0000/chunk_000000\.parquet", output), output[-3000:]
    assert re.search(r"rank 1 wrote data/epoch_0001/chunk_000001\.parquet", output), output[-3000:]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    files = sorted(os.path.relpath(os.path.join(d, f), one) for d, _, fs in os.walk(one) for f in fs)
    assert len(files) == 2 + 6
    assert files == sorted(os.path.relpath(os.path.join(d, f), two) for d, _, fs in os.walk(two) for f in fs)
    for name in files:
        assert filecmp.cmp(os.path.join(one, name), os.path.join(two, name), shallow=False), name
