"""The public API in ``thinksafe/__init__.py``, and the README's "Python API" example run exactly as written."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import thinksafe

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first ```python block under the README's "## Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md: no ```python block under ## Python API"
    return blocks[0]


def test_import_is_cheap_and_every_public_name_resolves():
    # a fresh interpreter: this one has torch loaded already
    heavy = ("torch", "lightning", "vllm", "transformers")
    probe = f"import sys, thinksafe; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    assert set(thinksafe.__all__) - {"__version__"} == set(thinksafe._EXPORTS)
    for name in thinksafe._EXPORTS:
        value = getattr(thinksafe, name)
        assert value.__name__ == name if name != "PAPER_TEMPLATE" else "{prompt}" in value
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        thinksafe.nope  # noqa: B018


def test_readme_example_names_only_public_api():
    imports = [n for n in ast.walk(ast.parse(readme_example())) if isinstance(n, ast.ImportFrom | ast.Import)]
    from_thinksafe = {
        a.name for n in imports if isinstance(n, ast.ImportFrom) and n.module == "thinksafe" for a in n.names
    }
    assert {"SafetyDataModule", "ThinkSafeModule"} <= from_thinksafe <= set(thinksafe.__all__)
    modules = {n.module for n in imports if isinstance(n, ast.ImportFrom)} | {
        a.name for n in imports if isinstance(n, ast.Import) for a in n.names
    }
    assert not any(m.startswith("thinksafe.") for m in modules), modules  # the example uses no deep import


@pytest.mark.slow
def test_readme_python_example_trains(tiny_qwen3, tmp_path, monkeypatch):
    """Runs the README block with its relative paths inside tmp_path: ``data/`` holds the conftest's tiny
    Qwen3 (the same model `make setup` builds in data/tiny-qwen3) and the repository's debug prompts."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tiny-qwen3").symlink_to(tiny_qwen3)
    (tmp_path / "data" / "debug_prompts.jsonl").symlink_to(ROOT / "data" / "debug_prompts.jsonl")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md#python-api", "exec"), namespace)

    trainer, data = namespace["trainer"], namespace["data"]
    assert trainer.global_step == 4
    assert Path(trainer.log_dir).resolve().is_relative_to(tmp_path.resolve())
    adapter = Path(trainer.log_dir) / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert (tmp_path / "runs" / "api" / "selfgen" / "manifest.json").is_file()
    assert data.training_rows(), "the self-generated set kept no row to train on"
    assert (Path(trainer.log_dir) / "in_distribution.json").is_file()
