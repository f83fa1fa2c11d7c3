"""data.executor: ray — `thinksafe generate` on a local Ray cluster with two engine actors builds the same set as
the local backend, byte for byte, through selfgen's own code path (each actor builds one shard), and resumes after
its driver is killed."""

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
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig, TransformersSampler
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"
CHUNK, N, MAX_TOKENS, SEED = 2, 2, 16, 7


@pytest.mark.slow
def test_generate_on_a_two_engine_ray_cluster_resumes_and_equals_the_local_backend(tiny_qwen3, tmp_path):
    pytest.importorskip("ray.data")
    on_ray = tmp_path / "ray"
    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(PROMPTS),
            "output_dir": str(on_ray),
            "chunk_size": CHUNK,
            "reasoning_format": "plain",
            # the same chunks per call as the local run below, so transformers' batch-seeded draws agree
            "sampler": {"class_path": "thinksafe.sampling.TransformersSampler", "init_args": {"batch_size": CHUNK}},
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": N, "max_tokens": MAX_TOKENS, "seed": SEED},
            "in_distribution_rows": 0,
            "executor": "ray",
            "ray": {"engines": 2},
        },
        "trainer": {"accelerator": "cpu", "logger": False},
    }
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(path)]
    # the driver (and the local cluster it started) is killed once a shard has rows; the same command resumes
    first = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    shards = [on_ray / "shards" / f"rank_{s}_of_2" for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not any((s / "sampled.jsonl").is_file() for s in shards):
        assert first.poll() is None, "the first run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (on_ray / "stats.json").exists()
    before = {s: (s / "sampled.jsonl").read_bytes() for s in shards if (s / "sampled.jsonl").is_file()}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for shard, rows in before.items():  # what the killed run wrote in whole prompt groups is kept as it was
        lines = rows[: rows.rfind(b"\n") + 1].splitlines(keepends=True)
        assert (
            (shard / "sampled.jsonl").read_bytes().startswith(b"".join(lines[: len(lines) - len(lines) % (CHUNK * N)]))
        )
    assert "data stage on Ray: 2 shard(s)" in done.stderr
    local = build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(PROMPTS)),
            sampler=TransformersSampler(batch_size=CHUNK),
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=N, max_tokens=MAX_TOKENS, seed=SEED),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=CHUNK,
        ),
        tmp_path / "local",
    ).output_dir
    for shard in (0, 1):  # both engines sampled
        assert read_jsonl(on_ray / "shards" / f"rank_{shard}_of_2" / "samples.jsonl")
    for name in ("sampled.jsonl", "samples.jsonl", "train.jsonl"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    stats = [json.loads((d / "stats.json").read_text()) for d in (on_ray, local)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in stats] == [
        {k: v for k, v in stats[1].items() if k != "seconds"}
    ] * 2
    fps = [json.loads((d / "manifest.json").read_text())["fingerprint"] for d in (on_ray, local)]
    assert fps[0] == fps[1]
