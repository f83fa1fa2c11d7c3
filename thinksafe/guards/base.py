"""The Guard protocol: judge (prompt, response) pairs as safe, unsafe, or error (fail closed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Verdict = Literal["safe", "unsafe", "error"]

Unscorable = Literal["error", "authors"]
"""What a model guard says when it cannot score a pair (no verdict in its output, an input over its context):
``error`` (thinksafe's default: the data stage rejects the sample, fails closed, and counts it in ``guard_error``;
evaluation reports it as a judge error) or ``authors`` (read as the ThinkSafe authors' guards read it: Llama-Guard's argmax over
two missing logprobs, -1e5 each, picks ``safe``; WildGuard's unparseable output "defaults to safe",
``utils/guard_model.py:88-101,165``)."""


def check_unscorable(value: str, guard: str) -> None:
    from thinksafe.errors import UserError

    if value not in ("error", "authors"):
        raise UserError(f"{guard}: unscorable must be error or authors, got {value!r}.")


@dataclass(frozen=True)
class GuardVerdict:
    verdict: Verdict
    """'error' when the guard could not score the pair; such samples are never kept."""
    score: float | None = None
    """P(unsafe) where the guard gives one (Llama-Guard-3), else None."""
    detail: str = ""
    """Why: the guard's raw output, the matched pattern, or the error."""
    refusal: bool | None = None
    """Whether the response refuses, where the guard says so (WildGuard, offline judge)."""


@runtime_checkable
class Guard(Protocol):
    """Judges responses. Sees the original (unsteered) prompt and the full response, think block included."""

    name: str

    def judge(self, prompts: list[str], responses: list[str], harmful: list[bool] | None = None) -> list[GuardVerdict]:
        """One verdict per pair. ``harmful`` is the dataset's label for each prompt, a hint that only the
        offline judge uses (model guards judge the text alone)."""
        ...

    def close(self) -> None: ...
