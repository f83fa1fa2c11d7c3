"""The data stage split into shards and merged, the merge command, and one writer per directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinksafe.cli import main
from thinksafe.data.prompts import load_prompts
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.data.shards import merge_shards, merge_sources, shard_dir, shard_indices
from thinksafe.errors import UserError
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig, TransformersSampler
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"


def test_shards_take_whole_chunks_in_turn_and_cover_every_prompt_once():
    assert shard_indices(11, 2, 0, 3) == [0, 1, 6, 7]
    assert shard_indices(11, 2, 1, 3) == [2, 3, 8, 9]
    assert shard_indices(11, 2, 2, 3) == [4, 5, 10]
    for n, cs, k in [(12, 4, 2), (12, 5, 4), (3, 8, 2), (100, 7, 8)]:
        parts = [shard_indices(n, cs, s, k) for s in range(k)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        # each shard's chunks are the one-process run's chunks: the same prompts in every engine call
        for p in parts:
            for c in range(0, len(p), cs):
                chunk = p[c : c + cs]
                assert chunk[0] % cs == 0 and chunk == list(range(chunk[0], min(chunk[0] + cs, n)))


def _job(model, seed=0) -> SelfGenJob:
    return SelfGenJob(
        model=str(model),
        prompts=load_prompts(str(PROMPTS)),
        sampler=TransformersSampler(batch_size=4),
        guard=OfflineJudge(),
        sampling=SamplingConfig(n=2, max_tokens=12, seed=seed),
        steering_template=PAPER_TEMPLATE,
        reasoning_format="plain",
        chunk_size=3,
    )


def _build(out, model, seed=0, **kw):
    return build_selfgen(_job(model, seed), out, **kw)


@pytest.fixture(scope="module")
def one_process(tiny_qwen3, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "set"
    _build(out, tiny_qwen3)
    return out


@pytest.fixture(scope="module")
def two_shards(tiny_qwen3, tmp_path_factory) -> Path:
    """The same set built as two shards (what two ranks of a fit write), not merged yet."""
    out = tmp_path_factory.mktemp("two") / "set"
    n = len(load_prompts(str(PROMPTS)))
    for s in range(2):
        _build(shard_dir(out, s, 2), tiny_qwen3, indices=shard_indices(n, 3, s, 2), shard=dict(rank=s, of=2))
    return out


def _stats(path: Path) -> dict:
    stats = json.loads((path / "stats.json").read_text())
    stats.pop("seconds")
    return stats


def test_merged_shards_equal_the_one_process_set(one_process, two_shards, tmp_path, capsys):
    shards = [shard_dir(two_shards, s, 2) for s in range(2)]
    assert all((s / "samples.jsonl").stat().st_size for s in shards)  # both shards sampled
    assert merge_sources([two_shards]) == shards  # an output directory names its shards
    out = tmp_path / "merged"
    assert main(["generate", "--merge", *map(str, shards), "--output", str(out)]) == 0
    for name in ("samples.jsonl", "sampled.jsonl", "train.jsonl"):
        assert (out / name).read_bytes() == (one_process / name).read_bytes(), name
    assert _stats(out) == _stats(one_process)
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, one_process))
    assert manifest["fingerprint"] == reference["fingerprint"] and "shard" not in manifest
    assert manifest["merged_from"] == [str(s) for s in shards]
    # the merged set is a finished set like any other: the same settings reuse it
    assert _build(out, json.loads((out / "manifest.json").read_text())["settings"]["model"]).reused


def test_merge_refuses_other_settings_overlap_and_missing_shards(tiny_qwen3, two_shards, tmp_path, capsys):
    shards = [shard_dir(two_shards, s, 2) for s in range(2)]
    other = tmp_path / "other"
    n = len(load_prompts(str(PROMPTS)))
    _build(other, tiny_qwen3, seed=1, indices=shard_indices(n, 3, 1, 2), shard=dict(rank=1, of=2))
    cases = [
        ([shards[0], other], "different settings (sampling differ"),
        ([shards[0], shards[0]], "overlap"),
        ([shards[0]], "missing"),
        ([tmp_path], "no readable manifest.json"),
    ]
    for sources, expected in cases:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["generate", "--merge", *map(str, sources), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
        assert not (out / "samples.jsonl").exists()


def test_an_unfinished_shard_is_not_merged(two_shards, tmp_path):
    half = shutil.copytree(shard_dir(two_shards, 1, 2), tmp_path / "half")
    (half / "stats.json").unlink()
    with pytest.raises(UserError, match="unfinished"):
        merge_shards(tmp_path / "out", [shard_dir(two_shards, 0, 2), half])


# -------------------------------------------------------------------------------------------- one writer
GENERATE_RECIPE = {
    "model": {"name_or_path": None},
    "data": {
        "prompts": str(PROMPTS),
        "output_dir": None,
        "chunk_size": 1,
        "reasoning_format": "plain",
        "in_distribution_rows": 0,
        "sampler": {"class_path": "thinksafe.sampling.TransformersSampler"},
        "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
        "sampling": {"n": 2, "max_tokens": 40, "seed": 3},
    },
    "trainer": {"accelerator": "cpu", "logger": False},
}


@pytest.mark.slow
def test_a_second_generate_on_a_directory_being_written_is_refused(tiny_qwen3, tmp_path):
    import yaml

    out = tmp_path / "set"
    recipe = json.loads(json.dumps(GENERATE_RECIPE))
    recipe["model"]["name_or_path"], recipe["data"]["output_dir"] = str(tiny_qwen3), str(out)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(tmp_path / "r.yaml")]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sampled = out / "sampled.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and (not sampled.exists() or len(sampled.read_bytes().splitlines()) < 2):
            assert first.poll() is None, first.stdout.read().decode()
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # the refusal came while the first was still writing
        assert second.returncode == 2, second.stderr[-2000:]
        assert "is being written by another running job" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        log = first.communicate(timeout=600)[0].decode()
        assert first.returncode == 0, log[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    n = len(load_prompts(str(PROMPTS)))
    assert sorted((r["prompt_index"], r["sample_index"]) for r in rows) == [(i, j) for i in range(n) for j in range(2)]
    assert json.loads((out / "stats.json").read_text())["all"]["samples"] == 2 * n
    # the lock died with its holder: the same command now reuses the finished set
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "reusing it" in again.stderr, again.stderr[-2000:]


def test_an_interrupted_shard_resumes_to_the_same_rows(one_process, two_shards, tiny_qwen3, tmp_path):
    # what a SIGKILL of rank 1 mid-shard leaves: whole prompts, then a torn line, and no stats.json
    out = shutil.copytree(two_shards, tmp_path / "set")
    shard = shard_dir(out, 1, 2)
    sampled = (shard / "sampled.jsonl").read_bytes().splitlines(keepends=True)
    (shard / "sampled.jsonl").write_bytes(b"".join(sampled[:3]) + sampled[3][:20])
    (shard / "samples.jsonl").unlink()
    (shard / "stats.json").unlink()
    n = len(load_prompts(str(PROMPTS)))
    res = _build(shard, tiny_qwen3, indices=shard_indices(n, 3, 1, 2), shard=dict(rank=1, of=2))
    assert res.resumed and not res.reused
    merged = tmp_path / "merged"
    merge_shards(merged, merge_sources([out]))
    assert (merged / "samples.jsonl").read_bytes() == (one_process / "samples.jsonl").read_bytes()


def test_a_waiting_rank_hears_of_a_failed_shard(two_shards, tmp_path):
    from thinksafe.data.shards import _failure_path, _wait_for_shards

    out = shutil.copytree(two_shards, tmp_path / "set")
    (shard_dir(out, 1, 2) / "stats.json").unlink()  # unfinished …
    _failure_path(out, 1, 2).write_text("data.sampler: vLLM could not start the model")  # … because it failed
    fp = json.loads((shard_dir(out, 0, 2) / "manifest.json").read_text())["fingerprint"]
    with pytest.raises(UserError, match="failed on rank 1 .*could not start the model.*run the same command again"):
        _wait_for_shards(out, 2, 1, 2, fp, console=None)


# ------------------------------------------------------------------------------------------ a dead rank
BEATING = """
import sys, time
from pathlib import Path
from thinksafe.data import shards
shards.HEARTBEAT_EVERY_S = 0.5
with shards._heartbeat(Path(sys.argv[1]), 1, 2, sys.argv[2]):
    time.sleep(600)  # building its shard
