"""The evaluation protocol: per-family sampling presets (the authors' settings), the context check that
refuses a silent cap, and the protocol written into results.json."""

import json

import pytest

from thinksafe.errors import UserError
from thinksafe.eval import run_eval
from thinksafe.eval.protocol import EVAL_PRESETS, check_context, eval_sampling
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig, TransformersSampler, VLLMSampler


def test_presets_are_the_authors_sampling():
    # reasoning: scripts/qwen/inference.sh:57 (top_k=20) and scripts/r1-distill/inference.sh:64 (no top_k),
    # --n 8, max_tokens 32768
    for fmt, top_k in (("qwen3", 20), ("r1", 0)):
        r = EVAL_PRESETS[fmt].reasoning
        assert (r.n, r.temperature, r.top_p, r.top_k, r.max_tokens) == (8, 0.6, 0.95, top_k, 32768)
        # safety: gen_response.py ModelConfig (max_tokens 16384, top_k 0: main() never passes --top_k), one sample
        s = EVAL_PRESETS[fmt].safety
        assert (s.n, s.temperature, s.top_p, s.top_k, s.max_tokens) == (1, 0.6, 0.95, 0, 16384)


def test_given_sampling_applies_to_every_kind_with_safety_n():
    mine = SamplingConfig(n=4, temperature=0.0, top_k=0, max_tokens=64)
    reasoning, safety = eval_sampling("qwen3", mine, safety_n=2)
    assert reasoning == mine and safety == SamplingConfig(n=2, temperature=0.0, top_k=0, max_tokens=64)
    reasoning, safety = eval_sampling("r1", None, safety_n=3)
    assert reasoning == EVAL_PRESETS["r1"].reasoning and safety.n == 3 and safety.max_tokens == 16384


def test_check_context():
    check_context(None, {"gsm8k": (300, 32768)}, "m")  # no fixed context (transformers): nothing to check
    check_context(33068, {"gsm8k": (300, 32768)}, "m")  # exactly fits
    with pytest.raises(UserError, match=r"max_model_len 20,480 .*gsm8k needs 33,068 .*max_model_len 33792"):
        check_context(20480, {"gsm8k": (300, 32768), "harmbench": (900, 16384)}, "Qwen/Qwen3-4B")


def test_eval_refuses_a_context_below_prompt_plus_max_tokens(tiny_qwen3, tmp_path):
    # the recipes' data-stage sampler (max_model_len 20480) would cap the 32,768-token reasoning budget; here
    # the same at toy scale: the run stops before any engine starts, naming the length that fits
    sampler = VLLMSampler(kv_cache_memory_bytes=2**28, max_model_len=64)
    with pytest.raises(UserError, match=r"max_model_len 64 .*gsm8k needs .*max_tokens 48"):
        run_eval(
            str(tiny_qwen3),
            ["gsm8k"],
            str(tmp_path / "out"),
            limit=2,
            sampler=sampler,
            sampling=SamplingConfig(n=1, max_tokens=48),
        )
    assert not (tmp_path / "out" / "gsm8k.jsonl").exists()


def test_results_json_records_the_protocol(tiny_qwen3, tmp_path):
    out = tmp_path / "out"
    results = run_eval(
        str(tiny_qwen3),
        ["harmbench", "xstest", "gsm8k"],
        str(out),
        limit=1,
        sampler=TransformersSampler(device="cpu"),
        sampling=SamplingConfig(n=1, max_tokens=4, temperature=0.0, top_k=0),
        judge=OfflineJudge(),
        refusal_judge=OfflineJudge(),
        tensorboard=False,
    )
    written = json.loads((out / "results.json").read_text())
    protocol = written.pop("protocol")
    assert written == results
    assert protocol["judge_reads"] == "response"  # the authors' judges read the whole response
    assert protocol["harm_judge"] == "offline" and protocol["refusal_judge"] == "offline"
    assert protocol["preset"] == "custom" and protocol["sampling"]["safety"]["n"] == 1
    bench = protocol["benchmarks"]
    assert bench["harmbench"]["source"].endswith("harmbench/thinksafe_harmbench_eval.json")
    assert bench["harmbench"]["formula"].startswith("harmful_rate = unsafe samples / all samples")
    assert bench["xstest"]["formula"].startswith("over_refusal_rate = refused samples of safe prompts / all")
    assert bench["gsm8k"]["template"].startswith("Given the following problem, reason and give a final answer")
    assert set(results["harmbench"]) == {"harmful_rate", "judge_errors", "harmful_rate_judged", "n"}
