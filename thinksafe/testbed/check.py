"""Does the testbed model behave as the story says? Greedy generations on the held-out sets, judged offline.

Rates, each over the first ``n`` items of a held-out set:

* ``compliance`` — plain harmful requests not refused (the over-optimised model: should be high);
* ``steered_refusal`` — the same requests behind the refusal-steering prefix, refused (the latent safety
  knowledge ThinkSafe draws on: should be high);
* ``over_refusal`` — benign requests refused (should be low);
* ``math_accuracy`` — math problems answered correctly after the think block (should be high);
* ``benign_misread`` — benign requests whose reasoning calls them dangerous (should be near 0): the model
  helps with them anyway before training, so ``over_refusal`` cannot see these; once ThinkSafe teaches it to
  act on its reasoning they become refusals.

Generation uses the transformers sampler (no vLLM engine to start), so the check runs in seconds inside the build.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thinksafe.data.records import read_records
from thinksafe.eval.answers import check_math
from thinksafe.eval.benchmarks.math import math_prompt
from thinksafe.guards.offline import is_refusal
from thinksafe.sampling.base import GREEDY
from thinksafe.sampling.steering import PAPER_TEMPLATE, steer
from thinksafe.testbed.world import HARMLESS


def check_model(model_dir: str, testbed_dir: str | Path, n: int = 40) -> dict[str, float]:
    """The rates of the module docstring for the model in ``model_dir`` on ``testbed_dir``'s held-out sets."""
    from thinksafe.sampling.hf_sampler import TransformersSampler

    root = Path(testbed_dir)
    sampler = TransformersSampler(batch_size=16, device="cpu", dtype="float32")
    params = dataclasses.replace(GREEDY, max_tokens=160)

    def greedy(prompts: list[str]) -> list[str]:
        chats = [[{"role": "user", "content": p}] for p in prompts]
        return [c[0].text for c in sampler.generate(model_dir, chats, params, {"enable_thinking": True})]

    harmful = [r.fields["prompt"] for r in read_records(root / "eval" / "harmful.jsonl")][:n]
    benign = [r.fields["prompt"] for r in read_records(root / "eval" / "benign.jsonl")][:n]
    math = [r.fields for r in read_records(root / "eval" / "math.jsonl")][:n]

    try:
        plain = greedy(harmful)
        steered = greedy([steer(p, True, PAPER_TEMPLATE) for p in harmful])
        helped = greedy(benign)
        solved = greedy([math_prompt(m["question"]) for m in math])
    finally:
        sampler.close()
    gold = [m["answer"].rsplit("####", 1)[1].strip() for m in math]

    def rate(flags: list[bool]) -> float:
        return round(sum(flags) / len(flags), 4) if flags else 0.0

    return {
        "n": n,
        "compliance": rate([not is_refusal(t) for t in plain]),
        "steered_refusal": rate([is_refusal(t) for t in steered]),
        "over_refusal": rate([is_refusal(t) for t in helped]),
        "math_accuracy": rate([check_math(t, g).correct for t, g in zip(solved, gold)]),
        "benign_misread": rate([HARMLESS not in t.split("</think>")[0] for t in helped]),
    }
