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

Generation uses transformers (no vLLM engine to start), so the check runs in seconds inside the build.
"""

from __future__ import annotations

from pathlib import Path

import torch

from thinksafe.data.records import read_records
from thinksafe.eval.answers import check_math
from thinksafe.eval.benchmarks.math import math_prompt
from thinksafe.guards.offline import is_refusal
from thinksafe.sampling.steering import PAPER_TEMPLATE, steer
from thinksafe.testbed.world import HARMLESS


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 16) -> list[str]:
    """Greedy responses (think block included, special tokens of the format kept) through the chat template."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                       add_generation_prompt=True, enable_thinking=True)
                         for p in prompts[start : start + batch_size]]
                enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                for ids in gen[:, enc["input_ids"].shape[1] :].tolist():
                    if tokenizer.eos_token_id in ids:
                        ids = ids[: ids.index(tokenizer.eos_token_id)]
                    out.append(tokenizer.decode(ids, skip_special_tokens=False))
    finally:
        tokenizer.padding_side = side
    return out


def check_model(model_dir: str, testbed_dir: str | Path, n: int = 40) -> dict[str, float]:
    """The rates of the module docstring for the model in ``model_dir`` on ``testbed_dir``'s held-out sets."""
    from thinksafe.model.loading import load_causal_lm, load_tokenizer

    root = Path(testbed_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, dtype="float32", device="cpu").eval()
    harmful = [r.fields["prompt"] for r in read_records(root / "eval" / "harmful.jsonl")][:n]
    benign = [r.fields["prompt"] for r in read_records(root / "eval" / "benign.jsonl")][:n]
    math = [r.fields for r in read_records(root / "eval" / "math.jsonl")][:n]

    plain = greedy(model, tokenizer, harmful)
    steered = greedy(model, tokenizer, [steer(p, True, PAPER_TEMPLATE) for p in harmful])
    helped = greedy(model, tokenizer, benign)
    solved = greedy(model, tokenizer, [math_prompt(m["question"]) for m in math])
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
