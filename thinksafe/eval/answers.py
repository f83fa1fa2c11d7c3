"""Final answers of reasoning responses, and whether they are right.

The answer is the text after the think block (:func:`thinksafe.sampling.formats.split_think`): a response
whose think block was opened and never closed has no answer, and counts as wrong. A response with no think
block at all (a plain chat model) is all answer.

``answer_checker="skythought"`` reads answers instead as SkyThought's evaluator does, the one the ThinkSafe authors
report with (``SkyThought/skythought/evals/tasks/{gsm8k,math,gpqa_diamond}/*_handler.py`` and
``evals/util/math_parsing_util.py`` in their repository): from the whole generation, reasoning included, by
:func:`skythought_extract`; GSM8K then compares the last number of that as a string, GPQA takes the last
stand-alone A-D of the upper-cased generation (:func:`check_choice_skythought`). Not reproduced: SkyThought's
``strip_answer_string`` normalisation and its ``math_equal`` (MATH/AIME answers read this way are compared with
math-verify), since their package needs Python < 3.11.

Math answers are compared with math-verify, which extracts the ``\\boxed{}`` or last/anchored expression and
compares symbolically: ``1,000`` = ``1000``, ``$18`` = ``18``, ``\\dfrac{1}{2}`` = ``0.5``, ``025`` = ``25``,
units and ``\\text{}`` are dropped. Multiple-choice answers (GPQA) are a letter found by
:func:`extract_choice`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

from thinksafe.sampling.formats import split_think

CHOICES = "ABCD"

AnswerChecker = Literal["math_verify", "skythought"]
"""How reasoning answers are read: thinksafe's (the text after the think block, math-verify) or SkyThought's."""


@dataclass(frozen=True)
class AnswerCheck:
    answer: str | None
    """Text after the think block; None when the think block was never closed (SkyThought's reading: the
    whole generation)."""
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


# ---------------------------------------------------------------- SkyThought's reading (answer_checker=skythought)
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_GSM8K_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _braced(text: str) -> str:
    """The content of the brace group ``text`` opens (to its matching ``}``, or the end)."""
    depth, out = 1, []
    for c in text[1:]:
        depth += (c == "{") - (c == "}")
        if depth == 0:
            break
        out.append(c)
    return "".join(out)


def skythought_extract(generation: str) -> str:
    """The final answer as SkyThought's ``extract_answer`` finds it in the whole generation, in its order: a
    Minerva "final answer is $…$. I hope", the last ``boxed`` (its brace group, or up to a ``$``), the text
    after the last "he answer is" / "final answer is" / "答案是" (to a blank line), else the last number (commas
    removed); then newlines with their indentation dropped, one leading ":" and one trailing "." and "/" cut.
    SkyThought's ``strip_answer_string`` (LaTeX and unit normalisation) is not applied."""
    text = generation.replace("\u043a\u0438", "")
    if "final answer is $" in text and "$. I hope" in text:
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        tail = text.split("boxed")[-1]
        pred = _braced(tail) if tail.startswith("{") else tail.split("$")[0].strip()
    elif "he answer is" in text:
        pred = text.split("he answer is")[-1].strip()
    elif "final answer is" in text:
        pred = text.split("final answer is")[-1].strip()
    elif "答案是" in text:
        pred = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        numbers = _LAST_NUMBER.findall(text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    pred = re.sub(r"\n\s*", "", pred)
    if pred.startswith(":"):
        pred = pred[1:]
    for end in (".", "/"):
        if pred.endswith(end):
            pred = pred[:-1]
    return pred


def check_gsm8k_skythought(response: str, gold: str) -> AnswerCheck:
    """SkyThought's GSM8K check: the extracted answer without "," and "$", its last number-like run, equal as
    a string to the reference number ("18.0" is not "18")."""
    extracted = re.sub(r"[,$]", "", skythought_extract(response))
    runs = _GSM8K_NUMBER.findall(extracted)
    number = runs[-1][0].strip() if runs else None
    return AnswerCheck(response, number, number is not None and number == gold.replace(",", "").strip())


def check_math_skythought(response: str, gold: str) -> AnswerCheck:
    """The last ``boxed`` (or stated/last-number) answer of the whole generation, compared with math-verify."""
    extracted = skythought_extract(response)
    if not extracted:
        return AnswerCheck(response, None, False)
    correct, _ = math_equal(gold, f"\\boxed{{{extracted}}}")
    return AnswerCheck(response, extracted, correct)


def check_choice_skythought(response: str, gold: str) -> AnswerCheck:
    """SkyThought's GPQA check: the last stand-alone A, B, C or D of the upper-cased generation (an article "a"
    counts), else the whole text stripped of "."; "." and "/" cut at its end."""
    letters = re.findall(r"\b(A|B|C|D)\b", response.upper())
    pred = (letters[-1] if letters else response.strip().strip(".")).rstrip(".").rstrip("/")
    return AnswerCheck(response, pred, pred == gold)
