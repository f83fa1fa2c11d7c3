"""The Guard protocol: judge (prompt, response) pairs as safe, unsafe, or error (fail closed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Verdict = Literal["safe", "unsafe", "error"]


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
