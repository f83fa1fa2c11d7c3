"""The Sampler protocol: chat conversations in, ``n`` completions per conversation out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from thinksafe.errors import UserError

Message = dict[str, str]


@dataclass
class SamplingConfig:
    """How responses are sampled (the paper's defaults for reasoning models)."""

    n: int = 1
    """Samples per prompt."""
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    """20 for Qwen3; 0 disables it (DeepSeek-R1-Distill)."""
    max_tokens: int = 16384
    """New tokens per sample; a trace cut here leaves its think block open and is rejected."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UserError(f"data.sampling.n must be ≥ 1, got {self.n}.")
        if self.max_tokens < 1:
            raise UserError(f"data.sampling.max_tokens must be ≥ 1, got {self.max_tokens}.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"data.sampling.top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature < 0:
            raise UserError(f"data.sampling.temperature must be ≥ 0, got {self.temperature}.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    """'stop' (end of turn) or 'length' (max_tokens reached)."""
    num_tokens: int = 0


@runtime_checkable
class Sampler(Protocol):
    """Samples completions for chat conversations with one model.

    ``chat_template_kwargs`` go to the chat template (``enable_thinking`` for Qwen3). Implementations
    may keep an engine alive between calls; :meth:`close` frees it (and its accelerator memory).
    """

    def generate(
        self,
        model: str,
        conversations: list[list[Message]],
        params: SamplingConfig,
        chat_template_kwargs: dict[str, Any] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per conversation. ``seeds`` (one per conversation) make each
        conversation's samples independent of batching, so a resumed run draws what an uninterrupted one
        would; None derives them from ``params.seed``."""
        ...

    def close(self) -> None:
        """Free the engine/model and its accelerator memory now; a later :meth:`generate` starts it again."""
        ...


def generate_in_chunks(
    sampler: Sampler,
    model: str,
    conversations: list[list[Message]],
    params: SamplingConfig,
    chat_template_kwargs: dict[str, Any] | None,
    seeds: list[int],
    chunk_size: int,
) -> Iterator[tuple[range, list[list[Completion]]]]:
    """``(positions, their completions)`` for ``chunk_size`` consecutive conversations at a time, in order, each
    chunk as soon as its last conversation is finished.

    A sampler with a ``stream`` method (vLLM) gets every conversation in one call, so its engine never waits at
    a chunk boundary for the chunk's slowest trace: a chunk is only the unit the caller saves (and resumes from).
    Finished conversations behind an unfinished one wait here, so chunks still come out in order. Any other
    sampler is called once per chunk."""
    stream = getattr(sampler, "stream", None)
    if stream is None:
        for start in range(0, len(conversations), chunk_size):
            part = range(start, min(start + chunk_size, len(conversations)))
            yield (
                part,
                sampler.generate(
                    model, conversations[start : part.stop], params, chat_template_kwargs, seeds[start : part.stop]
                ),
            )
        return
    ready: dict[int, list[Completion]] = {}
    start = 0
    for i, completions in stream(model, conversations, params, chat_template_kwargs, seeds):
        ready[i] = completions
        while start < len(conversations):
            part = range(start, min(start + chunk_size, len(conversations)))
            if any(k not in ready for k in part):
                break
            yield part, [ready.pop(k) for k in part]
            start = part.stop


# Sampling presets used outside evaluation, defined here once (the evaluation presets per model family are
# thinksafe.eval.protocol.EVAL_PRESETS).

#: Greedy decoding, one sample of up to 256 tokens: before/after tables, safety probes, testbed checks.
GREEDY = SamplingConfig(n=1, temperature=0.0, top_p=1.0, top_k=0, max_tokens=256, seed=0)
#: Seeded sampling at the paper's temperature, one sample of up to 256 tokens: probes with ``do_sample``.
PROBE_SAMPLING = SamplingConfig(n=1, temperature=0.6, top_p=0.95, top_k=0, max_tokens=256, seed=0)


def request_seed(base: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of a conversation whose seed is ``base`` (stable across runs)."""
    import hashlib

    digest = hashlib.sha256(f"{base}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
