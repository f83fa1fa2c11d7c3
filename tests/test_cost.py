"""cost.json: every ``thinksafe fit`` writes what it cost (thinksafe.cost.CostLog), ThinkSafe's data stage and SFT
as GRPO's in-loop sampling, judging and training; real fits of the tiny model through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fit(*args: str) -> None:
    from thinksafe.cli import main

    assert main(["fit", "--recipe", str(REPO / "recipes/debug.yaml"), *args]) == 0


def _common(tiny: Path, tmp_path: Path) -> list[str]:
    return [
        f"--model.name_or_path={tiny}",
        f"--data.prompts={REPO / 'data/debug_prompts.jsonl'}",
        f"--data.output_dir={tmp_path / 'selfgen'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.sampler=thinksafe.sampling.TransformersSampler",
        "--data.sampling.max_tokens=16",
        "--trainer.callbacks=[]",
        "--trainer.logger=false",
        "--data.in_distribution_rows=0",
    ]


@pytest.mark.slow
def test_thinksafe_fit_writes_cost_of_data_stage_and_training(tiny_qwen3, tmp_path):
    from thinksafe.data.jsonl_log import read_jsonl

    _fit(*_common(tiny_qwen3, tmp_path), "--trainer.max_steps=2")
    cost = json.loads((tmp_path / "cost.json").read_text())
    samples = read_jsonl(tmp_path / "selfgen" / "samples.jsonl")
    data = cost["stages"]["data"]
    assert data["generated_tokens"] == sum(r["num_tokens"] for r in samples) > 0
    assert data["guard_calls"] == sum(r["guard_verdict"] is not None for r in samples)
    assert data["reused"] is False and data["seconds"] > 0
    assert cost["stages"]["training"]["steps"] == 2 and cost["trained_tokens"] > 0
    assert cost["generated_tokens"] == data["generated_tokens"] and cost["guard_calls"] == data["guard_calls"]
    assert cost["seconds"] >= data["seconds"] + cost["stages"]["training"]["seconds"] - 0.2

    # the finished set is reused: its sampling is no cost of this run, and says so
    _fit(*_common(tiny_qwen3, tmp_path), "--trainer.max_steps=1")
    again = json.loads((tmp_path / "cost.json").read_text())["stages"]["data"]
    assert again["reused"] is True and again["seconds"] is None


@pytest.mark.slow
def test_grpo_fit_through_the_cli_counts_in_loop_sampling(tiny_qwen3, tmp_path):
    """`thinksafe fit` with model.class_path GRPOModule: no data stage runs, the policy samples and the guard
    judges inside training, and cost.json counts both."""
    _fit(
        *_common(tiny_qwen3, tmp_path),
        "--model=thinksafe.rl.GRPOModule",
        "--model.num_generations=2",
        "--model.max_completion_length=8",
        "--model.temperature=1.0",
        "--trainer.max_steps=2",
        "--model.adapter=thinksafe.model.LoRA",
        "--model.adapter.r=8",
    )
    assert not (tmp_path / "selfgen").exists()  # no self-generated set
    cost = json.loads((tmp_path / "cost.json").read_text())
    assert cost["method"] == "GRPOModule" and "data" not in cost["stages"]
    training = cost["stages"]["training"]
    # 2 steps × batch_size 2 prompts × 2 generations, every one judged (guard_on all)
    assert training["generation"]["completions"] == 8 and cost["guard_calls"] == 8
    assert 0 < cost["generated_tokens"] <= 8 * 8 and cost["trained_tokens"] > cost["generated_tokens"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
