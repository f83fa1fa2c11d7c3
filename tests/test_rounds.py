"""Sampling with the weights in training: VLLMSampler.follow (a LoRA adapter hot-loaded from the module, no merge, no
restart) and self-generation rounds (data.rounds): real fits of a tiny Qwen3, real vLLM on CPU, real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from thinksafe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- helpers
def _loader(model_dir: Path, n: int = 8, batch_size: int = 4):
    """Encoded (prompt, response) rows of the tiny model, in fixed batches."""
    from torch.utils.data import DataLoader

    from thinksafe.model.loading import load_tokenizer
    from thinksafe.rows import ChatEncoder, EncodedRow, collate

    tokenizer = load_tokenizer(str(model_dir))
    encoder = ChatEncoder(tokenizer, "plain", 128)
    rows = []
    for i in range(n):
        ids, labels = encoder.encode(f"Name a colour, please ({i}).", f"Blue is a colour {i}; so is green.")
        rows.append(EncodedRow(ids, labels, "vanilla_benign"))
    return DataLoader(rows, batch_size=batch_size, collate_fn=lambda b: collate(b, encoder.pad_id))


def _train(module, loader, steps: int, root: Path) -> None:
    from lightning.pytorch import Trainer

    Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    ).fit(module, loader)


# ------------------------------------------------------------------------------------------ fast checks
def test_follow_writes_the_module_weights_and_serves_them_by_kind(tiny_qwen3, tmp_path):
    """LoRA: the adapter is written and becomes a new LoRA request (the base model is sampled); full fine-tuning:
    the whole model is written and is what gets sampled (the engine restarts on it). No engine starts here."""
    from thinksafe.model import LoRA
    from thinksafe.model.adapters import FullFineTune
    from thinksafe.model.module import ThinkSafeModule
    from thinksafe.sampling import VLLMSampler

    sampler = VLLMSampler(kv_cache_memory_bytes=2**28, max_lora_rank=8)
    lora = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=8, alpha=16, dropout=0.0))
    lora.configure_model()
    assert sampler.follow(lora, tmp_path / "a") == str(tiny_qwen3)
    first = sampler._lora_id
    assert sampler.adapter == str(tmp_path / "a") and (tmp_path / "a" / "adapter_config.json").is_file()
    sampler.follow(lora, tmp_path / "a")  # rewritten in place: a new request id makes vLLM read it again
    assert sampler._lora_id == first + 1

    full = ThinkSafeModule(str(tiny_qwen3), adapter=FullFineTune())
    full.configure_model()
    assert sampler.follow(full, tmp_path / "full") == str(tmp_path / "full")
    assert sampler.adapter is None and (tmp_path / "full" / "config.json").is_file()


def test_rounds_options_are_checked(tiny_qwen3, tmp_path):
    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.rounds import epochs_per_round

    one = SafetyDataModule(prompts="p.jsonl", output_dir="runs/x/", model_name_or_path=str(tiny_qwen3))
    assert one.round_dir() == "runs/x/" and one.dataset_name() == "self-generated (runs/x/)"  # as before rounds
    assert "round" not in one.state_dict()
    three = SafetyDataModule(prompts="p.jsonl", output_dir="runs/x", rounds=3)
    assert [three.round_dir(k) for k in (1, 2)] == ["runs/x/round_1", "runs/x/round_2"]
    assert three.adapter_dir(1) == "runs/x/adapters/round_1"
    assert epochs_per_round(3, 6) == 2
    for bad in (4, -1, None):
        with pytest.raises(UserError, match="multiple of 3"):
            epochs_per_round(3, bad)
    from lightning.pytorch import Trainer

    three.trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(UserError, match="SelfGenRounds callback"):  # a script that forgot it
        three.train_dataloader()
    with pytest.raises(UserError, match="data.rounds must be"):
        SafetyDataModule(prompts="p.jsonl", rounds=0)
    with pytest.raises(UserError, match="data.responses"):
        SafetyDataModule(responses="r.jsonl", rounds=2)


# -------------------------------------------------------------------------------- the sampler follows training
@pytest.mark.slow
def test_sampler_following_training_says_what_the_merged_weights_say(tiny_qwen3, tmp_path):
    """After N training steps the following sampler's greedy text equals that of the export-merged weights of the
    same step; a refresh after more steps is a new LoRA request in the same engine process."""
    pytest.importorskip("vllm")
    from thinksafe.model import LoRA
    from thinksafe.model.export import export_merged
    from thinksafe.model.module import ThinkSafeModule
    from thinksafe.sampling import VLLMSampler, kept_engines
    from thinksafe.sampling.base import SamplingConfig

    module = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=8, alpha=16, dropout=0.0), lr=3e-2, warmup_ratio=0.0)
    loader = _loader(tiny_qwen3)
    chats = [[{"role": "user", "content": p}] for p in ("Name a colour, please (3).", "What is 2 + 3?", "Hi!")]
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=16)
    sampler = VLLMSampler(kv_cache_memory_bytes=2**28, max_model_len=512, dtype="float32", max_lora_rank=8)
    with kept_engines(sampler):
        _train(module, loader, 2, tmp_path / "fit-1")
        model = sampler.follow(module, tmp_path / "policy")
        first = [c[0].text for c in sampler.generate(model, chats, greedy)]
        pid = sampler._engine._proc.pid

        _train(module, loader, 4, tmp_path / "fit-2")
        model = sampler.follow(module, tmp_path / "policy")  # the same directory, rewritten
        second = [c[0].text for c in sampler.generate(model, chats, greedy)]
        assert sampler._engine._proc.pid == pid, "a refresh must not restart the engine"
        assert second != first, "the refreshed adapter was not served"

        merged = export_merged(tmp_path / "policy", tmp_path / "merged")

        # GRPO samples through the same engine: its policy adapter is refreshed before every step, never restarted
        _grpo_follows_the_policy(tiny_qwen3, sampler, tmp_path / "grpo")
        assert sampler._engine._proc.pid == pid

        sampler.set_adapter(None)
        assert [c[0].text for c in sampler.generate(str(merged), chats, greedy)] == second


def _grpo_follows_the_policy(tiny_qwen3: Path, sampler, root: Path) -> None:
    from lightning.pytorch import Trainer

    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.guards import OfflineJudge
    from thinksafe.model import LoRA
    from thinksafe.rl import GRPOModule

    root.mkdir()
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"instruction": f"Say something about colour {i}.", "label": label}) + "\n"
            for i, label in enumerate(["vanilla_harmful", "vanilla_benign"] * 2)
        )
    )
    data = SafetyDataModule(
        prompts=str(prompts),
        output_dir=str(root / "unused"),
        sampler=sampler,
        guard=OfflineJudge(),
        reasoning_format="plain",
        batch_size=2,
        max_length=256,
        model_name_or_path=str(tiny_qwen3),
        in_distribution_rows=0,
    )
    module = GRPOModule(
        str(tiny_qwen3),
        adapter=LoRA(r=8, alpha=16, dropout=0.0),
        num_generations=2,
        temperature=1.0,
        max_completion_length=8,
        lr=3e-2,
        warmup_ratio=0.0,
    )
    requests = sampler._lora_id
    Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    ).fit(module, datamodule=GRPOModule.online_data(data))
    assert module.cost["completions"] == 2 * 2 * 2 and module.cost["generated_tokens"] > 0
    assert sampler._lora_id == requests + 2, "one new LoRA request per step"
    assert sampler.adapter == str(root / "policy") and (root / "policy" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------- rounds
class KillAtEpoch(Callback):
    """Test instrument: SIGKILLs its own process when epoch ``epoch`` starts (after the epoch-end checkpoint)."""

    def __init__(self, epoch: int = -1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def _rounds_recipe(tmp: Path, model: str) -> Path:
    prompts = tmp / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(8):
            label = "vanilla_harmful" if i % 4 == 0 else "vanilla_benign"
            f.write(json.dumps({"instruction": f"Tell me about colour number {i}.", "label": label}) + "\n")
    recipe = {
        "seed_everything": 0,
        "model": {
            "name_or_path": model,
            "lr": 3e-2,
            "warmup_ratio": 0.0,
            "adapter": {"class_path": "thinksafe.model.LoRA", "init_args": {"r": 8, "alpha": 16, "dropout": 0.0}},
        },
        "data": {
            "prompts": str(prompts),
            "rounds": 2,
            "chunk_size": 4,
            "reasoning_format": "plain",
            "sampler": {"class_path": "thinksafe.sampling.TransformersSampler", "init_args": {"batch_size": 4}},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": 1, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 12, "seed": 0},
            "max_length": 96,
            "batch_size": 2,
            "in_distribution_rows": 4,
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 4,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _fit(recipe: Path, run: Path, *extra: str, kill_at_epoch: int = -1):
    callbacks = json.dumps(
        [
            {
                "class_path": "thinksafe.model.ResumableCheckpoint",
                "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 0},
            },
            {"class_path": "test_rounds.KillAtEpoch", "init_args": {"epoch": kill_at_epoch}},
        ]
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "thinksafe.cli",
            "fit",
            "--config",
            str(recipe),
            f"--data.output_dir={run / 'selfgen'}",
            f"--trainer.callbacks={callbacks}",
            f"--trainer.default_root_dir={run}",
            "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
            f"--trainer.logger.init_args.save_dir={run / 'tb'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )


def _responses(directory: Path, name: str = "sampled.jsonl") -> list[tuple[int, str]]:
    from thinksafe.data.jsonl_log import read_jsonl

    return [(r["prompt_index"], r["response"]) for r in read_jsonl(directory / name)]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(run.rglob("adapter/adapter_model.safetensors")))


@pytest.mark.slow
def test_two_rounds_sample_with_the_trained_weights_and_resume_after_sigkill(tiny_qwen3, tmp_path):
    """A 2-round fit writes round_1/ and round_2/; round 2 is what a sampler pointed at round 1's saved adapter
    samples (same code path, same seeds); the rounds are in TensorBoard with the round as step. A run SIGKILLed
    as round 2 starts resumes with --ckpt_path last without building either set again, and ends with the same
    adapter as the uninterrupted run."""
    from peft import PeftModel
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.selfgen import SelfGenJob, build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.model.loading import load_causal_lm, load_tokenizer
    from thinksafe.sampling import TransformersSampler
    from thinksafe.sampling.base import SamplingConfig
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    recipe = _rounds_recipe(tmp_path, str(tiny_qwen3))
    straight = tmp_path / "straight"
    done = _fit(recipe, straight)
    assert done.returncode == 0, done.stderr[-4000:]
    out = straight / "selfgen"
    assert {p.name for p in out.iterdir()} >= {"round_1", "round_2", "adapters", "rounds.json"}
    assert not (out / "manifest.json").exists()
    for k in (1, 2):
        assert (out / f"round_{k}" / "stats.json").is_file()
    assert not (out / "round_3").exists() and not (out / "adapters" / "round_2").exists()
    round_1, round_2 = _responses(out / "round_1"), _responses(out / "round_2")
    assert len(round_1) == len(round_2) == 8 and round_1 != round_2, "round 2 was not sampled with new weights"

    # round 2 is what round 1's saved adapter samples, through the same data stage
    sampler = TransformersSampler(batch_size=4)
    lm = PeftModel.from_pretrained(load_causal_lm(str(tiny_qwen3), dtype="float32"), out / "adapters" / "round_1")
    sampler.attach(str(tiny_qwen3), lm, load_tokenizer(str(tiny_qwen3)))
    build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(tmp_path / "prompts.jsonl")),
            sampler=sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=12, seed=0),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=4,
        ),
        tmp_path / "check",
    )
    assert _responses(tmp_path / "check") == round_2
    assert _responses(tmp_path / "check", "samples.jsonl") == _responses(out / "round_2", "samples.jsonl")

    summary = json.loads((out / "rounds.json").read_text())
    assert set(summary) == {"1", "2"} and summary["2"]["directory"] == str(out / "round_2")
    events = EventAccumulator(str(next((straight / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("rounds/acceptance_rate/vanilla_benign", "rounds/kept", "rounds/in_distribution/nll"):
        assert tag in tags and [e.step for e in events.Scalars(tag)] == [1, 2], tag
    assert [e.step for e in events.Scalars("rounds/in_distribution_sampler/nll")] == [2]
    kept = [e.value for e in events.Scalars("rounds/kept")]
    assert kept == [summary["1"]["rounds/kept"], summary["2"]["rounds/kept"]]
    # the data stage's step-0 view is round 1's set, as with one round
    round_1_stats = json.loads((out / "round_1" / "stats.json").read_text())
    assert [e.value for e in events.Scalars("data/kept/vanilla_benign")] == [
        round_1_stats["per_label"]["vanilla_benign"]["kept"]
    ]

    cost = json.loads(next(straight.rglob("cost.json")).read_text())["stages"]["data"]
    assert [r["round"] for r in cost["rounds"]] == [1, 2] and cost["rounds"][1]["seconds"] is not None
    assert cost["samples"] == 16 and cost["generated_tokens"] == sum(r["generated_tokens"] for r in cost["rounds"])

    # SIGKILL as round 2's first epoch starts (its set built, the epoch-end checkpoint written), then resume
    run = tmp_path / "killed"
    killed = _fit(recipe, run, kill_at_epoch=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    sets = [run / "selfgen" / "round_1", run / "selfgen" / "round_2"]
    before = {p: p.stat().st_mtime_ns for d in sets for p in d.iterdir()}
    assert _responses(sets[1]) == round_2
    resumed = _fit(recipe, run, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for d in sets for p in d.iterdir()} == before, "a finished round was redone"
    assert not (run / "selfgen" / "round_3").exists()
    cost = json.loads(next(run.rglob("cost.json")).read_text())["stages"]["data"]
    assert cost["samples"] == 16 and cost["rounds"][1]["seconds"] is None  # built by the killed process
    want, got = _adapter(straight), _adapter(run)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name


def test_generate_builds_round_1_of_a_rounds_recipe(tiny_qwen3, tmp_path):
    """`thinksafe generate` with data.rounds > 1 writes (and scores) the set fit trains round 1 on."""
    from thinksafe.cli import main

    recipe = _rounds_recipe(tmp_path, str(tiny_qwen3))
    out = tmp_path / "selfgen"
    assert main(["generate", "--config", str(recipe), f"--data.output_dir={out}"]) == 0
    assert (out / "round_1" / "stats.json").is_file() and (out / "round_1" / "in_distribution.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["round_1"]
