"""Exact resume of `thinksafe fit`: a run killed (SIGKILL) at a random micro-batch and resumed with
``--ckpt_path last`` ends with the uninterrupted run's adapter, having trained on the same batches in the same
steps, none skipped or repeated; SIGINT/SIGTERM write a checkpoint and exit 130/143. Real fits of a tiny Qwen3
through the real CLI, in subprocesses (the kill is a real signal)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from thinksafe.data.batching import ResumableLoader, RowShuffleSampler, TokenBudgetSampler

ROOT = Path(__file__).resolve().parents[1]


class StepLog(Callback):
    """Test instrument: appends one line per micro-batch (epoch, batch index, the optimizer step it belongs to, a
    digest of its rows) and, at micro-batch ``stop_at`` (counted over this process), sends itself ``signum``."""

    def __init__(self, path: str, stop_at: int = -1, signum: int = 9):
        self.path, self.stop_at, self.signum, self.seen = path, stop_at, signum, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.stop_at:
            os.kill(os.getpid(), self.signum)
        self.seen += 1
        digest = hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()[:12]
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, trainer.global_step, digest]) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_responses(path: Path, n: int = 20) -> Path:
    labels = ["vanilla_benign", "vanilla_harmful", "adversarial_benign", "adversarial_harmful"]
    with path.open("w") as f:
        for i in range(n):
            reasoning = "First compute the sum. " * (1 + (i * 7) % 11)
            f.write(
                json.dumps(
                    {
                        "instruction": f"How do I bake bread {i}?",
                        "label": labels[i % 4],
                        "response": f"<think>\n{reasoning}\n</think>\n\nBake it {i}.",
                    }
                )
                + "\n"
            )
    return path


def write_recipe(tmp: Path, model: str, batching: str) -> Path:
    data = dict(max_tokens_per_batch=160, rows_per_step=6) if batching == "budget" else dict(batch_size=3)
    recipe = {
        "seed_everything": 0,
        "model": {
            "name_or_path": model,
            "lr": 3e-3,
            "warmup_ratio": 0.1,
            "kl_weight": 0.0,
            "adapter": {
                "class_path": "thinksafe.model.adapters.LoRA",
                "init_args": {"r": 4, "alpha": 8, "dropout": 0.1},
            },
        },
        "data": {
            "responses": str(write_responses(tmp / "responses.jsonl")),
            "max_length": 160,
            "in_distribution_rows": 0,
            "seed": 3,
            **data,
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 3,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


def fit(recipe: Path, run_dir: Path, log: Path, *extra: str, stop_at: int = -1, signum: int = 9, every: int = 3):
    callbacks = json.dumps(
        [
            {
                "class_path": "thinksafe.model.checkpoints.ResumableCheckpoint",
                "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": every},
            },
            {
                "class_path": "test_resume.StepLog",
                "init_args": {"path": str(log), "stop_at": stop_at, "signum": signum},
            },
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
            f"--trainer.callbacks={callbacks}",
            f"--trainer.default_root_dir={run_dir}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def read_log(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def assert_resumed_exactly(straight: Path, first_log: list, resumed_log: list, reference: list, step: int):
    """Steps ≤ ``step`` come from the first run, the rest from the resumed one: together, the reference."""
    kept = [e for e in first_log if e[2] < step]
    assert resumed_log and resumed_log[0][2] == step, "the resumed run starts with the step after the checkpoint"
    assert kept + resumed_log == reference, "a micro-batch was skipped, repeated or reordered"


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["fixed", "budget"])
def test_sigkill_at_a_random_step_then_resume_gives_the_same_adapter(tiny_qwen3, tmp_path, batching):
    recipe = write_recipe(tmp_path, str(tiny_qwen3), batching)
    straight = fit(recipe, tmp_path / "straight", tmp_path / "straight.log")
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = read_log(tmp_path / "straight.log")
    steps = reference[-1][2] + 1
    assert checkpoint_step(tmp_path / "straight") == steps, "a checkpoint is written at the end"

    stop_at = random.Random(f"{batching}-kill").randrange(4, len(reference) - 2)  # any micro-batch, mid-step too
    run = tmp_path / "killed"
    killed = fit(recipe, run, tmp_path / "killed.log", stop_at=stop_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run / "adapter").exists()
    step = checkpoint_step(run)
    assert 0 < step <= reference[stop_at][2]
    resumed = fit(recipe, run, tmp_path / "resumed.log", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    assert_resumed_exactly(run, read_log(tmp_path / "killed.log"), read_log(tmp_path / "resumed.log"), reference, step)
    want, got = adapter(tmp_path / "straight"), adapter(run)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_writes_a_checkpoint_and_exits_130_or_143(tiny_qwen3, tmp_path, signum):
    recipe = write_recipe(tmp_path, str(tiny_qwen3), "budget")
    run = tmp_path / "run"
    stopped = fit(recipe, run, tmp_path / "stopped.log", stop_at=5, signum=signum, every=100)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    log = read_log(tmp_path / "stopped.log")
    assert "--ckpt_path last" in stopped.stderr and "Traceback" not in stopped.stderr
    step = checkpoint_step(run)
    # the step under way when the signal came was finished, and nothing after it was started
    assert step == log[-1][2] + 1 and log[5][2] == log[-1][2]
    assert not (run / "adapter").exists()
    if signum == signal.SIGINT:  # and the checkpoint resumes
        resumed = fit(recipe, run, tmp_path / "resumed.log", "--ckpt_path", "last", every=100)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert read_log(tmp_path / "resumed.log")[0][2] == step
        assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_ckpt_path_last_without_a_checkpoint_is_a_user_error(tiny_qwen3, tmp_path):
    recipe = write_recipe(tmp_path, str(tiny_qwen3), "fixed")
    missing = fit(recipe, tmp_path / "run", tmp_path / "log", "--ckpt_path", "last")
    assert missing.returncode == 2 and "no last checkpoint" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr


# ------------------------------------------------------------------------------------- loaders, in-process
def test_row_order_is_the_one_a_seeded_shuffling_loader_gave_and_depends_on_the_epoch_only():
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(7)
    old = DataLoader(list(range(10)), batch_size=3, shuffle=True, generator=g)
    sampler = RowShuffleSampler(10, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert [int(i) for b in old for i in b] == list(sampler)
    fresh = RowShuffleSampler(10, seed=7)
    fresh.set_epoch(2)
    assert list(fresh) == list(sampler), "a sampler built anew (as on resume) gives the same epoch's order"


@pytest.mark.parametrize("kind", ["fixed", "budget"])
def test_loader_state_resumes_mid_epoch_with_the_next_batch(kind):
    lengths = [5 + (i * 37) % 60 for i in range(40)]
    rows = list(range(40))

    def loader():
        if kind == "fixed":
            return ResumableLoader(
                rows, batch_size=4, sampler=RowShuffleSampler(40, seed=1), collate_fn=lambda b: tuple(b)
            )

        class ByMicroBatch(list):
            def __getitem__(self, mb):
                return mb.rows

        sampler = TokenBudgetSampler(lengths, lengths, 200, micro_batches_per_step=2, seed=1)
        return ResumableLoader(ByMicroBatch(rows), batch_size=None, sampler=sampler, collate_fn=lambda rows: rows)

    first = loader()
    first.sampler.set_epoch(1)
    whole = list(first)
    first.sampler.set_epoch(1)
    it = iter(first)
    served = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 1 and state["served"] == 3

    again = loader()
    again.load_state_dict(state)
    again.sampler.set_epoch(1)  # what Lightning does next
    assert served + list(again) == whole
    assert len(again) == len(whole), "the length stays the epoch's, so Lightning's own count ends the epoch"
    again.sampler.set_epoch(2)
    assert len(list(again)) == len(again), "the next epoch is whole"


def test_a_checkpoint_from_other_data_settings_is_refused():
    from thinksafe.errors import UserError

    a = ResumableLoader(list(range(10)), batch_size=2, sampler=RowShuffleSampler(10, seed=1))
    b = ResumableLoader(list(range(12)), batch_size=2, sampler=RowShuffleSampler(12, seed=1))
    with pytest.raises(UserError, match="other training rows or batching"):
        b.load_state_dict(a.state_dict())


@pytest.mark.slow
def test_disk_full_while_checkpointing_exits_2_and_resumes_once_space_is_freed(tiny_qwen3, tmp_path):
    """Checkpoints go to a real tmpfs with room for one checkpoint but not for a second beside it (a new one is
    written before the old is replaced): the second save fails with exit 2 and one paragraph, the first stays
    whole; once the file system is grown the run resumes from it and ends with the uninterrupted adapter."""
    recipe = write_recipe(tmp_path, str(tiny_qwen3), "fixed")
    straight = fit(recipe, tmp_path / "straight", tmp_path / "straight.log")
    assert straight.returncode == 0, straight.stderr[-3000:]
    size = (tmp_path / "straight" / "checkpoints" / "last.ckpt").stat().st_size
    run = tmp_path / "run"
    disk = run / "checkpoints"
    disk.mkdir(parents=True)
    pages = -(-int(size * 1.5) // 4096)
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={pages * 4096}", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        full = fit(recipe, run, tmp_path / "full.log")
        assert full.returncode == 2, full.stderr[-3000:]
        assert "the disk is full" in full.stderr and "Traceback" not in full.stderr
        assert checkpoint_step(run) == 3, "the checkpoint before the failed one is whole"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = fit(recipe, run, tmp_path / "resumed.log", "--ckpt_path", "last")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        want, got = adapter(tmp_path / "straight"), adapter(run)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
