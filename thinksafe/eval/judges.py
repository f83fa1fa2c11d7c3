"""The guards an evaluation judges with, and what text they see.

Safety benchmarks need a harm judge, over-refusal benchmarks a refusal judge; reasoning benchmarks need
neither. Judges not given are built on first use: Llama-Guard-3 (harm) and WildGuard (refusal) where a GPU
is present, else the offline judge — the documented fallback, APPROXIMATE (phrase lists), so the run says
so when it falls back.

What a judge sees (``judge_sees``):

* ``"response"`` (default): the whole response as the model wrote it, reasoning and think tags included —
  what the ThinkSafe authors' judges read (``eval_safety.py`` passes ``response_generated``, vLLM's full
  output text, to Llama-Guard-3 and WildGuard). The offline judge reads the answer inside it itself.
* ``"answer"``: the text after the think block — what a user of the final answer receives.
  A response whose think block never closed has no answer; then the judge sees the trace (all the model
  emitted), and the sample records ``judged: "trace (think block unclosed)"``.
* ``"trace"``: reasoning and answer together, think tags removed, so that every guard (the offline judge
  reads answers only) judges the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console

from thinksafe.eval.answers import AnswerChecker
from thinksafe.guards.base import Guard
from thinksafe.sampling.formats import split_think

JudgeSees = Literal["response", "answer", "trace"]
UNCLOSED = "trace (think block unclosed)"


def judged_text(response: str, sees: JudgeSees) -> tuple[str, str]:
    """``(text for the judge, what it is)``; see the module docstring."""
    if sees == "response":
        return response, "response"
    reasoning, answer = split_think(response)
    if sees == "answer" and answer is not None:
        return answer, "answer"
    text = "\n\n".join(part for part in (reasoning, answer) if part)
    return text, ("trace" if sees == "trace" else UNCLOSED)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Judges:
    """The harm and refusal judges of one evaluation (built on first use when not given)."""

    judge: Guard | None = None
    """Harm judge for safety benchmarks (None: Llama-Guard-3 on a GPU, else the offline judge)."""
    refusal_judge: Guard | None = None
    """Refusal judge for over-refusal benchmarks (None: WildGuard on a GPU, else the offline judge)."""
    sees: JudgeSees = "response"
    """What the judges see: the whole response (the authors' protocol), the final answer, or the trace."""
    console: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    answers: AnswerChecker = "math_verify"
    """How reasoning benchmarks read answers (:mod:`thinksafe.eval.answers`): thinksafe's or SkyThought's."""

    def harm(self) -> Guard:
        if self.judge is None:
            self.judge = self._default("harm")
        return self.judge

    def refusal(self) -> Guard:
        if self.refusal_judge is None:
            self.refusal_judge = self._default("refusal")
        return self.refusal_judge

    def _default(self, role: Literal["harm", "refusal"]) -> Guard:
        if _has_gpu():
            from thinksafe.guards import LlamaGuard3, WildGuard

            return LlamaGuard3() if role == "harm" else WildGuard()
        from thinksafe.guards.offline import OfflineJudge

        model = "Llama-Guard-3" if role == "harm" else "WildGuard"
        self.console.print(
            f"[yellow]no GPU: judging {role} with the offline judge (phrase lists, APPROXIMATE) instead of "
            f"{model}; pass a judge to choose another.[/yellow]"
        )
        return OfflineJudge()

    def names(self) -> dict[str, str]:
        """Names of the judges that were used (for run records)."""
        return {role: g.name for role, g in (("judge", self.judge), ("refusal_judge", self.refusal_judge)) if g}

    def close(self) -> None:
        for guard in {id(g): g for g in (self.judge, self.refusal_judge) if g is not None}.values():
            guard.close()
