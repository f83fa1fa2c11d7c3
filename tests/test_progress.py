"""Progress that tells the truth: per-request reports from the vLLM engine process, a labelled engine start,
vLLM's own output in a log file, and the data stage's console naming tokens/s and the time left."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from thinksafe.sampling.progress import GenerationProgress

ROOT = Path(__file__).resolve().parents[1]


def test_progress_line_counts_this_runs_samples_only():
    console_file = io.StringIO()
    from rich.console import Console

    with GenerationProgress("sampling", total=10, completed=4, console=Console(file=console_file, width=200)) as p:
        p({"kind": "requests", "done": 0, "total": 4, "tokens": 0})
        p({"kind": "requests", "done": 2, "total": 4, "tokens": 50})
        assert p.done == 6 and p.tokens == 50
        p.commit(4, tokens=100)
        assert p.done == 8 and p.tokens == 100
        per_s, tok_s, left = p.rates()
        assert per_s > 0 and tok_s > 0 and left == pytest.approx(2 / per_s)
    text = console_file.getvalue()
    assert "sampling: 8/10 rows" in text and "tok/s" in text and "ETA" in text


@pytest.mark.slow
def test_vllm_reports_each_request_and_the_data_stage_console_names_tokens_per_second_and_eta(tiny_qwen3, tmp_path):
    pytest.importorskip("vllm")
    from rich.console import Console

    from thinksafe.data.prompts import load_prompts
    from thinksafe.data.selfgen import SelfGenJob, build_selfgen
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig, VLLMSampler
    from thinksafe.sampling.engine import engine_log
    from thinksafe.sampling.progress import reporting
    from thinksafe.sampling.steering import PAPER_TEMPLATE

    sampler = VLLMSampler(kv_cache_memory_bytes=2**28, max_model_len=2048)
    events: list[dict] = []
    convs = [[{"role": "user", "content": f"Count to {i}."}] for i in range(6)]
    params = SamplingConfig(n=2, max_tokens=16, temperature=1.0)
    try:
        with engine_log(tmp_path / "direct.log"), reporting(events.append):
            out = sampler.generate(str(tiny_qwen3), convs, params, {"enable_thinking": True})
    finally:
        sampler.close()
    starting = [e for e in events if e["kind"] == "starting"]
    ready = [e for e in events if e["kind"] == "ready"]
    requests = [e for e in events if e["kind"] == "requests"]
    assert starting and starting[0]["model"] and len(ready) == 1
    assert ready[0]["log"] == str(tmp_path / "direct.log") and ready[0]["seconds"] > 0
    assert "INFO" in (tmp_path / "direct.log").read_text()  # vLLM's own output went to the file
    assert requests[0]["done"] == 0 and requests[-1]["done"] == requests[-1]["total"] == 12
    assert [e["done"] for e in requests] == sorted(e["done"] for e in requests)
    assert requests[-1]["tokens"] == sum(c.num_tokens for per in out for c in per)

    # the data stage, its engine starting inside it; the console is a file (a batch job's log)
    buf = io.StringIO()
    result = build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(ROOT / "data" / "debug_prompts.jsonl")),
            sampler=sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=2, max_tokens=16),
            steering_template=PAPER_TEMPLATE,
            chunk_size=4,
        ),
        tmp_path / "set",
        console=Console(file=buf, width=200),
    )
    text = buf.getvalue()
    total = result.stats["all"]["samples"]
    assert f"sampling: {total}/{total} rows" in text, text
    assert "tok/s" in text and "ETA 0:00:00" in text, text
    assert "ready in" in text and str(tmp_path / "set" / "vllm.log") in text, text
    assert f"judging ({OfflineJudge().name}): {total}/{total} verdicts" in text, text
    assert "WARNING" not in text and "INFO" not in text  # vLLM's lines are in the log, not on the console
    assert (tmp_path / "set" / "vllm.log").read_text().strip()


def test_score_ends_by_saying_what_it_wrote(benchmark_dir, tmp_path, capsys):
    import json

    from thinksafe.cli import main

    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"id": 1, "response": "<think>9*2=18</think>She makes \\$18 a day."}) + "\n")
    rc = main(
        [
            "score",
            "--benchmark",
            "gsm8k",
            "--responses",
            str(responses),
            "--output",
            str(tmp_path / "out"),
            "--benchmark_dir",
            str(benchmark_dir),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"wrote {tmp_path / 'out' / 'scores.jsonl'} and {tmp_path / 'out' / 'summary.json'}" in err
    assert "accuracy 1" in err


def test_in_distribution_scoring_shows_rows_tokens_per_second_and_eta(tiny_qwen3):
    """The scoring before training (and after it) on a console that is a file: one line naming rows scored,
    tokens/s and the time left."""
    from rich.console import Console

    from thinksafe.metrics.in_distribution import response_nll
    from thinksafe.model.loading import load_causal_lm, load_tokenizer
    from thinksafe.rows import ChatEncoder, TextRow
    from thinksafe.sampling.formats import resolve_format

    tokenizer = load_tokenizer(str(tiny_qwen3))
    fmt, kwargs = resolve_format(str(tiny_qwen3), "plain", tokenizer, None)
    rows, _ = ChatEncoder(tokenizer, fmt, 128, chat_template_kwargs=kwargs).encode_rows(
        [TextRow(prompt=f"Add {i} and {i}.", response=f"It is {2 * i}.", label="vanilla_benign") for i in range(5)]
    )
    buf = io.StringIO()
    score = response_nll(
        load_causal_lm(str(tiny_qwen3)), rows, tokenizer.pad_token_id, batch_size=2, console=Console(file=buf, width=80)
    )
    assert score.overall is not None
    line = buf.getvalue()
    assert "in-distribution NLL: 5/5 rows, " in line and " tok/s, " in line and "ETA 0:00:00" in line, line
    quiet = io.StringIO()
    response_nll(
        load_causal_lm(str(tiny_qwen3)), rows, tokenizer.pad_token_id, progress=None, console=Console(file=quiet)
    )
    assert quiet.getvalue() == ""


def test_export_names_each_step_the_layers_merged_and_what_it_wrote(tiny_qwen3, tmp_path, capsys):
    import torch

    from thinksafe.cli import main
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.loading import load_causal_lm, load_tokenizer

    model = LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj"]).apply(load_causal_lm(str(tiny_qwen3)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    load_tokenizer(str(tiny_qwen3)).save_pretrained(tmp_path / "adapter")
    layers = 2 * model.config.num_hidden_layers  # q_proj and v_proj of each decoder layer

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "merged")]) in (0, None)
    err = capsys.readouterr().err
    assert f"export: loaded {tiny_qwen3} + {tmp_path / 'adapter'} in " in err, err
    assert f"export: merged {layers}/{layers} LoRA layers in " in err, err
    tensors = len(load_causal_lm(str(tmp_path / "merged")).state_dict())
    assert f"export: wrote {tensors} tensors (" in err and f"MiB) to {tmp_path / 'merged'} in " in err, err
