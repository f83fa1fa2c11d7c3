"""Smoke runs of the two throughput benchmarks with tiny settings: they run, every setup processes the same
tokens, and the JSON holds what the README quotes. Timings are never asserted (the machine is shared)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_runs_three_setups_on_the_same_rows(tmp_path, capsys):
    bench = load("train_throughput")
    out = tmp_path / "train.json"
    bench.main(
        [
            "--shape",
            "tiny",
            "--rows",
            "24",
            "--max-length",
            "96",
            "--max-tokens-per-batch",
            "384",
            "--threads",
            "1",
            "--repeats",
            "3",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    setups = report["setups"]
    assert set(setups) == {"authors", "fixed", "thinksafe"}
    assert len({s["tokens"] for s in setups.values()}) == 1, "every setup must train on exactly the same rows"
    assert setups["authors"]["padding_share"] == 0 and setups["authors"]["gradient_checkpointing"]
    assert setups["authors"]["micro_batches"] == 24 and setups["authors"]["optimizer_steps"] == 3
    assert setups["thinksafe"]["padding_share"] < setups["fixed"]["padding_share"]
    assert report["speedup_vs_seed"] == pytest.approx(
        setups["thinksafe"]["tokens_per_s"] / setups["authors"]["tokens_per_s"]
    )
    assert "gradient checkpointing off" in report["checkpointing_choice"]
    for s in setups.values():  # the reported epoch is the median of the repeats
        assert len(s["tokens_per_s_runs"]) == 3 and s["tokens_per_s"] == sorted(s["tokens_per_s_runs"])[1]
    assert "speedup_vs_seed" in capsys.readouterr().out


@pytest.mark.slow
def test_sampler_throughput_counts_generated_tokens_of_both_samplers(tiny_qwen3, vllm_sampler, capsys):
    from thinksafe.sampling import TransformersSampler

    bench = load("sampler_throughput")
    report = bench.compare(
        str(tiny_qwen3), vllm_sampler, TransformersSampler(batch_size=8, dtype="float32"), prompts=8, max_tokens=16
    )
    for name in ("vllm", "transformers"):
        r = report[name]
        assert r["completions"] == 8
        assert 0 < r["generated_tokens"] <= 8 * 16
        assert r["tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["seconds"])
    assert report["speedup_vs_transformers"] == pytest.approx(
        report["vllm"]["tokens_per_s"] / report["transformers"]["tokens_per_s"]
    )
    bench.print_table(report)
    assert "speedup_vs_transformers" in capsys.readouterr().out
    json.dumps(report)  # what --json writes


@pytest.mark.slow
def test_train_throughput_head_loss_compares_materialised_and_chunked_logits(tmp_path):
    """--head-loss on Qwen3's real vocabulary: four variants on the same micro-batches (the bench itself checks
    that both losses agree before timing), and the JSON's logits_memory_ratio is materialised ÷ chunked."""
    bench = load("train_throughput")
    out = tmp_path / "head.json"
    bench.main(
        [
            "--head-loss",
            "--rows",
            "6",
            "--max-length",
            "96",
            "--max-tokens-per-batch",
            "384",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    variants = report["variants"]
    assert report["vocab_size"] == 151936
    assert set(variants) == {"materialised", "chunked", "materialised+kl", "chunked+kl"}
    assert len({v["tokens"] for v in variants.values()}) == 1
    assert report["logits_memory_ratio"] == pytest.approx(
        variants["materialised"]["step_peak_bytes"] / variants["chunked"]["step_peak_bytes"]
    )


@pytest.mark.slow
def test_sampler_throughput_chunked_mode_runs_three_ways_on_one_engine(tiny_qwen3, vllm_sampler, capsys):
    """--chunked: one call, the data stage's chunks and a call per chunk generate the same completions (the bench
    refuses to report otherwise); the ratios are tokens/s over the one call's."""
    bench = load("sampler_throughput")
    report = bench.chunk_boundaries(str(tiny_qwen3), vllm_sampler, prompts=12, max_tokens=32, chunk_size=4)
    ways = report["ways"]
    assert set(ways) == {"one_call", "chunked", "call_per_chunk"}
    tokens = {w["generated_tokens"] for w in ways.values()}
    assert len(tokens) == 1 and 0 < tokens.pop() <= 12 * 32
    for w in ways.values():
        assert w["tokens_per_s"] == pytest.approx(w["generated_tokens"] / w["seconds"])
    assert report["chunked_vs_one_call"] == pytest.approx(
        ways["chunked"]["tokens_per_s"] / ways["one_call"]["tokens_per_s"]
    )
    n = report["lengths"]
    assert 0 <= n["median"] <= n["p90"] <= n["max"] <= 32
    bench.print_chunked(report)
    assert "chunked_vs_one_call" in capsys.readouterr().out
    json.dumps(report)  # what --json writes


@pytest.mark.slow
def test_train_throughput_master_weights_times_three_precisions(tmp_path):
    """--master-weights: bf16-true as thinksafe trains (float32 LoRA), with bf16 LoRA, and 32-true on the same
    micro-batches; the JSON's ratios are of the measured tokens/s."""
    bench = load("train_throughput")
    out = tmp_path / "mw.json"
    argv = ["--master-weights", "--rows", "6", "--max-length", "96", "--max-tokens-per-batch", "384"]
    bench.main([*argv, "--threads", "1", "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    speed = {name: r["tokens_per_s"] for name, r in report["variants"].items()}
    assert set(speed) == {"bf16-true", "bf16-true, bf16 LoRA", "32-true"} and all(v > 0 for v in speed.values())
    assert report["master_weight_cost"] == pytest.approx(speed["bf16-true, bf16 LoRA"] / speed["bf16-true"])
    assert report["bf16_vs_32_true"] == pytest.approx(speed["bf16-true"] / speed["32-true"])
    assert len({r["tokens"] for r in report["variants"].values()}) == 1  # the same rows each way
