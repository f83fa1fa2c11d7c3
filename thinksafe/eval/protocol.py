"""The evaluation protocol: sampling per model family, and the record of what an evaluation did.

One place for the evaluation settings of each reasoning format (the family a model's chat template
shows, :func:`thinksafe.sampling.formats.resolve_format`), taken from the ThinkSafe authors' launch scripts:

* reasoning benchmarks (``skythought evaluate`` in ``scripts/qwen/inference.sh`` line 57 and
  ``scripts/r1-distill/inference.sh`` line 64): 8 samples per question, temperature 0.6, top-p 0.95,
  32,768 new tokens; top-k 20 for Qwen3, none for R1-Distill;
* safety and over-refusal benchmarks (``gen_response.py``, ``ModelConfig`` lines 67-70): one sample,
  temperature 0.6, top-p 0.95, 16,384 new tokens, no top-k for either family. Their Qwen3 script passes
  ``--top_k 20`` but ``main()`` (lines 473-478) never hands it to ``ModelConfig``, whose default 0 is what
  vLLM ran; the preset follows what ran.

A plain chat model (no think block) gets the R1-Distill settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from thinksafe.errors import UserError
from thinksafe.sampling.base import SamplingConfig


@dataclass(frozen=True)
class EvalPreset:
    reasoning: SamplingConfig
    """Reasoning benchmarks (``n`` samples per question, pass@1 averaged)."""
    safety: SamplingConfig
    """Safety and over-refusal benchmarks."""


_SAFETY = SamplingConfig(n=1, temperature=0.6, top_p=0.95, top_k=0, max_tokens=16384)

EVAL_PRESETS: dict[str, EvalPreset] = {
    "qwen3": EvalPreset(SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=20, max_tokens=32768), _SAFETY),
    "r1": EvalPreset(SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=0, max_tokens=32768), _SAFETY),
    "plain": EvalPreset(SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=0, max_tokens=32768), _SAFETY),
}


def eval_sampling(fmt: str, sampling: SamplingConfig | None, safety_n: int) -> tuple[SamplingConfig, SamplingConfig]:
    """``(reasoning, safety)`` sampling: the family's preset, or ``sampling`` for both kinds when given
    (``n`` = ``safety_n`` on safety and over-refusal benchmarks)."""
    if sampling is not None:
        return sampling, dataclasses.replace(sampling, n=safety_n)
    preset = EVAL_PRESETS[fmt]
    return preset.reasoning, dataclasses.replace(preset.safety, n=safety_n)


def context_limit(sampler: Any, model_path: str) -> int | None:
    """The sampler's context length: its ``max_model_len``; for vLLM left unset, the model's own maximum
    (what vLLM then uses); None when the sampler has no fixed context (transformers)."""
    limit = getattr(sampler, "max_model_len", None)
    if limit is not None:
        return int(limit)
    if type(sampler).__name__ != "VLLMSampler":
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
    except Exception:  # noqa: BLE001 - unreadable config: vLLM will report it itself
        return None
    config = getattr(config, "text_config", config)
    return getattr(config, "max_position_embeddings", None)


def check_context(limit: int | None, needs: dict[str, tuple[int, int]], model: str) -> None:
    """Stop before sampling when a benchmark's longest prompt + ``max_tokens`` exceeds the sampler's context:
    vLLM would otherwise cut the generation budget silently (or refuse the long prompts).

    ``needs``: benchmark name -> (longest chat-templated prompt in tokens, max_tokens)."""
    if limit is None:
        return
    over = {name: p + m for name, (p, m) in needs.items() if p + m > limit}
    if not over:
        return
    worst = max(over.values())
    listed = ", ".join(
        f"{name} needs {n:,} (prompt {needs[name][0]:,} + max_tokens {needs[name][1]:,})" for name, n in over.items()
    )
    raise UserError(
        f"thinksafe eval: the sampler's context, max_model_len {limit:,} tokens, is shorter than prompt + "
        f"max_tokens for {model}: {listed}. vLLM would cap the generations below the evaluation budget. Give "
        f"the evaluation a context that fits, e.g. --sampler.init_args.max_model_len {_round_up(worst)} (a "
        "recipe's data.sampler is sized for the data stage's 16K budget, not for the 32K evaluation), or lower "
        "max_tokens with --sampling.max_tokens (not the paper's protocol)."
    )


def _round_up(n: int, to: int = 1024) -> int:
    return -(-n // to) * to


def longest_prompt(tokenizer, prompts: list[str], template_kwargs: dict[str, Any]) -> int:
    """Tokens of the longest prompt as the sampler sends it (chat template, generation prompt)."""
    longest = 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True, **template_kwargs
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        longest = max(longest, len(ids))
    return longest


def judge_protocol(judges, kinds: set[str]) -> dict[str, Any]:
    """Who judged, what they read, for the benchmark kinds that were scored."""
    names = judges.names()
    out: dict[str, Any] = {}
    if "safety" in kinds:
        out["harm_judge"] = names.get("judge")
    if "over_refusal" in kinds:
        out["refusal_judge"] = names.get("refusal_judge")
    if out:
        out["judge_reads"] = judges.sees
    if "reasoning" in kinds:
        out["answer_checker"] = getattr(judges, "answers", "math_verify")
    return out


def benchmark_protocol(loaded) -> dict[str, Any]:
    """One benchmark's data, prompt template and metric formula."""
    b = loaded.benchmark
    return {
        "kind": b.kind,
        "source": str(loaded.source),
        "n": len(loaded.items),
        "template": b.template,
        "formula": b.scorer.formula,
    }
