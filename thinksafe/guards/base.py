"""The Guard protocol: judge (prompt, response) pairs as safe, unsafe, or error (fail closed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from thinksafe.sampling.engine import EngineSettings

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


class ModelGuardEngine:
    """The vLLM engine of a model guard (LlamaGuard3, WildGuard), built from the options both take.

    ``_kv_cache_memory_bytes`` is private: a guard's public attributes are its settings in a set's manifest and
    fingerprint, and a cache size changes no verdict (sets judged before that option keep their fingerprint)."""

    model: str
    tensor_parallel_size: int
    gpu_memory_utilization: float | None
    dtype: str
    max_model_len: int | None
    _kv_cache_memory_bytes: int | None

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            self.tensor_parallel_size,
            self.gpu_memory_utilization,
            self.dtype,
            self.max_model_len,
            kv_cache_memory_bytes=self._kv_cache_memory_bytes,
        )

    def engine_kwargs(self) -> dict[str, Any]:
        return self.engine_settings().engine_kwargs(self.model, seed=0)


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
