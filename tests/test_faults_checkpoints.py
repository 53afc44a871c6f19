"""Untrusted checkpoints: pickled code in a `.pth` never runs in a converter or teacher loader, a checkpoint
that does not fit fails listing every tensor, what we write holds no pickle, and our folders load
through the Auto classes with trust_remote_code=False."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification

from hf_tinyvit import load_teacher

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.fault
ROOT = Path(__file__).resolve().parents[1]
DEIT_VARIANT = "deit_tiny_distilled_patch16_224"


def convert_cli(argv):
    from hf_tinyvit.cli import main

    return main(["convert", *argv])


class MarkerOnLoad:
    """Unpickling this runs code: it creates the marker file. Any unsafe torch.load would do so."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def is_pickle(path: Path) -> bool:
    """A raw pickle (protocol >= 2 starts with PROTO) or torch.save's zip archive with its data.pkl."""
    head = path.read_bytes()[:2]
    if head[:1] == b"\x80" and head[1:2] in (bytes([p]) for p in range(2, 6)):
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def pickles_in(folder: Path, *, skip_checkpoints: bool = True) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not (skip_checkpoints and p.relative_to(folder).parts[0].startswith("checkpoint-"))
        and is_pickle(p)
    )


def assert_only_safe_files(folder: Path) -> None:
    """Model folders hold safetensors, JSON and text; a Trainer checkpoint's resume state (optimizer,
    scheduler, RNG) is torch.save'd by transformers, which reads it back with weights_only=True: so must we."""
    from transformers.trainer_pt_utils import safe_globals

    assert pickles_in(folder) == [], pickles_in(folder)
    for path in folder.glob("checkpoint-*/*"):
        assert path.name != "training_args.bin"
        if is_pickle(path):
            with safe_globals():  # the numpy RNG-state types transformers allows, nothing more
                torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def deit_pth(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = timm.create_model(DEIT_VARIANT, pretrained=False).eval()
    path = tmp_path_factory.mktemp("deit") / "deit_tiny.pth"
    torch.save({"model": reference.state_dict()}, path)  # facebookresearch/deit's layout
    return path


def test_pickled_code_in_a_checkpoint_never_runs(deit_pth, tmp_path):
    marker = tmp_path / "marker"
    state = torch.load(deit_pth, weights_only=True)
    state["model"]["head.bias"] = MarkerOnLoad(marker)  # one poisoned entry among real tensors
    evil = tmp_path / "evil.pth"
    torch.save(state, evil)
    whole = tmp_path / "evil_object.pth"
    torch.save(MarkerOnLoad(marker), whole)

    for checkpoint in (evil, whole):
        output = tmp_path / f"out-{checkpoint.stem}"
        with pytest.raises(ValueError, match=r"weights_only=True.*never pickled objects"):
            convert_cli(["--checkpoint", str(checkpoint), "--variant", DEIT_VARIANT, "--output-dir", str(output)])
        assert not output.exists()
        with pytest.raises(ValueError, match=r"weights_only=True"):
            load_teacher("timm:resnet10t", weights=str(checkpoint))
    assert not marker.exists(), "unpickling ran code"

    # the control: an unsafe load of the same file does run it, so the test above could have failed
    torch.load(whole, weights_only=False)
    assert marker.read_text() == "code ran"


def test_teacher_weights_that_do_not_fit_are_listed(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    state = model.state_dict()
    del state["conv1.0.weight"]
    state["layer9.weight"] = torch.zeros(2)
    state["layer1.0.bn1.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError) as error:
        load_teacher("timm:resnet10t", weights=str(tmp_path / "broken.safetensors"))
    message = str(error.value)
    assert "1 missing: conv1.0.weight" in message and "1 unexpected: layer9.weight" in message
    assert "layer1.0.bn1.weight: expected (64,), got (3,)" in message


def test_converter_writes_no_pickle_and_loads_without_remote_code(deit_pth, tmp_path):
    output = tmp_path / "converted"
    convert_cli(["--checkpoint", str(deit_pth), "--variant", DEIT_VARIANT, "--output-dir", str(output)])
    assert {p.suffix for p in output.iterdir()} <= {".safetensors", ".json", ".md", ".py"}, list(output.iterdir())
    # the only code is the remote code the configs point to, for loading without hf_tinyvit
    code = {p.name for p in output.glob("*.py")}
    assert code == {
        "configuration_deit_distilled.py", "modeling_deit_distilled.py", "losses.py",
        "image_processing_deit_distilled.py", "image_processing_reference.py",
    }, code  # fmt: skip
    assert_only_safe_files(output)
    assert "AutoModelForImageClassification" in json.loads((output / "config.json").read_text())["auto_map"]
    model = AutoModelForImageClassification.from_pretrained(output, trust_remote_code=False)
    assert type(model).__module__.startswith("hf_tinyvit.")


def test_pickle_scanner_finds_torch_save_and_raw_pickles(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "a.bin")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    save_file({"w": torch.ones(1)}, str(tmp_path / "c.safetensors"))
    (tmp_path / "d.json").write_text("{}")
    assert pickles_in(tmp_path) == ["a.bin", "b.pkl"]


@pytest.fixture(scope="module")
def tinyvit_pth(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = timm.create_model("tiny_vit_5m_224", pretrained=False).eval()
    path = tmp_path_factory.mktemp("tinyvit") / "tiny_vit_5m.pth"
    torch.save({"model": reference.state_dict()}, path)  # microsoft/Cream's wrapper key
    return path


def test_tinyvit_converter_refuses_pickled_code_and_writes_no_pickle(tinyvit_pth, tmp_path):
    marker = tmp_path / "marker"
    state = torch.load(tinyvit_pth, weights_only=True)
    state["model"]["head.fc.bias"] = MarkerOnLoad(marker)
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        convert_cli(["--checkpoint", str(tmp_path / "evil.pth"), "--variant", "tiny_vit_5m_224",
                      "--output-dir", str(tmp_path / "refused")])  # fmt: skip
    assert not marker.exists() and not (tmp_path / "refused").exists()

    output = tmp_path / "converted"
    convert_cli(["--checkpoint", str(tinyvit_pth), "--variant", "tiny_vit_5m_224", "--output-dir", str(output)])
    assert_only_safe_files(output)
    # the folder may carry modeling code for environments without hf_tinyvit; with it, no remote code is needed
    model = AutoModelForImageClassification.from_pretrained(output, trust_remote_code=False)
    assert type(model).__module__.startswith("hf_tinyvit.")
