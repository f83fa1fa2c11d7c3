"""The recipes shipped with thinksafe: listed, found by name, and copied out to be edited.

In a clone they are the files in ``recipes/`` (``thinksafe/_recipes`` is a link to that folder); an installed
wheel carries copies in ``thinksafe/_recipes``. Each recipe's first line is the command that runs it, written
as ``--recipe recipes/<name>.yaml``, so :func:`copy_recipe` writes into ``./recipes`` by default and that line
works as written after a copy.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from thinksafe.errors import UserError

SHIPPED = Path(__file__).resolve().parent / "_recipes"


def list_recipes() -> list[Path]:
    """The shipped recipe files, sorted by name."""
    return sorted(SHIPPED.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The shipped recipe called ``name`` (``qwen3-4b`` or ``qwen3-4b.yaml``)."""
    stem = name.removesuffix(".yaml")
    path = SHIPPED / f"{stem}.yaml"
    if "/" in stem or not path.is_file():
        known = ", ".join(p.stem for p in list_recipes())
        raise UserError(f"no shipped recipe is called {name!r}; the shipped recipes are: {known}.")
    return path


def copy_recipe(name: str, dest: str | Path = "recipes", overwrite: bool = False) -> Path:
    """Copies the shipped recipe ``name`` into the folder ``dest`` (created if missing) and returns the copy.

    An existing file of that name is kept (a user's edits are not lost) unless ``overwrite``.
    """
    source = recipe_path(name)
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file: give the folder to copy the recipe into.")
    target = folder / source.name
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; edit it, remove it, or copy with overwrite to replace it.")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def describe(path: Path) -> str:
    """A recipe's first sentence of prose: its header comment after the paragraph of commands."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    paragraphs = " ".join(line or "\n" for line in header).split("\n")
    prose = next((p.strip() for p in paragraphs[1:] if p.strip()), "")
    # up to the first colon or full stop ("et al." is no full stop)
    sentence = re.split(r": |(?<!\bal)\. ", prose)[0].rstrip(".")
    return sentence if len(sentence) <= 100 else sentence[:99] + "…"


def show_recipes() -> list[str]:
    """Print each shipped recipe's name and its first sentence."""
    lines = [f"{path.stem:<22} {describe(path)}".rstrip() for path in list_recipes()]
    print("\n".join(lines))
    print("copy one out to edit it: thinksafe recipes cp NAME [--dest recipes]")
    return [p.stem for p in list_recipes()]


def main(argv: list[str]) -> None:
    """``thinksafe recipes ls`` lists the shipped recipes; ``thinksafe recipes cp NAME`` copies one out."""
    from jsonargparse import auto_cli, auto_parser

    from thinksafe.errors import parse_args
    from thinksafe.lightning_cli import strict_parser_kwargs

    commands = {"ls": show_recipes, "cp": copy_recipe}
    kwargs = strict_parser_kwargs({"prog": "thinksafe recipes"})
    parse_args(auto_parser(commands, **kwargs), argv, "thinksafe recipes")  # user errors before anything runs
    result = auto_cli(commands, args=argv, **kwargs)
    if isinstance(result, Path):
        print(f"thinksafe recipes: wrote {result}")
