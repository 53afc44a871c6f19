"""Every model folder hf_tinyvit writes loads where hf_tinyvit cannot be imported: save_pretrained, the
trainer's checkpoints and final output, both converters (fine-tuned and head-less checkpoints included)
and the stock-DeiT export, through AutoConfig, AutoModel, AutoModelForImageClassification,
AutoImageProcessor, AutoBackbone (TinyViT) and pipeline, with outputs equal to the package's; each card's
"How to use" snippet runs there as written."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

from build_once import build_once
from hf_tinyvit import (
    AugmentationRecipe,
    AugmentedDataset,
    DeiTDistilledConfig,
    DeiTDistilledForImageClassification,
    DistillationTrainer,
    DistillationTrainingArguments,
    TinyViTBackbone,
    TinyViTForImageClassification,
    deit_image_processor,
    load_image_dataset,
    tinyvit_image_processor,
)
from hf_tinyvit.cli import main as cli
from test_tinyvit_modeling import randomise, tiny_config

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.slow

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 32
# What each kind of folder must answer to: the Auto classes, the pipeline, and its card's snippet.
CLASSIFIER = ("AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor", "pipeline")
CHECKS = {
    "tinyvit-classifier": (*CLASSIFIER, "AutoBackbone"),
    "deit-classifier": CLASSIFIER,
    "tinyvit-model": ("AutoConfig", "AutoModel", "AutoImageProcessor", "AutoBackbone"),
    "tinyvit-backbone": ("AutoConfig", "AutoImageProcessor", "AutoBackbone"),
    "deit-model": ("AutoConfig", "AutoModel", "AutoImageProcessor"),
}
KINDS = {
    # folder kind: (what it holds, needs remote code)
    "tinyvit-save_pretrained": ("tinyvit-classifier", True),
    "tinyvit-backbone-save_pretrained": ("tinyvit-backbone", True),
    "deit-save_pretrained": ("deit-classifier", True),
    "tinyvit-trainer-checkpoint": ("tinyvit-classifier", True),
    "tinyvit-trainer-output": ("tinyvit-classifier", True),
    "deit-trainer-checkpoint": ("deit-classifier", True),
    "deit-trainer-output": ("deit-classifier", True),
    "tinyvit-converted-10-classes": ("tinyvit-classifier", True),
    "deit-converted-10-classes": ("deit-classifier", True),
    "tinyvit-converted-headless": ("tinyvit-model", True),
    "tinyvit-converted-backbone": ("tinyvit-backbone", True),
    "deit-converted-headless": ("deit-model", True),
    "deit-exported-to-stock": ("deit-classifier", False),
}


def digit_image() -> Image.Image:
    return load_image_dataset("digits")["test"][0]["image"].convert("RGB")


def random_timm(variant: str, seed: int, **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return timm.create_model(variant, pretrained=False, **kwargs).eval()


def train(model, processor, output_dir: Path) -> Path:
    """A few labelled steps with a checkpoint every 2 and an evaluation; returns the output folder."""
    splits = load_image_dataset("digits")
    recipe = AugmentationRecipe(image_size=SIZE, scale=(0.7, 1.0), hflip=0.0, auto_augment=None, reprob=0.0)
    args = DistillationTrainingArguments(
        output_dir=str(output_dir), report_to=[], use_cpu=True, disable_tqdm=True, num_train_epochs=1,
        per_device_train_batch_size=8, save_strategy="steps", save_steps=2, logging_steps=2, learning_rate=1e-3,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=AugmentedDataset(splits["train"].select(range(24)), recipe, seed=0),
        eval_dataset=AugmentedDataset(splits["test"].select(range(16)), AugmentationRecipe.eval(SIZE), seed=0),
        processing_class=processor,
    )
    trainer.train()
    trainer.evaluate()
    trainer.save_model()
    return output_dir


def deit_config(**overrides) -> DeiTDistilledConfig:
    labels = {"id2label": dict(enumerate(DIGIT_NAMES)), "label2id": {n: i for i, n in enumerate(DIGIT_NAMES)}}
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
                  patch_size=8, **labels)  # fmt: skip
    return DeiTDistilledConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder of each kind, keyed as in KINDS."""
    return {kind: Path(path) for kind, path in build_once(tmp_path_factory, "hub_artifacts", write_folders).items()}


