"""GRPO rewards as ThinkSafe's authors define them (``grpo_train.py`` at fa99448): the guard's probability that
the (prompt, response) pair is safe, plus 1 when the response holds exactly one well-formed think block.

The authors ask Llama-Guard-3 (over a vLLM server) for the logprobs of its first verdict token and reward
``P(safe) = e^{lp_safe} / (e^{lp_safe} + e^{lp_unsafe})`` (``_llama_guard_reward_factory``, lines 48-101); a
failed call gives 0. Here the guard is any :class:`~thinksafe.guards.base.Guard`: ``1 − score`` where it gives
``P(unsafe)`` as ``score`` (:class:`~thinksafe.guards.LlamaGuard3`), else 1 for "safe" and 0 for "unsafe" (the
offline judge's verdict, WildGuard's label); "error" (no closed think block to judge, a failed guard) gives 0.
"""

from __future__ import annotations

from typing import Literal

from thinksafe.guards.base import Guard, GuardVerdict
from thinksafe.rows import CLOSE, OPEN

GuardOn = Literal["all", "harmful"]


def safe_probability(verdict: GuardVerdict) -> float:
    """P(safe) of one verdict (see the module docstring)."""
    if verdict.verdict == "error":
        return 0.0
    if verdict.score is not None:
        return 1.0 - float(verdict.score)
    return 1.0 if verdict.verdict == "safe" else 0.0


def think_format_reward(response: str) -> float:
    """1.0 when ``response`` (as the model produced it after the chat prompt, pre-filled ``<think>`` restored:
    :func:`thinksafe.sampling.formats.restore_response`) opens one think block and closes it once, after it.

    The authors' ``_format_reward_fn`` (lines 106-136) checks the raw completion: one ``<think>`` and one
    ``</think>`` in that order for Qwen3; for R1-Distill, whose template pre-fills ``<think>``, no ``<think>`` and
    one ``</think>`` — the same condition once the pre-fill is restored."""
    opened, closed = response.count(OPEN), response.count(CLOSE)
    return 1.0 if opened == 1 and closed == 1 and response.find(OPEN) < response.find(CLOSE) else 0.0


def guard_rewards(
    guard: Guard, prompts: list[str], responses: list[str], harmful: list[bool], on: GuardOn = "all"
) -> tuple[list[float], int]:
    """(P(safe) per response, the number of pairs sent to the guard). ``on="harmful"`` sends only the
    harmful prompts' responses; the others get 0 (their reward is the format reward alone). The authors' reward
    function scores every pair (``on="all"``)."""
    chosen = [i for i, h in enumerate(harmful) if on == "all" or h]
    rewards = [0.0] * len(responses)
    if chosen:
        verdicts = guard.judge(
            [prompts[i] for i in chosen], [responses[i] for i in chosen], harmful=[harmful[i] for i in chosen]
        )
        for i, v in zip(chosen, verdicts):
            rewards[i] = safe_probability(v)
    return rewards, len(chosen)
