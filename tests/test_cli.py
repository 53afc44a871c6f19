"""`hf-tinyvit`: the top-level help lists every subcommand, each subcommand's --help documents every flag,
`inspect` describes stores and model folders from their files, and the global flags (--verbosity,
--version) work."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.utils import logging as transformers_logging

from hf_tinyvit import TeacherLogitStore, TinyViTConfig, TinyViTForImageClassification, tinyvit_image_processor
from hf_tinyvit.cli import COMMANDS, convert_parser, export_deit_parser, inspect_parser, main

FIXTURE_STORE = Path(__file__).parent / "fixtures" / "store_v1"


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    usage = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name:<12s} {summary}" in usage
    assert {"save-logits", "distill", "convert", "export-deit", "inspect"} <= set(COMMANDS)
    with pytest.raises(SystemExit, match="(?s)unknown subcommand 'train'.*save-logits"):
        main(["train"])
    main(["--version"])
    assert capsys.readouterr().out.startswith("hf-tinyvit 0.")


@pytest.mark.parametrize("parser", [convert_parser, export_deit_parser, inspect_parser], ids=lambda p: p.__name__)
def test_every_flag_of_a_subcommand_has_help(parser):
    actions = [a for a in parser()._actions if a.dest != "help"]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]
    assert parser().description


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_runs(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:") and len(text.splitlines()) > 5, text


def test_distill_help_documents_the_distillation_flags(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model_preset", "--dataset_name", "--distillation_type", "--teacher_logits", "--mixup_alpha"):
        assert flag in text


def test_inspect_a_store(capsys):
    description = main(["inspect", str(FIXTURE_STORE), "--json"])
    assert json.loads(capsys.readouterr().out) == description
    store = TeacherLogitStore.open(str(FIXTURE_STORE))
    assert description["records"] == 12 and description["epochs"] == [0, 1] and description["topk"] == 3
    assert description["teacher"] == "fixture-teacher" and description["recipe"]["image_size"] == 16
    size = sum(os.path.getsize(f) for e in store.epochs for f in store.shard_files(e))
    assert description["bytes_per_record"] == pytest.approx(size / 12)
    top1 = [int(store.lookup(e, range(6))["teacher_topk_indices"][i, 0]) for e in (0, 1) for i in range(6)]
    assert description["top1_histogram"] == {str(c): top1.count(c) for c in range(10)}
    main(["inspect", str(FIXTURE_STORE)])
    text = capsys.readouterr().out
    assert "records       12 = 6 images x 2 epochs [0, 1]" in text and "top-k         3 of 10 classes" in text


def test_inspect_a_model_folder(tmp_path, capsys):
    model = TinyViTForImageClassification(TinyViTConfig.from_preset("tinyvit-micro", num_labels=4))
    model.save_pretrained(tmp_path / "micro")
    tinyvit_image_processor(32).save_pretrained(tmp_path / "micro")
    description = main(["inspect", str(tmp_path / "micro"), "--json"])
    capsys.readouterr()
    assert description["family"] == "TinyViT" and description["preset"] == "tinyvit-micro"
    assert description["parameters"] == sum(p.numel() for p in model.parameters())
    assert description["num_labels"] == 4 and description["remote_code"] is True
    assert description["processor"]["crop_size"] == {"height": 32, "width": 32}
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path)])  # neither a store nor a model


def test_verbosity_sets_hf_tinyvit_and_transformers_levels(capsys):
    package = logging.getLogger("hf_tinyvit")
    before = package.level, transformers_logging.get_verbosity()
    try:
        main(["--verbosity", "error", "inspect", str(FIXTURE_STORE)])
        assert package.level == logging.ERROR and transformers_logging.get_verbosity() == logging.ERROR
        main(["--verbosity=debug", "inspect", str(FIXTURE_STORE)])
        assert package.level == logging.DEBUG
        with pytest.raises(SystemExit, match="--verbosity 'loud'"):
            main(["--verbosity", "loud", "inspect", str(FIXTURE_STORE)])
    finally:
        package.setLevel(before[0])
        transformers_logging.set_verbosity(before[1])
    capsys.readouterr()


def test_module_entry_point_runs_like_the_console_script(tmp_path):
    # `python -m hf_tinyvit.cli` is what `accelerate launch -m hf_tinyvit.cli ...` runs on each process
    done = subprocess.run(
        [sys.executable, "-m", "hf_tinyvit.cli", "inspect", str(FIXTURE_STORE), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["records"] == 12
