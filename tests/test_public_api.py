"""The public API: every exported name imports from the top, importing the package registers the Auto
classes without loading datasets or timm, and the examples use the public API only, never each other."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_tinyvit

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_imports_from_the_top():
    assert len(hf_tinyvit.__all__) == len(set(hf_tinyvit.__all__))
    for name in hf_tinyvit.__all__:
        value = getattr(hf_tinyvit, name)
        assert value is not None, name
    namespace: dict = {}
    exec("from hf_tinyvit import " + ", ".join(hf_tinyvit.__all__), namespace)
    assert namespace["TinyViTForImageClassification"] is hf_tinyvit.TinyViTForImageClassification
    with pytest.raises(AttributeError, match="has no attribute 'NotAName'"):
        hf_tinyvit.NotAName  # noqa: B018


def test_import_registers_auto_classes_and_loads_no_data_stack():
    probe = (
        "import sys, json, hf_tinyvit\n"
        "from transformers import AutoConfig, AutoModelForImageClassification\n"
        "config = AutoConfig.for_model('tinyvit', embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1],"
        " num_heads=[1, 1, 1, 1], window_sizes=[2, 2, 2, 2], num_labels=3)\n"
        "model = AutoModelForImageClassification.from_config(config)\n"
        "deit = AutoConfig.for_model('deit_distilled')\n"
        "print(json.dumps({'model': type(model).__name__, 'deit': type(deit).__name__,"
        " 'loaded': [m for m in ('datasets', 'timm', 'pyarrow', 'evaluate', 'sklearn') if m in sys.modules]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"model": "TinyViTForImageClassification", "deit": "DeiTDistilledConfig", "loaded": []}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) pairs of every import in a file; name is None for `import module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [("." * node.level + (node.module or ""), alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_examples_use_the_public_api_and_never_each_other(script):
    examples = {p.stem for p in (REPO / "examples").glob("*.py")}
    for module, name in _imports(REPO / "examples" / script):
        top = module.split(".")[0]
        assert top not in examples and module != "importlib.util", f"{script} imports another example: {module}"
        assert not module.startswith("."), f"{script} uses a relative import"
        if top != "hf_tinyvit":
            continue
        private = [part for part in (*module.split("."), name or "") if part.startswith("_")]
        assert not private, f"{script} reaches into a private name: {module}.{name}"
        if module == "hf_tinyvit":
            assert name in hf_tinyvit.__all__, f"{script} imports {name}, which hf_tinyvit does not export"
