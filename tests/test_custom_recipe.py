"""Your own data, the recipe (examples/custom_dataset.py): a dataset written as an image folder reads back the
same, a timm architecture with local weights becomes a folder transformers loads as it loads timm's Hub
repositories, fine-tuning it keeps its new classes and preprocessing, every teacher/student label mismatch
is refused with how to fix it, and the smallest version of the example runs every step and pushes model and
store to a recorded Hub."""

import json
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from fake_hub import FakeHub
from hf_tinyvit import (
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    DistillationTrainer,
    StoredLogitsDataset,
    TeacherLogitStore,
    efficientnet_lite0_folder,
    image_to_tensor,
    load_image_dataset,
    load_teacher,
    save_teacher_logits,
    timm_teacher_folder,
    write_imagefolder,
)
from hf_tinyvit.cli import main as cli
from hf_tinyvit.teachers import check_same_labels, label_mismatch, processor_preprocessing
from hf_tinyvit.training.distill import ModelArguments, build_model
from test_trainer_distillation import TRAIN_RECIPE, arguments, fit_teacher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import custom_dataset as example  # noqa: E402

NUM_TRAIN = 64
DIGITS = {i: str(i) for i in range(10)}
REVERSED = {i: str(9 - i) for i in range(10)}
WORDS = dict(enumerate("zero one two three four five six seven eight nine".split()))
GERMAN = dict(enumerate("null eins zwei drei vier fuenf sechs sieben acht neun".split()))
TINY_DEIT = json.dumps({"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64})  # fmt: skip
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


def run_flags(output_dir, *extra):
    return [
        "--dataset_name", "digits", "--max_train_samples", str(NUM_TRAIN), "--max_eval_samples", "20",
        "--output_dir", str(output_dir), "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", *extra,
    ]  # fmt: skip


def pixels_by_label(split: datasets.Dataset) -> Counter:
    names = split.features["label"].names
    return Counter((names[row["label"]], image_to_tensor(row["image"]).numpy().tobytes()) for row in split)


@pytest.fixture(scope="module")
def train():
    return load_image_dataset("digits")["train"].select(range(NUM_TRAIN))


def store_named(train, folder, id2label):
    """Two stored epochs of a real (logistic-regression) teacher over `train`, its classes named `id2label`."""
    path = str(folder)
    save_teacher_logits(fit_teacher(train), train, path, recipe=TRAIN_RECIPE, topk=3, num_epochs=2, seed=0,
                        teacher_name="digits-logistic", id2label=id2label, progress=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def reversed_store(train, tmp_path_factory):
    """The teacher's classes are the digits', numbered in the opposite order."""
    return store_named(train, tmp_path_factory.mktemp("reversed") / "store", REVERSED)


def timm_folder(folder, num_classes, id2label=None, seed=0):
    """timm's tiny `test_resnet` with seeded random weights, saved as a file and written as a teacher folder."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes).eval()
    weights = Path(folder).with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return model, timm_teacher_folder("test_resnet", weights, folder, id2label=id2label)


# ---- the data: an image folder --------------------------------------------------------------------------


def test_write_imagefolder_reads_back_the_same_images_and_labels(tmp_path):
    digits = load_image_dataset("digits")
    splits = datasets.DatasetDict({"train": digits["train"].select(range(40)), "test": digits["test"].select(range(12))})
    folder = write_imagefolder(splits, tmp_path / "digits")
    back = load_image_dataset(f"imagefolder:{folder}")
    assert sorted(back) == ["test", "train"]
    for split in ("train", "test"):
        assert back[split].features["label"].names == [str(d) for d in range(10)]
        assert pixels_by_label(back[split]) == pixels_by_label(splits[split])  # PNG: every pixel, every label
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with pytest.raises(FileExistsError, match="already exists"):
        write_imagefolder(splits, folder)
    assert sorted(p for p in folder.rglob("*") if p.is_file()) == files  # nothing written into it


def test_the_folder_sorts_class_names_which_the_label_check_catches(tmp_path):
    digits = load_image_dataset("digits")["train"].select(range(20))
    # a dataset whose classes are not in alphabetical order: "dog" is class 0
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dog", "cat"])})
    pets = datasets.Dataset.from_dict(
        {"image": list(digits["image"]), "label": [d % 2 for d in digits["label"]]}, features=features
    )
    folder = write_imagefolder({"train": pets}, tmp_path / "pets")
    back = load_image_dataset(f"imagefolder:{folder}", validation_split_percentage=0)["train"]
    assert back.features["label"].names == ["cat", "dog"]  # datasets' imagefolder sorts the folder names
    assert pixels_by_label(back) == pixels_by_label(pets)  # each image keeps its class by name
    # a teacher fine-tuned on the source has its classes in the other order: the check says so
    mismatch = label_mismatch({0: "dog", 1: "cat"}, {0: "cat", 1: "dog"}, teacher="the teacher", student="the folder")
    assert "the same classes in another order: class 0 is 'dog' for the teacher and 'cat' for the folder" in mismatch


def test_write_imagefolder_refuses_what_it_cannot_write(tmp_path):
    digits = load_image_dataset("digits")["test"].select(range(4))
    with pytest.raises(ValueError, match=r"split folders named \['train', 'validation', 'test'\]"):
        write_imagefolder({"holdout": digits}, tmp_path / "a")
    slashed = digits.cast_column("label", datasets.ClassLabel(names=[f"{d}/{d}" for d in range(10)]))
    with pytest.raises(ValueError, match="cannot be folder names"):
        write_imagefolder({"train": slashed}, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []  # no folder, and no partial one, left behind


# ---- the teacher: a timm architecture with local weights, as a folder -------------------------------------


def test_timm_teacher_folder_loads_as_timm_hub_repositories_do(tmp_path):
    model, folder = timm_folder(tmp_path / "teacher", 3, id2label=["cat", "dog", "fox"])
    loaded = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert type(loaded).__name__ == "TimmWrapperForImageClassification"
    assert loaded.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(loaded(pixels).logits, model(pixels), atol=1e-5)
    # the preprocessing travels in config.json, as on the Hub: transformers' timm processor and our loader read it
    processor = AutoImageProcessor.from_pretrained(str(folder))
    data = timm.data.resolve_model_data_config(model)
    expected_size = tuple(data["input_size"][-2:])
    settings = processor_preprocessing(processor)
    assert (settings["mean"], settings["std"], settings["size"]) == (data["mean"], data["std"], expected_size)
    teacher = load_teacher(str(folder), input_mean=data["mean"], input_std=data["std"])
    assert teacher.teacher_size == expected_size and teacher.id2label == {0: "cat", 1: "dog", 2: "fox"}
    with torch.inference_mode():  # the same logits through the wrapper for views as its preprocessing makes them
        views = torch.randn(2, 3, *expected_size, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(teacher(views), model(views), atol=1e-5)

    weights = tmp_path / "teacher.safetensors"
    with pytest.raises(ValueError, match="names 2 classes; the weights' head has 3"):
        timm_teacher_folder("test_resnet", weights, tmp_path / "x", id2label=["cat", "dog"])
    with pytest.raises(ValueError, match="does not match the model"):  # another architecture's weights
        timm_teacher_folder("resnet10t", weights, tmp_path / "y")


def test_efficientnet_lite0_folder_is_the_imagenet_teacher(tmp_path):
    import skimage.data
    from PIL import Image

    folder = efficientnet_lite0_folder(tmp_path / "lite0")
    assert json.loads((folder / "config.json").read_text())["label_names"][285] == "Egyptian cat"
    classifier = pipeline("image-classification", model=str(folder), device="cpu")  # the Hub repo's path
    top = classifier(Image.fromarray(skimage.data.chelsea()), top_k=3)
    assert top[0]["label"] in CATS, top  # real weights, mapped in the right order


def test_fine_tuning_a_timm_folder_saves_its_new_classes_and_preprocessing(tmp_path):
    _, folder = timm_folder(tmp_path / "imagenet-like", 5, id2label=["a", "b", "c", "d", "e"])
    output = tmp_path / "teacher"
    cli(["distill", "--model_name_or_path", str(folder), "--distillation_type", "none", "--image_size", "24",
         "--augmentation", "digits", *run_flags(output)])  # fmt: skip
    config = json.loads((output / "config.json").read_text())
    assert config["num_classes"] == 10 and config["label_names"] == [str(d) for d in range(10)]
    assert config["pretrained_cfg"]["input_size"] == [3, 24, 24]
    teacher = load_teacher(str(output))
    assert teacher.teacher_size == (24, 24) and teacher.id2label == DIGITS
    image = load_image_dataset("digits")["test"][0]["image"].convert("RGB")
    answers = pipeline("image-classification", model=str(output), device="cpu")(image, top_k=3)
    assert {a["label"] for a in answers} <= set(DIGITS.values())


# ---- label checks ---------------------------------------------------------------------------------------


def test_label_check_compares_names_and_order():
    assert check_same_labels(DIGITS, dict(DIGITS)) is True
    # transformers' placeholders against real names cannot be checked; a count can
    assert check_same_labels({i: f"LABEL_{i}" for i in range(10)}, WORDS) is False
    assert check_same_labels(DIGITS, WORDS) is False
    with pytest.raises(ValueError, match="10 classes against 11"):
        check_same_labels(DIGITS, {**DIGITS, 10: "ten"})
    with pytest.raises(ValueError, match=r"another order: class 0 is '0' for the teacher and '9' for the student"):
        check_same_labels(DIGITS, REVERSED, fix="Fine-tune it.")
    with pytest.raises(ValueError, match=r"other classes: .*only the teacher has \['zero'.*Do this\.$") as error:
        check_same_labels(WORDS, GERMAN, fix="Do this.")
    assert "'null'" in str(error.value) and "(10 classes)" in str(error.value)


def test_deit_on_a_store_of_classes_in_another_order_is_refused_before_training(reversed_store, tmp_path):
    output = tmp_path / "deit"
    with pytest.raises(ValueError) as error:
        cli(["distill", "--model_preset", "deit-tiny-distilled-224", "--config_overrides", TINY_DEIT,
             "--distillation_type", "hard", "--teacher_logits", reversed_store, *run_flags(output)])  # fmt: skip
    message = str(error.value)
    assert "distillation_type='hard' trains a head on the dataset's labels" in message
    assert "the same classes in another order" in message and "'digits'" in message and "'digits-logistic'" in message
    assert "Fine-tune the teacher on this dataset's classes first" in message
    assert not (output / "model.safetensors").exists()


def test_a_store_named_otherwise_than_the_dataset_is_refused(train, tmp_path):
    # both sides name their classes in words, but not the same words
    folder = tmp_path / "words"
    datasets.DatasetDict({"train": train.cast_column("label", datasets.ClassLabel(names=list(WORDS.values())))}
                         ).save_to_disk(str(folder))  # fmt: skip
    store = store_named(train, tmp_path / "store", GERMAN)
    with pytest.raises(ValueError, match=r"other classes: class 0 is 'null' for the store .* and 'zero' for the dataset"):
        cli(["distill", "--model_preset", "deit-tiny-distilled-224", "--config_overrides", TINY_DEIT,
             "--distillation_type", "soft", "--teacher_logits", store,
             *run_flags(tmp_path / "out", "--dataset_name", str(folder))])  # fmt: skip


def test_stored_tinyvit_learns_the_store_classes_and_skips_evaluation_on_other_labels(reversed_store, tmp_path):
    trainer = cli(["distill", "--model_preset", "tinyvit-micro", "--distillation_type", "stored",
                   "--teacher_logits", reversed_store, *run_flags(tmp_path / "tinyvit")])  # fmt: skip
    assert trainer.model.config.id2label == REVERSED  # the store's classes, which its targets are about
    assert trainer.eval_dataset is None and not (tmp_path / "tinyvit" / "eval_results.json").exists()


def test_a_live_teacher_naming_its_classes_in_another_order_is_refused(tmp_path):
    _, folder = timm_folder(tmp_path / "teacher", 10, id2label=[REVERSED[i] for i in range(10)])
    with pytest.raises(ValueError) as error:
        cli(["distill", "--model_preset", "tinyvit-micro", "--distillation_type", "hard", "--teacher", str(folder),
             *run_flags(tmp_path / "out")])  # fmt: skip
    message = str(error.value)
    assert f"the teacher '{folder}' and the student (config.id2label) do not name the same classes" in message
    assert "another order" in message and "fine-tune the teacher on the student's classes" in message
    # the same teacher with the dataset's names trains
    _, good = timm_folder(tmp_path / "good", 10, id2label=[DIGITS[i] for i in range(10)])
    trainer = cli(["distill", "--model_preset", "tinyvit-micro", "--distillation_type", "hard", "--teacher", str(good),
                   *run_flags(tmp_path / "trained")])  # fmt: skip
    assert trainer.state.global_step == NUM_TRAIN // 16


def test_the_trainer_refuses_a_student_named_otherwise_than_its_store(train, reversed_store, tmp_path):
    config = DeiTDistilledConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10, id2label=DIGITS)  # fmt: skip
    student = DeiTDistilledForImageClassification(config)
    views = StoredLogitsDataset(train, TeacherLogitStore.open(reversed_store))
    with pytest.raises(ValueError, match=r"the store .* and the student \(config.id2label\) do not name the same"):
        DistillationTrainer(model=student, args=arguments(tmp_path, distillation_type="hard"), train_dataset=views)


# ---- students: presets and resolutions ---------------------------------------------------------------------


def test_the_small_tinyvit_preset_is_accepted():
    model = build_model(ModelArguments(model_preset="tinyvit-micro"), 32, 10, DIGITS)
    assert model.config.embed_dims == [32, 64, 96, 128] and model.config.id2label == DIGITS
    with pytest.raises(ValueError, match="tinyvit-micro"):  # the list of accepted presets names it
        ModelArguments(model_preset="tinyvit-nano")


def test_a_saved_deit_fine_tunes_at_another_resolution(tmp_path):
    config = DeiTDistilledConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10, id2label=DIGITS)  # fmt: skip
    DeiTDistilledForImageClassification(config).save_pretrained(tmp_path / "deit")
    same = build_model(ModelArguments(model_name_or_path=str(tmp_path / "deit")), 16, 10, DIGITS)
    larger = build_model(ModelArguments(model_name_or_path=str(tmp_path / "deit")), 24, 10, DIGITS)
    assert torch.equal(same.deit.embeddings.position_embeddings, DeiTDistilledForImageClassification.from_pretrained(
        tmp_path / "deit").deit.embeddings.position_embeddings)  # fmt: skip
    assert larger.config.image_size == 24
    assert tuple(larger.deit.embeddings.position_embeddings.shape) == (1, 6 * 6 + 2, 32)
    with torch.inference_mode():
        assert larger(torch.randn(1, 3, 24, 24)).logits.shape == (1, 10)


# ---- the example's smallest version ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_recipe_runs_every_step_and_pushes_model_and_store(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    out = tmp_path / "recipe"
    summary = example.main([
        "--output_dir", str(out), "--train_per_class", "6", "--test_per_class", "3", "--teacher_image_size", "32",
        "--teacher_epochs", "1", "--stored_epochs", "2", "--tinyvit_epochs", "1", "--deit_epochs", "1",
        "--finetune_epochs", "1", "--batch_size", "32", "--hub_namespace", "me",
    ])  # fmt: skip
    assert (summary["train_images"], summary["test_images"]) == (60, 30)
    commands = [step["command"] for step in summary["steps"]]
    assert [c.split()[1] for c in commands] == ["distill", "save-logits", "distill", "distill", "distill", "distill"]
    script = (out / "recipe.sh").read_text()
    assert all(command in script for command in commands) and "write_imagefolder" in script
    for step in summary["steps"]:
        assert step["command"].startswith("hf-tinyvit ")
        if step["command"].split()[1] == "distill":
            assert 0.0 <= step["eval_accuracy"] <= 1.0
    assert 0.0 <= summary["steps"][4]["eval_teacher_agreement"] <= 1.0  # the live teacher's step
    assert "| 4a. DeiT fine-tuned at 32x32, hard distillation from the live teacher |" in (out / "results.md").read_text()

    # the fine-tuned teacher names the folder's classes, and every student inherits them
    assert json.loads((out / "teacher" / "config.json").read_text())["label_names"] == [str(d) for d in range(10)]
    for name in ("tinyvit", "deit", "deit-finetuned-live-teacher"):
        assert json.loads((out / name / "config.json").read_text())["id2label"] == {str(d): str(d) for d in range(10)}

    # pushed: the store as a dataset repo, the two students as model repos
    store_files = hub.files("me/digits-teacher-logits", "dataset")
    assert {"README.md", "metadata.json", "data/epoch_0001/chunk_000000.parquet"} <= set(store_files)
    assert TeacherLogitStore.open("me/digits-teacher-logits").epochs == [0, 1]
    for repo in ("me/tinyvit-micro-digits", "me/deit-digits-distilled"):
        assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json"} <= set(hub.files(repo))
    card = ModelCard.load(hub.repo_dir("me/tinyvit-micro-digits") / "README.md")
    assert card.data.datasets == ["me/digits-teacher-logits"] and str(tmp_path) not in card.content
    deit = hub.repo_dir("me/deit-digits-distilled")
    assert "distillation-hard" in ModelCard.load(deit / "README.md").data.tags
    image = load_image_dataset("digits")["test"][0]["image"].convert("RGB")
    answers = pipeline("image-classification", model=str(deit), device="cpu")(image, top_k=2)
    assert {a["label"] for a in answers} <= {str(d) for d in range(10)}
