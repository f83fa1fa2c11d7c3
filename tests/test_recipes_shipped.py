"""Recipes travel with the package: thinksafe/_recipes is the top-level recipes/ folder, a wheel carries them,
and they can be listed and copied out by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from thinksafe.errors import UserError
from thinksafe.recipes import SHIPPED, copy_recipe, list_recipes, recipe_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_recipes_are_the_clones_recipes():
    assert SHIPPED.resolve() == (ROOT / "recipes").resolve()
    assert [p.name for p in list_recipes()] == sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert recipe_path("debug") == recipe_path("debug.yaml") == SHIPPED / "debug.yaml"


def test_copy_writes_where_the_recipes_first_line_expects_and_keeps_edits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copied = copy_recipe("qwen3-4b")
    assert copied == Path("recipes/qwen3-4b.yaml")
    assert copied.read_text() == recipe_path("qwen3-4b").read_text()
    assert "--recipe recipes/qwen3-4b.yaml" in copied.read_text().splitlines()[0]
    copied.write_text("# my edits\n")
    with pytest.raises(UserError, match="already exists"):
        copy_recipe("qwen3-4b.yaml")
    assert copied.read_text() == "# my edits\n"
    assert copy_recipe("qwen3-4b", overwrite=True).read_text() == recipe_path("qwen3-4b").read_text()
    assert copy_recipe("debug", tmp_path / "elsewhere").parent == tmp_path / "elsewhere"


def test_unknown_names_list_the_shipped_recipes(tmp_path):
    with pytest.raises(UserError, match=r"no shipped recipe is called 'qwen9'.*qwen3-4b"):
        recipe_path("qwen9")
    with pytest.raises(UserError, match="no shipped recipe"):
        recipe_path("../pyproject")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file"):
        copy_recipe("debug", tmp_path / "f")


@pytest.mark.slow
def test_wheel_carries_recipes_and_chat_templates(tmp_path):
    """A built wheel (what `pip install thinksafe` gets) holds every recipe and the chat templates."""
    # built from a copy, so the clone gets no build/ folder; the copy keeps thinksafe/_recipes a link
    src = tmp_path / "src"
    for part in ("thinksafe", "recipes"):
        shutil.copytree(ROOT / part, src / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / part, src / part)
    assert (src / "thinksafe" / "_recipes").is_symlink()
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("thinksafe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"thinksafe/_recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")} <= names
    assert {"thinksafe/model/templates/qwen3.jinja", "thinksafe/model/templates/deepseek-r1-distill.jinja"} <= names
    assert "thinksafe/recipes.py" in names


def test_recipes_command_lists_and_copies(tmp_path, monkeypatch, capsys):
    """`thinksafe recipes ls` names every shipped recipe with its first sentence; `cp` copies one where its first
    line expects it and refuses to overwrite edits (exit 2, one paragraph)."""
    from thinksafe.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "ls"]) == 0
    out = capsys.readouterr().out
    for path in list_recipes():
        assert path.stem in out
    assert "ThinkSafe (Lee et al. 2026) on Qwen/Qwen3-4B with the forward-KL ablation" in out
    assert main(["recipes", "cp", "debug"]) == 0
    assert (tmp_path / "recipes" / "debug.yaml").read_text() == recipe_path("debug").read_text()
    assert main(["recipes", "cp", "debug"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["recipes", "cp", "qwen9"]) == 2