def write_folders(root: Path) -> dict[str, str]:
    out = {}
    labels = {"num_labels": 10, "id2label": dict(enumerate(DIGIT_NAMES))}

    tinyvit = randomise(TinyViTForImageClassification(tiny_config(image_size=SIZE, **labels))).eval()
    out["tinyvit-save_pretrained"] = root / "tinyvit-save_pretrained"
    tinyvit.save_pretrained(out["tinyvit-save_pretrained"])
    tinyvit_image_processor(SIZE).save_pretrained(out["tinyvit-save_pretrained"])

    backbone_config = tiny_config(image_size=SIZE, out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = randomise(TinyViTBackbone(backbone_config)).eval()
    out["tinyvit-backbone-save_pretrained"] = root / "tinyvit-backbone-save_pretrained"
    backbone.save_pretrained(out["tinyvit-backbone-save_pretrained"])
    tinyvit_image_processor(SIZE).save_pretrained(out["tinyvit-backbone-save_pretrained"])

    with torch.random.fork_rng():
        torch.manual_seed(0)
        deit = DeiTDistilledForImageClassification(deit_config()).eval()
    out["deit-save_pretrained"] = root / "deit-save_pretrained"
    deit.save_pretrained(out["deit-save_pretrained"])
    deit_image_processor(SIZE).save_pretrained(out["deit-save_pretrained"])

    for family, model, processor in (
        ("tinyvit", TinyViTForImageClassification(tiny_config(image_size=SIZE, **labels)), tinyvit_image_processor(SIZE)),
        ("deit", DeiTDistilledForImageClassification(deit_config()), deit_image_processor(SIZE)),
    ):  # fmt: skip
        run = train(model, processor, root / f"{family}-trainer-output")
        out[f"{family}-trainer-output"] = run
        out[f"{family}-trainer-checkpoint"] = run / "checkpoint-2"

    names = root / "digits.txt"
    names.write_text("\n".join(DIGIT_NAMES) + "\n")
    checkpoints = {
        # a fine-tuned timm model as a training script saves it: wrapped, with DistributedDataParallel prefixes
        "tinyvit-converted-10-classes": (
            "tiny_vit_5m_224", 10, lambda s: {"model_ema": {f"module.{k}": v for k, v in s.items()}}
        ),
        "deit-converted-10-classes": ("deit_tiny_distilled_patch16_224", 10, lambda s: {"state_dict": s, "epoch": 9}),
        "tinyvit-converted-headless": ("tiny_vit_5m_224", 0, dict),
        "tinyvit-converted-backbone": ("tiny_vit_5m_224", 0, lambda s: {k: v for k, v in s.items() if "head" not in k}),
        "deit-converted-headless": ("deit_tiny_distilled_patch16_224", 0, dict),
    }  # fmt: skip
    for kind, (variant, classes, wrap) in checkpoints.items():
        reference = random_timm(variant, seed=len(kind), num_classes=classes)
        torch.save(wrap(reference.state_dict()), root / f"{kind}.pth")
        argv = ["convert", "--checkpoint", str(root / f"{kind}.pth"), "--variant", variant,
                "--output-dir", str(root / kind)]  # fmt: skip
        cli(argv + (["--id2label", str(names)] if classes else []))
        out[kind] = root / kind

    out["deit-exported-to-stock"] = root / "deit-exported-to-stock"
    cli(["export-deit", "--model", str(out["deit-trainer-output"]), "--output-dir", str(out["deit-exported-to-stock"])])
    return {kind: str(path) for kind, path in out.items()}


def pixels_for(folder: Path) -> torch.Tensor:
    size = json.loads((folder / "config.json").read_text())["image_size"]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


def package_outputs(folder: Path, checks) -> dict:
    """What the package's own classes give for the folder (hf_tinyvit importable, no remote code)."""
    pixels = pixels_for(folder)
    expected = {"pixels": pixels}
    with torch.no_grad():
        if "AutoModelForImageClassification" in checks:
            expected["AutoModelForImageClassification"] = (
                AutoModelForImageClassification.from_pretrained(folder).eval()(pixels).logits
            )
        if "AutoModel" in checks:
            expected["AutoModel"] = AutoModel.from_pretrained(folder).eval()(pixels).last_hidden_state
        if "AutoBackbone" in checks:
            backbone = TinyViTBackbone.from_pretrained(folder).eval()
            expected["AutoBackbone"] = list(backbone(pixels).feature_maps)
    if "pipeline" in checks:
        expected["pipeline"] = pipeline("image-classification", model=str(folder), device="cpu")(digit_image(), top_k=3)
    return expected


def card_snippet(folder: Path) -> str | None:
    """The card's "How to use" code with the model id pointing at the folder; None without a card
    (`save_pretrained` writes none, as in transformers)."""
    if not (folder / "README.md").is_file():
        return None
    card = ModelCard.load(folder / "README.md")
    (code,) = re.findall(r"## How to use\n\n```python\n(.*?)```", card.text, re.S)
    model_id = card.data.model_name
    assert code.count(f'"{model_id}"') >= 1, code
    return code.replace(f'"{model_id}"', repr(str(folder)))


BLOCKED = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, json, os, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_tinyvit" or name.startswith("hf_tinyvit."):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Block())
    try:
        import hf_tinyvit
        raise SystemExit("hf_tinyvit should not be importable here")
    except ImportError:
        pass

    import torch
    import transformers.models.auto.auto_factory as auto_factory
    from PIL import Image
    from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel,
                              AutoModelForImageClassification, pipeline)

    # transformers' AutoBackbone.from_pretrained asks the Hub whether the name is a repo even for a local
    # folder (a timm-name fallback), which fails offline: answer "yes" for folders that exist here.
    hub_api = auto_factory.hf_api
    class LocalFoldersExist:
        def repo_exists(self, name, **kwargs):
            return os.path.isdir(name) or hub_api().repo_exists(name, **kwargs)
    auto_factory.hf_api = lambda: LocalFoldersExist()

    def differs(a, b):
        if isinstance(a, (list, tuple)):
            return max(differs(x, y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
        return float((a - b).abs().max())

    image = Image.open("digit.png")  # lossless: the same pixels the package's pipeline saw
    results = {}
    for spec in json.load(open("specs.json")):
        folder, remote = spec["folder"], spec["remote"]
        expected = torch.load(spec["expected"])
        pixels, result = expected["pixels"], {}
        loaders = {
            "AutoModelForImageClassification": lambda m: m(pixels).logits,
            "AutoModel": lambda m: m(pixels).last_hidden_state,
            "AutoBackbone": lambda m: list(m(pixels).feature_maps),
        }
        for check in spec["checks"]:
            try:
                if check == "AutoConfig":
                    loaded = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
                    result[check] = {"module": type(loaded).__module__}
                elif check == "AutoImageProcessor":
                    loaded = AutoImageProcessor.from_pretrained(folder, trust_remote_code=remote)
                    result[check] = {"module": type(loaded).__module__}
                elif check == "pipeline":
                    got = pipeline("image-classification", model=folder, trust_remote_code=remote)(image, top_k=3)
                    want = expected["pipeline"]
                    result[check] = {
                        "labels": [p["label"] for p in got],
                        "same_labels": [p["label"] for p in got] == [p["label"] for p in want],
                        "max_diff": max(abs(p["score"] - q["score"]) for p, q in zip(got, want)),
                    }
                else:
                    auto = {"AutoModel": AutoModel, "AutoBackbone": AutoBackbone,
                            "AutoModelForImageClassification": AutoModelForImageClassification}[check]
                    model = auto.from_pretrained(folder, trust_remote_code=remote).eval()
                    with torch.no_grad():
                        diff = differs(loaders[check](model), expected[check])
                    result[check] = {"module": type(model).__module__, "max_diff": diff}
            except Exception as error:
                result[check] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        printed = io.StringIO()
        if spec["snippet"] is None:
            results[spec["kind"]] = result
            continue
        try:
            with contextlib.redirect_stdout(printed):
                exec(spec["snippet"], {"__name__": "__snippet__"})
            result["snippet"] = {"printed": printed.getvalue()[-500:]}
        except Exception as error:
            result["snippet"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        results[spec["kind"]] = result
    results["_modules"] = sorted(m for m in sys.modules if m.startswith("hf_tinyvit"))
    json.dump(results, open("results.json", "w"))
    """
)


@pytest.fixture(scope="module")
def blocked(folders, tmp_path_factory):
    """Loads every folder in one subprocess where importing hf_tinyvit raises; returns its report."""
    return build_once(tmp_path_factory, "hub_artifacts_blocked", lambda work: load_blocked(folders, work))


def load_blocked(folders: dict[str, Path], work: Path) -> dict:
    digit_image().save(work / "digit.png")
    digit_image().save(work / "image.jpg")  # the file the cards' snippets open
    specs = []
    for kind, (holds, remote) in KINDS.items():
        folder = folders[kind]
        expected = package_outputs(folder, CHECKS[holds])
        torch.save(expected, work / f"{kind}.pt")
        specs.append({"kind": kind, "folder": str(folder), "remote": remote, "checks": CHECKS[holds],
                      "expected": str(work / f"{kind}.pt"), "snippet": card_snippet(folder)})  # fmt: skip
    (work / "specs.json").write_text(json.dumps(specs))
    env = {**os.environ, "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_folder_loads_without_the_package(blocked, kind):
    holds, remote = KINDS[kind]
    result = blocked[kind]
    assert blocked["_modules"] == []
    for check in CHECKS[holds]:
        outcome = result[check]
        assert "error" not in outcome, (check, outcome)
        if check in ("AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoBackbone"):
            # remote code when the folder needs it, stock transformers classes otherwise; never the package
            prefix = "transformers_modules." if remote else "transformers."
            assert outcome["module"].startswith(prefix), (check, outcome)
        if "max_diff" in outcome:
            assert outcome["max_diff"] <= 1e-5, (check, outcome)
        if check == "pipeline":
            assert outcome["same_labels"] and set(outcome["labels"]) <= set(DIGIT_NAMES), outcome
    if "save_pretrained" not in kind:  # every folder hf_tinyvit writes a card into
        assert "error" not in result["snippet"], result["snippet"]
        assert result["snippet"]["printed"].strip(), result["snippet"]


def test_remote_code_tags_follow_the_folder(folders):
    for kind, (holds, remote) in KINDS.items():
        config = json.loads((folders[kind] / "config.json").read_text())
        if remote:
            family = "tinyvit" if kind.startswith("tinyvit") else "deit_distilled"
            assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
            assert ("AutoBackbone" in config["auto_map"]) == (family == "tinyvit")
            assert (folders[kind] / "losses.py").is_file() and not (folders[kind] / "losses.py").is_symlink()
        else:
            assert "auto_map" not in config and not list(folders[kind].glob("*.py"))
        if "save_pretrained" in kind:
            continue
        card = ModelCard.load(folders[kind] / "README.md")
        assert ("custom_code" in card.data.tags) == remote, kind
        assert card.data.library_name == "transformers"
        expected_tag = "image-classification" if holds.endswith("classifier") else "image-feature-extraction"
        assert card.data.pipeline_tag == expected_tag, kind


def test_fine_tuned_timm_checkpoints_convert_with_their_label_names(folders):
    """Issue 20's done-when: 10-class DeiT and TinyViT from timm classify a digit through pipeline, by name."""
    image = digit_image()
    for kind in ("tinyvit-converted-10-classes", "deit-converted-10-classes"):
        folder = folders[kind]
        config = json.loads((folder / "config.json").read_text())
        assert config["id2label"] == {str(i): name for i, name in enumerate(DIGIT_NAMES)}
        predictions = pipeline("image-classification", model=str(folder), device="cpu")(image, top_k=10)
        assert sorted(p["label"] for p in predictions) == sorted(DIGIT_NAMES)
        # the pipeline ranks the converted model's logits on the processor's pixels
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")).logits[0]
        assert predictions[0]["label"] == DIGIT_NAMES[int(logits.argmax())]
        card = ModelCard.load(folder / "README.md")
        assert card.data.datasets is None and card.data.base_model is None  # not ImageNet weights: no claim
        assert str(folder.parent) not in card.content


def test_converted_outputs_equal_timm_for_each_head(folders):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    for kind, classes, head in (
        ("tinyvit-converted-10-classes", 10, "logits"),
        ("tinyvit-converted-headless", 0, "pooled"),
        ("deit-converted-headless", 0, "tokens"),
    ):
        variant = "tiny_vit_5m_224" if kind.startswith("tinyvit") else "deit_tiny_distilled_patch16_224"
        reference = random_timm(variant, seed=len(kind), num_classes=classes)
        with torch.no_grad():
            if head == "logits":
                expected = reference(pixels)
                got = AutoModelForImageClassification.from_pretrained(folders[kind])(pixels).logits
            elif head == "pooled":  # timm's head-less forward: pooled, normalised features
                expected = reference(pixels)
                got = AutoModel.from_pretrained(folders[kind])(pixels).pooler_output
            else:
                expected = reference.forward_features(pixels)
                got = AutoModel.from_pretrained(folders[kind])(pixels).last_hidden_state
        assert (got - expected).abs().max().item() <= 1e-4, kind
    assert type(AutoModel.from_pretrained(folders["tinyvit-converted-headless"])).__name__ == "TinyViTModel"
    backbone = TinyViTBackbone.from_pretrained(folders["tinyvit-converted-backbone"])
    assert type(backbone).__name__ == "TinyViTBackbone"


def test_converter_errors_name_what_was_found(tmp_path, folders):
    from hf_tinyvit.hub import load_state_dict

    torch.save({"optimizer": {"step": torch.tensor(3)}, "epoch": 7}, tmp_path / "no_weights.pth")
    with pytest.raises(ValueError, match=r"none of the wrappers \['model', 'state_dict', 'model_ema'\]; its top-level "
                                         r"keys are: 'optimizer' \(dict\), 'epoch' \(int\)"):  # fmt: skip
        load_state_dict(tmp_path / "no_weights.pth")
    reference = random_timm("tiny_vit_5m_224", seed=1, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "ten.pth")
    (tmp_path / "three.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(ValueError, match="names 3 classes but the checkpoint's head has 10"):
        from hf_tinyvit.hub import read_id2label

        read_id2label(tmp_path / "three.json", 10)
    with pytest.raises(ValueError, match="3 label names given but .* has a head of 10 classes"):
        cli(["convert", "--checkpoint", str(tmp_path / "ten.pth"), "--variant", "tiny_vit_5m_224",
             "--output-dir", str(tmp_path / "out"), "--id2label", str(tmp_path / "three.json")])  # fmt: skip
    headless = random_timm("deit_tiny_distilled_patch16_224", seed=1, num_classes=0)
    torch.save(headless.state_dict(), tmp_path / "headless.pth")
    with pytest.raises(ValueError, match="has no classifier heads .* no classes to name"):
        cli(["convert", "--checkpoint", str(tmp_path / "headless.pth"), "--variant", "deit_tiny_distilled_patch16_224",
             "--output-dir", str(tmp_path / "out"), "--id2label", str(tmp_path / "three.json")])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_export_writes_the_processor_and_keeps_the_logits(folders, tmp_path):
    source = DeiTDistilledForImageClassification.from_pretrained(folders["deit-trainer-output"]).eval()
    source.save_as_transformers_deit(tmp_path / "export")
    saved = json.loads((tmp_path / "export" / "preprocessor_config.json").read_text())
    trained_with = json.loads((folders["deit-trainer-output"] / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == trained_with["image_mean"] and saved["crop_size"] == trained_with["crop_size"]
    # a model never saved gets DeiT's reference preprocessing at its resolution
    fresh = DeiTDistilledForImageClassification(deit_config())
    fresh.save_as_transformers_deit(tmp_path / "fresh")
    assert json.loads((tmp_path / "fresh" / "preprocessor_config.json").read_text())["crop_size"]["height"] == SIZE
    card = ModelCard.load(folders["deit-exported-to-stock"] / "README.md")
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text


def test_pushing_an_export_uploads_the_folder_its_card_names(folders, tmp_path, monkeypatch):
    from fake_hub import FakeHub

    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    cli(["export-deit", "--model", str(folders["deit-trainer-output"]), "--output-dir", str(tmp_path / "export"),
         "--push-to-hub", "me/deit-stock"])  # fmt: skip
    assert hub.files("me/deit-stock") == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    card = ModelCard.load(hub.repo_dir("me/deit-stock") / "README.md")
    assert card.data.model_name == "me/deit-stock" and card.data.base_model is None  # the source is a local folder
    assert 'pipeline("image-classification", model="me/deit-stock")' in card.text
