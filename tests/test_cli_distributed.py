"""`thinksafe fit` on two processes as users launch it: Lightning starts rank 1 by re-running the command line,
or torchrun starts both. Under Lightning's launch the data stage runs too, on both ranks (one vLLM engine each,
a shard each, merged); under torchrun it is skipped (`data.responses`) and only training is distributed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def _fit(tmp_path: Path, *options: str) -> list[str]:
    return [
        str(BIN / "thinksafe"),
        "fit",
        "--recipe",
        "recipes/debug.yaml",
        "--data.in_distribution_rows=0",
        f"--data.output_dir={tmp_path / 'selfgen'}",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=2",
        *options,
    ]


def _check_fit(res: subprocess.CompletedProcess, tmp_path: Path) -> str:
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "usage:" not in log
    assert "`Trainer.fit` stopped: `max_steps=2` reached." in log
    assert list((tmp_path / "run").glob("lightning_logs/version_*/adapter/adapter_model.safetensors"))
    return log


@pytest.mark.slow
def test_fit_under_torchrun(tmp_path):
    fit = _fit(tmp_path, f"--data.responses={_responses(tmp_path / 'responses.jsonl')}")
    fit = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *fit]
    _check_fit(subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=600), tmp_path)


@pytest.mark.slow
def test_fit_launched_by_lightning_builds_the_set_on_both_ranks(tiny_qwen3, vllm_sampler, tmp_path, monkeypatch):
    # two vLLM-CPU engines side by side on this machine: each asks for a small share of the memory; the engine
    # otherwise as the session's vllm_sampler, which makes the one-process reference below
    fit = _fit(
        tmp_path,
        f"--model.name_or_path={tiny_qwen3}",
        "--data.sampler.init_args.gpu_memory_utilization=0.05",
        f"--data.sampler.init_args.max_model_len={vllm_sampler.max_model_len}",
    )
    res = subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=600)
    _check_fit(res, tmp_path)
    out = tmp_path / "selfgen"
    shards = sorted((out / "shards").glob("rank_*_of_2"))
    assert [s.name for s in shards] == ["rank_0_of_2", "rank_1_of_2"]
    for s in shards:  # both ranks sampled and guarded their share, each with its own engine
        assert (s / "samples.jsonl").read_text().strip() and (s / "vllm.log").is_file()
    # the merged set equals a one-process run of the same recipe, byte for byte
    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.selfgen import build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    data = yaml.safe_load((ROOT / "recipes" / "debug.yaml").read_text())["data"]
    monkeypatch.chdir(ROOT)
    one = tmp_path / "one"
    build_selfgen(
        output_dir=one,
        model=str(tiny_qwen3),
        prompts=load_prompts(data["prompts"]),  # as the recipe names it: rows record where they came from
        sampler=vllm_sampler,
        guard=OfflineJudge(),
        sampling=SamplingConfig(**data["sampling"]),
        steering_template=PAPER_TEMPLATE,
        reasoning_format=data["reasoning_format"],
        chunk_size=data["chunk_size"],
    )
    for name in ("samples.jsonl", "sampled.jsonl", "train.jsonl"):
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    stats = [json.loads((d / "stats.json").read_text()) for d in (out, one)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
        {k: v for k, v in stats[1].items() if k != "seconds"}
    ] * 2
    fingerprints = [json.loads((d / "manifest.json").read_text())["fingerprint"] for d in (out, one)]
    assert fingerprints[0] == fingerprints[1]
