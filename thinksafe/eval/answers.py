"""Final answers of reasoning responses, and whether they are right.

The answer is the text after the think block (:func:`thinksafe.sampling.formats.split_think`): a response
whose think block was opened and never closed has no answer, and counts as wrong. A response with no think
block at all (a plain chat model) is all answer.

Math answers are compared with math-verify, which extracts the ``\\boxed{}`` or last/anchored expression and
compares symbolically: ``1,000`` = ``1000``, ``$18`` = ``18``, ``\\dfrac{1}{2}`` = ``0.5``, ``025`` = ``25``,
units and ``\\text{}`` are dropped. Multiple-choice answers (GPQA) are a letter found by
:func:`extract_choice`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from thinksafe.sampling.formats import split_think

CHOICES = "ABCD"


@dataclass(frozen=True)
class AnswerCheck:
    answer: str | None
    """Text after the think block; None when the think block was never closed."""
    extracted: str | None
    """What was read from it (the expression or letter); None when nothing was found."""
    correct: bool


def final_answer(response: str) -> str | None:
    return split_think(response)[1]


def _timeout() -> int | None:
    # math-verify's timeout uses signal.alarm, which only works in the main thread; elsewhere (a data loader
    # worker, a threaded server) it raises, so we run without a timeout there.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    from math_verify import parse

    # "\$18" (an escaped dollar sign in LaTeX-aware output) defeats extraction; the unescaped "$18" works
    return parse(text.replace("\\$", ""), parsing_timeout=_timeout())


def parse_gold(gold: str) -> list:
    """A reference answer as LaTeX (MATH answers are bare LaTeX: ``\\frac{1}{2}``, ``\\left( 3, \\pi \\right)``)."""
    parsed = _parse(f"${gold}$")
    return parsed if parsed else _parse(gold)


def math_equal(gold: str, answer: str) -> tuple[bool, str | None]:
    """Whether ``answer`` (free text) states ``gold``; also the expression math-verify read from it."""
    from math_verify import verify

    pred = _parse(answer)
    if not pred:
        return False, None
    extracted = pred[-1] if isinstance(pred[-1], str) else str(pred[0])
    return bool(verify(parse_gold(gold), pred, timeout_seconds=_timeout())), extracted


def check_math(response: str, gold: str) -> AnswerCheck:
    answer = final_answer(response)
    if answer is None or not answer.strip():
        return AnswerCheck(answer, None, False)
    correct, extracted = math_equal(gold, answer)
    return AnswerCheck(answer, extracted, correct)


_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?([A-D])\)?\s*\}")
# the letter itself is case-sensitive, so "the answer is a bit long" does not read as choice A
_STATED = re.compile(r"(?i:answer)\s*(?i:is|:)?\s*[:\-]?\s*(?i:option\s*)?[*_]*\s*\(?([A-D])\)?(?![A-Za-z])")
_PAREN = re.compile(r"\(([A-D])\)")
_ALONE = re.compile(r"^[\s*_(\[]*([A-D])[\s*_)\].:]*$")


def extract_choice(answer: str) -> str | None:
    """The chosen letter A–D: the last ``\\boxed{X}``, else the last "answer is X" / "Answer: X", else the
    last "(X)", else an answer that is only the letter. None when none is found (a stray capital "A" in a
    sentence is not read as a choice)."""
    for pattern in (_BOXED, _STATED, _PAREN):
        found = pattern.findall(answer)
        if found:
            return found[-1].upper()
    m = _ALONE.match(answer)
    return m.group(1) if m else None


def check_choice(response: str, gold: str) -> AnswerCheck:
    answer = final_answer(response)
    if answer is None or not answer.strip():
        return AnswerCheck(answer, None, False)
    letter = extract_choice(answer)
    return AnswerCheck(answer, letter, letter == gold)
