"""The wheel: built from the source tree, installed in a fresh virtual environment with no source tree in
sight, it ships `hf-tinyvit` and everything each subcommand needs (converters and remote-code files
included), and each subcommand runs its smallest real case from it. The fresh environment reuses this one's
third-party packages through a plain path line, so torch is not installed twice; the .pth files in that
directory are not processed, so this environment's editable hf_tinyvit stays out of the way."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from build_once import build_once

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = json.dumps(
    {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_sizes": [2, 2, 2, 2]}
)
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def run(command, cwd, env, timeout=600):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """Paths (bin folder, wheel, site-packages) and environment variables of a fresh venv with the wheel."""
    built = build_once(tmp_path_factory, "wheel_venv", install_the_wheel)
    return {**{k: Path(v) for k, v in built.items() if k != "env"}, "env": built["env"]}


def install_the_wheel(root: Path) -> dict:
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # symlinks kept as they are in the repository: the wheel must carry the loss router's content
    shutil.copytree(
        REPO / "src", source / "src", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--wheel-dir", str(root / "dist"), str(source)], cwd=root, env=os.environ.copy())  # fmt: skip
    (wheel,) = (root / "dist").glob("hf_tinyvit-*.whl")

    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root, env=os.environ.copy())
    purelib = Path(
        sysconfig.get_paths(vars={"base": str(root / "venv"), "platbase": str(root / "venv")})["purelib"]
    )
    (purelib / "shared_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf_home"), OMP_NUM_THREADS="1")
    env["PATH"] = f"{root / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    python = str(root / "venv" / "bin" / "python")
    # pip comes from the shared packages; --ignore-installed: never touch the editable install they list
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
        cwd=root, env=env)  # fmt: skip
    return {"bin": str(root / "venv" / "bin"), "env": env, "wheel": str(wheel), "purelib": str(purelib)}


def test_the_wheel_carries_the_command_line_and_the_remote_code(venv, tmp_path):
    names = set(zipfile.ZipFile(venv["wheel"]).namelist())
    for path in ("cli.py", "hub.py", "log.py", "inspection.py", "losses.py",
                 "models/tinyvit/convert_tinyvit.py", "models/deit_distilled/convert_deit_distilled.py",
                 "models/tinyvit/losses.py", "models/deit_distilled/losses.py"):  # fmt: skip
        assert f"hf_tinyvit/{path}" in names, path
    with zipfile.ZipFile(venv["wheel"]) as archive:
        router = archive.read("hf_tinyvit/losses.py")
        assert archive.read("hf_tinyvit/models/tinyvit/losses.py") == router  # a file, not a link
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "hf-tinyvit = hf_tinyvit.cli:_console_main" in archive.read(entry_points).decode()
    done = run([str(venv["bin"] / "python"), "-c", "import hf_tinyvit, sys; print(hf_tinyvit.__file__)"],
               cwd=tmp_path, env=venv["env"])  # fmt: skip
    assert Path(done.stdout.strip()).is_relative_to(venv["purelib"]), done.stdout  # the wheel's copy, not ours


def test_every_subcommand_runs_from_the_installed_wheel(venv, tmp_path):
    import timm
    from transformers import ViTConfig, ViTForImageClassification

    from hf_tinyvit import DeiTDistilledConfig, DeiTDistilledForImageClassification, deit_image_processor

    work, env = tmp_path / "work", venv["env"]
    work.mkdir()
    cli = [str(venv["bin"] / "hf-tinyvit")]
    listed = run(cli + ["--help"], cwd=work, env=env).stdout
    subcommands = [line.split()[0] for line in listed.split("subcommands:\n")[1].split("\n\n")[0].splitlines()]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        labels = {"id2label": dict(enumerate(DIGIT_NAMES)), "label2id": {n: i for i, n in enumerate(DIGIT_NAMES)}}
        vit = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=16, **labels)  # fmt: skip
        teacher = ViTForImageClassification(vit)
        teacher.save_pretrained(tmp_path / "teacher")
        deit = DeiTDistilledForImageClassification(DeiTDistilledConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16, image_size=16,
            patch_size=8, **labels))  # fmt: skip
        deit.save_pretrained(tmp_path / "deit")
        deit_image_processor(16).save_pretrained(tmp_path / "deit")
        torch.save({"model": timm.create_model("tiny_vit_5m_224", num_classes=10).state_dict()}, tmp_path / "tv.pth")
    (tmp_path / "names.txt").write_text("\n".join(DIGIT_NAMES))

    cases = {
        "save-logits": cli + ["save-logits", "--teacher", str(tmp_path / "teacher"), "--dataset_name", "digits",
                              "--recipe", "digits", "--image_size", "16", "--num_epochs", "1", "--topk", "3",
                              "--max_samples", "32", "--chunk_size", "32", "--batch_size", "32",
                              "--output_dir", "store"],
        # the documented multi-process entry point, here with one process
        "distill": [str(venv["bin"] / "python"), "-m", "accelerate.commands.launch", "--num_processes", "1",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "-m", "hf_tinyvit.cli", "distill", "--model_preset", "tinyvit-5m-224", "--config_overrides", TINY,
                    "--dataset_name", "digits", "--teacher_logits", "store", "--distillation_type", "stored",
                    "--max_train_samples", "32", "--max_eval_samples", "16", "--num_train_epochs", "1",
                    "--per_device_train_batch_size", "16", "--output_dir", "student", "--save_strategy", "no",
                    "--report_to", "none", "--disable_tqdm", "true", "--use_cpu"],
        "convert": cli + ["convert", "--checkpoint", str(tmp_path / "tv.pth"), "--variant", "tiny_vit_5m_224",
                          "--id2label", str(tmp_path / "names.txt"), "--output-dir", "converted"],
        "export-deit": cli + ["export-deit", "--model", str(tmp_path / "deit"), "--output-dir", "exported"],
        "inspect": cli + ["inspect", "store", "--json"],
        "verify": cli + ["verify", "store"],
        "audit": cli + ["audit", "--store", "store", "--dataset", "digits", "--max_samples", "32",
                        "--output_dir", "audit", "--no_plots"],
        "similarity": cli + ["similarity", "--store", "store", "--dataset", "digits", "--max_samples", "32",
                             "--output_dir", "similarity", "--no_plots"],
        "search": cli + ["search", "--store", "store", "--max_samples", "32", "--max_params", "1e6", "--candidates", "1",
                         "--max_measured", "2", "--throughput_seconds", "0.05", "--batch_size", "4",
                         "--train_samples", "16", "--eval_samples", "8", "--proxy_epochs", "1",
                         "--output_dir", "search", "--no_plots"],
    }  # fmt: skip
    assert set(subcommands) == set(cases), f"every subcommand needs its smallest case here: {subcommands}"
    outputs = {name: run(command, cwd=work, env=env).stdout for name, command in cases.items()}

    assert "OK" in outputs["verify"], outputs["verify"]
    store = json.loads(outputs["inspect"])
    assert store["records"] == 32 and store["topk"] == 3 and sum(store["top1_histogram"].values()) == 32
    student = {p.name for p in (work / "student").iterdir()}
    assert {"README.md", "modeling_tinyvit.py", "configuration_tinyvit.py", "eval_results.json"} <= student
    assert (work / "student" / "losses.py").read_bytes() == (REPO / "src/hf_tinyvit/losses.py").read_bytes()
    converted = json.loads((work / "converted" / "config.json").read_text())
    assert converted["id2label"]["3"] == "three" and "tiny_vit_5m_224" not in json.dumps(converted["auto_map"])
    assert json.loads((work / "exported" / "config.json").read_text())["model_type"] == "deit"
    assert (work / "exported" / "preprocessor_config.json").is_file()
