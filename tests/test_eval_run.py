"""End-to-end `eval` on tiny models: the shared vLLM engine, a LoRA adapter served by vLLM unmerged, and an
adapter merged for the transformers sampler."""

import json

import pytest
import torch

from thinksafe.eval import run_eval, score
from thinksafe.sampling import SamplingConfig, TransformersSampler, VLLMSampler, kept_engines

BENCHMARKS = ["gsm8k", "xstest", "strongreject"]


def make_adapter(base, out, seed=0):
    """A LoRA adapter with random (non-zero) weights, saved the way PEFT saves trained adapters."""
    from peft import LoraConfig, get_peft_model

    from thinksafe.model.loading import load_causal_lm

    torch.manual_seed(seed)
    model = get_peft_model(
        load_causal_lm(str(base)),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_eval_writes_results_and_score_reproduces_them(tiny_qwen3, vllm_sampler, benchmark_dir, tmp_path):
    out = tmp_path / "eval"
    results = run_eval(
        str(tiny_qwen3),
        BENCHMARKS,
        str(out),
        limit=2,
        sampler=vllm_sampler,
        sampling=SamplingConfig(n=2, max_tokens=24),
        benchmark_dir=str(benchmark_dir),
    )

    assert set(results) == set(BENCHMARKS)
    assert set(results["gsm8k"]) == {"accuracy", "no_answer_rate", "n"}
    assert set(results["xstest"]) == {"over_refusal_rate", "judge_errors", "n"}
    assert set(results["strongreject"]) == {"harmful_rate", "judge_errors", "harmful_rate_judged", "n"}
    assert all(m["n"] == 2 for m in results.values())
    written = json.loads((out / "results.json").read_text())
    assert written.pop("protocol")["judge_reads"] == "response" and written == results
    assert "| gsm8k | accuracy |" in (out / "results.md").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    run = json.loads((out / "run.json").read_text())
    assert run["reasoning_format"] == "qwen3" and run["chat_template_kwargs"] == {"enable_thinking": True}
    assert run["adapter_mode"] == "none" and run["judge_sees"] == "response"
    assert run["judges"] == {"judge": "offline", "refusal_judge": "offline"}  # the CPU fallback, recorded

    gsm = read_jsonl(out / "gsm8k.jsonl")
    assert len(gsm) == 4 and [(r["id"], r["sample"]) for r in gsm] == [("1", 0), ("1", 1), ("2", 0), ("2", 1)]
    assert all(
        {"prompt", "response", "finish_reason", "num_tokens", "gold", "correct", "extracted"} <= set(r) for r in gsm
    )
    assert len(read_jsonl(out / "xstest.jsonl")) == 2 and all("refusal" in r for r in read_jsonl(out / "xstest.jsonl"))
    assert all(r["judged"] == "response" for r in read_jsonl(out / "strongreject.jsonl"))  # the whole response

    # the saved responses re-score to the same metrics with no model at all
    for name in BENCHMARKS:
        summary = score(
            name,
            str(out / f"{name}.jsonl"),
            str(tmp_path / f"score-{name}"),
            benchmark_dir=str(benchmark_dir),
        )
        assert {k: summary[k] for k in results[name]} == results[name]


@pytest.mark.slow
def test_lora_adapter_is_served_by_vllm_unmerged(tiny_qwen3, vllm_sampler, benchmark_dir, tmp_path):
    adapter = make_adapter(tiny_qwen3, tmp_path / "adapter")
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=16)
    # engine of its own, LoRA enabled from the start (rank 8) so that re-pointing it never restarts it
    lora_sampler = VLLMSampler(kv_cache_memory_bytes=2**28, max_model_len=2048, dtype="float32", max_lora_rank=8)
    out = tmp_path / "eval"
    with kept_engines(lora_sampler):
        run_eval(
            str(adapter),
            ["gsm8k"],
            str(out),
            limit=3,
            sampler=lora_sampler,
            sampling=greedy,
            benchmark_dir=str(benchmark_dir),
        )
        run = json.loads((out / "run.json").read_text())
        assert (run["adapter"], run["adapter_mode"]) == (str(adapter), "lora")
        assert run["sampler"]["adapter"] == str(adapter) and lora_sampler.adapter is None  # restored after the run

        # the sampler follows a new adapter without restarting its engine (training rounds, GRPO)
        chats = [[{"role": "user", "content": p}] for p in ("What is 2 + 3?", "Name a colour.", "Hi!")]
        kw = {"enable_thinking": True}
        lora_sampler.set_adapter(str(adapter))
        first = [c[0].text for c in lora_sampler.generate(str(tiny_qwen3), chats, greedy, kw)]
        pid = lora_sampler._engine._proc.pid
        other = make_adapter(tiny_qwen3, tmp_path / "adapter-2", seed=1)
        lora_sampler.set_adapter(str(other))
        second = [c[0].text for c in lora_sampler.generate(str(tiny_qwen3), chats, greedy, kw)]
        assert lora_sampler._engine._proc.pid == pid and second != first

        # served unmerged, the adapter says what its merged weights say
        from thinksafe.model.export import export_merged

        merged = tmp_path / "merged"
        export_merged(str(adapter), str(merged), base=str(tiny_qwen3))
        lora_sampler.set_adapter(None)
        assert [c[0].text for c in lora_sampler.generate(str(merged), chats, greedy, kw)] == first

    base = run_eval(
        str(tiny_qwen3),
        ["gsm8k"],
        str(tmp_path / "base"),
        limit=3,
        sampler=vllm_sampler,
        sampling=greedy,
        benchmark_dir=str(benchmark_dir),
    )
    assert base["gsm8k"]["n"] == 3
    with_adapter = [(r["response"], r["num_tokens"]) for r in read_jsonl(out / "gsm8k.jsonl")]
    without = [(r["response"], r["num_tokens"]) for r in read_jsonl(tmp_path / "base" / "gsm8k.jsonl")]
    assert with_adapter != without  # the adapter changed what the model says


@pytest.mark.slow
def test_adapter_is_merged_for_other_samplers_and_says_so(tiny_r1, benchmark_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_r1, tmp_path / "adapter")
    out = tmp_path / "eval"
    results = run_eval(
        str(tiny_r1),
        ["aime24"],
        str(out),
        limit=2,
        adapter=str(adapter),
        sampler=TransformersSampler(batch_size=4),
        sampling=SamplingConfig(n=2, max_tokens=8),
        benchmark_dir=str(benchmark_dir),
        tensorboard=False,
    )
    assert results["aime24"]["n"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["adapter_mode"] == "merged" and "not the vLLM sampler" in run["adapter_note"]
    assert run["reasoning_format"] == "r1"
    err = capsys.readouterr().err
    assert "merged into" in err and "temporary directory" in err
    tmp = err.split("temporary directory", 1)[1].split()[0]
    assert tmp.startswith("/") and not __import__("os").path.exists(tmp)  # removed after the run
    # R1 completions lack the opening tag (the prompt holds it); saved responses have it back
    assert all(r["response"].startswith("<think>\n") for r in read_jsonl(out / "aime24.jsonl"))
