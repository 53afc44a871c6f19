"""Cards the Hub reads: the trainer's model card (metadata, model-index read back, teacher and store named
without local paths, framework versions), the store's dataset card (license, task, ClassLabel features,
one configuration per epoch listing its exact shards), a store pushed to the Hub and a student trained
from its Hub id. The Hub is a local folder (tests/fake_hub.py): nothing reaches the network."""

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import datasets
import pytest
import transformers
from huggingface_hub import DatasetCard, ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

import hf_tinyvit
from fake_hub import FakeHub
from hf_tinyvit import (
    AugmentedDataset,
    DistillationTrainer,
    DistillationTrainingArguments,
    StoredLogitsDataset,
    TeacherLogitStore,
    load_image_dataset,
    save_teacher_logits,
)
from hf_tinyvit.cli import main as cli
from hf_tinyvit.hub import hub_id, public_name, write_model_card
from test_distill_script import script_args
from test_trainer_distillation import EVAL_RECIPE, TRAIN_RECIPE, fit_teacher, tinyvit

NUM_TRAIN = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two epochs of a teacher whose name is a local path, in a folder named like a store."""
    root = tmp_path_factory.mktemp("local")
    train = load_image_dataset("digits")["train"].select(range(NUM_TRAIN))
    (root / "teachers" / "logistic-teacher").mkdir(parents=True)
    path = str(root / "stores" / "digits-top3")
    save_teacher_logits(
        fit_teacher(train), train, path, recipe=TRAIN_RECIPE, topk=3, num_epochs=2, seed=0,
        teacher_name=str(root / "teachers" / "logistic-teacher"), progress=False,
    )  # fmt: skip
    return TeacherLogitStore.open(path)


def test_public_names_never_show_a_local_path(tmp_path):
    (tmp_path / "outputs" / "teacher").mkdir(parents=True)
    local = str(tmp_path / "outputs" / "teacher")
    assert public_name(local) == "teacher" and hub_id(local) is None
    assert public_name("me/teacher") == "me/teacher" == hub_id("me/teacher")
    assert public_name("timm:resnet50") == "timm:resnet50" and hub_id("timm:resnet50") is None
    assert public_name("imagefolder:/data/train") == "train" and hub_id("imagefolder:/data/train") is None
    assert public_name("./runs/a") == "a" and public_name("/abs/path/") == "path" and public_name("") is None


def test_trainer_card_reads_back_and_names_teacher_and_store_without_paths(store, tmp_path):
    splits = load_image_dataset("digits")
    train = StoredLogitsDataset(splits["train"].select(range(NUM_TRAIN)), store)
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "student"), report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
        distillation_type="stored", per_device_train_batch_size=16, num_train_epochs=1, learning_rate=1e-2,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tinyvit(),
        args=args,
        train_dataset=train,
        eval_dataset=AugmentedDataset(splits["test"].select(range(32)), EVAL_RECIPE, seed=0),
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.create_model_card(dataset="digits", eval_split="test", tags=["demo"])
    trainer.save_model()  # a later save keeps the fields given once
    readme = tmp_path / "student" / "README.md"

    card = ModelCard.load(readme)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"image-classification", "knowledge-distillation", "custom_code", "distillation-stored", "demo"} <= set(
        card.data.tags
    )
    assert card.data.base_model is None and card.data.datasets is None  # trained from scratch, on local data
    name, results = model_index_to_eval_results(metadata_load(readme)["model-index"])
    by_metric = {r.metric_type: r for r in results}
    assert name == "student" and set(by_metric) == {"accuracy", "top5_accuracy"}  # no teacher on the test split
    for metric, result in by_metric.items():
        assert result.metric_value == pytest.approx(metrics[f"eval_{metric}"])
        assert (result.task_type, result.dataset_split) == ("image-classification", "test")
        assert (result.dataset_type, result.dataset_name) == ("digits", "digits (scikit-learn's handwritten digits)")
    assert "`logistic-teacher`" in card.text and "`digits-top3`" in card.text
    assert str(tmp_path) not in card.content and str(Path(store.path).parent) not in card.content
    assert f"- transformers {transformers.__version__}" in card.text and f"- torch {version('torch')}" in card.text
    assert f"- hf_tinyvit {hf_tinyvit.__version__}" in card.text
    assert 'pipeline("image-classification", model="student", trust_remote_code=True)' in card.text


def test_base_model_is_a_hub_id_or_nothing(store, tmp_path):
    model = tinyvit()
    trainer = DistillationTrainer(
        model=model,
        args=DistillationTrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True),
        train_dataset=AugmentedDataset(load_image_dataset("digits")["train"].select(range(8)), TRAIN_RECIPE, seed=0),
    )
    model.config._name_or_path = str(tmp_path)  # fine-tuned from a local folder: never named by its path
    trainer.create_model_card()
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model is None
    model.config._name_or_path = "me/tinyvit-21k"  # fine-tuned from a Hub model
    trainer.create_model_card()
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model == "me/tinyvit-21k"


def test_write_model_card_keeps_local_paths_out_of_the_metadata(tmp_path):
    card = write_model_card(
        tmp_path, model_id="me/x", base_model=str(tmp_path), datasets=[str(tmp_path), "me/data"],
        eval_results={"accuracy": 0.5}, eval_dataset=("me/data", "me/data"), eval_split="validation",
        custom_code=False,
    )  # fmt: skip
    assert card.data.base_model is None and card.data.datasets == ["me/data"]
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text
    assert card.data.eval_results[0].dataset_split == "validation"


def test_store_card_configs_read_each_epoch_and_nothing_else(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    # a stray shard in an epoch folder must not be read (the card lists exact files, not globs)
    shutil.copyfile(copy / "data/epoch_0001/chunk_000000.parquet", copy / "data/epoch_0001/old_run.parquet")
    card = DatasetCard.load(copy / "README.md")
    assert card.data.license == "other" and card.data.task_categories == ["image-classification"]
    assert str(Path(store.path).parent.parent) not in card.content and "`logistic-teacher`" in card.text
    assert {c["config_name"] for c in card.data.configs} == {"default", "epoch_0", "epoch_1"}
    assert '"image_size": 16' in card.text and "top-k: 3 of 10 classes" in card.text

    cache = str(tmp_path / "cache")
    epoch_1 = datasets.load_dataset(str(copy), "epoch_1", cache_dir=cache)["train"]
    assert len(epoch_1) == NUM_TRAIN and set(epoch_1["epoch"]) == {1}
    names = epoch_1.features["teacher_topk_indices"].feature.names
    assert names == [str(d) for d in range(10)]
    expected = store.lookup(1, epoch_1["sample_id"])["teacher_topk_indices"]
    assert [list(row) for row in epoch_1["teacher_topk_indices"]] == expected.tolist()
    everything = datasets.load_dataset(str(copy), cache_dir=cache)
    assert {split: len(rows) for split, rows in everything.items()} == {"epoch_0": NUM_TRAIN, "epoch_1": NUM_TRAIN}


def test_store_pushed_to_the_hub_trains_a_student_from_its_id(store, tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    store.push_to_hub("me/digits-logits", license="cc-by-4.0")
    assert hub.files("me/digits-logits", "dataset") == sorted(
        ["README.md", "metadata.json"] + [f"data/epoch_000{e}/chunk_000000.parquet" for e in (0, 1)]
    )
    card = DatasetCard.load(hub.repo_dir("me/digits-logits", "dataset") / "README.md")
    assert card.data.license == "cc-by-4.0" and 'TeacherLogitStore.open("me/digits-logits")' in card.text

    opened = TeacherLogitStore.open("me/digits-logits")
    assert opened.source == "me/digits-logits" and opened.epochs == [0, 1]
    assert "me/digits-logits" in repr(opened)
    # hf-tinyvit distill from the Hub id, pushing the student: the card links the store's dataset repo
    output = tmp_path / "student"
    cli(["distill", *script_args("me/digits-logits", output, "--push_to_hub", "--hub_model_id", "me/student")])
    assert ("snapshot_download", {"repo_id": "me/digits-logits", "repo_type": "dataset"}) in hub.calls
    pushed = hub.files("me/student")
    assert {"config.json", "model.safetensors", "README.md", "modeling_tinyvit.py", "losses.py"} <= set(pushed)
    student = ModelCard.load(hub.repo_dir("me/student") / "README.md")
    assert student.data.datasets == ["me/digits-logits"] and student.data.model_name == "me/student"
    assert "[`me/digits-logits`](https://huggingface.co/datasets/me/digits-logits)" in student.text
    assert str(tmp_path) not in student.content
    assert json.loads((hub.repo_dir("me/student") / "config.json").read_text())["auto_map"]["AutoModel"]


def test_store_card_numbers_repeated_class_names(store):
    from hf_tinyvit.store.format import dataset_card

    # ImageNet-1k names two classes "crane" and two "maillot"; a ClassLabel needs unique names
    metadata = {**store.metadata, "id2label": {i: "crane" if i in (1, 4) else f"class {i}" for i in range(10)}}
    card = DatasetCard(dataset_card(metadata))
    (feature,) = [f for f in card.data.dataset_info[0]["features"] if f["name"] == "teacher_topk_indices"]
    names = feature["list"]["class_label"]["names"]
    assert names["1"] == "crane (1)" and names["4"] == "crane (4)" and names["2"] == "class 2"