"""


def _beating_rank(out: Path, run: str) -> subprocess.Popen:
    """A real process that beats as rank 1 of 2 of ``run`` (what a rank does while its engine works)."""
    from thinksafe.data.shards import _alive_path

    rank = subprocess.Popen([sys.executable, "-c", BEATING, str(out), run], cwd=ROOT)
    deadline = time.monotonic() + 60
    while run not in (_alive_path(out, 1, 2).read_text() if _alive_path(out, 1, 2).exists() else ""):
        assert rank.poll() is None and time.monotonic() < deadline, "the rank never beat"
        time.sleep(0.05)
    return rank


@pytest.mark.slow
def test_a_waiting_rank_notices_a_dead_or_hung_rank_within_the_limit(two_shards, tmp_path):
    import threading

    from thinksafe.data.shards import POLL_EVERY_S, STALE_AFTER_S, _wait_for_shards

    out = shutil.copytree(two_shards, tmp_path / "set")
    (shard_dir(out, 1, 2) / "stats.json").unlink()  # rank 1's shard is unfinished: rank 0 waits for it
    fp = json.loads((shard_dir(out, 0, 2) / "manifest.json").read_text())["fingerprint"]
    resume = "run the same command again to resume every shard"

    # SIGKILLed while rank 0 waits (default limit, 90 s): its pid is gone, so rank 0 stops within a poll or two
    rank = _beating_rank(out, "run-1")
    killed = []
    threading.Timer(1.0, lambda: (rank.kill(), killed.append(time.monotonic()))).start()
    with pytest.raises(UserError) as e:
        _wait_for_shards(out, 2, 1, 2, fp, console=None, run="run-1")
    took = time.monotonic() - killed[0]
    rank.wait()
    assert took < 2 * POLL_EVERY_S + 1 < STALE_AFTER_S, took
    message = str(e.value)
    assert f"rank 1 (pid {rank.pid} on " in message and "died while building its shard" in message
    assert str(shard_dir(out, 1, 2)) in message and resume in message and "\n" not in message

    # the dead rank's heartbeat file belongs to that run: a later run does not take it for its own rank 1's death,
    # but a rank that never beats is called silent after the limit
    t0 = time.monotonic()
    with pytest.raises(UserError, match="has not changed for 2 s .*never started") as e:
        _wait_for_shards(out, 2, 1, 2, fp, console=None, run="run-2", stale_after_s=2)
    assert 2 <= time.monotonic() - t0 < 2 + 2 * POLL_EVERY_S + 1 and "died while building" not in str(e.value)

    # a hung rank (stopped: alive, but its heartbeat no longer changes) is called silent after the limit
    rank = _beating_rank(out, "run-3")
    try:
        time.sleep(1.2)  # beating twice a second: not silent
        rank.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(UserError, match=rf"rank 1 \(pid {rank.pid} on .*has not changed for 3 s") as e:
            _wait_for_shards(out, 2, 1, 2, fp, console=None, run="run-3", stale_after_s=3)
        assert 3 <= time.monotonic() - t0 < 3 + 2 * POLL_EVERY_S + 1 and resume in str(e.value)
    finally:
        rank.kill()
        rank.wait()


# ------------------------------------------------------------------- resuming with another number of processes
def _cut(log: Path, lines: int) -> None:
    """What a SIGKILL leaves: the first ``lines`` rows, then a torn one."""
    rows = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(rows[:lines]) + rows[lines][:15])


def _same_set(out: Path, reference: Path) -> None:
    for name in ("samples.jsonl", "sampled.jsonl", "train.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert _stats(out) == _stats(reference)


def test_a_restart_with_another_number_of_processes_keeps_every_whole_chunk(one_process, tiny_qwen3, tmp_path):
    import io
    from contextlib import ExitStack

    from rich.console import Console

    from thinksafe.data.selfgen import claim_output_dir
    from thinksafe.data.shards import build_here, fold_other_layouts, shard_of

    job = _job(tiny_qwen3)  # 12 prompts, chunks of 3, 2 samples each: chunk k has 6 rows
    # 2 processes -> 1: rank 0 finished its shard (chunks 0 and 2), rank 1 was killed in its first chunk (1): two of
    # its prompts whole, then a torn row. Chunks 0 and 2 are kept (not a prefix of the set: chunk 1 is redone between
    # them, in the batch an uninterrupted run gives it)
    out = tmp_path / "two_then_one"
    with ExitStack() as stack:
        assert claim_output_dir(out, job, False, stack) == "build"  # what rank 0 does first
        for s in range(2):
            build_selfgen(job, shard_dir(out, s, 2), **shard_of(job, s, 2))
    shard1 = shard_dir(out, 1, 2)
    _cut(shard1 / "sampled.jsonl", 4)
    for name in ("samples.jsonl", "stats.json"):
        (shard1 / name).unlink()
    log = io.StringIO()
    res = build_here(job, out, console=Console(file=log, width=200))
    said = log.getvalue()
    assert "2 whole chunk(s) of 3 prompts already sampled moved" in said, said
    assert "resuming: 6 of 12 prompts already sampled" in said, said  # chunks 1 and 3 are sampled
    assert not res.reused
    _same_set(out, one_process)

    # 1 process -> 2: the one-process run was killed after two chunks; each new shard starts with its chunk
    out = shutil.copytree(one_process, tmp_path / "one_then_two")
    for name in ("samples.jsonl", "stats.json", "train.jsonl", "README.md"):
        (out / name).unlink(missing_ok=True)
    _cut(out / "sampled.jsonl", 12)
    log = io.StringIO()
    console = Console(file=log, width=200)
    assert fold_other_layouts(out, job, 2, console) == 2  # what rank 0 does before the ranks build their shards
    assert fold_other_layouts(out, job, 2, console) == 0  # once: the shards hold them now
    for s in range(2):
        build_selfgen(job, shard_dir(out, s, 2), console=console, **shard_of(job, s, 2))
    assert log.getvalue().count("resuming: 3 of 6 prompts already sampled") == 2, log.getvalue()
    merge_shards(out, merge_sources([out]), console)
    _same_set(out, one_process)


def test_a_heartbeat_timeout_shorter_than_two_beats_is_refused(tiny_qwen3, tmp_path):
    from thinksafe.data.shards import build_sharded

    with pytest.raises(UserError, match=r"data.heartbeat_timeout_s must be at least 20 s .*got 5"):
        build_sharded(_job(tiny_qwen3), tmp_path, ranks=None, device_index=None, heartbeat_timeout_s=5)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "visible, device_index, tp, engine_sees",
    [
        (None, 0, 1, "0"),
        (None, 3, 1, "3"),
        (None, 2, 2, "2,3"),  # the first rank of a tensor-parallel group: its engine takes the group's devices
        ("4,5,6,7", 1, 2, "5,6"),  # a job given some of a node's GPUs: indices are into its visible list
        ("GPU-a,GPU-b", 1, 1, "GPU-b"),
    ],
)
def test_each_rank_engine_sees_only_its_own_devices(monkeypatch, visible, device_index, tp, engine_sees):
    """The engine process inherits CUDA_VISIBLE_DEVICES at its start: inside the block it names this rank's
    device(s), afterwards the training process's own value is back (unset stays unset)."""
    from thinksafe.data.shards import _visible_devices

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with _visible_devices(device_index, tp):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == engine_sees
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
    with _visible_devices(None, tp):  # on CPUs nothing changes
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
