"""`thinksafe fit` on two processes as users launch it: Lightning starts rank 1 by re-running the command line,
or torchrun starts both. The data stage is skipped (`data.responses`): only training is distributed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _responses(path: Path) -> Path:
    rows = [
        dict(
            instruction=f"question {i} about {'weapons' if i % 2 == 0 else 'cooking'}?",
            response=f"<think>\nLet me think about request {i}.\n</think>\n\n"
            + ("I cannot help with that." if i % 2 == 0 else "Here is a recipe."),
            label="vanilla_harmful" if i % 2 == 0 else "vanilla_benign",
        )
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_fit_on_two_processes_as_launched(launcher, tmp_path):
    fit = [
        str(BIN / "thinksafe"),
        "fit",
        "--recipe",
        "recipes/debug.yaml",
        f"--data.responses={_responses(tmp_path / 'responses.jsonl')}",
        "--data.in_distribution_rows=0",
        f"--data.output_dir={tmp_path / 'selfgen'}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=2",
    ]
    if launcher == "torchrun":
        fit = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *fit]
    res = subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "usage:" not in log
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in log
    assert list((tmp_path / "run").glob("lightning_logs/version_*/adapter/adapter_model.safetensors"))
