"""The README's "Bring your own model and prompts" walkthrough, run as written in an empty directory.

The whole walkthrough takes minutes on a CPU (two vLLM engine starts, a fit, an evaluation), over this suite's
budget for one test; so the cheap steps run as they are (the stand-in model is built, the prompt file written,
the recipe copied) and every heavy ``thinksafe`` command is parsed, not run: ``generate``, ``fit`` and ``export``
with ``--print_config`` appended, ``eval`` (which has no ``--print_config``) through its own option parser in this
process; each against the copied recipe and the files the earlier steps made, and its resolved values are checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY = re.compile(r"^\.venv/bin/thinksafe (generate|fit|eval|export) ")


def walkthrough() -> str:
    """The ```bash block under the README's "### Bring your own model and prompts" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Bring your own model and prompts\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md: no ```bash block under ### Bring your own model and prompts"
    return blocks[0]


def cheap_form(block: str) -> tuple[str, int, list[str]]:
    """The block with each heavy command given ``--print_config`` (its output marked), the lines that read what
    the heavy commands would have written left out; how many commands were turned; and eval's arguments."""
    lines, turned, eval_args = [], 0, []
    for line in block.replace("\\\n", "").splitlines():
        command = line.split("  #")[0].rstrip()
        if HEAVY.match(command) and command.split()[1] == "eval":
            turned += 1
            eval_args = shlex.split(command)[2:]
        elif HEAVY.match(command):
            turned += 1
            lines.append(f"echo '=== {command.split()[1]}'")
            lines.append(f"{command} --print_config")
        elif command.startswith(".venv/bin/python -c") or command.startswith(".venv/bin/tensorboard"):
            continue  # read the set / serve the logs the skipped commands write
        else:
            lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n", turned, eval_args


@pytest.mark.slow
def test_bring_your_own_model_walkthrough_runs_as_written(tmp_path, monkeypatch):
    script, turned, eval_args = cheap_form(walkthrough())
    assert turned == 4  # generate, fit, eval, export
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    assert (tmp_path / "my-model" / "config.json").is_file()  # step 1 built the stand-in model
    assert (tmp_path / "my-recipes" / "debug.yaml").is_file()  # step 3 copied the recipe
    from thinksafe.data.prompts import load_prompts

    prompts = load_prompts(str(tmp_path / "my_prompts.jsonl"))  # step 2's file is a valid prompt set
    assert {p.label for p in prompts} >= {"vanilla_harmful", "adversarial_harmful", "vanilla_benign"}

    printed = dict(re.findall(r"=== (\w+)\n(.*?)(?====|\Z)", done.stdout, flags=re.S))
    assert set(printed) == {"generate", "fit", "export"}, done.stdout[-2000:]
    fit = yaml.safe_load(printed["fit"])
    module = fit["model"].get("init_args", fit["model"])  # printed flat or as class_path/init_args
    assert module["name_or_path"] == "my-model"
    assert fit["data"]["prompts"] == "my_prompts.jsonl" and fit["data"]["output_dir"] == "runs/mine/selfgen"
    assert fit["trainer"]["default_root_dir"] == "runs/mine"
    generate = yaml.safe_load(printed["generate"])
    assert generate["data"]["output_dir"] == fit["data"]["output_dir"]  # fit reuses generate's set
    from thinksafe.eval.options import parse_eval_options

    monkeypatch.chdir(tmp_path)  # the copied recipe and its relative paths
    evaluate = parse_eval_options(eval_args).run_eval_kwargs
    assert evaluate["model"] == "runs/mine/lightning_logs/version_0/adapter"
    assert evaluate["benchmarks"] == ["strongreject", "xstest"] and evaluate["limit"] == 8
    assert evaluate["sampling"].max_tokens == 48 and type(evaluate["sampler"]).__name__ == "VLLMSampler"
    assert yaml.safe_load(printed["export"])["adapter_dir"] == evaluate["model"]
